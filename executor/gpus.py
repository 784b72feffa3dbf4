"""This node's GPUs and MIG slices, and the device wiring a job gets for its share.

Three things, all plain data once discovery is done:

- :func:`discover` builds a :class:`NodeGpus` from NVML (``gpus: discover``, the
  default) or from the cluster config's ``declared_gpus`` (``gpus: declared``), never
  from both. A node without NVML gets zero GPUs and a one-line reason, not a traceback.
- :meth:`NodeGpus.shapes` gives the scheduler the shape it places on
  (``GpuShape(index, model, mig=((profile, start), ...))``), leaving out what it must
  not place on (a partial compute instance, a slice whose device nodes are unknown).
- :func:`wiring` turns an assignment (whole GPU indices, or MIG slices named by GPU
  index and start slot) into the device nodes the executor puts in the job's ``/dev``
  and the ``CUDA_VISIBLE_DEVICES`` / ``NVIDIA_VISIBLE_DEVICES`` value.
- :func:`carve` and :func:`destroy` create and destroy one MIG slice (through NVML for
  discovered GPUs, in the returned picture only for declared ones) and return the
  node's refreshed :class:`NodeGpus`.

Only :mod:`mlq.executor.nvml` talks to the driver; this module never imports pynvml.
"""

from __future__ import annotations

import itertools
import logging
import re
import uuid as uuidlib
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import TYPE_CHECKING, Any, Literal, Protocol

from mlq.executor.errors import Conflict, NotFound

if TYPE_CHECKING:
    from mlq.executor.mig import MigProfile

log = logging.getLogger("mlq.gpus")


@dataclass(frozen=True, slots=True)
class GpuShape:
    """A GPU as a scheduler places on it: its index, its model (catalogue name, else the
    driver's), and its schedulable MIG slices as (profile, start), None when not in MIG
    mode. The executor's own shape, so that it never builds the scheduler's types."""

    index: int
    model: str
    mig: tuple[tuple[str, int], ...] | None = None


class GpuDeclaration(Protocol):
    """What a declared GPU says (the cluster config's ``declared_gpus`` entries)."""

    index: int
    model: str
    mig: Any  # None, or entries with .profile and .start


class NodeSource(Protocol):
    """Where a node's GPUs come from (the cluster config's ``node:`` section)."""

    name: str
    gpus: str  # "discover" | "declared"
    declared_gpus: Any  # GpuDeclarations


class MigChangeFailed(Conflict):
    """The driver (or the catalogue) refused to create or destroy a MIG slice: which GPU,
    profile and start, the driver's words (``error``) and its NVML code (None when the
    refusal is mlq's own)."""

    verb = "change"

    def __init__(
        self, gpu: int, profile: str | None, start: int, error: str, code: int | None = None
    ) -> None:
        self.gpu, self.profile, self.start, self.error, self.code = gpu, profile, start, error, code
        what = f"{profile}@{start}" if profile else f"at start {start}"
        super().__init__(f"{self.verb} MIG slice {what} on GPU {gpu}: {error}")


class CarveFailed(MigChangeFailed):
    """A slice could not be carved; nothing of it is left behind."""

    verb = "create"


class DestroyFailed(MigChangeFailed):
    """A slice could not be destroyed (in use, or not there)."""

    verb = "destroy"


# Nodes every GPU job needs besides its GPUs: the control device and unified memory.
CONTROL_NODES = ("nvidiactl", "nvidia-uvm", "nvidia-uvm-tools")
MIG_MINORS_FILE = "/proc/driver/nvidia-caps/mig-minors"


@dataclass(frozen=True, slots=True)
class MigDeviceInfo:
    """One MIG device: a compute instance inside a GPU instance of one GPU."""

    gpu_index: int
    uuid: str  # "MIG-..." (drivers >= R470)
    gi_id: int  # GPU instance ID
    ci_id: int  # compute instance ID
    profile: str  # "1g.10gb"; "1c.3g.40gb" for a compute instance smaller than its GI
    profile_id: int  # GPU instance profile ID (nvidia-smi mig -lgip)
    memory_mb: int
    gi_slices: int  # compute slices of the GPU instance
    ci_slices: int  # compute slices of this compute instance
    start: int  # placement start slot of the GPU instance
    size: int  # memory slots it spans
    gi_cap_minor: int | None = None  # /dev/nvidia-caps/nvidia-cap<minor>, GI access
    ci_cap_minor: int | None = None  # the same for CI access

    @property
    def whole_instance(self) -> bool:
        """The compute instance spans its whole GPU instance (what mlq schedules)."""
        return self.ci_slices == self.gi_slices


