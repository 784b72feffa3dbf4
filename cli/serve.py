"""``mlq server``: run the daemon in the foreground."""

from typing import Annotated

import typer


def server(
    socket: Annotated[
        str | None,
        typer.Option("--socket", envvar="MLQ_SOCKET", help="[default: /run/mlq/mlq.sock]"),
    ] = None,
    state_dir: Annotated[
        str | None,
        typer.Option("--state-dir", envvar="MLQ_STATE_DIR", help="[default: /var/lib/mlq]"),
    ] = None,
    database_url: Annotated[
        str | None,
        typer.Option(
            "--database-url",
            envvar="MLQ_DATABASE_URL",
            help="SQLAlchemy URL; default: SQLite in the state dir (postgresql://... also works)",
        ),
    ] = None,
    config: Annotated[
        str | None,
        typer.Option(
            "--config",
            envvar="MLQ_CONFIG",
            help="Cluster config, loaded into the store at first start [default: /etc/mlq/cluster.yaml]",
        ),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")] = "info",
    listen: Annotated[
        str | None,
        typer.Option(
            "--listen",
            envvar="MLQ_LISTEN",
            help="HOST:PORT for agents (mutual TLS): run as a cluster's control plane",
        ),
    ] = None,
    pki_dir: Annotated[
        str, typer.Option("--pki", envvar="MLQ_PKI", help="The cluster CA and this server's cert")
    ] = "/etc/mlq/pki",
    run_node: Annotated[
        bool, typer.Option("--run-node/--no-run-node", help="With --listen: run jobs here too")
    ] = False,
    lease: Annotated[
        float, typer.Option("--lease", help="Seconds without a heartbeat before a node is down")
    ] = 30.0,
    heartbeat: Annotated[float, typer.Option("--heartbeat", help="Agents' sync interval, s")] = 2.0,
    admin_node: Annotated[
        list[str] | None,
        typer.Option("--admin-node", help="A node whose root and mlq admins count as such"),
    ] = None,
    metrics_address: Annotated[
        str | None,
        typer.Option(
            "--metrics-address",
            envvar="MLQ_METRICS_ADDRESS",
            help="HOST:PORT to serve Prometheus metrics on (off by default; docs/metrics.md)",
        ),
    ] = None,
    dashboard_address: Annotated[
        str | None,
        typer.Option(
            "--dashboard-address",
            envvar="MLQ_DASHBOARD_ADDRESS",
            help="HOST:PORT to serve the web dashboard on (off by default; docs/dashboard.md)",
        ),
    ] = None,
) -> None:
    """Run the mlq daemon: the API on a Unix socket, the store, the scheduling loop;
    with --listen, the control plane of a cluster of agents (docs/cluster.md)."""
    import logging
    from pathlib import Path

    from mlq.scheduler.daemon.serve import ClusterOptions, ServerPaths, serve

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    if metrics_address is not None:
        from mlq.scheduler.daemon.metrics import parse_address
        from mlq.scheduler.errors import InvalidInput

        try:
            parse_address(metrics_address)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    if dashboard_address is not None:
        from mlq.scheduler.daemon.dashboard import parse_address as parse_dashboard
        from mlq.scheduler.errors import InvalidInput

        try:
            parse_dashboard(dashboard_address)
        except ValueError as exc:
            raise InvalidInput(str(exc)) from None
    paths = ServerPaths.resolve(state_dir, socket, database_url, config)
    opts = None
    if listen:
        if lease <= 2 * heartbeat:
            raise typer.BadParameter(f"--lease {lease:g} must be more than twice --heartbeat")
        opts = ClusterOptions(
            listen, Path(pki_dir), run_node, lease, heartbeat, frozenset(admin_node or ())
        )
    serve(
        paths,
        log_level="warning" if log_level == "info" else log_level,
        cluster_opts=opts,
        metrics_address=metrics_address,
        dashboard_address=dashboard_address,
    )


def agent(
    name: Annotated[str, typer.Option("--name", help="This node's name (its certificate's)")],
    server: Annotated[
        list[str],
        typer.Option("--server", help="https://HOST:PORT of a control plane (repeat for standbys)"),
    ],
    pki_dir: Annotated[
        str, typer.Option("--pki", envvar="MLQ_PKI", help="ca.crt, NAME.crt and NAME.key")
    ] = "/etc/mlq/pki",
    state_dir: Annotated[
        str, typer.Option("--state-dir", envvar="MLQ_STATE_DIR", help="Runs and checkpoints")
    ] = "/var/lib/mlq",
    socket: Annotated[
        str, typer.Option("--socket", envvar="MLQ_SOCKET", help="Users' socket on this node")
    ] = "/run/mlq/mlq.sock",
    config: Annotated[
        str | None,
        typer.Option("--config", help="A node config (node: cpus, memory, gpus) for this node"),
    ] = None,
    log_level: Annotated[str, typer.Option("--log-level", help="debug, info, warning")] = "info",
) -> None:
    """Run this node of a cluster: the jobs the control plane orders, and the users' socket."""
    import logging
    import os
    from pathlib import Path

    # several agents on one machine (tests) keep their cgroups apart
    os.environ.setdefault("MLQ_CGROUP_PARENT", f"mlq-{name}")
    from mlq.scheduler.daemon.serve import serve_agent

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    serve_agent(
        name, list(server), Path(pki_dir), Path(state_dir), Path(socket),
        Path(config) if config else None,
        log_level="warning" if log_level == "info" else log_level,
    )  # fmt: skip


cluster_app = typer.Typer(help="A cluster's certificates: its CA, the control plane's, nodes'")


@cluster_app.command("init")
def cluster_init(
    address: Annotated[
        list[str],
        typer.Option("--address", help="An IP or DNS name agents reach the control plane at"),
    ],
    pki_dir: Annotated[str, typer.Option("--pki", envvar="MLQ_PKI")] = "/etc/mlq/pki",
) -> None:
    """Create the cluster CA and the control plane's certificate (once, as root)."""
    from pathlib import Path

    from mlq.scheduler import pki

    d = Path(pki_dir)
    pki.init_ca(d)
    pki.issue(d, d, "control-plane", "control-plane", sans=list(address))
    typer.echo(f"made {d}/ca.crt and {d}/control-plane.crt for {', '.join(address)}")


@cluster_app.command("add-node")
def cluster_add_node(
    name: Annotated[str, typer.Argument(help="The node's name")],
    out: Annotated[str, typer.Option("--out", help="Where to write NAME.key, NAME.crt, ca.crt")],
    pki_dir: Annotated[str, typer.Option("--pki", envvar="MLQ_PKI")] = "/etc/mlq/pki",
) -> None:
    """Enrol a node: its key and certificate, to copy to the node's --pki dir."""
    from pathlib import Path

    from mlq.scheduler import pki

    cert, key = pki.issue(Path(pki_dir), Path(out), name, "node")
    typer.echo(f"made {key} and {cert}; copy {out} to the node as its --pki dir")


def register(app: typer.Typer) -> None:
    app.command("server")(server)
    app.command("agent")(agent)
    app.add_typer(cluster_app, name="cluster")
