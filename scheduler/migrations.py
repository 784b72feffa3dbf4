"""Schema versions and the numbered steps that upgrade an older database.

mlq keeps its own numbered steps instead of alembic: the schema is small, and a
step is a plain function run in one transaction. The version lives in the
``meta`` table; a database newer than this mlq is refused rather than guessed at.
To change the schema: add a step ``N+1`` below and bump nothing else.
"""

from __future__ import annotations

from collections.abc import Callable

from mlq.scheduler import models  # noqa: F401  (registers the tables)
from mlq.scheduler.errors import MlqError
from sqlalchemy import Integer, inspect, text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel


def _v1(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn)


def _add_columns(conn: Connection, table: str, columns: dict[str, str]) -> None:
    """ALTER TABLE ... ADD COLUMN for those not there yet (step 1 creates the tables
    as the models are today, so later steps find their columns already on a new DB)."""
    have = {c["name"] for c in inspect(conn).get_columns(table)}
    for name, sql_type in columns.items():
        if name not in have:
            conn.execute(text(f"ALTER TABLE {table} ADD COLUMN {name} {sql_type}"))


def _v2(conn: Connection) -> None:
    """Running jobs: why one is stopping (preempt or cancel), for whom, its peak memory."""
    _add_columns(
        conn, "jobs", {"stop_cause": "VARCHAR", "stop_for": "INTEGER", "max_memory": "BIGINT"}
    )


def _v3(conn: Connection) -> None:
    """Admin grants. A database seeded before grants existed gets the default one to
    everyone (volumes from the usual data paths), so its users' jobs keep working."""
    import json

    from mlq.scheduler.grants import DEFAULT_VOLUME_PATHS

    SQLModel.metadata.create_all(conn, tables=[models.GrantRow.__table__])
    seeded = conn.execute(text("SELECT 1 FROM meta WHERE key = 'seeded'")).first()
    has = conn.execute(text("SELECT 1 FROM grants WHERE subject = '*'")).first()
    if seeded and not has:
        conn.execute(
            text(
                "INSERT INTO grants (subject, capabilities, volume_paths, devices) "
                "VALUES ('*', '[]', :paths, '[]')"
            ),
            {"paths": json.dumps(list(DEFAULT_VOLUME_PATHS))},
        )


def _widen_integers(conn: Connection) -> None:
    """On PostgreSQL, every integer column of the models 64-bit, and the sequences of
    the IDs: before schema 4 they were INTEGER there (32-bit; SQLite's are 64-bit)."""
    if conn.dialect.name != "postgresql":
        return
    have = inspect(conn)
    quote = conn.dialect.identifier_preparer.quote
    for table in SQLModel.metadata.sorted_tables:
        found = {c["name"]: str(c["type"]) for c in have.get_columns(table.name)}
        narrow = [
            c
            for c in table.columns
            if isinstance(c.type, Integer) and found.get(c.name) in ("INTEGER", "SMALLINT")
        ]
        if not narrow:
            continue
        # one ALTER a table: it rewrites the table once, whatever the columns
        alters = ", ".join(f"ALTER COLUMN {quote(c.name)} TYPE BIGINT" for c in narrow)
        conn.execute(text(f"ALTER TABLE {quote(table.name)} {alters}"))
        for c in narrow:
            if c.primary_key:
                seq = conn.execute(
                    text("SELECT pg_get_serial_sequence(:t, :c)"), {"t": table.name, "c": c.name}
                ).scalar()
                if seq:  # its limit becomes BIGINT's too
                    conn.execute(text(f"ALTER SEQUENCE {seq} AS BIGINT"))


def _v4(conn: Connection) -> None:
    """64-bit integers on PostgreSQL, OOM kills and spec sizes of jobs, a log limit
    per class, and the indexes that per-user caps and paged history read."""
    _widen_integers(conn)
    _add_columns(conn, "jobs", {"oom_kills": "BIGINT", "spec_bytes": "BIGINT NOT NULL DEFAULT 0"})
    _add_columns(conn, "priority_classes", {"log_limit": "BIGINT"})
    conn.execute(text("UPDATE jobs SET spec_bytes = length(spec) WHERE spec_bytes = 0"))
    # "user" is a reserved word in PostgreSQL: quoted
    for name, cols in (
        ("ix_jobs_user_state", '"user", state, spec_bytes'),
        ("ix_jobs_ended_at", "ended_at"),
    ):
        conn.execute(text(f"CREATE INDEX IF NOT EXISTS {name} ON jobs ({cols})"))


