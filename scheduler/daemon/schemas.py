"""Typed requests and responses of the daemon's API.

These models are the API's contract and also what ``--json`` prints: the keys
listed in docs/json.md are stable. Times are RFC 3339 strings in UTC.
"""

from __future__ import annotations

import json
from datetime import UTC, datetime
from functools import lru_cache
from typing import Annotated, Any

from mlq.scheduler.models import Job, JobEvent
from mlq.scheduler.textcheck import problems as text_problems
from mlq.scheduler.webhooks import shown
from pydantic import BaseModel, Field, model_validator

MAX_ID = 2**63 - 1
JobId = Annotated[int, Field(ge=1, le=MAX_ID)]
Name = Annotated[str, Field(min_length=1, max_length=256)]


class Checked(BaseModel):
    """A request body: every string checked (no NUL, no surrogate, no control
    character outside command lines) before any field is looked at."""

    @model_validator(mode="before")
    @classmethod
    def _text(cls, data: Any) -> Any:
        bad = text_problems(data)
        if bad:
            raise ValueError("; ".join(bad))
        return data


def iso(ts: float | None) -> str | None:
    if ts is None:
        return None
    return _iso_second(int(ts))


@lru_cache(maxsize=65536)
def _iso_second(sec: int) -> str:
    # listings format thousands of times that fall in few distinct seconds
    return datetime.fromtimestamp(sec, UTC).isoformat(timespec="seconds").replace("+00:00", "Z")


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
    depends_on: list[int | str] = []  # a job ID (afterok) or "afterany:12" (spec.py)
    node: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    restart_count: int = 0
    gang_id: int | None = None
    gang_rank: int | None = None

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
            gang_id=j.gang_id,
            gang_rank=j.gang_rank,
        )


def job_dict(j: Job) -> dict[str, Any]:
    """``JobOut``'s JSON shape straight from a row: listings of thousands of jobs
    build these instead of a model per row (the keys are JobOut's, in its order;
    tests/test_daemon_api.py checks that the two agree)."""
    return {
        "id": j.id or 0,
        "name": j.name,
        "team": j.team,
        "user": j.user,
        "kind": j.kind,
        "priority_class": j.priority_class,
        "state": j.state,
        "reason": j.reason,
        "submitted_at": iso(j.submitted_at) or "",
        "started_at": iso(j.started_at),
        "ended_at": iso(j.ended_at),
        "array_id": j.array_id,
        "array_index": j.array_index,
        "depends_on": json.loads(j.depends_on) if j.depends_on != "[]" else [],
        "node": j.node,
        "exit_code": j.exit_code,
        "signal": j.signal,
        "restart_count": j.restart_count,
        "gang_id": j.gang_id,
        "gang_rank": j.gang_rank,
    }


def job_list_json(jobs: list[Job]) -> bytes:
    """The ``JobList`` document, serialised once."""
    return json.dumps({"jobs": [job_dict(j) for j in jobs]}, separators=(",", ":")).encode()


# Store.LISTING's columns, which are JobOut's fields in order
LISTING_FIELDS = tuple(JobOut.model_fields)
_fragments: dict[tuple, bytes] = {}


def listing_json(rows: list[tuple]) -> bytes:
    """The ``JobList`` document from ``Store.listing`` tuples. Each row's JSON is kept,
    keyed by the row itself: a dashboard that lists 4,000 waiting jobs ten times a
    second re-serialises only the ones that changed."""
    if len(_fragments) > 200_000:
        _fragments.clear()
    out = []
    for row in rows:
        frag = _fragments.get(row)
        if frag is None:
            d = dict(zip(LISTING_FIELDS, row, strict=True))
            d["id"] = d["id"] or 0
            for k in ("submitted_at", "started_at", "ended_at"):
                d[k] = iso(d[k]) or ("" if k == "submitted_at" else None)
            d["depends_on"] = json.loads(d["depends_on"]) if d["depends_on"] != "[]" else []
            frag = _fragments[row] = json.dumps(d, separators=(",", ":")).encode()
        out.append(frag)
    return b'{"jobs":[' + b",".join(out) + b"]}"


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
            if isinstance(spec.get("notify"), dict) and spec["notify"].get("webhook"):
                spec["notify"]["webhook"] = shown(spec["notify"]["webhook"])  # its path: a secret
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
    # the spec's own text is checked by parse_spec, with the job file's field names
    spec: Any = Field(description="The job file's contents, as loaded from YAML")
    source: str | None = Field(None, max_length=4096, description="The file name, for messages")
    array: str | None = Field(
        None, max_length=4096, description="Array indices, e.g. 0-99 (overrides the file)"
    )
    after: list[JobId] = Field(
        default_factory=list, max_length=1024, description="More afterok dependencies"
    )
    dependency: str | None = Field(
        None,
        max_length=4096,
        description="More dependencies as sbatch --dependency writes them: afterany:12:13,after:14",
    )
    dry_run: bool = False
    workdir: str | None = Field(
        None,
        max_length=4096,
        description="The directory it was submitted from: the workdir of a job on "
        "image: host whose file sets none",
    )

    @model_validator(mode="after")
    def _source_text(self) -> SubmitRequest:
        bad = text_problems(
            {
                "source": self.source,
                "array": self.array,
                "workdir": self.workdir,
                "dependency": self.dependency,
            }
        )
        if self.workdir is not None and not self.workdir.startswith("/"):
            bad.append(f'workdir: "{self.workdir}" is not an absolute path')
        if bad:
            raise ValueError("; ".join(bad))
        return self


