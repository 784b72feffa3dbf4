"""The foundation as users live it: a real daemon on a real Unix socket, the real CLI,
callers told apart by their uid (SO_PEERCRED), and SQLite that survives SIGKILL."""

from __future__ import annotations

import json
import signal

import pytest

GOOD = """
name: bert
team: nlp
kind: training
command: [python3, train.py]
resources: {gpus: 2, cpus: 8, memory: 32Gi}
"""


def submit(daemon, text: str, *args: str, user=None):
    path = daemon.job_file("job.yaml", text)
    return daemon.cli("submit", str(path), *args, user=user)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            GOOD.replace("32Gi", "32GB"),
            'resources.memory: "32GB" is not a size; use a number of bytes or a unit: 512Mi, 32Gi, 32G',
            id="a size with a unit kubernetes does not know names the field, value and the units",
        ),
        pytest.param(
            GOOD + "tiem_limit: 1h\n",
            "tiem_limit: unknown key; allowed: name, team, kind",
            id="a typo'd key is an error, not silently dropped",
        ),
        pytest.param(
            GOOD.replace("gpus: 2,", "gpus: 2, mig: {profile: 1g.10gb},"),
            "resources: gpus and mig are exclusive",
            id="whole GPUs and MIG slices together are refused",
        ),
        pytest.param(
            GOOD.replace("gpus: 2", "gpus: -1"),
            "resources.gpus: -1 input should be greater than or equal to 0",
            id="a negative count is refused",
        ),
        pytest.param(
            GOOD.replace("team: nlp\n", ""),
            "team: required but missing",
            id="a job file without a team is refused",
        ),
        pytest.param(
            GOOD.replace("team: nlp", "team: nosuch"),
            'team: "nosuch" is not a team of this cluster; known: cv, nlp',
            id="a team that does not exist is named with the known ones",
        ),
        pytest.param(
            GOOD.replace("cpus: 8", "cpus: lots"),
            'resources.cpus: "lots" is not a CPU count',
            id="a CPU count that is not a number names the allowed forms",
        ),
    ],
)
def test_each_mistake_gets_its_own_clear_error_and_stores_nothing(
    daemon, unix_users, text, expected
):
    r = submit(daemon, text, user=unix_users["alice"])
    assert r.code == 2, r
    assert expected in r.err
    assert r.err.startswith("mlq: error: ")
    assert r.out == ""
    assert daemon.rows("jobs") == 0
    assert daemon.rows("job_events") == 0


def test_every_error_of_a_file_is_reported_at_once(daemon, unix_users):
    bad = GOOD.replace("32Gi", "32GB").replace("cpus: 8", "cpus: -2") + "colour: red\n"
    r = submit(daemon, bad, user=unix_users["alice"])
    assert r.code == 2
    assert "resources.memory" in r.err
    assert "resources.cpus" in r.err
    assert "colour: unknown key" in r.err


def test_submit_then_queue_json_shows_the_job(daemon, unix_users):
    alice = unix_users["alice"]
    r = submit(daemon, GOOD, "--json", user=alice)
    assert r.code == 0, r.err
    job_id = r.json()["jobs"][0]["id"]
    q = daemon.cli("queue", "--json", user=alice)
    assert q.code == 0
    (job,) = q.json()["jobs"]
    assert job["id"] == job_id
    assert {k: job[k] for k in ("name", "team", "user", "kind", "priority_class", "state")} == {
        "name": "bert",
        "team": "nlp",
        "user": alice.pw_name,
        "kind": "training",
        "priority_class": "training",
        "state": "PENDING",
    }
    for key in ("reason", "submitted_at"):
        assert key in job


def test_plain_submit_prints_the_job_id(daemon, unix_users):
    r = submit(daemon, GOOD, user=unix_users["bob"])
    assert r.code == 0
    assert r.out.strip() == "Submitted job 1"
    r = submit(daemon, GOOD, user=unix_users["bob"])
    assert r.out.strip() == "Submitted job 2"  # short increasing IDs, as in Slurm


def test_a_user_not_in_the_team_is_refused(daemon, unix_users):
    r = submit(daemon, GOOD.replace("team: nlp", "team: cv"), user=unix_users["alice"])
    assert r.code == 3
    assert f'{unix_users["alice"].pw_name} may not submit to team "cv": not a member' in r.err
    assert daemon.rows("jobs") == 0


