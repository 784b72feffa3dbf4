"""``mlq simulate``: replay a workload trace through the scheduling policy.

Event-driven: at every arrival and completion (all events of one second together) the
simulator builds a Snapshot and calls the same ``policy.decide`` that the daemon and
``mlq plan`` call, starts what it says to start and stops what it says to preempt.
A preempted job is requeued with its original submission time and loses the work
done since its last checkpoint (every ``checkpoint_interval`` seconds of run time).
Victims stop at once (no grace period), so the job they stop for starts in the same
second. The baseline ``fifo`` is strict FIFO: submission order, no classes, no quotas,
no backfill, no preemption; the head job waits until it fits and everything waits
behind it (it places a multi-node job's parts on the first nodes that fit). Both use
the same placement (packing; a multi-node job's parts on as many nodes).

MIG slices that the policy carves for a job are destroyed when the job ends; slices
declared carved in the cluster file stay. docs/scheduling.md describes the cluster
file and every figure.
"""

from __future__ import annotations

import gc
import heapq
import math
from collections.abc import Callable
from dataclasses import dataclass, field, replace
from pathlib import Path
from types import SimpleNamespace
from typing import Any

from mlq.executor import mig
from mlq.scheduler import build
from mlq.scheduler.accounting import Run
from mlq.scheduler.cluster import DEFAULT_CLASSES, PriorityClass, TeamConfig
from mlq.scheduler.errors import InvalidInput
from mlq.scheduler.placement import Room, take_slices
from mlq.scheduler.policy import PRIORITY, RESOURCES, decide
from mlq.scheduler.quota import mig_share
from mlq.scheduler.simqueue import SimQueue
from mlq.scheduler.snapshot import (
    Decisions,
    MigRequest,
    Node,
    PendingJob,
    RunningJob,
    Snapshot,
    Start,
    Team,
    rules_from_classes,
)
from mlq.scheduler.spec import Bytes, Millicores, Seconds, Strict, load_yaml, validation_problems
from mlq.scheduler.traces import TraceJob
from pydantic import Field, ValidationError, model_validator

Policy = Callable[[Snapshot], Decisions]


# -- the simulated cluster ----------------------------------------------------------------


class NodeGroup(Strict):
    """``count`` identical nodes named ``<name>-<i>``."""

    name: str
    count: int = Field(1, ge=1, le=10000)
    cpus: Millicores
    memory: Bytes
    gpus: int = Field(8, ge=0, le=64)
    model: str = "H100-80GB"
    mig: bool = False  # all GPUs in MIG mode, uncarved (carved per job)
    carved: list[list[str]] | None = None  # per GPU: ["3g.40gb@0", ...], kept for good

    @model_validator(mode="after")
    def _mig(self) -> NodeGroup:
        if (self.mig or self.carved) and mig.canonical_model(self.model) is None:
            raise ValueError(
                f'model "{self.model}" has no MIG profiles; known: {", ".join(mig.CATALOGUE)}'
            )
        return self


class SimConfig(Strict):
    nodes: list[NodeGroup] = Field(min_length=1)
    teams: list[TeamConfig] = []
    # teams in the trace that are not listed get a guarantee of their share of the
    # trace's GPU-time, in gpu-equivalents of this cluster ("none": no guarantee)
    guarantees: str = Field("trace-share", pattern="^(trace-share|none)$")
    priority_classes: list[PriorityClass] = list(DEFAULT_CLASSES)
    checkpoint_interval: Seconds = 1800
    cpus_per_gpu: Millicores = 4000
    memory_per_gpu: Bytes = 32 * 2**30


@dataclass
class SimCluster:
    config: SimConfig
    nodes: tuple[Node, ...]

    @property
    def gpus(self) -> int:
        return sum(len(n.gpus) for n in self.nodes)

    @property
    def max_node_gpus(self) -> int:
        return max((len(n.gpus) for n in self.nodes), default=0)


def _gpus(group: NodeGroup) -> list[SimpleNamespace]:
    out = []
    for i in range(group.gpus):
        carved = None
        if group.carved is not None and i < len(group.carved):
            carved = tuple((s.split("@")[0], int(s.split("@")[1])) for s in group.carved[i])
        elif group.mig:
            carved = ()
        out.append(SimpleNamespace(index=i, model=group.model, mig=carved))
    return out


