"""``mlq checkpoints list|prune``: this node's checkpoint volumes, kept while their
jobs can still run and for ``checkpoint_retention`` after they end (mlq admins)."""

from typing import Annotated, Any

import typer
from mlq.cli.client import Client
from mlq.cli.jobs import JsonOpt, SocketOpt
from mlq.cli.output import console, local_time, print_json, table

app = typer.Typer(
    help="Checkpoint volumes: list them, prune finished jobs' (mlq admins).",
    no_args_is_help=True,
)

# what each fate means to a reader, in the list's GOES column
GOES = {
    "active": "kept: the job can still run",
    "unowned": "kept until pruned (no such job)",
    "due": "at the next sweep",
}


def _size(n: int | None) -> str:
    from mlq.executor.units import human_size

    return "" if n is None else human_size(n)


def _goes(c: dict[str, Any]) -> str:
    if c["fate"] == "retained":
        return local_time(c["removes_at"]) if c["removes_at"] else "never (no retention)"
    return GOES.get(c["fate"], c["fate"])


@app.command("list")
def list_(
    no_sizes: Annotated[
        bool, typer.Option("--no-sizes", help="Skip the sizes (they walk every file)")
    ] = False,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Each checkpoint volume on every node: its node, job, owner, state, when the
    job ended, its size and when it will be removed (mlq admins)."""
    resp = Client(sock).get("/v1/checkpoints", sizes=not no_sizes)
    if json_out:
        print_json(resp)
        return
    from mlq.executor.units import format_duration

    rows = [
        [
            c["job_id"] if c["job_id"] is not None else c["key"],
            c["node"],
            c["user"] or "",
            c["team"] or "",
            c["state"] or "",
            local_time(c["ended_at"]),
            _size(c["bytes"]),
            _goes(c),
        ]
        for c in resp["checkpoints"]
    ]
    keep = resp["retention_s"]
    kept = "for ever" if keep is None else f"for {format_duration(int(keep))}"
    title = f"Checkpoint volumes (kept {kept} after their job ends)"
    columns = ["JOB", "NODE", "USER", "TEAM", "STATE", "ENDED", "SIZE", "REMOVED"]
    console().print(table(columns, rows, title=title))


@app.command("prune")
def prune(
    jobs: Annotated[
        list[int] | None, typer.Argument(help="Only these jobs' volumes (each must have ended)")
    ] = None,
    older_than: Annotated[
        str | None,
        typer.Option(
            "--older-than",
            help="Jobs that ended longer ago than this (1d, 12h); default: those past "
            "the retention",
        ),
    ] = None,
    json_out: JsonOpt = False,
    sock: SocketOpt = None,
) -> None:
    """Remove checkpoint volumes now: those past the retention, those of jobs that
    ended longer ago than --older-than, or the named jobs'. A volume whose job can
    still run (pending, running, requeued) is never removed (mlq admins)."""
    from mlq.executor.units import parse_duration
    from mlq.scheduler.errors import InvalidInput

    body: dict[str, Any] = {"jobs": jobs or []}
    if older_than is not None:
        try:
            body["older_than_s"] = parse_duration(older_than)
        except ValueError as exc:
            raise InvalidInput(f'--older-than: "{older_than}" {exc}') from None
    resp = Client(sock).post("/v1/checkpoints/prune", body)
    if json_out:
        print_json(resp)
        return
    removed = resp["removed"]
    if not removed:
        typer.echo("No checkpoint volume to remove")
        return
    names = ", ".join(str(c["job_id"] if c["job_id"] is not None else c["key"]) for c in removed)
    what = "volume" if len(removed) == 1 else "volumes"
    typer.echo(f"Removed {len(removed)} checkpoint {what} ({names}): {_size(resp['bytes'])} freed")


def register(root: typer.Typer) -> None:
    root.add_typer(app, name="checkpoints")
