"""The simulator's shortcuts change no decision.

``simulate(inert_out=True)`` leaves out of each snapshot the pending jobs that cannot
matter (scheduler/simqueue.py) and skips decisions that would repeat a quiet one; with
``inert_out=False`` every event decides on every pending job, as the simulator did
before. On a contended trace (teams capped at their guarantee, classes that preempt,
MIG slices, jobs without time limits) both must start and preempt the same jobs at the
same times, for every ordering.
"""

from __future__ import annotations

import random

import pytest
from mlq.scheduler.simulate import parse_sim_cluster, simulate
from mlq.scheduler.traces import TraceJob

TEAMS = {"nlp": 8, "cv": 6, "speech": 2}


def contended_trace(n: int = 400, seed: int = 7) -> list[TraceJob]:
    rnd = random.Random(seed)
    jobs = []
    t = 0.0
    for i in range(n):
        t += rnd.expovariate(1 / 600)
        team = rnd.choice(list(TEAMS))
        kind = rnd.choices(["training", "batch", "inference"], [6, 3, 1])[0]
        duration = rnd.choice([60, 600, 1800, 3600, 4 * 3600, 12 * 3600]) * rnd.uniform(0.3, 1)
        mig = rnd.random() < 0.1
        limit = None if rnd.random() < 0.15 else int(duration * rnd.choice([1.2, 2, 4]))
        jobs.append(
            TraceJob(
                id=i,
                submit_time=round(t),
                duration=round(duration),
                gpus=rnd.choice([1, 2, 3]) if mig else rnd.choice([1, 1, 1, 2, 4, 8]),
                team=team,
                kind=kind,
                mig_profile="1g.10gb" if mig else None,
                time_limit=limit,
            )
        )
    return jobs


CLUSTER = {
    "nodes": [
        {"name": "a", "count": 2, "cpus": 96, "memory": "768Gi", "gpus": 8},
        {"name": "m", "cpus": 96, "memory": "768Gi", "gpus": 2, "mig": True},
    ],
    "guarantees": "none",
    "checkpoint_interval": 600,
    "teams": [
        {"name": name, "guarantee": {"gpu-equivalent": g}, "limit": {"gpu-equivalent": g}}
        for name, g in TEAMS.items()
    ],
}


def decisions(policy: str, inert_out: bool) -> tuple[list, int, int]:
    log: list = []
    result = simulate(
        contended_trace(), parse_sim_cluster(CLUSTER), policy, inert_out=inert_out, log=log
    )
    most = max(s.preempted for s in result.jobs)
    return [entry for entry in log if entry[1] or entry[2]], result.decisions, most


@pytest.mark.parametrize("policy", ["default", "short-first", "fifo-order"])
def test_shortcuts_start_and_preempt_what_every_decision_would(policy: str) -> None:
    fast, fast_count, _ = decisions(policy, inert_out=True)
    full, full_count, most = decisions(policy, inert_out=False)
    assert len(full) > 300  # the trace makes the policy work
    assert any(entry[2] for entry in full)  # preemptions happen
    assert fast == full
    assert fast_count < full_count  # and the shortcuts did skip decisions
    # and they settle: no job is taken again and again for one that never starts (a
    # job the team's quota reservation holds back must not preempt for room it cannot
    # take: that traded one job of the team for another hundreds of times)
    assert most <= 20
