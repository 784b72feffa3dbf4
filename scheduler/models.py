"""The store's tables (SQLModel): jobs, their events, teams, members, quotas,
priority classes, grants, the cluster's nodes, and a key-value table that holds the schema version.

Times are UTC seconds since the epoch (float). Resolved job specs are stored as
JSON so a job runs exactly as it was accepted, even if class defaults change later.
"""

from __future__ import annotations

from typing import Protocol

from sqlalchemy import BigInteger, Boolean, Column, Index, Integer, Text, true
from sqlmodel import Field, SQLModel

# A row to insert, or the fields of one to change, by column name
Columns = dict[str, object]

# 64-bit integers on PostgreSQL (INTEGER there is 32-bit: 16Gi, a uid above 2^31, a
# peak of 3 GB would not fit); SQLite's INTEGER is already 64-bit, and its
# autoincrement primary key must be declared exactly INTEGER.
Int64 = BigInteger().with_variant(Integer(), "sqlite")


def int64(default: int | None = None, nullable: bool = True, **kw) -> Field:  # type: ignore[valid-type]
    """A 64-bit integer column on every database."""
    if default is not None:
        kw["default"] = default  # core inserts (the submit path) fill it too
    return Field(default=default, sa_column=Column(Int64, nullable=nullable, **kw))


class Job(SQLModel, table=True):
    __tablename__ = "jobs"
    __table_args__ = (
        Index("ix_jobs_state", "state"),
        Index("ix_jobs_team_state", "team", "state"),
        # schema 4: per-user caps at submit, and history read newest first
        Index("ix_jobs_user_state", "user", "state", "spec_bytes"),
        Index("ix_jobs_ended_at", "ended_at"),
        Index("ix_jobs_node_state", "node", "state"),  # schema 6: a node's runs
        Index("ix_jobs_gang", "gang_id"),  # schema 7: a multi-node job's parts
        {"sqlite_autoincrement": True},  # Slurm-like IDs: increasing, never reused
    )

    id: int | None = Field(default=None, sa_column=Column(Int64, primary_key=True))
    array_id: int | None = int64()
    array_index: int | None = int64()
    name: str
    team: str
    user: str
    uid: int = int64(nullable=False)
    gid: int = int64(nullable=False)
    kind: str
    priority_class: str
    priority: int = int64(nullable=False)
    state: str
    reason: str = ""
    spec: str = Field(sa_column=Column(Text, nullable=False))
    submitted_at: float
    started_at: float | None = None
    ended_at: float | None = None
    depends_on: str = "[]"
    held: bool = False
    held_by: str = Field("", sa_column=Column(Text, nullable=False, server_default=""))  # schema 8
    node: str | None = None
    devices: str | None = None
    cgroup: str | None = None
    run_dir: str | None = None
    exit_code: int | None = int64()
    signal: str | None = None
    restart_count: int = int64(0, nullable=False)
    checkpoint_at: float | None = None
    # schema 2: why a running job is being stopped, and for whom
    stop_cause: str | None = None  # "preempt" | "cancel"
    stop_for: int | None = int64()  # the job a preemption makes room for
    max_memory: int | None = int64()  # peak memory of the last run, bytes
    # schema 4: the kernel's OOM kills in the last run; the stored spec's size
    oom_kills: int | None = int64()
    spec_bytes: int = int64(0, nullable=False)
    # schema 7: a multi-node job's parts are rows of their own: all name the first
    # part's id (the job's id a user sees), each its rank
    gang_id: int | None = int64()
    gang_rank: int | None = int64()
    # schema 6: the run's allocation number (the fencing token of every order to its
    # node), the launch request a remote node runs it from, and a kill-now stop
    epoch: int | None = int64()
    launch: str | None = Field(default=None, sa_column=Column(Text, nullable=True))
    stop_now: bool = False


class JobRow(Protocol):
    """A job as the store hands it out: a Core row, an ORM ``Job`` or a namespace with
    the ``jobs`` table's columns (the spec text only where it was read)."""

    @property
    def id(self) -> int | None: ...
    @property
    def array_id(self) -> int | None: ...
    @property
    def array_index(self) -> int | None: ...
    @property
    def name(self) -> str: ...
    @property
    def team(self) -> str: ...
    @property
    def user(self) -> str: ...
    @property
    def uid(self) -> int: ...
    @property
    def gid(self) -> int: ...
    @property
    def priority_class(self) -> str: ...
    @property
    def state(self) -> str: ...
    @property
    def reason(self) -> str: ...
    @property
    def submitted_at(self) -> float: ...
    @property
    def started_at(self) -> float | None: ...
    @property
    def depends_on(self) -> str: ...
    @property
    def held(self) -> bool: ...
    @property
    def held_by(self) -> str: ...
    @property
    def node(self) -> str | None: ...
    @property
    def devices(self) -> str | None: ...
    @property
    def run_dir(self) -> str | None: ...
    @property
    def restart_count(self) -> int: ...
    @property
    def checkpoint_at(self) -> float | None: ...
    @property
    def stop_cause(self) -> str | None: ...
    @property
    def stop_for(self) -> int | None: ...
    @property
    def epoch(self) -> int | None: ...