@dataclass(frozen=True, slots=True)
class GpuInfo:
    """One physical GPU as the driver reports it."""

    index: int  # NVML index
    uuid: str  # "GPU-..."
    name: str  # the driver's name, e.g. "NVIDIA H100 80GB HBM3"
    model: str | None  # catalogue name ("H100-80GB"); None when not catalogued
    memory_mb: int
    minor: int  # /dev/nvidia<minor>
    pci_bus_id: str
    mig_supported: bool
    mig_enabled: bool  # current mode
    mig_pending: bool  # mode after the next GPU reset
    mig: tuple[MigDeviceInfo, ...] = ()

    @property
    def model_or_name(self) -> str:
        return self.model or self.name

    def slice_at(self, start: int) -> MigDeviceInfo | None:
        """The schedulable MIG device whose GPU instance starts at ``start``."""
        return next((m for m in self.mig if m.start == start and m.whole_instance), None)


@dataclass(frozen=True, slots=True)
class NodeGpus:
    """What one node has: the GPUs, where they came from, and what is off about them."""

    source: Literal["nvml", "declared"]
    gpus: tuple[GpuInfo, ...] = ()
    reason: str = ""  # why there are no GPUs (NVML missing, none installed)
    problems: tuple[str, ...] = ()  # each a sentence a user can act on
    driver_version: str = ""
    dev_root: str = "/dev"  # where the host's device nodes live (a temp dir under the fake)

    def gpu(self, index: int) -> GpuInfo | None:
        return next((g for g in self.gpus if g.index == index), None)

    def shapes(self) -> list[GpuShape]:
        """The scheduler's view: models by catalogue name, MIG slices by profile and start.

        A GPU whose model is not catalogued keeps its raw name as its model, so a job
        may still ask for it whole; its MIG slices are left out (no profile rules to
        place by). Partial compute instances and slices without device nodes are left
        out too; :attr:`problems` says so.
        """
        out: list[GpuShape] = []
        for g in self.gpus:
            mig = None
            if g.mig_enabled:
                mig = tuple(
                    (m.profile, m.start)
                    for m in g.mig
                    if g.model and m.whole_instance and _wirable(m, self.source)
                )
            out.append(GpuShape(g.index, g.model_or_name, mig))
        return out

    def to_json(self) -> dict[str, Any]:
        """Everything discovered, for ``mlq nodes --json`` and logs."""
        return {
            "source": self.source,
            "reason": self.reason,
            "problems": list(self.problems),
            "driver_version": self.driver_version,
            "dev_root": self.dev_root,
            "gpus": [
                {**{k: v for k, v in asdict(g).items() if k != "mig"}, "mig": _mig_json(g)}
                for g in self.gpus
            ],
        }

    @classmethod
    def from_json(cls, data: dict[str, Any]) -> NodeGpus:
        """The inverse of :meth:`to_json`: a node's GPUs as its agent reported them."""
        mig_fields = {f.name for f in fields(MigDeviceInfo)}
        gpu_fields = {f.name for f in fields(GpuInfo)} - {"mig"}
        gpus = tuple(
            GpuInfo(
                **{k: g[k] for k in gpu_fields if k in g},
                mig=tuple(
                    MigDeviceInfo(**{k: m[k] for k in mig_fields if k in m})
                    for m in g.get("mig", ())
                ),
            )
            for g in data.get("gpus", ())
        )
        return cls(
            source=data.get("source", "declared"),
            gpus=gpus,
            reason=data.get("reason", ""),
            problems=tuple(data.get("problems", ())),
            driver_version=data.get("driver_version", ""),
            dev_root=data.get("dev_root", "/dev"),
        )

    def summary(self) -> str:
        """One line for the daemon's log: what was found, or why nothing was."""
        if not self.gpus:
            return f"no GPUs ({self.source}): {self.reason or 'none found'}"
        parts = []
        for g in self.gpus:
            desc = f"{g.index}:{g.model_or_name}"
            if g.mig_enabled:
                desc += "[" + ",".join(f"{m.profile}@{m.start}" for m in g.mig) + "]"
            parts.append(desc)
        return f"{len(self.gpus)} GPUs ({self.source}): " + " ".join(parts)


