"""Discovered GPUs feed the scheduler, and its decisions wire the right devices."""

from __future__ import annotations

from mlq.executor import gpus
from mlq.scheduler.cluster import DEFAULT_CLASSES
from mlq.scheduler.daemon.view import NodeView
from mlq.scheduler.policy import decide
from mlq.scheduler.snapshot import (
    MigRequest,
    MigSlot,
    Node,
    PendingJob,
    RunningJob,
    Snapshot,
    Team,
    rules_from_classes,
)


def snapshot_node(node: gpus.NodeGpus) -> Node:
    """What the daemon does: discovered GPUs in the policy's shape, through its own view."""
    return NodeView("n1", 64_000, 512 * 2**30, node).snapshot_node()


def test_a_mig_job_is_placed_on_a_free_discovered_slice_and_wired_to_it(fake_node):
    fake_node("h100-8-mig")
    node = gpus.discover()
    held = tuple(MigSlot(7, "1g.10gb", s) for s in range(3))  # starts 0-2 are busy
    snap = Snapshot(
        now=100.0,
        nodes=(snapshot_node(node),),
        running=(
            RunningJob(id=1, team="cv", priority_class="batch", node="n1", mig=held, started_at=1),
        ),
        pending=(
            PendingJob(
                id=2,
                team="cv",
                priority_class="batch",
                mig=MigRequest("1g.10gb"),
                cpus=1000,
                memory=2**30,
            ),
            PendingJob(
                id=3,
                team="cv",
                priority_class="batch",
                mig=MigRequest("3g.40gb"),
                cpus=1000,
                memory=2**30,
            ),
        ),
        teams=(Team("cv"),),
        classes=rules_from_classes(DEFAULT_CLASSES),
    )
    starts = {s.job: s for s in decide(snap).starts}

    (small,) = starts[2].mig
    assert small.gpu == 7 and small.profile == "1g.10gb" and small.start >= 3
    w = gpus.wiring(node, mig=starts[2].mig)
    slice_ = node.gpus[7].slice_at(small.start)
    assert w.visible == slice_.uuid
    assert [d.path for d in w.devices][3:] == [
        "/dev/nvidia7",
        f"/dev/nvidia-caps/nvidia-cap{slice_.gi_cap_minor}",
        f"/dev/nvidia-caps/nvidia-cap{slice_.ci_cap_minor}",
    ]

    (big,) = starts[3].mig
    assert (big.gpu, big.profile) == (6, "3g.40gb")
    assert gpus.wiring(node, mig=starts[3].mig).visible == node.gpus[6].slice_at(big.start).uuid
