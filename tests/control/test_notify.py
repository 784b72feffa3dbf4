"""Notifications without a daemon: the store tells the notifier what it committed, and
the notifier POSTs to a real HTTP server on 127.0.0.1 with its retries, deadline and
destination rules (docs/notifications.md)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from fakes import status
from mlq.scheduler import states
from mlq.scheduler.cluster import NotifyConfig
from mlq.scheduler.daemon.notify import Delivery, Notifier, payload, wants
from mlq.scheduler.errors import Conflict, InvalidInput
from mlq.scheduler.models import Job
from mlq.scheduler.spec import parse_spec
from mlq.scheduler.store import Notice
from mlq.scheduler.webhooks import Rules, parse_network, shown

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from hook_server import Hook, tls_contexts  # noqa: E402

LOCAL = NotifyConfig(networks=["127.0.0.1"], timeout=2, attempts=3)


@pytest.fixture
def hooks():
    made: list[Hook] = []

    def make(**kw) -> Hook:
        made.append(Hook(**kw))
        return made[-1]

    yield make
    for hook in made:
        hook.close()


def notifier(h, config: NotifyConfig = LOCAL) -> Notifier:
    n = Notifier(h.store, config, backoff=0.05)
    h.store.listeners.append(n.tell)
    return n


def columns(h, job_id: int) -> dict:
    """A job's columns but its spec, as the store puts them in a notice."""
    row = h.store.job(job_id)
    return {c.name: getattr(row, c.name) for c in Job.__table__.columns if c.name != "spec"}


def delivery(url: str) -> Delivery:
    return Delivery(url, b'{"event":"job.ended"}', "job.ended", 1, "job", "d1")


def test_a_job_that_ends_is_sent_once_with_its_fields_after_the_commit(h, hooks):
    hook = hooks()
    n = notifier(h)
    n.start()
    job = h.submit(notify={"webhook": hook.url})
    h.loop.run_pass()
    h.executor.end(h.run(job), status("FAILED", 3))
    h.loop.run_pass()
    (body,) = hook.wait(1)
    assert body["event"] == "job.ended"
    assert {k: body["job"][k] for k in ("id", "name", "team", "user", "state", "exit_code")} == {
        "id": job, "name": "j", "team": "nlp", "user": "alice", "state": "FAILED", "exit_code": 3,
    }  # fmt: skip
    assert body["job"]["nodes"] == ["n1"] and body["job"]["ended_at"]
    assert body["text"].startswith(f"mlq: job {job} j (team nlp, user alice) FAILED on n1")
    assert "spec" not in body["job"]  # its env may hold secrets
    assert hook.requests[0]["path"] == "/hooks/secret-token"
    assert hook.requests[0]["headers"]["X-Mlq-Event"] == "job.ended"
    n.stop()
    assert n.counts["sent"] == 1


def test_a_change_that_does_not_commit_tells_nobody(h):
    told: list[Notice] = []
    h.store.listeners.append(told.extend)
    job = h.submit()
    with pytest.raises(Conflict):  # a compare-and-set that fails changes nothing
        h.store.transition(job, states.COMPLETED, "exit code 0", expect=(states.RUNNING,))
    assert told == []
    h.store.cancel_pending([job], "Cancelled by alice")
    assert [(t.event, t.job["id"], t.job["state"]) for t in told] == [
        ("ended", job, states.CANCELLED)
    ]


def test_a_requeued_preemption_is_a_preempt_event_and_the_end_of_the_job_is_not_told_twice(h):
    told: list[Notice] = []
    h.store.listeners.append(told.extend)
    train = h.submit(kind="training", resources={"cpus": 8})
    h.loop.run_pass()
    h.submit(user="bob", team="cv", kind="inference", resources={"cpus": 4})
    h.loop.run_pass()
    h.executor.end(h.run(train), status("STOPPED", 143, "SIGTERM"))
    h.loop.run_pass()
    (notice,) = [t for t in told if t.job["id"] == train]
    assert (notice.event, notice.requeued, notice.job["node"]) == ("preempted", True, "n1")
    assert wants(notice, ["preempt"]) and not wants(notice, ["end"])
    assert payload(notice, ["n1"])["job"]["requeued"] is True


def test_a_multi_node_job_is_told_once_by_its_first_part_and_a_teams_hook_too(h):
    job = h.submit(notify="https://hooks.example.com/x")
    h.store.set_webhook("nlp", "https://chat.example.com/team")
    row = columns(h, job) | {"state": "FAILED", "gang_id": job, "node": "n1"}
    n = Notifier(h.store, NotifyConfig())
    assert n.deliveries(Notice("ended", {**row, "gang_rank": 1})) == []
    told = n.deliveries(Notice("ended", {**row, "gang_rank": 0}))
    assert [(d.url, d.source) for d in told] == [
        ("https://hooks.example.com/x", "job"),
        ("https://chat.example.com/team", "team"),
    ]
    assert json.loads(told[0].body)["job"]["nodes"] == ["n1"]
    # a job that asked for preemptions only is not told of its end; its team still is
    only = h.submit(notify={"webhook": "https://hooks.example.com/x", "events": ["preempt"]})
    told = n.deliveries(Notice("ended", columns(h, only) | {"state": "FAILED"}))
    assert [d.source for d in told] == ["team"]


