"""Carrying out a start or a stop: what the loop asks the executor to do, and records.

A start is recorded STARTING (only from PENDING: a job cancelled since the snapshot
is never started) before the executor is asked, so a daemon that dies mid-launch
finds the run; RUNNING follows once the command runs. Grants are checked again
at the start (one may have been taken back since the submit). A stop is recorded
STOPPING with its cause before the signal goes out. Each start and stop goes to the
node it names (``loop.nodes``); a remote node's start is recorded with its launch
request and a new epoch (the fencing token) in the same transaction as STARTING,
and becomes RUNNING when the node's agent reports it runs (``fleet.py``).
"""

from __future__ import annotations

import contextlib
import json
import logging
from typing import Any

from mlq.executor.asuser import home_of, supplementary_groups
from mlq.executor.gpus import wiring
from mlq.executor.rundir import CHECKPOINT_MARK
from mlq.scheduler import grants, states
from mlq.scheduler.clock import Clock
from mlq.scheduler.cluster import DEFAULT_LOG_LIMIT, BridgeConfig, PriorityClass
from mlq.scheduler.daemon.logs import run_id
from mlq.scheduler.daemon.nodeset import NodeSet
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
        clock: Clock,
        specs: SpecCache,
        nodes: NodeSet,
        bridge: BridgeConfig | None = None,
    ) -> None:
        """``bridge``: the node config's bridge for ``network: bridge`` jobs (a node's
        agent puts its own config's in the requests it runs)."""
        self.store = store
        self.clock = clock
        self.specs = specs
        self.nodes = nodes
        self.bridge = bridge or BridgeConfig()

    def start(self, job: Any, start: Start, env: dict[str, str] | None = None) -> None:
        """``env``: more of the job's environment (a multi-node job's part: gangs.py)."""
        spec = self.specs.of(job)
        slot = self.nodes.get(start.node)
        if slot is None:
            log.info("job %s: node %s is gone; not started", job.id, start.node)
            return
        executor = slot.executor
        carved = slot.carver.carve_for(job, start)  # the slices that do not exist yet
        if carved is None:  # the driver refused: the job waits, with the reason
            return
        devices: list[tuple[str, str]] = []
        visible = None
        if start.gpus or start.mig:
            w = wiring(slot.view.gpus, gpus=list(start.gpus), mig=list(start.mig))
            devices = [(d.host_path, d.path) for d in w.devices]
            visible = w.visible
        extra = {}
        if job.array_index is not None:
            extra["MLQ_ARRAY_INDEX"] = str(job.array_index)
            extra["MLQ_ARRAY_ID"] = str(job.array_id)
        extra.update(env or {})
        if spec.checkpoint is not None:
            extra["MLQ_CHECKPOINT_MARK"] = f"{spec.checkpoint.target.rstrip('/')}/{CHECKPOINT_MARK}"
        run = run_id(job)
        if executor.has_run(run):  # left by a start the daemon never finished
            executor.discard(run)
        all_grants = self.store.grants()
        beyond = grants.check(
            spec, job.team, job.priority_class, all_grants, slot.forbidden, is_root=job.uid == 0
        )
        if beyond:
            self.failed(job, "; ".join(beyond))
            return
        allowed = grants.allowed_for(all_grants, job.team, job.priority_class)
        klass = self.klass(job.priority_class)
        request = build_launch_request(
            spec,
            job_id=job.id,
            restart_count=job.restart_count,
            run_id=run,
            uid=job.uid,
            gid=job.gid,
            state_dir=slot.state_dir,
            devices=devices,
            visible_devices=visible,
            extra_env=extra,
            checkpoint_key=job.id,
            additional_gids=supplementary_groups(job.uid, job.gid),
            volume_paths=() if job.uid == 0 else allowed.volume_paths,
            denied_paths=slot.forbidden,
            log_limit=klass.log_limit if klass is not None else DEFAULT_LOG_LIMIT,
            bridge=self.bridge.name,
            bridge_subnet=self.bridge.subnet,
            nat=klass.nat if klass is not None else True,
            user_name=job.user,
            home=home_of(job.uid),
        )
        held = {
            "gpus": list(start.gpus),
            "mig": [{"gpu": m.gpu, "profile": m.profile, "start": m.start} for m in start.mig],
            **({"carved": carved} if carved else {}),
        }
        remote = {"launch": request.to_json(), "stop_now": False} if slot.remote else {}
        try:
            self.store.transition(
                job.id,
                states.STARTING,
                f"on {start.node}",
                expect=(states.PENDING,),
                node=start.node,
                devices=json.dumps(held),
                run_dir=executor.locate(run),
                started_at=self.clock.time(),
                epoch=self.store.next_epoch(),
                **remote,
            )
        except Conflict:
            log.info("job %s left PENDING before its start: not started", job.id)
            return
        try:
            started = executor.start(request)
        except Exception as exc:  # BadRequest / LaunchError: the executor undid its steps
            log.warning("job %s failed to start: %s", job.id, exc)
            self.failed(job, str(exc))
            return
        if not started.confirmed:
            return  # its agent reports it RUNNING (or how it failed)
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

    def klass(self, name: str) -> PriorityClass | None:
        return next((c for c in self.store.classes() if c.name == name), None)

    def stop(
        self,
        job: Any,
        cause: StopCause | str,
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
            stop_cause=str(cause),
            stop_for=stop_for,
            stop_now=now,  # a remote node reads the stop from the row
        )
        slot = self.nodes.of(job)
        if not job.run_dir or slot is None:
            return
        try:
            slot.executor.stop(run_id(job), now=now)
        except Exception as exc:  # already ended: the next pass collects it
            log.info("stop job %s: %s", job.id, exc)
