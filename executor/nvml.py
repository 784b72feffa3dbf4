"""The one place mlq talks to NVML (``nvidia-ml-py``, imported as ``pynvml``).

:func:`query` initialises NVML, reads every GPU (index, UUID, name, memory, minor
number, PCI bus ID, MIG mode) and every MIG device of a GPU in MIG mode (UUID, GPU
and compute instance IDs, profile, slice counts, placement), reads the capability
minors from ``mig-minors``, shuts NVML down and returns plain data
(:class:`~mlq.executor.gpus.NodeGpus`). A node without NVML gets zero GPUs and a
reason, never an exception.

:func:`create_slice` and :func:`destroy_slice` carve and destroy one MIG slice (a GPU
instance at a placement and one compute instance spanning it), then read the node
again in the same NVML session and return it. The driver's refusals become
:class:`~mlq.executor.gpus.CarveFailed` / :class:`~mlq.executor.gpus.DestroyFailed`,
naming the GPU, the profile and the start.

The environment is read here and nowhere else (:func:`settings`):

- ``MLQ_FAKE_NVML=/path/inventory.yaml`` serves NVML from that inventory through
  :class:`mlq.executor.fakenvml.FakeNvml` instead of the driver;
- ``MLQ_DEV_ROOT`` (default ``/dev``) is where the host's device nodes are found;
- ``MLQ_NVIDIA_CAPS_FILE`` (default ``/proc/driver/nvidia-caps/mig-minors``).
"""

from __future__ import annotations

import contextlib
import ctypes
import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

import pynvml
from mlq.executor import mig as catalogue
from mlq.executor.gpus import (
    MIG_MINORS_FILE,
    CarveFailed,
    DestroyFailed,
    GpuInfo,
    MigDeviceInfo,
    NodeGpus,
    parse_mig_minors,
)

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
    """The real ``pynvml`` module, or the fake one when an inventory is configured (which
    keeps what it carves beside the configured ``mig-minors`` file)."""
    if s.fake_inventory:
        from mlq.executor.fakenvml import FakeNvml

        return FakeNvml.from_file(s.fake_inventory, caps_file=s.caps_file, dev_root=s.dev_root)
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


# -- carving ------------------------------------------------------------------------


def create_slice(
    index: int, profile: str, start: int, lib: Any = None, s: Settings | None = None
) -> NodeGpus:
    """Carve a ``profile`` slice at placement ``start`` on GPU ``index``: a GPU instance
    (``nvmlDeviceCreateGpuInstanceWithPlacement``) and a compute instance spanning it
    (``nvmlGpuInstanceCreateComputeInstance``). Returns the node as read right after.

    All or nothing: if the compute instance cannot be made, or the new slice cannot be
    wired (not seen, or its capability minors unknown), the GPU instance is destroyed
    again before :class:`CarveFailed` is raised.
    """
    s = s or settings()
    lib = lib or library(s)

    def failed(why: str, code: int | None = None) -> CarveFailed:
        return CarveFailed(index, profile, start, why, code)

    with _session(lib, lambda exc: failed(_init_reason(exc), exc.value)):
        try:
            h = lib.nvmlDeviceGetHandleByIndex(index)
            name = _text(lib.nvmlDeviceGetName(h))
            mode = _try(lib.nvmlDeviceGetMigMode, h)
            if mode is None or mode[0] != pynvml.NVML_DEVICE_MIG_ENABLE:
                raise failed("the GPU is not in MIG mode")
            model = catalogue.canonical_model(name)
            p = catalogue.profile(model or "", profile)
            if p is None:
                raise failed(f'"{name}" has no MIG profile {profile} in mlq\'s catalogue')
            gi_info = _gi_profile(lib, h, p)
            placement = pynvml.c_nvmlGpuInstancePlacement_t()
            placement.start, placement.size = start, p.memory_slices
            # the C function takes a pointer to the placement; pynvml passes it through
            gi = lib.nvmlDeviceCreateGpuInstanceWithPlacement(
                h, gi_info.id, ctypes.byref(placement)
            )
        except pynvml.NVMLError as exc:
            raise failed(_words(exc), exc.value) from None
        try:
            ci_profile = _ci_profile(lib, gi, gi_info.sliceCount)
            lib.nvmlGpuInstanceCreateComputeInstance(gi, ci_profile)
            node = _read(lib, s)
            g = node.gpu(index)
            m = g.slice_at(start) if g else None
            if m is None or m.profile != profile:
                raise failed("the driver created it, but discovery does not show it")
            if m.gi_cap_minor is None or m.ci_cap_minor is None:
                raise failed(f"its capability minors are not in {s.caps_file}")
            return node
        except (pynvml.NVMLError, CarveFailed) as exc:
            # undo: whatever compute instance was made, then the GPU instance
            _destroy_gi(lib, gi)
            if isinstance(exc, CarveFailed):
                raise
            raise failed(_words(exc), exc.value) from None