def test_https_names_the_host_connects_to_the_checked_address_and_verifies_the_certificate(
    h, hooks, tmp_path
):
    server, client = tls_contexts(tmp_path, ["localhost"])
    hook = hooks(tls=server)
    n = Notifier(h.store, NotifyConfig(networks=["127.0.0.1", "::1"], timeout=2), tls=client)
    by_name = hook.url.replace("127.0.0.1", "localhost")  # resolves to ::1 first, maybe
    attempt = n.deliver(delivery(by_name))
    assert attempt.ok, attempt.error
    assert hook.requests[0]["headers"]["Host"].startswith("localhost:")
    # a certificate that does not name the URL's host fails, and is not tried again
    attempt = n.deliver(delivery(hook.url))
    assert not attempt.ok and attempt.error.startswith("TLS: ") and len(hook.requests) == 1


def test_a_server_that_fails_twice_with_500_gets_a_third_attempt(h, hooks):
    hook = hooks(answers=[500, 503])
    attempt = notifier(h).deliver(delivery(hook.url))
    assert attempt.ok and len(hook.requests) == 3
    # the same delivery ID on each attempt: the receiver can tell a retry
    assert len({r["headers"]["X-Mlq-Delivery"] for r in hook.requests}) == 1


def test_a_4xx_answer_is_not_retried_nor_is_a_redirect_followed(h, hooks):
    hook = hooks(answers=[404])
    attempt = notifier(h).deliver(delivery(hook.url))
    assert (attempt.ok, attempt.status, len(hook.requests)) == (False, 404, 1)
    target = hooks()
    moved = hooks(answers=[302], redirect=target.url)
    attempt = notifier(h).deliver(delivery(moved.url))
    assert "redirects are not followed" in attempt.error
    assert len(moved.requests) == 1 and target.requests == []


def test_a_server_that_never_answers_costs_one_attempt_within_the_timeout(h, hooks):
    hook = hooks(hang=True)
    config = NotifyConfig(networks=["127.0.0.1"], timeout=1, attempts=3)
    attempt = notifier(h, config).deliver(delivery(hook.url))
    assert not attempt.ok and "no answer within 1s" in attempt.error
    assert len(hook.requests) == 1  # it took the request: not sent again


def test_loopback_and_link_local_addresses_are_refused_unless_their_network_is_allowed(h, hooks):
    hook = hooks()
    attempt = notifier(h, NotifyConfig()).deliver(delivery(hook.url))
    assert "refused: 127.0.0.1 resolves to 127.0.0.1 is not a public address" in attempt.error
    localhost = hook.url.replace("127.0.0.1", "localhost")
    assert "refused" in notifier(h, NotifyConfig()).deliver(delivery(localhost)).error
    assert hook.requests == []  # nothing was sent
    rules = Rules()
    for address in ("169.254.169.254", "10.1.2.3", "::1", "fe80::1", "0.0.0.0", "::ffff:127.0.0.1"):
        assert rules.address_problem(address), address
    assert rules.address_problem("8.8.8.8") is None
    assert "169.254.169.254" in (rules.url_problem("http://169.254.169.254/latest/") or "")
    inner = Rules(networks=(parse_network("10.0.0.0/8"),))
    assert inner.address_problem("10.1.2.3") is None and inner.address_problem("127.0.0.1")


def test_only_the_listed_hosts_may_be_named_when_the_admin_lists_some():
    rules = NotifyConfig(hosts=["hooks.slack.com", "*.example.com"]).rules()
    assert rules.url_problem("https://hooks.slack.com/services/T/B/X") is None
    assert rules.url_problem("https://chat.example.com/hooks/x") is None
    assert "notifications.hosts" in (rules.url_problem("https://evil.test/x") or "")


def test_a_full_queue_drops_the_event_never_waits_and_says_so_once_not_per_event(h, caplog):
    n = Notifier(h.store, NotifyConfig(queue=1))  # not started: nothing drains it
    notice = Notice("ended", {"id": 7, "team": "nlp"})
    with caplog.at_level("WARNING", logger="mlq.notify"):
        n.tell([notice] * 1000)
    assert n.counts["dropped"] == 999
    (line,) = [r.getMessage() for r in caplog.records]
    assert line == "notifications: 1 events wait to be sent already; dropped 1 (the last for job 7)"


@pytest.mark.parametrize(
    "webhook, problem",
    [
        pytest.param("ftp://example.com/x", 'has scheme "ftp"', id="ftp is not http"),
        pytest.param("file:///etc/passwd", 'has scheme "file"', id="a file URL is refused"),
        pytest.param("https://u:pw@example.com/", "holds credentials", id="no user:password@"),
        pytest.param("https://example.com/" + "x" * 2100, "at most 2048", id="too long"),
        pytest.param("https:///x", "names no host", id="no host"),
        pytest.param("https://exa mple.com/", "has spaces", id="spaces"),
    ],
)
def test_a_bad_webhook_in_a_job_file_is_refused_naming_the_field(webhook, problem):
    with pytest.raises(InvalidInput) as exc:
        parse_spec({"name": "j", "team": "nlp", "command": ["true"], "notify": webhook})
    assert str(exc.value).startswith("notify.webhook: ") and problem in str(exc.value)


def test_what_others_see_of_a_webhook_is_its_scheme_and_host():
    assert shown("https://hooks.slack.com/services/T0/B0/secret") == "https://hooks.slack.com/…"
    assert shown("http://[::1]:8080") == "http://[::1]:8080"
    spec = parse_spec({"name": "j", "team": "t", "command": ["x"], "notify": "https://h/x"})
    assert json.loads(spec.model_dump_json())["notify"] == {
        "webhook": "https://h/x",
        "events": ["end", "preempt"],
    }
