"""Device wiring: what a job given GPUs or MIG slices gets, on fake device nodes."""

from __future__ import annotations

import os
import stat

import pytest
from mlq.executor import gpus
from mlq.executor.fakenvml import NVIDIA_MAJOR
from mlq.scheduler.errors import Conflict, NotFound

CONTROL = ["/dev/nvidiactl", "/dev/nvidia-uvm", "/dev/nvidia-uvm-tools"]


def char_device(path: str) -> tuple[int, int]:
    st = os.stat(path)
    assert stat.S_ISCHR(st.st_mode), f"{path} is not a char device"
    return os.major(st.st_rdev), os.minor(st.st_rdev)


def test_a_job_given_one_1g_slice_gets_that_slice_and_its_two_capability_nodes(fake_node):
    files = fake_node("h100-8-mig")
    node = gpus.discover()
    w = gpus.wiring(node, mig=[(7, 3)])  # GPU 7, the 1g.10gb at start 3 (GI 11)

    assert w.env == {
        "CUDA_VISIBLE_DEVICES": "MIG-3b1e7f0a-5d2c-5c11-9a0e-070000000011",
        "NVIDIA_VISIBLE_DEVICES": "MIG-3b1e7f0a-5d2c-5c11-9a0e-070000000011",
    }
    assert [d.path for d in w.devices] == CONTROL + [
        "/dev/nvidia7",
        "/dev/nvidia-caps/nvidia-cap1047",
        "/dev/nvidia-caps/nvidia-cap1048",
    ]
    assert [d.host_path for d in w.devices] == [
        str(files.dev_root / d.path.removeprefix("/dev/")) for d in w.devices
    ]
    # The host nodes exist and are the ones the driver would have made for this slice.
    caps_major = char_device(w.devices[-1].host_path)[0]
    assert [char_device(d.host_path) for d in w.devices[3:]] == [
        (NVIDIA_MAJOR, 7),
        (caps_major, 1047),
        (caps_major, 1048),
    ]
    assert char_device(w.devices[0].host_path) == (NVIDIA_MAJOR, 255)
    # mig-minors, as written for the fake driver, names these two nodes for GI 11 / CI 0.
    lines = files.caps_file.read_text().splitlines()
    assert "gpu7/gi11/access 1047" in lines and "gpu7/gi11/ci0/access 1048" in lines


def test_the_scheduler_s_mig_decision_dicts_are_accepted(fake_node):
    fake_node("h100-8-mig")
    node = gpus.discover()
    w = gpus.wiring(node, mig=[{"gpu": 6, "profile": "3g.40gb", "start": 4}])
    assert w.visible == "MIG-0f6a1c3e-6a3b-5a8e-8d64-060000000001"
    assert [d.path for d in w.devices][3:] == [
        "/dev/nvidia6",
        "/dev/nvidia-caps/nvidia-cap822",
        "/dev/nvidia-caps/nvidia-cap823",
    ]


def test_whole_gpus_get_their_nodes_and_uuids_in_the_order_given(fake_node):
    fake_node("h100-8-mig")
    w = gpus.wiring(gpus.discover(), gpus=[2, 0])
    assert [d.path for d in w.devices] == CONTROL + ["/dev/nvidia2", "/dev/nvidia0"]
    assert (
        w.visible
        == "GPU-6d3f6c2a-0c1e-4b7e-9f4e-000000000002,GPU-6d3f6c2a-0c1e-4b7e-9f4e-000000000000"
    )
    assert w.env["NVIDIA_VISIBLE_DEVICES"] == w.visible


def test_the_device_node_follows_the_minor_number_not_the_index(fake_node):
    fake_node("a100-mixed")
    node = gpus.discover()
    assert [d.path for d in gpus.wiring(node, gpus=[0]).devices][-1] == "/dev/nvidia1"
    w = gpus.wiring(node, mig=[(1, 2)])
    assert [d.path for d in w.devices][3:] == [
        "/dev/nvidia0",
        "/dev/nvidia-caps/nvidia-cap84",  # gpu0/gi9/access
        "/dev/nvidia-caps/nvidia-cap85",
    ]
    assert all(os.path.exists(d.host_path) for d in w.devices)


def test_a_job_given_no_gpu_gets_no_nodes_and_no_variables(fake_node):
    fake_node("h100-8-mig")
    w = gpus.wiring(gpus.discover())
    assert w.devices == () and dict(w.env) == {}


@pytest.mark.parametrize(
    ("gpus_", "mig", "error", "message"),
    [
        pytest.param(
            [6],
            [],
            Conflict,
            "GPU 6 is in MIG mode; a job can be given its slices, not the whole GPU",
            id="a GPU in MIG mode cannot be given whole",
        ),
        pytest.param(
            [],
            [(6, 2)],
            NotFound,
            "GPU 6 has no MIG slice starting at 2 (slices: 3g.40gb@0, 3g.40gb@4)",
            id="a slice that is not carved is named with what is",
        ),
        pytest.param(
            [9],
            [],
            NotFound,
            "GPU 9 is not on this node (GPUs: 0, 1, 2, 3, 4, 5, 6, 7)",
            id="a GPU that does not exist",
        ),
    ],
)
def test_an_assignment_that_does_not_match_the_node_is_refused(
    fake_node, gpus_, mig, error, message
):
    fake_node("h100-8-mig")
    with pytest.raises(error) as exc:
        gpus.wiring(gpus.discover(), gpus=gpus_, mig=mig)
    assert str(exc.value) == message


def test_a_partial_compute_instance_cannot_be_assigned(fake_node):
    fake_node("a100-mixed")
    with pytest.raises(NotFound, match="no MIG slice starting at 4"):
        gpus.wiring(gpus.discover(), mig=[(1, 4)])


def test_declared_gpus_get_variables_but_no_device_nodes():
    from mlq.scheduler.cluster import GpuDecl, MigSlice, NodeConfig

    config = NodeConfig(
        name="sim",
        gpus="declared",
        declared_gpus=[
            GpuDecl(index=0, model="H100-80GB", mig=[MigSlice(profile="1g.10gb", start=2)])
        ],
    )
    node = gpus.discover(config)
    w = gpus.wiring(node, mig=[(0, 2)])
    assert w.devices == ()
    assert w.visible == node.gpus[0].mig[0].uuid and w.visible.startswith("MIG-")
