"""A multi-node job's parts in the daemon: their environment, and how a part that is
stopped with its job ends (gangs.py, outcomes.py)."""

from __future__ import annotations

from types import SimpleNamespace

from mlq.executor.status import Status
from mlq.scheduler import states
from mlq.scheduler.daemon import gangs, outcomes
from mlq.scheduler.reasons import never_fits
from mlq.scheduler.snapshot import Gpu, Node, PendingJob
from mlq.scheduler.spec import parse_spec

GiB = 2**30


def spec(**resources) -> object:
    return parse_spec(
        {
            "name": "t", "team": "nlp", "command": ["true"], "network": "host",
            "resources": {"nodes": 2, **resources}, "preemption": {"requeue": True},
        }
    )  # fmt: skip


def test_each_part_gets_what_torchrun_and_deepspeed_read():
    s = spec(gpus=8)
    env = [gangs.part_env(1234, r, s, ["n1", "n2"], "10.0.0.1") for r in (0, 1)]
    assert {k: env[1][k] for k in ("MASTER_ADDR", "WORLD_SIZE", "RANK", "NODE_RANK")} == {
        "MASTER_ADDR": "10.0.0.1", "WORLD_SIZE": "16", "RANK": "8", "NODE_RANK": "1",
    }  # fmt: skip
    assert env[0]["MASTER_PORT"] == env[1]["MASTER_PORT"] == str(29500 + 1234)
    assert env[0]["LOCAL_WORLD_SIZE"] == "8" and env[0]["MLQ_NODELIST"] == "n1,n2"
    cpu_only = gangs.part_env(7, 1, spec(), ["a", "b"], "a")
    assert (cpu_only["WORLD_SIZE"], cpu_only["RANK"], cpu_only["LOCAL_WORLD_SIZE"]) == (
        "2",
        "1",
        "1",
    )


def test_a_job_files_master_port_wins():
    s = parse_spec(
        {"name": "t", "team": "nlp", "command": ["true"], "network": "host",
         "env": {"MASTER_PORT": "40000"}, "resources": {"nodes": 2}}
    )  # fmt: skip
    assert gangs.part_env(1, 0, s, ["a", "b"], "a")["MASTER_PORT"] == "40000"


def test_a_part_stopped_with_its_job_ends_in_the_first_parts_state():
    job = SimpleNamespace(
        stop_cause="part:FAILED", reason="part 1 on n2 ended FAILED: exit code 3",
        restart_count=0, stop_for=None,
    )  # fmt: skip
    steps = outcomes.ended(
        job,
        spec(),
        Status(
            state="STOPPED",
            exit_code=None,
            signal="SIGTERM",
            duration_s=1.0,
            max_memory_bytes=0,
            oom_kills=0,
        ),
        1.0,
    )
    assert [(s, r) for s, r, _ in steps] == [
        (states.FAILED, "part 1 on n2 ended FAILED: exit code 3")
    ]
    job.stop_cause = "part:NODE_FAIL"
    steps = outcomes.ended(
        job,
        spec(),
        Status(
            state="STOPPED",
            exit_code=None,
            signal="SIGTERM",
            duration_s=1.0,
            max_memory_bytes=0,
            oom_kills=0,
        ),
        1.0,
    )
    assert [s for s, _, _ in steps] == [states.NODE_FAIL, states.PENDING]  # requeued with it
    assert steps[1][2]["restart_count"] == 1


def test_a_multi_node_job_needs_the_host_network_and_enough_nodes():
    import pytest
    from mlq.scheduler.errors import InvalidInput

    with pytest.raises(InvalidInput, match="resources.nodes: 2 parts .* set network: host"):
        parse_spec({"name": "t", "team": "nlp", "command": ["true"], "resources": {"nodes": 2}})
    one = [Node("only", 8000, 8 * GiB, (Gpu(0, "H100-80GB"),))]
    j = PendingJob(1, "nlp", "training", gpus=1, cpus=1000, memory=GiB, nodes=2)
    assert never_fits(j, one) == (
        "resources.nodes: 2 parts, each on its own node, but 1 of the cluster's 1 nodes "
        "could hold one"
    )
    assert never_fits(j, one * 2) is None


def test_a_multi_node_job_is_held_and_released_as_a_whole(tmp_path):
    from harness import Harness
    from mlq.scheduler.daemon import holds
    from mlq.scheduler.daemon.auth import Caller
    from mlq.scheduler.daemon.peer import Peer

    h = Harness(tmp_path)
    job = h.submit(user="root", network="host", resources={"nodes": 2, "cpus": "1"})
    parts = [p.id for p in h.store.jobs(gang=job, with_spec=False)]
    root = Caller(Peer(1, 0, 0, "root", ()), is_admin=True)
    (r,) = holds.change(h.store, root, [parts[1]], hold=True)  # a part holds its job
    assert r.ok, r.message
    assert [h.job(p).held for p in parts] == [True, True]
    (r,) = holds.change(h.store, root, [job], hold=False)
    assert r.ok and [h.job(p).held for p in parts] == [False, False]
