"""Grants and groups as a running job has them: the kernel's view from inside."""

from __future__ import annotations

import grp
import os
import shutil
import tempfile
from pathlib import Path

import pytest

PROBE = """
name: caps
team: {team}
command: [/bin/sh, -c, 'grep CapEff /proc/self/status']
resources: {{cpus: 1, memory: 64Mi}}
security: {{capabilities: [CAP_NET_RAW]}}
"""


def test_a_granted_capability_is_the_jobs_and_only_in_the_granted_team(make_daemon, unix_users):
    d = make_daemon()
    alice = unix_users["alice"]
    assert d.cli("grant", "set", "team:cv", "--capabilities", "CAP_NET_RAW").code == 0
    job = d.submit(PROBE.format(team="cv"), user=alice)
    assert d.wait_for(job, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    cap_eff = int(d.log(job).split()[1], 16)
    assert cap_eff == 1 << 13  # CAP_NET_RAW, and nothing else
    path = d.job_file("nlp.yaml", PROBE.format(team="nlp"))
    r = d.cli("submit", str(path), user=alice)
    assert r.code == 3 and "CAP_NET_RAW is not granted to team nlp" in r.err


def test_a_grant_taken_back_before_the_start_fails_the_job_with_the_reason(make_daemon, unix_users):
    d = make_daemon()
    alice = unix_users["alice"]
    assert d.cli("grant", "set", "team:cv", "--capabilities", "CAP_NET_RAW").code == 0
    first = d.submit(
        "name: first\nteam: cv\ncommand: [sleep, '0.5']\nresources: {cpus: 1, memory: 64Mi}\n",
        user=alice,
    )
    later = d.submit(PROBE.format(team="cv"), "--after", str(first), user=alice)
    assert d.cli("grant", "delete", "team:cv").code == 0
    job = d.wait_for(later, {"COMPLETED", "FAILED"})
    assert job["state"] == "FAILED"
    assert "could not start: security.capabilities: CAP_NET_RAW is not granted" in job["reason"]


@pytest.fixture
def team_share():
    """A directory readable by the mlqt-nlp group only, as teams share datasets."""
    d = Path(tempfile.mkdtemp(prefix="mlq-share-"))
    (d / "data.txt").write_text("the team's dataset\n")
    os.chown(d, 0, grp.getgrnam("mlqt-nlp").gr_gid)
    d.chmod(0o750)
    yield d
    shutil.rmtree(d, ignore_errors=True)


def test_a_job_keeps_its_users_supplementary_groups(make_daemon, unix_users, team_share):
    d = make_daemon()
    job = d.submit(
        f"""
name: reader
team: nlp
command: [/bin/cat, /share/data.txt]
volumes: [{{source: {team_share}, target: /share, readonly: true}}]
resources: {{cpus: 1, memory: 64Mi}}
""",
        user=unix_users["alice"],  # a member of mlqt-nlp
    )
    assert d.wait_for(job, {"COMPLETED", "FAILED"})["state"] == "COMPLETED"
    assert d.log(job) == "the team's dataset\n"
    # bob is in the team by name, not in the group: the kernel says no, at submit
    path = d.job_file(
        "bob.yaml",
        f"name: r\nteam: nlp\ncommand: [/bin/true]\nvolumes: [{{source: {team_share}/data.txt, target: /d}}]\n",
    )
    r = d.cli("submit", str(path), user=unix_users["bob"])
    assert r.code == 2 and "is not reachable by uid" in r.err