def destroy_slice(
    index: int,
    start: int,
    uuid: str | None = None,
    lib: Any = None,
    s: Settings | None = None,
) -> NodeGpus:
    """Destroy the MIG slice whose GPU instance starts at ``start`` on GPU ``index``: its
    compute instances (``nvmlComputeInstanceDestroy``), then the GPU instance
    (``nvmlGpuInstanceDestroy``). ``uuid``: destroy it only if it is still that MIG
    device (one made again since is left alone). Returns the node as read right after.
    """
    s = s or settings()
    lib = lib or library(s)
    profile = None  # named in errors once it is known

    def failed(why: str, code: int | None = None) -> DestroyFailed:
        return DestroyFailed(index, profile, start, why, code)

    with _session(lib, lambda exc: failed(_init_reason(exc), exc.value)):
        try:
            problems: list[str] = []
            g = _gpu(lib, index, problems)
            found = [m for m in g.mig if m.start == start]
            if found:
                profile = found[0].profile
            if not found or (uuid is not None and uuid not in {m.uuid for m in found}):
                have = ", ".join(f"{m.profile}@{m.start} {m.uuid}" for m in g.mig) or "none"
                what = f"{uuid} is not there" if uuid else "no MIG slice starts there"
                raise failed(f"{what} (slices: {have})", pynvml.NVML_ERROR_NOT_FOUND)
            h = lib.nvmlDeviceGetHandleByIndex(index)
            gi = lib.nvmlDeviceGetGpuInstanceById(h, found[0].gi_id)
            for m in found:
                ci = lib.nvmlGpuInstanceGetComputeInstanceById(gi, m.ci_id)
                lib.nvmlComputeInstanceDestroy(ci)
            lib.nvmlGpuInstanceDestroy(gi)
            return _read(lib, s)
        except pynvml.NVMLError as exc:
            raise failed(_words(exc), exc.value) from None


@contextlib.contextmanager
def _session(lib: Any, on_init_error: Any) -> Any:
    """One NVML init/shutdown around a change; an init failure is raised as the
    change's own error."""
    try:
        lib.nvmlInit()
    except pynvml.NVMLError as exc:
        raise on_init_error(exc) from None
    try:
        yield
    finally:
        lib.nvmlShutdown()


_ERROR_NAMES = {
    v: k for k, v in vars(pynvml).items() if k.startswith("NVML_ERROR_") and isinstance(v, int)
}


def _words(exc: pynvml.NVMLError) -> str:
    """The driver's words for an NVML error and its constant's name, which is what an
    admin searches for ("Insufficient Permissions (NVML_ERROR_NO_PERMISSION)"); only the
    name where pynvml has no words for it."""
    name = _ERROR_NAMES.get(exc.value, f"NVML error {exc.value}")
    text = str(exc)
    return name if text.startswith("NVML Error with code") else f"{text} ({name})"


def _init_reason(exc: pynvml.NVMLError) -> str:
    return "NVML unavailable: " + _INIT_REASONS.get(type(exc), str(exc))


# what the driver answers for a profile index it does not have: NotSupported, or
# InvalidArgument for an index past an older driver's count (pynvml's count may be newer)
_NO_SUCH_PROFILE = (pynvml.NVMLError_NotSupported, pynvml.NVMLError_InvalidArgument)


def _gi_profile(lib: Any, h: Any, p: catalogue.MigProfile) -> Any:
    """The driver's GPU instance profile info for a catalogue profile: asked by its
    NVML_GPU_INSTANCE_PROFILE_* index, checked by the profile ID the driver answers
    (every index is tried if that one answers another ID)."""
    tried: list[int] = []
    for k in [p.nvml_profile, *range(pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT)]:
        if k < 0 or k in tried:
            continue
        tried.append(k)
        try:
            info = lib.nvmlDeviceGetGpuInstanceProfileInfo(h, k)
        except _NO_SUCH_PROFILE:
            continue
        if info.id == p.profile_id:
            return info
    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def _ci_profile(lib: Any, gi: Any, slices: int) -> int:
    """The compute instance profile ID that spans a GPU instance of ``slices`` slices."""
    for k in range(pynvml.NVML_COMPUTE_INSTANCE_PROFILE_COUNT):
        try:
            info = lib.nvmlGpuInstanceGetComputeInstanceProfileInfo(
                gi, k, pynvml.NVML_COMPUTE_INSTANCE_ENGINE_PROFILE_SHARED
            )
        except _NO_SUCH_PROFILE:
            continue
        if info.sliceCount == slices:
            return info.id
    raise pynvml.NVMLError(pynvml.NVML_ERROR_NOT_SUPPORTED)


def _destroy_gi(lib: Any, gi: Any) -> None:
    """Undo a half-made slice: its compute instances (ids 0-7), then the GPU instance."""
    for ci_id in range(8):
        with contextlib.suppress(pynvml.NVMLError):
            lib.nvmlComputeInstanceDestroy(lib.nvmlGpuInstanceGetComputeInstanceById(gi, ci_id))
    with contextlib.suppress(pynvml.NVMLError):
        lib.nvmlGpuInstanceDestroy(gi)


def _try(fn: Any, *args: Any) -> Any:
    try:
        return fn(*args)
    except pynvml.NVMLError:
        return None


def _text(v: Any) -> str:
    """NVML strings come back as ``str`` from the wrapped calls, ``bytes`` from struct fields."""
    return v.decode(errors="replace") if isinstance(v, bytes) else str(v)
