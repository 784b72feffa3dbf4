"""The policy's input and output: a frozen picture of the cluster, and the decisions.

Plain frozen dataclasses so that the daemon (from its store), ``mlq plan`` (from a
scenario file) and the simulator (from its own state) can all build one cheaply.
Quantities are in base units: CPUs in millicores, memory in bytes, times in seconds.
Job ids may be ints (the daemon) or strings (scenarios).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Protocol

JobId = int | str


class ReasonCode(StrEnum):
    """Why a pending job waits: the first word of its reason (docs/json.md)."""

    HELD = "Held"
    DEPENDENCY = "Dependency"
    ARRAY_LIMIT = "JobArrayTaskLimit"  # Slurm's name for a throttled array's wait
    USER_LIMIT = "UserLimit"  # its team's limit on each user (Slurm's QOSMax*PerUser)
    PRIORITY = "Priority"
    RESOURCES = "Resources"
    QUOTA_LIMIT = "QuotaLimit"
    PREEMPTION_PENDING = "PreemptionPending"
    MIN_RUN_TIME = "MinRunTime"
    IMAGE_PENDING = "ImagePending"
    MIG_CARVE_FAILED = "MigCarveFailed"


class Reason(str):
    """A reason as a value: its ``code`` and its ``args`` (the numbers), which a program
    matches; the text a person reads is the string itself, rendered once here from
    them (``QuotaLimit nlp gpu 8/8``). Being a ``str``, it is stored, compared and
    printed as the stable text the JSON keeps."""

    code: ReasonCode
    args: tuple[object, ...]

    def __new__(cls, code: ReasonCode, *args: object) -> Reason:
        text = _RENDER.get(code, _words)(code, args)
        obj = super().__new__(cls, text)
        obj.code = code
        obj.args = args
        return obj


def _words(code: ReasonCode, args: tuple[object, ...]) -> str:
    return " ".join([code.value, *map(str, args)])


def _quota(code: ReasonCode, args: tuple[object, ...]) -> str:
    team, key, used, limit = args
    return f"{code.value} {team} {key} {used}/{limit}"


def _resources(code: ReasonCode, args: tuple[object, ...]) -> str:
    if len(args) == 4:  # (resource, wanted, free at most, the node with the most)
        res, want, free, node = args
        where = f" (largest free on {node})" if node else ""
        return f"{code.value}: {res} {want} > {free} free{where}"
    if len(args) == 3 and args[2] == "nodes":  # a multi-node job: (nodes free, needed)
        return f"{code.value}: {args[0]} of {args[1]} nodes free for its parts"
    if len(args) == 1:  # (what no single node has free together)
        return f"{code.value}: no node has {args[0]} free at once"
    return code.value


_RENDER = {
    ReasonCode.QUOTA_LIMIT: _quota,
    ReasonCode.USER_LIMIT: _quota,  # (user, key, used, limit): UserLimit bob gpus 8/8
    ReasonCode.PREEMPTION_PENDING: lambda c, a: f"{c.value} {','.join(map(str, a))}",
    ReasonCode.RESOURCES: _resources,
    ReasonCode.MIN_RUN_TIME: lambda c, a: f"{c.value}: job {a[0]} may be preempted from {a[1]}",
    ReasonCode.ARRAY_LIMIT: lambda c, a: f"{c.value}: {a[1]} of array {a[0]} run at once",
    ReasonCode.IMAGE_PENDING: lambda c, a: f"{c.value}: preparing {a[0]}",
    ReasonCode.MIG_CARVE_FAILED: lambda c, a: f"{c.value}: GPU {a[0]} {a[1]}@{a[2]}: {a[3]}",
}


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
    driver that refused to carve). ``topology``: where the node sits in the network, its
    switches outermost first (``spine1/rack3``); a multi-node job's parts go under the
    lowest switch that can hold them all (gang.py)."""

    name: str
    cpus: int  # millicores
    memory: int  # bytes
    gpus: tuple[Gpu, ...] = ()
    can_carve: bool = True
    topology: str = ""


@dataclass(frozen=True, slots=True)
class PriorityRule:
    """What the policy needs of a priority class (see cluster.PriorityClass)."""

    name: str
    value: int
    preempts: frozenset[str] = frozenset()
    preemptible: bool = True
    min_run_time: int = 0
    order: str = "short-first"  # its queue order in each team: fifo or short-first (policy.py)


@dataclass(frozen=True, slots=True)
class Team:
    """A team's quota: resource key -> amount in base units (see quota.py for keys)."""

    name: str
    guarantee: Mapping[str, float] = field(default_factory=dict)
    limit: Mapping[str, float] = field(default_factory=dict)
    # on each user of the team: "jobs" running, "gpus" held (gpu-equivalents)
    per_user: Mapping[str, float] = field(default_factory=dict)


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
    grace_s: float = 30.0  # the longest it may take to stop (its grace period)
    # a multi-node job runs as ``parts`` RunningJobs with one id, one per node; stopping
    # any of them stops the whole job
    parts: int = 1
    array_id: JobId | None = None  # the array it is a job of (counted by a throttle)
    user: str = ""  # its submitter (counted by the team's per-user limits)


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
    hold_note: str = ""  # who held it, for its reason ("by bob", "by admin carol")
    # a multi-node job: this many parts, each on its own node, each asking for the
    # resources above (per node); all start together or none does
    nodes: int = 1
    array_id: JobId | None = None
    array_limit: int = 0  # at most this many of its array run at once (0: no throttle)
    user: str = ""  # its submitter ("" in traces: no per-user limit applies)


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
    """Start ``job`` on ``node`` with these whole GPUs or these MIG slices. A
    multi-node job gets one Start per part in the same Decisions: part ``rank`` of
    ``parts`` (rank 0 is where its rendezvous lives)."""

    job: JobId
    node: str
    gpus: tuple[int, ...] = ()
    mig: tuple[MigSlot, ...] = ()
    rank: int = 0
    parts: int = 1


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
            if s.parts > 1:
                item["rank"] = s.rank
            start.append(item)
        return {
            "start": start,
            "preempt": [{"job": p.victim, "for": p.for_job} for p in self.preemptions],
            "pending": [{"job": j, "reason": r} for j, r in self.reasons.items()],
        }


class ClassLike(Protocol):
    """What a priority class says that the policy needs (cluster.PriorityClass)."""

    @property
    def name(self) -> str: ...
    @property
    def value(self) -> int: ...
    @property
    def preempts(self) -> Iterable[str]: ...
    @property
    def preemptible(self) -> bool: ...
    @property
    def min_run_time(self) -> int: ...
    @property
    def order(self) -> str: ...


def rules_from_classes(classes: Iterable[ClassLike]) -> tuple[PriorityRule, ...]:
    """PriorityRules from cluster.PriorityClass models (or anything with those fields)."""
    return tuple(
        PriorityRule(
            name=c.name,
            value=c.value,
            preempts=frozenset(c.preempts),
            preemptible=c.preemptible,
            min_run_time=c.min_run_time,
            order=c.order,
        )
        for c in classes
    )
