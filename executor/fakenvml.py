"""A fake NVML for machines without a GPU: the same ``pynvml`` calls, served from a YAML
inventory, plus matching fake device nodes and ``mig-minors`` file.

:class:`FakeNvml` stands in for the ``pynvml`` module. It serves exactly the calls
:mod:`mlq.executor.nvml` makes, with the real return shapes (``str`` from the
string calls, pynvml's own ctypes structures for PCI info, memory, device attributes
and GPU instance info, ``[current, pending]`` for the MIG mode) and raises pynvml's
own ``NVMLError`` subclasses where the driver would: ``NotFound`` for an empty MIG
slot or a missing GPU instance, ``NotSupported`` for MIG calls on a GPU without MIG,
``InvalidArgument`` for an index out of range, ``Uninitialized`` before ``nvmlInit``,
``LibraryNotFound`` / ``DriverNotLoaded`` at init for ``driver: missing`` /
``driver: not-loaded``, ``NoPermission`` for placement reads when ``privileged:
false``. Any other attribute is looked up on ``pynvml`` only for constants and error
classes (``NVML...``); an NVML *function* the fake does not serve is an AttributeError,
so a new call in nvml.py cannot pass unnoticed.

It also carves and destroys, as the driver does: GPU instances at a placement
(``nvmlDeviceCreateGpuInstanceWithPlacement``), compute instances in them, and their
destruction, with the driver's errors (``InvalidArgument`` for a start the profile does
not have, ``InsufficientResources`` for a placement that overlaps an instance, ``InUse``
for a GPU instance that still has compute instances or a compute instance with processes
on it, ``NoPermission`` when the inventory says ``mig_create: refuse`` or ``privileged:
false``). What was carved is the driver's state, shared by every process: the fake keeps
it in ``fake-nvml-state.json`` beside the ``mig-minors`` file :func:`materialize` wrote
(read at every ``nvmlInit``, written under a lock at every change), and makes or removes
the new instances' capability device nodes under that dev root. A fake without such
files (an inventory alone) keeps what it carved in the object only.

:func:`materialize` writes what the driver would have put on disk: char device nodes
(``mknod``) ``nvidia<minor>``, ``nvidiactl``, ``nvidia-uvm``, ``nvidia-uvm-tools`` and
``nvidia-caps/nvidia-cap<N>`` under ``DIR/dev``, and ``DIR/mig-minors`` in the driver's
format, and returns the environment that points mlq at them::

    python -m mlq.executor.fakenvml configs/gpus/h100-8-mig.yaml /tmp/fakegpu
    # prints MLQ_FAKE_NVML=... MLQ_DEV_ROOT=... MLQ_NVIDIA_CAPS_FILE=...

The inventory format is described in docs/gpus.md; configs/gpus/ holds examples.
"""

from __future__ import annotations

import contextlib
import ctypes
import fcntl
import json
import os
import stat
import sys
import uuid as uuidlib
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import pynvml
from mlq.executor import mig as catalogue
from mlq.executor.errors import InvalidInput

NVIDIA_MAJOR = 195  # fixed by the driver: /dev/nvidia<minor>, /dev/nvidiactl = 195:255
CTL_MINOR = 255
MAX_MIG_DEVICES = 7  # what A100/H100/H200 report for nvmlDeviceGetMaxMigDeviceCount
MAX_GI, MAX_CI = 15, 8  # ids the driver lays out per GPU in mig-minors (gi0-14, ci0-7)
STATE_FILE = "fake-nvml-state.json"  # what was carved, beside the mig-minors file
# NVML_COMPUTE_INSTANCE_PROFILE_* index -> compute slices; the fake serves the first five
# (1, 2, 3, 4 and 7 slices), which is what A100 and H100 GPU instances offer
CI_PROFILE_SLICES = {0: 1, 1: 2, 2: 3, 3: 4, 4: 7}

# Total memory (MiB) of a whole GPU per catalogue model, for inventories that omit it.
DEFAULT_MEMORY_MB = {
    "A100-40GB": 40960,
    "A100-80GB": 81920,
    "H100-80GB": 81559,
    "H200-141GB": 143771,
}


@dataclass
class FakeMig:
    """One MIG device of the inventory (a compute instance in a GPU instance), or a GPU
    instance that has no compute instance yet (``ci`` and ``slot`` None: no MIG device)."""

    profile: str
    profile_id: int
    start: int
    size: int  # memory slots
    gi_slices: int
    ci_slices: int
    memory_mb: int
    gi: int
    ci: int | None
    uuid: str
    slot: int | None  # nvmlDeviceGetMigDeviceHandleByIndex index
    serial: int = 0  # which creation: a handle to a destroyed instance is stale
    in_use: bool = False  # processes run on it: destroying its compute instance is InUse


@dataclass
class FakeGpu:
    index: int
    name: str
    uuid: str
    minor: int
    memory_mb: int
    pci_bus_id: str
    mig: str  # "disabled" | "enabled" | "unsupported"
    mig_pending: str
    slices: list[FakeMig] = field(default_factory=list)


