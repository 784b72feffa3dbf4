"""Typed requests and responses of the daemon's API.

These models are the API's contract and also what ``--json`` prints: the keys
listed in docs/json.md are stable. Times are RFC 3339 strings in UTC.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

from mlq.scheduler.models import Job, JobEvent
from pydantic import BaseModel, Field


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return datetime.fromtimestamp(ts, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


class JobOut(BaseModel):
    """One job as listed by ``mlq queue`` and ``mlq history``."""

    id: int
    name: str
    team: str
    user: str
    kind: str
    priority_class: str
    state: str
    reason: str
    submitted_at: str
    started_at: str | None = None
    ended_at: str | None = None
    array_id: int | None = None
    array_index: int | None = None
    depends_on: list[int] = []
    node: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    restart_count: int = 0

    @classmethod
    def of(cls, j: Job) -> JobOut:
        return cls(
            id=j.id or 0,
            name=j.name,
            team=j.team,
            user=j.user,
            kind=j.kind,
            priority_class=j.priority_class,
            state=j.state,
            reason=j.reason,
            submitted_at=iso(j.submitted_at) or "",
            started_at=iso(j.started_at),
            ended_at=iso(j.ended_at),
            array_id=j.array_id,
            array_index=j.array_index,
            depends_on=json.loads(j.depends_on),
            node=j.node,
            exit_code=j.exit_code,
            signal=j.signal,
            restart_count=j.restart_count,
        )


class EventOut(BaseModel):
    at: str
    state: str
    reason: str

    @classmethod
    def of(cls, e: JobEvent) -> EventOut:
        return cls(at=iso(e.at) or "", state=e.state, reason=e.reason)


class JobDetail(JobOut):
    """``mlq show``: the job, what it runs under, and its event timeline."""

    uid: int
    gid: int
    priority: int
    devices: Any = None
    cgroup: str | None = None
    run_dir: str | None = None
    checkpoint_at: str | None = None
    spec: dict[str, Any]
    events: list[EventOut]

    redacted: bool = Field(
        False, description="env values and command arguments are hidden from this caller"
    )

    @classmethod
    def detail(cls, j: Job, events: list[JobEvent], redact: bool = False) -> JobDetail:
        base = JobOut.of(j).model_dump()
        spec = json.loads(j.spec)
        if redact:
            spec["env"] = {k: HIDDEN for k in spec.get("env") or {}}
            cmd = spec.get("command") or []
            spec["command"] = cmd[:1] + ([HIDDEN] if len(cmd) > 1 else [])
        return cls(
            **base,
            uid=j.uid,
            gid=j.gid,
            priority=j.priority,
            devices=json.loads(j.devices) if j.devices else None,
            cgroup=j.cgroup,
            run_dir=j.run_dir,
            checkpoint_at=iso(j.checkpoint_at),
            spec=spec,
            events=[EventOut.of(e) for e in events],
            redacted=redact,
        )


HIDDEN = "<hidden>"


class JobList(BaseModel):
    jobs: list[JobOut]


class SubmitRequest(BaseModel):
    spec: Any = Field(description="The job file's contents, as loaded from YAML")
    source: str | None = Field(None, description="The file name, for error messages")
    array: str | None = Field(None, description="Array indices, e.g. 0-99 (overrides the file)")
    after: list[int] = Field(default_factory=list, description="More afterok dependencies")
    dry_run: bool = False


class SubmitResponse(BaseModel):
    jobs: list[JobOut]
    array_id: int | None = None
    dry_run: bool = False
    resolved: dict[str, Any] | None = Field(None, description="The job with defaults filled")
    limits: dict[str, Any] | None = Field(None, description="The limits in cgroup v2 terms")


class CancelRequest(BaseModel):
    ids: list[int]
    now: bool = False


class CancelResult(BaseModel):
    id: int
    state: str
    message: str


class CancelResponse(BaseModel):
    results: list[CancelResult]


class TeamOut(BaseModel):
    name: str
    members: list[str]
    admins: list[str]
    guarantee: dict[str, float]
    limit: dict[str, float]


class TeamList(BaseModel):
    teams: list[TeamOut]


class TeamCreate(BaseModel):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    members: list[str] = []
    admins: list[str] = []


class MemberChange(BaseModel):
    name: str = Field(min_length=1, description="A Unix user, or @group")
    role: str = Field("member", pattern="^(member|admin)$")


class QuotaSet(BaseModel):
    guarantee: dict[str, Any] = {}
    limit: dict[str, Any] = {}
    clear: list[str] = []


class ClassOut(BaseModel):
    name: str
    value: int
    preempts: list[str]
    preemptible: bool
    min_run_time: int
    default_cpus: str
    default_memory: str
    default_time_limit: str | None


class ClassList(BaseModel):
    classes: list[ClassOut]


class ClassSet(BaseModel):
    value: int | None = None
    preempts: list[str] | None = None
    preemptible: bool | None = None
    min_run_time: Any = None
    default_cpus: Any = None
    default_memory: Any = None
    default_time_limit: Any = None


class WhoAmI(BaseModel):
    user: str
    uid: int
    gid: int
    groups: list[str]
    admin: bool
    teams: list[str]
    admin_of: list[str]


class ErrorOut(BaseModel):
    error: str
    message: str
    problems: list[str] = []


class LogChunk(BaseModel):
    """A piece of one run's output; ``next_offset`` continues from where it ends."""

    job_id: int
    run: int
    runs: list[int] = Field(description="Every run of the job that has a log, oldest first")
    stream: str
    offset: int
    next_offset: int
    data: str
    running: bool = Field(description="True while this run may still write")
    state: str


class TeamUsage(BaseModel):
    team: str
    used: dict[str, float]
    guarantee: dict[str, float]
    limit: dict[str, float]


class NodeOut(BaseModel):
    name: str
    cpus: str
    memory: str
    cpus_used: str
    memory_used: str
    gpu_source: str
    gpu_problem: str | None = None
    gpus: list[dict[str, Any]]
    teams: list[TeamUsage]


class NodeList(BaseModel):
    nodes: list[NodeOut]


class RunningOut(BaseModel):
    id: int
    name: str
    team: str
    user: str
    state: str
    memory_current: int | None = None
    memory_peak: int | None = None
    memory_max: int
    cpus: str
    cpu_usage_s: float | None = None
    cpu_throttled_s: float | None = None


class TopOut(BaseModel):
    nodes: list[NodeOut]
    running: list[RunningOut]
    pending: list[JobOut]
    passes: int
    last_pass_ms: float


class StatusOut(BaseModel):
    passes: int
    asks: int
    last_pass_ms: float
    uptime_s: float
    running: int
    pending: int


class GrantOut(BaseModel):
    """What an mlq admin granted to one subject (``*``, ``team:<name>``, ``class:<name>``)."""

    subject: str
    capabilities: list[str]
    volume_paths: list[str]
    devices: list[str]


class GrantList(BaseModel):
    grants: list[GrantOut]


class GrantSet(BaseModel):
    subject: str
    capabilities: list[str] | None = Field(None, description="Replaces the granted capabilities")
    volume_paths: list[str] | None = Field(None, description="Replaces the granted volume paths")
    devices: list[str] | None = Field(None, description="Replaces the granted devices")


class GrantDelete(BaseModel):
    subject: str
