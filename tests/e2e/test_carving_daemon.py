"""MIG carving end to end: the real daemon, the real executor, the fake NVML (its state
shared with the daemon's process through its files), a small node of two H100s.

GPU 0 is whole; GPU 1 is in MIG mode with one 3g.40gb at start 0, so a 2g.20gb has room
at start 4 but no slice: the daemon must carve it for the job, wire the job to it, and
destroy it when the job ends (also when it ended while the daemon was down). A driver
that refuses makes the job wait with the reason while other jobs still start.
"""

from __future__ import annotations

import json
import os
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest
from daemon_helpers import Daemon
from mlq.cli.client import Client
from mlq.executor import fakenvml, gpus
from mlq.executor.yamlfile import load_yaml

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "executor"))
from exec_helpers import leftovers  # noqa: E402

TERMINAL = {"COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "PREEMPTED"}
INVENTORY = load_yaml(
    Path(__file__).resolve().parents[2] / "configs" / "gpus" / "h100-2-carve.yaml"
)
# what the job sees: its NVIDIA device nodes and variables, then it waits for the gate
LOOK = (
    "for d in $(find /dev -name 'nvidia*' | sort); do [ -c $d ] && echo $d; done;"
    ' echo "CUDA=$CUDA_VISIBLE_DEVICES";'
    " while [ ! -e /gate/open ]; do sleep 0.05; done"
)


class CarvingDaemon(Daemon):
    """A daemon on the fake node, with the calls these tests make."""

    gate: Path
    env_gpus: dict[str, str]

    def submit(self, resources: str, name: str = "job") -> int:
        path = self.job_file(
            f"{name}-{time.monotonic_ns()}.yaml",
            f"""
name: {name}
team: cv
kind: batch
command: {json.dumps(["/bin/sh", "-c", LOOK])}
resources: {{{resources}, cpus: 1, memory: 128Mi}}
volumes: [{{source: {self.gate}, target: /gate, readonly: true}}]
""",
        )
        r = self.cli("submit", str(path), "--json")
        assert r.code == 0, r.err
        return r.json()["jobs"][0]["id"]

    def show(self, job_id: int) -> dict:
        return Client(str(self.socket)).get(f"/v1/jobs/{job_id}")

    def wait_for(self, job_id: int, states: set[str], timeout: float = 60) -> dict:
        deadline = time.monotonic() + timeout
        while True:
            job = self.show(job_id)
            if job["state"] in states:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job['state']}, not {states}: {job}")
            time.sleep(0.05)

    def wait_until(self, what: Callable[[], bool], timeout: float = 30) -> None:
        deadline = time.monotonic() + timeout
        while not what():
            if time.monotonic() > deadline:
                raise AssertionError(f"never true: {what.__doc__ or what}")
            time.sleep(0.05)

    def log(self, job_id: int) -> list[str]:
        r = self.cli("logs", str(job_id))
        assert r.code == 0, r.err
        return r.out.splitlines()

    def slices(self) -> dict[tuple[int, int], dict]:
        """(GPU, start) -> the MIG slice as ``mlq nodes --json`` shows it, with its holder."""
        r = self.cli("nodes", "--json")
        assert r.code == 0, r.err
        node = r.json()["nodes"][0]
        return {(g["index"], m["start"]): m for g in node["gpus"] if g.get("mig") for m in g["mig"]}

    def driver_slices(self) -> list[str]:
        """GPU 1's slices as the driver (the fake's state) has them, read here."""
        old = {k: os.environ.get(k) for k in self.env_gpus}
        os.environ.update(self.env_gpus)
        try:
            return [f"{m.profile}@{m.start}" for m in gpus.discover().gpu(1).mig]
        finally:
            for k, v in old.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v


