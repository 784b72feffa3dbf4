"""The store: every job, event, team, quota and priority class, in SQL.

SQLite in WAL mode under the state dir is the embedded default; the same models
run on PostgreSQL (``--database-url``). Every change is committed before the
caller returns, so an answer from the API means the change survives a crash of
the daemon. Each state change of a job writes a ``JobEvent`` in the same
transaction as the change itself.
"""

from __future__ import annotations

import json
import logging
import re
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import cast

from mlq.scheduler import migrations, states
from mlq.scheduler.accounting import Run, held_by
from mlq.scheduler.cluster import (
    DEFAULT_LOG_LIMIT,
    ClassDefaults,
    ClusterConfig,
    PriorityClass,
    UserCaps,
)
from mlq.scheduler.errors import Conflict, InvalidInput, MlqError, NotFound
from mlq.scheduler.grants import Grant
from mlq.scheduler.models import (
    Columns,
    DrainRow,
    GrantRow,
    Job,
    JobEvent,
    JobRow,
    Member,
    Meta,
    NodeRow,
    PriorityClassRow,
    Quota,
    RunRow,
    Team,
)
from sqlalchemy import bindparam, create_engine, event, func, select, update
from sqlalchemy.engine import Engine
from sqlalchemy.engine.interfaces import DBAPIConnection
from sqlalchemy.exc import OperationalError
from sqlmodel import Session, col

log = logging.getLogger("mlq.store")


def sqlite_url(state_dir: str | Path) -> str:
    return f"sqlite:///{Path(state_dir) / 'mlq.db'}"


def engine_url(url: str) -> str:
    """The URL SQLAlchemy is given: ``postgresql://`` and ``postgres://`` mean psycopg
    (version 3, the ``postgres`` extra), not SQLAlchemy's default driver of the day."""
    scheme, sep, rest = url.partition("://")
    return f"postgresql+psycopg://{rest}" if sep and scheme in ("postgresql", "postgres") else url


class DatabaseError(MlqError):
    """The database cannot be opened: no driver, or no server answers."""

    exit_code = 1


def _server_engine(url: str) -> Engine:
    """An engine on a database server (PostgreSQL), its schema brought up to date; a
    missing driver or a server that does not answer is one line naming the URL."""
    shown = re.sub(r"(://[^:/@]*:)[^@]*@", r"\1***@", url)  # as given, its password hidden
    try:
        engine = create_engine(url, pool_pre_ping=True)
    except ModuleNotFoundError as exc:
        raise DatabaseError(
            f"open database {shown}: no module {exc.name}; "
            "for PostgreSQL: pip install 'mlq[postgres]'"
        ) from None
    try:
        migrations.upgrade(engine)
    except OperationalError as exc:
        engine.dispose()
        reason = str(exc.orig or exc).strip().splitlines()[0]
        raise DatabaseError(f"open database {shown}: {reason}") from None
    return engine


@dataclass
class TeamView:
    """A team with its members, admins and quotas, as the API shows it."""

    name: str
    members: list[str] = field(default_factory=list)
    admins: list[str] = field(default_factory=list)
    guarantee: dict[str, float] = field(default_factory=dict)
    limit: dict[str, float] = field(default_factory=dict)
    per_user: dict[str, float] = field(default_factory=dict)  # cluster.PerUser.as_map()
    webhook: str = ""  # told when the team's jobs end or are preempted ("" none)


@dataclass(frozen=True)
class Notice:
    """A committed change someone may want to be told of (docs/notifications.md):
    ``event`` "ended" (a final state) or "preempted" (``requeued``: back to PENDING in
    the same transaction); ``job``: the job's columns as that step left them, but its
    spec (a queue of notices must not hold a megabyte a job); ``at``: when the step
    was written."""

    event: str
    job: Columns
    requeued: bool = False
    at: float = 0.0


RUNNING_STATES = (states.STARTING, states.RUNNING, states.STOPPING)


def _run_of(job: Job) -> RunRow:
    """The run a running job's row holds now (accounting.py)."""
    return RunRow(
        job_id=job.id or 0, run=job.restart_count, team=job.team, user=job.user,
        priority_class=job.priority_class, node=job.node or "",
        started_at=job.started_at or time.time(), **held_by(job.devices, job.spec),
    )  # fmt: skip


def _ended(run: RunRow, state: str, now: float, checkpoint_at: float | None = None) -> RunRow:
    run.ended_at, run.state = now, state
    if state == states.PREEMPTED:
        since = max(run.started_at, checkpoint_at or 0.0)
        run.lost_s = max(0.0, now - since)
    return run


