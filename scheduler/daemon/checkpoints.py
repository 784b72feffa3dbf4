"""The checkpoint volumes of every node: listed, swept after their retention, pruned.

The policy is ``scheduler/checkpoints.py`` (pure); this is its shell: it lists each
node's volumes (this machine's from its state dir, ``rundir.LocalVolumes``; an
agent's node's by asking its agent, ``remote.RemoteVolumes``), reads their jobs from
the store, and removes what the policy says, on the node that holds them. The loop
calls ``tick`` after each pass; at most once every ``interval_s`` it starts a sweep
in a thread of its own, so a large volume's removal or a slow node never holds up
scheduling. A node that does not answer is skipped until the next sweep. An admin's
``mlq checkpoints list|prune`` come through the API.
"""

from __future__ import annotations

import logging
import threading
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from mlq.executor.errors import ExecutorError
from mlq.scheduler import checkpoints as policy
from mlq.scheduler.clock import Clock
from mlq.scheduler.store import Store

log = logging.getLogger("mlq.checkpoints")
SWEEP_INTERVAL_S = 60.0
CHUNK = 500  # job IDs read from the store at a time


@dataclass(frozen=True)
class Listed:
    node: str
    entry: policy.Entry
    bytes: int | None  # None when not asked for (sizes walk every file)


# (node name, its volumes: ``list(sizes)`` and ``remove(key)``) of every node there is
Nodes = Callable[[], list[tuple[str, Any]]]


class Checkpoints:
    def __init__(
        self,
        store: Store,
        nodes: Nodes,
        clock: Clock,
        retention_s: float | None = policy.DEFAULT_RETENTION_S,
        interval_s: float = SWEEP_INTERVAL_S,
    ) -> None:
        self.store = store
        self.nodes = nodes
        self.clock = clock
        self.retention_s = retention_s
        self.interval_s = interval_s
        self._lock = threading.Lock()  # one removal at a time: a sweep or a prune
        self._next = 0.0  # monotonic time of the next sweep
        self._thread: threading.Thread | None = None

    def _found(
        self, sizes: bool
    ) -> list[tuple[str, Any, dict[str, int | None], list[policy.Volume]]]:
        """Each node that answered: its name, its volumes' source, sizes by key, volumes."""
        out = []
        for name, volumes in self.nodes():
            try:
                found = volumes.list(sizes=sizes)
            except (ExecutorError, OSError) as exc:
                log.warning("checkpoint volumes of node %s: %s", name, exc)
                continue
            out.append(
                (name, volumes, {v.key: v.bytes for v in found},
                 [policy.Volume(v.key, v.modified) for v in found])
            )  # fmt: skip
        return out

    def _judged(self, sizes: bool = False) -> list[tuple[str, Any, policy.Entry, int | None]]:
        """Every volume on every node that answered, with its fate, as of now."""
        found = self._found(sizes)
        ids = sorted(
            {j for *_, vols in found for v in vols if (j := policy.job_id_of(v.key)) is not None}
        )
        owners = {}
        for at in range(0, len(ids), CHUNK):  # a bounded IN (...) however many volumes
            for r in self.store.jobs(ids=ids[at : at + CHUNK], with_spec=False):
                if r.id is not None:
                    owners[r.id] = policy.Owner(r.id, r.user, r.team, r.state, r.ended_at)
        now = self.clock.time()
        return [
            (name, volumes, e, size_of.get(e.volume.key))
            for name, volumes, size_of, vols in found
            for e in policy.judge(vols, owners, self.retention_s, now)
        ]

    def entries(self) -> list[policy.Entry]:
        """Every volume with its fate, as of now (every node's)."""
        return [e for _, _, e, _ in self._judged()]

    def listing(self, sizes: bool = True) -> list[Listed]:
        return [Listed(name, e, size) for name, _, e, size in self._judged(sizes)]

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
            judged = self._judged()
            due = {id(e) for e in policy.due(e for _, _, e, _ in judged)}
            return self._remove([j for j in judged if id(j[2]) in due], "retention")

    def prune(self, older_than_s: float | None, job_ids: list[int], by: str) -> list[Listed]:
        """An admin's prune (``policy.choose``, over every node's volumes); raises
        ``policy.PruneRefused``."""
        with self._lock:
            judged = self._judged()
            chosen = policy.choose(
                [e for _, _, e, _ in judged], self.clock.time(), older_than_s, job_ids
            )
            picked = {id(e) for e in chosen}
            return self._remove([j for j in judged if id(j[2]) in picked], f"pruned by {by}")

    def _remove(
        self, judged: list[tuple[str, Any, policy.Entry, int | None]], why: str
    ) -> list[Listed]:
        removed = []
        for name, volumes, e, _ in judged:
            try:
                size = volumes.remove(e.volume.key)
            except (ExecutorError, OSError) as exc:
                log.warning("remove checkpoint volume %s on %s: %s", e.volume.key, name, exc)
                continue
            log.info(
                "removed checkpoint volume %s on %s (%d bytes; %s)", e.volume.key, name, size, why
            )
            removed.append(Listed(name, e, size))
        return removed
