"""The control loop's decisions carried out, with a fake executor and a frozen clock:
what used to take root and seconds (dependencies, requeues, recovery, a start that
fails, a cancel that races a start) in milliseconds."""

from __future__ import annotations

import pytest
from fakes import status
from mlq.executor.errors import LaunchError
from mlq.executor.imageprep import Verdict
from mlq.executor.interface import Found
from mlq.scheduler import states


def test_a_job_starts_with_its_limits_and_runs(h):
    j = h.submit(resources={"cpus": 2, "memory": "1Gi"})
    h.loop.run_pass()
    req = h.executor.started[h.run(j)]
    assert req.resources.memory_max == 2**30 and req.resources.cpu_quota_us == 200_000
    assert req.process.user.uid == 1001
    assert h.job(j).state == states.RUNNING
    assert h.job(j).started_at == h.clock.time()  # the loop's clock, not the wall's
    assert [s for s, _ in h.events(j)] == ["PENDING", "STARTING", "RUNNING"]


@pytest.mark.parametrize(
    ("st", "state", "reason"),
    [
        pytest.param(status(), "COMPLETED", "exit code 0", id="exit 0 is COMPLETED"),
        pytest.param(status("FAILED", 3), "FAILED", "exit code 3", id="exit 3 is FAILED"),
        pytest.param(
            status("COMPLETED", oom=3),
            "OUT_OF_MEMORY",
            "3 processes killed, exit code 0",
            id="exit 0 after OOM kills is OUT_OF_MEMORY with the count",
        ),
        pytest.param(
            status("TIMEOUT", 143, "SIGTERM"), "TIMEOUT", "ran past its time limit",
            id="the time limit is TIMEOUT",
        ),
        pytest.param(
            status("FAILED", -1, error="status file x is unreadable: empty"), "FAILED",
            "status file x is unreadable", id="an unreadable status is FAILED with why",
        ),
    ],
)  # fmt: skip
def test_how_a_run_ended_becomes_the_jobs_state_and_reason(h, st, state, reason):
    j = h.submit()
    h.loop.run_pass()
    h.executor.end(h.run(j), st)
    h.loop.run_pass()
    assert h.job(j).state == state and reason in h.job(j).reason


def test_an_afterok_job_waits_then_starts_or_is_cancelled_when_its_dependency_fails(h):
    a, b = h.submit(), 0
    b = h.submit(depends_on=[a])
    c = h.submit(depends_on=[a])
    h.loop.run_pass()
    assert h.job(b).state == states.PENDING and h.job(b).reason == "Dependency"
    h.executor.end(h.run(a), status())
    h.loop.run_pass()
    assert h.job(b).state == h.job(c).state == states.RUNNING
    d = h.submit()
    e = h.submit(depends_on=[d])
    h.loop.run_pass()
    h.executor.end(h.run(d), status("FAILED", 1))
    h.loop.run_pass()
    assert h.job(e).state == states.CANCELLED
    assert h.job(e).reason == f"DependencyNeverSatisfied: job {d} ended FAILED"


def test_a_preempted_job_is_requeued_and_runs_again_with_a_new_run(h):
    train = h.submit(kind="training", resources={"cpus": 8})
    h.loop.run_pass()
    serve = h.submit(user="bob", team="cv", kind="inference", resources={"cpus": 4})
    h.loop.run_pass()
    assert h.job(train).state == states.STOPPING
    assert h.executor.stops == [(h.run(train), False)]  # its stop signal and grace
    assert h.job(serve).reason.startswith("PreemptionPending")
    h.executor.end(h.run(train), status("STOPPED", 143, "SIGTERM"))
    h.loop.run_pass()
    assert h.job(serve).state == states.RUNNING
    job = h.job(train)
    assert (job.state, job.restart_count) == (states.PENDING, 1)
    assert [s for s, _ in h.events(train)][-2:] == ["PREEMPTED", "PENDING"]
    h.executor.end(h.run(serve), status())
    h.loop.run_pass()
    assert h.job(train).state == states.RUNNING
    assert h.run(train, 1) in h.executor.started
    assert h.executor.started[h.run(train, 1)].process.env["MLQ_RESTART_COUNT"] == "1"


