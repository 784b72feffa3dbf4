"""The fake NVML answers like pynvml: same calls, same return shapes, same errors."""

from __future__ import annotations

import inspect
import re
import stat
from pathlib import Path

import pynvml
import pytest
from mlq.executor import fakenvml, nvml
from mlq.executor.fakenvml import FakeNvml, cap_minor, load_inventory, parse_inventory
from mlq.scheduler.errors import InvalidInput


@pytest.fixture
def lib(inventory):
    fake = FakeNvml(load_inventory(inventory("h100-8-mig")))
    fake.nvmlInit()
    yield fake
    fake.nvmlShutdown()


def served(fake: type) -> list[str]:
    return [n for n in vars(fake) if n.startswith("nvml")]


def test_every_call_the_fake_serves_is_a_pynvml_function_with_the_same_arguments():
    for name in served(FakeNvml):
        real = getattr(pynvml, name)
        want = [p for p in inspect.signature(real).parameters]
        got = [p for p in inspect.signature(getattr(FakeNvml, name)).parameters][1:]
        assert len(got) == len(want), f"{name}{tuple(got)} vs pynvml {name}{tuple(want)}"


def test_every_nvml_call_the_discovery_module_makes_is_served_by_the_fake():
    source = Path(nvml.__file__).read_text()
    calls = set(re.findall(r"lib\.(nvml\w+)", source))
    assert calls and calls <= set(served(FakeNvml)), calls - set(served(FakeNvml))


def test_structures_are_pynvml_s_own_so_fields_read_as_the_driver_s_do(lib):
    h = lib.nvmlDeviceGetHandleByIndex(7)
    pci = lib.nvmlDeviceGetPciInfo(h)
    assert isinstance(pci, pynvml.nvmlPciInfo_t)
    # pynvml's structures decode char arrays on access: busId reads as str, as from a driver.
    assert pci.busId == "00000000:88:00.0" and pci.bus == 0x88
    assert isinstance(lib.nvmlDeviceGetMemoryInfo(h), pynvml.c_nvmlMemory_t)
    assert lib.nvmlDeviceGetMigMode(h) == [pynvml.NVML_DEVICE_MIG_ENABLE] * 2
    m = lib.nvmlDeviceGetMigDeviceHandleByIndex(h, 3)
    attrs = lib.nvmlDeviceGetAttributes(m)
    assert isinstance(attrs, pynvml.c_nvmlDeviceAttributes)
    assert (attrs.gpuInstanceSliceCount, attrs.computeInstanceSliceCount) == (1, 1)
    info = lib.nvmlGpuInstanceGetInfo(lib.nvmlDeviceGetGpuInstanceById(h, 11))
    assert isinstance(info, pynvml.c_nvmlGpuInstanceInfo_t)
    assert (info.id, info.profileId, info.placement.start, info.placement.size) == (11, 19, 3, 1)
    assert lib.nvmlDeviceGetName(m) == "NVIDIA H100 80GB HBM3 MIG 1g.10gb"
    assert lib.nvmlDeviceGetUUID(m) == "MIG-3b1e7f0a-5d2c-5c11-9a0e-070000000011"
    assert lib.nvmlDeviceIsMigDeviceHandle(m) == 1
    parent = lib.nvmlDeviceGetDeviceHandleFromMigDeviceHandle(m)
    assert lib.nvmlDeviceGetUUID(parent) == lib.nvmlDeviceGetUUID(h)


@pytest.mark.parametrize(
    ("call", "error", "code"),
    [
        pytest.param(
            lambda lib: lib.nvmlDeviceGetMigDeviceHandleByIndex(
                lib.nvmlDeviceGetHandleByIndex(6), 2
            ),
            pynvml.NVMLError_NotFound,
            pynvml.NVML_ERROR_NOT_FOUND,
            id="an empty MIG slot is NotFound",
        ),
        pytest.param(
            lambda lib: lib.nvmlDeviceGetGpuInstanceById(lib.nvmlDeviceGetHandleByIndex(7), 10),
            pynvml.NVMLError_NotFound,
            pynvml.NVML_ERROR_NOT_FOUND,
            id="a GPU instance ID that does not exist is NotFound",
        ),
        pytest.param(
            lambda lib: lib.nvmlDeviceGetHandleByIndex(8),
            pynvml.NVMLError_InvalidArgument,
            pynvml.NVML_ERROR_INVALID_ARGUMENT,
            id="an index past the last GPU is InvalidArgument",
        ),
        pytest.param(
            lambda lib: lib.nvmlDeviceGetMinorNumber(
                lib.nvmlDeviceGetMigDeviceHandleByIndex(lib.nvmlDeviceGetHandleByIndex(7), 0)
            ),
            pynvml.NVMLError_NotSupported,
            pynvml.NVML_ERROR_NOT_SUPPORTED,
            id="a GPU-only call on a MIG handle is NotSupported",
        ),
    ],
)
def test_errors_are_pynvml_s_own_subclasses(lib, call, error, code):
    with pytest.raises(pynvml.NVMLError) as exc:
        call(lib)
    assert type(exc.value) is error and exc.value.value == code
    assert str(exc.value) == pynvml.NVMLError._errcode_to_string[code]


