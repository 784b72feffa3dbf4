"""A temporary PostgreSQL cluster for the tests, from Debian's ``postgresql`` binaries.

One cluster per test session: ``initdb`` into a fresh temp dir (as the ``postgres``
user when the tests run as root: the server refuses to run as root), ``pg_ctl start``
listening on no TCP address at all, only on a Unix socket in a private dir, and a
fresh database for each test that asks for one. The cluster is stopped and its dir
removed when the session ends, whatever the tests did.
"""

from __future__ import annotations

import glob
import itertools
import os
import pwd
import shutil
import signal
import subprocess
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

MISSING = (
    "PostgreSQL is not installed: the store and API tests run on it too; "
    "install Debian's postgresql package (apt-get install postgresql; scripts/test does)"
)
NO_DRIVER = "psycopg is not installed: pip install -e '.[test]' (scripts/install-venv) brings it"

# The socket is named after the port (.s.PGSQL.<port>) inside a dir only this cluster
# uses, and nothing listens on TCP: any port is free there, so the default will do.
PORT = 5432


def pg_bin_dir() -> Path | None:
    """The newest installed PostgreSQL's binaries (Debian keeps them out of PATH)."""
    found = sorted(
        glob.glob("/usr/lib/postgresql/*/bin/pg_ctl"),
        key=lambda p: int(Path(p).parts[-3]) if Path(p).parts[-3].isdigit() else 0,
    )
    if found:
        return Path(found[-1]).parent
    on_path = shutil.which("pg_ctl")
    return Path(on_path).parent if on_path else None


def _run_as(user: pwd.struct_passwd | None, *cmd: str | Path) -> None:
    kwargs: dict = {}
    if user is not None:
        kwargs = {"user": user.pw_uid, "group": user.pw_gid, "extra_groups": []}
    p = subprocess.run(
        [str(c) for c in cmd],
        capture_output=True,
        text=True,
        timeout=120,
        cwd="/",
        env={"PATH": "/usr/bin:/bin", "LC_ALL": "C"},
        **kwargs,
    )
    if p.returncode != 0:
        raise RuntimeError(f"{Path(str(cmd[0])).name} failed ({p.returncode}): {p.stderr.strip()}")


@dataclass
class PgCluster:
    """A running temporary cluster; ``database()`` hands out fresh, empty databases."""

    bin: Path
    root: Path
    owner: pwd.struct_passwd | None = None  # the postgres user when we are root
    _names: itertools.count = field(default_factory=itertools.count)

    @property
    def data(self) -> Path:
        return self.root / "data"

    @property
    def socket_dir(self) -> Path:
        return self.root / "socket"

    @property
    def role(self) -> str:
        return self.owner.pw_name if self.owner else pwd.getpwuid(os.getuid()).pw_name

    def url(self, database: str = "postgres") -> str:
        """A SQLAlchemy URL of one database, over the private Unix socket."""
        return f"postgresql+psycopg://{self.role}@/{database}?host={self.socket_dir}&port={PORT}"

    def start(self) -> None:
        self.socket_dir.mkdir()
        if self.owner is not None:
            for p in (self.root, self.socket_dir):
                os.chown(p, self.owner.pw_uid, self.owner.pw_gid)
        # trust: only this machine's processes can reach the socket, and only for the
        # session. UTF8 with the C locale: text compares and sorts byte-wise, as SQLite.
        _run_as(
            self.owner,
            self.bin / "initdb",
            "-D",
            self.data,
            "--auth=trust",
            "--encoding=UTF8",
            "--locale=C",
            "--no-sync",
        )
        # durability is not under test here: no fsync, nothing waits for the disk
        opts = (
            f"-c listen_addresses='' -k {self.socket_dir} -p {PORT} "
            "-c fsync=off -c synchronous_commit=off -c full_page_writes=off "
            "-c max_connections=200"
        )
        _run_as(
            self.owner,
            self.bin / "pg_ctl",
            "start",
            "-w",
            "-D",
            self.data,
            "-l",
            self.root / "server.log",
            "-o",
            opts,
        )

    def stop(self) -> None:
        pid_file = self.data / "postmaster.pid"
        if not pid_file.exists():
            return
        try:
            _run_as(
                self.owner, self.bin / "pg_ctl", "stop", "-w", "-m", "immediate", "-D", self.data
            )
        except RuntimeError:
            # the postmaster this cluster started (its pid file's first line), and with
            # it its children, which exit when it does
            os.kill(int(pid_file.read_text().split()[0]), signal.SIGKILL)
            raise

    def _admin(self, sql: str) -> None:
        import psycopg

        dsn = f"host={self.socket_dir} port={PORT} user={self.role} dbname=postgres"
        with psycopg.connect(dsn, autocommit=True) as conn:
            conn.execute(sql)

    def database(self) -> str:
        """A new empty database (copied from template0: no leftovers); returns its URL."""
        name = f"mlq_test_{next(self._names)}"
        self._admin(f'CREATE DATABASE "{name}" TEMPLATE template0')
        return self.url(name)

    def drop(self, url: str) -> None:
        """Drop the database of ``url``, and every connection still open to it."""
        name = url.split("@/", 1)[1].split("?", 1)[0]
        self._admin(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)')


def start_cluster() -> PgCluster:
    """Start a temporary cluster, or raise ``RuntimeError`` with the one line to act on."""
    bin_dir = pg_bin_dir()
    if bin_dir is None or not (bin_dir / "initdb").exists():
        raise RuntimeError(MISSING)
    try:
        import psycopg  # noqa: F401
    except ImportError:
        raise RuntimeError(NO_DRIVER) from None
    owner = None
    if os.geteuid() == 0:
        try:
            owner = pwd.getpwnam("postgres")  # made by Debian's postgresql-common
        except KeyError:
            raise RuntimeError(MISSING + ' (no "postgres" user to run the server as)') from None
    cluster = PgCluster(bin_dir, Path(tempfile.mkdtemp(prefix="mlq-pg-")), owner)
    try:
        cluster.start()
    except BaseException:
        remove_cluster(cluster)
        raise
    return cluster


def remove_cluster(cluster: PgCluster) -> None:
    """Stop the server (at once: nothing in it is kept) and remove its dir."""
    try:
        cluster.stop()
    finally:
        shutil.rmtree(cluster.root, ignore_errors=True)