def _mig_json(g: GpuInfo) -> list[dict[str, Any]]:
    return [{**asdict(m), "whole_instance": m.whole_instance} for m in g.mig]


def _wirable(m: MigDeviceInfo, source: str) -> bool:
    # Declared GPUs have no device nodes at all; discovered slices need both cap minors.
    return source == "declared" or (m.gi_cap_minor is not None and m.ci_cap_minor is not None)


# -- device nodes ---------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class DeviceNode:
    """A character device the job gets: ``path`` inside the job, ``host_path`` on the host.

    They differ only when ``MLQ_DEV_ROOT`` points discovery at a directory of fake nodes.
    """

    path: str
    host_path: str


@dataclass(frozen=True, slots=True)
class Wiring:
    """What a job needs for its GPUs: device nodes and the visible-devices variables."""

    devices: tuple[DeviceNode, ...] = ()
    env: Mapping[str, str] = field(default_factory=dict)

    @property
    def visible(self) -> str:
        return self.env.get("CUDA_VISIBLE_DEVICES", "")


def _node(dev_root: str, name: str) -> DeviceNode:
    return DeviceNode(path=f"/dev/{name}", host_path=str(Path(dev_root) / name))


def wiring(node: NodeGpus, gpus: Iterable[int] = (), mig: Iterable[Any] = ()) -> Wiring:
    """Device nodes and env for a job given whole ``gpus`` (indices) and/or ``mig`` slices.

    ``mig`` entries are ``(gpu_index, start)`` pairs, the scheduler's ``MigSlot``s or
    its ``{"gpu": 1, "start": 4, ...}`` dicts. A whole GPU brings ``/dev/nvidia<minor>``; a
    MIG slice brings its parent's ``/dev/nvidia<minor>`` (CUDA opens it to reach the
    slice; the capability nodes are what grant access) and exactly its two capability
    nodes. Any GPU at all brings the control nodes. No GPUs: no nodes, no variables, so
    the job sees none. Raises :class:`NotFound` / :class:`Conflict` for an assignment
    that does not match what was discovered.
    """
    names: list[str] = []
    visible: list[str] = []

    def add(name: str) -> None:
        if name not in names:
            names.append(name)

    for index in gpus:
        g = _gpu(node, index)
        if g.mig_enabled:
            raise Conflict(
                f"GPU {index} is in MIG mode; a job can be given its slices, not the whole GPU"
            )
        if node.source == "nvml":
            add(f"nvidia{g.minor}")
        visible.append(g.uuid)
    for ref in mig:
        if isinstance(ref, Mapping):
            index, start = ref["gpu"], ref["start"]
        elif hasattr(ref, "gpu"):  # the scheduler's MigSlot(gpu, profile, start)
            index, start = ref.gpu, ref.start
        else:
            index, start = ref
        g = _gpu(node, index)
        m = g.slice_at(start)
        if m is None:
            have = ", ".join(f"{x.profile}@{x.start}" for x in g.mig) or "none"
            raise NotFound(f"GPU {index} has no MIG slice starting at {start} (slices: {have})")
        if node.source == "nvml":
            if m.gi_cap_minor is None or m.ci_cap_minor is None:
                raise NotFound(
                    f"MIG slice {m.profile}@{start} on GPU {index}: its capability device "
                    f"minors are unknown (gpu{g.minor}/gi{m.gi_id} missing from {MIG_MINORS_FILE})"
                )
            add(f"nvidia{g.minor}")
            add(f"nvidia-caps/nvidia-cap{m.gi_cap_minor}")
            add(f"nvidia-caps/nvidia-cap{m.ci_cap_minor}")
        visible.append(m.uuid)
    if not visible:
        return Wiring()
    if node.source == "nvml":
        names = list(CONTROL_NODES) + names
    devices = tuple(_node(node.dev_root, n) for n in names)
    value = ",".join(visible)
    return Wiring(devices, {"CUDA_VISIBLE_DEVICES": value, "NVIDIA_VISIBLE_DEVICES": value})


