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


@dataclass
class ClusterOptions:
    """``mlq server --listen``: a control plane for agents (docs/cluster.md)."""

    listen: str  # host:port of the mutual-TLS port agents connect to
    pki: Path  # ca.crt, and this control plane's control-plane.crt/.key
    run_node: bool = False  # also run jobs on this machine (its own node)
    lease_s: float = 30.0
    heartbeat_s: float = 2.0
    admin_nodes: frozenset[str] = frozenset()


def serve(
    paths: ServerPaths,
    log_level: str = "warning",
    cluster_opts: ClusterOptions | None = None,
    metrics_address: str | None = None,
    dashboard_address: str | None = None,
) -> None:
    """Run the daemon in the foreground until SIGTERM/SIGINT; ``metrics_address``:
    serve Prometheus metrics there (docs/metrics.md); ``dashboard_address``: the web
    dashboard (docs/dashboard.md)."""
    import uvicorn
    from mlq.scheduler.daemon.app import Daemon, build_app
    from mlq.scheduler.daemon.loop import Loop
    from mlq.scheduler.daemon.notify import Notifier
    from mlq.scheduler.daemon.peer import PeerCredProtocol

    lock_fd = _lock_state_dir(paths.state_dir)
    _become_subreaper()
    leadership = None
    if cluster_opts is not None and not paths.database_url.startswith("sqlite"):
        from mlq.scheduler.daemon.leader import Leadership
        from mlq.scheduler.store import Store

        Store(paths.database_url).close()  # the schema, before the term is kept in it
        leadership = Leadership(paths.database_url)
        leadership.acquire()  # a standby waits here, serving nothing
    store, cluster = open_store(paths)
    _clear_stale_socket(paths.socket)
    run_node = cluster_opts is None or cluster_opts.run_node
    executor = LocalExecutor(paths.state_dir, cluster.node) if run_node else None
    forbidden = forbidden_paths(str(paths.state_dir), str(paths.socket))
    interval = float(os.environ.get("MLQ_SCHEDULE_INTERVAL", "5"))
    if cluster_opts is not None:
        interval = min(interval, cluster_opts.heartbeat_s)  # leases are checked in passes
    loop = Loop(
        store,
        executor,
        SystemClock(),
        cluster,
        node_view(cluster, executor) if executor is not None else None,
        str(paths.state_dir),
        forbidden=forbidden,
        safety_interval=interval,
    )
    # told of every job that ends or is preempted, from the commit on (recovery's too)
    notifier = Notifier(store, cluster.notifications)
    store.listeners.append(notifier.tell)
    notifier.start()
    daemon = Daemon(store, cluster.admin_group)
    daemon.webhook_rules = notifier.rules
    daemon.forbidden = loop.forbidden
    daemon.nodes = lambda: [s.view.snapshot_node() for s in loop.nodes.all()]
    daemon.loop = loop
    daemon.on_change = loop.ask
    daemon.stop_running = loop.cancel_running
    daemon.requeue_running = loop.requeue_running
    # every node's checkpoint volumes (this machine's, and in a cluster each agent's):
    # swept after their retention, at most every MLQ_CHECKPOINT_SWEEP_INTERVAL seconds
    # (60), after a pass
    from mlq.scheduler.daemon.checkpoints import Checkpoints

    daemon.checkpoints = Checkpoints(
        store,
        lambda: [(s.name, s.executor.volumes) for s in loop.nodes.all() if s.up],
        loop.clock,
        cluster.checkpoint_retention,
        float(os.environ.get("MLQ_CHECKPOINT_SWEEP_INTERVAL", "60")),
    )
    loop.after_pass.append(lambda *_: daemon.checkpoints.tick())
    if cluster_opts is not None:
        from mlq.scheduler.daemon.fleet import Fleet

        daemon.fleet = Fleet(
            loop,
            lease_s=cluster_opts.lease_s,
            heartbeat_s=cluster_opts.heartbeat_s,
            term=leadership.term if leadership else 1,
        )
        daemon.admin_nodes = cluster_opts.admin_nodes
    if leadership is not None:
        loop.before_pass.insert(0, lambda: _still_leader(leadership))
    app = build_app(daemon)
    dashboard = None
    if dashboard_address:
        from mlq.scheduler.daemon.dashboard import Dashboard

        dashboard = Dashboard(app, daemon, dashboard_address)
        loop.after_pass.append(dashboard.after_pass)
    metrics_server = None
    if metrics_address:
        from mlq.scheduler.daemon import metrics

        m = metrics.Metrics(store, loop)
        loop.after_pass.append(m.after_pass)
        metrics_server = metrics.serve(m, metrics_address)
    loop.start()
    exec_server = None
    if executor is not None:  # mlq exec into this node's jobs (execserver.py)
        from mlq.scheduler.daemon.execserver import ExecServer, daemon_target
        from mlq.scheduler.paths import exec_socket_path

        exec_server = ExecServer(
            exec_socket_path(str(paths.socket)), daemon_target(store, loop), cluster.admin_group
        )
        exec_server.start()
    servers = [
        uvicorn.Server(
            uvicorn.Config(
                app, uds=str(paths.socket), http=PeerCredProtocol, loop="uvloop",
                log_level=log_level, access_log=False, lifespan="off",
            )
        )
    ]  # fmt: skip
    if cluster_opts is not None:
        servers.append(_tls_server(app, cluster_opts, log_level))
    if dashboard is not None:
        servers.append(dashboard.server(log_level))
    # uvicorn re-raises the signal that stopped it once it has shut down; with the
    # default handlers that would end the process before the clean-up below runs.
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        run_servers(servers)
    finally:
        if metrics_server is not None:
            metrics_server.shutdown()
        if exec_server is not None:
            exec_server.stop()  # commands it started run on, as their jobs do
        loop.stop()  # running jobs keep running under their supervisors
        notifier.stop()  # what it had not sent is lost (docs/notifications.md)
        if executor is not None:
            executor.close()  # and mlq's idle parent cgroups go
        store.close()
        if leadership is not None:
            leadership.close()
        os.close(lock_fd)


