"""Start estimates (scheduler/estimate.py, mlq queue --start): the queue played
forward, running jobs ending at (a share of) their time limits."""

from __future__ import annotations

import pytest
from mlq.scheduler.cluster import DEFAULT_CLASSES
from mlq.scheduler.estimate import estimate_starts
from mlq.scheduler.snapshot import (
    Gpu,
    Node,
    PendingJob,
    RunningJob,
    Snapshot,
    Team,
    rules_from_classes,
)

GiB = 2**30
NOW = 100_000.0
NODE = Node("n1", 64_000, 512 * GiB, (Gpu(0, "H100-80GB"), Gpu(1, "H100-80GB")), True)


def pending(job_id: int, limit: int, **kw) -> PendingJob:
    return PendingJob(
        job_id, "nlp", "training", gpus=2, cpus=1000, memory=GiB, submitted_at=float(job_id),
        time_limit=limit, **kw,
    )  # fmt: skip


def snap(pend, running=()) -> Snapshot:
    return Snapshot(
        NOW, (NODE,), tuple(running), tuple(pend), (Team("nlp"),),
        rules_from_classes(DEFAULT_CLASSES),
    )  # fmt: skip


A = RunningJob(
    1, "nlp", "training", "n1", (0, 1), cpus=1000, memory=GiB, started_at=NOW - 600,
    time_limit=3600,
)  # fmt: skip


def test_each_waits_for_the_ones_before_it_to_reach_their_limits():
    got = estimate_starts(snap([pending(2, 1800), pending(3, 900), pending(4, 60, held=True)], [A]))
    # A ends at its limit; the shorter job goes first (short-first), then 2
    assert got[3] == pytest.approx(NOW + 3000)
    assert got[2] == pytest.approx(NOW + 3000 + 900)
    assert got[4] is None  # held: never within the play


def test_a_job_that_fits_now_starts_now_and_a_share_of_the_limits_comes_sooner():
    assert estimate_starts(snap([pending(2, 60)]))[2] == NOW
    got = estimate_starts(snap([pending(2, 1800), pending(3, 900)], [A]), used=0.5)
    assert got[3] == pytest.approx(NOW + 1200)  # A is taken to run half its hour
    assert got[2] == pytest.approx(NOW + 1200 + 450)  # and 3 half of its 900 s