def parse_sim_cluster(data: Any, source: str | None = None) -> SimCluster:
    try:
        cfg = SimConfig.model_validate(data or {})
    except ValidationError as exc:
        raise InvalidInput(validation_problems(exc, SimConfig), source) from None
    problems = []
    for k, g in enumerate(cfg.nodes):
        for i, layout in enumerate(g.carved or []):
            try:
                slices = [(s.split("@")[0], int(s.split("@")[1])) for s in layout]
            except (IndexError, ValueError):
                problems.append(f'nodes[{k}].carved[{i}]: write slices as "3g.40gb@0"')
                continue
            for p in mig.layout_problems(mig.canonical_model(g.model) or g.model, slices):
                problems.append(f"nodes[{k}].carved[{i}]: {p}")
    if problems:
        raise InvalidInput(problems, source)
    nodes = tuple(
        build.node(f"{g.name}-{i}" if g.count > 1 else g.name, g.cpus, g.memory, _gpus(g))
        for g in cfg.nodes
        for i in range(g.count)
    )
    return SimCluster(cfg, nodes)


def load_sim_cluster(path: str | Path) -> SimCluster:
    return parse_sim_cluster(load_yaml(path), str(path))


# -- the baseline -----------------------------------------------------------------------------


def fifo_decide(snap: Snapshot) -> Decisions:
    """Strict FIFO: by submission time; the first job that does not fit blocks the rest."""
    room = Room(snap.nodes)
    by_name = room.by_name
    for r in snap.running:  # room.hold(), inline for whole GPUs: this runs per job per event
        n = by_name.get(r.node)
        if n is None:
            continue
        if r.mig:
            room.hold(n, (), r.mig, 0, 0)
        else:
            for idx in r.gpus:
                free = n.free.get(n.models.get(idx, ""))
                if free is not None and idx in free:
                    free.remove(idx)
        n.free_cpu -= r.cpus
        n.free_mem -= r.memory
    room.index_all()
    starts: list[Start] = []
    reasons: dict = {}
    blocked = False
    for j in sorted(snap.pending, key=lambda j: (j.submitted_at, str(j.id))):
        if blocked:
            reasons[j.id] = PRIORITY
            continue
        if j.nodes > 1:
            placed = _fifo_gang(room, j)
            if placed is None:
                reasons[j.id] = RESOURCES
                blocked = True
                continue
            for rank, (n, gpus, slots) in enumerate(placed):
                starts.append(Start(j.id, n.name, gpus, slots, rank, j.nodes))
            continue
        got = None
        if j.mig:
            n = room.find_slices(j.mig.profile, j.mig.count, j.cpus, j.memory)
            if n is not None:
                slots = tuple(take_slices(n, j.mig.profile, j.mig.count))
                got = (n, (), slots)
        elif j.gpus:
            models = [j.gpu_model] if j.gpu_model else room.whole_models
            found = room.find_whole(j.gpus, models, j.cpus, j.memory)
            if found is not None:
                n, m = found
                got = (n, tuple(n.free[m][: j.gpus]), ())
        else:
            n = room.find_cpu(j.cpus, j.memory)
            if n is not None:
                got = (n, (), ())
        if got is None:
            reasons[j.id] = RESOURCES
            blocked = True
            continue
        n, gpus, slots = got
        room.hold(n, gpus, slots, j.cpus, j.memory)
        room.reindex(n)
        starts.append(Start(j.id, n.name, gpus, slots))
    return Decisions(tuple(starts), (), reasons)


def _fifo_gang(room: Room, j: PendingJob) -> list | None:
    """The first nodes (by index) that each hold a part of ``j``, taken; None if fewer."""
    chosen = []
    for n in room.nodes:
        if n.free_cpu < j.cpus or n.free_mem < j.memory:
            continue
        if j.mig:
            if n.mig_cap.get(j.mig.profile, 0) >= j.mig.count:
                chosen.append((n, None))
        elif j.gpus:
            models = [j.gpu_model] if j.gpu_model else room.whole_models
            m = next((m for m in models if len(n.free.get(m, ())) >= j.gpus), None)
            if m is not None:
                chosen.append((n, m))
        else:
            chosen.append((n, None))
        if len(chosen) == j.nodes:
            break
    else:
        return None
    out = []
    for n, m in chosen:
        slots = tuple(take_slices(n, j.mig.profile, j.mig.count)) if j.mig else ()
        gpus = tuple(n.free[m][: j.gpus]) if m is not None else ()
        room.hold(n, gpus, slots, j.cpus, j.memory)
        room.reindex(n)
        out.append((n, gpus, slots))
    return out