@dataclass
class Inventory:
    gpus: list[FakeGpu]
    driver: str = "present"  # "present" | "missing" | "not-loaded"
    driver_version: str = "550.90.07"
    privileged: bool = True
    mig_create: str = "allow"  # "allow" | "refuse": every create is NoPermission
    node: str = "fake-node"  # seeds the UUIDs the fake makes up


def _stable_uuid(seed: str, what: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"mlq-fake:{seed}:{what}"))


def parse_inventory(data: Any, source: str | None = None) -> Inventory:
    """Check an inventory and fill its defaults; every problem is reported at once."""
    problems: list[str] = []
    if not isinstance(data, dict):
        raise InvalidInput("an inventory is a mapping with a gpus: list", source)
    keys = {"driver", "driver_version", "node", "privileged", "mig_create", "gpus"}
    unknown = set(data) - keys
    if unknown:
        problems.append(f"unknown keys {sorted(unknown)}")
    seed = str(data.get("node", "fake-node"))
    driver = str(data.get("driver", "present"))
    if driver not in ("present", "missing", "not-loaded"):
        problems.append(f'driver: "{driver}" is not one of present, missing, not-loaded')
    mig_create = str(data.get("mig_create", "allow"))
    if mig_create not in ("allow", "refuse"):
        problems.append(f'mig_create: "{mig_create}" is not one of allow, refuse')
    gpus: list[FakeGpu] = []
    for i, g in enumerate(data.get("gpus") or []):
        try:
            gpus.append(_parse_gpu(g, i, seed))
        except ValueError as exc:
            problems.append(f"gpus[{i}]: {exc}")
    if sorted(g.index for g in gpus) != list(range(len(gpus))):
        problems.append("gpus: indices must be 0..N-1, each once")
    if len({g.minor for g in gpus}) != len(gpus):
        problems.append("gpus: two GPUs share a minor number")
    if problems:
        raise InvalidInput(problems, source)
    return Inventory(
        gpus=sorted(gpus, key=lambda g: g.index),
        driver=driver,
        driver_version=str(data.get("driver_version", "550.90.07")),
        privileged=bool(data.get("privileged", True)),
        mig_create=mig_create,
        node=seed,
    )


def _parse_gpu(g: Any, pos: int, seed: str) -> FakeGpu:
    if not isinstance(g, dict) or "name" not in g:
        raise ValueError("each GPU needs at least a name, e.g. {name: NVIDIA H100 80GB HBM3}")
    index = int(g.get("index", pos))
    name = str(g["name"])
    model = catalogue.canonical_model(name)
    mig = str(g.get("mig", "disabled"))
    if mig not in ("disabled", "enabled", "unsupported"):
        raise ValueError(f'mig: "{mig}" is not one of disabled, enabled, unsupported')
    memory = g.get("memory_mb", DEFAULT_MEMORY_MB.get(model or ""))
    if memory is None:
        raise ValueError(f'memory_mb is needed for "{name}" (not a catalogued model)')
    gpu = FakeGpu(
        index=index,
        name=name,
        uuid=str(g.get("uuid") or "GPU-" + _stable_uuid(seed, str(index))),
        minor=int(g.get("minor", index)),
        memory_mb=int(memory),
        pci_bus_id=str(g.get("pci_bus_id", f"00000000:{0x18 + 0x10 * index:02X}:00.0")),
        mig=mig,
        mig_pending=str(g.get("mig_pending", mig)),
    )
    slices = g.get("slices") or []
    if slices and mig != "enabled":
        raise ValueError("slices are listed but mig is not enabled")
    for j, s in enumerate(slices):
        try:
            gpu.slices.append(_parse_slice(s, j, gpu, model, seed))
        except ValueError as exc:
            raise ValueError(f"slices[{j}]: {exc}") from None
    # Compute instances of one GPU instance share its profile and placement; the GPU
    # instances themselves must obey the model's placement rules, as on real hardware.
    gis: dict[int, tuple[str, int]] = {}
    for s in gpu.slices:
        if gis.setdefault(s.gi, (s.profile, s.start)) != (s.profile, s.start):
            raise ValueError(f"GI {s.gi} is listed with two different profiles or starts")
    if len({(s.gi, s.ci) for s in gpu.slices}) != len(gpu.slices):
        raise ValueError("two slices share a GI and CI id")
    if model:
        problems = catalogue.layout_problems(model, sorted(gis.values(), key=lambda x: x[1]))
        if problems:
            raise ValueError("; ".join(problems))
    slots = [s.slot for s in gpu.slices]
    if len(set(slots)) != len(slots) or any(not 0 <= x < MAX_MIG_DEVICES for x in slots):
        raise ValueError(f"MIG device slots must be distinct, 0..{MAX_MIG_DEVICES - 1}")
    return gpu