@pytest.fixture
def make_daemon(daemon_home: Path) -> Iterator[Callable[..., CarvingDaemon]]:
    made: list[CarvingDaemon] = []

    def make(**inventory_changes) -> CarvingDaemon:
        inv = daemon_home / "inventory.yaml"
        inv.write_text(json.dumps({**INVENTORY, **inventory_changes}))
        files = fakenvml.materialize(fakenvml.load_inventory(inv), daemon_home / "fake", inv)
        config = daemon_home / "cluster.yaml"
        config.write_text(
            f"""
node: {{name: e2e, cpus: 8, memory: 16Gi, gpus: discover}}
admin_group: mlqt-admins
teams: [{{name: cv, members: [root]}}]
grants: [{{to: "*", volume_paths: [/tmp, {daemon_home}]}}]
"""
        )
        gate = daemon_home / "gate"
        gate.mkdir(exist_ok=True)
        # a long safety-net interval: every start and end is driven by events
        env = files.env() | {"MLQ_SCHEDULE_INTERVAL": "600"}
        d = CarvingDaemon(home=daemon_home, config=config, extra_env=env)
        d.gate, d.env_gpus = gate, files.env()
        d.start()
        made.append(d)
        return d

    yield make
    for d in made:
        (daemon_home / "gate" / "open").touch()
        if d.proc is None:
            d.start()
        c = Client(str(d.socket))
        active = c.get("/v1/jobs")["jobs"]
        if active:
            c.post("/v1/jobs/cancel", {"ids": [j["id"] for j in active], "now": True})
            for j in active:
                d.wait_for(j["id"], TERMINAL, timeout=30)
        d.stop()
    deadline = time.monotonic() + 10
    while (left := leftovers(str(daemon_home))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"mlq left behind: {left}"


def test_a_mig_job_without_its_slice_gets_one_carved_and_it_is_destroyed_at_the_end(
    make_daemon,
):
    d = make_daemon()
    assert (1, 4) not in d.slices()

    job_id = d.submit("mig: {profile: 2g.20gb, count: 1}", name="carved")
    job = d.wait_for(job_id, {"RUNNING", "FAILED", "COMPLETED"})
    assert job["state"] == "RUNNING", job

    # the job holds the slice mlq carved for it, and its record says mlq carved it
    assert job["devices"]["mig"] == [{"gpu": 1, "profile": "2g.20gb", "start": 4}]
    (carved,) = job["devices"]["carved"]
    assert {k: carved[k] for k in ("gpu", "start", "profile")} == {
        "gpu": 1,
        "start": 4,
        "profile": "2g.20gb",
    }
    shown = d.slices()[(1, 4)]
    assert (shown["profile"], shown["uuid"], shown["job"]) == ("2g.20gb", carved["uuid"], job_id)
    assert d.driver_slices() == ["3g.40gb@0", "2g.20gb@4"]
    d.wait_until(lambda: any(line.startswith("CUDA=") for line in d.log(job_id)))
    out = d.log(job_id)
    assert f"CUDA={carved['uuid']}" in out and carved["uuid"].startswith("MIG-")
    caps = [n for n in out if n.startswith("/dev/nvidia-caps/")]
    assert caps == [
        f"/dev/nvidia-caps/nvidia-cap{shown['gi_cap_minor']}",
        f"/dev/nvidia-caps/nvidia-cap{shown['ci_cap_minor']}",
    ]

    (d.gate / "open").touch()
    d.wait_for(job_id, {"COMPLETED"})
    # gone from the driver and from the daemon's view (the pass that recorded the end)
    d.wait_until(lambda: (1, 4) not in d.slices())
    assert d.driver_slices() == ["3g.40gb@0"]
    assert (1, 0) in d.slices()  # the slice mlq did not carve stays


def test_a_carved_slice_of_a_job_that_ended_while_the_daemon_was_down_is_destroyed(
    make_daemon,
):
    d = make_daemon()
    job_id = d.submit("mig: {profile: 2g.20gb, count: 1}", name="outlives")
    assert d.wait_for(job_id, {"RUNNING", "FAILED"})["state"] == "RUNNING"
    assert d.driver_slices() == ["3g.40gb@0", "2g.20gb@4"]

    d.stop()  # the job keeps running under its supervisor
    (d.gate / "open").touch()
    time.sleep(0.5)
    assert d.driver_slices() == ["3g.40gb@0", "2g.20gb@4"]  # nobody destroyed it yet
    d.start()  # recovery records the end, and destroys the slice carved for the run

    assert d.wait_for(job_id, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    assert d.driver_slices() == ["3g.40gb@0"]
    assert (1, 4) not in d.slices()


def test_a_driver_that_refuses_makes_the_job_wait_with_the_reason_and_others_start(
    make_daemon,
):
    d = make_daemon(mig_create="refuse")
    mig_id = d.submit("mig: {profile: 2g.20gb, count: 1}", name="refused")
    reason = "MigCarveFailed: GPU 1 2g.20gb@4: Insufficient Permissions (NVML_ERROR_NO_PERMISSION)"
    d.wait_until(lambda: d.show(mig_id)["reason"] == reason)
    assert d.show(mig_id)["state"] == "PENDING"
    assert d.driver_slices() == ["3g.40gb@0"]

    # a whole-GPU job on the same node starts, and the MIG job still says why it waits
    gpu_id = d.submit("gpus: 1", name="whole")
    job = d.wait_for(gpu_id, {"RUNNING", "FAILED", "COMPLETED"})
    assert job["state"] == "RUNNING" and job["devices"]["gpus"] == [0], job
    # the existing free slice is still given: the node only stopped carving new ones
    three_id = d.submit("mig: {profile: 3g.40gb, count: 1}", name="existing")
    job = d.wait_for(three_id, {"RUNNING", "FAILED", "COMPLETED"})
    assert job["state"] == "RUNNING" and "carved" not in job["devices"], job
    assert d.show(mig_id)["state"] == "PENDING"
    assert d.show(mig_id)["reason"] == reason

    # an admin's refresh lets the node try again; this driver still refuses
    assert d.cli("nodes", "--refresh").code == 0
    (d.gate / "open").touch()
    d.wait_for(gpu_id, {"COMPLETED"})
    d.wait_for(three_id, {"COMPLETED"})
    d.wait_until(lambda: d.show(mig_id)["reason"] == reason)
    assert d.show(mig_id)["state"] == "PENDING"
    log = (d.home / "server.log").read_text()
    assert "node e2e stops carving MIG slices: create MIG slice 2g.20gb@4 on GPU 1" in log


def test_a_slice_carved_for_a_job_whose_launch_fails_is_destroyed_at_once(make_daemon, daemon_home):
    d = make_daemon()
    first = d.submit("gpus: 1", name="first")
    data = daemon_home / "data"
    data.mkdir()
    path = d.job_file(
        "broken.yaml",
        f"""
name: broken
team: cv
command: [/bin/true]
resources: {{mig: {{profile: 2g.20gb, count: 1}}, cpus: 1, memory: 128Mi}}
volumes: [{{source: {data}, target: /data}}]
""",
    )
    r = d.cli("submit", str(path), "--json", "--after", str(first))
    assert r.code == 0, r.err
    data.rmdir()  # gone by the time it starts: its launch fails after its slice is carved
    (d.gate / "open").touch()
    job = d.wait_for(r.json()["jobs"][0]["id"], {"FAILED", "RUNNING", "COMPLETED"})
    assert job["state"] == "FAILED" and "could not start" in job["reason"], job
    assert job["devices"]["carved"][0]["start"] == 4  # it was carved for the job ...
    assert d.driver_slices() == ["3g.40gb@0"]  # ... and destroyed when the launch failed
    assert (1, 4) not in d.slices()
