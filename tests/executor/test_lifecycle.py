"""Stopping, time limits, volumes, the checkpoint volume, failed launches, and a
supervisor that outlives (or loses) its launcher."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from exec_helpers import finish, request, run
from mlq.executor import (
    BadRequest,
    Checkpoint,
    IdMap,
    LaunchError,
    Mount,
    Namespaces,
    Outcome,
    adopt,
    poll,
    start,
    stats,
    stop,
    wait,
)
from mlq.executor.runner import Handle

PY = sys.executable  # runs on the host, with the venv (mlq importable)


def wait_for_output(handle, text: str, timeout: float = 20) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if text in Path(handle.stdout).read_text():
            return
        assert poll(handle) is None, Path(handle.stderr).read_text()
        time.sleep(0.02)
    pytest.fail(f"{text!r} never appeared in {handle.stdout}")


def test_a_job_that_traps_sigterm_writes_its_checkpoint_and_exits_within_the_grace(
    state_dir, tmp_path
):
    ck = tmp_path / "ck"
    script = 'trap "echo saved > /checkpoints/state; exit 0" TERM; echo ready; while :; do sleep 0.05; done'
    h = start(
        request(
            state_dir,
            ["/bin/sh", "-c", script],
            checkpoint=Checkpoint(str(ck), "/checkpoints"),
            grace_period_s=30,
        )
    )
    wait_for_output(h, "ready")
    stop(h)
    st = finish(h)
    assert st.state == Outcome.STOPPED
    assert st.exit_code == 0 and st.signal is None  # it left on its own, not at grace end
    assert (ck / "state").read_text() == "saved\n"


def test_a_job_that_ignores_the_stop_signal_is_killed_at_grace_end(state_dir):
    h = start(
        request(
            state_dir, ["/bin/sh", "-c", 'trap "" TERM; echo ready; while :; do sleep 0.05; done']
        )
    )
    wait_for_output(h, "ready")
    stop(h, grace_s=0.5)
    st = finish(h)
    assert st.state == Outcome.STOPPED
    assert st.signal == "SIGKILL"


def test_the_stop_signal_is_configurable(state_dir):
    script = 'trap "echo got-usr1; exit 3" USR1; echo ready; while :; do sleep 0.05; done'
    h = start(request(state_dir, ["/bin/sh", "-c", script], stop_signal="SIGUSR1"))
    wait_for_output(h, "ready")
    stop(h)
    st = finish(h)
    assert (st.state, st.exit_code) == (Outcome.STOPPED, 3)
    assert "got-usr1" in Path(h.stdout).read_text()


def test_a_job_whose_command_forked_into_the_background_is_fully_ended(state_dir):
    # the background child ignores SIGTERM in its own session; the main process exits
    script = "setsid sh -c 'trap \"\" TERM; while :; do sleep 0.05; done' & echo ready; wait"
    h = start(request(state_dir, ["/bin/sh", "-c", script]))
    wait_for_output(h, "ready")
    live = stats(h)
    assert live.pids_current >= 3 and live.memory_current > 0 and live.memory_anon > 0
    stop(h, grace_s=0.5)
    st = finish(h)
    assert st.state == Outcome.STOPPED
    # nothing_left checks that no process of the job survived


def test_orphans_are_reaped_by_mlq_init(state_dir):
    # the subshell's child outlives its parent, is re-parented to PID 1, and exits
    script = "(sleep 0.1 &) ; sleep 0.5; ps -eo stat="
    st, out, _ = run(state_dir, ["/bin/sh", "-c", script])
    assert st.state == Outcome.COMPLETED
    states = [line.split()[0] for line in out.splitlines()]
    assert states and not any(s.startswith("Z") for s in states), out


def test_a_job_past_its_time_limit_ends_as_timeout(state_dir):
    st, _, _ = run(state_dir, ["/bin/sleep", "60"], time_limit_s=0.5, grace_period_s=0.5)
    assert st.state == Outcome.TIMEOUT


def test_the_checkpoint_volume_keeps_a_file_across_two_runs(state_dir, tmp_path):
    ck = Checkpoint(str(tmp_path / "jobs" / "bert" / "checkpoint"), "/ckpt")
    script = "cat /ckpt/step 2>/dev/null || echo none; echo 1 > /ckpt/step"
    _, first, _ = run(state_dir, ["/bin/sh", "-c", script], checkpoint=ck)
    _, second, _ = run(state_dir, ["/bin/sh", "-c", script], checkpoint=ck)
    assert (first.strip(), second.strip()) == ("none", "1")


def test_a_job_running_as_a_user_owns_its_new_checkpoint_volume(state_dir, tmp_path):
    from mlq.executor import User

    ck = Checkpoint(str(tmp_path / "ck-user"), "/ckpt")
    st, out, err = run(
        state_dir,
        ["/bin/sh", "-c", "echo 5 > /ckpt/step && id -u"],
        checkpoint=ck,
        user=User(1234, 1234),
    )
    assert (st.state, out.strip()) == (Outcome.COMPLETED, "1234"), err
    assert os.stat(tmp_path / "ck-user" / "step").st_uid == 1234


def test_volumes_are_bound_read_only_or_read_write(state_dir, tmp_path):
    data, out_dir = tmp_path / "data", tmp_path / "out"
    data.mkdir()
    out_dir.mkdir()
    (data / "input").write_text("dataset\n")
    script = "cat /data/input; echo x > /data/new; echo rc=$?; echo result > /out/r"
    st, out, _ = run(
        state_dir,
        ["/bin/sh", "-c", script],
        mounts=[Mount(str(data), "/data", readonly=True), Mount(str(out_dir), "/out")],
    )
    assert out.split() == ["dataset", "rc=2"]
    assert not (data / "new").exists()
    assert (out_dir / "r").read_text() == "result\n"


def test_a_missing_volume_source_is_refused_before_anything_is_made(state_dir, tmp_path):
    with pytest.raises(BadRequest, match="does not exist"):
        start(request(state_dir, ["/bin/true"], mounts=[Mount(str(tmp_path / "nope"), "/data")]))
    assert not os.path.exists(os.path.join(state_dir, "runs"))


@pytest.mark.parametrize(
    "kw,step",
    [
        pytest.param(
            {"args": ["/no/such/command"]}, "exec", id="a command that does not exist fails at exec"
        ),
        pytest.param({"cwd": "/no/such/dir"}, "cwd", id="a missing working directory fails at cwd"),
    ],
)
def test_a_launch_that_fails_midway_says_which_step_and_undoes_everything(state_dir, kw, step):
    args = kw.pop("args", ["/bin/true"])
    req = request(state_dir, args, **kw)
    with pytest.raises(LaunchError) as info:
        start(req)
    assert info.value.step == step
    status = json.loads(Path(req.run_dir, "status.json").read_text())
    assert status["state"] == "FAILED" and step in status["error"]
    # nothing_left: cgroup, mounts and processes are gone


def test_logs_and_the_launch_record_are_kept_next_to_the_status(state_dir, cgroup_version):
    st, out, err = run(state_dir, ["/bin/sh", "-c", "echo to-out; echo to-err >&2"])
    assert (out, err) == ("to-out\n", "to-err\n")
    run_dir = next(Path(state_dir, "runs").iterdir())
    record = json.loads((run_dir / "launch.json").read_text())
    assert record["cgroup"]["written"]
    assert any(m["target"] == "/proc" for m in record["mounts"])
    assert json.loads((run_dir / "status.json").read_text())["state"] == "COMPLETED"
    # v2 creates init inside its cgroup (clone3 CLONE_INTO_CGROUP); on v1 init moves
    # itself (tasks) before anything else
    join = json.loads((run_dir / "supervisor.json").read_text())["cgroup_join"]
    assert join == ("clone_into_cgroup" if cgroup_version == 2 else "tasks")


def test_the_supervisor_outlives_the_launcher_and_a_new_process_adopts_and_stops_the_job(
    state_dir,
):
    # launch from a process that exits at once, like a daemon that crashed
    code = (
        "import sys; sys.path.insert(0, sys.argv[1]);"
        "from exec_helpers import request; from mlq.executor import start;"
        "h = start(request(sys.argv[2], ['/bin/sleep', '60'], run_id='adopted'));"
        "print(h.run_dir)"
    )
    out = subprocess.run(
        [PY, "-c", code, os.path.dirname(__file__), state_dir],
        capture_output=True,
        text=True,
        check=True,
    )
    run_dir = out.stdout.strip()
    h = adopt(run_dir)
    assert isinstance(h, Handle) and poll(h) is None
    stop(run_dir, grace_s=5)
    st = wait(run_dir, timeout=30)
    assert st is not None and st.state == Outcome.STOPPED
    assert adopt(run_dir).state == Outcome.STOPPED


def test_a_lost_supervisor_is_finished_by_adopt(state_dir):
    h = start(request(state_dir, ["/bin/sleep", "60"]))
    os.kill(h.supervisor_pid, signal.SIGKILL)
    os.waitpid(h.supervisor_pid, 0)
    st = adopt(h.run_dir)
    assert st.state == Outcome.FAILED
    assert "lost" in st.error
    # nothing_left: adopt killed the job and removed its cgroup


def test_a_user_namespace_maps_the_jobs_root_to_an_unprivileged_host_uid(state_dir):
    ns = Namespaces(
        user=True,
        uid_mappings=[IdMap(0, 100000, 65536)],
        gid_mappings=[IdMap(0, 100000, 65536)],
    )
    st, out, _ = run(state_dir, ["/bin/sh", "-c", "id -u; cat /proc/self/uid_map"], namespaces=ns)
    lines = out.split()
    assert st.state == Outcome.COMPLETED
    assert lines[0] == "0"
    assert lines[1:] == ["0", "100000", "65536"]


def test_a_run_whose_alive_file_goes_stale_is_killed_by_its_supervisor(state_dir, tmp_path):
    """The dead man's switch a node agent sets (docs/cluster.md "Fencing"): while the
    file is touched the run goes on; once it is older than its limit the supervisor
    itself kills the run, with no launcher around, and says why."""
    from mlq.executor.request import Alive

    alive = tmp_path / "alive"
    alive.touch()
    h = start(request(state_dir, ["/bin/sleep", "60"], alive=Alive(str(alive), 0.6)))
    deadline = time.monotonic() + 1.5
    while time.monotonic() < deadline:  # kept fresh: it runs on
        alive.touch()
        assert poll(h) is None
        time.sleep(0.1)
    t0 = time.monotonic()
    st = finish(h, timeout=10)
    assert st.state == Outcome.STOPPED
    assert time.monotonic() - t0 < 3
    log = (Path(h.run_dir) / "supervisor.log").read_text()
    assert "its node agent stopped answering" in log, log


def test_a_run_whose_alive_file_is_gone_is_killed(state_dir, tmp_path):
    from mlq.executor.request import Alive

    h = start(request(state_dir, ["/bin/sleep", "60"], alive=Alive(str(tmp_path / "none"), 30)))
    assert finish(h, timeout=10).state == Outcome.STOPPED
