"""The fake NVML carves and destroys as the driver does: pynvml's calls, its structures,
its errors, and one state shared by every process that loads the fake."""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pynvml
import pytest
from mlq.executor import fakenvml
from mlq.executor.fakenvml import FakeNvml, cap_minor, parse_inventory
from mlq.executor.yamlfile import load_yaml

# GPU 0 whole; GPU 1 in MIG mode with one 3g.40gb at start 0 (GI 2): starts 4-7 are free.
SMALL = load_yaml(Path(__file__).resolve().parents[3] / "configs" / "gpus" / "h100-2-carve.yaml")
PROFILE_2G = pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE  # the index asked; 14 is its ID


def write_inventory(path: Path, **changes) -> Path:
    path.write_text(json.dumps({**SMALL, **changes}))  # JSON is YAML
    return path


@pytest.fixture
def lib():
    fake = FakeNvml(parse_inventory(SMALL))
    fake.nvmlInit()
    yield fake
    fake.nvmlShutdown()


def placement(start: int, size: int) -> pynvml.c_nvmlGpuInstancePlacement_t:
    p = pynvml.c_nvmlGpuInstancePlacement_t()
    p.start, p.size = start, size
    return p


def carve(lib: FakeNvml, gpu: int, profile: int, start: int):
    """What nvml.create_slice asks, step by step: a GI at the placement, a CI spanning it."""
    h = lib.nvmlDeviceGetHandleByIndex(gpu)
    info = lib.nvmlDeviceGetGpuInstanceProfileInfo(h, profile)
    gi = lib.nvmlDeviceCreateGpuInstanceWithPlacement(
        h, info.id, ctypes.byref(placement(start, info.sliceCount))
    )
    ci_info = lib.nvmlGpuInstanceGetComputeInstanceProfileInfo(
        gi, pynvml.NVML_COMPUTE_INSTANCE_PROFILE_2_SLICE, 0
    )
    return h, gi, lib.nvmlGpuInstanceCreateComputeInstance(gi, ci_info.id)


def mig_devices(lib: FakeNvml, gpu: int) -> list[tuple[str, int, int, str]]:
    """(name, GI, CI, uuid) of every MIG device of the GPU, as discovery reads them."""
    h = lib.nvmlDeviceGetHandleByIndex(gpu)
    out = []
    for slot in range(lib.nvmlDeviceGetMaxMigDeviceCount(h)):
        try:
            m = lib.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
        except pynvml.NVMLError_NotFound:
            continue
        out.append(
            (
                lib.nvmlDeviceGetName(m),
                lib.nvmlDeviceGetGpuInstanceId(m),
                lib.nvmlDeviceGetComputeInstanceId(m),
                lib.nvmlDeviceGetUUID(m),
            )
        )
    return out


def test_a_carved_slice_is_a_new_mig_device_with_its_own_ids_uuid_and_placement(lib):
    h = lib.nvmlDeviceGetHandleByIndex(1)
    info = lib.nvmlDeviceGetGpuInstanceProfileInfo(h, PROFILE_2G)
    assert isinstance(info, pynvml.c_nvmlGpuInstanceProfileInfo_v2_t)
    assert (info.id, info.sliceCount, info.name) == (14, 2, "MIG 2g.20gb")

    _, gi, ci = carve(lib, 1, PROFILE_2G, 4)

    gi_info = lib.nvmlGpuInstanceGetInfo(gi)
    assert (gi_info.id, gi_info.profileId, gi_info.placement.start, gi_info.placement.size) == (
        1,
        14,
        4,
        2,
    )
    devices = mig_devices(lib, 1)
    assert [d[:3] for d in devices] == [
        ("NVIDIA H100 80GB HBM3 MIG 3g.40gb", 2, 0),
        ("NVIDIA H100 80GB HBM3 MIG 2g.20gb", 1, 0),
    ]
    new_uuid = devices[1][3]
    assert new_uuid.startswith("MIG-") and new_uuid != devices[0][3]
    assert lib.nvmlGpuInstanceGetComputeInstanceById(gi, 0).mig.uuid == new_uuid
    # destroyed and carved again, the slice is a new device with a new UUID
    lib.nvmlComputeInstanceDestroy(ci)
    lib.nvmlGpuInstanceDestroy(gi)
    assert [d[1] for d in mig_devices(lib, 1)] == [2]
    carve(lib, 1, PROFILE_2G, 4)
    assert mig_devices(lib, 1)[1][3] not in (new_uuid, devices[0][3])


