"""Array throttles (``array: 0-99%4``, Slurm's ``%``): at most that many of an array
run at once, counting the ones already running and those started or preempted for in
the same pass; the others wait as JobArrayTaskLimit."""

from __future__ import annotations

from mlq.scheduler.cluster import DEFAULT_CLASSES
from mlq.scheduler.policy import decide
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
NOW = 10_000.0
NODE = Node("n1", 64_000, 512 * GiB, tuple(Gpu(i, "H100-80GB") for i in range(8)), True)


def task(job_id: int, array: int, limit: int = 0, kind: str = "batch") -> PendingJob:
    return PendingJob(
        job_id, "nlp", kind, gpus=1, cpus=1000, memory=GiB, submitted_at=float(job_id),
        time_limit=3600, array_id=array, array_limit=limit,
    )  # fmt: skip


def running(job_id: int, array: int, gpu: int, kind: str = "batch") -> RunningJob:
    return RunningJob(
        job_id, "nlp", kind, "n1", (gpu,), cpus=1000, memory=GiB, started_at=NOW - 60,
        time_limit=3600, array_id=array,
    )  # fmt: skip


def snap(pending, running_=()) -> Snapshot:
    return Snapshot(
        NOW, (NODE,), tuple(running_), tuple(pending), (Team("nlp"),),
        rules_from_classes(DEFAULT_CLASSES),
    )  # fmt: skip


def test_a_throttled_array_runs_at_most_its_limit_and_the_rest_say_why():
    pending = [task(i, array=1, limit=3) for i in range(2, 8)]
    d = decide(snap(pending, [running(1, array=1, gpu=0)]))
    assert sorted(s.job for s in d.starts) == [2, 3]  # 1 runs: two more make three
    assert {d.reasons[i] for i in range(4, 8)} == {"JobArrayTaskLimit: 3 of array 1 run at once"}


def test_another_array_of_the_same_shape_is_not_held_back_by_the_throttle():
    pending = [task(i, array=1, limit=1) for i in range(1, 4)]
    pending += [task(i, array=10, limit=0) for i in range(10, 13)]
    d = decide(snap(pending))
    assert sorted(s.job for s in d.starts) == [1, 10, 11, 12]


def test_a_task_whose_victims_are_stopping_holds_its_place_under_the_throttle():
    # task 2 preempted job 90 in an earlier pass; job 90 still stops
    victims = [
        RunningJob(
            90 + g,
            "nlp",
            "batch",
            "n1",
            (g,),
            cpus=1000,
            memory=GiB,
            started_at=NOW - 60,
            stopping_for=2 if g == 0 else None,
        )  # fmt: skip
        for g in range(8)
    ]
    d = decide(snap([task(2, array=1, limit=1), task(3, array=1, limit=1)], victims))
    assert d.reasons[3] == "JobArrayTaskLimit: 1 of array 1 run at once"
    assert not str(d.reasons[2]).startswith("JobArrayTaskLimit")