def test_a_user_cannot_cancel_another_users_job_but_the_team_admin_can(daemon, unix_users):
    job_id = submit(daemon, GOOD, "--json", user=unix_users["alice"]).json()["jobs"][0]["id"]
    r = daemon.cli("cancel", str(job_id), user=unix_users["bob"])
    assert r.code == 3
    assert f"may not cancel job {job_id}: it belongs to {unix_users['alice'].pw_name}" in r.err
    assert daemon.cli("show", str(job_id), "--json").json()["state"] == "PENDING"
    r = daemon.cli("cancel", str(job_id), user=unix_users["carol"])  # nlp's admin
    assert r.code == 0, r.err
    assert daemon.cli("show", str(job_id), "--json").json()["state"] == "CANCELLED"


def test_cancel_moves_a_pending_job_to_cancelled_with_an_event(daemon, unix_users):
    alice = unix_users["alice"]
    job_id = submit(daemon, GOOD, "--json", user=alice).json()["jobs"][0]["id"]
    r = daemon.cli("cancel", str(job_id), user=alice)
    assert r.code == 0
    assert f"job {job_id}: CANCELLED" in r.out
    shown = daemon.cli("show", str(job_id), "--json").json()
    assert shown["state"] == "CANCELLED"
    assert [(e["state"], e["reason"]) for e in shown["events"]] == [
        ("PENDING", "Submitted"),
        ("CANCELLED", f"Cancelled by {alice.pw_name}"),
    ]
    assert daemon.cli("queue", "--json").json()["jobs"] == []
    hist = daemon.cli("history", "--json").json()["jobs"]
    assert [j["id"] for j in hist] == [job_id]


def test_only_an_admin_sets_quotas(daemon, unix_users):
    r = daemon.cli("quota", "set", "nlp", "--limit", "gpu=16", user=unix_users["carol"])
    assert r.code == 3
    assert 'may not set the quota of team "nlp"' in r.err
    r = daemon.cli("quota", "set", "nlp", "--limit", "gpu=16", user=unix_users["alice"])
    assert r.code == 3
    r = daemon.cli(
        "quota", "set", "nlp", "--limit", "gpu=16", user=unix_users["dave"]
    )  # admin group
    assert r.code == 0, r.err
    shown = daemon.cli("quota", "show", "nlp", "--json").json()
    assert shown["teams"][0]["limit"]["gpu"] == 16


def test_bad_quota_values_name_the_resource_and_change_nothing(daemon):
    r = daemon.cli("quota", "set", "nlp", "--guarantee", "gpux=4", "--limit", "memory=lots")
    assert r.code == 2
    assert '"gpux" is not a quota resource' in r.err
    assert '--limit memory=lots: "lots" is not a size' in r.err
    r = daemon.cli("quota", "set", "nlp", "--guarantee", "gpu=20")
    assert r.code == 2
    assert "gpu: limit 8 is below guarantee 20" in r.err
    assert daemon.cli("quota", "show", "nlp", "--json").json()["teams"][0]["guarantee"] == {
        "gpu": 4
    }


def test_teams_are_managed_by_admins(daemon, unix_users):
    r = daemon.cli("team", "create", "speech", "--member", "x", user=unix_users["alice"])
    assert r.code == 3
    assert daemon.cli("team", "create", "speech", "--member", unix_users["bob"].pw_name).code == 0
    assert daemon.cli("team", "add-member", "speech", unix_users["alice"].pw_name).code == 0
    text = GOOD.replace("team: nlp", "team: speech")
    assert submit(daemon, text, user=unix_users["alice"]).code == 0
    teams = {t["name"]: t for t in daemon.cli("team", "list", "--json").json()["teams"]}
    assert sorted(teams["speech"]["members"]) == sorted(
        [unix_users["alice"].pw_name, unix_users["bob"].pw_name]
    )
    r = daemon.cli("team", "delete", "speech")
    assert r.code == 1
    assert "has 1 active jobs" in r.err


def test_array_and_dependencies(daemon, unix_users):
    alice = unix_users["alice"]
    first = submit(daemon, GOOD, "--json", user=alice).json()["jobs"][0]["id"]
    r = submit(daemon, GOOD, "--array", "0-4", "--after", str(first), "--json", user=alice)
    assert r.code == 0, r.err
    jobs = r.json()["jobs"]
    assert [j["array_index"] for j in jobs] == [0, 1, 2, 3, 4]
    assert {j["array_id"] for j in jobs} == {jobs[0]["id"]}
    assert all(j["depends_on"] == [first] and j["reason"] == "Dependency" for j in jobs)
    r = submit(daemon, GOOD, "--after", "999", user=alice)
    assert r.code == 2
    assert "depends_on: job 999 does not exist" in r.err
    r = submit(daemon, GOOD, "--array", "5-1", user=alice)
    assert r.code == 2
    assert '--array: "5-1" is not an array range' in r.err


