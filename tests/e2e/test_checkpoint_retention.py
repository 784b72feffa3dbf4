"""Checkpoint volumes of finished jobs: removed a retention after the job ended, kept
while the job can still run; ``mlq checkpoints list|prune`` for mlq admins only."""

from __future__ import annotations

import time

QUICK = (
    "name: ck\nteam: nlp\nkind: training\ncommand: [/bin/sh, -c, 'echo saved > /ckpt/state']\n"
    "resources: {cpus: 1, memory: 32Mi}\ncheckpoint: {target: /ckpt}\n"
)
HELD = (
    "name: waits\nteam: nlp\ncommand: [/bin/true]\nresources: {cpus: 1, memory: 32Mi}\n"
    "checkpoint: {target: /ckpt}\n"
)
SLEEPER = (
    "name: sleeper\nteam: nlp\ncommand: [/bin/sleep, '600']\nresources: {cpus: 1, memory: 32Mi}\n"
)
# sweeps every half second; the loop passes at least as often
FAST = {"MLQ_CHECKPOINT_SWEEP_INTERVAL": "0.5", "MLQ_SCHEDULE_INTERVAL": "0.5"}


def volume(d, job_id: int):
    return d.state_dir / "checkpoints" / str(job_id)


def pending(d, user) -> int:
    """A job that stays PENDING: it waits for a job that sleeps."""
    sleeper = d.submit(SLEEPER, user=user)
    job = d.submit(HELD, "--after", str(sleeper), user=user)
    assert d.show(job)["state"] == "PENDING"
    return job


def wait_until(what, timeout: float = 20) -> bool:
    deadline = time.monotonic() + timeout
    while not what():
        if time.monotonic() > deadline:
            return False
        time.sleep(0.1)
    return True


def test_a_finished_jobs_volume_goes_after_the_retention_and_a_waiting_jobs_stays(
    make_daemon, unix_users
):
    d = make_daemon(env=FAST, extra_teams="checkpoint_retention: 3s")
    alice = unix_users["alice"]
    done = d.submit(QUICK, user=alice)
    ended = d.wait_for(done, "COMPLETED")
    assert (volume(d, done) / "state").read_text() == "saved\n"
    # a pending job (it waits for another), whose volume a requeued run would reuse
    waiting = pending(d, alice)
    volume(d, waiting).mkdir(parents=True)
    (volume(d, waiting) / "state").write_text("from an earlier run\n")
    # a volume of no job of this daemon's (mlq run names one by the job's name)
    (d.state_dir / "checkpoints" / "by-name").mkdir()
    # kept within the retention...
    time.sleep(1)
    assert volume(d, done).exists()
    # ...and gone after it, by the daemon's own sweep
    assert wait_until(lambda: not volume(d, done).exists()), "the volume was never removed"
    assert time.time() >= ts(ended["ended_at"]) + 3 - 1
    assert (volume(d, waiting) / "state").read_text() == "from an earlier run\n"
    assert (d.state_dir / "checkpoints" / "by-name").is_dir()
    assert d.show(waiting)["state"] == "PENDING"


def test_admins_list_and_prune_volumes_and_plain_users_are_refused(make_daemon, unix_users):
    d = make_daemon()  # the default retention: 7 days
    alice, dave = unix_users["alice"], unix_users["dave"]
    first = d.submit(QUICK, user=alice)
    second = d.submit(QUICK, user=alice)
    for j in (first, second):
        d.wait_for(j, "COMPLETED")
    waiting = pending(d, alice)
    volume(d, waiting).mkdir()

    # a plain user (even the owner of the jobs) may not list or prune
    for args in (("checkpoints", "list"), ("checkpoints", "prune", str(first))):
        r = d.cli(*args, user=alice)
        assert r.code == 3, r.err
        assert 'only root or members of the "mlqt-admins" group (mlq admins) may' in r.err
    assert volume(d, first).exists()

    # an mlq admin (dave, of the admin group) lists them, with owners and when they go
    r = d.cli("checkpoints", "list", "--json", user=dave)
    assert r.code == 0, r.err
    listed = {c["job_id"]: c for c in r.json()["checkpoints"]}
    assert r.json()["retention_s"] == 7 * 86400
    assert set(listed) == {first, second, waiting}
    assert listed[first]["user"] == alice.pw_name and listed[first]["state"] == "COMPLETED"
    assert listed[first]["fate"] == "retained" and listed[first]["removes_at"]
    assert listed[first]["bytes"] > 0
    assert listed[waiting]["fate"] == "active" and listed[waiting]["removes_at"] is None
    r = d.cli("checkpoints", "list", user=dave)
    assert r.code == 0 and "kept: the job can still run" in r.out

    # nothing is past the retention yet: a plain prune removes nothing
    r = d.cli("checkpoints", "prune", user=dave)
    assert (r.code, r.out) == (0, "No checkpoint volume to remove\n")
    # a job that can still run keeps its volume, and the whole prune is refused
    r = d.cli("checkpoints", "prune", str(first), str(waiting), user=dave)
    assert r.code == 1 and f"job {waiting} is PENDING" in r.err
    assert volume(d, first).exists() and volume(d, waiting).exists()
    # by name
    r = d.cli("checkpoints", "prune", str(first), user=dave)
    assert r.code == 0, r.err
    assert r.out.startswith(f"Removed 1 checkpoint volume ({first}): ")
    assert not volume(d, first).exists() and volume(d, second).exists()
    # by age: every finished job's (root, too, is an mlq admin)
    r = d.cli("checkpoints", "prune", "--older-than", "0s", "--json")
    assert r.code == 0, r.err
    assert [c["job_id"] for c in r.json()["removed"]] == [second]
    assert not volume(d, second).exists() and volume(d, waiting).exists()


def ts(text: str) -> float:
    from datetime import datetime

    return datetime.fromisoformat(text.replace("Z", "+00:00")).timestamp()
