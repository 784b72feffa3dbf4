"""The one place mlq talks to NVML (``nvidia-ml-py``, imported as ``pynvml``).

:func:`query` initialises NVML, reads every GPU (index, UUID, name, memory, minor
number, PCI bus ID, MIG mode) and every MIG device of a GPU in MIG mode (UUID, GPU
and compute instance IDs, profile, slice counts, placement), reads the capability
minors from ``mig-minors``, shuts NVML down and returns plain data
(:class:`~mlq.executor.gpus.NodeGpus`). A node without NVML gets zero GPUs and a
reason, never an exception.

The environment is read here and nowhere else (:func:`settings`):

- ``MLQ_FAKE_NVML=/path/inventory.yaml`` serves NVML from that inventory through
  :class:`mlq.executor.fakenvml.FakeNvml` instead of the driver;
- ``MLQ_DEV_ROOT`` (default ``/dev``) is where the host's device nodes are found;
- ``MLQ_NVIDIA_CAPS_FILE`` (default ``/proc/driver/nvidia-caps/mig-minors``).
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pynvml
from mlq.executor.gpus import MIG_MINORS_FILE, GpuInfo, MigDeviceInfo, NodeGpus, parse_mig_minors
from mlq.scheduler import mig as catalogue

ENV_FAKE = "MLQ_FAKE_NVML"
ENV_DEV_ROOT = "MLQ_DEV_ROOT"
ENV_CAPS_FILE = "MLQ_NVIDIA_CAPS_FILE"


@dataclass(frozen=True, slots=True)
class Settings:
    """Where NVML and the device files come from."""

    fake_inventory: str | None = None
    dev_root: str = "/dev"
    caps_file: str = MIG_MINORS_FILE


def settings(environ: Mapping[str, str] | None = None) -> Settings:
    """Read ``MLQ_FAKE_NVML``, ``MLQ_DEV_ROOT`` and ``MLQ_NVIDIA_CAPS_FILE`` (only here)."""
    env = os.environ if environ is None else environ
    return Settings(
        fake_inventory=env.get(ENV_FAKE) or None,
        dev_root=env.get(ENV_DEV_ROOT) or "/dev",
        caps_file=env.get(ENV_CAPS_FILE) or MIG_MINORS_FILE,
    )


def library(s: Settings) -> Any:
    """The real ``pynvml`` module, or the fake one when an inventory is configured."""
    if s.fake_inventory:
        from mlq.executor.fakenvml import FakeNvml

        return FakeNvml.from_file(s.fake_inventory)
    return pynvml


# Why NVML could not start, in words a node's admin can act on.
_INIT_REASONS: dict[type, str] = {
    pynvml.NVMLError_LibraryNotFound: "libnvidia-ml.so.1 not found (no NVIDIA driver installed)",
    pynvml.NVMLError_DriverNotLoaded: "the NVIDIA kernel driver is not loaded",
    pynvml.NVMLError_NoPermission: "no permission to open the NVIDIA devices",
    pynvml.NVMLError_LibRmVersionMismatch: "NVML library and kernel driver versions differ (reboot or reload the driver)",
}


def query(lib: Any = None, s: Settings | None = None) -> NodeGpus:
    """Everything NVML says about this node's GPUs (see the module docstring)."""
    s = s or settings()
    lib = lib or library(s)
    try:
        lib.nvmlInit()
    except pynvml.NVMLError as exc:
        reason = _INIT_REASONS.get(type(exc), str(exc))
        return NodeGpus("nvml", reason=f"NVML unavailable: {reason}", dev_root=s.dev_root)
    try:
        return _read(lib, s)
    finally:
        lib.nvmlShutdown()


def _read(lib: Any, s: Settings) -> NodeGpus:
    problems: list[str] = []
    driver = _text(_try(lib.nvmlSystemGetDriverVersion) or "")
    count = lib.nvmlDeviceGetCount()
    gpus: list[GpuInfo] = []
    minors: dict[tuple[int, int, int | None], int] | None = None
    for index in range(count):
        try:
            gpu = _gpu(lib, index, problems)
        except pynvml.NVMLError as exc:
            problems.append(f"GPU {index}: left out, NVML says {exc}")
            continue
        if gpu.mig:
            if minors is None:
                minors = _caps_minors(s.caps_file, problems)
            gpu = _with_cap_minors(gpu, minors, s.caps_file, problems)
        gpus.append(gpu)
    reason = "" if gpus else "NVML reports no GPUs"
    return NodeGpus("nvml", tuple(gpus), reason, tuple(problems), driver, s.dev_root)


def _gpu(lib: Any, index: int, problems: list[str]) -> GpuInfo:
    h = lib.nvmlDeviceGetHandleByIndex(index)
    name = _text(lib.nvmlDeviceGetName(h))
    model = catalogue.canonical_model(name)
    try:
        current, pending = lib.nvmlDeviceGetMigMode(h)
        supported = True
    except pynvml.NVMLError as exc:
        # NotSupported: a GPU without MIG. Anything else (an old driver without the
        # call, say) is reported, and the GPU is still offered whole.
        if not isinstance(exc, pynvml.NVMLError_NotSupported):
            problems.append(f"GPU {index}: reading its MIG mode failed ({exc}); treated as no MIG")
        current = pending = pynvml.NVML_DEVICE_MIG_DISABLE
        supported = False
    enabled = current == pynvml.NVML_DEVICE_MIG_ENABLE
    if supported and pending != current:
        after = "enabled" if pending == pynvml.NVML_DEVICE_MIG_ENABLE else "disabled"
        problems.append(
            f"GPU {index}: MIG mode becomes {after} at the next GPU reset; "
            f"mlq uses the current mode ({'enabled' if enabled else 'disabled'})"
        )
    if model is None:
        known = ", ".join(catalogue.CATALOGUE)
        problems.append(
            f'GPU {index}: model "{name}" is not in the MIG catalogue ({known}); '
            f'offered whole as "{name}"' + (", its MIG slices are not offered" if enabled else "")
        )
    slices = _mig_devices(lib, h, index, model, problems) if enabled else ()
    return GpuInfo(
        index=index,
        uuid=_text(lib.nvmlDeviceGetUUID(h)),
        name=name,
        model=model,
        memory_mb=lib.nvmlDeviceGetMemoryInfo(h).total // 2**20,
        minor=lib.nvmlDeviceGetMinorNumber(h),
        pci_bus_id=_text(lib.nvmlDeviceGetPciInfo(h).busId),
        mig_supported=supported,
        mig_enabled=enabled,
        mig_pending=pending == pynvml.NVML_DEVICE_MIG_ENABLE,
        mig=slices,
    )