def _parse_slice(s: Any, pos: int, gpu: FakeGpu, model: str | None, seed: str) -> FakeMig:
    if not isinstance(s, dict) or "profile" not in s or "start" not in s:
        raise ValueError("each slice needs profile and start, e.g. {profile: 1g.10gb, start: 0}")
    name, start = str(s["profile"]), int(s["start"])
    p = catalogue.profile(model, name) if model else None
    if model and p is None:
        raise ValueError(f"{model} has no MIG profile {name}")
    if p is None:  # an uncatalogued model: the inventory says what the driver would
        need = ("profile_id", "compute_slices", "memory_slices", "memory_mb")
        missing = [k for k in need if k not in s]
        if missing:
            raise ValueError(f"an uncatalogued model's slice needs {', '.join(missing)}")
        pid, gi_slices, size = (
            int(s["profile_id"]),
            int(s["compute_slices"]),
            int(s["memory_slices"]),
        )
        memory = int(s["memory_mb"])
    else:
        pid, gi_slices, size = p.profile_id, p.compute_slices, p.memory_slices
        memory = int(s.get("memory_mb", p.memory_gb * 1000))
    gi = int(s.get("gi", start + 1))
    ci = int(s.get("ci", 0))
    if not (0 <= gi < MAX_GI and 0 <= ci < MAX_CI):
        raise ValueError(f"gi must be 0..{MAX_GI - 1} and ci 0..{MAX_CI - 1}")
    return FakeMig(
        profile=name,
        profile_id=pid,
        start=start,
        size=size,
        gi_slices=gi_slices,
        ci_slices=int(s.get("ci_slices", gi_slices)),
        memory_mb=memory,
        gi=gi,
        ci=ci,
        uuid=str(s.get("uuid") or "MIG-" + _stable_uuid(seed, f"{gpu.index}/{gi}/{ci}")),
        slot=int(s.get("slot", pos)),
        in_use=bool(s.get("in_use", False)),
    )


def load_inventory(path: str | Path) -> Inventory:
    from mlq.executor.yamlfile import load_yaml

    return parse_inventory(load_yaml(path), str(path))


# -- the fake module ------------------------------------------------------------------


class _GpuHandle:
    __slots__ = ("gpu",)

    def __init__(self, gpu: FakeGpu) -> None:
        self.gpu = gpu


class _MigHandle:
    __slots__ = ("gpu", "mig")

    def __init__(self, gpu: FakeGpu, mig: FakeMig) -> None:
        self.gpu, self.mig = gpu, mig


class _GiHandle:
    __slots__ = ("gpu", "mig")

    def __init__(self, gpu: FakeGpu, mig: FakeMig) -> None:
        self.gpu, self.mig = gpu, mig


class _CiHandle:
    __slots__ = ("gpu", "mig")

    def __init__(self, gpu: FakeGpu, mig: FakeMig) -> None:
        self.gpu, self.mig = gpu, mig


def _err(cls: type) -> Exception:
    return cls()


def state_path(caps_file: str | Path) -> Path:
    """Where the fake keeps what was carved: beside the ``mig-minors`` file."""
    return Path(caps_file).with_name(STATE_FILE)


