"""Notifications from a real daemon: a job's and a team's webhook, POSTed to a real
HTTP server on 127.0.0.1 (which the test config's notifications.networks allows)
when jobs end and when they are preempted (docs/notifications.md)."""

from __future__ import annotations

import sys
import time
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hook_server import Hook  # noqa: E402
from test_running_system import INFERENCE, TRAINING  # noqa: E402

NOTIFY = "notifications: {networks: [127.0.0.1], timeout: 60s}"


def job(name: str, webhook: str | None, command: str = "exit 3", team: str = "nlp") -> str:
    notify = f"notify: {{webhook: '{webhook}'}}\n" if webhook else ""
    return (
        f"name: {name}\nteam: {team}\ncommand: [/bin/sh, -c, '{command}']\n"
        f"resources: {{cpus: 1, memory: 64Mi}}\n{notify}"
    )


@pytest.fixture
def hooks():
    made: list[Hook] = []

    def make(**kw) -> Hook:
        made.append(Hook(**kw))
        return made[-1]

    yield make
    for hook in made:
        hook.close()


def test_a_job_that_ends_sends_one_post_with_its_fields(make_daemon, unix_users, hooks):
    hook = hooks()
    d = make_daemon(extra=NOTIFY)
    alice = unix_users["alice"]
    job_id = d.submit(job("hooked", hook.url), user=alice)
    ended = d.wait_for(job_id, "FAILED")
    (body,) = hook.wait(1)
    assert body["event"] == "job.ended"
    got = body["job"]
    assert (got["id"], got["name"], got["team"], got["user"]) == (
        job_id, "hooked", "nlp", alice.pw_name,
    )  # fmt: skip
    assert (got["state"], got["exit_code"], got["reason"]) == ("FAILED", 3, ended["reason"])
    assert got["nodes"] == ["e2e"] and got["started_at"] and got["ended_at"]
    assert body["text"].startswith(f"mlq: job {job_id} hooked (team nlp, user {alice.pw_name})")
    assert "FAILED on e2e" in body["text"]
    assert hook.requests[0]["path"] == "/hooks/secret-token"
    # who else looks at the job sees the webhook's host, not its secret path
    other = d.cli("show", str(job_id), "--json", user=unix_users["bob"])
    port = hook.server.server_address[1]
    assert other.json()["spec"]["notify"]["webhook"] == f"http://127.0.0.1:{port}/…"
    time.sleep(0.5)
    assert len(hook.requests) == 1
    # the daemon's log names the webhook by its scheme and host, never its secret path
    logged = (d.home / "server.log").read_text()
    assert f"notified job webhook http://127.0.0.1:{port}/… of job.ended of job {job_id}" in logged
    assert "secret-token" not in logged


def test_a_preempted_job_sends_a_preempt_event(make_daemon, unix_users, hooks):
    hook = hooks()
    d = make_daemon(gpus=2, extra=NOTIFY)
    hooked = TRAINING + f"notify: {{webhook: '{hook.url}', events: [preempt]}}\n"
    train = d.submit(hooked, user=unix_users["alice"])
    d.wait_for(train, "RUNNING")
    serve = d.submit(INFERENCE, user=unix_users["bob"])
    (body,) = hook.wait(1)
    assert body["event"] == "job.preempted"
    got = body["job"]
    assert (got["id"], got["state"], got["requeued"], got["preempted_by"]) == (
        train, "PREEMPTED", True, serve,
    )  # fmt: skip
    assert got["nodes"] == ["e2e"]
    assert f"Preempted for job {serve}" in got["reason"]
    assert "was preempted on e2e" in body["text"] and body["text"].endswith("; requeued")
    d.wait_for(train, "COMPLETED", timeout=60)  # it came back and finished
    time.sleep(0.5)
    assert len(hook.requests) == 1  # events: [preempt] only: its end is not told