def _v5(conn: Connection) -> None:
    """A queue order per class (docs/scheduling.md "Order"): each class a database
    already has gets short-first, the default, as a class of the cluster config does
    that names none (``mlq class set NAME --order fifo`` restores the order of schema
    4). "order" is an SQL keyword: the column is queue_order."""
    _add_columns(conn, "priority_classes", {"queue_order": "TEXT NOT NULL DEFAULT 'short-first'"})


def _v6(conn: Connection) -> None:
    """Many machines (docs/cluster.md): each run's allocation number (its fencing
    token), the launch request a remote node runs, a kill-now stop, and the nodes."""
    _add_columns(
        conn, "jobs", {"epoch": "BIGINT", "launch": "TEXT", "stop_now": "BOOLEAN DEFAULT FALSE"}
    )
    conn.execute(text("UPDATE jobs SET stop_now = FALSE WHERE stop_now IS NULL"))
    SQLModel.metadata.create_all(conn, tables=[models.NodeRow.__table__])
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_jobs_node_state ON jobs (node, state)"))


def _v7(conn: Connection) -> None:
    """Multi-node jobs (docs/scheduling.md "Multi-node jobs"): each part a row, with the
    job's id and its rank; network modes granted by an mlq admin."""
    _add_columns(conn, "jobs", {"gang_id": "BIGINT", "gang_rank": "BIGINT"})
    _add_columns(conn, "grants", {"networks": "TEXT NOT NULL DEFAULT '[]'"})
    conn.execute(text("CREATE INDEX IF NOT EXISTS ix_jobs_gang ON jobs (gang_id)"))


def _v8(conn: Connection) -> None:
    """Each node's topology label, which gang placement reads: a control plane that
    takes over knows the nodes from their rows (their agents do not send it again);
    who held a held job (mlq hold: an owner's hold or an admin's); drained nodes; each
    team's limits per user (mlq team user-limit); the runs of jobs, for accounting
    (mlq report)."""
    _add_columns(conn, "nodes", {"topology": "TEXT NOT NULL DEFAULT ''"})
    _add_columns(conn, "jobs", {"held_by": "TEXT NOT NULL DEFAULT ''"})
    _add_columns(conn, "teams", {"per_user": "TEXT NOT NULL DEFAULT '{}'"})
    SQLModel.metadata.create_all(conn, tables=[models.DrainRow.__table__, models.RunRow.__table__])


def _v9(conn: Connection) -> None:
    """Whether a class's bridge jobs reach outside their node through NAT (docs/
    security.md "Network"; on by default, as Docker's bridge); each team's webhook,
    told when its jobs end or are preempted (docs/daemon.md "Notifications")."""
    _add_columns(conn, "priority_classes", {"nat": "BOOLEAN NOT NULL DEFAULT TRUE"})
    _add_columns(conn, "teams", {"webhook": "TEXT NOT NULL DEFAULT ''"})


STEPS: dict[int, Callable[[Connection], None]] = {
    1: _v1, 2: _v2, 3: _v3, 4: _v4, 5: _v5, 6: _v6, 7: _v7, 8: _v8, 9: _v9,
}  # fmt: skip
SCHEMA_VERSION = max(STEPS)


class SchemaError(MlqError):
    exit_code = 1


def current_version(conn: Connection) -> int:
    has_meta = conn.dialect.has_table(conn, "meta")
    if not has_meta:
        return 0
    row = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).first()
    return int(row[0]) if row else 0


# The key of the PostgreSQL advisory lock taken while the database is set up (any
# number that no other program on the same database uses for one).
_SETUP_LOCK = 0x6D6C71  # "mlq"


def lock_setup(conn: Connection) -> None:
    """Hold, until this transaction ends, the lock that lets one daemon at a time
    migrate or seed the database: several may start at once on one PostgreSQL
    database. (SQLite has one daemon per state dir, and locks the file anyway.)"""
    if conn.dialect.name == "postgresql":
        conn.execute(text("SELECT pg_advisory_xact_lock(:key)"), {"key": _SETUP_LOCK})


def upgrade(engine: Engine) -> int:
    """Bring the database to ``SCHEMA_VERSION``; returns the version found before."""
    with engine.begin() as conn:
        lock_setup(conn)
        found = current_version(conn)
        if found > SCHEMA_VERSION:
            raise SchemaError(
                f"database schema version {found} is newer than this mlq understands "
                f"({SCHEMA_VERSION}); upgrade mlq before starting the server"
            )
        for step in range(found + 1, SCHEMA_VERSION + 1):
            STEPS[step](conn)
            conn.execute(
                text(
                    "INSERT INTO meta (key, value) VALUES ('schema_version', :v) "
                    "ON CONFLICT (key) DO UPDATE SET value = :v"
                ),
                {"v": str(step)},
            )
    return found