class FakeNvml:
    """Serves the pynvml calls mlq uses from an :class:`Inventory` (see the module doc).

    ``state``: the file that holds what was carved since the inventory was materialized
    (None: kept in this object only); ``dev_root``: the fake device nodes' directory, where
    a carved instance's capability nodes are made (None: none are made).
    """

    def __init__(
        self,
        inventory: Inventory,
        state: str | Path | None = None,
        dev_root: str | Path | None = None,
    ) -> None:
        self.inventory = inventory
        self.state = Path(state) if state else None
        self.dev_root = Path(dev_root) if dev_root else None
        self._refs = 0
        self._serial = 0  # the last instance created (kept in the state file)
        self.calls: list[str] = []  # every call made, for tests that check what was asked
        self._load()

    @classmethod
    def from_file(
        cls,
        path: str | Path,
        caps_file: str | Path | None = None,
        dev_root: str | Path | None = None,
    ) -> FakeNvml:
        """The fake for an inventory file. ``caps_file``: the materialized ``mig-minors``,
        whose directory holds the carving state; the driver's own path (or None) means
        no state file and no device nodes are kept."""
        from mlq.executor.gpus import MIG_MINORS_FILE

        if caps_file is None or str(caps_file) == MIG_MINORS_FILE:
            return cls(load_inventory(path))
        return cls(load_inventory(path), state_path(caps_file), dev_root)

    def __getattr__(self, name: str) -> Any:
        # Constants and error classes come from the real module, so `except
        # pynvml.NVMLError_NotFound` and `== pynvml.NVML_DEVICE_MIG_ENABLE` match.
        if name.startswith("NVML"):
            return getattr(pynvml, name)
        raise AttributeError(f"the fake NVML does not serve {name}")

    # -- init ---------------------------------------------------------------------

    def _check(self, call: str) -> None:
        self.calls.append(call)
        if self._refs <= 0:
            raise _err(pynvml.NVMLError_Uninitialized)

    def nvmlInit(self) -> None:
        self.calls.append("nvmlInit")
        if self.inventory.driver == "missing":
            raise _err(pynvml.NVMLError_LibraryNotFound)
        if self.inventory.driver == "not-loaded":
            raise _err(pynvml.NVMLError_DriverNotLoaded)
        self._load()  # what other processes carved meanwhile
        self._refs += 1

    def nvmlShutdown(self) -> None:
        self._check("nvmlShutdown")
        self._refs -= 1

    def nvmlSystemGetDriverVersion(self) -> str:
        self._check("nvmlSystemGetDriverVersion")
        return self.inventory.driver_version

    # -- GPUs ---------------------------------------------------------------------

    def nvmlDeviceGetCount(self) -> int:
        self._check("nvmlDeviceGetCount")
        return len(self.inventory.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> _GpuHandle:
        self._check("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.inventory.gpus):
            raise _err(pynvml.NVMLError_InvalidArgument)
        return _GpuHandle(self.inventory.gpus[index])

    def nvmlDeviceGetName(self, h: _GpuHandle | _MigHandle) -> str:
        self._check("nvmlDeviceGetName")
        if isinstance(h, _MigHandle):
            m = h.mig
            prof = f"{m.ci_slices}c.{m.profile}" if m.ci_slices != m.gi_slices else m.profile
            return f"{h.gpu.name} MIG {prof}"
        return self._gpu(h).name

    def nvmlDeviceGetUUID(self, h: _GpuHandle | _MigHandle) -> str:
        self._check("nvmlDeviceGetUUID")
        return h.mig.uuid if isinstance(h, _MigHandle) else self._gpu(h).uuid

    def nvmlDeviceGetMemoryInfo(self, h: _GpuHandle | _MigHandle, version: Any = None) -> Any:
        self._check("nvmlDeviceGetMemoryInfo")
        total = (h.mig.memory_mb if isinstance(h, _MigHandle) else self._gpu(h).memory_mb) << 20
        mem = pynvml.c_nvmlMemory_t()
        mem.total, mem.free, mem.used = total, total, 0
        return mem

    def nvmlDeviceGetMinorNumber(self, h: _GpuHandle) -> int:
        self._check("nvmlDeviceGetMinorNumber")
        return self._gpu(h, mig_ok=False).minor

    def nvmlDeviceGetPciInfo(self, h: _GpuHandle) -> Any:
        self._check("nvmlDeviceGetPciInfo")
        g = self._gpu(h, mig_ok=False)
        pci = pynvml.nvmlPciInfo_t()
        domain, bus, rest = g.pci_bus_id.split(":")
        pci.domain, pci.bus, pci.device = int(domain, 16), int(bus, 16), int(rest.split(".")[0], 16)
        pci.busId = g.pci_bus_id.encode()  # a c_char array: bytes, as from the driver
        pci.busIdLegacy = g.pci_bus_id[4:].encode()
        pci.pciDeviceId = 0x233010DE
        return pci

    def nvmlDeviceIsMigDeviceHandle(self, h: Any) -> int:
        self._check("nvmlDeviceIsMigDeviceHandle")
        return int(isinstance(h, _MigHandle))

    # -- MIG ----------------------------------------------------------------------

    def nvmlDeviceGetMigMode(self, h: _GpuHandle) -> list[int]:
        self._check("nvmlDeviceGetMigMode")
        g = self._mig_capable(h)
        on = pynvml.NVML_DEVICE_MIG_ENABLE
        off = pynvml.NVML_DEVICE_MIG_DISABLE
        return [on if g.mig == "enabled" else off, on if g.mig_pending == "enabled" else off]

    def nvmlDeviceGetMaxMigDeviceCount(self, h: _GpuHandle) -> int:
        self._check("nvmlDeviceGetMaxMigDeviceCount")
        self._mig_capable(h)
        return MAX_MIG_DEVICES

    def nvmlDeviceGetMigDeviceHandleByIndex(self, h: _GpuHandle, index: int) -> _MigHandle:
        self._check("nvmlDeviceGetMigDeviceHandleByIndex")
        g = self._mig_capable(h)
        if not 0 <= index < MAX_MIG_DEVICES:
            raise _err(pynvml.NVMLError_InvalidArgument)
        if g.mig != "enabled":
            raise _err(pynvml.NVMLError_NotFound)
        for m in g.slices:
            if m.slot == index and m.ci is not None:
                return _MigHandle(g, m)
        raise _err(pynvml.NVMLError_NotFound)

    def nvmlDeviceGetDeviceHandleFromMigDeviceHandle(self, h: _MigHandle) -> _GpuHandle:
        self._check("nvmlDeviceGetDeviceHandleFromMigDeviceHandle")
        return _GpuHandle(self._mig(h)[0])

    def nvmlDeviceGetGpuInstanceId(self, h: _MigHandle) -> int:
        self._check("nvmlDeviceGetGpuInstanceId")
        return self._mig(h)[1].gi

    def nvmlDeviceGetComputeInstanceId(self, h: _MigHandle) -> int:
        self._check("nvmlDeviceGetComputeInstanceId")
        return self._mig(h)[1].ci

    def nvmlDeviceGetAttributes(self, h: _GpuHandle | _MigHandle) -> Any:
        self._check("nvmlDeviceGetAttributes")
        attrs = pynvml.c_nvmlDeviceAttributes()
        if isinstance(h, _MigHandle):
            m = h.mig
            attrs.gpuInstanceSliceCount = m.gi_slices
            attrs.computeInstanceSliceCount = m.ci_slices
            attrs.memorySizeMB = m.memory_mb
            attrs.multiprocessorCount = 16 * m.ci_slices
        else:
            g = self._gpu(h)
            attrs.gpuInstanceSliceCount = attrs.computeInstanceSliceCount = 7
            attrs.memorySizeMB = g.memory_mb
            attrs.multiprocessorCount = 132
        return attrs

    def nvmlDeviceGetGpuInstanceById(self, h: _GpuHandle, gi_id: int) -> _GiHandle:
        self._check("nvmlDeviceGetGpuInstanceById")
        g = self._mig_capable(h)
        if not self.inventory.privileged:
            raise _err(pynvml.NVMLError_NoPermission)
        for m in g.slices:
            if m.gi == gi_id:
                return _GiHandle(g, m)
        raise _err(pynvml.NVMLError_NotFound)

    def nvmlGpuInstanceGetInfo(self, gi: _GiHandle) -> Any:
        self._check("nvmlGpuInstanceGetInfo")
        m = self._live_gi(gi)
        info = pynvml.c_nvmlGpuInstanceInfo_t()
        info.id = m.gi
        info.profileId = m.profile_id
        info.placement.start = m.start
        info.placement.size = m.size
        return info

    # -- carving ----------------------------------------------------------------------

    def nvmlDeviceGetGpuInstanceProfileInfo(self, device: _GpuHandle, profile: int, version=2):
        """``profile`` is an NVML_GPU_INSTANCE_PROFILE_* index; the answer's ``id`` is the
        profile ID that creating takes."""
        self._check("nvmlDeviceGetGpuInstanceProfileInfo")
        g = self._mig_enabled(device)
        p = self._profile_by(g, lambda p: p.nvml_profile == profile)
        if version == 2:
            info = pynvml.c_nvmlGpuInstanceProfileInfo_v2_t()
            info.name = f"MIG {p.name}".encode()
        elif version == 1:
            info = pynvml.c_nvmlGpuInstanceProfileInfo_t()
        else:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        info.id = p.profile_id
        info.sliceCount = p.compute_slices
        info.instanceCount = min(len(p.starts), p.max_instances)
        info.multiprocessorCount = 16 * p.compute_slices
        info.copyEngineCount = p.compute_slices
        info.memorySizeMB = p.memory_gb * 1000
        return info

    def nvmlDeviceCreateGpuInstanceWithPlacement(
        self, device: _GpuHandle, profileId: int, placement: Any
    ) -> _GiHandle:
        """``placement``: a pointer to a ``c_nvmlGpuInstancePlacement_t`` (``byref``), as the
        C function takes; a structure passed by value is InvalidArgument."""
        self._check("nvmlDeviceCreateGpuInstanceWithPlacement")
        g = self._mig_enabled(device)
        self._may_create()
        place = _pointee(placement, pynvml.c_nvmlGpuInstancePlacement_t)
        p = self._profile_by(
            g, lambda p: p.profile_id == profileId, pynvml.NVMLError_InvalidArgument
        )
        if place.start not in p.starts or place.size != p.memory_slices:
            raise _err(pynvml.NVMLError_InvalidArgument)
        with self._changing():
            placed = sorted({(m.profile, m.start) for m in g.slices}, key=lambda x: x[1])
            if not catalogue.fits(self._model(g), p.name, place.start, placed)[0]:
                raise _err(pynvml.NVMLError_InsufficientResources)
            used = {m.gi for m in g.slices}
            order = [0, *range(1, MAX_GI)] if p.compute_slices == 7 else range(1, MAX_GI)
            gi = next((i for i in order if i not in used), None)
            if gi is None:
                raise _err(pynvml.NVMLError_InsufficientResources)
            self._serial += 1
            m = FakeMig(
                profile=p.name,
                profile_id=p.profile_id,
                start=place.start,
                size=p.memory_slices,
                gi_slices=p.compute_slices,
                ci_slices=0,
                memory_mb=p.memory_gb * 1000,
                gi=gi,
                ci=None,
                uuid="",
                slot=None,
                serial=self._serial,
            )
            g.slices.append(m)
            self._cap_node(g, gi, None, make=True)
        return _GiHandle(g, m)

    def nvmlGpuInstanceGetComputeInstanceProfileInfo(
        self, device: _GiHandle, profile: int, engProfile: int, version=2
    ) -> Any:
        """``device`` is a GPU instance handle (pynvml's name); ``profile`` an
        NVML_COMPUTE_INSTANCE_PROFILE_* index, which is also the profile ID it answers."""
        self._check("nvmlGpuInstanceGetComputeInstanceProfileInfo")
        m = self._live_gi(device)
        if engProfile != pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED:
            raise _err(pynvml.NVMLError_InvalidArgument)
        slices = CI_PROFILE_SLICES.get(profile)
        if slices is None or slices > m.gi_slices:
            raise _err(pynvml.NVMLError_NotSupported)
        if version == 2:
            info = pynvml.c_nvmlComputeInstanceProfileInfo_v2_t()
            name = m.profile if slices == m.gi_slices else f"{slices}c.{m.profile}"
            info.name = f"MIG {name}".encode()
        elif version == 1:
            info = pynvml.c_nvmlComputeInstanceProfileInfo_t()
        else:
            raise pynvml.NVMLError(pynvml.NVML_ERROR_FUNCTION_NOT_FOUND)
        info.id = profile
        info.sliceCount = slices
        info.instanceCount = m.gi_slices // slices
        info.multiprocessorCount = 16 * slices
        return info

    def nvmlGpuInstanceCreateComputeInstance(self, gpuInstance: _GiHandle, profileId: int):
        self._check("nvmlGpuInstanceCreateComputeInstance")
        self._live_gi(gpuInstance)
        self._may_create()
        slices = CI_PROFILE_SLICES.get(profileId)
        if slices is None:
            raise _err(pynvml.NVMLError_InvalidArgument)
        g = gpuInstance.gpu
        with self._changing():
            gi = self._live_gi(gpuInstance)  # it may have been destroyed meanwhile
            mine = [m for m in g.slices if m.gi == gi.gi and m.ci is not None]
            if sum(m.ci_slices for m in mine) + slices > gi.gi_slices:
                raise _err(pynvml.NVMLError_InsufficientResources)
            ci = min(set(range(MAX_CI)) - {m.ci for m in mine})
            slots = {m.slot for m in g.slices}
            slot = next((i for i in range(MAX_MIG_DEVICES) if i not in slots), None)
            if slot is None:
                raise _err(pynvml.NVMLError_InsufficientResources)
            self._serial += 1
            new = FakeMig(
                **{**asdict(gi), "ci": ci, "ci_slices": slices, "slot": slot, "in_use": False},
            )
            new.uuid = "MIG-" + _stable_uuid(
                self.inventory.node, f"{g.index}/{gi.gi}/{ci}/{self._serial}"
            )
            if gi.ci is None:  # its first compute instance: the bare GI entry becomes it
                g.slices[g.slices.index(gi)] = new
            else:
                g.slices.append(new)
            self._cap_node(g, gi.gi, ci, make=True)
        return _CiHandle(g, new)

    def nvmlGpuInstanceGetComputeInstanceById(self, gpuInstance: _GiHandle, computeInstanceId):
        self._check("nvmlGpuInstanceGetComputeInstanceById")
        gi = self._live_gi(gpuInstance)
        for m in gpuInstance.gpu.slices:
            if m.gi == gi.gi and m.ci == computeInstanceId:
                return _CiHandle(gpuInstance.gpu, m)
        raise _err(pynvml.NVMLError_NotFound)

    def nvmlComputeInstanceDestroy(self, computeInstance: _CiHandle) -> int:
        self._check("nvmlComputeInstanceDestroy")
        self._may_change()
        self._live_ci(computeInstance)
        g = computeInstance.gpu
        with self._changing():
            m = self._live_ci(computeInstance)
            if m.in_use:
                raise _err(pynvml.NVMLError_InUse)
            others = [x for x in g.slices if x.gi == m.gi and x.ci is not None and x is not m]
            i = g.slices.index(m)
            if others:
                del g.slices[i]
            else:  # the GPU instance stays, empty, until it is destroyed
                g.slices[i] = FakeMig(
                    **{**asdict(m), "ci": None, "slot": None, "uuid": "", "ci_slices": 0}
                )
            self._cap_node(g, m.gi, m.ci, make=False)
        return pynvml.NVML_SUCCESS

    def nvmlGpuInstanceDestroy(self, gpuInstance: _GiHandle) -> int:
        self._check("nvmlGpuInstanceDestroy")
        self._may_change()
        self._live_gi(gpuInstance)
        g = gpuInstance.gpu
        with self._changing():
            m = self._live_gi(gpuInstance)  # it may have been destroyed meanwhile
            if any(x.gi == m.gi and x.ci is not None for x in g.slices):
                raise _err(pynvml.NVMLError_InUse)  # compute instances are active on it
            g.slices.remove(m)
            self._cap_node(g, m.gi, None, make=False)
        return pynvml.NVML_SUCCESS

    # -- helpers ------------------------------------------------------------------

    def _gpu(self, h: Any, mig_ok: bool = True) -> FakeGpu:
        if isinstance(h, _MigHandle):
            if mig_ok:
                return h.gpu
            raise _err(pynvml.NVMLError_NotSupported)
        if not isinstance(h, _GpuHandle):
            raise _err(pynvml.NVMLError_InvalidArgument)
        return h.gpu

    def _mig_capable(self, h: Any) -> FakeGpu:
        g = self._gpu(h, mig_ok=False)
        if g.mig == "unsupported":
            raise _err(pynvml.NVMLError_NotSupported)
        return g

    def _mig(self, h: Any) -> tuple[FakeGpu, FakeMig]:
        if not isinstance(h, _MigHandle):
            raise _err(pynvml.NVMLError_InvalidArgument)
        return h.gpu, h.mig

    def _mig_enabled(self, h: Any) -> FakeGpu:
        """A GPU handle whose GPU is in MIG mode now (else NotSupported, as the driver)."""
        g = self._mig_capable(h)
        if g.mig != "enabled":
            raise _err(pynvml.NVMLError_NotSupported)
        return g

    def _model(self, g: FakeGpu) -> str:
        return catalogue.canonical_model(g.name) or g.name

    def _profile_by(
        self, g: FakeGpu, match: Any, error: type | None = None
    ) -> catalogue.MigProfile:
        """The GPU's catalogued profile that ``match`` picks; an uncatalogued model has
        none the fake knows (NotSupported)."""
        for p in catalogue.profiles_for(g.name).values():
            if match(p):
                return p
        raise _err(error or pynvml.NVMLError_NotSupported)

    def _may_change(self) -> None:
        # Creating and destroying MIG instances needs root (the mig-config capability).
        if not self.inventory.privileged:
            raise _err(pynvml.NVMLError_NoPermission)

    def _may_create(self) -> None:
        self._may_change()
        if self.inventory.mig_create == "refuse":
            raise _err(pynvml.NVMLError_NoPermission)

    def _live_gi(self, h: Any) -> FakeMig:
        """The GPU instance a handle names, if it still exists (else the handle is stale:
        InvalidArgument, as the driver answers for a destroyed instance's handle)."""
        if not isinstance(h, _GiHandle):
            raise _err(pynvml.NVMLError_InvalidArgument)
        for m in h.gpu.slices:
            if m.gi == h.mig.gi and m.serial == h.mig.serial and m.start == h.mig.start:
                return m
        raise _err(pynvml.NVMLError_InvalidArgument)

    def _live_ci(self, h: Any) -> FakeMig:
        if not isinstance(h, _CiHandle):
            raise _err(pynvml.NVMLError_InvalidArgument)
        for m in h.gpu.slices:
            if m.gi == h.mig.gi and m.ci == h.mig.ci and m.uuid == h.mig.uuid:
                return m
        raise _err(pynvml.NVMLError_InvalidArgument)

    # -- the state other processes see ----------------------------------------------

    def _load(self) -> None:
        """Replace every MIG GPU's instances with the state file's, where there is one."""
        if self.state is None:
            return
        try:
            data = json.loads(self.state.read_text())
        except FileNotFoundError:
            return
        self._serial = int(data.get("serial", 0))
        for g in self.inventory.gpus:
            got = data.get("gpus", {}).get(str(g.index))
            if got is not None:
                g.slices[:] = [FakeMig(**m) for m in got]

    def _save(self) -> None:
        if self.state is None:
            return
        data = {
            "serial": self._serial,
            "gpus": {
                str(g.index): [asdict(m) for m in g.slices]
                for g in self.inventory.gpus
                if g.mig == "enabled"
            },
        }
        tmp = self.state.with_name(self.state.name + ".tmp")
        tmp.write_text(json.dumps(data, indent=1))
        tmp.replace(self.state)  # readers see the old state or the new, never half

    @contextlib.contextmanager
    def _changing(self) -> Iterator[None]:
        """A change of the carving: made under the state file's lock, on its newest
        content, and written back only if it succeeded."""
        if self.state is None:
            yield
            return
        lock = self.state.with_name(self.state.name + ".lock")
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            self._load()  # handles stay valid: they name instances by id, not by object
            yield
            self._save()
        finally:
            os.close(fd)

    def _cap_node(self, g: FakeGpu, gi: int, ci: int | None, make: bool) -> None:
        """Make (or remove) ``nvidia-caps/nvidia-cap<N>`` for an instance, as the driver's
        helper does, under a dev root :func:`materialize` wrote (never the real /dev)."""
        if self.dev_root is None or self.dev_root == Path("/dev"):
            return
        caps = self.dev_root / "nvidia-caps"
        config = caps / "nvidia-cap1"
        if not config.exists():
            return
        minor = cap_minor(g.minor, gi, ci)
        path = caps / f"nvidia-cap{minor}"
        if path.exists() or path.is_symlink():
            path.unlink()
        if make:
            major = os.major(config.stat().st_rdev)
            os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))