def test_a_team_webhook_fires_for_the_teams_jobs_and_a_jobs_own_too(make_daemon, unix_users, hooks):
    team_hook, own = hooks(), hooks()
    d = make_daemon(extra=NOTIFY)
    r = d.cli("team", "set-webhook", "nlp", team_hook.url)  # root: an mlq admin
    assert r.code == 0, r.err
    alice = unix_users["alice"]
    elsewhere = d.submit(job("elsewhere", None, "true", team="search"), user=alice)
    d.wait_for(elsewhere, "COMPLETED")
    mine = d.submit(job("mine", own.url, "true"), user=alice)
    d.wait_for(mine, "COMPLETED")
    (to_team,) = team_hook.wait(1)
    (to_job,) = own.wait(1)
    assert to_team["job"]["id"] == to_job["job"]["id"] == mine  # not the search team's job
    assert to_team["job"]["state"] == "COMPLETED" and to_team["event"] == "job.ended"
    teams = {t["name"]: t for t in d.cli("team", "list", "--json").json()["teams"]}
    assert teams["nlp"]["webhook"] == team_hook.url and teams["search"]["webhook"] == ""


def test_a_webhook_that_never_answers_does_not_delay_the_next_job(make_daemon, unix_users, hooks):
    hook = hooks(hang=True)
    d = make_daemon(extra=NOTIFY)
    alice = unix_users["alice"]
    first = d.submit(job("first", hook.url, "true"), user=alice)
    d.wait_for(first, "COMPLETED")
    hook.wait(1)  # the POST came, and is held unanswered (for up to the 60 s timeout)
    second = d.submit(job("second", hook.url, "sleep 30"), user=alice)
    d.wait_for(second, "RUNNING", timeout=30)
    assert hook.holding == 1  # the first job's notification still hangs
    third = d.submit(job("third", None, "true"), user=alice)
    d.wait_for(third, "COMPLETED", timeout=30)
    assert hook.holding == 1


def test_only_team_admins_and_mlq_admins_set_a_teams_webhook(daemon, unix_users):
    url = "https://hooks.example.com/services/T0/B0/secret"
    bob, carol = unix_users["bob"], unix_users["carol"]
    r = daemon.cli("team", "set-webhook", "nlp", url, user=bob)  # a plain member
    assert r.code == 3 and "may not set the webhook of team" in r.err
    r = daemon.cli("team", "set-webhook", "cv", url, user=carol)  # nlp's admin, cv's member
    assert r.code == 3 and 'team "cv"' in r.err
    assert daemon.cli("team", "set-webhook", "nlp", url, user=carol).code == 0
    assert daemon.cli("team", "set-webhook", "cv", url).code == 0  # root: an mlq admin
    seen = {
        t["name"]: t["webhook"]
        for t in daemon.cli("team", "list", "--json", user=bob).json()["teams"]
    }
    assert seen == {"nlp": "https://hooks.example.com/…", "cv": "https://hooks.example.com/…"}
    own = {
        t["name"]: t["webhook"]
        for t in daemon.cli("team", "list", "--json", user=carol).json()["teams"]
    }
    assert own["nlp"] == url and own["cv"] == "https://hooks.example.com/…"
    r = daemon.cli("team", "set-webhook", "nlp", "--clear", user=carol)
    assert r.code == 0 and "webhook none" in r.out


def test_a_webhook_with_a_bad_scheme_or_an_inner_address_is_refused_naming_the_field(
    daemon, unix_users
):
    carol = unix_users["carol"]
    r = daemon.cli("team", "set-webhook", "nlp", "ftp://example.com/x", user=carol)
    assert r.code == 2 and "webhook:" in r.err and 'scheme "ftp"' in r.err
    r = daemon.cli("team", "set-webhook", "nlp", "http://169.254.169.254/latest", user=carol)
    assert r.code == 2 and "webhook: 169.254.169.254 is not a public address" in r.err
    for bad, why in [
        ("ftp://example.com/x", 'scheme "ftp"'),
        ("http://127.0.0.1:9/x", "127.0.0.1 is not a public address"),
    ]:
        path = daemon.job_file(f"bad-{len(why)}.yaml", job("bad", bad))
        r = daemon.cli("submit", str(path), user=unix_users["bob"])
        assert r.code == 2 and "notify.webhook: " in r.err and why in r.err, r.err
    assert daemon.rows() == 0
