"""``mlq hold`` and ``mlq release``: keep pending jobs from starting, and let them go.

Who may: whoever may cancel the job (its owner, its team's admins, mlq admins). As in
Slurm, a hold by someone other than the owner (an admin: nobody else may) is an admin
hold, which the owner cannot release: ``Held by admin carol``; the owner's own hold
is ``Held by bob``. Only a pending job can be held; a multi-node job is held and
released as a whole (every part). Each change is an event of the job's.
"""

from __future__ import annotations

from typing import Any

from mlq.scheduler import states
from mlq.scheduler.daemon import schemas as S
from mlq.scheduler.daemon.auth import Caller, is_team_admin, may_see_private
from mlq.scheduler.daemon.view import hold_note
from mlq.scheduler.store import Store


def change(store: Store, caller: Caller, ids: list[int], hold: bool) -> list[S.ActionResult]:
    """Hold (or release) each of ``ids`` the caller may; a result for every one."""
    verb = "hold" if hold else "release"
    ids = list(dict.fromkeys(ids))
    jobs = {j.id: j for j in store.jobs(ids=ids, with_spec=False)}
    results: dict[int, S.ActionResult] = {}
    todo: dict[int, list[int]] = {}  # job -> its rows (every part of a multi-node job)
    for job_id in ids:
        j: Any = jobs.get(job_id)

        def result(
            ok: bool, message: str, refused: bool = False, j: Any = j, job_id: int = job_id
        ) -> None:
            state = j.state if j is not None else ""
            results[job_id] = S.ActionResult(
                id=job_id, state=state, ok=ok, refused=refused, message=message
            )

        if j is None:
            result(False, "no such job; see mlq queue or mlq history")
        elif not may_see_private(caller, j, store):
            result(
                False,
                f"{caller.user} may not {verb} job {job_id}: it belongs to {j.user} "
                f'and you are not an admin of team "{j.team}"',
                refused=True,
            )
        elif j.state != states.PENDING:
            result(
                False,
                f"job {job_id} is {j.state}: only a pending job can be "
                + ("held" if hold else "released"),
            )
        elif hold and j.held:
            result(True, f"already held {hold_note(j.user, j.held_by)}".rstrip())
        elif not hold and not j.held:
            result(True, "not held")
        elif (
            not hold and j.held_by not in ("", j.user) and not is_team_admin(caller, j.team, store)
        ):
            result(
                False,
                f"job {job_id} was held by admin {j.held_by}: only an admin of team "
                f'"{j.team}" or an mlq admin may release it',
                refused=True,
            )
        else:
            rows = [job_id]
            if j.gang_id is not None:
                rows = [p.id for p in store.jobs(gang=j.gang_id, with_spec=False)]
            todo[job_id] = rows
    for job_id, rows in todo.items():
        j = jobs[job_id]
        if hold:
            why = f"Held {hold_note(j.user, caller.user)}"
            changed = store.set_held(rows, caller.user, why)
        else:
            why = f"Released by {caller.user}"
            changed = store.set_held(rows, None, why)
        if job_id in changed:
            results[job_id] = S.ActionResult(id=job_id, state=states.PENDING, ok=True, message=why)
        else:  # it started or ended since it was read
            state = store.job(job_id).state
            results[job_id] = S.ActionResult(
                id=job_id, state=state, ok=False, message=f"job {job_id} is {state} now"
            )
    return [results[i] for i in ids]