def test_dry_run_prints_the_resolved_job_and_stores_nothing(daemon, unix_users):
    text = GOOD.replace("resources: {gpus: 2, cpus: 8, memory: 32Gi}", "resources: {gpus: 1}")
    r = submit(daemon, text, "--dry-run", "--json", user=unix_users["alice"])
    assert r.code == 0, r.err
    out = r.json()
    assert out["dry_run"] is True
    # training's defaults from the cluster config: 4 CPUs, 16Gi, 7d, memory_high 87%
    assert out["limits"]["memory.max"] == 16 * 2**30
    assert out["limits"]["memory.high"] == 16 * 2**30 * 87 // 100
    assert out["limits"]["cpu.max"] == "400000 100000"
    assert out["limits"]["memory.swap.max"] == 0
    assert out["resolved"]["time_limit"] == 7 * 86400
    assert daemon.rows("jobs") == 0


def test_sigkill_loses_no_job_and_no_team(daemon, unix_users):
    alice = unix_users["alice"]
    ids = [submit(daemon, GOOD, "--json", user=alice).json()["jobs"][0]["id"] for _ in range(5)]
    daemon.cli("cancel", str(ids[0]), user=alice)
    assert daemon.cli("team", "create", "speech").code == 0
    daemon.stop(signal.SIGKILL)
    daemon.start()
    jobs = {
        j["id"]: j["state"]
        for j in daemon.cli("queue", "--json", "--state", "PENDING").json()["jobs"]
    }
    assert jobs == {i: "PENDING" for i in ids[1:]}
    assert daemon.cli("show", str(ids[0]), "--json").json()["state"] == "CANCELLED"
    assert "speech" in {t["name"] for t in daemon.cli("team", "list", "--json").json()["teams"]}
    # IDs keep increasing after the restart
    assert submit(daemon, GOOD, "--json", user=alice).json()["jobs"][0]["id"] == ids[-1] + 1


def test_an_unreachable_daemon_names_the_socket(daemon):
    daemon.stop()
    r = daemon.cli("queue")
    assert r.code == 4
    assert str(daemon.socket) in r.err


def test_a_newer_schema_is_refused_at_start(daemon):
    daemon.stop()
    daemon.sql("UPDATE meta SET value = '999' WHERE key = 'schema_version'")
    with pytest.raises(RuntimeError, match="database schema version 999 is newer"):
        daemon.start()


def test_the_openapi_schema_is_served(daemon):
    import http.client
    import socket

    conn = http.client.HTTPConnection("localhost")
    conn.sock = socket.socket(socket.AF_UNIX)
    conn.sock.connect(str(daemon.socket))
    conn.request("GET", "/openapi.json")
    schema = json.loads(conn.getresponse().read())
    assert "/v1/jobs" in schema["paths"]
    assert "JobOut" in schema["components"]["schemas"]


def test_the_socket_is_reachable_by_every_user(daemon):
    assert daemon.socket.stat().st_mode & 0o777 == 0o666


def test_a_volume_or_image_that_does_not_exist_is_refused_at_submit(daemon, unix_users):
    # under a volume path granted to everyone (/srv), so only its absence is at issue
    text = GOOD + "image: /no/such/rootfs\nvolumes: [{source: /srv/no/such/dir, target: /data}]\n"
    r = submit(daemon, text, user=unix_users["alice"])
    assert r.code == 2
    assert "volumes[0].source: /srv/no/such/dir does not exist on this node" in r.err
    assert "image: /no/such/rootfs does not exist" in r.err
    assert daemon.rows("jobs") == 0


def test_an_admin_changes_a_class_and_new_jobs_get_its_defaults(daemon, unix_users):
    r = daemon.cli("class", "set", "training", "--default-cpus", "2", user=unix_users["alice"])
    assert r.code == 3
    r = daemon.cli("class", "set", "training", "--default-cpus", "2", "--default-memory", "8Gi")
    assert r.code == 0, r.err
    text = GOOD.replace("resources: {gpus: 2, cpus: 8, memory: 32Gi}", "resources: {gpus: 1}")
    out = submit(daemon, text, "--dry-run", "--json", user=unix_users["alice"]).json()
    assert out["limits"]["cpu.max"] == "200000 100000"
    assert out["limits"]["memory.max"] == 8 * 2**30
    classes = {c["name"]: c for c in daemon.cli("class", "list", "--json").json()["classes"]}
    assert classes["training"]["default_cpus"] == "2"
    assert classes["training"]["default_time_limit"] == "7d"  # untouched
    r = daemon.cli("class", "set", "training", "--default-memory", "lots")
    assert r.code == 2
    assert 'defaults.memory: "lots" is not a size' in r.err
    r = daemon.cli("class", "set", "urgent", "--preempts", "batch")
    assert r.code == 2
    assert 'class "urgent" is new: --value is required' in r.err
    assert daemon.cli("class", "set", "urgent", "--value", "800", "--preempts", "batch").code == 0
    assert "urgent" in {c["name"] for c in daemon.cli("class", "list", "--json").json()["classes"]}


