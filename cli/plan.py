"""``mlq plan`` (one scheduling decision on a described state) and ``mlq simulate``
(a whole workload trace replayed through the same policy). Neither needs a daemon.

Top-level imports stay typer + stdlib: the policy, pydantic and rich load inside.
"""

from __future__ import annotations

import importlib.util
import json
import sys
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, TextIO

import typer

if TYPE_CHECKING:
    from mlq.scheduler.simulate import Progress


def plan(
    scenario: Annotated[Path, typer.Argument(help="Scenario file (docs/scenario-format.md).")],
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON.")] = False,
) -> None:
    """Show which jobs would start where, which would be preempted, and why the rest wait."""
    from mlq.scheduler.policy import decide
    from mlq.scheduler.scenario import load_scenario

    decisions = decide(load_scenario(scenario)).to_json()
    if as_json:
        print(json.dumps(decisions))
        return
    for s in decisions["start"]:
        if "mig" in s:
            where = ", ".join(f"GPU {m['gpu']} {m['profile']}@{m['start']}" for m in s["mig"])
        else:
            where = "GPUs " + ",".join(map(str, s["gpus"])) if s["gpus"] else "no GPUs"
        print(f"start    {s['job']} on {s['node']}: {where}")
    for p in decisions["preempt"]:
        print(f"preempt  {p['job']} for {p['for']}")
    for p in decisions["pending"]:
        print(f"pending  {p['job']}: {p['reason']}")
    if not any(decisions.values()):
        print("nothing to decide")


def simulate(
    trace: Annotated[Path, typer.Option("--trace", help="Trace CSV (or a Philly CSV).")],
    cluster: Annotated[Path, typer.Option("--cluster", help="Simulated cluster YAML.")],
    policy: Annotated[
        str,
        typer.Option(
            "--policy",
            help="Policies to replay, separated by commas, each compared with the first: "
            "default, short-first, fifo-order, fifo.",
        ),
    ] = "default,fifo",
    days: Annotated[
        float | None, typer.Option("--days", help="Only jobs submitted in the first N days.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Start the trace here: seconds, or a date for Philly."),
    ] = None,
    plot: Annotated[
        Path | None,
        typer.Option(
            "--plot",
            help="Also draw queue length, GPUs busy and each team's use over time "
            "to this PNG or SVG (needs mlq[plot]).",
        ),
    ] = None,
    fold: Annotated[
        bool,
        typer.Option(
            "--fold",
            help="Fold a Philly job wider than a node onto one node (its GPU-time kept) "
            "instead of running it on several.",
        ),
    ] = False,
    runs: Annotated[
        Path | None,
        typer.Option(
            "--runs",
            help="Write every run (JSON lines, as the daemon records them) to this file, "
            "for mlq report --runs; with several policies, FILE.<policy> for each after the first.",
        ),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON.")] = False,
) -> None:
    """Replay a trace through several policies; print them side by side with ratios."""
    from mlq.scheduler.errors import InvalidInput, MlqError
    from mlq.scheduler.simreport import format_comparison, parse_policies, replay, report
    from mlq.scheduler.simulate import load_sim_cluster
    from mlq.scheduler.traces import load_trace

    # 1. everything that can be refused, before minutes of simulation
    policies = parse_policies(policy)
    if plot is not None:
        if plot.suffix.lower() not in (".png", ".svg"):
            raise InvalidInput(f'--plot: "{plot}" must end in .png or .svg')
        if not plot.parent.is_dir():
            raise InvalidInput(f'--plot: "{plot.parent}" is not a directory')
        if importlib.util.find_spec("matplotlib") is None:
            raise MlqError("--plot needs matplotlib: pip install 'mlq[plot]'")
    if runs is not None and not runs.parent.is_dir():
        raise InvalidInput(f'--runs: "{runs.parent}" is not a directory')
    sim_cluster = load_sim_cluster(cluster)
    jobs = load_trace(trace, days=days, max_gpus=sim_cluster.max_node_gpus, since=since, fold=fold)
    # 2. the replays, with a progress bar each on a terminal
    with progress_bars(policies) as bars:
        results = replay(
            jobs, sim_cluster, policies, progress=bars, samples=PLOT_SAMPLES if plot else 0
        )
    # 3. the figures, and the plot of the samples
    result = report(jobs, sim_cluster, results)
    if plot is not None:
        from mlq.scheduler.simplot import plot_replays

        title = (
            f"{_short(trace)} ({len(jobs):,} jobs) on {_short(cluster)} ({sim_cluster.gpus:,} GPUs)"
        )
        plot_replays(results, plot, title=title)
    if runs is not None:
        for n, r in enumerate(results):
            path = runs if n == 0 else runs.with_name(f"{runs.name}.{r.policy}")
            with open(path, "w") as f:
                f.writelines(run.to_json() + "\n" for run in r.runs)
    if as_json:
        print(json.dumps(result))
    else:
        print(format_comparison(result))


def _short(path: Path) -> str:
    """A file's name with its folder's: "philly-contended/trace.csv"."""
    return f"{path.parent.name}/{path.name}" if path.parent.name else path.name


# samples of the cluster kept per replay for --plot: fine enough for a two-month trace
# (one every ~2.4 h), few enough that the figure draws in a second
PLOT_SAMPLES = 600


@contextmanager
def progress_bars(
    policies: Sequence[str], stream: TextIO | None = None
) -> Iterator[Callable[[Progress], None]]:
    """A progress hook for ``simulate``: on a terminal (``stream``, default stderr), a rich
    bar per policy with the simulated days reached, jobs finished and wall time; elsewhere
    (a pipe, a file, a test) it prints nothing."""
    out = sys.stderr if stream is None else stream
    if not out.isatty():
        yield lambda p: None
        return
    from rich.console import Console
    from rich.progress import BarColumn, TextColumn
    from rich.progress import Progress as Bars

    bars = Bars(
        TextColumn("{task.description}"),
        BarColumn(),
        TextColumn("{task.fields[days]}"),
        TextColumn("{task.fields[jobs]}"),
        TextColumn("{task.fields[wall]}"),
        console=Console(file=out),
        auto_refresh=False,  # redrawn at each report (every ~0.5 s): no thread beside the replay
    )
    width = max(len(p) for p in policies)
    tasks = {
        p: bars.add_task(f"{p:<{width}}", total=1, days="", jobs="", wall="") for p in policies
    }

    def update(p: Progress) -> None:
        span = max(p.sim_end, 1.0)
        bars.update(
            tasks[p.policy],
            total=span,
            completed=min(p.sim_time, span),
            # past the last submission the replay drains the queue: days go past the span
            days=f"{p.sim_time / 86400:.1f}/{p.sim_end / 86400:.1f} days",
            jobs=f"{p.finished:,}/{p.jobs:,} jobs",
            wall=f"{p.wall_s:.0f}s wall",
        )
        bars.refresh()

    with bars:
        yield update


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("plan")(plan)
    app.command("simulate")(simulate)