def test_a_job_cancelled_between_the_snapshot_and_its_start_is_never_started(h, monkeypatch):
    j = h.submit()
    apply = h.loop.apply

    def cancel_first(decisions, jobs, parts):
        h.store.cancel_pending([j], "Cancelled by alice")  # the API, on another thread
        apply(decisions, jobs, parts)

    monkeypatch.setattr(h.loop, "apply", cancel_first)
    h.loop.run_pass()
    assert h.job(j).state == states.CANCELLED
    assert h.executor.started == {}
    assert [s for s, _ in h.events(j)] == ["PENDING", "CANCELLED"]


def test_a_start_that_fails_fails_its_job_and_the_others_still_start(h):
    bad, good = h.submit(), h.submit()
    h.executor.fail_start[str(bad)] = LaunchError("cgroup", "create cgroup x: File exists")
    h.loop.run_pass()
    assert h.job(bad).state == states.FAILED
    assert (
        h.job(bad).reason
        == "could not start: launch failed at cgroup: create cgroup x: File exists"
    )
    assert h.job(good).state == states.RUNNING


def test_a_job_whose_image_is_being_prepared_waits_with_the_reason(h, tmp_path):
    image = tmp_path / "big.tar"
    image.write_bytes(b"")
    j = h.submit(user="root", image=str(image))
    h.executor.images[str(image)] = Verdict(False)
    h.loop.run_pass()
    assert h.job(j).reason == f"ImagePending: preparing {image}"
    h.executor.images[str(image)] = Verdict(False, f"image: {image}: bad")
    h.loop.run_pass()
    assert h.job(j).state == states.FAILED and f"image: {image}: bad" in h.job(j).reason


def test_a_grant_taken_back_before_the_start_fails_the_job(h):
    from mlq.scheduler.grants import Grant

    h.store.set_grant(Grant("team:nlp", capabilities=("CAP_NET_RAW",)))
    j = h.submit(security={"capabilities": ["CAP_NET_RAW"]})
    h.store.delete_grant("team:nlp")
    h.loop.run_pass()
    assert h.job(j).state == states.FAILED
    assert "CAP_NET_RAW is not granted to team nlp" in h.job(j).reason


def test_after_a_restart_each_run_is_adopted_finished_or_requeued(h):
    alive, ended, unstarted, stopping = (h.submit(resources={"cpus": 1}) for _ in range(4))
    h.loop.run_pass()
    h.store.transition(stopping, states.STOPPING, "Preempted for job 9", stop_cause="preempt")
    h.store.transition(unstarted, states.STARTING, "on n1", run_dir="fake:x")
    # a new daemon on the same store: what its executor finds of each run
    from harness import Harness

    h2 = Harness.__new__(Harness)
    h2.__dict__.update(h.__dict__)
    from fakes import FakeExecutor
    from mlq.scheduler.daemon.loop import Loop

    h2.executor = FakeExecutor()
    h2.executor.found = {
        h.run(alive): Found(running=True, started=True),
        h.run(ended): Found(running=False, started=True, status=status("FAILED", 2)),
        h.run(unstarted): Found(running=False, started=False),
        h.run(stopping): Found(running=True, started=True, stop_asked=False),
    }
    h2.loop = Loop(h.store, h2.executor, h.clock, h.cluster, h.loop.node, h.loop.state_dir)
    h2.loop.start()
    h2.loop.stop()
    assert h.job(alive).state == states.RUNNING
    assert h.job(ended).state == states.FAILED and h.job(ended).reason == "exit code 2"
    assert h.job(unstarted).state in (
        states.PENDING,
        states.RUNNING,
    )  # requeued (and maybe restarted)
    assert h2.executor.discarded[:1] == [h.run(unstarted)]
    assert (h.run(stopping), False) in h2.executor.stops  # its stop, never sent, goes now


def test_reasons_say_which_resource_is_short_and_by_how_much(h):
    big = h.submit(resources={"cpus": 8})
    h.loop.run_pass()
    small = h.submit(user="bob", team="cv", resources={"cpus": 2})  # cv has no quota
    h.loop.run_pass()
    assert h.job(big).state == states.RUNNING
    assert h.job(small).reason == "Resources: cpu 2 > 0 free"


def test_a_checkpoint_mark_is_recorded_once_the_run_started(h):
    j = h.submit()
    h.loop.run_pass()
    h.executor.marks[j] = h.clock.time() + 5
    h.clock.advance(10)
    h.loop.run_pass()
    assert h.job(j).checkpoint_at == h.clock.time() - 5
