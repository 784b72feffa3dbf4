"""mlq end to end: a real daemon schedules and runs real jobs through the executor
(namespaces, cgroups, overlay root), as users live it."""

from __future__ import annotations

import json
import signal
import time
from datetime import datetime

import pytest


def ts(iso: str) -> float:
    return datetime.fromisoformat(iso.replace("Z", "+00:00")).timestamp()


def events(job: dict) -> list[tuple[str, str]]:
    return [(e["state"], e["reason"]) for e in job["events"]]


def test_a_job_runs_end_to_end_and_its_log_is_kept(make_daemon, unix_users):
    d = make_daemon()
    alice = unix_users["alice"]
    job_id = d.submit(
        """
name: hello
team: nlp
command: [/bin/sh, -c, 'echo "hello from $(id -un) job $MLQ_JOB_ID team $MLQ_TEAM"; echo oops >&2']
resources: {cpus: 1, memory: 128Mi}
""",
        user=alice,
    )
    job = d.wait_for(job_id, "COMPLETED")
    assert [s for s, _ in events(job)] == ["PENDING", "STARTING", "RUNNING", "COMPLETED"]
    assert job["exit_code"] == 0
    r = d.cli("logs", str(job_id), user=alice)
    assert r.out == f"hello from {alice.pw_name} job {job_id} team nlp\n"
    assert d.cli("logs", str(job_id), "--stderr", user=alice).out == "oops\n"
    # the log belongs to its owner: another user of the team may not read it
    assert d.cli("logs", str(job_id), user=unix_users["bob"]).code == 3
    hist = d.cli("history", "--json", user=alice).json()["jobs"]
    assert [(j["id"], j["state"]) for j in hist] == [(job_id, "COMPLETED")]


def test_the_incident_one_teams_memory_hog_cannot_hurt_another_teams_job(make_daemon, unix_users):
    """shared/seed's 2 AM incident: team C's job allocates past its limit while team
    A's job serves; C's ends OUT_OF_MEMORY, A's keeps running and completes."""
    d = make_daemon()
    server = d.submit(
        """
name: ranker
team: search
command: [/bin/sh, -c, 'for i in 1 2 3 4 5 6 7 8 9 10; do echo "served $i"; sleep 0.3; done']
resources: {cpus: 1, memory: 256Mi}
""",
        user=unix_users["alice"],
    )
    d.wait_for(server, "RUNNING")
    hog = d.submit(
        """
name: hog
team: cv
command: [python3, -c, "x = 'y' * (400 << 20); print('allocated')"]
resources: {cpus: 1, memory: 64Mi}
""",
        user=unix_users["bob"],
    )
    hog_job = d.wait_for(hog, {"OUT_OF_MEMORY", "FAILED", "COMPLETED"})
    assert hog_job["state"] == "OUT_OF_MEMORY"
    assert d.show(server)["state"] == "RUNNING"  # untouched while the hog died
    served = d.wait_for(server, {"COMPLETED", "FAILED", "OUT_OF_MEMORY"})
    assert served["state"] == "COMPLETED"
    assert d.log(server).splitlines()[-1] == "served 10"
    # what C's owner sees, in one line
    shown = d.cli("show", str(hog), user=unix_users["bob"]).out
    line = next(x for x in shown.splitlines() if x.strip().startswith("state"))
    assert "OUT_OF_MEMORY" in line
    assert "killed by the kernel for memory: it used more than its limit of 64Mi" in line


TRAINING = """
name: train
team: nlp
kind: training
command:
  - /bin/sh
  - -c
  - |
    if [ -f "$MLQ_CHECKPOINT_DIR/state" ]; then
      echo "resumed from $(cat "$MLQ_CHECKPOINT_DIR/state") restart=$MLQ_RESTART_COUNT"
      exit 0
    fi
    i=0
    trap 'echo "step $i" > "$MLQ_CHECKPOINT_DIR/state"; echo checkpointed; exit 0' TERM
    echo "started restart=$MLQ_RESTART_COUNT"
    while true; do i=$((i+1)); sleep 0.05; done
resources: {gpus: 2, cpus: 2, memory: 256Mi}
checkpoint: {target: /ckpt}
preemption: {grace_period: 20s}
"""

INFERENCE = """
name: serve
team: search
kind: inference
command: [/bin/sh, -c, 'echo "serving on $CUDA_VISIBLE_DEVICES"; sleep 0.5']
resources: {gpus: 1, cpus: 1, memory: 128Mi}
"""


