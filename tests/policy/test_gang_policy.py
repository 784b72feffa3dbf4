"""Multi-node jobs in the policy: all parts or none, placement by topology, the whole
job charged to the quota, held room for backfill, preemption of and by whole jobs."""

from __future__ import annotations

from mlq.scheduler.cluster import DEFAULT_CLASSES
from mlq.scheduler.policy import decide, team_usage
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


def node(name: str, topology: str = "", gpus: int = 8) -> Node:
    return Node(
        name, 64_000, 512 * GiB, tuple(Gpu(i, "H100-80GB") for i in range(gpus)), True, topology
    )


def gang(job_id: str, nodes: int, gpus: int = 8, kind: str = "training", **kw) -> PendingJob:
    return PendingJob(
        job_id, kw.pop("team", "nlp"), kind, gpus=gpus, cpus=8000, memory=64 * GiB,
        submitted_at=kw.pop("submitted_at", 1.0), nodes=nodes, **kw,
    )  # fmt: skip


def busy(job_id: str, on: str, gpus: int = 8, kind: str = "training", **kw) -> RunningJob:
    return RunningJob(
        job_id, kw.pop("team", "cv"), kind, on, tuple(range(gpus)), cpus=8000, memory=64 * GiB,
        started_at=kw.pop("started_at", NOW - 600), **kw,
    )  # fmt: skip


def snap(nodes, pending, running=(), teams=()) -> Snapshot:
    return Snapshot(
        NOW,
        tuple(nodes),
        tuple(running),
        tuple(pending),
        tuple(teams) or (Team("nlp"), Team("cv")),
        rules_from_classes(DEFAULT_CLASSES),
    )


def test_a_multi_node_job_starts_every_part_at_once_or_none():
    nodes = [node("n1"), node("n2"), node("n3")]
    d = decide(snap(nodes, [gang("big", 3)], [busy("other", "n2")]))
    assert d.starts == ()  # never a part started early
    assert d.reasons["big"] == "Resources: 2 of 3 nodes free for its parts"
    d = decide(snap(nodes, [gang("big", 3)]))
    assert all(s.parts == 3 and s.gpus == tuple(range(8)) for s in d.starts)
    assert sorted(s.rank for s in d.starts) == [0, 1, 2]
    assert len({s.node for s in d.starts}) == 3
    assert {s.job for s in d.starts} == {"big"}


def test_parts_go_under_the_lowest_switch_that_holds_them_all():
    nodes = [
        node("a1", "spine1/rack1"), node("a2", "spine1/rack1"), node("a3", "spine1/rack1"),
        node("b1", "spine1/rack2"), node("b2", "spine1/rack2"),
        node("c1", "spine2/rack3"), node("c2", "spine2/rack3"),
    ]  # fmt: skip
    # two racks hold 2 parts; the smallest that does (best fit) is taken, whole
    d = decide(snap(nodes, [gang("two", 2)]))
    assert {s.node for s in d.starts} in ({"b1", "b2"}, {"c1", "c2"})
    # four parts: no rack holds them, spine1 does (5 nodes), spine2 not
    d = decide(snap(nodes, [gang("four", 4)]))
    assert {s.node[0] for s in d.starts} <= {"a", "b"} and len(d.starts) == 4
    # with rack2 busy, two parts stay inside rack1 rather than spread
    d = decide(snap(nodes, [gang("two", 2)], [busy("x", "b1"), busy("y", "c1")]))
    assert {s.node for s in d.starts} <= {"a1", "a2", "a3"}


def test_the_quota_charges_every_part():
    teams = (Team("nlp", limit={"gpu": 16}), Team("cv"))
    nodes = [node("n1"), node("n2"), node("n3")]
    d = decide(snap(nodes, [gang("big", 3)], teams=teams))
    assert d.starts == ()
    assert d.reasons["big"].startswith("QuotaLimit nlp gpu")
    d = decide(snap(nodes, [gang("fits", 2)], teams=teams))
    assert len(d.starts) == 2
    # a running multi-node job counts all its parts against its team
    running = [
        busy("g", "n1", team="nlp", parts=2),
        busy("g", "n2", team="nlp", parts=2),
    ]
    assert team_usage(snap(nodes, [], running))["nlp"]["gpu"] == 16


def test_backfill_uses_the_held_room_only_until_the_multi_node_job_could_start():
    nodes = [node("n1"), node("n2"), node("n3", gpus=8)]
    running = [
        busy("ends-soon", "n2", time_limit=1600),  # ends at NOW + 1000
        busy("half", "n3", gpus=4, time_limit=5600),  # n3's other 4 GPUs are free
    ]
    head = gang("two", 2, submitted_at=1.0)
    short = PendingJob("short", "cv", "batch", gpus=8, cpus=1000, memory=GiB,
                       submitted_at=2.0, time_limit=900)  # fmt: skip
    long = PendingJob("long", "cv", "batch", gpus=8, cpus=1000, memory=GiB,
                      submitted_at=3.0, time_limit=5000)  # fmt: skip
    small_long = PendingJob("small-long", "cv", "batch", gpus=4, cpus=1000, memory=GiB,
                            submitted_at=4.0, time_limit=5000)  # fmt: skip
    d = decide(snap(nodes, [head, long, small_long], running))
    started = {s.job: s.node for s in d.starts}
    assert "two" not in started
    assert d.reasons["two"].startswith("Resources: 1 of 2 nodes free")
    assert d.reasons["long"] == "Priority"  # it fits on n1, but would delay the head
    assert started.get("small-long") == "n3"  # outside the held nodes
    d = decide(snap(nodes, [head, short], running))
    assert {s.job: s.node for s in d.starts} == {"short": "n1"}  # ends before it starts


def test_inference_preempts_a_multi_node_training_job_as_a_whole():
    nodes = [node("n1"), node("n2")]
    running = [busy("train", "n1", parts=2), busy("train", "n2", parts=2)]
    serve = PendingJob("serve", "nlp", "inference", gpus=8, cpus=1000, memory=GiB)
    d = decide(snap(nodes, [serve], running))
    assert [(p.victim, p.for_job) for p in d.preemptions] == [("train", "serve")]
    assert d.reasons["serve"] == "PreemptionPending train"
    # while its parts stop, nothing more is preempted
    stopping = [busy("train", n, parts=2, stopping_for="serve") for n in ("n1", "n2")]
    d = decide(snap(nodes, [serve], stopping))
    assert d.preemptions == () and d.starts == ()
    assert d.reasons["serve"] == "PreemptionPending train"


def test_a_multi_node_inference_job_preempts_on_as_many_nodes_as_it_lacks():
    nodes = [node("n1"), node("n2"), node("n3")]
    running = [busy("t1", "n1", started_at=NOW - 100), busy("t2", "n2", started_at=NOW - 5000)]
    serve = gang("serve", 2, kind="inference")
    d = decide(snap(nodes, [serve], running))
    # n3 is free; one victim more is needed: the one that loses the least work
    assert [(p.victim, p.for_job) for p in d.preemptions] == [("t1", "serve")]
    assert d.starts == ()


def test_a_multi_node_job_never_takes_part_of_its_room_from_a_lower_one():
    # training does not preempt training: the gang waits, naming what is free
    nodes = [node("n1"), node("n2")]
    d = decide(snap(nodes, [gang("big", 2)], [busy("x", "n1")]))
    assert d.preemptions == ()
    assert d.reasons["big"] == "Resources: 1 of 2 nodes free for its parts"
