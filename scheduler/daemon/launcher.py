"""Carrying out a start or a stop: what the loop asks the executor to do, and records.

A start is recorded STARTING (only from PENDING: a job cancelled since the snapshot
is never started) before the executor is asked, so a daemon that dies mid-launch
finds the run; RUNNING follows once the command runs. Grants are checked again
at the start (one may have been taken back since the submit). A stop is recorded
STOPPING with its cause before the signal goes out.
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from mlq.executor.asuser import supplementary_groups
from mlq.executor.gpus import wiring
from mlq.executor.interface import Executor
from mlq.executor.rundir import CHECKPOINT_MARK
from mlq.scheduler import grants, states
from mlq.scheduler.clock import Clock
from mlq.scheduler.cluster import DEFAULT_LOG_LIMIT
from mlq.scheduler.daemon.logs import run_id
from mlq.scheduler.daemon.outcomes import StopCause, could_not_start
from mlq.scheduler.daemon.specs import SpecCache
from mlq.scheduler.errors import Conflict, NotFound
from mlq.scheduler.launch import build_launch_request
from mlq.scheduler.snapshot import Start
from mlq.scheduler.store import Store

log = logging.getLogger("mlq.loop")


class Launcher:
    def __init__(
        self,
        store: Store,
        executor: Executor,
        clock: Clock,
        specs: SpecCache,
        node: Any,
        carver: Any,
        state_dir: str,
        forbidden: tuple[str, ...] = grants.FORBIDDEN_PATHS,
    ) -> None:
        self.store = store
        self.executor = executor
        self.clock = clock
        self.specs = specs
        self.node = node  # NodeView: the node's GPUs to wire from
        self.carver = carver
        self.state_dir = state_dir
        self.forbidden = forbidden

    def start(self, job: Any, start: Start) -> None:
        spec = self.specs.of(job)
        carved = self.carver.carve_for(job, start)  # the slices that do not exist yet
        if carved is None:  # the driver refused: the job waits, with the reason
            return
        devices: list[tuple[str, str]] = []
        visible = None
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
        run = run_id(job)
        if self.executor.has_run(run):  # left by a start the daemon never finished
            self.executor.discard(run)
        all_grants = self.store.grants()
        beyond = grants.check(
            spec, job.team, job.priority_class, all_grants, self.forbidden, is_root=job.uid == 0
        )
        if beyond:
            self.failed(job, "; ".join(beyond))
            return
        allowed = grants.allowed_for(all_grants, job.team, job.priority_class)
        request = build_launch_request(
            spec,
            job_id=job.id,
            restart_count=job.restart_count,
            run_id=run,
            uid=job.uid,
            gid=job.gid,
            state_dir=self.state_dir,
            devices=devices,
            visible_devices=visible,
            extra_env=extra,
            checkpoint_key=job.id,
            additional_gids=supplementary_groups(job.uid, job.gid),
            volume_paths=() if job.uid == 0 else allowed.volume_paths,
            denied_paths=self.forbidden,
            log_limit=self.log_limit(job.priority_class),
        )
        held = {
            "gpus": list(start.gpus),
            "mig": [{"gpu": m.gpu, "profile": m.profile, "start": m.start} for m in start.mig],
            **({"carved": carved} if carved else {}),
        }
        try:
            self.store.transition(
                job.id,
                states.STARTING,
                f"on {start.node}",
                expect=(states.PENDING,),
                node=start.node,
                devices=json.dumps(held),
                run_dir=self.executor.locate(run),
                started_at=self.clock.time(),
            )
        except Conflict:
            log.info("job %s left PENDING before its start: not started", job.id)
            return
        try:
            started = self.executor.start(request)
        except Exception as exc:  # BadRequest / LaunchError: the executor undid its steps
            log.warning("job %s failed to start: %s", job.id, exc)
            self.failed(job, str(exc))
            return
        self.store.transition(
            job.id,
            states.RUNNING,
            f"on {start.node}",
            expect=(states.STARTING,),
            cgroup=started.cgroup,
        )

    def failed(self, job: Any, why: str) -> None:
        """A start that failed: the job ends FAILED with the reason (whatever state the
        failed attempt left it in)."""
        with contextlib.suppress(Conflict, NotFound):
            self.store.transition(
                job.id,
                states.FAILED,
                could_not_start(why),
                expect=(states.PENDING, states.STARTING),
                ended_at=self.clock.time(),
            )

    def log_limit(self, klass: str) -> int:
        c = next((c for c in self.store.classes() if c.name == klass), None)
        return c.log_limit if c is not None else DEFAULT_LOG_LIMIT

    def stop(
        self,
        job: Any,
        cause: StopCause,
        reason: str,
        stop_for: int | None = None,
        now: bool = False,
    ) -> None:
        """Record STOPPING with its cause, then ask the executor to stop the run."""
        self.store.transition(
            job.id,
            states.STOPPING,
            reason,
            expect=(states.RUNNING, states.STARTING),
            stop_cause=cause.value,
            stop_for=stop_for,
        )
        if not job.run_dir:
            return
        try:
            self.executor.stop(run_id(job), now=now)
        except Exception as exc:  # already ended: the next pass collects it
            log.info("stop job %s: %s", job.id, exc)
