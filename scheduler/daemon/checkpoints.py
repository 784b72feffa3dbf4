"""The checkpoint volumes of this node: listed, swept after their retention, pruned.

The policy is ``scheduler/checkpoints.py`` (pure); this is its shell: it lists the
volumes under the node's state dir (``executor/rundir.py`` knows the layout), reads
their jobs from the store, and removes what the policy says. The loop calls
``tick`` after each pass; at most once every ``interval_s`` it starts a sweep in a
thread of its own, so a large volume's removal never holds up scheduling. An
admin's ``mlq checkpoints list|prune`` come through the API.

Only this machine's node: in a cluster each agent keeps its own node's volumes,
which this does not reach yet (docs/daemon.md "Checkpoint volumes").
"""

from __future__ import annotations

import logging
import threading
from dataclasses import dataclass

from mlq.executor import rundir
from mlq.scheduler import checkpoints as policy
from mlq.scheduler.clock import Clock
from mlq.scheduler.store import Store

log = logging.getLogger("mlq.checkpoints")
SWEEP_INTERVAL_S = 60.0
CHUNK = 500  # job IDs read from the store at a time


@dataclass(frozen=True)
class Listed:
    entry: policy.Entry
    bytes: int | None  # None when not asked for (sizes walk every file)


class Checkpoints:
    def __init__(
        self,
        store: Store,
        state_dir: str,
        clock: Clock,
        retention_s: float | None = policy.DEFAULT_RETENTION_S,
        interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.store = store
        self.state_dir = state_dir
        self.clock = clock
        self.retention_s = retention_s
        self.interval_s = interval_s
        self._lock = threading.Lock()  # one removal at a time: a sweep or a prune
        self._next = 0.0  # monotonic time of the next sweep
        self._thread: threading.Thread | None = None

    def entries(self) -> list[policy.Entry]:
        """Every volume on this node with its fate, as of now."""
        volumes = [
            policy.Volume(v.key, v.modified) for v in rundir.checkpoint_volumes(self.state_dir)
        ]
        ids = [j for v in volumes if (j := policy.job_id_of(v.key)) is not None]
        owners = {}
        for at in range(0, len(ids), CHUNK):  # a bounded IN (...) however many volumes
            for r in self.store.jobs(ids=ids[at : at + CHUNK], with_spec=False):
                if r.id is not None:
                    owners[r.id] = policy.Owner(r.id, r.user, r.team, r.state, r.ended_at)
        return policy.judge(volumes, owners, self.retention_s, self.clock.time())

    def listing(self, sizes: bool = True) -> list[Listed]:
        return [
            Listed(e, rundir.checkpoint_bytes(self._path(e)) if sizes else None)
            for e in self.entries()
        ]

    def tick(self) -> None:
        """From the loop, after a pass: start a sweep when one is due and none runs."""
        now = self.clock.monotonic()
        if now < self._next or (self._thread is not None and self._thread.is_alive()):
            return
        self._next = now + self.interval_s
        self._thread = threading.Thread(
            target=self._sweep_logged, name="mlq-checkpoints", daemon=True
        )
        self._thread.start()

    def _sweep_logged(self) -> None:
        try:
            self.sweep()
        except Exception:  # the next sweep tries again
            log.exception("checkpoint sweep failed")

    def sweep(self) -> list[Listed]:
        """Remove the volumes whose jobs ended more than the retention ago."""
        with self._lock:
            return self._remove(policy.due(self.entries()), "retention")

    def prune(self, older_than_s: float | None, job_ids: list[int], by: str) -> list[Listed]:
        """An admin's prune (``policy.choose``); raises ``policy.PruneRefused``."""
        with self._lock:
            chosen = policy.choose(self.entries(), self.clock.time(), older_than_s, job_ids)
            return self._remove(chosen, f"pruned by {by}")

    def _remove(self, entries: list[policy.Entry], why: str) -> list[Listed]:
        removed = []
        for e in entries:
            size = rundir.checkpoint_bytes(self._path(e))
            try:
                rundir.remove_checkpoint(self.state_dir, e.volume.key)
            except OSError as exc:
                log.warning("remove checkpoint volume %s: %s", e.volume.key, exc)
                continue
            log.info("removed checkpoint volume %s (%d bytes; %s)", e.volume.key, size, why)
            removed.append(Listed(e, size))
        return removed

    def _path(self, e: policy.Entry) -> str:
        return rundir.checkpoint_dir(self.state_dir, e.volume.key)