def _columns(job: Job) -> Columns:
    """The job's columns but its spec, by name, as they are now."""
    return {c.name: getattr(job, c.name) for c in Job.__table__.columns if c.name != "spec"}


def _sqlite_pragmas(dbapi_conn: DBAPIConnection, _record: object) -> None:
    cur = dbapi_conn.cursor()
    # WAL: readers never block the writer. synchronous=NORMAL: a commit is in the
    # WAL before we answer, so a crash of the daemon loses nothing; only a power
    # loss could drop the last commits (set MLQ_SQLITE_SYNC=FULL to trade speed).
    cur.execute("PRAGMA journal_mode=WAL")
    import os

    cur.execute(f"PRAGMA synchronous={os.environ.get('MLQ_SQLITE_SYNC', 'NORMAL')}")
    cur.execute("PRAGMA busy_timeout=10000")
    cur.close()


class Store:
    """All access to the database goes through here."""

    def __init__(self, url: str) -> None:
        self.url = url = engine_url(url)
        if url.startswith("sqlite"):
            path = url.split("///", 1)[-1]
            if path and path != ":memory:":
                Path(path).parent.mkdir(parents=True, exist_ok=True)
            self.engine: Engine = create_engine(
                url, connect_args={"check_same_thread": False, "timeout": 10}
            )
            event.listen(self.engine, "connect", _sqlite_pragmas)
            migrations.upgrade(self.engine)
        else:
            self.engine = _server_engine(url)
        # One writer at a time inside this process; SQLite serialises across processes.
        self._write_lock = threading.RLock()
        # Teams and classes are read on every submission and change rarely: cached,
        # and dropped whenever this store writes them. (One daemon owns a store.)
        self._teams: list[TeamView] | None = None
        self._classes: list[PriorityClass] | None = None
        self._grants: list[Grant] | None = None
        self._caps: UserCaps | None = None
        self._epoch: int | None = None  # the last allocation number given (next_epoch)
        # jobs written since the loop last asked (``changed_jobs``): None until a loop
        # keeps its active jobs between passes (``watch_jobs``)
        self._changed: set[int] | None = None
        # told, after each commit, of the jobs it ended or preempted (the notifier);
        # a listener must not block: it is called on the writer's thread
        self.listeners: list[Callable[[list[Notice]], None]] = []

    def close(self) -> None:
        self.engine.dispose()

    @contextmanager
    def session(self) -> Iterator[Session]:
        with Session(self.engine, expire_on_commit=False) as s:
            yield s

    @contextmanager
    def write(self, config: bool = False) -> Iterator[Session]:
        """A session whose changes are committed (durably) when the block ends.

        ``config``: the block changes teams, members, quotas or classes.
        """
        with self._write_lock, Session(self.engine, expire_on_commit=False) as s:
            try:
                yield s
                s.commit()
            finally:
                if config:
                    self._teams = self._classes = self._grants = self._caps = None

    # -- first start ---------------------------------------------------------------

    def is_seeded(self) -> bool:
        with self.session() as s:
            return s.get(Meta, "seeded") is not None

    def seed(self, cluster: ClusterConfig) -> None:
        """Load teams, quotas and classes from the cluster config, once."""
        now = time.time()
        with self.write(config=True) as s:
            # several daemons may start at once on one PostgreSQL database: one seeds
            migrations.lock_setup(s.connection())
            if s.get(Meta, "seeded") is not None:
                return
            for c in cluster.priority_classes:
                s.add(_class_row(c))
            for t in cluster.teams:
                s.add(Team(name=t.name, created_at=now, per_user=json.dumps(t.per_user.as_map())))
                for m in t.members:
                    s.add(Member(team=t.name, name=m, role="member"))
                for a in t.admins:
                    s.add(Member(team=t.name, name=a, role="admin"))
                for key in set(t.guarantee) | set(t.limit):
                    s.add(
                        Quota(
                            team=t.name,
                            resource=key,
                            guarantee=t.guarantee.get(key),
                            limit=t.limit.get(key),
                        )
                    )
            for g in cluster.grants:
                s.add(_grant_row(g.grant()))
            s.add(Meta(key="user_caps", value=cluster.user_caps.model_dump_json()))
            s.add(Meta(key="seeded", value=str(now)))

    # -- priority classes -------------------------------------------------------------

    def classes(self) -> list[PriorityClass]:
        if self._classes is None:
            with self.session() as s:
                q = select(PriorityClassRow).order_by(col(PriorityClassRow.value).desc())
                self._classes = [_class_model(r) for r in s.scalars(q)]
        return list(self._classes)

    def set_class(self, pc: PriorityClass) -> None:
        known = {c.name for c in self.classes()} | {pc.name}
        for p in pc.preempts:
            if p not in known:
                raise InvalidInput(
                    f'preempts: "{p}" is not a class; known: {", ".join(sorted(known))}'
                )
        with self.write(config=True) as s:
            s.merge(_class_row(pc))

    # -- per-user caps -----------------------------------------------------------------

    def user_caps(self) -> UserCaps:
        if self._caps is None:
            with self.session() as s:
                row = s.get(Meta, "user_caps")
            self._caps = UserCaps.model_validate_json(row.value) if row else UserCaps()
        return self._caps

    def set_user_caps(self, caps: UserCaps) -> None:
        with self.write(config=True) as s:
            s.merge(Meta(key="user_caps", value=caps.model_dump_json()))

    def existing(self, ids: Iterable[int]) -> set[int]:
        """Which of these job ids exist: one index-only read."""
        t = Job.__table__.c
        with self.engine.connect() as conn:
            return set(conn.execute(select(t.id).where(t.id.in_(list(ids)))).scalars())

    def user_load(self, user: str) -> tuple[int, int]:
        """(active jobs, bytes of their stored specs) of one user: an index-only read."""
        t = Job.__table__.c
        q = select(func.count(), func.coalesce(func.sum(t.spec_bytes), 0)).where(
            t.user == user, t.state.in_(list(states.ACTIVE))
        )
        with self.engine.connect() as conn:
            n, size = conn.execute(q).one()
        return int(n), int(size)

    # -- grants -----------------------------------------------------------------------

    def grants(self) -> list[Grant]:
        if self._grants is None:
            with self.session() as s:
                rows = s.scalars(select(GrantRow).order_by(GrantRow.subject))
                self._grants = [_grant_model(r) for r in rows]
        return list(self._grants)

    def set_grant(self, grant: Grant) -> None:
        """Create or replace the grant to ``grant.subject``."""
        kind, _, name = grant.subject.partition(":")
        if kind == "team" and name not in {t.name for t in self.teams()}:
            raise NotFound(f'team "{name}" does not exist; see mlq team list')
        if kind == "class" and name not in {c.name for c in self.classes()}:
            raise NotFound(f'class "{name}" does not exist; see mlq class list')
        with self.write(config=True) as s:
            s.merge(_grant_row(grant))

    def delete_grant(self, subject: str) -> None:
        with self.write(config=True) as s:
            row = s.get(GrantRow, subject)
            if row is None:
                raise NotFound(f'nothing is granted to "{subject}"; see mlq grant list')
            s.delete(row)

    # -- teams and quotas ---------------------------------------------------------------

    def teams(self) -> list[TeamView]:
        if self._teams is None:
            self._teams = self._load_teams()
        return list(self._teams)

    def _load_teams(self) -> list[TeamView]:
        with self.session() as s:
            views = {
                t.name: TeamView(t.name, per_user=json.loads(t.per_user or "{}"), webhook=t.webhook)
                for t in s.scalars(select(Team).order_by(Team.name))
            }
            for m in s.scalars(select(Member).order_by(Member.name)):
                if m.team in views:
                    (views[m.team].admins if m.role == "admin" else views[m.team].members).append(
                        m.name
                    )
            for q in s.scalars(select(Quota)):
                if q.team in views:
                    if q.guarantee is not None:
                        views[q.team].guarantee[q.resource] = q.guarantee
                    if q.limit is not None:
                        views[q.team].limit[q.resource] = q.limit
            return list(views.values())

    def team(self, name: str) -> TeamView:
        for t in self.teams():
            if t.name == name:
                return t
        raise NotFound(f'team "{name}" does not exist; see mlq team list')

    def set_per_user(self, team: str, limits: dict[str, float]) -> TeamView:
        """Replace the team's limits on each of its users."""
        with self.write(config=True) as s:
            row = s.get(Team, team)
            if row is None:
                raise NotFound(f'team "{team}" does not exist; see mlq team list')
            row.per_user = json.dumps(limits)
            s.add(row)
        return self.team(team)

    def set_webhook(self, team: str, url: str) -> TeamView:
        """Set (or with "" clear) the team's webhook."""
        with self.write(config=True) as s:
            row = s.get(Team, team)
            if row is None:
                raise NotFound(f'team "{team}" does not exist; see mlq team list')
            row.webhook = url
            s.add(row)
        return self.team(team)

    def create_team(self, name: str) -> None:
        with self.write(config=True) as s:
            if s.get(Team, name) is not None:
                raise Conflict(f'team "{name}" already exists')
            s.add(Team(name=name, created_at=time.time()))

    def delete_team(self, name: str) -> None:
        with self.write(config=True) as s:
            if s.get(Team, name) is None:
                raise NotFound(f'team "{name}" does not exist; see mlq team list')
            active = s.scalar(
                select(func.count())
                .select_from(Job)
                .where(col(Job.team) == name, col(Job.state).in_(states.ACTIVE))
            )
            if active:
                raise Conflict(
                    f'team "{name}" has {active} active jobs; cancel them before deleting the team'
                )
            for m in s.scalars(select(Member).where(Member.team == name)):
                s.delete(m)
            for q in s.scalars(select(Quota).where(Quota.team == name)):
                s.delete(q)
            grant = s.get(GrantRow, f"team:{name}")
            if grant is not None:
                s.delete(grant)
            s.delete(s.get(Team, name))

    def add_member(self, team: str, name: str, role: str) -> None:
        with self.write(config=True) as s:
            if s.get(Team, team) is None:
                raise NotFound(f'team "{team}" does not exist; see mlq team list')
            if s.get(Member, (team, name, role)) is None:
                s.add(Member(team=team, name=name, role=role))

    def remove_member(self, team: str, name: str, role: str | None = None) -> None:
        with self.write(config=True) as s:
            q = select(Member).where(Member.team == team, Member.name == name)
            if role:
                q = q.where(Member.role == role)
            rows = list(s.scalars(q))
            if not rows:
                raise NotFound(f'"{name}" is not in team "{team}"')
            for m in rows:
                s.delete(m)

    def set_quota(
        self,
        team: str,
        guarantee: dict[str, float],
        limit: dict[str, float],
        clear: Iterable[str] = (),
    ) -> TeamView:
        with self.write(config=True) as s:
            if s.get(Team, team) is None:
                raise NotFound(f'team "{team}" does not exist; see mlq team list')
            for key in clear:
                row = s.get(Quota, (team, key))
                if row is not None:
                    s.delete(row)
            s.flush()
            for key in set(guarantee) | set(limit):
                row = s.get(Quota, (team, key)) or Quota(team=team, resource=key)
                if key in guarantee:
                    row.guarantee = guarantee[key]
                if key in limit:
                    row.limit = limit[key]
                if (
                    row.guarantee is not None
                    and row.limit is not None
                    and row.limit < row.guarantee
                ):
                    raise InvalidInput(
                        f"{key}: limit {row.limit:g} is below guarantee {row.guarantee:g}; "
                        "a limit must be at least the guarantee"
                    )
                s.add(row)
        return self.team(team)

    def teams_of(self, user: str, groups: Iterable[str]) -> tuple[set[str], set[str]]:
        """(teams the user is a member of, teams the user administers)."""
        names = {user} | {f"@{g}" for g in groups}
        member: set[str] = set()
        admin: set[str] = set()
        for t in self.teams():
            if names.intersection(t.admins):
                admin.add(t.name)
                member.add(t.name)
            if names.intersection(t.members):
                member.add(t.name)
        return member, admin

    # -- jobs ---------------------------------------------------------------------------

    def add_jobs(
        self, rows: list[Columns], reason: str = "Submitted", as_array: bool = False
    ) -> list[int]:
        """Insert jobs (column dicts) and their first event in one transaction.

        Fills in and returns their IDs. With ``as_array`` the jobs share an array ID:
        the first job's ID, as in Slurm. Core inserts, not the ORM: submission is
        the hot path of the API.
        """
        return self.add_job_groups([(rows, as_array)], reason)[0]

    def add_job_groups(
        self, groups: list[tuple[list[Columns], bool]], reason: str = "Submitted"
    ) -> list[list[int]]:
        """Several submissions (each a list of rows, an array or not) in ONE
        transaction: the daemon's group commit, so concurrent submits share a commit."""
        table = Job.__table__
        out: list[list[int]] = []
        events: list[Columns] = []
        with self._write_lock, self.engine.begin() as conn:
            for rows, as_array in groups:
                if len(rows) == 1:
                    key = conn.execute(table.insert(), rows[0]).inserted_primary_key
                    ids = [int(key[0]) if key is not None else 0]
                else:
                    # one ID a row, increasing with the rows: SQLite's rowids follow the
                    # rows of one INSERT; PostgreSQL's sequence does only when asked to
                    # (INSERT ... SELECT ... ORDER BY, which SQLite would run row by row)
                    in_order = conn.dialect.name == "postgresql"
                    stmt = table.insert().returning(table.c.id, sort_by_parameter_order=in_order)
                    ids = sorted(r[0] for r in conn.execute(stmt, rows))
                for row, i in zip(rows, ids, strict=True):
                    row["id"] = i
                # an array's jobs, and a multi-node job's parts (rows with a rank), name
                # the first one's id
                group = "array_id" if as_array else None
                if rows and rows[0].get("gang_rank") is not None:
                    group = "gang_id"
                if group is not None and ids:
                    conn.execute(update(table).where(table.c.id.in_(ids)).values({group: ids[0]}))
                    for row in rows:
                        row[group] = ids[0]
                events += [
                    {
                        "job_id": r["id"],
                        "at": r["submitted_at"],
                        "state": r["state"],
                        "reason": reason,
                    }
                    for r in rows
                ]
                out.append(ids)
            conn.execute(JobEvent.__table__.insert(), events)
        self._mark(i for ids in out for i in ids)
        return out

    def specs(self, ids: list[int]) -> list[tuple[int, str]]:
        """(id, spec JSON) of these jobs."""
        t = Job.__table__.c
        with self.engine.connect() as conn:
            return [tuple(r) for r in conn.execute(select(t.id, t.spec).where(t.id.in_(ids)))]

    def job(self, job_id: int) -> Job:
        with self.session() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id} does not exist; see mlq queue or mlq history")
            return job

    def events(self, job_id: int) -> list[JobEvent]:
        with self.session() as s:
            q = select(JobEvent).where(JobEvent.job_id == job_id).order_by(JobEvent.id)
            return list(s.scalars(q))

    def jobs(
        self,
        *,
        states_in: Iterable[str] | None = None,
        team: str | None = None,
        user: str | None = None,
        since: float | None = None,
        ids: Iterable[int] | None = None,
        limit: int | None = None,
        with_spec: bool = True,
        gang: int | None = None,
    ) -> list[JobRow]:
        """Jobs as read-only rows with the ``Job`` table's attributes, oldest first.

        Core rows, not ORM objects: the loop reads every active job on each pass and
        ``mlq queue`` lists thousands; an ORM object costs ten times a row.
        """
        t = Job.__table__.c
        q = select(Job.__table__) if with_spec else select(*[c for c in t if c.name != "spec"])
        if states_in is not None:
            q = q.where(t.state.in_(list(states_in)))
        if team:
            q = q.where(t.team == team)
        if user:
            q = q.where(t.user == user)
        if since is not None:
            q = q.where(t.ended_at >= since)
        if ids is not None:
            q = q.where(t.id.in_(list(ids)))
        if gang is not None:  # the parts of one multi-node job
            q = q.where(t.gang_id == gang)
        q = q.order_by(t.id)
        if limit:
            q = q.limit(limit)
        with self.engine.connect() as conn:
            return cast(list[JobRow], list(conn.execute(q).all()))

    # the columns of a listing, in JobOut's order (schemas.LISTING_COLUMNS names them)
    LISTING = (
        'id, name, team, "user", kind, priority_class, state, reason, submitted_at, '
        "started_at, ended_at, array_id, array_index, depends_on, node, exit_code, signal, "
        "restart_count, gang_id, gang_rank"
    )

    def listing(
        self,
        states_in: Iterable[str],
        team: str | None = None,
        user: str | None = None,
        limit: int = 100_000,
    ) -> list[tuple[object, ...]]:
        """Jobs in ``states_in`` as plain tuples of the listing's columns, oldest first.

        The queue is listed ten times a second by dashboards while thousands of jobs
        wait: this reads through the driver's own cursor (a tuple a row, no result
        objects), a few times faster than a Core select."""
        wanted = list(states_in)
        where = "state IN (" + ", ".join(["?"] * len(wanted)) + ")"
        args: list[object] = list(wanted)
        if team:
            where += " AND team = ?"
            args.append(team)
        if user:
            where += ' AND "user" = ?'
            args.append(user)
        sql = f"SELECT {self.LISTING} FROM jobs WHERE {where} ORDER BY id LIMIT {int(limit)}"
        raw = self.engine.raw_connection()
        try:
            cur = raw.cursor()
            if self.engine.dialect.paramstyle != "qmark":
                sql = sql.replace("?", "%s")
            cur.execute(sql, args)
            rows = [tuple(r) for r in cur.fetchall()]
            cur.close()
            raw.commit()  # end the read transaction (PostgreSQL opens one)
        finally:
            raw.close()
        return rows

    def history(
        self,
        *,
        since: float | None = None,
        before: float | None = None,
        team: str | None = None,
        user: str | None = None,
        limit: int = 1000,
        offset: int = 0,
    ) -> list[JobRow]:
        """Ended jobs, newest end first, at most ``limit`` after skipping ``offset``:
        an indexed range read (``ix_jobs_ended_at``), however long the history is.
        ``before``: only jobs that ended before this time."""
        t = Job.__table__.c
        q = select(*[c for c in t if c.name != "spec"]).where(t.ended_at.is_not(None))
        q = q.where(t.state.in_(list(states.FINAL)))
        if since is not None:
            q = q.where(t.ended_at >= since)
        if before is not None:
            q = q.where(t.ended_at < before)
        if team:
            q = q.where(t.team == team)
        if user:
            q = q.where(t.user == user)
        q = q.order_by(t.ended_at.desc(), t.id.desc()).limit(limit).offset(offset)
        with self.engine.connect() as conn:
            return cast(list[JobRow], list(conn.execute(q).all()))

    def transition(
        self,
        job_id: int,
        state: str,
        reason: str = "",
        expect: Iterable[str] | None = None,
        **fields: object,
    ) -> Job:
        """Move a job to ``state`` and record the event, in one transaction.

        ``expect``: the states the job must be in now, else ``Conflict`` and nothing
        changes (a compare-and-set: a job the API answered CANCELLED can never be
        moved to STARTING by a pass that read it PENDING a moment earlier)."""
        return self.transitions(job_id, [(state, reason, fields)], expect)

    def transitions(
        self,
        job_id: int,
        steps: list[tuple[str, str, Columns]],
        expect: Iterable[str] | None = None,
    ) -> Job:
        """Several state changes of one job, each with its event, in one transaction
        (PREEMPTED then PENDING: a crash between them must not lose the requeue)."""
        with self.write() as s:
            job = s.get(Job, job_id, with_for_update=True)
            if job is None:
                raise NotFound(f"job {job_id} does not exist")
            if expect is not None and job.state not in set(expect):
                raise Conflict(f"job {job_id} is {job.state}, not {'/'.join(sorted(expect))}")
            # a run record only when a step ends the run (not STARTING -> RUNNING), read
            # before the steps clear its node and devices
            ends = job.state in RUNNING_STATES and any(
                state not in RUNNING_STATES for state, _, _ in steps
            )
            run = _run_of(job) if ends else None
            saved = job.checkpoint_at
            notices: list[Notice] = []
            for n, (state, reason, fields) in enumerate(steps):
                job.state = state
                job.reason = reason
                for k, v in fields.items():
                    setattr(job, k, v)
                s.add(JobEvent(job_id=job_id, at=time.time(), state=state, reason=reason))
                if run is not None and state not in RUNNING_STATES:  # the run ended here
                    s.add(_ended(run, state, time.time(), saved))
                    run = None
                last = n == len(steps) - 1
                if self.listeners and (
                    state == states.PREEMPTED or (last and state in states.FINAL)
                ):
                    event = "preempted" if state == states.PREEMPTED else "ended"
                    notices.append(Notice(event, _columns(job), not last, time.time()))
            s.add(job)
        self._mark((job_id,))  # after the commit: a reader then sees the new row
        self._tell(notices)
        return job

    def cancel_pending(self, ids: Iterable[int], reason: str) -> list[int]:
        """Cancel every one of ``ids`` that is PENDING now, all in one transaction, so
        none of them can start between the first and the last; returns those cancelled."""
        now = time.time()
        values = {"state": states.CANCELLED, "reason": reason, "ended_at": now}
        return self._change_pending(ids, values, states.CANCELLED, reason, now)

    def set_held(self, ids: Iterable[int], held_by: str | None, reason: str) -> list[int]:
        """Hold (``held_by`` the user who holds them) or release (None) every one of
        ``ids`` that is PENDING now, in one transaction, each with an event; returns
        those changed (a job that started meanwhile is not)."""
        values = {"held": held_by is not None, "held_by": held_by or "", "reason": reason}
        return self._change_pending(ids, values, states.PENDING, reason, time.time())

    def _change_pending(
        self, ids: Iterable[int], values: Columns, event: str, reason: str, now: float
    ) -> list[int]:
        """Set ``values`` on every one of ``ids`` that is PENDING now, with an event
        each, in one transaction; returns those changed."""
        t = Job.__table__
        ids = list(ids)
        if not ids:
            return []
        notices: list[Notice] = []
        with self._write_lock, self.engine.begin() as conn:
            q = select(t.c.id).where(t.c.id.in_(ids), t.c.state == states.PENDING)
            # rows locked in ID order (on PostgreSQL: two daemons changing them at once
            # wait for each other instead of deadlocking)
            found = [r[0] for r in conn.execute(q.order_by(t.c.id).with_for_update())]
            if found:
                conn.execute(
                    update(t).where(t.c.id.in_(found), t.c.state == states.PENDING).values(values)
                )
                conn.execute(
                    JobEvent.__table__.insert(),
                    [{"job_id": i, "at": now, "state": event, "reason": reason} for i in found],
                )
                if self.listeners and event in states.FINAL:
                    cols = [c for c in t.c if c.name != "spec"]
                    rows = conn.execute(select(*cols).where(t.c.id.in_(found)).order_by(t.c.id))
                    notices = [Notice("ended", dict(r._mapping), at=now) for r in rows]
        self._mark(found)
        self._tell(notices)
        return found

    def update_pending(
        self, ids: list[int], spec: str, *, priority_class: str, priority: int, reason: str
    ) -> None:
        """Give pending jobs (a multi-node job's parts) a changed spec and class, with
        an event each, in one transaction: all of them are still PENDING, or none
        changes (Conflict)."""
        now = time.time()
        with self.write() as s:
            rows = [s.get(Job, i, with_for_update=True) for i in sorted(ids)]
            for i, row in zip(sorted(ids), rows, strict=True):
                if row is None:
                    raise NotFound(f"job {i} does not exist")
                if row.state != states.PENDING:
                    raise Conflict(f"job {i} is {row.state} now: only a pending job can be updated")
            for row in rows:
                assert row is not None
                row.spec, row.spec_bytes = spec, len(spec.encode())
                row.priority_class, row.priority = priority_class, priority
                s.add(row)
                s.add(JobEvent(job_id=row.id, at=now, state=states.PENDING, reason=reason))
        self._mark(ids)

    def runs(self, since: float, until: float) -> list[Run]:
        """Every run that overlaps [since, until): the ended ones from the runs table,
        and the ones running now from the jobs."""
        with self.session() as s:
            q = select(RunRow).where(col(RunRow.ended_at) >= since, col(RunRow.started_at) < until)
            ended = [
                Run(
                    r.job_id,
                    r.run,
                    r.team,
                    r.user,
                    r.priority_class,
                    r.node,
                    r.started_at,
                    r.ended_at,
                    r.state,
                    r.gpus,
                    r.gpu_equivalents,
                    r.cpus,
                    r.memory,
                    r.lost_s,
                    r.time_limit,
                )  # fmt: skip
                for r in s.scalars(q)
            ]
            running = [
                Run(
                    j.id or 0,
                    j.restart_count,
                    j.team,
                    j.user,
                    j.priority_class,
                    j.node or "",
                    j.started_at or until,
                    None,
                    "RUNNING",
                    **held_by(j.devices, j.spec),
                )  # fmt: skip
                for j in s.scalars(select(Job).where(col(Job.state).in_(RUNNING_STATES)))
            ]
        return ended + running

    def count_by_state(self) -> dict[str, int]:
        with self.session() as s:
            rows = s.execute(select(col(Job.state), func.count()).group_by(col(Job.state)))
            return {state: int(n) for state, n in rows}

    def update_fields(self, job_id: int, **fields: object) -> None:
        """Change columns that are not a state change (no event)."""
        with self.write() as s:
            job = s.get(Job, job_id)
            if job is None:
                raise NotFound(f"job {job_id} does not exist")
            for k, v in fields.items():
                setattr(job, k, v)
            s.add(job)
        self._mark((job_id,))

    def _tell(self, notices: list[Notice]) -> None:
        """Hand committed notices to the listeners; one that fails is logged, never
        the writer's error (its change is committed)."""
        if not notices:
            return
        for listener in self.listeners:
            try:
                listener(notices)
            except Exception:
                log.exception("a store listener failed on %d notices", len(notices))

    # -- what changed, for a loop that keeps its jobs between passes --------------------

    def watch_jobs(self) -> None:
        """From now on remember which jobs each write changes (``changed_jobs``). Every
        write of a job goes through this store in its one process (one daemon, or the
        one active control plane), except ``set_reasons``: a reason is the loop's own
        write, and it keeps its own copy."""
        with self._write_lock:
            self._changed = set()

    def changed_jobs(self) -> set[int]:
        """The jobs written since the last call (then forgotten)."""
        with self._write_lock:
            out, self._changed = self._changed or set(), set()
        return out

    def _mark(self, ids: Iterable[int]) -> None:
        if self._changed is not None:
            with self._write_lock:
                self._changed.update(ids)

    def next_epoch(self) -> int:
        """A new allocation number, above every one given before: the fencing token of
        a run's orders. Read once from the jobs, then counted here: only the one active
        control plane starts runs (a standby that takes over reads it afresh)."""
        with self._write_lock:
            if self._epoch is None:
                with self.engine.connect() as conn:
                    top = conn.execute(select(func.max(Job.__table__.c.epoch))).scalar()
                self._epoch = int(top or 0)
            self._epoch += 1
            return self._epoch

    # -- the cluster's nodes (schema 6) -------------------------------------------------

    def node_rows(self) -> list[NodeRow]:
        with self.session() as s:
            return list(s.scalars(select(NodeRow).order_by(col(NodeRow.name))))

    def save_node(self, name: str, **fields: object) -> None:
        """Create the node's row, or change its fields."""
        with self.write() as s:
            row = s.get(NodeRow, name, with_for_update=True) or NodeRow(
                name=name, registered_at=time.time()
            )
            for k, v in fields.items():
                setattr(row, k, v)
            s.add(row)

    def drains(self) -> dict[str, DrainRow]:
        """The drained nodes, by name."""
        with self.session() as s:
            return {d.node: d for d in s.scalars(select(DrainRow))}

    def drain(self, node: str, reason: str, by: str) -> None:
        with self.write() as s:
            s.merge(DrainRow(node=node, reason=reason, by=by, at=time.time()))

    def resume(self, node: str) -> bool:
        """Undo a drain; whether the node was drained."""
        with self.write() as s:
            row = s.get(DrainRow, node)
            if row is None:
                return False
            s.delete(row)
            return True

    def node_runs(self, node: str) -> list[JobRow]:
        """What the node should run now: its STARTING, RUNNING and STOPPING jobs, with
        their epochs and launch requests (no spec text)."""
        t = Job.__table__.c
        q = (
            select(t.id, t.restart_count, t.epoch, t.launch, t.state, t.stop_now, t.node)
            .where(t.node == node, t.state.in_((states.STARTING, states.RUNNING, states.STOPPING)))
            .order_by(t.id)
        )
        with self.engine.connect() as conn:
            return cast(list[JobRow], list(conn.execute(q).all()))

    def set_reasons(self, reasons: dict[int, str]) -> None:
        """Write pending reasons (not events: a reason is not a state change). Callers
        pass only the reasons that changed; one statement for all of them."""
        if not reasons:
            return
        t = Job.__table__
        stmt = (
            update(t)
            .where(t.c.id == bindparam("job_id"), t.c.state == states.PENDING)
            .values(reason=bindparam("new_reason"))
        )
        with self._write_lock, self.engine.begin() as conn:
            # in ID order, as cancel_pending locks them: no deadlock between daemons
            params = [{"job_id": k, "new_reason": v} for k, v in sorted(reasons.items())]
            conn.execute(stmt, params)