def test_inference_preempts_training_which_checkpoints_and_comes_back(make_daemon, unix_users):
    d = make_daemon(gpus=2)
    alice = unix_users["alice"]
    train = d.submit(TRAINING, user=alice)
    d.wait_for(train, "RUNNING")
    time.sleep(0.3)
    serve = d.submit(INFERENCE, user=unix_users["bob"])
    served = d.wait_for(serve, "COMPLETED", timeout=60)
    job = d.wait_for(train, "COMPLETED", timeout=60)
    assert [s for s, _ in events(job)] == [
        "PENDING",
        "STARTING",
        "RUNNING",
        "STOPPING",
        "PREEMPTED",
        "PENDING",
        "STARTING",
        "RUNNING",
        "COMPLETED",
    ]
    assert events(job)[3][1] == f"Preempted for job {serve}"
    assert job["restart_count"] == 1
    # the victim checkpointed within its grace period, then came back and found it
    assert d.log(train, run=0) == "started restart=0\ncheckpointed\n"
    assert d.log(train, run=1).startswith("resumed from step ")
    assert d.log(train, run=1).strip().endswith("restart=1")
    # the preemptor started when the victim was gone, not at the next interval (600 s
    # here): bounds far below the interval, so a loaded machine cannot fail them
    preempted_at = ts(next(e["at"] for e in job["events"] if e["state"] == "PREEMPTED"))
    started_at = ts(next(e["at"] for e in served["events"] if e["state"] == "STARTING"))
    assert 0 <= started_at - preempted_at < 60
    # and the requeued job was eligible at once: it restarted as the inference job ended
    ended = ts(served["ended_at"])
    restarted = ts([e["at"] for e in job["events"] if e["state"] == "STARTING"][-1])
    assert restarted - ended < 60
    both = d.cli("logs", str(train)).out
    assert "==> job" in both and "run 0" in both and "run 1" in both


def test_a_victim_that_ignores_sigterm_is_killed_at_grace_end(make_daemon, unix_users):
    d = make_daemon(gpus=2)
    stubborn = TRAINING.replace(
        'trap \'echo "step $i" > "$MLQ_CHECKPOINT_DIR/state"; echo checkpointed; exit 0\' TERM',
        "trap '' TERM",
    ).replace("grace_period: 20s", "grace_period: 1s")
    train = d.submit(stubborn, user=unix_users["alice"])
    d.wait_for(train, "RUNNING")
    t0 = time.monotonic()
    serve = d.submit(INFERENCE, user=unix_users["bob"])
    served = d.wait_for(serve, {"RUNNING", "COMPLETED"}, timeout=30)
    elapsed = time.monotonic() - t0
    job = d.show(train)
    preempted = next(e for e in job["events"] if e["state"] == "PREEMPTED")
    assert "signal SIGKILL" in preempted["reason"]
    assert elapsed >= 0.9  # it really got its grace period
    started_at = ts(next(e["at"] for e in served["events"] if e["state"] == "STARTING"))
    assert started_at - ts(preempted["at"]) < 60  # not the 600 s interval


def test_a_job_past_its_time_limit_ends_timeout_after_its_grace(make_daemon, unix_users):
    d = make_daemon()
    job_id = d.submit(
        """
name: forever
team: nlp
command: [/bin/sh, -c, "trap '' TERM; while true; do sleep 0.1; done"]
resources: {cpus: 1, memory: 64Mi}
time_limit: 1s
preemption: {grace_period: 1s}
""",
        user=unix_users["alice"],
    )
    job = d.wait_for(job_id, {"TIMEOUT", "FAILED", "COMPLETED", "CANCELLED"}, timeout=30)
    assert job["state"] == "TIMEOUT"
    assert "ran past its time limit" in job["reason"]
    ran = ts(job["ended_at"]) - ts(job["started_at"])
    assert ran >= 1.8  # the time limit, then the grace period


def test_cancel_stops_a_running_job_gracefully_and_now_kills(make_daemon, unix_users):
    d = make_daemon()
    alice = unix_users["alice"]
    text = """
name: loop
team: nlp
command: [/bin/sh, -c, "trap 'echo bye; exit 0' TERM; while true; do sleep 0.05; done"]
resources: {cpus: 1, memory: 64Mi}
"""
    a = d.submit(text, user=alice)
    b = d.submit(text.replace("trap 'echo bye; exit 0' TERM", "trap '' TERM"), user=alice)
    d.wait_for(a, "RUNNING")
    d.wait_for(b, "RUNNING")
    assert d.cli("cancel", str(a), user=alice).code == 0
    job = d.wait_for(a, "CANCELLED")
    assert d.log(a) == "bye\n"
    assert job["reason"].startswith(f"Cancelled by {alice.pw_name}")
    t0 = time.monotonic()
    assert d.cli("cancel", "--now", str(b), user=alice).code == 0
    job = d.wait_for(b, "CANCELLED", timeout=10)
    assert job["signal"] == "SIGKILL"  # killed, not asked
    assert time.monotonic() - t0 < 25  # without waiting out the 30 s default grace


def test_quotas_hold_under_a_burst_of_200_jobs(make_daemon, unix_users):
    """200 jobs from three teams at once: no team ever holds more than its limit
    (checked from the store's events), and every job ends."""
    extra = ""
    d = make_daemon(cpus=16, extra_teams=extra)
    for team in ("nlp", "search", "cv"):
        assert d.cli("quota", "set", team, "--limit", "cpu=2").code == 0
    ids = []
    for team in ("nlp", "search", "cv"):
        path = d.job_file(
            f"{team}.yaml",
            f"""
name: burst-{team}
team: {team}
command: [/bin/sh, -c, "sleep 0.05"]
resources: {{cpus: 1, memory: 32Mi}}
""",
        )
        n = 67 if team != "cv" else 66
        r = d.cli("submit", str(path), "--array", f"0-{n - 1}", "--json", user=unix_users["alice"])
        assert r.code == 0, r.err
        ids += [j["id"] for j in r.json()["jobs"]]
    assert len(ids) == 200
    deadline = time.monotonic() + 240
    while time.monotonic() < deadline:
        if not d.client().get("/v1/jobs")["jobs"]:
            break
        time.sleep(0.5)
    jobs = {j["id"]: j for j in d.client().get("/v1/history", limit=1000)["jobs"]}
    assert sorted(jobs) == sorted(ids)
    assert {j["state"] for j in jobs.values()} == {"COMPLETED"}
    # replay every STARTING/end event: at no moment does a team hold more than 2 CPUs
    timeline = []
    for job_id in ids:
        detail = d.show(job_id)
        for e in detail["events"]:
            if e["state"] == "STARTING":
                timeline.append((ts(e["at"]), 1, detail["team"]))
            elif e["state"] in ("COMPLETED", "FAILED", "CANCELLED"):
                timeline.append((ts(e["at"]), -1, detail["team"]))
    timeline.sort(key=lambda x: (x[0], x[1]))  # an end at the same instant frees first
    held = {"nlp": 0, "search": 0, "cv": 0}
    peak = dict(held)
    for _, delta, team in timeline:
        held[team] += delta
        peak[team] = max(peak[team], held[team])
    assert max(peak.values()) <= 2, peak
    assert min(peak.values()) >= 1
    status = d.client().get("/v1/status")
    assert status["passes"] < 2000  # passes coalesce; never one per event and per job


