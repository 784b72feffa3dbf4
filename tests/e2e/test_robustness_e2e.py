"""What the records say is what happened: a cancel means never started, an OOM kill is
OUT_OF_MEMORY, one broken job never stops another's pass."""

from __future__ import annotations

import json
import time
from pathlib import Path

QUICK = """
name: quick
team: nlp
command: [/bin/sh, -c, 'echo ran']
resources: {cpus: 1, memory: 64Mi}
"""


def test_a_job_cancelled_right_after_submit_never_runs(make_daemon, unix_users):
    """40 submit-then-cancel pairs, as fast as the CLI goes: once the API has answered
    CANCELLED, no STARTING or RUNNING may follow, and no run dir may exist."""
    d = make_daemon()
    alice = unix_users["alice"]
    client = d.client()
    path = d.job_file("quick.yaml", QUICK)
    from mlq.executor.yamlfile import load_yaml

    spec = load_yaml(path)
    ids = []
    for _ in range(40):
        job = client.post("/v1/jobs", {"spec": spec})["jobs"][0]["id"]
        r = client.post("/v1/jobs/cancel", {"ids": [job], "now": True})["results"][0]
        ids.append((job, r["state"]))
    time.sleep(1.0)
    for job, answered in ids:
        events = [e["state"] for e in d.show(job)["events"]]
        if answered == "CANCELLED":
            assert events == ["PENDING", "CANCELLED"], (job, events)
            assert not (d.state_dir / "runs" / f"{job}.0").exists()
        else:  # it had started: then it was stopped, and recorded as cancelled
            d.wait_for(job, {"CANCELLED", "COMPLETED"})
    del alice


def test_cancelling_many_pending_jobs_starts_none_of_them_meanwhile(make_daemon, unix_users):
    d = make_daemon()
    alice = unix_users["alice"]
    gate = d.submit(
        QUICK.replace("echo ran", "sleep 30").replace("cpus: 1", "cpus: 16"), user=alice
    )
    d.wait_for(gate, "RUNNING")
    waiting = [d.submit(QUICK, user=alice) for _ in range(5)]
    # the gate's end would start them all: cancel them and the gate in one request
    r = d.cli("cancel", *map(str, waiting), str(gate), "--now", user=alice)
    assert r.code == 0, r.err
    d.wait_for(gate, "CANCELLED")
    time.sleep(0.5)
    for job in waiting:
        assert [e["state"] for e in d.show(job)["events"]] == ["PENDING", "CANCELLED"]


def test_a_job_whose_processes_were_killed_for_memory_is_out_of_memory_even_if_it_exits_0(
    make_daemon, unix_users
):
    """Like stress-ng's workers: children are OOM-killed, the parent survives and exits 0.
    Slurm calls such a job OUT_OF_MEMORY; so does mlq, with the count."""
    d = make_daemon()
    job = d.submit(
        """
name: hog
team: nlp
command: [/bin/sh, -c, 'for i in 1 2 3; do python3 -c "x = bytearray(200 << 20)" || true; done; exit 0']
resources: {cpus: 1, memory: 64Mi}
""",
        user=unix_users["alice"],
    )
    j = d.wait_for(job, {"COMPLETED", "OUT_OF_MEMORY", "FAILED"})
    assert j["state"] == "OUT_OF_MEMORY", j["reason"]
    assert "3 processes killed, exit code 0" in j["reason"]


def test_a_broken_start_fails_its_job_and_the_pass_goes_on(make_daemon, unix_users):
    """A corrupt status file, an image that cannot be unpacked: each fails its own job;
    another user's job still starts in the same passes."""
    d = make_daemon()
    alice, bob = unix_users["alice"], unix_users["bob"]
    bad_image = d.home / "not-a-tarball.tar"
    bad_image.write_bytes(b"this is not a tar archive" * 100)
    bad_image.chmod(0o644)
    broken = d.submit(QUICK + f"image: {bad_image}\n", user=alice)
    ok = d.submit(QUICK, user=bob)
    assert d.wait_for(ok, "COMPLETED")["state"] == "COMPLETED"
    b = d.wait_for(broken, {"FAILED", "COMPLETED"})
    assert b["state"] == "FAILED" and "could not start" in b["reason"]


def test_a_launch_cut_short_leaves_no_cgroup_that_blocks_its_restart(make_daemon, unix_users):
    """A run dir and cgroups of a launch the daemon never finished (killed between
    making them and recording the run) are removed; the requeued run starts."""
    d = make_daemon()
    alice = unix_users["alice"]
    gate = d.submit(
        QUICK.replace("echo ran", "sleep 30").replace("cpus: 1", "cpus: 16"), user=alice
    )
    d.wait_for(gate, "RUNNING")
    job = d.submit(QUICK, user=alice)
    d.stop()
    # what a kill -9 mid-launch leaves: the job recorded STARTING, its request and
    # an empty cgroup of the run's name in every hierarchy, no supervisor
    import sqlite3

    from mlq.executor import cgroups
    from mlq.executor.request import LaunchRequest, Process
    from mlq.executor.runner import cgroup_name

    run_dir = d.state_dir / "runs" / f"{job}.0"
    run_dir.mkdir(parents=True)
    req = LaunchRequest(run_id=run_dir.name, state_dir=str(d.state_dir), process=Process(["x"]))
    (run_dir / "request.json").write_text(req.to_json())
    made = []
    for parent in cgroups.parents():
        p = Path(parent) / cgroup_name(req)
        p.mkdir()
        made.append(p)
    assert made
    with sqlite3.connect(d.db) as conn:
        conn.execute("UPDATE jobs SET state='STARTING', run_dir=? WHERE id=?", (str(run_dir), job))
    old = time.time() - 120
    import os

    os.utime(run_dir / "request.json", (old, old))
    d.start()
    d.cli("cancel", str(gate), "--now")
    j = d.wait_for(job, {"COMPLETED", "FAILED"})
    assert j["state"] == "COMPLETED", j["events"]
    assert not any(p.exists() for p in made)
    assert json.loads(json.dumps(j))["restart_count"] == 0
