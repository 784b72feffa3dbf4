"""A team's limits on each of its users (``per_user: {jobs, gpus}``, Slurm's
MaxJobsPerUser and MaxTRESPerUser): one user's jobs wait as UserLimit while the team's
other users still start theirs."""

from __future__ import annotations

from mlq.scheduler.cluster import DEFAULT_CLASSES
from mlq.scheduler.policy import decide
from mlq.scheduler.snapshot import (
    Gpu,
    MigRequest,
    MigSlot,
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


def job(job_id: int, user: str, gpus: int = 1, **kw) -> PendingJob:
    return PendingJob(
        job_id, "nlp", "batch", gpus=gpus, cpus=1000, memory=GiB, submitted_at=float(job_id),
        time_limit=3600, user=user, **kw,
    )  # fmt: skip


def snap(pending, running=(), per_user=None) -> Snapshot:
    return Snapshot(
        NOW, (NODE,), tuple(running), tuple(pending), (Team("nlp", per_user=per_user or {}),),
        rules_from_classes(DEFAULT_CLASSES),
    )  # fmt: skip


def test_a_user_at_the_gpu_limit_waits_while_the_teams_other_users_start():
    held = RunningJob(
        1, "nlp", "batch", "n1", (0, 1), cpus=1000, memory=GiB, started_at=NOW, user="bob"
    )
    pending = [job(2, "bob", gpus=2), job(3, "bob", gpus=1), job(4, "alice", gpus=2)]
    d = decide(snap(pending, [held], per_user={"gpus": 3}))
    assert sorted(s.job for s in d.starts) == [3, 4]  # bob: 2 + 1 = 3
    assert d.reasons[2] == "UserLimit bob gpus 2/3"  # 2 held when it was considered: 2 + 2 > 3


def test_a_user_at_the_job_limit_waits_and_starts_in_the_same_pass_count():
    pending = [job(i, "bob", gpus=0) for i in range(1, 6)] + [job(9, "carol", gpus=0)]
    d = decide(snap(pending, per_user={"jobs": 2}))
    assert sorted(s.job for s in d.starts) == [1, 2, 9]
    assert {d.reasons[i] for i in (3, 4, 5)} == {"UserLimit bob jobs 2/2"}


def test_mig_slices_count_as_their_share_of_a_gpu():
    mig_node = Node(
        "n1", 64_000, 512 * GiB,
        (Gpu(0, "A100-SXM4-40GB", mig=tuple(("1g.5gb", s) for s in range(7))),), True,
    )  # fmt: skip
    running = RunningJob(
        1, "nlp", "batch", "n1", (), (MigSlot(0, "1g.5gb", 0),) * 1, cpus=100, memory=GiB,
        started_at=NOW, user="bob",
    )  # fmt: skip
    small = [job(i, "bob", gpus=0, mig=MigRequest("1g.5gb")) for i in (2, 3, 4)]
    s = Snapshot(
        NOW, (mig_node,), (running,), tuple(small),
        (Team("nlp", per_user={"gpus": 3 / 7 + 1e-6}),), rules_from_classes(DEFAULT_CLASSES),
    )  # fmt: skip
    d = decide(s)
    assert sorted(st.job for st in d.starts) == [2, 3]  # 3 slices of 1/7 each
    assert str(d.reasons[4]).startswith("UserLimit bob gpus 0.428")


def test_jobs_without_a_user_and_teams_without_limits_are_not_limited():
    pending = [job(i, "", gpus=1) for i in range(1, 5)]
    assert len(decide(snap(pending, per_user={"jobs": 1})).starts) == 4
    pending = [job(i, "bob", gpus=1) for i in range(1, 5)]
    assert len(decide(snap(pending)).starts) == 4