def carve(node: NodeGpus, gpu_index: int, profile: str, start: int, *, lib: Any = None) -> NodeGpus:
    """Create a MIG slice of ``profile`` at placement ``start`` on GPU ``gpu_index`` and
    return the node as it is now; the new slice is ``result.gpu(i).slice_at(start)``.

    Discovered GPUs go through the driver (:func:`mlq.executor.nvml.create_slice`);
    declared GPUs have no driver, so the slice is added to the picture only, checked
    against the catalogue's placement rules. Raises :class:`CarveFailed`.
    """
    g = node.gpu(gpu_index)
    if g is None or not g.mig_enabled:
        why = "not on this node" if g is None else "not in MIG mode"
        raise CarveFailed(gpu_index, profile, start, f"the GPU is {why}")
    if node.source == "declared":
        return _carve_declared(node, g, profile, start)
    from mlq.executor import nvml

    return nvml.create_slice(gpu_index, profile, start, lib=lib)


def destroy(
    node: NodeGpus, gpu_index: int, start: int, *, uuid: str | None = None, lib: Any = None
) -> NodeGpus:
    """Destroy the MIG slice at ``start`` on GPU ``gpu_index`` (only if it is still the
    device ``uuid``, when given) and return the node as it is now. Raises
    :class:`DestroyFailed` (NVML's code ``NVML_ERROR_NOT_FOUND`` when it is not there)."""
    g = node.gpu(gpu_index)
    if node.source == "declared":
        m = g.slice_at(start) if g else None
        if g is None or m is None or (uuid is not None and m.uuid != uuid):
            raise DestroyFailed(gpu_index, None, start, "no such MIG slice", NVML_NOT_FOUND)
        return _with_gpu(node, replace(g, mig=tuple(x for x in g.mig if x is not m)))
    from mlq.executor import nvml

    return nvml.destroy_slice(gpu_index, start, uuid, lib=lib)


NVML_NOT_FOUND = 6  # NVML_ERROR_NOT_FOUND (this module does not import pynvml)
_CARVED = itertools.count(1)  # declared slices carved by this process, for their UUIDs


def _carve_declared(node: NodeGpus, g: GpuInfo, profile: str, start: int) -> NodeGpus:
    from mlq.executor import mig as catalogue

    placed = [(m.profile, m.start) for m in g.mig]
    ok, why = catalogue.fits(g.model or g.name, profile, start, placed)
    if not ok:
        raise CarveFailed(g.index, profile, start, why)
    p = catalogue.profile(g.model or g.name, profile)
    assert p is not None  # fits() said the model has it
    uuid = "MIG-" + _stable_uuid(g.uuid, f"carved/{start}/{profile}/{next(_CARVED)}")
    m = _declared_slice(g.index, uuid, start, p)
    return _with_gpu(node, replace(g, mig=tuple(sorted((*g.mig, m), key=lambda x: x.start))))


def _declared_slice(gpu: int, uuid: str, start: int, p: MigProfile) -> MigDeviceInfo:
    """A whole-GPU-instance slice of catalogue profile ``p`` (no NVML to ask): the GI
    id follows its start slot, one compute instance spans it."""
    return MigDeviceInfo(
        gpu_index=gpu,
        uuid=uuid,
        gi_id=start + 1,
        ci_id=0,
        profile=p.name,
        profile_id=p.profile_id,
        memory_mb=p.memory_gb * 1024,
        gi_slices=p.compute_slices,
        ci_slices=p.compute_slices,
        start=start,
        size=p.memory_slices,
    )


def _with_gpu(node: NodeGpus, g: GpuInfo) -> NodeGpus:
    return replace(node, gpus=tuple(g if x.index == g.index else x for x in node.gpus))


