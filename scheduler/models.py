"""The store's tables (SQLModel): jobs, their events, teams, members, quotas,
priority classes, and a key-value table that holds the schema version.

Times are UTC seconds since the epoch (float). Resolved job specs are stored as
JSON so a job runs exactly as it was accepted, even if class defaults change later.
"""

from __future__ import annotations

from sqlalchemy import Column, Index, Text
from sqlmodel import Field, SQLModel


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state", "state"),
        Index("ix_jobs_team_state", "team", "state"),
        {"sqlite_autoincrement": True},  # Slurm-like IDs: increasing, never reused
    )

    id: int | None = Field(default=None, primary_key=True)
    array_id: int | None = None
    array_index: int | None = None
    name: str
    team: str
    user: str
    uid: int
    gid: int
    kind: str
    priority_class: str
    priority: int
    state: str
    reason: str = ""
    spec: str = Field(sa_column=Column(Text, nullable=False))
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    depends_on: str = "[]"
    held: bool = False
    node: str | None = None
    devices: str | None = None
    cgroup: str | None = None
    run_dir: str | None = None
    exit_code: int | None = None
    signal: str | None = None
    restart_count: int = 0
    checkpoint_at: float | None = None
    # schema 2: why a running job is being stopped, and for whom
    stop_cause: str | None = None  # "preempt" | "cancel"
    stop_for: int | None = None  # the job a preemption makes room for
    max_memory: int | None = None  # peak memory of the last run, bytes


class JobEvent(SQLModel, table=True):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job", "job_id"),)

    id: int | None = Field(default=None, primary_key=True)
    job_id: int
    at: float
    state: str
    reason: str = ""


class Team(SQLModel, table=True):
    __tablename__ = "teams"

    name: str = Field(primary_key=True)
    created_at: float


class Member(SQLModel, table=True):
    """A Unix user (``alice``) or group (``@ml``) in a team, as member or admin."""

    __tablename__ = "members"

    team: str = Field(primary_key=True)
    name: str = Field(primary_key=True)
    role: str = Field(primary_key=True)  # "member" | "admin"


class Quota(SQLModel, table=True):
    __tablename__ = "quotas"

    team: str = Field(primary_key=True)
    resource: str = Field(primary_key=True)
    guarantee: float | None = None
    limit: float | None = None


class PriorityClassRow(SQLModel, table=True):
    __tablename__ = "priority_classes"

    name: str = Field(primary_key=True)
    value: int
    preempts: str = "[]"
    preemptible: bool = True
    min_run_time: int = 0
    default_cpus: int
    default_memory: int
    default_time_limit: int | None = None


class GrantRow(SQLModel, table=True):
    """schema 3: what an mlq admin granted to a team, a class or everyone (JSON lists)."""

    __tablename__ = "grants"

    subject: str = Field(primary_key=True)  # "*", "team:<name>" or "class:<name>"
    capabilities: str = "[]"
    volume_paths: str = "[]"
    devices: str = "[]"


class Meta(SQLModel, table=True):
    __tablename__ = "meta"

    key: str = Field(primary_key=True)
    value: str