class SubmitResponse(BaseModel):
    jobs: list[JobOut]
    array_id: int | None = None
    dry_run: bool = False
    resolved: dict[str, Any] | None = Field(None, description="The job with defaults filled")
    limits: dict[str, Any] | None = Field(None, description="The limits in cgroup v2 terms")


class CancelRequest(BaseModel):
    ids: list[JobId] = Field(min_length=1, max_length=10_000)
    now: bool = False


class CancelResult(BaseModel):
    id: int
    state: str = Field(description='The job\'s state after the request ("" if no such job)')
    ok: bool = Field(description="Cancelled, stopping, or already ended")
    refused: bool = Field(False, description="Not done because the caller may not")
    message: str


class CancelResponse(BaseModel):
    results: list[CancelResult]


class UpdateRequest(Checked):
    """``mlq update ID``: what to change of a pending job (each as in a job file)."""

    time_limit: int | str | None = Field(None, description="2h, 90m, 3600")
    priority_class: str | None = Field(None, max_length=63)
    cpus: int | float | str | None = Field(None, description="4, 500m")
    memory: int | str | None = Field(None, description="16Gi")
    gpus: int | None = Field(None, ge=0, le=64)


class EstimateOut(BaseModel):
    id: int
    start: str | None = Field(description="Estimated start (UTC); null: not within 30 days")


class EstimateList(BaseModel):
    """``mlq queue --start``: estimates, not promises (scheduler/estimate.py)."""

    at: str
    used: float = Field(description="The share of their time limit jobs are taken to run")
    estimates: list[EstimateOut]


class UsageOut(BaseModel):
    key: str = Field(description="The team, user or class")
    gpu_hours: float
    gpu_equivalent_hours: float
    cpu_hours: float
    jobs: int
    runs: int
    preemptions: int
    lost_gpu_equivalent_hours: float
    mean_gpu_equivalents: float = Field(description="GPU-equivalents in use, on average")
    guarantee_gpu_equivalents: float | None = Field(
        None, description="By team: its guarantee in GPU-equivalents (gpu-equivalent, or gpu)"
    )


class ReportOut(BaseModel):
    since: float
    until: float
    by: str
    rows: list[UsageOut]


class JobIds(BaseModel):
    ids: list[JobId] = Field(min_length=1, max_length=10_000)


class ActionResult(BaseModel):
    id: int
    state: str = Field(description='The job\'s state after the request ("" if no such job)')
    ok: bool = Field(description="Done, or nothing to do")
    refused: bool = Field(False, description="Not done because the caller may not")
    message: str


class ActionResponse(BaseModel):
    results: list[ActionResult]


class TeamOut(BaseModel):
    name: str
    members: list[str]
    admins: list[str]
    guarantee: dict[str, float]
    limit: dict[str, float]
    per_user: dict[str, float] = Field(
        {}, description='Limits on each user of the team: "jobs" running, "gpus" held'
    )
    webhook: str = Field(
        "",
        description="Told when the team's jobs end or are preempted: the whole URL for "
        "its team admins and mlq admins, its scheme and host for others; empty if none",
    )


class WebhookSet(Checked):
    url: str = Field(max_length=4096, description="An http(s) URL; empty clears the webhook")


