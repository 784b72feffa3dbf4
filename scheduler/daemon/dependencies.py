"""Dependencies, as sbatch's ``--dependency`` types: one read of the jobs depended on
a pass, whether each dependent may start, and the jobs that never can (cancelled with
the reason).

- ``afterok``: once the job COMPLETED; never once it ended otherwise.
- ``afternotok``: once it ended other than COMPLETED; never once it COMPLETED.
- ``afterany``: once it ended, however.
- ``after``: once it started (or ended without starting, cancelled: Slurm's rule).

A PREEMPTED job that was requeued is PENDING again, so it is not ended; one that
stays PREEMPTED (not requeued) has ended other than COMPLETED.
"""

from __future__ import annotations

import contextlib
import json
from typing import Literal

from mlq.scheduler import states
from mlq.scheduler.errors import Conflict
from mlq.scheduler.models import JobRow
from mlq.scheduler.spec import dependency_pairs
from mlq.scheduler.store import Store

Verdict = Literal["wait", "ok", "never"]
# a job depended on: its state, and whether it ever started
Seen = tuple[str, bool]


def pairs_of(job: JobRow) -> list[tuple[str, int]]:
    return dependency_pairs(json.loads(job.depends_on)) if job.depends_on != "[]" else []


def dependency_states(store: Store, active: list[JobRow]) -> dict[int, Seen]:
    """The state of every job an active job depends on: one query a pass."""
    deps = {i for j in active for _, i in pairs_of(j)}
    if not deps:
        return {}
    return {
        d.id: (d.state, d.started_at is not None) for d in store.jobs(ids=deps, with_spec=False)
    }


def verdict(kind: str, seen: Seen | None) -> Verdict:
    """Whether a dependency of ``kind`` on a job seen as ``seen`` is met."""
    if seen is None:  # the row is gone: nothing will ever happen to it
        return "never"
    state, started = seen
    ended = state in states.FINAL
    if kind == "after":
        return "ok" if started or ended else "wait"
    if not ended:
        return "wait"
    if kind == "afterany":
        return "ok"
    ok = state == states.COMPLETED
    if kind == "afternotok":
        ok = not ok
    return "ok" if ok else "never"


def blocked(job: JobRow, deps: dict[int, Seen]) -> bool:
    """Whether ``job`` still waits for one of its dependencies."""
    return any(verdict(kind, deps.get(i)) != "ok" for kind, i in pairs_of(job))


def settle(store: Store, pending: list[JobRow], deps: dict[int, Seen], now: float) -> int:
    """Cancel pending jobs one of whose dependencies can no longer be met; returns how
    many were cancelled."""
    cancelled = 0
    for j in pending:
        for kind, d in pairs_of(j):
            if verdict(kind, deps.get(d)) != "never":
                continue
            st = deps[d][0] if d in deps else "gone"
            why = f"DependencyNeverSatisfied: job {d} ended {st}"
            if kind != "afterok":
                why += f" ({kind})"
            with contextlib.suppress(Conflict):  # cancelled by its user meanwhile
                store.transition(
                    j.id or 0, states.CANCELLED, why, expect=(states.PENDING,), ended_at=now
                )
                cancelled += 1
            break
    return cancelled