def test_a_gpu_instance_without_a_compute_instance_is_no_mig_device_yet(lib):
    h = lib.nvmlDeviceGetHandleByIndex(1)
    gi = lib.nvmlDeviceCreateGpuInstanceWithPlacement(h, 14, ctypes.byref(placement(4, 2)))
    assert [d[1] for d in mig_devices(lib, 1)] == [2]
    assert lib.nvmlGpuInstanceGetInfo(lib.nvmlDeviceGetGpuInstanceById(h, 1)).placement.start == 4
    lib.nvmlGpuInstanceDestroy(gi)
    with pytest.raises(pynvml.NVMLError_NotFound):
        lib.nvmlDeviceGetGpuInstanceById(h, 1)


def _create(start: int, size: int = 2, profile_id: int = 14, gpu: int = 1, by_value=False):
    def call(lib):
        p = placement(start, size)
        h = lib.nvmlDeviceGetHandleByIndex(gpu)
        return lib.nvmlDeviceCreateGpuInstanceWithPlacement(
            h, profile_id, p if by_value else ctypes.byref(p)
        )

    return call


def _destroy_gi_with_its_ci(lib):
    h = lib.nvmlDeviceGetHandleByIndex(1)
    return lib.nvmlGpuInstanceDestroy(lib.nvmlDeviceGetGpuInstanceById(h, 2))


def _destroy_twice(lib):
    _, gi, ci = carve(lib, 1, PROFILE_2G, 4)
    lib.nvmlComputeInstanceDestroy(ci)
    lib.nvmlGpuInstanceDestroy(gi)
    return lib.nvmlGpuInstanceDestroy(gi)


def _second_ci_in_a_full_gi(lib):
    _, gi, _ = carve(lib, 1, PROFILE_2G, 4)
    return lib.nvmlGpuInstanceCreateComputeInstance(gi, 1)


@pytest.mark.parametrize(
    ("call", "error"),
    [
        pytest.param(
            _create(3),
            pynvml.NVMLError_InvalidArgument,
            id="a start the profile does not have is InvalidArgument (2g.20gb: 0, 2, 4)",
        ),
        pytest.param(
            _create(4, size=4),
            pynvml.NVMLError_InvalidArgument,
            id="a placement of the wrong size is InvalidArgument",
        ),
        pytest.param(
            _create(4, profile_id=99),
            pynvml.NVMLError_InvalidArgument,
            id="a profile ID the GPU does not have is InvalidArgument",
        ),
        pytest.param(
            _create(4, by_value=True),
            pynvml.NVMLError_InvalidArgument,
            id="a placement passed by value, not by pointer, is InvalidArgument",
        ),
        pytest.param(
            _create(2),
            pynvml.NVMLError_InsufficientResources,
            id="a placement overlapping an instance is InsufficientResources",
        ),
        pytest.param(
            _create(0, gpu=0),
            pynvml.NVMLError_NotSupported,
            id="carving on a GPU not in MIG mode is NotSupported",
        ),
        pytest.param(
            _destroy_gi_with_its_ci,
            pynvml.NVMLError_InUse,
            id="destroying a GPU instance that has a compute instance is InUse",
        ),
        pytest.param(
            _destroy_twice,
            pynvml.NVMLError_InvalidArgument,
            id="the handle of a destroyed instance is InvalidArgument",
        ),
        pytest.param(
            _second_ci_in_a_full_gi,
            pynvml.NVMLError_InsufficientResources,
            id="a compute instance beyond its GPU instance's slices is InsufficientResources",
        ),
        pytest.param(
            lambda lib: lib.nvmlGpuInstanceGetComputeInstanceById(
                lib.nvmlDeviceGetGpuInstanceById(lib.nvmlDeviceGetHandleByIndex(1), 2), 3
            ),
            pynvml.NVMLError_NotFound,
            id="a compute instance ID that does not exist is NotFound",
        ),
    ],
)
def test_carving_errors_are_the_driver_s(lib, call, error):
    with pytest.raises(pynvml.NVMLError) as exc:
        call(lib)
    assert type(exc.value) is error


