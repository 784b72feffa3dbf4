"""The scheduling loop: the daemon's one place where the policy's decisions meet the
store and the executor.

One worker thread runs passes, so passes never overlap. Anything that may change
a decision (a submit, a cancel, a quota change, a run that ends) only *asks* for a
pass; asks that arrive while a pass runs fold into the next one, so a burst of a
thousand submissions costs a few passes. The worker sleeps on the runs' end
notifications too, so a victim's exit starts its preemptor at once; an
APScheduler interval job asks for a pass now and then as a safety net.

Each pass, top to bottom:
1. collect the runs that ended (status written durably by their supervisors);
2. read the checkpoint marks of running jobs;
3. settle dependencies;
4. take a snapshot and ask the pure policy for decisions;
5. apply them: stop victims, start jobs, write the reasons of the rest.
"""

from __future__ import annotations

import contextlib
import dataclasses
import json
import logging
import os
import select
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from mlq.executor.asuser import HostUser
from mlq.scheduler import grants, states
from mlq.scheduler.cluster import ClusterConfig
from mlq.scheduler.daemon.carving import Carver
from mlq.scheduler.daemon.imageprep import ImagePrep
from mlq.scheduler.errors import Conflict, NotFound
from mlq.scheduler.models import Job
from mlq.scheduler.reasons import explain
from mlq.scheduler.snapshot import (
    Gpu,
    MigRequest,
    MigSlot,
    Node,
    PendingJob,
    RunningJob,
    Snapshot,
    Start,
    Team,
    rules_from_classes,
)
from mlq.scheduler.spec import JobSpec
from mlq.scheduler.store import Store
from mlq.scheduler.units import format_size

log = logging.getLogger("mlq.loop")

CHECKPOINT_MARK = ".mlq-checkpoint-done"
MIN_GAP_S = 0.002  # the shortest wait between two passes
# The safety-net pass interval; MLQ_SCHEDULE_INTERVAL changes it (tests set it long,
# to show that starts and requeues do not wait for it).
SAFETY_INTERVAL_S = float(os.environ.get("MLQ_SCHEDULE_INTERVAL", "5"))


@dataclass
class NodeView:
    """This node as the loop sees it: capacity from the config, GPUs from discovery."""

    name: str
    cpus: int
    memory: int
    gpus: Any  # mlq.executor.gpus.NodeGpus
    can_carve: bool = True  # may carve MIG slices now (scheduler/daemon/carving.py)

    def snapshot_node(self) -> Node:
        decls = self.gpus.to_decls()
        return Node(
            name=self.name,
            cpus=self.cpus,
            memory=self.memory,
            can_carve=self.can_carve,
            gpus=tuple(
                Gpu(
                    index=g.index,
                    model=g.model,
                    mig=None if g.mig is None else tuple((m.profile, m.start) for m in g.mig),
                )
                for g in decls
            ),
        )


@dataclass
class LoopStats:
    passes: int = 0
    last_pass_ms: float = 0.0
    last_pass_cpu_ms: float = 0.0
    asks: int = 0
    started: float = field(default_factory=time.time)


def spec_of(job: Job) -> JobSpec:
    """The job's resolved spec. A stored spec never changes, so each is parsed once
    (rows read without their spec column must have been through ``load_specs``)."""
    spec = _SPECS.get(job.id or 0)
    if spec is None:
        if len(_SPECS) > 200_000:  # bounded: finished jobs are not looked up again
            _SPECS.clear()
        spec = _SPECS[job.id or 0] = JobSpec.model_validate_json(job.spec)
    return spec


def load_specs(store: Store, jobs: list[Job]) -> None:
    """Parse, in one query, the specs of jobs not seen before."""
    missing = [j.id for j in jobs if j.id not in _SPECS]
    if missing:
        for job_id, text in store.specs(missing):
            _SPECS[job_id] = JobSpec.model_validate_json(text)


_SPECS: dict[int, JobSpec] = {}


