"""The control plane's side of the agents' syncs (fleet.py), with a frozen clock and a
temporary SQLite: registration, orders with their epochs, reports that count and
reports that do not, leases, NODE_FAIL and a node that comes back. In milliseconds;
tests/cluster does the same with real agents, PostgreSQL and network namespaces."""

from __future__ import annotations

import asyncio

import pytest
from harness import Harness
from mlq.executor.request import LaunchRequest
from mlq.scheduler import states, wire
from mlq.scheduler.daemon.fleet import Fleet
from mlq.scheduler.errors import Refused

LEASE = 10.0


@pytest.fixture
def cp(tmp_path):
    """A control plane: its own node cordoned, so every job goes to the agent's node."""
    h = Harness(tmp_path)
    h.loop.node.schedulable = False
    h.fleet = Fleet(h.loop, lease_s=LEASE, heartbeat_s=0.01, term=7)
    return h


FACTS = wire.NodeFacts(
    cpus=8000, memory=16 * 2**30, gpus={"source": "declared", "gpus": []},
    state_dir="/var/lib/mlq-r1", socket="/run/mlq/r1.sock",
)  # fmt: skip


def sync(h, node: str = "r1", **kw) -> wire.SyncReply:
    req = wire.SyncRequest(node=kw.pop("as_node", node), boot="b1", **kw)
    return asyncio.run(h.fleet.sync(node, req, "10.0.0.5"))


def report(run_id: str, epoch: int, state: str = "running", **kw) -> wire.RunReport:
    return wire.RunReport(run_id=run_id, epoch=epoch, state=state, **kw)


ENDED = {"state": "COMPLETED", "exit_code": 0, "signal": None, "duration_s": 1.0,
         "max_memory_bytes": 0, "oom_kills": 0}  # fmt: skip


def test_a_node_registers_then_gets_its_orders_with_their_epochs(cp):
    assert sync(cp).want_facts  # unknown: it must say what it has first
    reply = sync(cp, facts=FACTS)
    assert reply.term == 7 and reply.orders == [] and reply.state == "up"
    j = cp.submit()
    cp.loop.run_pass()
    job = cp.job(j)
    assert (job.state, job.node) == (states.STARTING, "r1")
    (order,) = sync(cp).orders
    assert (order.job_id, order.run_id, order.epoch, order.stop) == (j, f"{j}.0", job.epoch, "")
    req = LaunchRequest.from_json(order.launch)
    assert req.state_dir == "/var/lib/mlq-r1"  # built for the node's own dirs


def test_only_a_report_of_the_current_epoch_counts(cp):
    sync(cp, facts=FACTS)
    j = cp.submit()
    cp.loop.run_pass()
    epoch = cp.job(j).epoch
    sync(cp, runs=[report(f"{j}.0", epoch + 1)])  # a run another decision replaced
    assert cp.job(j).state == states.STARTING
    sync(cp, runs=[report(f"{j}.0", epoch, cgroup="/sys/fs/cgroup/x")])
    assert cp.job(j).state == states.RUNNING and cp.job(j).cgroup == "/sys/fs/cgroup/x"
    sync(cp, runs=[report(f"{j}.0", epoch, "ended", status=ENDED)])
    cp.loop.run_pass()
    assert cp.job(j).state == states.COMPLETED
    assert sync(cp).orders == []  # its end is recorded: no longer the node's


def test_a_report_that_makes_no_sense_is_ignored(cp):
    sync(cp, facts=FACTS)
    j = cp.submit()
    cp.loop.run_pass()
    epoch = cp.job(j).epoch
    bad = {"state": "EXPLODED"}
    sync(cp, runs=[report(f"{j}.0", epoch, "ended", status=bad), report("x.y", 1)])
    cp.loop.run_pass()
    assert cp.job(j).state in (states.STARTING, states.RUNNING)


def test_a_node_syncs_only_as_itself(cp):
    with pytest.raises(Refused, match='node "r1" may not sync as node "r2"'):
        sync(cp, as_node="r2", facts=FACTS)


def test_a_node_whose_lease_runs_out_is_down_and_its_jobs_requeued(cp):
    sync(cp, facts=FACTS)
    small = {"cpus": 1, "memory": "1Gi"}
    train = cp.submit(kind="training", resources=small)
    serve = cp.submit(kind="inference", resources=small)  # not requeued by default
    cp.loop.run_pass()
    for j in (train, serve):
        sync(cp, runs=[report(f"{j}.0", cp.job(j).epoch)])
    cp.clock.advance(LEASE - 1)
    cp.loop.run_pass()
    assert cp.fleet.nodes["r1"].state == "up"  # within its lease
    cp.clock.advance(2)
    cp.loop.run_pass()
    assert cp.fleet.nodes["r1"].state == "down"
    assert "no heartbeat for 11s (lease 10s)" in cp.fleet.nodes["r1"].reason
    t = cp.job(train)
    assert (t.state, t.restart_count, t.node) == (states.PENDING, 1, None)
    assert [s for s, _ in cp.events(train)][-2:] == ["NODE_FAIL", "PENDING"]
    assert cp.job(serve).state == states.NODE_FAIL
    assert cp.job(serve).reason.startswith("node r1 failed: no heartbeat")
    # it answers again: no orders (what it holds is not its own), and it is up again
    # only once it holds nothing stale
    old = [report(f"{train}.0", 1), report(f"{serve}.0", 2)]
    reply = sync(cp, runs=old, stray=0)
    assert reply.state == "down" and reply.orders == []
    assert sync(cp, stray=0).state == "up"


def test_a_control_plane_that_takes_over_knows_each_nodes_topology(cp):
    """A standby loads the nodes from the database; the agents do not send their facts
    again, so the topology that gang placement reads must be stored with them."""
    sync(cp, facts=FACTS.model_copy(update={"topology": "spine1/rack3"}))
    standby = Fleet(cp.loop, lease_s=LEASE, heartbeat_s=0.01, term=8)
    assert standby.nodes["r1"].slot.view.topology == "spine1/rack3"
    assert standby.nodes["r1"].slot.view.snapshot_node().topology == "spine1/rack3"