def test_nothing_is_left_of_a_refused_create(lib):
    before = mig_devices(lib, 1)
    with pytest.raises(pynvml.NVMLError_InsufficientResources):
        _create(2)(lib)
    assert mig_devices(lib, 1) == before
    _create(4)(lib)  # the free part is still free


@pytest.mark.parametrize(
    "changes",
    [
        pytest.param({"mig_create": "refuse"}, id="mig_create: refuse"),
        pytest.param({"privileged": False}, id="privileged: false (not root)"),
    ],
)
def test_a_driver_that_refuses_creates_says_no_permission(changes):
    fake = FakeNvml(parse_inventory({**SMALL, **changes}))
    fake.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NoPermission):
        _create(4)(fake)


def test_a_compute_instance_with_processes_on_it_cannot_be_destroyed():
    inv = json.loads(json.dumps(SMALL))
    inv["gpus"][1]["slices"][0]["in_use"] = True
    fake = FakeNvml(parse_inventory(inv))
    fake.nvmlInit()
    gi = fake.nvmlDeviceGetGpuInstanceById(fake.nvmlDeviceGetHandleByIndex(1), 2)
    with pytest.raises(pynvml.NVMLError_InUse):
        fake.nvmlComputeInstanceDestroy(fake.nvmlGpuInstanceGetComputeInstanceById(gi, 0))


def test_the_carving_survives_in_other_processes_and_gets_device_nodes(tmp_path):
    inv_path = write_inventory(tmp_path / "inv.yaml")
    files = fakenvml.materialize(fakenvml.load_inventory(inv_path), tmp_path / "fake", inv_path)
    fake = FakeNvml.from_file(inv_path, caps_file=files.caps_file, dev_root=files.dev_root)
    fake.nvmlInit()
    carve(fake, 1, PROFILE_2G, 4)
    new_uuid = mig_devices(fake, 1)[1][3]
    # the instance's two capability nodes are there, numbered as in mig-minors (GPU minor 1)
    for minor in (cap_minor(1, 1), cap_minor(1, 1, 0)):
        assert os.major((files.dev_root / f"nvidia-caps/nvidia-cap{minor}").stat().st_rdev) > 0
    assert f"gpu1/gi1/ci0/access {cap_minor(1, 1, 0)}" in files.caps_file.read_text()

    # another process loading the fake (the daemon after a restart) sees the new slice
    seen = subprocess.run(
        [sys.executable, "-c", READ_UUIDS],
        env=os.environ | files.env(),
        capture_output=True,
        text=True,
        check=True,
    ).stdout.split()
    assert seen == [mig_devices(fake, 1)[0][3], new_uuid]

    # and what it destroys is gone here too
    other = FakeNvml.from_file(inv_path, caps_file=files.caps_file, dev_root=files.dev_root)
    other.nvmlInit()
    h = other.nvmlDeviceGetHandleByIndex(1)
    gi = other.nvmlDeviceGetGpuInstanceById(h, 1)
    other.nvmlComputeInstanceDestroy(other.nvmlGpuInstanceGetComputeInstanceById(gi, 0))
    other.nvmlGpuInstanceDestroy(gi)
    fake.nvmlShutdown()
    fake.nvmlInit()
    assert [d[1] for d in mig_devices(fake, 1)] == [2]
    assert not (files.dev_root / f"nvidia-caps/nvidia-cap{cap_minor(1, 1, 0)}").exists()

    # materializing again is a freshly loaded driver: only the inventory's slices
    carve(fake, 1, PROFILE_2G, 4)
    fakenvml.materialize(fakenvml.load_inventory(inv_path), tmp_path / "fake", inv_path)
    fresh = FakeNvml.from_file(inv_path, caps_file=files.caps_file, dev_root=files.dev_root)
    fresh.nvmlInit()
    assert [d[1] for d in mig_devices(fresh, 1)] == [2]


READ_UUIDS = """
from mlq.executor import gpus
print(" ".join(m.uuid for m in gpus.discover().gpus[1].mig))
"""
