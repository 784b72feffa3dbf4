"""Shared fixtures: a real daemon on a real Unix socket, and real Unix users.

Tests that act as another user run the real ``mlq`` CLI in a child process that
drops to that user's uid/gid before it connects, so the daemon identifies it by
SO_PEERCRED exactly as in production.
"""

from __future__ import annotations

import grp
import os
import pwd
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pg_helpers
import pytest
from daemon_helpers import GROUPS, TEST_CLUSTER, USERS, Daemon

# The databases the store runs on: the store and API tests run on each of them.
BACKENDS = ["sqlite", "postgres"]


@pytest.fixture(scope="session")
def unix_users() -> Iterator[dict[str, pwd.struct_passwd]]:
    """Real Unix users: alice and bob (nlp via the mlqt-nlp group and by name),
    carol (nlp's team admin), dave (member of the mlq admin group)."""
    if os.geteuid() != 0:
        pytest.skip("needs root to create test users (useradd)")
    if shutil.which("useradd") is None:
        pytest.skip("needs useradd (Debian's passwd package)")
    made_groups, made_users = [], []
    try:
        for g in GROUPS.values():
            if subprocess.run(["getent", "group", g], capture_output=True).returncode != 0:
                subprocess.run(["groupadd", g], check=True)
                made_groups.append(g)
        extra = {"alice": [GROUPS["nlp"]], "dave": [GROUPS["admins"]]}
        for key, u in USERS.items():
            if subprocess.run(["id", u], capture_output=True).returncode != 0:
                cmd = ["useradd", "--no-create-home", "--shell", "/usr/sbin/nologin", u]
                if extra.get(key):
                    cmd += ["--groups", ",".join(extra[key])]
                subprocess.run(cmd, check=True)
                made_users.append(u)
            # a user left by an earlier session may lack its groups: give them again
            for g in extra.get(key, []):
                if u not in grp.getgrnam(g).gr_mem:
                    subprocess.run(["usermod", "--append", "--groups", g, u], check=True)
        yield {k: pwd.getpwnam(u) for k, u in USERS.items()}
    finally:
        for u in made_users:
            subprocess.run(["userdel", u], capture_output=True)
        for g in made_groups:
            subprocess.run(["groupdel", g], capture_output=True)


@pytest.fixture
def daemon_home() -> Iterator[Path]:
    # Not under pytest's tmp_path: that is 0700, and the test users must reach the socket.
    home = Path(tempfile.mkdtemp(prefix="mlq-test-"))
    home.chmod(0o755)
    (home / "run").mkdir(mode=0o755)
    try:
        yield home
    finally:
        shutil.rmtree(home, ignore_errors=True)


@pytest.fixture(scope="session")
def pg_cluster() -> Iterator[pg_helpers.PgCluster]:
    """A temporary PostgreSQL cluster for the session (tests/pg_helpers.py). Without
    PostgreSQL installed, every test that needs it fails, saying what to install."""
    try:
        cluster, problem = pg_helpers.start_cluster(), None
    except RuntimeError as exc:
        problem = str(exc)
    if problem:
        pytest.fail(problem, pytrace=False)
    try:
        yield cluster
    finally:
        pg_helpers.remove_cluster(cluster)


@pytest.fixture
def pg_database(pg_cluster: pg_helpers.PgCluster) -> Iterator[str]:
    """The URL of a new, empty PostgreSQL database, dropped after the test."""
    url = pg_cluster.database()
    try:
        yield url
    finally:
        pg_cluster.drop(url)


@pytest.fixture(params=BACKENDS)
def database_url(request: pytest.FixtureRequest) -> str | None:
    """An empty database on each backend: None for SQLite in the daemon's state dir
    (the default, no flag), else a fresh PostgreSQL database's URL."""
    if request.param == "sqlite":
        return None
    return request.getfixturevalue("pg_database")


@pytest.fixture
def daemon(daemon_home: Path, unix_users, database_url: str | None) -> Iterator[Daemon]:
    config = daemon_home / "cluster.yaml"
    config.write_text(TEST_CLUSTER)
    d = Daemon(home=daemon_home, config=config, database_url=database_url)
    d.start()
    try:
        yield d
    finally:
        d.stop()
