"""afterok dependencies: one read of their states a pass, and the jobs that can no
longer run (a dependency that ended other than COMPLETED) cancelled with the reason."""

from __future__ import annotations

import contextlib
import json

from mlq.scheduler import states
from mlq.scheduler.errors import Conflict
from mlq.scheduler.models import JobRow
from mlq.scheduler.store import Store


def dependency_states(store: Store, active: list[JobRow]) -> dict[int, str]:
    """The state of every job an active job depends on: one query a pass."""
    deps = {d for j in active if j.depends_on != "[]" for d in json.loads(j.depends_on)}
    return {d.id: d.state for d in store.jobs(ids=deps, with_spec=False)} if deps else {}


def settle(store: Store, pending: list[JobRow], deps: dict[int, str], now: float) -> int:
    """Cancel pending jobs whose afterok dependency can no longer succeed (a requeued
    PREEMPTED one still may); returns how many were cancelled."""
    cancelled = 0
    for j in pending:
        if j.depends_on == "[]":
            continue
        for d in json.loads(j.depends_on):
            st = deps.get(d)
            if st in states.FINAL and st not in (states.COMPLETED, states.PREEMPTED):
                with contextlib.suppress(Conflict):  # cancelled by its user meanwhile
                    store.transition(
                        j.id or 0,
                        states.CANCELLED,
                        f"DependencyNeverSatisfied: job {d} ended {st}",
                        expect=(states.PENDING,),
                        ended_at=now,
                    )
                    cancelled += 1
                break
    return cancelled