def test_an_admin_sets_a_class_queue_order_and_a_bad_one_names_the_allowed_values(daemon):
    r = daemon.cli("class", "set", "batch", "--order", "fifo")
    assert r.code == 0, r.err
    classes = {c["name"]: c for c in daemon.cli("class", "list", "--json").json()["classes"]}
    assert classes["batch"]["order"] == "fifo"
    assert classes["training"]["order"] == "short-first"  # the default, untouched
    assert classes["batch"]["default_time_limit"] == "1d"  # the rest of batch too
    listing = daemon.cli("class", "list").out.splitlines()
    assert "ORDER" in listing[0]
    rows = {line.split()[0]: line.split() for line in listing[2:]}
    assert "fifo" in rows["batch"] and "short-first" in rows["training"]
    r = daemon.cli("class", "set", "batch", "--order", "random")
    assert r.code == 2
    assert "order: \"random\" is not allowed; input should be 'fifo' or 'short-first'" in r.err
    classes = {c["name"]: c for c in daemon.cli("class", "list", "--json").json()["classes"]}
    assert classes["batch"]["order"] == "fifo"  # nothing stored


def test_the_fast_listing_shape_is_exactly_jobouts():
    """Listings build rows' JSON directly (job_dict); it must stay JobOut's shape."""
    from types import SimpleNamespace

    from mlq.scheduler.daemon.schemas import JobOut, job_dict

    row = SimpleNamespace(
        id=7, name="n", team="t", user="u", kind="batch", priority_class="batch",
        state="PENDING", reason="Resources", submitted_at=1.5e9, started_at=None,
        ended_at=1.6e9, array_id=3, array_index=1, depends_on="[1, 2]", node=None,
        exit_code=None, signal=None, restart_count=2, gang_id=5, gang_rank=2,
    )  # fmt: skip
    assert job_dict(row) == JobOut.of(row).model_dump()
    assert list(job_dict(row)) == list(JobOut.model_fields)
    from mlq.scheduler.daemon.schemas import LISTING_FIELDS, listing_json
    from mlq.scheduler.store import Store

    assert [c.strip().strip('"') for c in Store.LISTING.split(",")] == list(LISTING_FIELDS)
    as_tuple = tuple(getattr(row, f) for f in LISTING_FIELDS)
    assert json.loads(listing_json([as_tuple])) == {"jobs": [JobOut.of(row).model_dump()]}


def test_hold_and_release_follow_who_may_and_an_admins_hold_binds_the_owner(daemon, unix_users):
    alice, bob, carol = unix_users["alice"], unix_users["bob"], unix_users["carol"]
    job = submit(daemon, GOOD, "--json", user=alice).json()["jobs"][0]["id"]

    def reason() -> str:
        (j,) = daemon.cli("queue", "--json", user=alice).json()["jobs"]
        return j["reason"]

    r = daemon.cli("hold", str(job), user=bob)  # a member of the team, not its admin
    assert r.code == 3
    assert f"may not hold job {job}: it belongs to {alice.pw_name}" in r.err
    r = daemon.cli("hold", str(job), user=alice)
    assert r.code == 0, r.err
    assert r.out.strip() == f"job {job}: PENDING (Held by {alice.pw_name})"
    assert reason() == f"Held by {alice.pw_name}"
    assert daemon.cli("release", str(job), user=alice).code == 0
    assert not reason().startswith("Held")
    r = daemon.cli("hold", str(job), "--json", user=carol)  # nlp's admin
    assert r.json()["results"] == [
        {"id": job, "state": "PENDING", "ok": True, "refused": False,
         "message": f"Held by admin {carol.pw_name}"}
    ]  # fmt: skip
    r = daemon.cli("release", str(job), user=alice)
    assert r.code == 3
    assert f"was held by admin {carol.pw_name}: only an admin of team" in r.err
    assert reason() == f"Held by admin {carol.pw_name}"
    assert daemon.cli("release", str(job), user=carol).code == 0
    assert daemon.cli("hold", "999", user=alice).code == 1
    events = [e["reason"] for e in daemon.cli("show", str(job), "--json").json()["events"]]
    assert events[1:] == [
        f"Held by {alice.pw_name}", f"Released by {alice.pw_name}",
        f"Held by admin {carol.pw_name}", f"Released by {carol.pw_name}",
    ]  # fmt: skip


