"""``mlq plan`` (one scheduling decision on a described state) and ``mlq simulate``
(a whole workload trace replayed through the same policy). Neither needs a daemon.

Top-level imports stay typer + stdlib: the policy, pydantic and rich load inside.
"""

import json
from pathlib import Path
from typing import Annotated

import typer


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
        str, typer.Option("--policy", help="Compare mlq's default against this policy: fifo.")
    ] = "fifo",
    days: Annotated[
        float | None, typer.Option("--days", help="Only jobs submitted in the first N days.")
    ] = None,
    since: Annotated[
        str | None,
        typer.Option("--since", help="Start the trace here: seconds, or a date for Philly."),
    ] = None,
    as_json: Annotated[bool, typer.Option("--json", help="Print only JSON.")] = False,
) -> None:
    """Replay a trace through mlq's policy and through a baseline; print both with ratios."""
    from mlq.scheduler.errors import InvalidInput
    from mlq.scheduler.simulate import compare, format_comparison, load_sim_cluster
    from mlq.scheduler.traces import load_trace

    if policy not in ("fifo", "default"):
        raise InvalidInput(f'--policy: "{policy}" is not a policy; use fifo or default')
    sim_cluster = load_sim_cluster(cluster)
    jobs = load_trace(trace, days=days, max_gpus=sim_cluster.max_node_gpus, since=since)
    result = compare(jobs, sim_cluster, baseline=policy)
    if as_json:
        print(json.dumps(result))
    else:
        print(format_comparison(result))


def register(app: typer.Typer) -> None:
    """Add this module's commands to the root app."""
    app.command("plan")(plan)
    app.command("simulate")(simulate)
