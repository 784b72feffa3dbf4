"""Which control plane is active: a PostgreSQL advisory lock, held for life, and a term.

Several ``mlq server`` processes may run against one database; each waits for the
session-level advisory lock ``LEADER_LOCK`` on a connection of its own. The one
that gets it raises the ``leader_term`` counter in ``meta`` and serves; the others
keep waiting. The lock is the database's: it goes when its connection goes (the
process died, was killed, or lost the network to the database), so a standby takes
over within one ``poll_s`` of the old leader's end, with no lease to run out.

The term fences: every answer to an agent carries it, and an agent ignores any
answer whose term is lower than one it has seen, so a deposed leader that still
runs (say it was paused) cannot give orders. The leader also checks its lock's
connection before every pass and exits when it is gone (``lost``).
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable

from sqlalchemy import create_engine, text
from sqlalchemy.engine import Connection
from sqlalchemy.pool import NullPool

log = logging.getLogger("mlq.leader")
LEADER_LOCK = 0x6D6C714C  # "mlqL": any number no other program on the database uses


class Leadership:
    def __init__(self, url: str, poll_s: float = 0.2) -> None:
        from mlq.scheduler.store import engine_url

        self.engine = create_engine(engine_url(url), poolclass=NullPool)
        self.poll_s = poll_s
        self.term = 0
        self._conn: Connection | None = None
        self._check = threading.Lock()

    def acquire(
        self, stop: threading.Event | None = None, waiting: Callable[[], None] = lambda: None
    ) -> int:
        """Wait until this process holds the lock; returns its new term."""
        said = False
        while stop is None or not stop.is_set():
            try:
                if self._conn is None:
                    self._conn = self.engine.connect().execution_options(
                        isolation_level="AUTOCOMMIT"
                    )
                got = self._conn.execute(
                    text("SELECT pg_try_advisory_lock(:k)"), {"k": LEADER_LOCK}
                ).scalar()
            except Exception as exc:  # the database is away: try again
                log.warning("waiting for the database to elect a leader: %s", exc)
                self._drop()
                got = False
            if got:
                self.term = self._raise_term()
                log.warning("this control plane is active (term %d)", self.term)
                return self.term
            if not said:
                log.warning("another control plane is active; standing by")
                waiting()
                said = True
            time.sleep(self.poll_s)
        raise InterruptedError("stopped while standing by")

    def _raise_term(self) -> int:
        assert self._conn is not None
        # one statement (the connection autocommits); only the lock's holder runs it
        row = self._conn.execute(
            text(
                "INSERT INTO meta (key, value) VALUES ('leader_term', '1') "
                "ON CONFLICT (key) DO UPDATE "
                "SET value = CAST(CAST(meta.value AS BIGINT) + 1 AS TEXT) RETURNING value"
            )
        ).first()
        return int(row[0]) if row else 1

    def holds(self) -> bool:
        """Whether the lock's connection still lives (so the lock is still ours)."""
        with self._check:
            if self._conn is None:
                return False
            try:
                self._conn.execute(text("SELECT 1"))
                return True
            except Exception:
                self._drop()
                return False

    def _drop(self) -> None:
        if self._conn is not None:
            try:
                self._conn.close()
            except Exception:
                pass
            self._conn = None

    def close(self) -> None:
        self._drop()
        self.engine.dispose()