def test_a_team_admin_manages_the_teams_members_but_not_its_admins(daemon, unix_users):
    carol, bob, alice = unix_users["carol"], unix_users["bob"], unix_users["alice"]
    r = daemon.cli("team", "create", "speech", "--admin", carol.pw_name)
    assert r.code == 0, r.err
    speech = GOOD.replace("team: nlp", "team: speech")
    assert submit(daemon, speech, user=alice).code == 3
    r = daemon.cli("team", "add-member", "speech", alice.pw_name, "--json", user=carol)
    assert r.code == 0, r.err  # its admin may
    assert r.json()["members"] == [alice.pw_name] and r.json()["admins"] == [carol.pw_name]
    r = submit(daemon, speech, user=alice)
    assert r.code == 0, r.err
    r = daemon.cli("team", "add-member", "speech", alice.pw_name, "--admin", user=carol)
    assert r.code == 3
    assert 'may not make or unmake an admin of team "speech": an mlq admin' in r.err
    r = daemon.cli("team", "add-member", "speech", "x", user=bob)  # not its admin
    assert r.code == 3
    assert 'may not change the members of team "speech": only its team admins' in r.err
    r = daemon.cli("team", "add-member", "cv", bob.pw_name, user=carol)  # not cv's admin
    assert r.code == 3
    r = daemon.cli("team", "remove-member", "speech", carol.pw_name, user=carol)
    assert r.code == 3 and "may not make or unmake an admin" in r.err
    r = daemon.cli("team", "remove-member", "speech", alice.pw_name, user=carol)
    assert (r.code, r.out.strip()) == (0, f"Removed {alice.pw_name} from speech")
    assert submit(daemon, speech, user=alice).code == 3
    daemon.cli("team", "add-member", "speech", alice.pw_name, "--admin")
    daemon.cli("team", "add-member", "speech", alice.pw_name)
    # --json is an option of grant delete too (2 would be a usage error); no grant here: 1
    assert daemon.cli("grant", "delete", "team:speech", "--json").code == 1
    r = daemon.cli("team", "remove-member", "speech", alice.pw_name, "--admin")
    assert r.out.strip() == f"Removed the admin role of {alice.pw_name} in speech (still a member)"
    teams = {t["name"]: t for t in daemon.cli("team", "list", "--json").json()["teams"]}
    assert alice.pw_name in teams["speech"]["members"]
    assert alice.pw_name not in teams["speech"]["admins"]


def _in_a_terminal(daemon, columns: int, *args: str) -> str:
    """``mlq ARGS`` as a user sees it in a terminal ``columns`` wide (a real pty)."""
    import os
    import pty
    import subprocess

    from daemon_helpers import MLQ

    main, child = pty.openpty()
    env = daemon.env() | {"COLUMNS": str(columns), "LINES": "50", "TERM": "xterm"}
    p = subprocess.Popen([MLQ, *args], stdin=child, stdout=child, stderr=child, env=env)
    os.close(child)
    out = b""
    while True:
        try:
            chunk = os.read(main, 65536)
        except OSError:  # the child closed the pty
            break
        if not chunk:
            break
        out += chunk
    p.wait(timeout=30)
    os.close(main)
    import re

    return re.sub(r"\x1b\[[0-9;?]*[A-Za-z]", "", out.decode()).replace("\r", "")


@pytest.mark.parametrize("columns", [80, 120])
def test_tables_keep_their_key_columns_whole_at_ordinary_widths(daemon, unix_users, columns):
    alice = unix_users["alice"]
    long_name = GOOD.replace("name: bert", "name: " + "a-rather-long-experiment-name-" * 2 + "x")
    ids = [
        submit(daemon, long_name, "--json", user=alice).json()["jobs"][0]["id"] for _ in range(2)
    ]
    daemon.cli("cancel", str(ids[0]), user=alice)
    for args in (["queue"], ["history"]):
        text = _in_a_terminal(daemon, columns, *args)
        lines = [line for line in text.splitlines() if line.strip()]
        assert all(len(line) <= columns for line in lines), (args, text)
        header = lines[0].split()
        # at 80 columns history leaves out STARTED, the first of its optional columns
        want = ["ID", "STATE", "REASON"] + (["EXIT", "ENDED"] if args == ["history"] else [])
        assert all(w in header for w in want), (args, text)
        assert "…" in text  # the long name (or reason) is cut, not the key columns
    hist = _in_a_terminal(daemon, columns, "history")
    assert f"{ids[0]} " in hist and "CANCELLED" in hist
