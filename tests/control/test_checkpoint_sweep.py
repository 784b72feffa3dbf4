"""The checkpoint volumes' sweep and prune (scheduler/daemon/checkpoints.py) over a
temporary store and state dir with a frozen clock; the policy: tests/policy."""

from __future__ import annotations

import os

import pytest
from mlq.executor.rundir import LocalVolumes, checkpoint_dir
from mlq.scheduler import checkpoints as policy
from mlq.scheduler import states
from mlq.scheduler.checkpoints import Fate
from mlq.scheduler.daemon.checkpoints import Checkpoints

DAY = 86400.0


def nodes(h):
    """The harness's one node, its volumes in its state dir (as mlq server's own)."""
    return lambda: [("testnode", LocalVolumes(h.loop.state_dir))]


def volume(h, job_id: int | str) -> str:
    path = checkpoint_dir(h.loop.state_dir, job_id)
    os.makedirs(os.path.join(path, "step-100"))
    with open(os.path.join(path, "step-100", "weights"), "w") as f:
        f.write("w" * 10_000)
    os.symlink("/etc", os.path.join(path, "escape"))  # never followed by the removal
    return path


def test_the_sweep_removes_a_finished_jobs_volume_after_the_retention_only(h):
    ck = Checkpoints(h.store, nodes(h), h.clock, retention_s=DAY)
    done, requeued, pending = h.submit(), h.submit(), h.submit()
    h.store.update_fields(done, state=states.COMPLETED, ended_at=h.clock.time())
    # requeued: back in the queue with its restart count raised, its volume in use
    h.store.update_fields(requeued, state=states.PENDING, restart_count=1)
    paths = {j: volume(h, j) for j in (done, requeued, pending)}
    unowned = volume(h, "bert")

    h.clock.advance(DAY - 1)
    assert ck.sweep() == []
    assert all(os.path.isdir(p) for p in paths.values())
    h.clock.advance(1)
    removed = ck.sweep()
    assert [x.entry.volume.key for x in removed] == [str(done)]
    assert removed[0].bytes >= 10_000
    assert not os.path.lexists(paths[done])
    assert os.path.isdir(paths[requeued]) and os.path.isdir(paths[pending])
    assert os.path.isdir(unowned) and os.path.isdir("/etc")
    # nothing left behind of the removal
    assert sorted(os.listdir(os.path.dirname(unowned))) == sorted(
        [str(requeued), str(pending), "bert"]
    )


def test_the_sweep_runs_at_most_once_an_interval_in_its_own_thread(h):
    ck = Checkpoints(h.store, nodes(h), h.clock, retention_s=0, interval_s=60)
    job = h.submit()
    h.store.update_fields(job, state=states.FAILED, ended_at=h.clock.time())
    path = volume(h, job)
    ck.tick()
    assert ck._thread is not None
    ck._thread.join(10)
    assert not os.path.exists(path)
    path = volume(h, job)  # as if made again: the next sweep is a minute away
    ck.tick()
    assert os.path.isdir(path)
    h.clock.advance(60)
    ck.tick()
    ck._thread.join(10)
    assert not os.path.exists(path)


def test_a_listing_gives_each_volume_its_job_size_and_time_of_removal(h):
    ck = Checkpoints(h.store, nodes(h), h.clock, retention_s=DAY)
    done, running = h.submit(), h.submit()
    h.store.update_fields(done, state=states.TIMEOUT, ended_at=h.clock.time())
    h.store.update_fields(running, state=states.RUNNING)
    volume(h, done)
    volume(h, running)
    listed = {x.entry.volume.key: x for x in ck.listing()}
    assert listed[str(done)].entry.fate == Fate.RETAINED
    assert listed[str(done)].entry.removes_at == h.clock.time() + DAY
    assert listed[str(done)].entry.owner.user == "alice"
    assert listed[str(running)].entry.fate == Fate.ACTIVE
    assert all(x.bytes and x.bytes >= 10_000 for x in listed.values())
    assert ck.prune(None, [done], "root")[0].entry.volume.key == str(done)
    with pytest.raises(policy.PruneRefused):
        ck.prune(None, [running], "root")
