"""Preemption settles: with no job ending, repeated decisions stop preempting.

Each pass applies the decisions as the daemon would once victims are gone: a victim is
requeued with its original submission time, a started job runs. If the same snapshot
kept producing preemptions, two jobs would be trading room for ever (the loop that the
two rounds of docs/scheduling.md's Order 3, and the borrowed-only victims of a job that
would borrow, exist to prevent).
"""

from __future__ import annotations

import random

import pytest
from mlq.scheduler.policy import decide
from mlq.scheduler.snapshot import Gpu, Node, PendingJob, RunningJob, Snapshot, Team

GiB = 1 << 30


def passes(snap: Snapshot, n: int) -> list[int]:
    """Decide ``n`` times, applying each decision; the preemptions of each pass."""
    spec = {j.id: j for j in snap.pending}
    for r in snap.running:
        spec[r.id] = PendingJob(
            r.id, r.team, r.priority_class, gpus=len(r.gpus), cpus=r.cpus, memory=r.memory
        )
    running = {r.id: r for r in snap.running}
    pending = list(snap.pending)
    counts = []
    for t in range(n):
        now = snap.now + t
        d = decide(Snapshot(now, snap.nodes, tuple(running.values()), tuple(pending), snap.teams))
        for p in d.preemptions:
            del running[p.victim]
            pending.append(spec[p.victim])
        started = {s.job for s in d.starts}
        for s in d.starts:
            j = spec[s.job]
            running[s.job] = RunningJob(
                s.job, j.team, j.priority_class, s.node, s.gpus, cpus=j.cpus, memory=j.memory,
                started_at=now,
            )  # fmt: skip
        pending = [j for j in pending if j.id not in started]
        counts.append(len(d.preemptions))
    return counts


def node(name: str, gpus: int) -> Node:
    return Node(name, 64_000, 512 * GiB, tuple(Gpu(g, "H100-80GB") for g in range(gpus)))


def job(jid: str, team: str, kind: str, gpus: int, at: float = 0) -> PendingJob:
    return PendingJob(jid, team, kind, gpus=gpus, cpus=1000, memory=GiB, submitted_at=at)


def test_a_borrowing_job_does_not_take_its_own_job_inside_the_guarantee() -> None:
    # cv (guarantee 1, limit 2) runs a batch job inside its guarantee; its training job
    # of 2 GPUs would borrow whatever it preempts. Taking the batch job would not
    # stick: requeued inside cv's guarantee, it runs in the first round, before the
    # borrowing training job, and the two would trade the room for ever.
    snap = Snapshot(
        1000,
        (node("n1", 2),),
        (RunningJob("cv-batch", "cv", "batch", "n1", (0,), cpus=1000, memory=GiB),),
        (job("cv-train", "cv", "training", 2, 10),),
        (Team("cv", {"gpu": 1}, {"gpu": 2}),),
    )
    assert passes(snap, 6) == [0] * 6
    assert decide(snap).reasons == {"cv-train": "QuotaLimit cv gpu 1/2"}


def test_own_victims_that_bring_the_team_inside_its_guarantee_stick() -> None:
    # Kueue's "preemptions from cq when target queue is exhausted": Kueue takes a1 and
    # a2, which leaves a borrowing; a1 and a2, requeued inside a's guarantee, would come
    # back first. mlq takes a3 as well, and the job starts in the next pass.
    running = [
        RunningJob(f"a{k}", "a", "batch", "n1", (k - 1,), cpus=1000, memory=GiB) for k in (1, 2, 3)
    ] + [
        RunningJob(f"b{k}", "b", "inference", "n1", (k + 2,), cpus=1000, memory=GiB)
        for k in (1, 2, 3)
    ]
    snap = Snapshot(
        1000,
        (node("n1", 6),),
        tuple(running),
        (job("in", "a", "training", 2, 10),),
        (Team("a", {"gpu": 2}, {"gpu": 6}), Team("b", {"gpu": 2}, {"gpu": 6})),
    )
    assert passes(snap, 6) == [3, 0, 0, 0, 0, 0]


def world(seed: int) -> Snapshot:
    """A small cluster full of training and batch jobs of three teams (quotas not
    respected, as after an admin lowers them), and a queue of every class."""
    rnd = random.Random(seed)
    nodes = tuple(node(f"n{i}", rnd.choice((2, 4))) for i in range(rnd.randint(1, 3)))
    total = sum(len(n.gpus) for n in nodes)
    teams = []
    for t in "abc":
        if rnd.random() < 0.3:
            teams.append(Team(t))
        else:
            g = rnd.randint(1, max(1, total // 2))
            teams.append(Team(t, {"gpu": g}, {"gpu": rnd.choice((g, g + 1, total))}))
    running = []
    for n in nodes:
        g = 0
        while g < len(n.gpus) and rnd.random() < 0.9:
            size = min(rnd.choice((1, 1, 2)), len(n.gpus) - g)
            kind = rnd.choice(("training", "batch"))
            running.append(
                RunningJob(
                    f"r{len(running)}",
                    rnd.choice("abc"),
                    kind,
                    n.name,
                    tuple(range(g, g + size)),
                    cpus=1000,
                    memory=GiB,
                    started_at=rnd.randint(0, 999),
                )  # fmt: skip
            )
            g += size
    pending = [
        job(
            f"j{k}",
            rnd.choice("abc"),
            rnd.choices(("inference", "training", "batch"), (1, 4, 4))[0],
            rnd.choice((1, 1, 2)),
            k,
        )
        for k in range(rnd.randint(3, 3 * total))
    ]
    return Snapshot(1000, nodes, tuple(running), tuple(pending), tuple(teams))


# Worlds that looped under earlier rules: 534 with borrowed victims judged once before
# the search (a team's second victim no longer borrowed once the first was gone); the
# others when a job that still borrows could take its own team's jobs inside the
# guarantee. Loops are rare (19 of 3,000 worlds for the second rule), hence the list.
LOOPED = [210, 291, 534, 558, 983, 1145, 1212, 1305, 1597, 1786]


@pytest.mark.parametrize("seed", LOOPED)
def test_worlds_that_once_looped_stop_preempting(seed: int) -> None:
    assert not any(passes(world(seed), 24)[12:])


def test_generated_clusters_stop_preempting() -> None:
    assert [s for s in range(100) if any(passes(world(s), 24)[12:])] == []
