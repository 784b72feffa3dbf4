"""``mlq update ID``: change a pending job (Slurm's ``scontrol update``).

What may change: its time limit, priority class, CPUs, memory and GPUs. The changed
job is validated as a submission is (``submit.prepare``), as its owner would submit
it: its team, its class, what its grants allow, what some node could hold. Who may:
whoever may cancel the job (its owner, its team's admins, mlq admins); as in Slurm, a
user may lower a time limit but only an admin (of its team, or of mlq) may raise it,
so a job cannot be submitted short to backfill and then be made long. Only a pending
job changes (every part of a multi-node job together); the change is an event.
"""

from __future__ import annotations

import json
from typing import Any

from mlq.executor.units import parse_duration
from mlq.scheduler import states
from mlq.scheduler.daemon.auth import Caller, is_team_admin, may_see_private
from mlq.scheduler.daemon.peer import identify
from mlq.scheduler.daemon.submit import prepare
from mlq.scheduler.errors import Conflict, InvalidInput, Refused
from mlq.scheduler.store import Store

FIELDS = ("time_limit", "priority_class", "cpus", "memory", "gpus")


def update(
    store: Store,
    caller: Caller,
    job_id: int,
    changes: dict[str, Any],
    forbidden: tuple[str, ...],
    nodes: list[Any],
) -> tuple[list[int], str]:
    """Change the pending job ``job_id``; returns the rows changed and the event's
    reason. Raises NotFound, Refused, Conflict or InvalidInput (naming the field)."""
    changes = {k: v for k, v in changes.items() if k in FIELDS and v is not None}
    job = store.job(job_id)
    if not may_see_private(caller, job, store):
        raise Refused(
            f"{caller.user} may not update job {job_id}: it belongs to {job.user} "
            f'and you are not an admin of team "{job.team}"'
        )
    if job.state != states.PENDING:
        raise Conflict(f"job {job_id} is {job.state}: only a pending job can be updated")
    if not changes:
        raise Conflict(
            "nothing to change: give --time-limit, --priority-class, --cpus, --memory or --gpus"
        )
    rows = [job]
    if job.gang_id is not None:
        rows = list(store.jobs(gang=job.gang_id))
    spec = json.loads(job.spec)
    before = {
        "time_limit": spec.get("time_limit"),
        "priority_class": spec.get("priority_class"),
        **{k: spec["resources"].get(k) for k in ("cpus", "memory", "gpus")},
    }
    if "time_limit" in changes:
        try:
            new = parse_duration(changes["time_limit"])
        except ValueError as exc:
            raise InvalidInput(f'time_limit: "{changes["time_limit"]}" {exc}') from None
        old = before["time_limit"]
        if old is not None and new > old and not is_team_admin(caller, job.team, store):
            raise Refused(
                f"{caller.user} may lower job {job_id}'s time limit but not raise it "
                f'({old}s to {new}s): an admin of team "{job.team}" or an mlq admin may'
            )
        spec["time_limit"] = changes["time_limit"]
    if "priority_class" in changes:
        spec["priority_class"] = changes["priority_class"]
    for key in ("cpus", "memory", "gpus"):
        if key in changes:
            spec["resources"][key] = changes[key]
    if "memory" in changes:
        spec["resources"]["memory_high"] = None  # follows the new memory, as at submit
    # as its owner submits it: membership, grants and paths are the owner's
    owner = Caller(identify(0, job.uid, job.gid), is_admin=False)
    array_limit = spec.pop("array_limit", None)  # an array's job, checked as one job
    resolved, _ = prepare(store, owner, spec, f"job {job_id}", None, [], forbidden, nodes)
    if array_limit is not None:
        resolved = resolved.model_copy(update={"array_limit": array_limit})
    after = {
        "time_limit": resolved.time_limit,
        "priority_class": resolved.priority_class,
        "cpus": resolved.model_dump(mode="json")["resources"]["cpus"],
        "memory": resolved.resources.memory,
        "gpus": resolved.resources.gpus,
    }
    said = [f"{k} {before[k]} -> {after[k]}" for k in FIELDS if before[k] != after[k]]
    why = f"Updated by {caller.user}: " + (", ".join(said) or "no change")
    klass = resolved.priority_class or resolved.kind
    priority = next(c.value for c in store.classes() if c.name == klass)
    ids = [r.id for r in rows]
    store.update_pending(
        ids,
        resolved.model_dump_json(exclude={"array"}),
        priority_class=klass,
        priority=priority,
        reason=why,
    )
    return ids, why
