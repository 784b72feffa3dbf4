"""``gpus.carve`` and ``gpus.destroy``: a MIG slice made (and unmade) through NVML, the
refreshed node, and a wiring that reaches the new slice's device nodes."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pynvml
import pytest
from mlq.executor import fakenvml, gpus
from mlq.executor.fakenvml import FakeNvml
from mlq.executor.gpus import CarveFailed, DestroyFailed
from mlq.executor.yamlfile import load_yaml
from mlq.scheduler.cluster import GpuDecl, MigSlice, NodeConfig
from mlq.scheduler.errors import Conflict

SMALL = load_yaml(Path(__file__).resolve().parents[3] / "configs" / "gpus" / "h100-2-carve.yaml")


@pytest.fixture
def small_node(tmp_path: Path, monkeypatch: pytest.MonkeyPatch):
    """Materialize the small inventory (changed by keyword) and point mlq at it."""

    def make(**changes) -> fakenvml.FakeFiles:
        path = tmp_path / "inventory.yaml"
        path.write_text(json.dumps({**SMALL, **changes}))
        files = fakenvml.materialize(fakenvml.load_inventory(path), tmp_path / "fake", path)
        for key, value in files.env().items():
            monkeypatch.setenv(key, value)
        return files

    return make


def test_a_carved_slice_is_discovered_and_wired_to_its_own_capability_nodes(small_node):
    files = small_node()
    node = gpus.discover()
    assert node.gpu(1).slice_at(4) is None

    after = gpus.carve(node, 1, "2g.20gb", 4)

    m = after.gpu(1).slice_at(4)
    assert (m.profile, m.profile_id, m.start, m.size, m.gi_slices, m.ci_slices) == (
        "2g.20gb",
        14,
        4,
        2,
        2,
        2,
    )
    assert m.uuid.startswith("MIG-") and m.uuid != after.gpu(1).slice_at(0).uuid
    assert after.summary() == "2 GPUs (nvml): 0:H100-80GB 1:H100-80GB[3g.40gb@0,2g.20gb@4]"
    # a new discovery (another call, another process) finds the same slice
    assert gpus.discover().gpu(1).slice_at(4) == m
    w = gpus.wiring(after, mig=[{"gpu": 1, "start": 4, "profile": "2g.20gb"}])
    assert w.visible == m.uuid
    assert [d.path for d in w.devices][3:] == [
        "/dev/nvidia1",
        f"/dev/nvidia-caps/nvidia-cap{m.gi_cap_minor}",
        f"/dev/nvidia-caps/nvidia-cap{m.ci_cap_minor}",
    ]
    for d in w.devices:
        assert stat.S_ISCHR(os.stat(d.host_path).st_mode), d.host_path
        assert d.host_path.startswith(str(files.dev_root))
    # the slice that was there is wired as before
    assert gpus.wiring(after, mig=[(1, 0)]) == gpus.wiring(node, mig=[(1, 0)])


def test_a_destroyed_slice_is_gone_with_its_device_nodes(small_node):
    small_node()
    after = gpus.carve(gpus.discover(), 1, "2g.20gb", 4)
    m = after.gpu(1).slice_at(4)
    caps = [d.host_path for d in gpus.wiring(after, mig=[(1, 4)]).devices][-2:]

    gone = gpus.destroy(after, 1, 4, uuid=m.uuid)

    assert gone.gpu(1).slice_at(4) is None and gone.gpu(1).slice_at(0) is not None
    assert gpus.discover().summary() == "2 GPUs (nvml): 0:H100-80GB 1:H100-80GB[3g.40gb@0]"
    assert not any(os.path.exists(p) for p in caps)


@pytest.mark.parametrize(
    ("profile", "start", "message", "code"),
    [
        pytest.param(
            "2g.20gb",
            2,
            "create MIG slice 2g.20gb@2 on GPU 1: NVML_ERROR_INSUFFICIENT_RESOURCES",
            pynvml.NVML_ERROR_INSUFFICIENT_RESOURCES,
            id="a slice overlapping one that is there is the driver's InsufficientResources",
        ),
        pytest.param(
            "2g.20gb",
            3,
            "create MIG slice 2g.20gb@3 on GPU 1: Invalid Argument (NVML_ERROR_INVALID_ARGUMENT)",
            pynvml.NVML_ERROR_INVALID_ARGUMENT,
            id="a start the profile does not have is the driver's InvalidArgument",
        ),
        pytest.param(
            "1g.5gb",
            4,
            'create MIG slice 1g.5gb@4 on GPU 1: "NVIDIA H100 80GB HBM3" has no MIG profile '
            "1g.5gb in mlq's catalogue",
            None,
            id="a profile of another model is refused before the driver is asked",
        ),
    ],
)
def test_a_refused_carve_names_the_gpu_profile_and_start(small_node, profile, start, message, code):
    small_node()
    node = gpus.discover()
    with pytest.raises(CarveFailed) as exc:
        gpus.carve(node, 1, profile, start)
    assert str(exc.value) == message
    assert (exc.value.gpu, exc.value.profile, exc.value.start, exc.value.code) == (
        1,
        profile,
        start,
        code,
    )
    assert isinstance(exc.value, Conflict)  # an mlq error
    assert gpus.discover() == node  # nothing was left behind


def test_a_driver_that_refuses_every_create_is_reported_with_its_words(small_node):
    small_node(mig_create="refuse")
    with pytest.raises(CarveFailed) as exc:
        gpus.carve(gpus.discover(), 1, "2g.20gb", 4)
    assert str(exc.value) == (
        "create MIG slice 2g.20gb@4 on GPU 1: Insufficient Permissions (NVML_ERROR_NO_PERMISSION)"
    )
    assert exc.value.error == "Insufficient Permissions (NVML_ERROR_NO_PERMISSION)"


def test_a_gpu_not_in_mig_mode_is_not_carved(small_node):
    small_node()
    with pytest.raises(CarveFailed, match="create MIG slice 1g.10gb@0 on GPU 0: the GPU is not"):
        gpus.carve(gpus.discover(), 0, "1g.10gb", 0)


def test_a_compute_instance_the_driver_will_not_make_leaves_no_gpu_instance(small_node):
    files = small_node()

    class NoComputeInstances(FakeNvml):
        def nvmlGpuInstanceCreateComputeInstance(self, gpuInstance, profileId):
            raise pynvml.NVMLError_InsufficientResources()

    def lib() -> FakeNvml:
        inv = fakenvml.load_inventory(files.inventory)
        return NoComputeInstances(inv, fakenvml.state_path(files.caps_file), files.dev_root)

    node = gpus.discover()
    with pytest.raises(CarveFailed, match="2g.20gb@4 on GPU 1: NVML_ERROR_INSUFFICIENT_RES"):
        gpus.carve(node, 1, "2g.20gb", 4, lib=lib())
    check = lib()
    check.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NotFound):  # GI 1 would have been the new one
        check.nvmlDeviceGetGpuInstanceById(check.nvmlDeviceGetHandleByIndex(1), 1)
    assert gpus.discover() == node


@pytest.mark.parametrize(
    ("uuid", "message"),
    [
        pytest.param(
            None,
            "destroy MIG slice at start 4 on GPU 1: no MIG slice starts there (slices: "
            "3g.40gb@0 MIG-",
            id="a slice that is not there is NotFound",
        ),
        pytest.param(
            "MIG-00000000-0000-0000-0000-000000000000",
            "destroy MIG slice 3g.40gb@0 on GPU 1: MIG-00000000-0000-0000-0000-000000000000 "
            "is not there",
            id="a slice that is no longer the device named is left alone",
        ),
    ],
)
def test_destroying_what_is_not_there_is_not_found(small_node, uuid, message):
    small_node()
    node = gpus.discover()
    start = 0 if uuid else 4
    with pytest.raises(DestroyFailed) as exc:
        gpus.destroy(node, 1, start, uuid=uuid)
    assert str(exc.value).startswith(message)
    assert exc.value.code == pynvml.NVML_ERROR_NOT_FOUND
    assert gpus.discover() == node


def test_a_slice_with_processes_on_it_is_not_destroyed(small_node):
    inv = json.loads(json.dumps(SMALL))
    inv["gpus"][1]["slices"][0]["in_use"] = True
    small_node(gpus=inv["gpus"])
    node = gpus.discover()
    with pytest.raises(DestroyFailed) as exc:
        gpus.destroy(node, 1, 0)
    assert str(exc.value) == "destroy MIG slice 3g.40gb@0 on GPU 1: NVML_ERROR_IN_USE"
    assert gpus.discover() == node


def test_declared_gpus_carve_in_the_picture_only_by_the_catalogue_s_rules():
    node = gpus.discover(
        NodeConfig(
            name="sim",
            gpus="declared",
            declared_gpus=[
                GpuDecl(index=0, model="H100-80GB", mig=[MigSlice(profile="3g.40gb", start=0)])
            ],
        )
    )
    after = gpus.carve(node, 0, "2g.20gb", 4)
    m = after.gpu(0).slice_at(4)
    assert (m.profile, m.start, m.uuid[:4]) == ("2g.20gb", 4, "MIG-")
    assert gpus.wiring(after, mig=[(0, 4)]).env == {
        "CUDA_VISIBLE_DEVICES": m.uuid,
        "NVIDIA_VISIBLE_DEVICES": m.uuid,
    }
    with pytest.raises(CarveFailed, match="2g.20gb@2 overlaps 3g.40gb@0"):
        gpus.carve(after, 0, "2g.20gb", 2)
    assert gpus.destroy(after, 0, 4, uuid=m.uuid) == node
    with pytest.raises(DestroyFailed):
        gpus.destroy(node, 0, 4)