def test_calls_before_init_and_after_shutdown_are_uninitialized(inventory):
    fake = FakeNvml(load_inventory(inventory("h100-8-mig")))
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()
    fake.nvmlInit()
    assert fake.nvmlDeviceGetCount() == 8
    fake.nvmlShutdown()
    with pytest.raises(pynvml.NVMLError_Uninitialized):
        fake.nvmlDeviceGetCount()


def test_a_gpu_without_mig_answers_mig_calls_with_not_supported(inventory):
    fake = FakeNvml(load_inventory(inventory("uncatalogued")))
    fake.nvmlInit()
    with pytest.raises(pynvml.NVMLError_NotSupported):
        fake.nvmlDeviceGetMigMode(fake.nvmlDeviceGetHandleByIndex(1))


def test_a_function_the_fake_does_not_serve_is_not_silently_answered(lib):
    assert lib.NVML_DEVICE_MIG_ENABLE == pynvml.NVML_DEVICE_MIG_ENABLE
    assert lib.NVMLError_NotFound is pynvml.NVMLError_NotFound
    with pytest.raises(AttributeError, match="does not serve nvmlDeviceGetPowerUsage"):
        lib.nvmlDeviceGetPowerUsage(lib.nvmlDeviceGetHandleByIndex(0))


def test_capability_minors_follow_the_driver_s_table():
    # From a real 4-GPU A100 node: gpu3/gi13/access 525, gpu3/gi13/ci0/access 526,
    # gpu3/gi14/access 534; and the table starts "config 1", "monitor 2", "gpu0/gi0/access 3".
    assert (cap_minor(3, 13), cap_minor(3, 13, 0), cap_minor(3, 14)) == (525, 526, 534)
    assert (cap_minor(0, 0), cap_minor(0, 0, 0), cap_minor(0, 0, 7), cap_minor(0, 1)) == (
        3,
        4,
        11,
        12,
    )


def test_materialize_writes_char_nodes_and_the_mig_minors_table(inventory, tmp_path):
    inv = load_inventory(inventory("h100-8-mig"))
    files = fakenvml.materialize(inv, tmp_path)

    names = sorted(p.relative_to(files.dev_root).as_posix() for p in files.dev_root.rglob("*"))
    caps = [n for n in names if n.startswith("nvidia-caps/")]
    assert len(caps) == 2 + 2 * (2 + 7)  # config, monitor, and GI + CI per carved slice
    assert {n for n in names if not n.startswith("nvidia-caps/")} == {
        "nvidia-caps",
        "nvidiactl",
        "nvidia-uvm",
        "nvidia-uvm-tools",
    } | {f"nvidia{i}" for i in range(8)}
    assert all(
        stat.S_ISCHR((files.dev_root / n).stat().st_mode) for n in names if n != "nvidia-caps"
    )
    table = files.caps_file.read_text().splitlines()
    assert table[:3] == ["config 1", "monitor 2", "gpu0/gi0/access 3"]
    assert len(table) == 2 + 8 * 15 * 9
    # The majors other than 195 are ones this kernel has not given to a real driver.
    uvm_major = (files.dev_root / "nvidia-uvm").stat().st_rdev >> 8
    assert str(uvm_major) not in Path("/proc/devices").read_text().split()


@pytest.mark.parametrize(
    ("gpus", "message"),
    [
        pytest.param(
            [
                {
                    "name": "NVIDIA H100 80GB HBM3",
                    "mig": "enabled",
                    "slices": [
                        {"profile": "3g.40gb", "start": 0},
                        {"profile": "2g.20gb", "start": 2},
                    ],
                }
            ],
            "gpus[0]: 2g.20gb@2 overlaps 3g.40gb@0",
            id="slices the hardware could not carve are refused",
        ),
        pytest.param(
            [
                {
                    "name": "NVIDIA H100 80GB HBM3",
                    "mig": "enabled",
                    "slices": [{"profile": "1g.5gb", "start": 0}],
                }
            ],
            "gpus[0]: slices[0]: H100-80GB has no MIG profile 1g.5gb",
            id="a profile of another model is refused",
        ),
        pytest.param(
            [{"name": "NVIDIA H100 80GB HBM3", "slices": [{"profile": "1g.10gb", "start": 0}]}],
            "gpus[0]: slices are listed but mig is not enabled",
            id="slices on a GPU not in MIG mode are refused",
        ),
        pytest.param(
            [{"name": "Some GPU"}],
            'gpus[0]: memory_mb is needed for "Some GPU" (not a catalogued model)',
            id="an uncatalogued model must say its memory",
        ),
    ],
)
def test_an_impossible_inventory_is_refused_with_the_reason(gpus, message):
    with pytest.raises(InvalidInput) as exc:
        parse_inventory({"gpus": gpus}, "inv.yaml")
    assert str(exc.value) == f"inv.yaml: {message}"


def test_the_command_line_prints_the_environment_to_use(inventory, tmp_path, capsys):
    assert fakenvml.main([str(inventory("h100-8-mig")), str(tmp_path)]) == 0
    out = capsys.readouterr().out.splitlines()
    assert out == [
        f"export MLQ_DEV_ROOT={tmp_path / 'dev'}",
        f"export MLQ_NVIDIA_CAPS_FILE={tmp_path / 'mig-minors'}",
        f"export MLQ_FAKE_NVML={inventory('h100-8-mig')}",
    ]