def _pointee(ref: Any, kind: type) -> Any:
    """The structure a ``byref``/``pointer`` argument points at (InvalidArgument for
    anything else: the C function reads a pointer)."""
    obj = getattr(ref, "_obj", None)  # ctypes.byref(x)
    if obj is None and isinstance(ref, ctypes._Pointer):
        obj = ref.contents
    if not isinstance(obj, kind):
        raise _err(pynvml.NVMLError_InvalidArgument)
    return obj


# -- files on disk --------------------------------------------------------------------


def cap_minor(gpu_minor: int, gi: int, ci: int | None = None) -> int:
    """The driver's capability minor for gpu<N>/gi<G>[/ci<C>]/access.

    The driver numbers them in one table: 1 config, 2 monitor, then per GPU minor 15 GPU
    instances, each its own access entry followed by 8 compute instance entries.
    """
    base = 3 + gpu_minor * MAX_GI * (1 + MAX_CI) + gi * (1 + MAX_CI)
    return base if ci is None else base + 1 + ci


def mig_minors_text(inventory: Inventory) -> str:
    """The whole ``mig-minors`` table for the inventory's GPUs, as the driver writes it."""
    lines = ["config 1", "monitor 2"]
    for g in inventory.gpus:
        for gi in range(MAX_GI):
            lines.append(f"gpu{g.minor}/gi{gi}/access {cap_minor(g.minor, gi)}")
            lines.extend(
                f"gpu{g.minor}/gi{gi}/ci{ci}/access {cap_minor(g.minor, gi, ci)}"
                for ci in range(MAX_CI)
            )
    return "\n".join(lines) + "\n"


