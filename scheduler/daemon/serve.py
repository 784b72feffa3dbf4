"""Starting the daemon: paths, the store, first-start seeding, the socket, uvicorn.

Paths come from flags, then ``MLQ_STATE_DIR`` / ``MLQ_SOCKET`` / ``MLQ_CONFIG`` /
``MLQ_DATABASE_URL``, then the defaults below. One daemon per state dir: a lock
file refuses a second one, and a stale socket left by a killed daemon is replaced.
"""

from __future__ import annotations

import fcntl
import logging
import os
import signal
import socket
from dataclasses import dataclass
from pathlib import Path

from mlq.executor.interface import LocalExecutor
from mlq.scheduler.clock import SystemClock
from mlq.scheduler.cluster import ClusterConfig, load_cluster
from mlq.scheduler.daemon.view import NodeView
from mlq.scheduler.errors import MlqError
from mlq.scheduler.grants import forbidden_paths
from mlq.scheduler.paths import DEFAULT_CONFIGS, DEFAULT_SOCKET, DEFAULT_STATE_DIR
from mlq.scheduler.store import Store, sqlite_url

log = logging.getLogger("mlq.server")


@dataclass
class ServerPaths:
    state_dir: Path
    socket: Path
    database_url: str
    config: Path | None

    @classmethod
    def resolve(
        cls,
        state_dir: str | None = None,
        socket_path: str | None = None,
        database_url: str | None = None,
        config: str | None = None,
    ) -> ServerPaths:
        sd = Path(state_dir or os.environ.get("MLQ_STATE_DIR") or DEFAULT_STATE_DIR)
        sock = Path(socket_path or os.environ.get("MLQ_SOCKET") or DEFAULT_SOCKET)
        url = database_url or os.environ.get("MLQ_DATABASE_URL") or sqlite_url(sd)
        cfg = config or os.environ.get("MLQ_CONFIG")
        if cfg is None:
            cfg = next((c for c in DEFAULT_CONFIGS if Path(c).exists()), None)
        return cls(sd, sock, url, Path(cfg) if cfg else None)


class ServerError(MlqError):
    exit_code = 1


def _lock_state_dir(state_dir: Path) -> int:
    # root's alone: the database, the runs' logs, requests and checkpoint volumes
    # below it are never reached by path by anyone else (the API serves them)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    os.chmod(state_dir, 0o700)
    fd = os.open(state_dir / "daemon.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise ServerError(
            f"another mlq server is running on state dir {state_dir}; stop it first"
        ) from None
    os.ftruncate(fd, 0)
    os.write(fd, f"{os.getpid()}\n".encode())
    return fd


def _clear_stale_socket(path: Path) -> None:
    if not path.exists():
        path.parent.mkdir(parents=True, exist_ok=True)
        return
    probe = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
    try:
        probe.connect(str(path))
    except OSError:
        path.unlink()  # left by a daemon that died: nobody answers on it
    else:
        raise ServerError(f"another mlq server answers on {path}; stop it or use --socket")
    finally:
        probe.close()


def _become_subreaper() -> None:
    """Adopt orphaned descendants (e.g. a job's init whose supervisor was killed):
    PID 1 on some hosts never reaps them, and the loop reaps what it adopts."""
    import ctypes

    pr_set_child_subreaper = 36
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.prctl(pr_set_child_subreaper, 1, 0, 0, 0) != 0:
        log.warning("could not become a child subreaper: errno %d", ctypes.get_errno())


def open_store(paths: ServerPaths) -> tuple[Store, ClusterConfig]:
    """The store, seeded from the cluster config at first start."""
    cluster = load_cluster(paths.config) if paths.config else ClusterConfig()
    store = Store(paths.database_url)
    db = paths.state_dir / "mlq.db"
    for f in (db, db.with_name("mlq.db-wal"), db.with_name("mlq.db-shm")):
        if f.exists():
            os.chmod(f, 0o600)  # SQLite makes its files with the process's umask
    if not store.is_seeded():
        store.seed(cluster)
        log.info(
            "first start: loaded teams, quotas and classes from %s", paths.config or "defaults"
        )
    return store, cluster


def serve(paths: ServerPaths, log_level: str = "warning") -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT."""
    import uvicorn
    from mlq.scheduler.daemon.app import Daemon, build_app
    from mlq.scheduler.daemon.loop import Loop
    from mlq.scheduler.daemon.peer import PeerCredProtocol

    lock_fd = _lock_state_dir(paths.state_dir)
    _become_subreaper()
    store, cluster = open_store(paths)
    _clear_stale_socket(paths.socket)
    executor = LocalExecutor(paths.state_dir, cluster.node)
    loop = Loop(
        store,
        executor,
        SystemClock(),
        cluster,
        node_view(cluster, executor),
        str(paths.state_dir),
        forbidden=forbidden_paths(str(paths.state_dir), str(paths.socket)),
        safety_interval=float(os.environ.get("MLQ_SCHEDULE_INTERVAL", "5")),
    )
    daemon = Daemon(store, cluster.admin_group)
    daemon.forbidden = loop.forbidden
    daemon.nodes = lambda: [loop.node.snapshot_node()]
    daemon.loop = loop
    daemon.executor = executor
    daemon.on_change = loop.ask
    daemon.stop_running = loop.cancel_running
    app = build_app(daemon)
    loop.start()
    config = uvicorn.Config(
        app,
        uds=str(paths.socket),
        http=PeerCredProtocol,
        loop="uvloop",
        log_level=log_level,
        access_log=False,
        lifespan="off",
    )
    server = uvicorn.Server(config)
    # uvicorn re-raises the signal that stopped it once it has shut down; with the
    # default handlers that would end the process before the clean-up below runs.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        server.run()
    finally:
        loop.stop()  # running jobs keep running under their supervisors
        executor.close()  # and mlq's idle parent cgroups go
        store.close()
        os.close(lock_fd)


def node_view(cluster: ClusterConfig, executor: LocalExecutor) -> NodeView:
    """This node: CPUs and memory from the config (or the machine), GPUs from the
    executor (NVML, or the config's declared list, never both)."""
    gpus = executor.inventory()
    log.info("node %s: %s", cluster.node.name, gpus.summary())
    return NodeView(
        name=cluster.node.name,
        cpus=cluster.node.cpu_millicores(),
        memory=cluster.node.memory_bytes(),
        gpus=gpus,
        schedulable=cluster.node.schedulable,
    )