def test_the_daemon_killed_mid_flight_loses_nothing_and_runs_nothing_twice(make_daemon, unix_users):
    d = make_daemon(gpus=2)
    alice, bob = unix_users["alice"], unix_users["bob"]
    gate = d.home / "gate"
    gate.mkdir()
    # the long job runs until the test opens the gate: no race with the clock
    long = d.submit(
        f"""
name: long
team: cv
command: [/bin/sh, -c, 'echo start; while [ ! -e /gate/open ]; do sleep 0.05; done; echo end']
resources: {{cpus: 1, memory: 64Mi}}
volumes: [{{source: {gate}, target: /gate, readonly: true}}]
""",
        user=alice,
    )
    short = d.submit(
        """
name: short
team: cv
command: [/bin/sh, -c, 'echo start; sleep 1; exit 3']
resources: {cpus: 1, memory: 64Mi}
""",
        user=alice,
    )
    blocked = d.submit(
        """
name: huge
team: cv
command: [/bin/true]
resources: {cpus: 16, memory: 64Mi}  # the whole node: waits while anything else runs
""",
        user=alice,
    )
    stubborn = TRAINING.replace("grace_period: 20s", "grace_period: 3s").replace(
        'trap \'echo "step $i" > "$MLQ_CHECKPOINT_DIR/state"; echo checkpointed; exit 0\' TERM',
        'trap \'sleep 2; echo "step $i" > "$MLQ_CHECKPOINT_DIR/state"; echo checkpointed; exit 0\' TERM',
    )
    train = d.submit(stubborn, user=alice)
    for j in (long, short, train):
        d.wait_for(j, "RUNNING")
    serve = d.submit(INFERENCE, user=bob)
    d.wait_for(train, "STOPPING")  # mid-preemption
    supervisor_before = json.loads(
        (d.state_dir / "runs" / f"{long}.0" / "supervisor.json").read_text()
    )["pid"]
    d.stop(signal.SIGKILL)
    time.sleep(2.5)  # meanwhile: short exits 3, train checkpoints and exits
    d.start()
    assert d.wait_for(short, "FAILED")["exit_code"] == 3
    assert d.show(long)["state"] == "RUNNING"
    assert d.show(blocked)["state"] == "PENDING"
    d.wait_for(serve, "COMPLETED", timeout=30)
    t = d.wait_for(train, "COMPLETED", timeout=30)
    assert t["restart_count"] == 1
    assert d.log(train, run=0) == "started restart=0\ncheckpointed\n"
    assert d.show(long)["state"] == "RUNNING"
    (gate / "open").touch()
    lg = d.wait_for(long, "COMPLETED", timeout=30)
    assert d.log(long) == "start\nend\n"  # never restarted: one start, one end
    assert lg["restart_count"] == 0
    assert [s for s, _ in events(lg)] == ["PENDING", "STARTING", "RUNNING", "COMPLETED"]
    runs = sorted(p.name for p in (d.state_dir / "runs").iterdir() if p.name.startswith(f"{long}."))
    assert runs == [f"{long}.0"]
    assert supervisor_before  # the run kept its supervisor across the restart
    for job_id in (long, short, blocked, train, serve):
        states = [s for s, _ in events(d.show(job_id))]
        # never two runs at once: every RUNNING is closed before the next STARTING
        open_runs = 0
        for s in states:
            if s == "STARTING":
                open_runs += 1
                assert open_runs == 1, states
            elif s in ("COMPLETED", "FAILED", "PREEMPTED", "CANCELLED", "TIMEOUT", "OUT_OF_MEMORY"):
                open_runs = 0


@pytest.mark.parametrize("bad_dep_state", ["FAILED"])
def test_a_dependency_that_fails_cancels_the_dependent(make_daemon, unix_users, bad_dep_state):
    d = make_daemon()
    alice = unix_users["alice"]
    first = d.submit(
        "name: a\nteam: nlp\ncommand: [/bin/sh, -c, 'exit 1']\nresources: {cpus: 1, memory: 32Mi}\n",
        user=alice,
    )
    second = d.submit(
        "name: b\nteam: nlp\ncommand: [/bin/true]\nresources: {cpus: 1, memory: 32Mi}\n",
        "--after",
        str(first),
        user=alice,
    )
    d.wait_for(first, bad_dep_state)
    job = d.wait_for(second, "CANCELLED")
    assert job["reason"] == f"DependencyNeverSatisfied: job {first} ended {bad_dep_state}"