def devices_of(job: Job) -> tuple[tuple[int, ...], tuple[MigSlot, ...]]:
    if not job.devices:
        return (), ()
    d = json.loads(job.devices)
    return tuple(d.get("gpus", [])), tuple(
        MigSlot(m["gpu"], m["profile"], m["start"]) for m in d.get("mig", [])
    )


class Loop:
    """Runs scheduling passes in one thread; holds the executor handles of running jobs."""

    def __init__(
        self, store: Store, cluster: ClusterConfig, state_dir: Path, node: NodeView
    ) -> None:
        self.store = store
        self.cluster = cluster
        self.state_dir = state_dir
        self.node = node
        self.carver = Carver(self)  # MIG slices carved for starts, destroyed at their end
        self.stats = LoopStats()
        self.handles: dict[int, Any] = {}  # job id -> executor Handle
        self._lock = threading.Lock()  # one pass at a time; also guards self.handles
        self._wake_r, self._wake_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._stopping = threading.Event()
        self._thread: threading.Thread | None = None
        self._timer: Any = None
        self._pidfds: dict[int, int] = {}  # supervisor pid -> pidfd, for adopted runs
        self._last_end = 0.0  # monotonic time the last pass ended
        self.forbidden: tuple[str, ...] = grants.FORBIDDEN_PATHS  # never mounted into a job
        self.images = ImagePrep(str(state_dir), self.ask)
        self._image_waits: dict[int, str] = {}  # pending job -> reason, this pass

    # -- outside world -------------------------------------------------------------

    def ask(self, why: str = "") -> None:
        """Ask for a pass soon. Cheap, never blocks, safe from any thread."""
        self.stats.asks += 1
        with contextlib.suppress(BlockingIOError):
            os.write(self._wake_w, b"x")

    def start(self) -> None:
        from apscheduler.schedulers.background import BackgroundScheduler

        self.recover()
        self._thread = threading.Thread(target=self._run, name="mlq-loop", daemon=True)
        self._thread.start()
        self._timer = BackgroundScheduler(daemon=True)
        self._timer.add_job(self.ask, "interval", seconds=SAFETY_INTERVAL_S, args=["interval"])
        self._timer.start()
        self.ask("start")

    def stop(self) -> None:
        """Stop passing; running jobs keep running under their supervisors."""
        self._stopping.set()
        self.ask("shutdown")
        if self._timer is not None:
            self._timer.shutdown(wait=False)
        if self._thread is not None:
            self._thread.join(timeout=30)
        self.images.close()

    def _watch_fds(self) -> list[int]:
        fds = [self._wake_r]
        for h in self.handles.values():
            if h.notify_fd is not None:
                fds.append(h.notify_fd)
            else:
                fd = self._pidfds.get(h.supervisor_pid)
                if fd is None:
                    try:
                        fd = os.pidfd_open(h.supervisor_pid)
                    except ProcessLookupError:
                        continue  # already gone: the pass will collect it
                    self._pidfds[h.supervisor_pid] = fd
                fds.append(fd)
        return fds

    def _run(self) -> None:
        while not self._stopping.is_set():
            with self._lock:
                fds = self._watch_fds()
            with contextlib.suppress(OSError, ValueError):  # an fd a pass closed meanwhile
                select.select(fds, [], [], SAFETY_INTERVAL_S)
            # Under a burst, leave four times the CPU a pass used between passes, so the
            # API keeps most of the CPU and the asks of the gap fold into one pass. CPU,
            # not wall time: waiting on a launch costs the API nothing, and a lone
            # submit or a victim's exit must not wait for the last pass's launches.
            gap = max(MIN_GAP_S, 4 * self.stats.last_pass_cpu_ms / 1000) - (
                time.monotonic() - self._last_end
            )
            if gap > 0:
                time.sleep(gap)
            with contextlib.suppress(BlockingIOError):
                while os.read(self._wake_r, 4096):
                    pass
            if self._stopping.is_set():
                break
            try:
                self.run_pass()
            except Exception:  # a pass must never kill the loop
                log.exception("scheduling pass failed; the next one retries")
                time.sleep(0.5)

    # -- one pass -------------------------------------------------------------------

    def run_pass(self) -> None:
        t0 = time.perf_counter()
        cpu0 = time.thread_time()
        with self._lock:
            reap_orphans()
            active = self.active_jobs()
            if self.collect_ended([j for j in active if j.state != states.PENDING]):
                active = self.active_jobs()
            self.read_checkpoint_marks([j for j in active if j.state == states.RUNNING])
            if self.settle_dependencies([j for j in active if j.state == states.PENDING]):
                active = self.active_jobs()
            snapshot, jobs = self.snapshot(active)
            from mlq.scheduler.policy import decide

            decisions = decide(snapshot)
            # the policy's reason codes, with the numbers a person needs, and the jobs
            # left out of the snapshot while their image is being prepared
            reasons = explain(snapshot, decisions) | self._image_waits
            decisions = dataclasses.replace(decisions, reasons=reasons)
            decisions = self.carver.explain(decisions)  # MigCarveFailed stays while it holds
            self.apply(decisions, jobs)
        self.stats.passes += 1
        self.stats.last_pass_ms = (time.perf_counter() - t0) * 1000
        self.stats.last_pass_cpu_ms = (time.thread_time() - cpu0) * 1000
        self._last_end = time.monotonic()

    def active_jobs(self) -> list[Job]:
        """Every active job, without the spec text (parsed once, kept by id)."""
        active = self.store.jobs(states_in=states.ACTIVE, with_spec=False)
        load_specs(self.store, active)
        return active

    def collect_ended(self, running: list[Job]) -> int:
        """Record every run that ended; returns how many did."""
        from mlq.executor import poll

        ended = 0
        for job in running:
            assert job.id is not None
            ref = self.handles.get(job.id) or job.run_dir
            if ref is None or (job.state == states.STARTING and job.id not in self.handles):
                continue  # being started by this very pass, or recovered separately
            status = poll(ref)
            if status is not None:
                self.finish(job, status)
                ended += 1
        return ended

    def finish(self, job: Job, status: Any) -> None:
        """Record how a run ended; requeue a preempted job that asks for it."""
        assert job.id is not None
        self.carver.release(job)  # the MIG slices carved for this run
        h = self.handles.pop(job.id, None)
        if h is not None:
            fd = self._pidfds.pop(h.supervisor_pid, None)
            if fd is not None:
                os.close(fd)
        spec = spec_of(job)
        outcome = status.state.value if hasattr(status.state, "value") else str(status.state)
        oom_kills = int(getattr(status, "oom_kills", 0) or 0)
        fields: dict[str, Any] = {
            "ended_at": time.time(),
            "exit_code": status.exit_code,
            "signal": status.signal,
            "max_memory": status.max_memory_bytes or None,
            "oom_kills": oom_kills,
        }
        how = _how_it_ended(status)
        # Slurm's rule: a run whose cgroup saw the kernel kill for memory ended
        # OUT_OF_MEMORY, whatever its exit code (a parent that survived its children's
        # OOM kills and exited 0 still lost work to them)
        if oom_kills and outcome in ("COMPLETED", "FAILED"):
            outcome = "OUT_OF_MEMORY"
        if job.stop_cause == "preempt":
            steps = [(states.PREEMPTED, f"Preempted for job {job.stop_for} ({how})", fields)]
            if spec.preemption.requeue:
                requeue = {
                    "restart_count": job.restart_count + 1,
                    "node": None,
                    "devices": None,
                    "cgroup": None,
                    "stop_cause": None,
                    "stop_for": None,
                    "ended_at": None,
                }
                why = f"Requeued after preemption (restart {job.restart_count + 1})"
                steps.append((states.PENDING, why, requeue))
            self.store.transitions(job.id, steps)
            return
        if job.stop_cause == "cancel":
            self.store.transition(job.id, states.CANCELLED, f"{job.reason} ({how})", **fields)
            return
        if outcome == "OUT_OF_MEMORY":
            limit = format_size(spec.resources.memory or 0)
            kills = "1 process" if oom_kills <= 1 else f"{oom_kills} processes"
            reason = (
                f"killed by the kernel for memory: it used more than its limit of {limit} "
                f"(resources.memory; {kills} killed, {how}); raise resources.memory or use less"
            )
            self.store.transition(job.id, states.OUT_OF_MEMORY, reason, **fields)
        elif outcome == "TIMEOUT":
            self.store.transition(
                job.id,
                states.TIMEOUT,
                f"ran past its time limit of {spec.time_limit}s and was stopped ({how})",
                **fields,
            )
        elif outcome == "COMPLETED":
            self.store.transition(job.id, states.COMPLETED, "exit code 0", **fields)
        elif outcome == "STOPPED":
            self.store.transition(
                job.id, states.CANCELLED, f"stopped outside mlq ({how})", **fields
            )
        else:
            error = getattr(status, "error", None)
            self.store.transition(job.id, states.FAILED, error or how, **fields)

    def read_checkpoint_marks(self, running: list[Job]) -> None:
        """A job reports a checkpoint by touching its mark file (``mlq checkpoint-done``)."""
        from mlq.scheduler.launch import checkpoint_dir

        for job in running:
            mark = Path(checkpoint_dir(str(self.state_dir), job.id or 0)) / CHECKPOINT_MARK
            try:
                mtime = mark.lstat().st_mtime  # the job's file: never follow its symlink
            except OSError:
                continue
            if job.started_at and mtime >= job.started_at and mtime != job.checkpoint_at:
                self.store.update_fields(job.id or 0, checkpoint_at=mtime)

    def settle_dependencies(self, pending: list[Job]) -> int:
        """Cancel pending jobs whose afterok dependency can no longer succeed; returns
        how many were cancelled."""
        waiting = [j for j in pending if j.depends_on != "[]"]
        cancelled = 0
        if not waiting:
            return 0
        dep_ids = {d for j in waiting for d in json.loads(j.depends_on)}
        dep_state = {d.id: d.state for d in self.store.jobs(ids=dep_ids)}
        for j in waiting:
            for d in json.loads(j.depends_on):
                st = dep_state.get(d)
                if st in states.FINAL and st != states.COMPLETED and st != states.PREEMPTED:
                    with contextlib.suppress(Conflict):  # cancelled by its user meanwhile
                        self.store.transition(
                            j.id or 0,
                            states.CANCELLED,
                            f"DependencyNeverSatisfied: job {d} ended {st}",
                            expect=(states.PENDING,),
                            ended_at=time.time(),
                        )
                        cancelled += 1
                    break
        return cancelled

    def snapshot(self, active: list[Job]) -> tuple[Snapshot, dict[int, Job]]:
        jobs = {j.id or 0: j for j in active}
        done = set()
        deps = {d for j in active if j.depends_on != "[]" for d in json.loads(j.depends_on)}
        if deps:
            done = {d.id for d in self.store.jobs(ids=deps) if d.state == states.COMPLETED}
        running, pending = [], []
        self._image_waits = {}
        checked: dict[tuple[str, int, int], Any] = {}
        for j in active:
            spec = spec_of(j)
            r = spec.resources
            if j.state == states.PENDING and spec.image != "host" and not j.held:
                # an image not unpacked yet is prepared off this thread meanwhile
                key = (spec.image, j.uid, j.gid)
                verdict = checked.get(key)
                if verdict is None:
                    user = HostUser(j.uid, j.gid, tuple(_groups_of(j.user, j.uid, j.gid)))
                    verdict = checked[key] = self.images.check(spec.image, user)
                if verdict.error is not None:
                    self._start_failed(j, verdict.error)
                    continue
                if verdict.waiting:
                    self._image_waits[j.id or 0] = f"ImagePending: preparing {spec.image}"
                    continue
            if j.state == states.PENDING:
                mig = MigRequest(r.mig.profile, r.mig.count) if r.mig else None
                pending.append(
                    PendingJob(
                        id=j.id or 0,
                        team=j.team,
                        priority_class=j.priority_class,
                        gpus=r.gpus,
                        gpu_model=r.gpu_model,
                        mig=mig,
                        cpus=r.cpus or 0,
                        memory=r.memory or 0,
                        submitted_at=j.submitted_at,
                        time_limit=spec.time_limit,
                        blocked_by_dependency=j.depends_on != "[]"
                        and any(d not in done for d in json.loads(j.depends_on)),
                        held=j.held,
                    )
                )
            else:
                gpus, mig_slots = devices_of(j)
                running.append(
                    RunningJob(
                        id=j.id or 0,
                        team=j.team,
                        priority_class=j.priority_class,
                        node=j.node or self.node.name,
                        gpus=gpus,
                        mig=mig_slots,
                        cpus=r.cpus or 0,
                        memory=r.memory or 0,
                        started_at=j.started_at or time.time(),
                        checkpoint_at=j.checkpoint_at,
                        time_limit=spec.time_limit,
                        stopping_for=j.stop_for if j.state == states.STOPPING else None,
                    )
                )
        snap = Snapshot(
            now=time.time(),
            # a cordoned node holds its running jobs but is offered nothing new
            nodes=(self.node.snapshot_node(),) if self.cluster.node.schedulable else (),
            running=tuple(running),
            pending=tuple(pending),
            teams=tuple(Team(t.name, t.guarantee, t.limit) for t in self.store.teams()),
            classes=rules_from_classes(self.store.classes()),
        )
        return snap, jobs

    def apply(self, decisions: Any, jobs: dict[int, Job]) -> None:
        """Carry out each decision on its own: one that fails (a slice the node cannot
        carve, a cgroup that cannot be made, a store error) is recorded on its job and
        the others still happen."""
        for p in decisions.preemptions:
            victim = jobs.get(int(p.victim))
            if victim is not None and victim.state == states.RUNNING:
                try:
                    self.stop_job(
                        victim,
                        cause="preempt",
                        reason=f"Preempted for job {p.for_job}",
                        stop_for=int(p.for_job),
                    )
                except Exception:
                    log.exception("preempting job %s for job %s failed", p.victim, p.for_job)
        for s in decisions.starts:
            job = jobs.get(int(s.job))
            if job is not None and job.state == states.PENDING:
                try:
                    self.start_job(job, s)
                except Exception as exc:
                    log.exception("starting job %s failed", s.job)
                    self._start_failed(job, f"{type(exc).__name__}: {exc}")
                self.carver.settle(job)  # slices carved for a job that did not start go
        changed = {}
        for k, reason in decisions.reasons.items():
            job = jobs.get(int(k))
            if job is not None and job.state == states.PENDING and job.reason != reason:
                changed[int(k)] = reason
        self.store.set_reasons(changed)

    # -- starting and stopping -----------------------------------------------------------

    def run_dir(self, job: Job) -> Path:
        return self.state_dir / "runs" / f"{job.id}.{job.restart_count}"

    def start_job(self, job: Job, start: Start) -> None:
        from mlq.executor import start as exec_start
        from mlq.executor.gpus import wiring
        from mlq.scheduler.launch import build_launch_request

        assert job.id is not None
        spec = spec_of(job)
        devices: list[tuple[str, str]] = []
        visible = None
        carved = self.carver.carve_for(job, start)  # the slices that do not exist yet
        if carved is None:  # the driver refused: the job waits, with the reason
            return
        if start.gpus or start.mig:
            w = wiring(self.node.gpus, gpus=list(start.gpus), mig=list(start.mig))
            devices = [(d.host_path, d.path) for d in w.devices]
            visible = w.visible
        extra = {}
        if job.array_index is not None:
            extra["MLQ_ARRAY_INDEX"] = str(job.array_index)
            extra["MLQ_ARRAY_ID"] = str(job.array_id)
        if spec.checkpoint is not None:
            extra["MLQ_CHECKPOINT_MARK"] = f"{spec.checkpoint.target.rstrip('/')}/{CHECKPOINT_MARK}"
        run_dir = self.run_dir(job)
        if run_dir.exists():  # left by a start the daemon never finished; it never ran
            from mlq.executor.runner import discard

            discard(str(run_dir))
        # grants are checked again: one may have been taken back since the submit
        all_grants = self.store.grants()
        beyond = grants.check(
            spec, job.team, job.priority_class, all_grants, self.forbidden, is_root=job.uid == 0
        )
        if beyond:
            self._start_failed(job, "; ".join(beyond))
            return
        allowed = grants.allowed_for(all_grants, job.team, job.priority_class)
        request = build_launch_request(
            spec,
            job_id=job.id,
            restart_count=job.restart_count,
            run_id=run_dir.name,
            uid=job.uid,
            gid=job.gid,
            state_dir=str(self.state_dir),
            devices=devices,
            visible_devices=visible,
            extra_env=extra,
            checkpoint_key=job.id,
            additional_gids=_groups_of(job.user, job.uid, job.gid),
            volume_paths=() if job.uid == 0 else allowed.volume_paths,
            denied_paths=self.forbidden,
            log_limit=self._log_limit(job.priority_class),
        )
        held = {
            "gpus": list(start.gpus),
            "mig": [{"gpu": m.gpu, "profile": m.profile, "start": m.start} for m in start.mig],
            **({"carved": carved} if carved else {}),
        }
        # Recorded before the launch: a daemon that dies mid-launch finds the run dir.
        # Only from PENDING: a job cancelled since the snapshot is never started.
        try:
            self.store.transition(
                job.id,
                states.STARTING,
                f"on {start.node}",
                expect=(states.PENDING,),
                node=start.node,
                devices=json.dumps(held),
                run_dir=str(run_dir),
                started_at=time.time(),
            )
        except Conflict:
            log.info("job %s left PENDING before its start: not started", job.id)
            return
        try:
            handle = exec_start(request)
        except Exception as exc:  # BadRequest / LaunchError: the executor undid its steps
            log.warning("job %s failed to start: %s", job.id, exc)
            self.store.transition(
                job.id, states.FAILED, f"could not start: {exc}", ended_at=time.time()
            )
            return
        self.handles[job.id] = handle
        cg = ",".join(sorted(set(handle.cgroup_paths.values())))
        self.store.transition(
            job.id, states.RUNNING, f"on {start.node}", expect=(states.STARTING,), cgroup=cg
        )

    def _start_failed(self, job: Job, why: str) -> None:
        """A start that failed before the executor ran anything: the job ends FAILED
        with the reason (whatever state the failed attempt left it in)."""
        with contextlib.suppress(Conflict, NotFound):
            self.store.transition(
                job.id or 0,
                states.FAILED,
                f"could not start: {why}",
                expect=(states.PENDING, states.STARTING),
                ended_at=time.time(),
            )

    def _log_limit(self, klass: str) -> int | None:
        from mlq.scheduler.cluster import DEFAULT_LOG_LIMIT

        c = next((c for c in self.store.classes() if c.name == klass), None)
        return c.log_limit if c is not None else DEFAULT_LOG_LIMIT

    def stop_job(
        self, job: Job, cause: str, reason: str, stop_for: int | None = None, now: bool = False
    ) -> None:
        from mlq.executor import kill_now, stop

        assert job.id is not None
        ref = self.handles.get(job.id) or job.run_dir
        self.store.transition(
            job.id,
            states.STOPPING,
            reason,
            expect=(states.RUNNING, states.STARTING),
            stop_cause=cause,
            stop_for=stop_for,
        )
        if ref is None:
            return
        try:
            kill_now(ref) if now else stop(ref)
        except Exception as exc:  # already ended: the next pass collects it
            log.info("stop job %s: %s", job.id, exc)
        self.ask("stop")

    def cancel_running(self, job_id: int, now: bool, reason: str) -> str:
        """Called by the API (another thread) to cancel a running job."""
        with self._lock:
            job = self.store.job(job_id)
            if job.state in states.FINAL or job.state == states.PENDING:
                return job.state
            if job.state == states.STOPPING:
                # already stopping (e.g. preempted): the cancel wins, and --now kills
                self.store.update_fields(job_id, stop_cause="cancel", reason=reason)
                if now and job.run_dir:
                    from mlq.executor import kill_now

                    with contextlib.suppress(Exception):
                        kill_now(self.handles.get(job_id) or job.run_dir)
                return states.STOPPING
            self.stop_job(job, cause="cancel", reason=reason, now=now)
            return states.STOPPING

    def live_stats(self, job: Job) -> Any:
        """The executor's live figures for a running job (None if not available)."""
        from mlq.executor import stats

        ref = self.handles.get(job.id or 0) or job.run_dir
        if ref is None:
            return None
        try:
            return stats(ref)
        except Exception:
            return None

    def refresh_gpus(self) -> None:
        """Rediscover this node's GPUs (``mlq nodes --refresh``)."""
        from mlq.executor.gpus import discover

        with self._lock:
            self.node.gpus = discover(self.cluster.node)
            self.carver.reset()  # a node that stopped carving may carve again
            log.info("node %s: %s", self.node.name, self.node.gpus.summary())
        self.ask("refresh")

    # -- after a restart -----------------------------------------------------------------

    def recover(self) -> None:
        """Re-adopt every job whose supervisor lives; record those that ended meanwhile.

        A job caught between STARTING and its launch never ran: it goes back to
        PENDING. Nothing is started twice: a run dir whose supervisor lives is
        adopted, never relaunched.
        """
        from mlq.executor import adopt

        for job in self.store.jobs(states_in=(states.STARTING, states.RUNNING, states.STOPPING)):
            assert job.id is not None
            if not job.run_dir or not Path(job.run_dir).exists():
                self._requeue_unstarted(job)
                continue
            started = (Path(job.run_dir) / "supervisor.json").exists()
            found = adopt(job.run_dir)
            if hasattr(found, "supervisor_pid"):
                self.handles[job.id] = found
                if job.state == states.STARTING:
                    self.store.transition(
                        job.id, states.RUNNING, "re-adopted after a daemon restart"
                    )
                elif job.state == states.STOPPING and not (Path(job.run_dir) / "control").exists():
                    # STOPPING was recorded, but the daemon died before it asked: ask now
                    from mlq.executor import stop

                    stop(found)
                log.info("re-adopted job %s (supervisor %s)", job.id, found.supervisor_pid)
            elif not started and job.state == states.STARTING:
                self._requeue_unstarted(job)
            else:
                log.info("job %s ended while the daemon was down", job.id)
                self.finish(job, found)

    def _requeue_unstarted(self, job: Job) -> None:
        self.carver.release(job)  # slices carved for a start that never ran
        if job.run_dir:
            from mlq.executor.runner import discard

            # a launch cut short may have made cgroups before it was recorded anywhere
            left = discard(job.run_dir)
            if left:
                log.info("job %s: removed what its cut-short launch left: %s", job.id, left)
        self.store.transition(
            job.id or 0,
            states.PENDING,
            "Requeued: the daemon stopped before the job started",
            node=None,
            devices=None,
            run_dir=None,
            started_at=None,
        )


def reap_orphans() -> None:
    """Reap every exited child, including orphans adopted as a subreaper. Exit
    statuses are not needed here: supervisors write theirs to status.json."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return


def _groups_of(user: str, uid: int, gid: int) -> list[int]:
    """The user's supplementary groups as the node knows them now (as Slurm's
    initgroups at launch); a user the node does not know keeps only the primary group."""
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return [gid]
    return os.getgrouplist(name, gid)


def _how_it_ended(status: Any) -> str:
    if status.signal:
        return f"signal {status.signal}"
    return f"exit code {status.exit_code}"