# name -> (the decision, the queue order forced on every class, or None for the cluster
# file's own): mlq's policy under each order it offers, and the strict FIFO baseline
POLICIES: dict[str, tuple[Policy, str | None]] = {
    "default": (decide, None),
    "short-first": (decide, "short-first"),
    "fifo-order": (decide, "fifo"),
    "fifo": (fifo_decide, None),
}


# -- the simulation ---------------------------------------------------------------------------


@dataclass(slots=True)
class _JobState:
    job: TraceJob
    remaining: float  # seconds of work still to do
    gpu_eq: float
    first_start: float | None = None
    started: float = 0.0
    epoch: int = 0  # bumped on preemption, so a stale completion event is ignored
    preempted: int = 0
    lost_gpu_s: float = 0.0
    finish: float | None = None
    pending: PendingJob | None = None  # as it was last started (its parts' shape)


@dataclass(frozen=True, slots=True)
class Sample:
    """The cluster at one simulated time: for the plot (``mlq simulate --plot``)."""

    t: float
    queued: int  # pending jobs
    gpus_busy: float  # gpu-equivalents held by running jobs
    team_use: dict[str, float]  # gpu-equivalents each team's running jobs hold


@dataclass(frozen=True, slots=True)
class Progress:
    """How far a replay has got: handed to ``simulate(progress=...)`` now and then."""

    policy: str
    sim_time: float  # seconds since the first submission
    sim_end: float  # the last submission (the replay runs past it until the queue drains)
    finished: int
    jobs: int
    wall_s: float


@dataclass
class SimResult:
    policy: str
    jobs: list[_JobState] = field(default_factory=list)
    decisions: int = 0
    capacity_gpus: int = 0
    busy_gpu_s: float = 0.0
    wall_s: float = 0.0
    timeline: list[Sample] = field(default_factory=list)
    guarantees: dict[str, float] = field(default_factory=dict)  # team -> gpu-equivalents
    runs: list[Run] = field(default_factory=list)  # every run, as the daemon records them


def _run(s: _JobState, r: RunningJob, now: float, state: str, lost_s: float = 0.0) -> Run:
    """A simulated job's run as the daemon's store records one (accounting.py); a
    multi-node job's as one run holding all its parts."""
    parts = s.job.nodes
    return Run(
        job_id=s.job.id, run=s.preempted, team=r.team, user="", priority_class=r.priority_class,
        node=r.node, started_at=s.started, ended_at=now, state=state,
        gpus=len(r.gpus) * parts, gpu_equivalents=s.gpu_eq, cpus=r.cpus * parts,
        memory=r.memory * parts, lost_s=lost_s, time_limit=float(r.time_limit or 0),
    )  # fmt: skip


def _guarantees(cluster: SimCluster, jobs: list[TraceJob]) -> tuple[Team, ...]:
    cfg = cluster.config
    teams = {t.name: Team(t.name, dict(t.guarantee), dict(t.limit)) for t in cfg.teams}
    if cfg.guarantees == "trace-share":
        use: dict[str, float] = {}
        for j in jobs:
            eq = j.total_gpus * (mig_share(j.mig_profile) if j.mig_profile else 1)
            use[j.team] = use.get(j.team, 0.0) + eq * j.duration
        total = sum(use.values()) or 1.0
        for name, u in sorted(use.items()):
            if name not in teams:
                share = math.floor(cluster.gpus * u / total * 100) / 100
                teams[name] = Team(name, {"gpu-equivalent": share} if share > 0 else {}, {})
    return tuple(teams.values())


