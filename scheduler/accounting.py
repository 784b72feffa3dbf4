"""Accounting: what each run held and for how long, summed as ``sreport`` sums it.

A **run** is one stretch of a job on a node, from its start to the moment it left
the running states (completed, failed, was preempted, its node failed, ...): the
store writes one per run in the transaction that ends it (``runs`` table, schema 8),
the simulator writes the same records (``mlq simulate --runs FILE``), and both go
through ``summarize``. A multi-node job has a run per part.

Figures, over a window [since, until) (runs clipped to it; one still running counts
up to ``until``): GPU-hours (whole GPUs), GPU-equivalent hours (whole GPUs plus MIG
slices at their share of a GPU's compute, as quotas count them), CPU-hours, jobs
(distinct jobs that ran), runs, preemptions (runs that ended PREEMPTED), and
GPU-equivalent hours lost to preemption (the work since each preempted run's last
checkpoint, or since its start). Each group's mean use over the window is its
GPU-equivalent hours over the window's hours, to set against its guarantee.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from dataclasses import asdict, dataclass
from typing import Any

from mlq.executor.units import parse_cpus
from mlq.scheduler.quota import mig_share

BY = ("team", "user", "class")


@dataclass(frozen=True, slots=True)
class Run:
    job_id: int
    run: int  # the job's restart count when it ran
    team: str
    user: str
    priority_class: str
    node: str
    started_at: float
    ended_at: float | None  # None: still running
    state: str  # how it ended (COMPLETED, PREEMPTED, ...), RUNNING while it runs
    gpus: int = 0
    gpu_equivalents: float = 0.0
    cpus: int = 0  # millicores
    memory: int = 0  # bytes
    lost_s: float = 0.0  # seconds of its work lost to a preemption (since its checkpoint)
    time_limit: float = 0.0  # its time limit (0: none)

    def to_json(self) -> str:
        return json.dumps(asdict(self), separators=(",", ":"))


def held_by(devices: str | None, spec: str | Mapping[str, Any]) -> dict[str, Any]:
    """What a job row's run holds: its GPUs and slices (its ``devices``) and its CPUs
    and memory (its resolved spec)."""
    held = json.loads(devices) if devices else {}
    spec = json.loads(spec) if isinstance(spec, str) else spec
    r = spec.get("resources", {})
    gpus = len(held.get("gpus", []))
    slices = [m.get("profile", "1g") for m in held.get("mig", [])]
    return {
        "gpus": gpus,
        "gpu_equivalents": gpus + sum(mig_share(p) for p in slices),
        "cpus": parse_cpus(r["cpus"]) if r.get("cpus") is not None else 0,
        "memory": int(r.get("memory") or 0),
        "time_limit": float(spec.get("time_limit") or 0),
    }


def limit_used(runs: Iterable[Run], default: float = 1.0) -> float:
    """The mean share of their time limit that completed runs took: how long a
    running job is expected to go on, for the start estimates (estimate.py)."""
    shares = [
        min(1.0, (r.ended_at - r.started_at) / r.time_limit)
        for r in runs
        if r.state == "COMPLETED" and r.ended_at is not None and r.time_limit > 0
    ]
    return sum(shares) / len(shares) if shares else default


@dataclass(frozen=True, slots=True)
class Usage:
    key: str  # the team, user or class
    gpu_hours: float
    gpu_equivalent_hours: float
    cpu_hours: float
    jobs: int
    runs: int
    preemptions: int
    lost_gpu_equivalent_hours: float
    mean_gpu_equivalents: float  # over the window


def summarize(runs: Iterable[Run], since: float, until: float, by: str = "team") -> list[Usage]:
    """Each group's usage in [since, until), largest GPU-equivalent hours first."""
    if by not in BY:
        raise ValueError(f'--by: "{by}" is not one of {", ".join(BY)}')
    acc: dict[str, dict[str, Any]] = {}
    for r in runs:
        if (r.ended_at is not None and r.ended_at < since) or r.started_at >= until:
            continue  # wholly outside the window
        end = until if r.ended_at is None else min(r.ended_at, until)
        start = max(r.started_at, since)
        hours = max(0.0, end - start) / 3600
        key = {"team": r.team, "user": r.user, "class": r.priority_class}[by]
        a = acc.setdefault(
            key,
            {"gpu": 0.0, "eq": 0.0, "cpu": 0.0, "jobs": set(), "runs": 0, "pre": 0, "lost": 0.0},
        )
        a["gpu"] += r.gpus * hours
        a["eq"] += r.gpu_equivalents * hours
        a["cpu"] += r.cpus / 1000 * hours
        a["jobs"].add(r.job_id)
        a["runs"] += 1
        if r.state == "PREEMPTED" and r.ended_at is not None and since <= r.ended_at < until:
            a["pre"] += 1
            a["lost"] += r.gpu_equivalents * min(r.lost_s, r.ended_at - r.started_at) / 3600
    window_h = max(until - since, 1e-9) / 3600
    out = [
        Usage(
            key=k,
            gpu_hours=a["gpu"],
            gpu_equivalent_hours=a["eq"],
            cpu_hours=a["cpu"],
            jobs=len(a["jobs"]),
            runs=a["runs"],
            preemptions=a["pre"],
            lost_gpu_equivalent_hours=a["lost"],
            mean_gpu_equivalents=a["eq"] / window_h,
        )  # fmt: skip
        for k, a in acc.items()
    ]
    return sorted(out, key=lambda u: (-u.gpu_equivalent_hours, u.key))


def read_runs(path: str) -> list[Run]:
    """Runs from a file of JSON lines (``mlq simulate --runs FILE``)."""
    out = []
    with open(path) as f:
        for n, line in enumerate(f, 1):
            if line.strip():
                try:
                    out.append(Run(**json.loads(line)))
                except (ValueError, TypeError) as exc:
                    raise ValueError(f"{path}:{n}: not a run record ({exc})") from None
    return out
