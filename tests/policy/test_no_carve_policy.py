"""A node that may not carve (``Node.can_carve`` false: the admin's ``mig_carve: false``,
or a driver that refused) gets MIG jobs only on the free slices it already has; the
policy never touches a held slice either way."""

from __future__ import annotations

from dataclasses import replace

import pytest
from mlq.scheduler.cluster import DEFAULT_CLASSES, NodeConfig
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


def node(name: str, *mig: tuple[tuple[str, int], ...], can_carve: bool = True) -> Node:
    """A node with one whole H100 and one H100 in MIG mode per ``mig`` layout."""
    gpus = (Gpu(0, "H100-80GB"), *(Gpu(i + 1, "H100-80GB", m) for i, m in enumerate(mig)))
    return Node(name, 32_000, 256 * GiB, gpus, can_carve=can_carve)


def mig_job(job_id: str, profile: str, kind: str = "batch", count: int = 1) -> PendingJob:
    return PendingJob(
        job_id, "cv", kind, mig=MigRequest(profile, count), cpus=1000, memory=GiB, submitted_at=1
    )


def snap(nodes, pending, running=()) -> Snapshot:
    return Snapshot(
        now=100.0,
        nodes=tuple(nodes),
        running=tuple(running),
        pending=tuple(pending),
        teams=(Team("cv"),),
        classes=rules_from_classes(DEFAULT_CLASSES),
    )


def starts(s: Snapshot) -> dict:
    d = decide(s)
    return {st.job: (st.node, st.mig) for st in d.starts} | dict(d.reasons)


THREE_G = (("3g.40gb", 0),)  # GPU 1 keeps starts 4-7 free: room to carve a 2g.20gb at 4


def test_a_node_that_may_carve_carves_and_one_that_may_not_gives_only_what_is_there():
    pending = [mig_job("two", "2g.20gb"), mig_job("three", "3g.40gb")]
    carving = starts(snap([node("n1", THREE_G)], pending))
    assert carving == {
        "two": ("n1", (MigSlot(1, "2g.20gb", 4),)),
        "three": ("n1", (MigSlot(1, "3g.40gb", 0),)),
    }

    fixed = starts(snap([node("n1", THREE_G, can_carve=False)], pending))
    assert fixed == {"two": "Resources", "three": ("n1", (MigSlot(1, "3g.40gb", 0),))}


def test_a_job_goes_to_the_node_that_may_carve_when_the_other_only_has_room():
    nodes = [node("fixed", THREE_G, can_carve=False), node("carver", THREE_G)]
    assert starts(snap(nodes, [mig_job("two", "2g.20gb")])) == {
        "two": ("carver", (MigSlot(1, "2g.20gb", 4),))
    }


def test_a_held_slice_is_never_given_again_nor_carved_over():
    held = RunningJob(
        "r", "cv", "inference", "n1", mig=(MigSlot(1, "3g.40gb", 0),), cpus=1000, memory=GiB
    )
    pending = [mig_job("a", "3g.40gb"), mig_job("b", "1g.10gb")]
    # a carving node carves the other 3g.40gb beside the held one; then no room is left
    assert starts(snap([node("n1", THREE_G)], pending, [held])) == {
        "a": ("n1", (MigSlot(1, "3g.40gb", 4),)),
        "b": "Resources",
    }
    # a node that may not carve has no free slice at all: the held one is not given again
    # (b waits behind a, the head of the queue, as any job without a time limit does)
    assert starts(snap([node("n1", THREE_G, can_carve=False)], pending, [held])) == {
        "a": "Resources",
        "b": "Priority",
    }


def test_preemption_on_a_node_that_may_not_carve_frees_only_a_slice_of_the_profile():
    victim = RunningJob(
        "v", "cv", "batch", "n1", mig=(MigSlot(1, "3g.40gb", 0),), cpus=1000, memory=GiB
    )
    # the inference job needs a 2g.20gb: a carving node carves at 4, a fixed one has none
    # and does not preempt for room it could not use
    pending = [mig_job("inf", "2g.20gb", kind="inference")]
    assert starts(snap([node("n1", THREE_G, can_carve=False)], pending, [victim])) == {
        "inf": "Resources"
    }
    # a 3g.40gb inference job preempts the batch job for its slice, as it would anywhere
    d = decide(
        snap(
            [node("n1", THREE_G, can_carve=False)],
            [mig_job("inf3", "3g.40gb", "inference")],
            [victim],
        )
    )
    assert [(p.victim, p.for_job) for p in d.preemptions] == [("v", "inf3")]


def test_the_same_layout_with_and_without_carving_in_one_process_is_not_confused():
    # the policy keeps one working copy per declared GPU layout; the flag is part of it
    pending = [mig_job("two", "2g.20gb", count=2)]
    assert starts(snap([node("n1", THREE_G, THREE_G)], pending))["two"][1] == (
        MigSlot(1, "2g.20gb", 4),
        MigSlot(2, "2g.20gb", 4),
    )
    assert starts(snap([node("n1", THREE_G, THREE_G, can_carve=False)], pending)) == {
        "two": "Resources"
    }
    assert starts(snap([node("n1", THREE_G, THREE_G)], pending))["two"][0] == "n1"


@pytest.mark.parametrize("can_carve", [True, False])
def test_deciding_leaves_the_snapshot_as_it_was_and_decides_the_same_again(can_carve):
    s = snap([node("n1", THREE_G, (), can_carve=can_carve)], [mig_job("one", "1g.10gb")])
    copy = replace(s)
    first = decide(s)
    assert s == copy and decide(s) == first
    # a carving node carves beside the 3g slice (packing); a fixed node has no 1g slice
    assert [st.mig for st in first.starts] == ([(MigSlot(1, "1g.10gb", 4),)] if can_carve else [])


def test_the_node_config_carves_unless_the_admin_says_not_to():
    assert NodeConfig(name="n").mig_carve is True
    assert NodeConfig(name="n", mig_carve=False).mig_carve is False
    assert Node("n", 1, 1).can_carve is True  # scenarios and the simulator carve