def _gpu(node: NodeGpus, index: int) -> GpuInfo:
    g = node.gpu(index)
    if g is None:
        have = ", ".join(str(x.index) for x in node.gpus) or "none"
        raise NotFound(f"GPU {index} is not on this node (GPUs: {have})")
    return g


_MINORS_LINE = re.compile(r"^gpu(\d+)/gi(\d+)(?:/ci(\d+))?/access\s+(\d+)\s*$")


def parse_mig_minors(text: str) -> dict[tuple[int, int, int | None], int]:
    """``/proc/driver/nvidia-caps/mig-minors`` as {(gpu minor, gi, ci or None): cap minor}.

    Lines are ``gpu<N>/gi<G>/access X`` (GPU instance) and ``gpu<N>/gi<G>/ci<C>/access Y``
    (compute instance), where N is the GPU's device minor, not its NVML index.
    ``config`` and ``monitor`` lines are not a job's business and are skipped.
    """
    out: dict[tuple[int, int, int | None], int] = {}
    for line in text.splitlines():
        m = _MINORS_LINE.match(line.strip())
        if m:
            gpu, gi, ci, minor = m.groups()
            out[(int(gpu), int(gi), int(ci) if ci is not None else None)] = int(minor)
    return out


# -- discovery ------------------------------------------------------------------------


def discover(config: Any = None, *, lib: Any = None) -> NodeGpus:
    """This node's GPUs, from the source the node's config names (``gpus:``).

    ``config`` is a node's config (``name``, ``gpus``, ``declared_gpus``: see
    :class:`NodeSource`), or anything with such a ``node`` (a cluster config), or None
    (discover). ``discover`` asks NVML (through :mod:`mlq.executor.nvml`, which honours
    ``MLQ_FAKE_NVML``); ``declared`` uses ``declared_gpus`` and does not consult NVML.
    ``lib`` overrides the NVML module (tests). Logs one line either way.
    """
    node: NodeSource | None = getattr(config, "node", config)
    if node is not None and node.gpus == "declared":
        result = from_declared(node.declared_gpus, node.name)
        log.info("%s (gpus: declared; NVML not consulted)", result.summary())
        return result

    from mlq.executor import nvml

    result = nvml.query(lib)
    if result.gpus:
        log.info("%s", result.summary())
    else:
        log.warning("%s", result.summary())
    for problem in result.problems:
        log.warning("GPU discovery: %s", problem)
    return result


def from_declared(decls: Iterable[GpuDeclaration], node_name: str = "node") -> NodeGpus:
    """Declared GPUs as a :class:`NodeGpus`: names and UUIDs are made up, stable per node.

    Declared GPUs exist only for simulation and test nodes: they have no device nodes, so
    :func:`wiring` gives their jobs only the visible-devices variables.
    """
    from mlq.executor import mig as catalogue

    gpus: list[GpuInfo] = []
    problems: list[str] = []
    for d in decls:
        model = catalogue.canonical_model(d.model)
        slices: list[MigDeviceInfo] = []
        for s in d.mig or []:
            p = catalogue.profile(d.model, s.profile)
            if p is None:
                problems.append(f"GPU {d.index}: {d.model} has no MIG profile {s.profile}")
                continue
            uuid = "MIG-" + _stable_uuid(node_name, f"{d.index}/{s.start}")
            slices.append(_declared_slice(d.index, uuid, s.start, p))
        gpus.append(
            GpuInfo(
                index=d.index,
                uuid="GPU-" + _stable_uuid(node_name, str(d.index)),
                name=d.model,
                model=model,
                memory_mb=0,
                minor=d.index,
                pci_bus_id="",
                mig_supported=d.mig is not None,
                mig_enabled=d.mig is not None,
                mig_pending=d.mig is not None,
                mig=tuple(slices),
            )
        )
    reason = "" if gpus else "gpus: declared, and declared_gpus is empty"
    return NodeGpus("declared", tuple(gpus), reason, tuple(problems))


def _stable_uuid(node_name: str, what: str) -> str:
    return str(uuidlib.uuid5(uuidlib.NAMESPACE_URL, f"mlq-declared:{node_name}:{what}"))
