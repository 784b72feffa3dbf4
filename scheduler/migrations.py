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
from sqlalchemy import text
from sqlalchemy.engine import Connection, Engine
from sqlmodel import SQLModel


def _v1(conn: Connection) -> None:
    SQLModel.metadata.create_all(conn)


STEPS: dict[int, Callable[[Connection], None]] = {1: _v1}
SCHEMA_VERSION = max(STEPS)


class SchemaError(MlqError):
    exit_code = 1


def current_version(conn: Connection) -> int:
    has_meta = conn.dialect.has_table(conn, "meta")
    if not has_meta:
        return 0
    row = conn.execute(text("SELECT value FROM meta WHERE key = 'schema_version'")).first()
    return int(row[0]) if row else 0


def upgrade(engine: Engine) -> int:
    """Bring the database to ``SCHEMA_VERSION``; returns the version found before."""
    with engine.begin() as conn:
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
