"""The policy's input and output: a frozen picture of the cluster, and the decisions.

Plain frozen dataclasses so that the daemon (from its store), ``mlq plan`` (from a
scenario file) and the simulator (from its own state) can all build one cheaply.
Quantities are in base units: CPUs in millicores, memory in bytes, times in seconds.
Job ids may be ints (the daemon) or strings (scenarios).
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass, field

JobId = int | str


@dataclass(frozen=True, slots=True)
class MigSlot:
    """A MIG slice: which GPU of the node, its profile and its start slot."""

    gpu: int
    profile: str
    start: int


@dataclass(frozen=True, slots=True)
class Gpu:
    """A GPU of a node. ``mig`` is None when the GPU is not in MIG mode; otherwise the
    slices carved on it (held or free) as (profile, start)."""

    index: int
    model: str
    mig: tuple[tuple[str, int], ...] | None = None


@dataclass(frozen=True, slots=True)
class Node:
    """``can_carve`` false: the node's MIG GPUs offer only the slices already carved on
    them (free ones), never a new slice (the node's admin setting ``mig_carve``, or a
    driver that refused to carve)."""

    name: str
    cpus: int  # millicores
    memory: int  # bytes
    gpus: tuple[Gpu, ...] = ()
    can_carve: bool = True


@dataclass(frozen=True, slots=True)
class PriorityRule:
    """What the policy needs of a priority class (see cluster.PriorityClass)."""

    name: str
    value: int
    preempts: frozenset[str] = frozenset()
    preemptible: bool = True
    min_run_time: int = 0


@dataclass(frozen=True, slots=True)
class Team:
    """A team's quota: resource key -> amount in base units (see quota.py for keys)."""

    name: str
    guarantee: Mapping[str, float] = field(default_factory=dict)
    limit: Mapping[str, float] = field(default_factory=dict)


@dataclass(frozen=True, slots=True)
class RunningJob:
    id: JobId
    team: str
    priority_class: str
    node: str
    gpus: tuple[int, ...] = ()  # whole GPU indices on the node
    mig: tuple[MigSlot, ...] = ()
    cpus: int = 0
    memory: int = 0
    started_at: float = 0.0
    checkpoint_at: float | None = None
    time_limit: int | None = None  # seconds; lets backfill estimate when it ends
    stopping_for: JobId | None = None  # already chosen as a victim for this pending job


@dataclass(frozen=True, slots=True)
class MigRequest:
    profile: str
    count: int = 1


@dataclass(frozen=True, slots=True)
class PendingJob:
    id: JobId
    team: str
    priority_class: str
    gpus: int = 0
    gpu_model: str | None = None
    mig: MigRequest | None = None
    cpus: int = 0
    memory: int = 0
    submitted_at: float = 0.0
    time_limit: int | None = None
    blocked_by_dependency: bool = False
    held: bool = False


@dataclass(frozen=True, slots=True)
class Snapshot:
    now: float
    nodes: tuple[Node, ...]
    running: tuple[RunningJob, ...] = ()
    pending: tuple[PendingJob, ...] = ()
    teams: tuple[Team, ...] = ()
    classes: tuple[PriorityRule, ...] = ()


@dataclass(frozen=True, slots=True)
class Start:
    """Start ``job`` on ``node`` with these whole GPUs or these MIG slices."""

    job: JobId
    node: str
    gpus: tuple[int, ...] = ()
    mig: tuple[MigSlot, ...] = ()


@dataclass(frozen=True, slots=True)
class Preemption:
    """Stop ``victim`` so that ``for_job`` can start once it has."""

    victim: JobId
    for_job: JobId


@dataclass(frozen=True, slots=True)
class Decisions:
    starts: tuple[Start, ...]
    preemptions: tuple[Preemption, ...]
    reasons: Mapping[JobId, str]  # every pending job that does not start, in queue order

    def to_json(self) -> dict:
        """The ``mlq plan --json`` shape."""
        start = []
        for s in self.starts:
            item: dict = {"job": s.job, "node": s.node}
            if s.mig:
                item["mig"] = [
                    {"gpu": m.gpu, "profile": m.profile, "start": m.start} for m in s.mig
                ]
            else:
                item["gpus"] = list(s.gpus)
            start.append(item)
        return {
            "start": start,
            "preempt": [{"job": p.victim, "for": p.for_job} for p in self.preemptions],
            "pending": [{"job": j, "reason": r} for j, r in self.reasons.items()],
        }


def rules_from_classes(classes) -> tuple[PriorityRule, ...]:
    """PriorityRules from cluster.PriorityClass models (or anything with those fields)."""
    return tuple(
        PriorityRule(
            name=c.name,
            value=c.value,
            preempts=frozenset(c.preempts),
            preemptible=c.preemptible,
            min_run_time=c.min_run_time,
        )
        for c in classes
    )