def simulate(
    jobs: list[TraceJob],
    cluster: SimCluster,
    policy: str = "default",
    *,
    progress: Callable[[Progress], None] | None = None,
    samples: int = 0,
    inert_out: bool = True,
    log: list | None = None,
    observe: Callable[[Snapshot], None] | None = None,
) -> SimResult:
    """Run one policy over the trace until every job has finished.

    ``progress`` is called now and then (about every half second of wall time) and at
    the end; ``samples``: how many evenly spaced Samples of the cluster to keep for a
    plot; ``inert_out``: leave out of each snapshot the pending jobs that cannot matter
    to the decision (scheduler/simqueue.py; the same decisions, much faster); ``log``:
    append every decision's (time, starts, preemptions) to it (for the test that
    compares both ways); ``observe``: called before every decision with the whole
    queue's snapshot (bench/start_estimate.py asks its estimates of it).

    The cyclic garbage collector is paused meanwhile (speed only): a month of Philly
    is ~57k decisions, each allocating thousands of short-lived, acyclic objects that
    reference counting frees anyway, and the collector's repeated scans of everything
    alive (the whole trace's job states) cost ~10% of the run."""
    was_enabled = gc.isenabled()
    gc.disable()
    try:
        return _simulate(jobs, cluster, policy, progress, samples, inert_out, log, observe)
    finally:
        if was_enabled:
            gc.enable()


