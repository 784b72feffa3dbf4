"""A job's output through the real daemon: its class's log limit keeps the newest
bytes of each stream, ``mlq logs`` says how much was dropped, and the logs endpoint
refuses offsets and limits outside their ranges."""

from __future__ import annotations

import json

import pytest

# The test cluster's classes, with batch keeping 64Ki of each stream (files of 32Ki).
CLASSES = """
priority_classes:
  - {name: inference, value: 1000, preempts: [training, batch], preemptible: false}
  - {name: training, value: 500, preempts: [batch]}
  - {name: batch, value: 100, log_limit: 64Ki}
"""

# 1,000,000 bytes of numbered 10-byte lines on stdout, 200,000 bytes on stderr.
CHATTY = """
name: chatty
team: nlp
kind: batch
command:
  - python3
  - -c
  - |
    import sys
    for b in range(10):
        sys.stdout.buffer.write(b"".join(b"%09d\\n" % i for i in range(b * 10000, b * 10000 + 10000)))
        sys.stderr.buffer.write(b"".join(b"e%08d\\n" % i for i in range(b * 2000, b * 2000 + 2000)))
resources: {cpus: 1, memory: 128Mi}
"""

OUT = b"".join(b"%09d\n" % i for i in range(100_000))
ERR = b"".join(b"e%08d\n" % i for i in range(20_000))


def dropped_line(n_ki: int) -> str:
    return (
        f"mlq: {n_ki}Ki of earlier output were dropped "
        "(the job's log limit keeps the newest 64Ki per stream)\n"
    )


def test_mlq_logs_shows_the_newest_output_and_says_how_much_was_dropped(make_daemon, unix_users):
    d = make_daemon(extra_teams=CLASSES)
    alice = unix_users["alice"]
    job_id = d.submit(CHATTY, user=alice)
    d.wait_for(job_id, "COMPLETED")
    r = d.cli("logs", str(job_id), user=alice)
    assert r.code == 0, r.err
    out = r.out.encode()
    # files of 32Ki: the full older one and the newest, 1,000,000 = 30 x 32Ki + 16960
    assert out == OUT[-(32768 + 16960) :]
    assert r.err == dropped_line((1_000_000 - len(out)) // 1024)
    r = d.cli("logs", str(job_id), "--stderr", user=alice)
    assert r.code == 0, r.err
    assert r.out.encode() == ERR[-(32768 + 200_000 % 32768) :]
    assert r.err == dropped_line((200_000 - len(r.out)) // 1024)


def test_a_log_offset_in_the_dropped_part_reads_from_the_first_kept_byte(make_daemon, unix_users):
    d = make_daemon(extra_teams=CLASSES)
    job_id = d.submit(CHATTY, user=unix_users["alice"])
    d.wait_for(job_id, "COMPLETED")
    c = d.client()
    url = f"/v1/jobs/{job_id}/logs"
    kept = 32768 + 16960
    first = 1_000_000 - kept
    chunk = c.get(url, offset=10, limit=1000)
    assert (chunk["dropped"], chunk["next_offset"]) == (first - 10, first + 1000)
    assert chunk["data"].encode() == OUT[first : first + 1000]
    chunk = c.get(url, offset=first + 1000)
    assert chunk["dropped"] == 0 and chunk["data"].encode() == OUT[first + 1000 :]
    assert chunk["next_offset"] == 1_000_000
    end = c.get(url, offset=1_000_000)
    assert (end["data"], end["dropped"], end["next_offset"]) == ("", 0, 1_000_000)


@pytest.mark.parametrize(
    ("query", "named"),
    [
        pytest.param("offset=-1", "offset", id="a negative offset"),
        pytest.param("limit=-1", "limit", id="a negative limit"),
        pytest.param(f"limit={4 * 2**20 + 1}", "limit", id="a limit above 4Mi"),
    ],
)
def test_the_logs_endpoint_refuses_offsets_and_limits_out_of_range(
    make_daemon, unix_users, query, named
):
    d = make_daemon()
    job_id = d.submit(
        "name: quiet\nteam: nlp\ncommand: [/bin/true]\nresources: {cpus: 1, memory: 64Mi}\n"
    )
    d.wait_for(job_id, "COMPLETED")
    resp = d.client()._conn.request("GET", f"/v1/jobs/{job_id}/logs?{query}", None)
    assert resp.status == 422
    message = json.loads(resp.body)["message"]
    assert message.startswith(f"{named}: "), message
    assert ("0 or more" if named == "offset" else "0 to 4Mi") in message
    ok = d.client().get(f"/v1/jobs/{job_id}/logs", limit=4 * 2**20)
    assert ok["data"] == ""


def test_logs_follow_of_a_pending_job_waits_for_it_to_start_then_follows_it(
    make_daemon, unix_users
):
    import threading
    import time

    d = make_daemon()
    alice = unix_users["alice"]
    small = "resources: {cpus: 1, memory: 32Mi}\n"
    first = d.submit("name: first\nteam: nlp\ncommand: [/bin/sleep, '60']\n" + small, user=alice)
    job = d.submit(
        "name: later\nteam: nlp\ncommand: [/bin/sh, -c, 'echo started; sleep 0.5; echo done']\n"
        + small,
        "-d",
        f"afterany:{first}",
        user=alice,
    )
    got = {}
    t = threading.Thread(target=lambda: got.update(r=d.cli("logs", str(job), "-f", user=alice)))
    t.start()
    time.sleep(1.5)
    assert t.is_alive()  # waiting, not gone with nothing
    assert d.cli("cancel", str(first), "--now", user=alice).code == 0
    t.join(30)
    r = got["r"]
    assert (r.code, r.out) == (0, "started\ndone\n")
    assert f"job {job} is pending; waiting for it to start" in r.err