def test_a_dependent_starts_after_its_dependency_completes(make_daemon, unix_users):
    d = make_daemon()
    alice = unix_users["alice"]
    first = d.submit(
        "name: a\nteam: nlp\ncommand: [/bin/sh, -c, 'sleep 0.5']\nresources: {cpus: 1, memory: 32Mi}\n",
        user=alice,
    )
    second = d.submit(
        "name: b\nteam: nlp\ncommand: [/bin/true]\nresources: {cpus: 1, memory: 32Mi}\n",
        "--after",
        str(first),
        user=alice,
    )
    assert d.show(second)["reason"] == "Dependency"
    a = d.wait_for(first, "COMPLETED")
    b = d.wait_for(second, "COMPLETED")
    assert ts(b["started_at"]) >= ts(a["ended_at"])


def test_a_job_reports_its_checkpoint_with_mlq_checkpoint_done(
    make_daemon, daemon_home, unix_users
):
    from daemon_helpers import MLQ, ROOT

    d = make_daemon()
    gate = daemon_home / "gate"
    gate.mkdir()
    job_id = d.submit(
        f"""
name: ckpt
team: nlp
kind: training
command: [/bin/sh, -c, '{MLQ} checkpoint-done && echo marked; while [ ! -e /gate/open ]; do sleep 0.05; done']
resources: {{cpus: 1, memory: 256Mi}}
checkpoint: {{target: /ckpt}}
volumes:
  - {{source: {gate}, target: /gate, readonly: true}}
  # mlq itself, at its own path: a checkout under /tmp is hidden by the job's own /tmp
  - {{source: {ROOT}, target: {ROOT}, readonly: true}}
""",
        user=unix_users["alice"],
    )
    d.wait_for(job_id, "RUNNING")
    deadline = time.monotonic() + 30
    while "marked" not in d.log(job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert d.log(job_id) == "marked\n"
    # the next pass reads the mark (any event triggers one)
    other = d.submit(
        "name: poke\nteam: nlp\ncommand: [/bin/true]\nresources: {cpus: 1, memory: 32Mi}\n",
        user=unix_users["alice"],
    )
    d.wait_for(other, "COMPLETED")
    job = d.show(job_id)
    assert job["checkpoint_at"] is not None
    assert ts(job["checkpoint_at"]) >= ts(job["started_at"]) - 1
    (gate / "open").touch()
    d.wait_for(job_id, "COMPLETED")


def test_a_job_whose_image_has_no_mlq_reports_its_checkpoint_with_mlq_checkpoint_done(
    make_daemon, daemon_home, unix_users
):
    from exec_helpers import make_rootfs

    d = make_daemon()
    rootfs = make_rootfs(daemon_home / "busybox")  # no mlq, no Python: the job's own mlq
    gate = daemon_home / "gate"
    gate.mkdir()
    job_id = d.submit(
        f"""
name: ckpt
team: nlp
kind: training
image: {rootfs}
command: [/bin/sh, -c, 'mlq checkpoint-done && echo marked; mlq frobnicate; while [ ! -e /gate/open ]; do sleep 0.05; done']
resources: {{cpus: 1, memory: 64Mi}}
checkpoint: {{target: /ckpt}}
volumes:
  - {{source: {gate}, target: /gate, readonly: true}}
""",
        user=unix_users["alice"],
    )
    d.wait_for(job_id, "RUNNING")
    deadline = time.monotonic() + 30
    while "marked" not in d.log(job_id) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert d.log(job_id) == "marked\n"
    assert "inside an mlq job only checkpoint-done is available" in d.log(job_id, stream="stderr")
    # the next pass reads the mark (any event triggers one)
    other = d.submit(
        "name: poke\nteam: nlp\ncommand: [/bin/true]\nresources: {cpus: 1, memory: 32Mi}\n",
        user=unix_users["alice"],
    )
    d.wait_for(other, "COMPLETED")
    job = d.show(job_id)
    assert job["checkpoint_at"] is not None
    assert ts(job["checkpoint_at"]) >= ts(job["started_at"]) - 1
    (gate / "open").touch()
    d.wait_for(job_id, "COMPLETED")


def test_checkpoint_done_outside_a_job_says_why_it_cannot(make_daemon):
    d = make_daemon()
    r = d.cli("checkpoint-done")
    assert r.code == 2
    assert "MLQ_CHECKPOINT_MARK is not set" in r.err


def test_a_stop_recorded_but_never_sent_before_a_crash_is_sent_after_the_restart(
    make_daemon, unix_users
):
    import sqlite3

    d = make_daemon()
    job_id = d.submit(
        "name: loop\nteam: nlp\ncommand: [/bin/sh, -c, 'while true; do sleep 0.05; done']\n"
        "resources: {cpus: 1, memory: 32Mi}\npreemption: {grace_period: 1s}\n",
        user=unix_users["alice"],
    )
    d.wait_for(job_id, "RUNNING")
    d.stop(signal.SIGKILL)
    # the daemon died right after committing STOPPING, before it asked the supervisor
    with sqlite3.connect(d.db) as conn:
        conn.execute(
            "UPDATE jobs SET state='STOPPING', stop_cause='cancel', reason='Cancelled by x' "
            "WHERE id=?",
            (job_id,),
        )
    d.start()
    job = d.wait_for(job_id, {"CANCELLED", "COMPLETED", "FAILED"}, timeout=30)
    assert job["state"] == "CANCELLED"
    assert job["signal"] in ("SIGTERM", "SIGKILL")


def test_a_job_runs_in_its_submit_directory_as_its_user_with_a_login_environment(
    make_daemon, unix_users
):
    """As sbatch: a job on image: host whose file names no workdir runs where it was
    submitted, with USER, LOGNAME and HOME its user's; a file's workdir and env win;
    from a directory the job cannot see (its /tmp is its own) it runs in /."""
    import shutil
    import tempfile
    from pathlib import Path

    d = make_daemon()
    alice = unix_users["alice"]
    show = 'echo "$(pwd) $USER $LOGNAME $HOME"; cat hello.txt'
    project = Path(tempfile.mkdtemp(prefix="mlq-project-", dir="/var/tmp"))
    try:
        project.chmod(0o755)
        (project / "hello.txt").write_text("from the submit directory\n")
        (project / "hello.txt").chmod(0o644)
        job = f"name: here\nteam: nlp\ncommand: [/bin/sh, -c, '{show}']\n"
        job += "resources: {cpus: 1, memory: 32Mi}\n"
        here = d.job_file("here.yaml", job)
        r = d.cli("submit", str(here), "--json", user=alice, cwd=project)
        assert r.code == 0, r.err
        here_id = r.json()["jobs"][0]["id"]
        there = d.submit(
            job.replace("name: here", "name: there")
            + "workdir: /etc\nenv: {HOME: /scratch, USER: someone}\n",
            user=alice,
        )
        d.wait_for(here_id, "COMPLETED")
        d.wait_for(there, "FAILED")  # no hello.txt in /etc
        name = alice.pw_name
        out = d.cli("logs", str(here_id), user=alice).out
        assert out == f"{project} {name} {name} {alice.pw_dir}\nfrom the submit directory\n"
        assert d.cli("logs", str(there), user=alice).out == f"/etc someone {name} /scratch\n"
        assert d.show(here_id)["spec"]["workdir"] == str(project)
        in_tmp = d.submit(job.replace("name: here", "name: tmp"), user=alice)  # from /tmp/...
        assert d.show(in_tmp)["spec"]["workdir"] == "/"
    finally:
        shutil.rmtree(project, ignore_errors=True)


def test_a_held_job_does_not_start_until_it_is_released(make_daemon, unix_users):
    d = make_daemon()
    alice = unix_users["alice"]
    first = d.submit(
        "name: a\nteam: nlp\ncommand: [/bin/sh, -c, 'sleep 1']\nresources: {cpus: 1, memory: 32Mi}\n",
        user=alice,
    )
    second = d.submit(
        "name: b\nteam: nlp\ncommand: [/bin/true]\nresources: {cpus: 1, memory: 32Mi}\n",
        "--after",
        str(first),
        user=alice,
    )
    assert d.cli("hold", str(second), user=alice).code == 0
    d.wait_for(first, "COMPLETED")
    time.sleep(1.5)  # passes go by with its dependency met
    held = d.show(second)
    assert (held["state"], held["reason"]) == ("PENDING", f"Held by {alice.pw_name}")
    r = d.cli("release", str(second), user=alice)
    assert r.code == 0, r.err
    done = d.wait_for(second, "COMPLETED")
    assert [s for s, _ in events(done)] == [
        "PENDING", "PENDING", "PENDING", "STARTING", "RUNNING", "COMPLETED"
    ]  # fmt: skip
    r = d.cli("hold", str(second), user=alice)
    assert r.code == 1
    assert "only a pending job can be held" in r.err


def test_dependency_types_start_and_cancel_as_sbatchs_do(make_daemon, unix_users):
    d = make_daemon()
    alice = unix_users["alice"]

    def job(name: str, cmd: str, *args: str) -> int:
        text = f"name: {name}\nteam: nlp\ncommand: [/bin/sh, -c, '{cmd}']\n"
        return d.submit(text + "resources: {cpus: 1, memory: 32Mi}\n", *args, user=alice)

    fails = job("fails", "sleep 2; exit 1")
    ok = job("ok", "true")
    anyway = job("anyway", "true", "-d", f"afterany:{fails}")
    on_failure = job("on-failure", "true", "--dependency", f"afternotok:{fails}")
    on_success = job("on-success", "true", "--after", str(fails))
    beside = job("beside", "true", "-d", f"after:{fails}")
    never = job("never", "true", "-d", f"afternotok:{ok}")
    assert d.show(anyway)["depends_on"] == [f"afterany:{fails}"]
    assert d.show(beside)["reason"] == "Dependency" or d.show(beside)["state"] != "PENDING"
    ended = ts(d.wait_for(fails, "FAILED")["ended_at"])
    assert ts(d.wait_for(beside, "COMPLETED")["started_at"]) < ended  # once it started
    for j in (anyway, on_failure):
        assert ts(d.wait_for(j, "COMPLETED")["started_at"]) >= ended
    assert d.wait_for(on_success, "CANCELLED")["reason"] == (
        f"DependencyNeverSatisfied: job {fails} ended FAILED"
    )
    assert d.wait_for(never, "CANCELLED")["reason"] == (
        f"DependencyNeverSatisfied: job {ok} ended COMPLETED (afternotok)"
    )
    path = d.job_file("bad.yaml", "name: b\nteam: nlp\ncommand: [/bin/true]\n")
    r = d.cli("submit", str(path), "-d", "afterfoo:1", user=alice)
    assert r.code == 2
    assert '--dependency: "afterfoo:1" is not a dependency; use a job ID (afterok)' in r.err
    r = d.cli("submit", str(path), "-d", "afterany:9999", user=alice)
    assert r.code == 2 and "depends_on: job 9999 does not exist" in r.err


def test_a_throttled_array_never_runs_more_than_its_limit_at_once(make_daemon, unix_users):
    d = make_daemon()
    alice = unix_users["alice"]
    text = "name: sweep\nteam: nlp\ncommand: [/bin/sh, -c, 'sleep 0.5']\n"
    text += "resources: {cpus: 1, memory: 32Mi}\n"
    path = d.job_file("sweep.yaml", text)
    r = d.cli("submit", str(path), "--array", "0-5%2", "--json", user=alice)
    assert r.code == 0, r.err
    ids = [j["id"] for j in r.json()["jobs"]]
    assert d.show(ids[0])["spec"]["array_limit"] == 2
    seen_limit = False
    while True:
        jobs = d.cli("queue", "--json", user=alice).json()["jobs"]
        live = [j for j in jobs if j["state"] in ("STARTING", "RUNNING", "STOPPING")]
        assert len(live) <= 2, live
        seen_limit |= any(j["reason"].startswith("JobArrayTaskLimit: 2 of array") for j in jobs)
        if not jobs:
            break
        time.sleep(0.05)
    assert seen_limit
    runs = sorted(
        (ts(j["started_at"]), ts(j["ended_at"])) for j in (d.wait_for(i, "COMPLETED") for i in ids)
    )
    for k, (start, _) in enumerate(runs):  # at no start were two others still running
        assert sum(1 for s, e in runs[:k] if e > start) <= 1, runs
    r = d.cli("submit", str(path), "--array", "0-5%0", user=alice)
    assert r.code == 2 and '--array: "0-5%0" has a throttle that is not a count' in r.err
    one = d.job_file("one.yaml", text + "array_limit: 2\n")
    r = d.cli("submit", str(one), user=alice)
    assert r.code == 2 and "array_limit: 2 throttles an array; this job is not one" in r.err


REQUEUABLE = r"""
name: long
team: nlp
kind: training
checkpoint: {target: /checkpoints}
preemption: {grace_period: 10}
resources: {cpus: 1, memory: 32Mi}
command:
  - /bin/sh
  - -c
  - |
    echo "run $MLQ_RESTART_COUNT from $(cat /checkpoints/step 2>/dev/null || echo scratch)"
    trap 'echo 42 > /checkpoints/step; echo saved; exit 0' TERM
    if [ "$MLQ_RESTART_COUNT" = 1 ]; then exit 0; fi
    while true; do sleep 0.1; done
"""


def test_requeue_stops_a_running_job_gracefully_and_it_resumes_from_its_checkpoint(
    make_daemon, unix_users
):
    d = make_daemon()
    alice, bob = unix_users["alice"], unix_users["bob"]
    job = d.submit(REQUEUABLE, user=alice)
    d.wait_for(job, "RUNNING")
    time.sleep(0.5)  # its trap is set
    r = d.cli("requeue", str(job), user=bob)  # not its owner, not an admin of nlp
    assert r.code == 3 and f"may not requeue job {job}" in r.err
    r = d.cli("requeue", str(job), user=alice)
    assert (r.code, r.out.strip()) == (0, f"job {job}: STOPPING (Requeued by {alice.pw_name})")
    done = d.wait_for(job, "COMPLETED")
    assert done["restart_count"] == 1
    assert [s for s, _ in events(done)] == [
        "PENDING", "STARTING", "RUNNING", "STOPPING", "PENDING", "STARTING", "RUNNING",
        "COMPLETED",
    ]  # fmt: skip
    assert events(done)[4][1] == f"Requeued by {alice.pw_name} (exit code 0)"
    out = d.cli("logs", str(job), user=alice).out
    assert "run 0 from scratch" in out and "saved" in out and "run 1 from 42" in out, out
    r = d.cli("requeue", str(job), user=alice)
    assert r.code == 1 and "is COMPLETED: only a starting or running job can be requeued" in r.err


def test_a_drained_node_finishes_its_jobs_takes_no_new_ones_and_stays_drained(
    make_daemon, unix_users
):
    d = make_daemon()
    alice = unix_users["alice"]
    small = "resources: {cpus: 1, memory: 32Mi}\n"
    first = d.submit("name: a\nteam: nlp\ncommand: [/bin/sleep, '2']\n" + small, user=alice)
    d.wait_for(first, "RUNNING")
    r = d.cli("node", "drain", "e2e", "--reason", "swap a fan", user=alice)
    assert r.code == 3 and 'may not drain node "e2e"' in r.err
    r = d.cli("node", "drain", "e2e", "--reason", "swap a fan")
    assert (r.code, r.out.strip()) == (0, "Node e2e: draining (swap a fan)")
    second = d.submit("name: b\nteam: nlp\ncommand: [/bin/true]\n" + small, user=alice)
    d.wait_for(first, "COMPLETED")  # what ran finishes
    (node,) = d.cli("nodes", "--json").json()["nodes"]
    assert (node["state"], node["reason"]) == ("drained", "swap a fan")
    d.stop()
    d.start()  # a drain outlives the daemon
    time.sleep(1.5)
    assert d.show(second)["state"] == "PENDING"
    assert d.cli("nodes", "--json").json()["nodes"][0]["state"] == "drained"
    r = d.cli("node", "resume", "e2e")
    assert (r.code, r.out.strip()) == (0, "Node e2e: up")
    d.wait_for(second, "COMPLETED")
    r = d.cli("node", "drain", "nope")
    assert r.code == 1 and 'node "nope" is not a node of this cluster (its nodes: e2e)' in r.err


def test_a_teams_per_user_limit_holds_one_user_back_and_not_the_others(make_daemon, unix_users):
    d = make_daemon()
    alice, bob = unix_users["alice"], unix_users["bob"]
    r = d.cli("team", "user-limit", "nlp", "--jobs", "1", user=alice)  # a member, not admin
    assert r.code == 3 and 'may not set the per-user limits of team "nlp"' in r.err
    r = d.cli("team", "user-limit", "nlp", "--jobs", "1")
    assert (r.code, r.out.strip()) == (0, "Team nlp: per-user limits jobs 1")
    small = "resources: {cpus: 1, memory: 32Mi}\n"
    first = d.submit("name: a\nteam: nlp\ncommand: [/bin/sleep, '1.5']\n" + small, user=alice)
    second = d.submit("name: b\nteam: nlp\ncommand: [/bin/true]\n" + small, user=alice)
    other = d.submit("name: c\nteam: nlp\ncommand: [/bin/sleep, '1']\n" + small, user=bob)
    d.wait_for(first, "RUNNING")
    d.wait_for(other, {"RUNNING", "COMPLETED"})  # bob is not held back by alice's limit
    assert d.show(second)["reason"] == f"UserLimit {alice.pw_name} jobs 1/1"
    a, b = d.wait_for(first, "COMPLETED"), d.wait_for(second, "COMPLETED")
    assert ts(b["started_at"]) >= ts(a["ended_at"])
    teams = {t["name"]: t for t in d.cli("team", "list", "--json").json()["teams"]}
    assert teams["nlp"]["per_user"] == {"jobs": 1}
    assert d.cli("team", "user-limit", "nlp", "--clear").out.strip() == (
        "Team nlp: per-user limits none"
    )
    r = d.cli("team", "user-limit", "nlp", "--jobs", "0")
    assert r.code == 2 and "jobs" in r.err


def test_update_changes_a_pending_job_as_a_submission_would_be_checked(make_daemon, unix_users):
    d = make_daemon()
    alice, bob = unix_users["alice"], unix_users["bob"]
    small = "resources: {cpus: 1, memory: 32Mi}\ntime_limit: 2h\n"
    blocker = d.submit("name: b\nteam: nlp\ncommand: [/bin/sleep, '60']\n" + small, user=alice)
    job = d.submit(
        "name: a\nteam: nlp\ncommand: [/bin/true]\n" + small, "-d", f"afterany:{blocker}",
        user=alice,
    )  # fmt: skip
    r = d.cli(
        "update", str(job), "--time-limit", "1h", "--cpus", "2", "--memory", "64Mi", user=alice
    )
    assert r.code == 0, r.err
    assert (
        "Updated by" in r.out
        and "time_limit 7200 -> 3600" in r.out
        and "cpus 1000m -> 2000m" in r.out
    )
    spec = d.show(job)["spec"]
    assert (spec["time_limit"], spec["resources"]["cpus"], spec["resources"]["memory"]) == (
        3600, "2000m", 64 * 2**20,
    )  # fmt: skip
    r = d.cli("update", str(job), "--time-limit", "3h", user=alice)  # raising: admins only
    assert r.code == 3 and "may lower job" in r.err and "but not raise it" in r.err
    r = d.cli("update", str(job), "--time-limit", "3h")
    assert r.code == 0, r.err
    r = d.cli("update", str(job), "--cpus", "2", user=bob)  # not its owner
    assert r.code == 3 and f"may not update job {job}" in r.err
    r = d.cli("update", str(job), "--cpus", "9999", user=alice)
    assert r.code == 2 and "cpus" in r.err, r.err
    r = d.cli("update", str(job), "--priority-class", "nope", user=alice)
    assert r.code == 2 and 'priority_class: "nope" is not a priority class' in r.err
    r = d.cli("update", str(job), "--time-limit", "soon", user=alice)
    assert r.code == 2 and 'time_limit: "soon"' in r.err
    assert d.cli("cancel", str(blocker), "--now", user=alice).code == 0
    done = d.wait_for(job, "COMPLETED")
    assert done["spec"]["resources"]["cpus"] == "2000m"
    r = d.cli("update", str(job), "--cpus", "1", user=alice)
    assert r.code == 1 and "only a pending job can be updated" in r.err


def test_piped_history_keeps_every_cell_whole_however_long_the_reason(make_daemon, unix_users):
    import re

    d = make_daemon()
    alice = unix_users["alice"]
    missing = "/nonexistent/" + "deep/" * 40 + "train"
    job = d.submit(
        f"name: fails\nteam: nlp\ncommand: [{missing}]\nresources: {{cpus: 1, memory: 32Mi}}\n",
        user=alice,
    )
    d.wait_for(job, "FAILED")
    r = d.cli("history", user=alice)  # a pipe, not a terminal
    header, *rows = [line for line in r.out.splitlines() if line.strip() and "──" not in line]
    assert header.split() == [
        "ID", "NAME", "TEAM", "USER", "STATE", "EXIT", "STARTED", "ENDED", "REASON"
    ]  # fmt: skip
    (row,) = rows
    assert row.split()[0] == str(job)
    assert len(re.findall(r"\d{4}-\d\d-\d\d \d\d:\d\d:\d\d", row)) == 2  # whole times
    assert row.rstrip().endswith(f"execve `{missing}`: No such file or directory")


def test_top_piped_prints_frames_with_each_jobs_cpu_use_now(make_daemon, unix_users):
    import subprocess

    from daemon_helpers import MLQ

    d = make_daemon()
    alice = unix_users["alice"]
    burn = d.submit(
        "name: burn\nteam: nlp\ncommand: [/bin/sh, -c, 'while :; do :; done']\n"
        "resources: {cpus: 1, memory: 32Mi}\n",
        user=alice,
    )
    d.wait_for(burn, "RUNNING")
    r = d.cli("top", "--once")
    assert r.code == 0, r.err
    (row,) = [line for line in r.out.splitlines() if line.split()[:2] == [str(burn), "burn"]]
    pct = next(w for w in row.split() if w.endswith("%") and w[:-1].isdigit())
    assert int(pct[:-1]) >= 30, row  # a busy loop on one CPU, however loaded the machine
    p = subprocess.Popen(
        [MLQ, "top", "-n", "0.5"], env=d.env(), stdout=subprocess.PIPE, text=True
    )  # a pipe: frames, not a live screen that prints nothing
    time.sleep(3)
    p.terminate()
    out, _ = p.communicate(timeout=10)
    assert out.count("running") >= 2, out


def test_report_sums_what_each_run_held_and_counts_preemptions(make_daemon, unix_users):
    d = make_daemon(gpus=2)
    alice, bob = unix_users["alice"], unix_users["bob"]
    train = d.submit(TRAINING, user=alice)
    d.wait_for(train, "RUNNING")
    time.sleep(0.5)
    serve = d.submit(INFERENCE, user=bob)
    d.wait_for(serve, "COMPLETED")
    job = d.wait_for(train, "COMPLETED")
    r = d.cli("report", "--since", "1h", "--json", user=bob)  # any user may read it
    assert r.code == 0, r.err
    teams = {u["key"]: u for u in r.json()["rows"]}
    nlp, search = teams["nlp"], teams["search"]
    assert (nlp["jobs"], nlp["runs"], nlp["preemptions"]) == (1, 2, 1)
    assert (search["jobs"], search["runs"], search["preemptions"]) == (1, 1, 0)
    # two GPUs for as long as the training job ran, both runs, from its own timeline
    # (event times are whole seconds: each of the two runs is off by a second at most)
    ran = 0.0
    start = None
    for e in job["events"]:
        if e["state"] == "STARTING":
            start = ts(e["at"])
        elif e["state"] in ("PREEMPTED", "COMPLETED") and start is not None:
            ran, start = ran + ts(e["at"]) - start, None
    assert nlp["gpu_hours"] > 0
    assert nlp["gpu_hours"] * 3600 == pytest.approx(2 * ran, abs=2 * 2 + 0.5)
    assert nlp["cpu_hours"] == pytest.approx(nlp["gpu_hours"])  # cpus: 2, as its GPUs
    assert 0 < nlp["lost_gpu_equivalent_hours"] <= nlp["gpu_hours"]
    users = {u["key"] for u in d.cli("report", "--by", "user", "--json").json()["rows"]}
    assert users == {alice.pw_name, bob.pw_name}
    text = d.cli("report", "--by", "class").out
    assert "training" in text and "inference" in text and "GPU-H" in text
    r = d.cli("report", "--by", "node")
    assert r.code == 2 and '--by: "node" is not one of team, user, class' in r.err


def test_queue_start_estimates_when_a_waiting_job_starts(make_daemon, unix_users):
    d = make_daemon(gpus=2)
    alice = unix_users["alice"]
    gpu_job = (
        "team: nlp\ncommand: [/bin/sleep, '60']\nresources: {gpus: 2, cpus: 1, memory: 32Mi}\n"
    )
    first = d.submit("name: first\ntime_limit: 1h\n" + gpu_job, user=alice)
    started = ts(d.wait_for(first, "RUNNING")["started_at"])
    second = d.submit("name: second\ntime_limit: 30m\n" + gpu_job, user=alice)
    d.wait_for(second, "PENDING")
    time.sleep(0.5)  # a pass has seen it
    r = d.cli("queue", "--start", "--json", user=alice)
    assert r.code == 0, r.err
    (job,) = r.json()["jobs"]  # pending jobs only, as squeue --start
    assert job["id"] == second
    # no finished run yet to learn from: the first runs to its limit
    assert ts(job["estimated_start"]) == pytest.approx(started + 3600, abs=5)
    text = d.cli("queue", "--start", user=alice).out
    assert "START (EST.)" in text and "N/A" not in text