class JobEvent(SQLModel, table=True):
    __tablename__ = "job_events"
    __table_args__ = (Index("ix_job_events_job", "job_id"),)

    id: int | None = Field(default=None, sa_column=Column(Int64, primary_key=True))
    job_id: int = int64(nullable=False)
    at: float
    state: str
    reason: str = ""


class Team(SQLModel, table=True):
    __tablename__ = "teams"

    name: str = Field(primary_key=True)
    created_at: float
    # schema 8: limits on each user of the team ({"jobs": 4, "gpus": 8}; JSON)
    per_user: str = Field("{}", sa_column=Column(Text, nullable=False, server_default="{}"))
    # schema 9: the URL told when the team's jobs end or are preempted ("" = none)
    webhook: str = Field("", sa_column=Column(Text, nullable=False, server_default=""))


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
    value: int = int64(nullable=False)
    preempts: str = "[]"
    preemptible: bool = True
    min_run_time: int = int64(0, nullable=False)
    default_cpus: int = int64(nullable=False)
    default_memory: int = int64(nullable=False)
    default_time_limit: int | None = int64()
    log_limit: int | None = int64()  # schema 4: bytes kept per output stream
    # schema 5: the class's queue order in each team, "fifo" | "short-first" ("order"
    # is an SQL keyword); the server default is the one the migration gives old rows
    queue_order: str = Field(
        "short-first", sa_column=Column(Text, nullable=False, server_default="short-first")
    )
    # schema 9: bridge jobs of the class reach outside the node through NAT
    nat: bool = Field(True, sa_column=Column(Boolean, nullable=False, server_default=true()))


class GrantRow(SQLModel, table=True):
    """schema 3: what an mlq admin granted to a team, a class or everyone (JSON lists)."""

    __tablename__ = "grants"

    subject: str = Field(primary_key=True)  # "*", "team:<name>" or "class:<name>"
    capabilities: str = "[]"
    volume_paths: str = "[]"
    devices: str = "[]"
    networks: str = Field("[]", sa_column=Column(Text, nullable=False, server_default="[]"))


class NodeRow(SQLModel, table=True):
    """schema 6: a node an agent registered (cluster mode): what it has, how it is."""

    __tablename__ = "nodes"

    name: str = Field(primary_key=True)
    state: str = "up"  # "up" | "down"
    reason: str = ""  # why it is down
    address: str = ""  # where its agent connected from
    cpus: int = int64(0, nullable=False)  # millicores
    memory: int = int64(0, nullable=False)  # bytes
    gpus: str = Field("{}", sa_column=Column(Text, nullable=False, server_default="{}"))
    state_dir: str = ""  # the agent's state dir (run dirs and checkpoints live there)
    socket: str = ""  # the agent's user socket (never mounted into a job)
    registered_at: float = 0.0
    last_heartbeat: float = 0.0  # as the active control plane last recorded it
    topology: str = ""  # schema 8: its switches, outermost first (the node config's)


class RunRow(SQLModel, table=True):
    """schema 8: one run of a job, written in the transaction that ends it: what it
    held and for how long (scheduler/accounting.py; mlq report)."""

    __tablename__ = "runs"
    __table_args__ = (Index("ix_runs_ended_at", "ended_at"),)

    id: int | None = Field(default=None, sa_column=Column(Int64, primary_key=True))
    job_id: int = int64(nullable=False)
    run: int = int64(0, nullable=False)  # the job's restart count
    team: str = ""
    user: str = ""
    priority_class: str = ""
    node: str = ""
    started_at: float = 0.0
    ended_at: float = 0.0
    state: str = ""  # how it ended
    gpus: int = int64(0, nullable=False)
    gpu_equivalents: float = 0.0
    cpus: int = int64(0, nullable=False)  # millicores
    memory: int = int64(0, nullable=False)  # bytes
    lost_s: float = 0.0  # preempted: seconds since its last checkpoint (or its start)
    time_limit: float = 0.0  # its limit (0: none): how much of it jobs use (estimate.py)


class DrainRow(SQLModel, table=True):
    """schema 8: a node an mlq admin drained (mlq node drain): its running jobs finish,
    nothing new lands on it until it is resumed. Any node, this machine's included."""

    __tablename__ = "drains"

    node: str = Field(primary_key=True)
    reason: str = ""
    by: str = ""  # the admin who drained it
    at: float = 0.0


class Meta(SQLModel, table=True):
    __tablename__ = "meta"

    key: str = Field(primary_key=True)
    value: str
