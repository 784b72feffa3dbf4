"""The checkpoint volumes' routes: ``GET /v1/checkpoints`` and
``POST /v1/checkpoints/prune``, mlq admins only (``mlq checkpoints list|prune``).

Their models live here with them, not in ``schemas.py``: two routes of one noun,
added to the app by ``add_routes`` (app.py). The volumes are this machine's node's
(``checkpoints.Checkpoints``).
"""

# no ``from __future__ import annotations``: FastAPI reads the routes' annotations,
# and ``who_dep`` is local to ``add_routes``
from collections.abc import Callable, Coroutine
from typing import Annotated, Any

from fastapi import Depends, FastAPI
from mlq.scheduler.checkpoints import PruneRefused, job_id_of
from mlq.scheduler.daemon.auth import Caller, require_admin
from mlq.scheduler.daemon.checkpoints import Listed
from mlq.scheduler.daemon.schemas import Checked, JobId, iso
from mlq.scheduler.errors import Conflict
from pydantic import BaseModel, Field


class CheckpointOut(BaseModel):
    node: str = Field(description="The node that holds it")
    key: str = Field(description="The volume's directory under <state>/checkpoints")
    job_id: int | None = Field(description="Its job; None for a name that is not a job ID")
    user: str | None = None
    team: str | None = None
    state: str | None = Field(None, description="Its job's state; None: no such job")
    ended_at: str | None = None
    modified_at: str | None = Field(None, description="The volume directory's mtime")
    bytes: int | None = Field(None, description="Disk space it takes, as du counts it")
    fate: str = Field(
        description="active (kept: the job can still run), unowned (kept until pruned), "
        "retained (kept until removes_at), due (the next sweep removes it)"
    )
    removes_at: str | None = Field(None, description="When the sweep removes it; None: not")


class CheckpointList(BaseModel):
    retention_s: float | None = Field(description="checkpoint_retention; None: kept for ever")
    checkpoints: list[CheckpointOut]


class PruneRequest(Checked):
    older_than_s: float | None = Field(
        None, ge=0, description="Jobs that ended longer ago than this (unowned: not modified)"
    )
    jobs: list[JobId] = Field([], max_length=10_000, description="Only these jobs' volumes")


class PruneResponse(BaseModel):
    removed: list[CheckpointOut]
    bytes: int = Field(description="Disk space freed")


def out(x: Listed) -> CheckpointOut:
    e = x.entry
    o = e.owner
    return CheckpointOut(
        node=x.node,
        key=e.volume.key,
        job_id=job_id_of(e.volume.key),
        user=o.user if o else None,
        team=o.team if o else None,
        state=o.state if o else None,
        ended_at=iso(o.ended_at) if o else None,
        modified_at=iso(e.volume.modified),
        bytes=x.bytes,
        fate=e.fate.name.lower(),
        removes_at=iso(e.removes_at),
    )


def add_routes(
    app: FastAPI, daemon: Any, caller: Callable[..., Coroutine[Any, Any, Caller]]
) -> None:
    who_dep = Annotated[Caller, Depends(caller)]

    def volumes() -> Any:
        if daemon.checkpoints is None:
            raise Conflict("this daemon keeps no checkpoint volumes (it has no nodes)")
        return daemon.checkpoints

    @app.get("/v1/checkpoints", response_model=CheckpointList, tags=["checkpoints"])
    def list_checkpoints(who: who_dep, sizes: bool = True) -> CheckpointList:
        """Every node's checkpoint volumes, each with its node, its job and when it
        goes (a node that does not answer is left out). mlq admins only: the list
        names every user's jobs."""
        require_admin(who, "list the checkpoint volumes", daemon.admin_group)
        ck = volumes()
        return CheckpointList(
            retention_s=ck.retention_s, checkpoints=[out(x) for x in ck.listing(sizes)]
        )

    @app.post("/v1/checkpoints/prune", response_model=PruneResponse, tags=["checkpoints"])
    def prune(body: PruneRequest, who: who_dep) -> PruneResponse:
        """Remove checkpoint volumes now: those due, those of jobs that ended longer
        ago than ``older_than_s``, or the named jobs'; never a volume whose job can
        still run. mlq admins only."""
        require_admin(who, "prune checkpoint volumes", daemon.admin_group)
        try:
            removed = volumes().prune(body.older_than_s, body.jobs, who.user)
        except PruneRefused as exc:
            raise Conflict(str(exc)) from None
        return PruneResponse(
            removed=[out(x) for x in removed], bytes=sum(x.bytes or 0 for x in removed)
        )
