"""MIG slices the daemon carves for the jobs it starts, and destroys when they end.

The policy may place a MIG job on a slice that does not exist yet: free capacity at a
valid start of a GPU in MIG mode (``scheduler/placement.py``). The loop carries that
out here, around its own steps:

1. before a start is wired, :meth:`Carver.carve_for` creates each of its slices that
   the node does not have yet (``gpus.carve``: a GPU instance at that placement and a
   compute instance spanning it) and returns what it made, which the loop records in
   the job's ``devices`` JSON as ``"carved": [{"gpu", "start", "profile", "uuid"}]``;
2. if the driver refuses a create, the slices this start already carved are destroyed
   again, the job stays PENDING with ``MigCarveFailed: GPU 2 2g.20gb@4: <the driver's
   error>``, and the node stops carving (``Node.can_carve`` false in every snapshot from
   then on, logged) until ``mlq nodes --refresh`` or a restart; the pass goes on with
   every other start;
3. after the start, :meth:`Carver.settle` destroys what it carved if the job did not
   come to run (a launch that failed, a job cancelled meanwhile);
4. when a run ends (``Loop.finish``, also for a job that ended while the daemon was
   down) or a start is requeued after a restart, :meth:`Carver.release` destroys the
   slices recorded as carved for it, each only if the slice there is still that MIG
   device (its UUID): a slice mlq did not carve is never destroyed.

After every carve or destroy the loop's ``NodeView.gpus`` is the node as the driver
reports it right after, so the next snapshot and wiring see what is there.

The carver runs inside a pass (under the loop's lock), like the rest of the pass.
"""

from __future__ import annotations

import dataclasses
import json
import logging
from typing import Any

from mlq.executor import gpus
from mlq.executor.gpus import NVML_NOT_FOUND, MigChangeFailed
from mlq.scheduler import states
from mlq.scheduler.snapshot import MigSlot, Reason, ReasonCode, Start

log = logging.getLogger("mlq.carving")


class Carver:
    """Carves and destroys the MIG slices of the loop's node (see the module doc)."""

    def __init__(self, node: Any, store: Any, config: Any, executor: Any) -> None:
        self.node = node  # the loop's NodeView (its gpus and can_carve are updated here)
        self.store = store
        self.config = config  # the node's config: mig_carve
        self.executor = executor  # carves and destroys on the node
        self.refusal: str | None = None  # why the node stopped carving, while it has
        self.waiting: dict[int, str] = {}  # job id -> its MigCarveFailed reason
        self._attempt: tuple[int, list[dict[str, Any]]] | None = None  # the start's carves
        node.can_carve = config.mig_carve

    # -- a start ----------------------------------------------------------------------

    def carve_for(self, job: Any, start: Start) -> list[dict[str, Any]] | None:
        """Create the start's slices that the node does not have; what was carved, or
        None when the driver refused (the job then waits, with the reason)."""
        self._attempt = None
        node = self.node
        missing = [m for m in start.mig if not _exists(node.gpus, m)]
        if not missing:
            return []
        carved: list[dict[str, Any]] = []
        self._attempt = (job.id, carved)
        for m in missing:
            if not node.can_carve:
                why = self.refusal or "this node does not carve MIG slices (node.mig_carve: false)"
                return self._wait(job, m, f"not tried: {why}")
            try:
                node.gpus = self.executor.carve(m.gpu, m.profile, m.start)
            except MigChangeFailed as exc:
                self._rediscover()
                self.refusal = f"the driver refused GPU {m.gpu} {m.profile}@{m.start}: {exc.error}"
                node.can_carve = False
                log.warning(
                    "node %s stops carving MIG slices: %s (job %s waits); `mlq nodes --refresh` "
                    "or a restart lets it carve again",
                    node.name,
                    exc,
                    job.id,
                )
                return self._wait(job, m, exc.error)
            new = node.gpus.gpu(m.gpu).slice_at(m.start)
            carved.append({"gpu": m.gpu, "start": m.start, "profile": m.profile, "uuid": new.uuid})
            log.info(
                "carved MIG slice %s@%s on GPU %s for job %s: %s",
                m.profile,
                m.start,
                m.gpu,
                job.id,
                new.uuid,
            )
        return carved

    def settle(self, job: Any) -> None:
        """After a start: the slices it carved belong to the job if it runs now, and are
        destroyed if it does not (its launch failed, or it was cancelled meanwhile)."""
        attempt, self._attempt = self._attempt, None
        if attempt is None or attempt[0] != job.id or not attempt[1]:
            return
        if self.store.job(job.id).state != states.RUNNING:
            self._destroy(attempt[1], f"job {job.id} did not start")

    def _wait(self, job: Any, m: MigSlot, error: str) -> None:
        """The job waits: what this start carved is destroyed, and it says why."""
        _, carved = self._attempt or (None, [])
        self._attempt = None
        self._destroy(carved, f"job {job.id} could not have all its slices")
        reason = Reason(ReasonCode.MIG_CARVE_FAILED, m.gpu, m.profile, m.start, error)
        self.waiting[job.id] = reason
        self.store.set_reasons({job.id: reason})  # only while it is still PENDING
        return None

    # -- a run that ended -------------------------------------------------------------

    def release(self, job: Any) -> None:
        """Destroy the slices recorded as carved for the job (its run ended, or its start
        is undone after a restart)."""
        carved = json.loads(job.devices).get("carved") if job.devices else None
        if carved:
            self._destroy(carved, f"job {job.id} ended")

    def _destroy(self, carved: list[dict[str, Any]], why: str) -> None:
        """Destroy each slice; one that cannot be is logged and stays (a free slice the
        policy may give again), and never stops what the caller records next."""
        node = self.node
        for c in carved:
            what = f"MIG slice {c['profile']}@{c['start']} on GPU {c['gpu']} ({c.get('uuid')})"
            try:
                node.gpus = self.executor.destroy(c["gpu"], c["start"], uuid=c.get("uuid"))
            except MigChangeFailed as exc:
                if exc.code == NVML_NOT_FOUND:
                    log.info("%s: %s is gone already", why, what)
                else:  # in use, say
                    log.warning("%s: %s stays: %s", why, what, exc)
                self._rediscover()
                continue
            except Exception:
                log.exception("%s: destroying %s failed; it stays", why, what)
                continue
            log.info("%s: destroyed %s", why, what)

    # -- the node ---------------------------------------------------------------------

    def reset(self) -> None:
        """Carve again as the node config says (``mlq nodes --refresh``)."""
        self.node.can_carve = self.config.mig_carve
        self.refusal = None
        self.waiting.clear()

    def explain(self, decisions: Any) -> Any:
        """Keep the reason of a job the driver refused while the node does not carve: the
        policy would only say that no free slice is left."""
        if not self.waiting:
            return decisions
        reasons = dict(decisions.reasons)
        for job_id, why in list(self.waiting.items()):
            got = reasons.get(job_id)
            if got is None:  # it started, or is no longer pending
                del self.waiting[job_id]
            elif got.startswith("Resources"):
                reasons[job_id] = why
        return dataclasses.replace(decisions, reasons=reasons)

    def _rediscover(self) -> None:
        self.node.gpus = self.executor.inventory(refresh=True)


def _exists(node: gpus.NodeGpus, m: MigSlot) -> bool:
    g = node.gpu(m.gpu)
    s = g.slice_at(m.start) if g else None
    return s is not None and s.profile == m.profile
