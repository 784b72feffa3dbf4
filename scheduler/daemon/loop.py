"""The scheduling loop: the daemon's one place where the policy's decisions meet the
store and the executors, each given to it as a part (``Loop(store, executor, clock)``).
Each node is a ``Slot`` of ``loop.nodes`` (``nodeset.py``): this machine's, and in
cluster mode one per agent (``fleet.py`` adds them).

One worker thread runs passes, so passes never overlap. Anything that may change a
decision (a submit, a cancel, a quota change, a run that ends) only *asks* for a
pass; asks that arrive while a pass runs fold into the next one, so a burst of a
thousand submissions costs a few passes. The worker also sleeps on the executor's
descriptors, so a victim's exit starts its preemptor at once, and wakes every
``safety_interval`` seconds anyway.
"""

from __future__ import annotations

import contextlib
import dataclasses
import logging
import os
import select
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass, field

from mlq.executor.cgroups import Stats
from mlq.executor.interface import Executor
from mlq.executor.status import Status
from mlq.scheduler import grants, states
from mlq.scheduler.clock import Clock
from mlq.scheduler.cluster import ClusterConfig
from mlq.scheduler.daemon import gangs, outcomes, recovery
from mlq.scheduler.daemon.carving import Carver
from mlq.scheduler.daemon.dependencies import dependency_states, settle
from mlq.scheduler.daemon.launcher import Launcher
from mlq.scheduler.daemon.logs import run_id
from mlq.scheduler.daemon.nodeset import NodeSet, Slot
from mlq.scheduler.daemon.outcomes import StopCause
from mlq.scheduler.daemon.specs import SpecCache
from mlq.scheduler.daemon.view import NodeView, view
from mlq.scheduler.errors import Conflict, NotFound
from mlq.scheduler.models import JobRow
from mlq.scheduler.policy import decide
from mlq.scheduler.reasons import explain
from mlq.scheduler.snapshot import Decisions, Snapshot
from mlq.scheduler.store import Store

log = logging.getLogger("mlq.loop")
MIN_GAP_S = 0.002  # the shortest wait between two passes
# the active jobs are kept between passes and only what changed is read again (the
# store says which); all of them are read afresh this often anyway
FULL_READ_S = 30.0


@dataclass
class LoopStats:
    passes: int = 0
    last_pass_ms: float = 0.0
    last_pass_cpu_ms: float = 0.0
    asks: int = 0
    started: float = 0.0