class TeamList(BaseModel):
    teams: list[TeamOut]


class TeamCreate(Checked):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    members: list[Name] = Field([], max_length=1000)
    admins: list[Name] = Field([], max_length=1000)


class MemberChange(Checked):
    name: Name = Field(description="A Unix user, or @group")
    role: str = Field("member", pattern=r"^(member|admin)$")


class MemberRemoval(Checked):
    name: Name = Field(description="A Unix user, or @group")
    role: str | None = Field(
        None, pattern=r"^(member|admin)$", description="Only this role; none: both"
    )


class QuotaSet(Checked):
    guarantee: dict[str, Any] = Field({}, max_length=100)
    limit: dict[str, Any] = Field({}, max_length=100)
    clear: list[Name] = Field([], max_length=100)


class ClassOut(BaseModel):
    name: str
    value: int
    preempts: list[str]
    preemptible: bool
    min_run_time: int
    order: str = Field(description="The class's queue order in each team: fifo or short-first")
    default_cpus: str
    default_memory: str
    default_time_limit: str | None
    log_limit: str
    nat: bool = Field(
        True, description="Whether the class's bridge jobs reach beyond the node (NAT)"
    )


class ClassList(BaseModel):
    classes: list[ClassOut]


class ClassSet(Checked):
    value: int | None = Field(None, ge=-(10**9), le=10**9)
    preempts: list[Name] | None = Field(None, max_length=100)
    preemptible: bool | None = None
    min_run_time: Any = None
    order: Any = None  # checked as PriorityClass.order: fifo or short-first
    default_cpus: Any = None
    default_memory: Any = None
    default_time_limit: Any = None
    log_limit: Any = None
    nat: bool | None = None


class WhoAmI(BaseModel):
    user: str
    uid: int
    gid: int
    groups: list[str]
    admin: bool
    teams: list[str]
    admin_of: list[str]


class DashboardLogin(BaseModel):
    url: str = Field(description="Open it in a browser: it is good once, for expires_in_s")
    user: str
    expires_in_s: float


class ErrorOut(BaseModel):
    error: str
    message: str
    problems: list[str] = []


class LogChunk(BaseModel):
    """A piece of one run's output; ``next_offset`` continues from where it ends.

    Offsets count every byte the job wrote to the stream, including those its log
    limit dropped: the data starts at ``offset + dropped``.
    """

    job_id: int
    run: int
    runs: list[int] = Field(description="Every run of the job that has a log, oldest first")
    stream: str
    offset: int
    next_offset: int
    dropped: int = Field(
        0,
        description="Bytes from offset on that are gone (older than the run's log limit "
        "keeps, or lost to a write that failed); the data starts after them",
    )
    log_limit: int | None = Field(
        None, description="Bytes of each stream the run keeps, the newest; null: all of them"
    )
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
    # "up" | "down" (no heartbeat within its lease) | "draining" (mlq node drain, jobs
    # still running there) | "drained" (drained and idle)
    state: str = "up"
    reason: str = ""  # why it is down or drained
    last_heartbeat: float | None = None  # a remote node's last heartbeat (UTC seconds)
    address: str = ""  # where its agent connects from
    topology: str = ""  # its switches, outermost first (the node config's topology)
    cpus: str
    memory: str
    cpus_used: str
    memory_used: str
    gpu_source: str
    gpu_problem: str | None = None
    gpus: list[dict[str, Any]]
    teams: list[TeamUsage]


class DrainRequest(Checked):
    reason: str = Field("", max_length=1024, description="Why (shown in mlq nodes)")


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
    networks: list[str] = []


class GrantList(BaseModel):
    grants: list[GrantOut]


class GrantSet(Checked):
    subject: Name
    capabilities: list[str] | None = Field(None, description="Replaces the granted capabilities")
    volume_paths: list[str] | None = Field(None, description="Replaces the granted volume paths")
    devices: list[str] | None = Field(None, description="Replaces the granted devices")
    networks: list[str] | None = Field(None, description="Replaces the granted network modes")


class GrantDelete(Checked):
    subject: Name


class UserCapsOut(BaseModel):
    """What one user may have active at once: jobs, and bytes of stored job files."""

    max_active_jobs: int
    max_spec_bytes: int


class UserCapsSet(Checked):
    max_active_jobs: int | None = Field(None, ge=1, le=10**9)
    max_spec_bytes: Any = None