def _simulate(
    jobs: list[TraceJob],
    cluster: SimCluster,
    policy: str,
    progress: Callable[[Progress], None] | None,
    samples: int,
    inert_out: bool,
    log: list | None,
    observe: Callable[[Snapshot], None] | None = None,
) -> SimResult:
    import time

    t_wall = time.perf_counter()
    cfg = cluster.config
    decide_fn, order = POLICIES[policy]
    classes = {c.name: c for c in cfg.priority_classes}
    rules = rules_from_classes(cfg.priority_classes)
    if order is not None:
        rules = tuple(replace(r, order=order) for r in rules)
    teams = _guarantees(cluster, jobs)
    if policy == "fifo":  # the baseline knows no quotas: nothing waits at a limit
        inert_out = False
    nodes = list(cluster.nodes)
    node_at = {n.name: i for i, n in enumerate(nodes)}
    declared = {(n.name, g.index): set(g.mig or ()) for n in nodes for g in n.gpus}
    state: dict[int, _JobState] = {}
    pending = SimQueue(nodes, teams, rules)
    running: dict[int, RunningJob] = {}  # the job, or the first part of a multi-node job
    parts: dict[int, list[RunningJob]] = {}  # the other parts of a multi-node job
    events: list[tuple[float, int, int, int]] = []  # (time, 0 completion / 1 arrival, id, epoch)
    for j in jobs:
        eq = j.total_gpus * (mig_share(j.mig_profile) if j.mig_profile else 1)
        state[j.id] = _JobState(j, j.duration, eq)
        heapq.heappush(events, (j.submit_time, 1, j.id, 0))
    result = SimResult(policy, capacity_gpus=cluster.gpus)
    for t in teams:
        eq = t.guarantee.get("gpu-equivalent", t.guarantee.get("gpu"))
        if eq:
            result.guarantees[t.name] = float(eq)
    first = min((j.submit_time for j in jobs), default=0.0)
    last = max((j.submit_time for j in jobs), default=0.0)
    step = (last - first) / samples if samples and last > first else 0.0
    next_sample = first
    team_use: dict[str, float] = {}
    busy = 0.0
    finished = 0
    next_report = t_wall + 0.5
    version = 0  # bumped whenever running jobs or the nodes change
    quiet: tuple | None = None  # (version, pending ids) of the last decision that did nothing

    def pending_job(s: _JobState) -> PendingJob:
        j = s.job
        cls = classes.get(j.kind) or classes[next(iter(classes))]
        per = mig_share(j.mig_profile) if j.mig_profile else 1
        asks = SimpleNamespace(
            gpus=0 if j.mig_profile else j.gpus,
            gpu_model=None,
            mig=MigRequest(j.mig_profile, j.gpus) if j.mig_profile else None,
            cpus=max(1000, int(cfg.cpus_per_gpu * j.gpus * per)),
            memory=max(2**30, int(cfg.memory_per_gpu * j.gpus * per)),
            nodes=j.nodes,
        )
        return build.pending(
            j.id,
            j.team,
            cls.name,
            asks,
            cls.defaults,
            time_limit=j.time_limit,
            submitted_at=j.submit_time,
        )

    def set_slices(node: str, slots, add: bool) -> None:
        i = node_at[node]
        n = nodes[i]
        gpus = list(n.gpus)
        for s in slots:
            g = gpus[s.gpu]
            carved = set(g.mig or ())
            if add:
                carved.add((s.profile, s.start))
            elif (s.profile, s.start) not in declared[(node, s.gpu)]:
                carved.discard((s.profile, s.start))
            gpus[s.gpu] = replace(g, mig=tuple(sorted(carved, key=lambda c: c[1])))
        nodes[i] = replace(n, gpus=tuple(gpus))

    def stop(jid: int, now: float, finished: bool) -> None:
        nonlocal busy
        r = running.pop(jid)
        for part in (r, *parts.pop(jid, ())):
            pending.running(part, -1)
            if part.mig:
                set_slices(part.node, part.mig, add=False)
        s = state[jid]
        busy -= s.gpu_eq
        team_use[r.team] -= s.gpu_eq
        ran = now - s.started
        result.busy_gpu_s += ran * s.gpu_eq
        if finished:
            s.remaining = 0.0
            s.finish = now
            result.runs.append(_run(s, r, now, "COMPLETED"))
            return
        interval = s.job.checkpoint_interval or cfg.checkpoint_interval
        saved = math.floor(ran / interval) * interval if interval else 0.0
        result.runs.append(_run(s, r, now, "PREEMPTED", lost_s=ran - saved))
        s.lost_gpu_s += (ran - saved) * s.gpu_eq
        s.remaining -= saved
        s.preempted += 1
        s.epoch += 1
        pending.add(pending_job(s))

    def report(now: float) -> None:
        assert progress is not None
        progress(
            Progress(
                policy,
                now - first,
                last - first,
                finished,
                len(jobs),
                time.perf_counter() - t_wall,
            )
        )

    while events:
        now = events[0][0]
        while step and next_sample <= now:
            result.timeline.append(Sample(next_sample, len(pending), busy, dict(team_use)))
            next_sample += step
        while events and events[0][0] == now:
            _, kind, jid, epoch = heapq.heappop(events)
            s = state[jid]
            if kind == 1:
                pending.add(pending_job(s))
            elif epoch == s.epoch and jid in running:
                stop(jid, now, finished=True)
                finished += 1
                version += 1
        for _ in range(4):  # preempted victims are gone at once: decide again this second
            if not len(pending):
                break
            todo = tuple(pending.relevant() if inert_out else pending.all())
            if not todo:
                break  # every pending job is inert: the decision would change nothing
            if inert_out:
                seen = (version, frozenset(j.id for j in todo))
                if seen == quiet and not pending.time_sensitive():
                    # the same jobs on the same cluster decided nothing a moment ago, and
                    # waiting makes no start or preemption easier (docs/scheduling.md)
                    break
            held = tuple(running.values())
            if parts:
                held += tuple(p for ps in parts.values() for p in ps)
            snap = Snapshot(now, tuple(nodes), held, todo, teams, rules)
            if observe is not None:
                observe(Snapshot(now, tuple(nodes), held, tuple(pending.all()), teams, rules))
            d = decide_fn(snap)
            result.decisions += 1
            if log is not None:
                log.append((now, d.starts, d.preemptions))
            if d.starts or d.preemptions:
                version += 1
                quiet = None
            elif inert_out:
                quiet = seen
            for st in d.starts:
                if st.rank > 0:  # another part of a multi-node job started just above
                    r = build.started(state[st.job].pending, st, now)
                    parts.setdefault(st.job, []).append(r)
                    pending.running(r, 1)
                    if st.mig:
                        set_slices(st.node, st.mig, add=True)
                    continue
                p = pending.pop(st.job)
                s = state[st.job]
                s.pending = p
                if s.first_start is None:
                    s.first_start = now
                s.started = now
                r = running[st.job] = build.started(p, st, now)
                pending.running(r, 1)
                busy += s.gpu_eq
                team_use[r.team] = team_use.get(r.team, 0.0) + s.gpu_eq
                if st.mig:
                    set_slices(st.node, st.mig, add=True)
                heapq.heappush(events, (now + max(1.0, s.remaining), 0, st.job, s.epoch))
            for pr in d.preemptions:
                if pr.victim in running:
                    stop(pr.victim, now, finished=False)
            if not d.preemptions:
                break
        if progress is not None and time.perf_counter() >= next_report:
            report(now)
            next_report = time.perf_counter() + 0.5
    result.jobs = list(state.values())
    result.wall_s = time.perf_counter() - t_wall
    if progress is not None:
        report(last)
    return result