def _still_leader(leadership: object) -> None:
    """Before every pass: a control plane whose lock is gone stops at once (a standby
    has it, or will): it must not start or stop anything more."""
    if not leadership.holds():  # type: ignore[attr-defined]
        log.critical("this control plane lost its leader lock; exiting")
        os._exit(3)


def _tls_server(app: object, opts: ClusterOptions, log_level: str) -> object:
    import uvicorn
    from mlq.scheduler import pki, wire
    from mlq.scheduler.daemon.peer import PeerCredProtocol

    host, _, port = opts.listen.rpartition(":")
    cert, key, ca = (opts.pki / n for n in ("control-plane.crt", "control-plane.key", "ca.crt"))
    for f in (cert, key, ca):
        if not f.exists():
            raise ServerError(f"{f} is missing: run mlq cluster init --pki {opts.pki} first")
    config = uvicorn.Config(
        app,  # type: ignore[arg-type]
        host=host or "0.0.0.0",
        port=int(port),
        http=PeerCredProtocol,
        loop="uvloop",
        log_level=log_level,
        access_log=False,
        lifespan="off",
        timeout_keep_alive=int(wire.KEEP_ALIVE_S),  # agents reuse connections below it
        ssl_certfile=str(cert),  # uvicorn wants one to know it is TLS; the factory decides
        ssl_context_factory=lambda _config, _default: pki.server_context(cert, key, ca),
    )
    return uvicorn.Server(config)


def run_servers(servers: list[object]) -> None:
    """Serve every server on one event loop until SIGTERM/SIGINT."""
    import asyncio
    import contextlib

    import uvloop

    async def main() -> None:
        loop = asyncio.get_running_loop()

        def stop() -> None:
            for s in servers:
                s.should_exit = True  # type: ignore[attr-defined]

        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.add_signal_handler(sig, stop)
        for s in servers:
            s.capture_signals = contextlib.nullcontext  # type: ignore[attr-defined]
        await asyncio.gather(*(s.serve() for s in servers))  # type: ignore[attr-defined]

    uvloop.run(main())


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
        topology=cluster.node.topology,
    )


def serve_agent(
    name: str,
    servers: list[str],
    pki_dir: Path,
    state_dir: Path,
    socket_path: Path,
    config: Path | None,
    log_level: str = "warning",
) -> None:
    """``mlq agent``: this node of a cluster, until SIGTERM/SIGINT (its runs go on)."""
    import threading

    import uvicorn
    from mlq.scheduler import pki
    from mlq.scheduler.daemon.agent import Agent, AgentConfig
    from mlq.scheduler.daemon.agentproxy import proxy_app
    from mlq.scheduler.daemon.peer import PeerCredProtocol

    cert, key, ca = pki_dir / f"{name}.crt", pki_dir / f"{name}.key", pki_dir / "ca.crt"
    for f in (cert, key, ca):
        if not f.exists():
            raise ServerError(
                f"{f} is missing: on the control plane, mlq cluster add-node {name} "
                f"--out DIR, then copy DIR to {pki_dir} here"
            )
    got = pki.identity_of(cert.read_bytes())
    if got.name != name or got.role != "node":
        raise ServerError(f"{cert} is {got.role} {got.name!r}'s certificate, not node {name!r}'s")
    lock_fd = _lock_state_dir(state_dir)
    _become_subreaper()
    cluster = load_cluster(config) if config else ClusterConfig()
    node = cluster.node.model_copy(update={"name": name})
    executor = LocalExecutor(state_dir, node)
    cfg = AgentConfig(
        name=name, servers=servers, ca=ca, cert=cert, key=key, state_dir=state_dir,
        socket=socket_path, cpus=node.cpu_millicores(), memory=node.memory_bytes(),
        topology=node.topology, bridge=node.bridge.name, bridge_subnet=node.bridge.subnet,
    )  # fmt: skip
    agent = Agent(cfg, executor)
    log.info("node %s: %s", name, executor.inventory().summary())
    worker = threading.Thread(target=agent.run, name="mlq-agent", daemon=True)
    worker.start()
    _clear_stale_socket(socket_path)
    from mlq.scheduler.daemon.execserver import ExecServer
    from mlq.scheduler.paths import exec_socket_path

    # mlq exec into this node's jobs; no admin group counts here (a node's admins are
    # not the cluster's): their owners, and root of this node
    exec_server = ExecServer(exec_socket_path(str(socket_path)), agent.exec_target, "")
    server = uvicorn.Server(
        uvicorn.Config(
            proxy_app(agent.link), uds=str(socket_path), http=PeerCredProtocol, loop="uvloop",
            log_level=log_level, access_log=False, lifespan="off",
        )
    )  # fmt: skip
    for sig in (signal.SIGTERM, signal.SIGINT):
        signal.signal(sig, lambda *_: None)
    try:
        os.umask(0o022)
        exec_server.start()
        run_servers([server])
    finally:
        exec_server.stop()
        agent.stop()
        executor.close()
        os.close(lock_fd)