def _grant_row(g: Grant) -> GrantRow:
    return GrantRow(
        subject=g.subject,
        capabilities=json.dumps(list(g.capabilities)),
        volume_paths=json.dumps(list(g.volume_paths)),
        devices=json.dumps(list(g.devices)),
        networks=json.dumps(list(g.networks)),
    )


def _grant_model(r: GrantRow) -> Grant:
    return Grant(
        r.subject,
        tuple(json.loads(r.capabilities)),
        tuple(json.loads(r.volume_paths)),
        tuple(json.loads(r.devices)),
        tuple(json.loads(r.networks or "[]")),
    )


def _class_row(c: PriorityClass) -> PriorityClassRow:
    return PriorityClassRow(
        name=c.name,
        value=c.value,
        preempts=json.dumps(c.preempts),
        preemptible=c.preemptible,
        min_run_time=c.min_run_time,
        queue_order=c.order,
        default_cpus=c.defaults.cpus,
        default_memory=c.defaults.memory,
        default_time_limit=c.defaults.time_limit,
        log_limit=c.log_limit,
        nat=c.nat,
    )


def _class_model(r: PriorityClassRow) -> PriorityClass:
    return PriorityClass(
        name=r.name,
        value=r.value,
        preempts=json.loads(r.preempts),
        preemptible=r.preemptible,
        min_run_time=r.min_run_time,
        order=r.queue_order,
        defaults=ClassDefaults(
            cpus=f"{r.default_cpus}m", memory=r.default_memory, time_limit=r.default_time_limit
        ),
        log_limit=r.log_limit if r.log_limit is not None else DEFAULT_LOG_LIMIT,
        nat=r.nat,
    )