def _mig_devices(
    lib: Any, h: Any, index: int, model: str | None, problems: list[str]
) -> tuple[MigDeviceInfo, ...]:
    out: list[MigDeviceInfo] = []
    # MIG device slots can be sparse (a destroyed instance leaves a hole): an empty
    # slot raises NotFound, and the rest are still read.
    for slot in range(lib.nvmlDeviceGetMaxMigDeviceCount(h)):
        try:
            m = lib.nvmlDeviceGetMigDeviceHandleByIndex(h, slot)
        except pynvml.NVMLError_NotFound:
            continue
        gi_id = lib.nvmlDeviceGetGpuInstanceId(m)
        ci_id = lib.nvmlDeviceGetComputeInstanceId(m)
        attrs = lib.nvmlDeviceGetAttributes(m)
        raw = _text(lib.nvmlDeviceGetName(m))
        try:
            # Placement is a GPU instance property; reading it needs root.
            info = lib.nvmlGpuInstanceGetInfo(lib.nvmlDeviceGetGpuInstanceById(h, gi_id))
        except pynvml.NVMLError as exc:
            problems.append(
                f"GPU {index}: MIG device {_text(lib.nvmlDeviceGetUUID(m))} (GI {gi_id}) left out: "
                f"reading its placement failed ({exc}; mlq must run as root)"
            )
            continue
        gi_slices, ci_slices = attrs.gpuInstanceSliceCount, attrs.computeInstanceSliceCount
        out.append(
            MigDeviceInfo(
                gpu_index=index,
                uuid=_text(lib.nvmlDeviceGetUUID(m)),
                gi_id=gi_id,
                ci_id=ci_id,
                profile=_profile_name(model, info.profileId, raw, gi_slices, ci_slices, problems),
                profile_id=info.profileId,
                memory_mb=attrs.memorySizeMB,
                gi_slices=gi_slices,
                ci_slices=ci_slices,
                start=info.placement.start,
                size=info.placement.size,
            )
        )
    for m in out:
        if not m.whole_instance:
            problems.append(
                f"GPU {index}: MIG device {m.uuid} is compute instance {m.ci_id} of GI {m.gi_id} "
                f"({m.profile}, {m.ci_slices} of {m.gi_slices} slices); mlq schedules whole GPU "
                "instances only, so it is not offered"
            )
    return tuple(sorted(out, key=lambda m: (m.start, m.ci_id)))


def _profile_name(
    model: str | None,
    profile_id: int,
    raw: str,
    gi_slices: int,
    ci_slices: int,
    problems: list[str],
) -> str:
    """The catalogue's name for a GPU instance profile ID, checked against the device name.

    The driver names a MIG device "<GPU name> MIG <profile>"; a compute instance smaller
    than its GPU instance is "<c>c.<profile>".
    """
    suffix = raw.rsplit(" MIG ", 1)[1] if " MIG " in raw else ""
    known = next(
        (
            p.name
            for p in catalogue.profiles_for(model or "").values()
            if p.profile_id == profile_id
        ),
        None,
    )
    if known is None:
        return suffix or f"profile-{profile_id}"
    if ci_slices != gi_slices:
        return f"{ci_slices}c.{known}"
    if suffix and suffix.lower() != known.lower():
        problems.append(
            f'MIG device named "{raw}" has profile ID {profile_id}, which is {known} on {model}; '
            f"using {known}"
        )
    return known


def _caps_minors(path: str, problems: list[str]) -> dict[tuple[int, int, int | None], int]:
    try:
        with open(path) as f:
            return parse_mig_minors(f.read())
    except OSError as exc:
        problems.append(
            f"cannot read {path}: {exc.strerror}; MIG slices get no device nodes and are not offered"
        )
        return {}


def _with_cap_minors(
    gpu: GpuInfo, minors: dict[tuple[int, int, int | None], int], path: str, problems: list[str]
) -> GpuInfo:
    from dataclasses import replace

    slices = []
    for m in gpu.mig:
        gi = minors.get((gpu.minor, m.gi_id, None))
        ci = minors.get((gpu.minor, m.gi_id, m.ci_id))
        if (gi is None or ci is None) and minors:
            problems.append(
                f"GPU {gpu.index}: {path} has no gpu{gpu.minor}/gi{m.gi_id}"
                f"{'' if gi is None else f'/ci{m.ci_id}'}/access entry; MIG device {m.uuid} is not offered"
            )
        slices.append(replace(m, gi_cap_minor=gi, ci_cap_minor=ci))
    return replace(gpu, mig=tuple(slices))


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def _text(v: Any) -> str:
    """NVML strings come back as ``str`` from the wrapped calls, ``bytes`` from struct fields."""
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)
