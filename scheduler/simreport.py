"""What ``mlq simulate`` prints: figures of a replay, and policies side by side.

docs/scheduling.md "Simulation" describes every figure.
"""

from __future__ import annotations

import math
import statistics
from collections.abc import Callable, Iterable, Sequence
from typing import Any

from mlq.scheduler.errors import InvalidInput
from mlq.scheduler.simulate import POLICIES, Progress, SimCluster, SimResult, _JobState, simulate
from mlq.scheduler.traces import TraceJob

# mlq's policy against strict FIFO, when ``--policy`` is not given
DEFAULT_POLICIES = ("default", "fifo")
# a job's slowdown is its completion time over its run time, but at least this many
# seconds of run time (so a 5-second job that waited a minute does not count as 13x
# slower), and never below 1: Feitelson's bounded slowdown
SLOWDOWN_BOUND_S = 60.0

# -- the report ---------------------------------------------------------------------------------


def _stats(values: list[float]) -> dict[str, float]:
    if not values:
        return {"mean": 0.0, "p50": 0.0, "p95": 0.0}
    v = sorted(values)
    return {
        "mean": statistics.fmean(v),
        "p50": v[len(v) // 2],
        "p95": v[min(len(v) - 1, int(math.ceil(len(v) * 0.95)) - 1)],
    }


def bounded_slowdown(s: _JobState) -> float:
    """Completion time over run time, the run time at least ``SLOWDOWN_BOUND_S``; at least 1."""
    assert s.finish is not None
    return max(1.0, (s.finish - s.job.submit_time) / max(s.job.duration, SLOWDOWN_BOUND_S))


def jain_index(values: Iterable[float]) -> float:
    """Jain's fairness index, (sum x)^2 / (n sum x^2): 1 when all are equal, 1/n when one
    value carries everything; 1 for no values (nothing to be unfair about)."""
    v = list(values)
    squares = sum(x * x for x in v)
    return sum(v) ** 2 / (len(v) * squares) if squares else 1.0


def summarize(r: SimResult) -> dict[str, Any]:
    done = [s for s in r.jobs if s.finish is not None]
    first = min((s.job.submit_time for s in r.jobs), default=0.0)
    last = max((s.finish for s in done), default=first)
    makespan = last - first

    def figures(group: list[_JobState]) -> dict[str, Any]:
        return {
            "jobs": len(group),
            "jct_s": _stats([s.finish - s.job.submit_time for s in group if s.finish is not None]),
            "queue_s": _stats(
                [s.first_start - s.job.submit_time for s in group if s.first_start is not None]
            ),
            "slowdown": _stats([bounded_slowdown(s) for s in group if s.finish is not None]),
        }

    by_class: dict[str, list[_JobState]] = {}
    by_team: dict[str, list[_JobState]] = {}
    for s in done:
        by_class.setdefault(s.job.kind, []).append(s)
        by_team.setdefault(s.job.team, []).append(s)
    teams = {k: figures(v) for k, v in sorted(by_team.items())}
    worst = max(teams, key=lambda k: teams[k]["jct_s"]["p95"], default=None)
    return {
        "policy": r.policy,
        "jobs_finished": len(done),
        **figures(done),
        "max_queue_s": max(
            (s.first_start - s.job.submit_time for s in done if s.first_start is not None),
            default=0.0,
        ),
        "worst_team": worst,
        "worst_team_p95_jct_s": teams[worst]["jct_s"]["p95"] if worst is not None else 0.0,
        "jain_index": jain_index(t["slowdown"]["mean"] for t in teams.values()),
        "gpu_utilization": r.busy_gpu_s / (r.capacity_gpus * makespan) if makespan else 0.0,
        "preemptions": sum(s.preempted for s in r.jobs),
        "gpu_hours_lost": sum(s.lost_gpu_s for s in r.jobs) / 3600,
        "makespan_s": makespan,
        "decisions": r.decisions,
        "wall_s": r.wall_s,
        "by_class": {k: figures(v) for k, v in sorted(by_class.items())},
        "by_team": teams,
        "multi_node": figures([s for s in done if s.job.nodes > 1]),
    }


# -- several policies ----------------------------------------------------------------------------


def parse_policies(text: str) -> tuple[str, ...]:
    """``--policy default,fifo`` -> ("default", "fifo"); InvalidInput for an unknown name."""
    names = tuple(n.strip() for n in text.split(","))
    for i, n in enumerate(names):
        if n not in POLICIES:
            allowed = ", ".join(POLICIES)
            raise InvalidInput(
                f'--policy: "{n}" is not a policy; use one or more of {allowed}, separated by commas'
            )
        if n in names[:i]:
            raise InvalidInput(f'--policy: "{n}" is named twice')
    return names


def replay(
    jobs: list[TraceJob],
    cluster: SimCluster,
    policies: Sequence[str] = DEFAULT_POLICIES,
    *,
    progress: Callable[[Progress], None] | None = None,
    samples: int = 0,
) -> list[SimResult]:
    """Simulate each policy in turn on the same trace (``simulate`` says what
    ``progress`` and ``samples`` are)."""
    return [simulate(jobs, cluster, p, progress=progress, samples=samples) for p in policies]


def report(jobs: list[TraceJob], cluster: SimCluster, results: list[SimResult]) -> dict[str, Any]:
    """The trace, the cluster, and each policy's figures under its name, in ``policies``' order."""
    out: dict[str, Any] = {
        "trace": {
            "jobs": len(jobs),
            "folded_to_one_node": sum(1 for j in jobs if j.folded_from),
            "multi_node": sum(1 for j in jobs if j.nodes > 1),
        },
        "cluster": {"nodes": len(cluster.nodes), "gpus": cluster.gpus},
        "policies": [r.policy for r in results],
    }
    for r in results:
        out[r.policy] = summarize(r)
    return out


def compare(
    jobs: list[TraceJob],
    cluster: SimCluster,
    policies: Sequence[str] = DEFAULT_POLICIES,
    *,
    progress: Callable[[Progress], None] | None = None,
) -> dict[str, Any]:
    """Simulate each policy on the same trace; the report of them all."""
    return report(jobs, cluster, replay(jobs, cluster, policies, progress=progress))


def _ratio(a: float, b: float) -> str:
    if b == 0:
        return "-" if a == 0 else "inf"
    return f"{a / b:.2f}"


def _fmt_s(v: float) -> str:
    if v >= 86400:
        return f"{v / 86400:.1f}d"
    if v >= 3600:
        return f"{v / 3600:.1f}h"
    if v >= 60:
        return f"{v / 60:.1f}m"
    return f"{v:.0f}s"


def format_comparison(result: dict[str, Any]) -> str:
    """One column per policy, and after each but the first its ratio to the first."""
    names = result.get("policies") or [
        k for k in result if k not in ("trace", "cluster", "policies")
    ]
    figs = [result[n] for n in names]
    widths = [max(10, len(n)) for n in names]
    head = f"{'':28} {names[0]:>{widths[0]}}"
    for n, w in zip(names[1:], widths[1:], strict=True):
        head += f" {n:>{w}} {'ratio':>7}"
    trace = result["trace"]
    wide = (
        f"{trace['folded_to_one_node']} wider than a node, folded onto one"
        if trace["folded_to_one_node"]
        else f"{trace.get('multi_node', 0)} multi-node"
    )
    lines = [
        f"trace: {trace['jobs']} jobs ({wide}); cluster: {result['cluster']['nodes']} nodes, "
        f"{result['cluster']['gpus']} GPUs",
        head,
    ]

    def row(
        label: str, values: list[Any], fmt: Callable[[float], str], ratios: bool = True
    ) -> None:
        line = f"{label:28}"
        for i, (v, w) in enumerate(zip(values, widths, strict=True)):
            line += f" {'-' if v is None else fmt(v):>{w}}"
            if i:
                r = _ratio(v, values[0]) if ratios and None not in (v, values[0]) else ""
                line += f" {r:>7}"
        lines.append(line.rstrip())

    def pick(*path: str) -> list[Any]:
        out = []
        for f in figs:
            for key in path:
                f = f.get(key) if isinstance(f, dict) else None
            out.append(f)
        return out

    num = lambda v: f"{v:.0f}"  # noqa: E731
    row("jobs finished", pick("jobs_finished"), num)
    for key, label in (("jct_s", "completion time"), ("queue_s", "queueing delay")):
        for stat in ("mean", "p50", "p95"):
            row(f"{label} {stat}", pick(key, stat), _fmt_s)
    row("max queueing delay", pick("max_queue_s"), _fmt_s)
    row("worst team's p95 completion", pick("worst_team_p95_jct_s"), _fmt_s)
    row("worst team", pick("worst_team"), str, ratios=False)
    row("mean bounded slowdown", pick("slowdown", "mean"), lambda v: f"{v:.2f}")
    row("Jain's index (slowdown)", pick("jain_index"), lambda v: f"{v:.3f}")
    row("GPU utilization", pick("gpu_utilization"), lambda v: f"{v:.1%}")
    if trace.get("multi_node"):
        row("multi-node jobs finished", pick("multi_node", "jobs"), num)
        row("multi-node: mean queueing", pick("multi_node", "queue_s", "mean"), _fmt_s)
        row("multi-node: p95 queueing", pick("multi_node", "queue_s", "p95"), _fmt_s)
    row("preemptions", pick("preemptions"), num)
    row("GPU-hours lost to preemption", pick("gpu_hours_lost"), lambda v: f"{v:.1f}")
    row("makespan", pick("makespan_s"), _fmt_s)
    row("decisions", pick("decisions"), num)
    row("simulation wall time (s)", pick("wall_s"), lambda v: f"{v:.1f}")
    for group in ("by_class", "by_team"):
        for name in sorted(set().union(*(f[group] for f in figs))):
            row(f"{name}: mean queueing", pick(group, name, "queue_s", "mean"), _fmt_s)
            row(f"{name}: p95 completion", pick(group, name, "jct_s", "p95"), _fmt_s)
    return "\n".join(lines)