@dataclass
class Loop:
    """Runs scheduling passes in one thread; the executors hold the runs. ``executor``
    and ``node``: this machine's node (None for a control plane that runs none)."""

    store: Store
    executor: Executor | None
    clock: Clock
    cluster: ClusterConfig
    node: NodeView | None
    state_dir: str
    forbidden: tuple[str, ...] = grants.FORBIDDEN_PATHS  # never mounted into a job
    safety_interval: float = 5.0
    stats: LoopStats = field(default_factory=LoopStats)
    # called at the start of every pass, under the loop's lock (the fleet's leases)
    before_pass: list[Callable[[], None]] = field(default_factory=list)
    # after each pass, outside its lock: (its decisions, the jobs it read, seconds)
    after_pass: list[Callable[[Decisions, dict[int, JobRow], float], None]] = field(
        default_factory=list
    )

    def __post_init__(self) -> None:
        self.specs = SpecCache(self.store)
        self.nodes = NodeSet()
        self.last_snapshot: Snapshot | None = None
        # nodes an mlq admin drained: name -> reason (the drains table, read at start
        # and kept by drain() and resume(), so a pass reads no table for it)
        self.drained: dict[str, str] = {n: d.reason for n, d in self.store.drains().items()}
        if self.node is not None and self.executor is not None:
            carver = Carver(self.node, self.store, self.cluster.node, self.executor)
            self.nodes.add(Slot(self.node, self.executor, carver, self.state_dir, self.forbidden))
        self.launcher = Launcher(
            self.store, self.clock, self.specs, self.nodes, bridge=self.cluster.node.bridge
        )
        self.stats.started = self.clock.time()
        self._lock = threading.Lock()  # one pass at a time
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._last_end = 0.0  # monotonic time the last pass ended
        self._active: dict[int, JobRow] | None = None  # kept between passes
        self._read_all_at = 0.0
        self._reasons: dict[int, str] = {}  # reasons this loop wrote since it read the row
        self._built: dict[int, tuple[object, object]] = {}  # view.py's cache
        self.store.watch_jobs()

    # -- outside world -------------------------------------------------------------

    def ask(self, why: str = "") -> None:
        """Ask for a pass soon. Cheap, never blocks, safe from any thread."""
        self.stats.asks += 1
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def start(self) -> None:
        with self._lock:
            recovery.recover(self)
        self._thread = threading.Thread(target=self._run, name="mlq-loop", daemon=True)
        self._thread.start()
        self.ask("start")

    def stop(self) -> None:
        """Stop passing; running jobs keep running under their supervisors."""
        self._stopping.set()
        self.ask("shutdown")
        if self._thread is not None:
            self._thread.join(timeout=30)

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                fds = [self._wake_r, *self.nodes.wait_fds()]
            with contextlib.suppress(OSError, ValueError):  # an fd a pass closed meanwhile
                select.select(fds, [], [], self.safety_interval)
            # Under a burst, leave four times the CPU a pass used between passes, so the
            # API keeps most of the CPU and the asks of the gap fold into one pass. CPU,
            # not wall time: waiting on a launch costs the API nothing, and a lone
            # submit or a victim's exit must not wait for the last pass's launches.
            gap = max(MIN_GAP_S, 4 * self.stats.last_pass_cpu_ms / 1000)
            gap -= self.clock.monotonic() - self._last_end
            if gap > 0:
                self._stopping.wait(gap)
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
            if self._stopping.is_set():
                break
            try:
                self.run_pass()
            except Exception:  # a pass must never kill the loop
                log.exception("scheduling pass failed; the next one retries")
                self._stopping.wait(0.5)

    # -- one pass -------------------------------------------------------------------

    def run_pass(self) -> Decisions:
        t0, cpu0 = self.clock.monotonic(), time.thread_time()
        with self._lock:
            recovery.reap_orphans()
            for hook in self.before_pass:
                hook()
            # 1. the runs that ended: their states and requeues
            active = self.active_jobs()
            if self.collect_ended([j for j in active if j.state != states.PENDING]):
                active = self.active_jobs()
            # a multi-node job's parts share one fate: a part that ended ends the others
            if gangs.settle(self, active, self.clock.time()):
                active = self.active_jobs()
            # 2. checkpoint marks of running jobs (they choose the cheapest victims)
            self.read_checkpoint_marks([j for j in active if j.state == states.RUNNING])
            # 3. dependencies: one read of their states; afterok that can never hold
            deps = dependency_states(self.store, active)
            pending = [j for j in active if j.state == states.PENDING]
            if settle(self.store, pending, deps, self.clock.time()):
                active = self.active_jobs()
            # 4. the snapshot and the policy's decisions
            now = self.clock.time()
            local = self.nodes.local
            v = view(self.store, local.executor if local else None, self.specs,
                     self.nodes.offered(set(self.drained)), active, deps, now,
                     self.launcher.failed,
                     self._built)  # fmt: skip
            decisions = decide(v.snapshot)
            self.last_snapshot = v.snapshot  # what mlq queue --start plays forward
            # 5. reasons with their numbers; carry out the decisions, each on its own
            reasons = explain(v.snapshot, decisions) | v.waiting
            decisions = dataclasses.replace(decisions, reasons=reasons)
            for slot in self.nodes.all():
                decisions = slot.carver.explain(decisions)
            self.apply(decisions, v.jobs, v.parts)
        self.stats.passes += 1
        self.stats.last_pass_ms = (self.clock.monotonic() - t0) * 1000
        self.stats.last_pass_cpu_ms = (time.thread_time() - cpu0) * 1000
        self._last_end = self.clock.monotonic()
        for after in self.after_pass:
            after(decisions, v.jobs, self.stats.last_pass_ms / 1000)
        return decisions

    def active_jobs(self) -> list[JobRow]:
        """Every active job, without the spec text (specs parsed once, kept by id). Kept
        between passes: only the jobs the store says were written since are read again
        (all of them every ``FULL_READ_S``, and after a start)."""
        now = self.clock.monotonic()
        if self._active is None or now - self._read_all_at > FULL_READ_S:
            self.store.changed_jobs()  # before the read: a write after it is seen next
            rows = self.store.jobs(states_in=states.ACTIVE, with_spec=False)
            self._active = {r.id: r for r in rows if r.id is not None}
            self._reasons.clear()
            self._read_all_at = now
        else:
            changed = self.store.changed_jobs()
            if changed:
                for i in changed:
                    self._active.pop(i, None)
                    self._reasons.pop(i, None)
                for r in self.store.jobs(ids=sorted(changed), with_spec=False):
                    if r.state in states.ACTIVE and r.id is not None:
                        self._active[r.id] = r
        active = sorted(self._active.values(), key=lambda r: r.id or 0)
        self.specs.load(active)
        return active

    def collect_ended(self, running: list[JobRow]) -> int:
        """Record every run that ended; returns how many did."""
        ended = 0
        # a node that knows none of its runs ended (an agent's) is skipped
        quiet = {s.name for s in self.nodes.all() if not s.executor.news().ended}
        for job in running:
            if job.node in quiet:
                continue
            slot = self.nodes.of(job)
            if not job.run_dir or slot is None:
                continue  # being started by this very pass; or on a node not known yet
            status = slot.executor.poll(run_id(job))
            if status is not None:
                self.finish(job, status)
                ended += 1
        return ended

    def finish(self, job: JobRow, status: Status) -> None:
        """Record how a run ended; requeue a preempted job that asks for it."""
        slot = self.nodes.of(job)
        if slot is not None:
            slot.carver.release(job)  # the MIG slices carved for this run
        steps = outcomes.ended(job, self.specs.of(job), status, self.clock.time())
        self.store.transitions(job.id, steps)

    def read_checkpoint_marks(self, running: list[JobRow]) -> None:
        """A job reports a checkpoint by touching its mark (``mlq checkpoint-done``)."""
        quiet = {s.name for s in self.nodes.all() if not s.executor.news().marks}
        for job in running:
            if job.node in quiet:
                continue
            slot = self.nodes.of(job)
            mtime = slot.executor.checkpoint_mark(job.id) if slot else None
            if mtime and job.started_at and mtime >= job.started_at and mtime != job.checkpoint_at:
                self.store.update_fields(job.id, checkpoint_at=mtime)

    def apply(
        self,
        decisions: Decisions,
        jobs: dict[int, JobRow],
        parts: dict[int, list[JobRow]] | None = None,
    ) -> None:
        """Carry out each decision on its own: one that fails (a slice the node cannot
        carve, a cgroup that cannot be made, a store error) is recorded on its job and
        the others still happen. ``parts``: the rows of each multi-node job, whose
        parts are stopped and started together (gangs.py)."""
        parts = parts or {}
        for p in decisions.preemptions:
            victims = parts.get(int(p.victim)) or [jobs.get(int(p.victim))]
            for victim in victims:
                if victim is None or victim.state not in (states.RUNNING, states.STARTING):
                    continue
                if victim.state == states.STARTING and victim.gang_id is None:
                    continue  # a one-node job is preempted once it runs
                try:
                    self.launcher.stop(
                        victim, StopCause.PREEMPT, f"Preempted for job {p.for_job}", int(p.for_job)
                    )
                except Exception:
                    log.exception("preempting job %s for job %s failed", p.victim, p.for_job)
        together: dict[int, list] = {}
        for s in decisions.starts:
            if s.parts > 1:
                together.setdefault(int(s.job), []).append(s)
        for job_id, starts in together.items():
            gangs.start(self, job_id, starts, parts.get(job_id, ()))
            by_rank = {p.gang_rank: p for p in parts.get(job_id, ())}
            for s in starts:
                slot = self.nodes.get(s.node)
                if slot is not None and s.rank in by_rank:
                    slot.carver.settle(by_rank[s.rank])
        for s in decisions.starts:
            if s.parts > 1:
                continue
            job = jobs.get(int(s.job))
            if job is not None and job.state == states.PENDING:
                try:
                    self.launcher.start(job, s)
                except Exception as exc:
                    log.exception("starting job %s failed", s.job)
                    self.launcher.failed(job, f"{type(exc).__name__}: {exc}")
                if (slot := self.nodes.get(s.node)) is not None:
                    slot.carver.settle(job)  # slices carved for a job not started go
        changed = {}
        for k, reason in decisions.reasons.items():
            job = jobs.get(int(k))
            if job is None or job.state != states.PENDING:
                continue
            if self._reasons.get(int(k), job.reason) != reason:
                changed[int(k)] = reason
        self.store.set_reasons(changed)
        self._reasons.update(changed)  # the kept rows still hold the reasons they were read with

    # -- asked by the API (another thread) ----------------------------------------------

    def cancel_running(self, job_id: int, now: bool, reason: str) -> str:
        with self._lock:
            job = self.store.job(job_id)
            if job.state in states.FINAL or job.state == states.PENDING:
                return job.state
            if job.state == states.STOPPING:
                # already stopping (e.g. preempted): the cancel wins, and --now kills
                self.store.update_fields(
                    job_id,
                    stop_cause=StopCause.CANCEL.value,
                    reason=reason,
                    stop_now=now or job.stop_now,
                )
                slot = self.nodes.of(job)
                if now and job.run_dir and slot is not None:
                    with contextlib.suppress(Exception):
                        slot.executor.stop(run_id(job), now=True)
                return states.STOPPING
            self.launcher.stop(job, StopCause.CANCEL, reason, now=now)
        self.ask("stop")
        return states.STOPPING

    def requeue_running(self, job_id: int, reason: str) -> list[int]:
        """Stop a running job gracefully (its signal and grace period) to put it back in
        the queue (mlq requeue); a multi-node job with every part. Returns the rows
        stopped; raises Conflict unless every part is starting or running."""
        with self._lock:
            job = self.store.job(job_id)
            rows = [job]
            if job.gang_id is not None:
                rows = list(self.store.jobs(gang=job.gang_id, with_spec=False))
            moving = [p for p in rows if p.state not in (states.STARTING, states.RUNNING)]
            if moving:
                p = moving[0]
                what = f"job {job_id}" if p.id == job_id else f"part {p.id} of job {job_id}"
                raise Conflict(
                    f"{what} is {p.state}: only a starting or running job can be requeued"
                )
            for p in rows:
                self.launcher.stop(p, StopCause.REQUEUE, reason)
        self.ask("stop")
        return [p.id for p in rows]

    def update_pending(self, change: Callable[[], tuple[list[int], str]]) -> tuple[list[int], str]:
        """Run ``change`` (mlq update: it rewrites pending jobs' specs) between passes,
        and forget the specs it changed, so no pass keeps the old one."""
        with self._lock:
            ids, why = change()
            self.specs.forget(ids)
        self.ask("update")
        return ids, why

    def drain(self, node: str, reason: str, by: str) -> None:
        """Offer the node nothing new from the next pass on; its running jobs finish."""
        self._known(node)
        with self._lock:
            self.store.drain(node, reason, by)
            self.drained[node] = reason
        self.ask("drain")

    def resume(self, node: str) -> bool:
        """Offer a drained node new jobs again; whether it was drained."""
        self._known(node)
        with self._lock:
            was = self.store.resume(node)
            self.drained.pop(node, None)
        self.ask("resume")
        return was

    def _known(self, node: str) -> None:
        if self.nodes.get(node) is None:
            known = ", ".join(sorted(s.name for s in self.nodes.all())) or "none"
            raise NotFound(f'node "{node}" is not a node of this cluster (its nodes: {known})')

    def live_stats(self, job: JobRow) -> Stats | None:
        """The executor's live figures for a running job (None if not available)."""
        slot = self.nodes.of(job)
        return slot.executor.stats(run_id(job)) if job.run_dir and slot else None

    def refresh_gpus(self) -> None:
        """Rediscover this node's GPUs (``mlq nodes --refresh``)."""
        with self._lock:
            slot = self.nodes.local
            if slot is not None:
                slot.view.gpus = slot.executor.inventory(refresh=True)
                slot.carver.reset()  # a node that stopped carving may carve again
                log.info("node %s: %s", slot.name, slot.view.gpus.summary())
        self.ask("refresh")

    def executor_of(self, job: JobRow) -> Executor | None:
        """The executor of the node a job ran or runs on (its output is there)."""
        slot = self.nodes.of(job)
        return slot.executor if slot is not None else None
