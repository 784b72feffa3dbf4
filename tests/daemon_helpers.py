"""Helpers for tests that run a real daemon: its process, its CLI as any user."""

from __future__ import annotations

import json
import os
import pwd
import signal
import subprocess
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

from mlq.scheduler.store import sqlite_url
from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url
from sqlalchemy.pool import NullPool

ROOT = Path(__file__).resolve().parent.parent
MLQ = str(Path(sys.executable).parent / "mlq")

# Test users and groups, created for the session and removed after it.
USERS = {"alice": "mlqt-alice", "bob": "mlqt-bob", "carol": "mlqt-carol", "dave": "mlqt-dave"}
GROUPS = {"nlp": "mlqt-nlp", "admins": "mlqt-admins"}


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self) -> object:
        return json.loads(self.out)


TEST_CLUSTER = f"""
# 8 GPUs, cordoned: jobs are accepted (a node could hold them) and stay PENDING
node:
  name: testnode
  cpus: 16
  memory: 64Gi
  schedulable: false
  gpus: declared
  declared_gpus: [{", ".join(f"{{index: {i}, model: H100-80GB}}" for i in range(8))}]
admin_group: {GROUPS["admins"]}
teams:
  - name: nlp
    members: [{USERS["bob"]}, "@{GROUPS["nlp"]}"]
    admins: [{USERS["carol"]}]
    guarantee: {{gpu: 4}}
    limit: {{gpu: 8}}
  - name: cv
    members: [{USERS["carol"]}]
    guarantee: {{gpu: 2}}
    limit: {{gpu: 4}}
"""


@dataclass
class Daemon:
    """A running ``mlq server`` with its own state dir, socket and config, on SQLite in
    its state dir (``database_url`` None, the default) or on the database of a URL."""

    home: Path
    config: Path
    database_url: str | None = None
    proc: subprocess.Popen | None = None
    extra_env: dict[str, str] = field(default_factory=dict)

    @property
    def socket(self) -> Path:
        return self.home / "run" / "mlq.sock"

    @property
    def state_dir(self) -> Path:
        return self.home / "state"

    @property
    def db(self) -> Path:
        """The SQLite file, when the daemon runs on SQLite."""
        return self.state_dir / "mlq.db"

    @property
    def url(self) -> str:
        """The SQLAlchemy URL of the daemon's database, whichever it is."""
        return self.database_url or sqlite_url(self.state_dir)

    @property
    def backend(self) -> str:
        """The database the daemon runs on: "sqlite" or "postgresql"."""
        return make_url(self.url).get_backend_name()

    def env(self) -> dict[str, str]:
        env = dict(os.environ)
        env.update({"MLQ_SOCKET": str(self.socket), "MLQ_STATE_DIR": str(self.state_dir)})
        env.update(self.extra_env)
        return env

    def start(self) -> None:
        log = open(self.home / "server.log", "ab")  # noqa: SIM115 (kept by the child)
        self.proc = subprocess.Popen(
            [MLQ, "server", "--config", str(self.config), "--log-level", "info"]
            + (["--database-url", self.database_url] if self.database_url else []),
            env=self.env(),
            stdout=log,
            stderr=subprocess.STDOUT,
            start_new_session=True,
        )
        deadline = time.monotonic() + 20
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"mlq server exited: {(self.home / 'server.log').read_text()}")
            if self.socket.exists() and self.cli("whoami").code == 0:
                return
            time.sleep(0.05)
        raise RuntimeError(f"mlq server did not answer: {(self.home / 'server.log').read_text()}")

    def stop(self, sig: int = signal.SIGTERM) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.send_signal(sig)
            try:
                self.proc.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()
        self.proc = None

    def cli(
        self,
        *args: str,
        user: pwd.struct_passwd | None = None,
        timeout: float = 60,
        cwd: Path | None = None,
    ) -> Result:
        """Run the real ``mlq`` CLI, as root or dropped to ``user`` before it connects."""
        kwargs: dict = {}
        if user is not None:
            kwargs = {
                "user": user.pw_uid,
                "group": user.pw_gid,
                "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid),
            }
        p = subprocess.run(
            [MLQ, *args],
            env=self.env() | {"HOME": "/tmp"},
            capture_output=True,
            text=True,
            timeout=timeout,
            cwd=str(cwd or self.home),
            **kwargs,
        )
        return Result(p.returncode, p.stdout, p.stderr)

    def job_file(self, name: str, text: str) -> Path:
        path = self.home / name
        path.write_text(text)
        path.chmod(0o644)
        return path

    def sql(self, statement: str, **params: object) -> list[tuple]:
        """Run one SQL statement on the daemon's database, on SQLite or PostgreSQL alike,
        and commit; returns its rows (none for a statement that returns none)."""
        engine = create_engine(self.url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def rows(self, table: str = "jobs") -> int:
        return self.sql(f"SELECT count(*) FROM {table}")[0][0]
