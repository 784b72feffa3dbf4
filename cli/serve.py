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
) -> None:
    """Run the mlq daemon: the API on a Unix socket, the store, the scheduling loop."""
    import logging

    from mlq.scheduler.daemon.serve import ServerPaths, serve

    logging.basicConfig(
        level=log_level.upper(), format="%(asctime)s %(name)s %(levelname)s %(message)s"
    )
    paths = ServerPaths.resolve(state_dir, socket, database_url, config)
    serve(paths, log_level="warning" if log_level == "info" else log_level)


def register(app: typer.Typer) -> None:
    app.command("server")(server)