def _free_major(preferred: int) -> int:
    """A char major no driver here has registered, so a fake node opens nothing real."""
    try:
        with open("/proc/devices") as f:
            text = f.read().split("Block devices:")[0]
        taken = {int(w.split()[0]) for w in text.splitlines()[1:] if w.strip()}
    except OSError:
        taken = set()
    major = preferred
    while major in taken:
        major -= 1
    return major


@dataclass(frozen=True)
class FakeFiles:
    """Where :func:`materialize` put things, and the env that points mlq at them."""

    dev_root: Path
    caps_file: Path
    inventory: Path | None

    def env(self) -> dict[str, str]:
        out = {"MLQ_DEV_ROOT": str(self.dev_root), "MLQ_NVIDIA_CAPS_FILE": str(self.caps_file)}
        if self.inventory:
            out["MLQ_FAKE_NVML"] = str(self.inventory)
        return out


def materialize(
    inventory: Inventory, root: str | Path, inventory_path: str | Path | None = None
) -> FakeFiles:
    """Write fake device nodes under ``root/dev`` and ``root/mig-minors`` for the inventory.

    Nodes: ``nvidia<minor>`` (195:minor) per GPU, ``nvidiactl`` (195:255),
    ``nvidia-uvm`` and ``nvidia-uvm-tools``, and under ``nvidia-caps/`` the config and
    monitor nodes plus both capability nodes of every carved MIG device. Their majors
    other than 195 are picked among those unused on this host. Needs CAP_MKNOD (root).
    """
    root = Path(root)
    dev = root / "dev"
    caps = dev / "nvidia-caps"
    caps.mkdir(parents=True, exist_ok=True)
    uvm_major = _free_major(511)
    caps_major = _free_major(uvm_major - 1)

    def node(path: Path, major: int, minor: int) -> None:
        if path.exists():
            path.unlink()
        os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))

    for g in inventory.gpus:
        node(dev / f"nvidia{g.minor}", NVIDIA_MAJOR, g.minor)
    node(dev / "nvidiactl", NVIDIA_MAJOR, CTL_MINOR)
    node(dev / "nvidia-uvm", uvm_major, 0)
    node(dev / "nvidia-uvm-tools", uvm_major, 1)
    node(caps / "nvidia-cap1", caps_major, 1)
    node(caps / "nvidia-cap2", caps_major, 2)
    for g in inventory.gpus:
        if g.mig != "enabled":
            continue
        for m in g.slices:
            node(
                caps / f"nvidia-cap{cap_minor(g.minor, m.gi)}", caps_major, cap_minor(g.minor, m.gi)
            )
            if m.ci is not None:
                minor = cap_minor(g.minor, m.gi, m.ci)
                node(caps / f"nvidia-cap{minor}", caps_major, minor)
    caps_file = root / "mig-minors"
    caps_file.write_text(mig_minors_text(inventory))
    # a freshly loaded driver: nothing carved yet beyond the inventory
    state_path(caps_file).unlink(missing_ok=True)
    inv = Path(inventory_path).resolve() if inventory_path else None
    return FakeFiles(dev.resolve(), caps_file.resolve(), inv)


def main(argv: list[str] | None = None) -> int:
    """``python -m mlq.executor.fakenvml INVENTORY DIR``: write the files, print the env."""
    args = sys.argv[1:] if argv is None else argv
    if len(args) != 2:
        print("usage: python -m mlq.executor.fakenvml INVENTORY.yaml DIR", file=sys.stderr)
        return 2
    files = materialize(load_inventory(args[0]), args[1], args[0])
    for k, v in files.env().items():
        print(f"export {k}={v}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
