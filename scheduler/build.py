"""The one place a job becomes the policy's PendingJob or RunningJob, and a node its Node.

The daemon (from its store's rows and specs), ``mlq plan`` (from a scenario file) and
the simulator (from a trace) each describe jobs their own way; they all go through
these functions, so a default filled from a job's class, a slice looked up by its
start, or a GPU's shape is decided here once. Pure: no I/O, no clock.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from typing import Protocol

from mlq.scheduler.snapshot import Gpu, JobId, MigRequest, MigSlot, Node, PendingJob, RunningJob


class ClassDefaults(Protocol):
    cpus: int
    memory: int
    time_limit: int | None


class MigAsk(Protocol):
    @property
    def profile(self) -> str: ...
    @property
    def count(self) -> int: ...


class Asks(Protocol):
    """What a job asks for: a job file's ``resources``, a scenario's job entry, a
    trace job. ``None`` means "the class's default"."""

    @property
    def gpus(self) -> int: ...
    @property
    def gpu_model(self) -> str | None: ...
    @property
    def mig(self) -> MigAsk | None: ...
    @property
    def cpus(self) -> int | None: ...
    @property
    def memory(self) -> int | None: ...
    @property
    def nodes(self) -> int: ...  # a multi-node job's parts (the rest is per part)


class SliceAt(Protocol):
    @property
    def profile(self) -> str: ...
    @property
    def start(self) -> int: ...


class GpuLike(Protocol):
    """A GPU as described anywhere: an index, a model, and its MIG slices (None, or
    (profile, start) pairs, or entries with ``.profile`` and ``.start``)."""

    @property
    def index(self) -> int: ...
    @property
    def model(self) -> str: ...
    @property
    def mig(self) -> Sequence[tuple[str, int] | SliceAt] | None: ...


class StartLike(Protocol):
    @property
    def node(self) -> str: ...
    @property
    def gpus(self) -> Sequence[int]: ...
    @property
    def mig(self) -> Sequence[MigSlot]: ...


def node(
    name: str,
    cpus: int,
    memory: int,
    gpus: Iterable[GpuLike] = (),
    can_carve: bool = True,
    topology: str = "",
) -> Node:
    """A Node from GPUs described by ``.index``, ``.model`` and ``.mig``."""
    return Node(name, cpus, memory, tuple(gpu(g) for g in gpus), can_carve, topology)


def gpu(g: GpuLike) -> Gpu:
    if g.mig is None:
        return Gpu(g.index, g.model, None)
    slices = tuple(s if isinstance(s, tuple) else (s.profile, s.start) for s in g.mig)
    return Gpu(g.index, g.model, slices)


def pending(
    job_id: JobId,
    team: str,
    klass: str,
    asks: Asks,
    defaults: ClassDefaults,
    *,
    time_limit: int | None,
    submitted_at: float,
    blocked_by_dependency: bool = False,
    held: bool = False,
    hold_note: str = "",
    array_id: JobId | None = None,
    array_limit: int = 0,
    user: str = "",
) -> PendingJob:
    """A pending job, its CPUs, memory and time limit its class's where it names none."""
    return PendingJob(
        id=job_id,
        team=team,
        priority_class=klass,
        gpus=asks.gpus,
        gpu_model=asks.gpu_model,
        mig=MigRequest(asks.mig.profile, asks.mig.count) if asks.mig else None,
        cpus=asks.cpus if asks.cpus is not None else defaults.cpus,
        memory=asks.memory if asks.memory is not None else defaults.memory,
        submitted_at=submitted_at,
        time_limit=time_limit if time_limit is not None else defaults.time_limit,
        blocked_by_dependency=blocked_by_dependency,
        held=held,
        hold_note=hold_note,
        nodes=asks.nodes,
        array_id=array_id,
        array_limit=array_limit,
        user=user,
    )


def running(
    job_id: JobId,
    team: str,
    klass: str,
    asks: Asks,
    defaults: ClassDefaults,
    *,
    node: str,
    gpus: Iterable[int],
    mig: Iterable[MigSlot],
    time_limit: int | None,
    started_at: float,
    checkpoint_at: float | None = None,
    stopping_for: JobId | None = None,
    grace_s: float = 30.0,
    parts: int = 1,
    array_id: JobId | None = None,
    user: str = "",
) -> RunningJob:
    """A running job (or one part of a multi-node job, of ``parts``) on ``node`` holding
    these whole GPUs or MIG slices."""
    return RunningJob(
        id=job_id,
        team=team,
        priority_class=klass,
        node=node,
        gpus=tuple(gpus),
        mig=tuple(mig),
        cpus=asks.cpus if asks.cpus is not None else defaults.cpus,
        memory=asks.memory if asks.memory is not None else defaults.memory,
        started_at=started_at,
        checkpoint_at=checkpoint_at,
        time_limit=time_limit if time_limit is not None else defaults.time_limit,
        stopping_for=stopping_for,
        grace_s=grace_s,
        parts=parts,
        array_id=array_id,
        user=user,
    )


def started(p: PendingJob, start: StartLike, now: float) -> RunningJob:
    """The running job a pending one becomes when the policy's ``start`` happens now
    (the simulator's step; the daemon re-reads its store instead)."""
    return RunningJob(
        p.id,
        p.team,
        p.priority_class,
        start.node,
        tuple(start.gpus),
        tuple(start.mig),
        p.cpus,
        p.memory,
        started_at=now,
        time_limit=p.time_limit,
        parts=p.nodes,
        array_id=p.array_id,
        user=p.user,
    )


def held_slices(
    held: Mapping[str, list[int] | list[dict[str, int | str]]],
) -> tuple[tuple[int, ...], tuple[MigSlot, ...]]:
    """The whole GPUs and MIG slices in a job's ``devices`` record (the store's JSON)."""
    gpus = [int(g) for g in held.get("gpus", []) if isinstance(g, int)]
    slots = [
        MigSlot(int(m["gpu"]), str(m["profile"]), int(m["start"]))
        for m in held.get("mig", [])
        if isinstance(m, dict)
    ]
    return tuple(gpus), tuple(slots)
