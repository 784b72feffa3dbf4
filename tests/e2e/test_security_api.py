"""Privilege only by an admin's grant, private job details, a private state dir:
the daemon's side of docs/security.md, tried by the test users through the real CLI."""

from __future__ import annotations

import os
import shutil
import stat
import tempfile
from pathlib import Path

import pytest

JOB = """
name: probe
team: nlp
command: [/bin/sh, -c, "echo $TOKEN", --flag, s3cret-arg]
env: {TOKEN: hunter2}
resources: {cpus: 1, memory: 64Mi}
"""


def submit(daemon, text: str, user=None):
    return daemon.cli("submit", str(daemon.job_file("job.yaml", text)), "--json", user=user)


@pytest.mark.parametrize(
    ("extra", "field", "wanted"),
    [
        pytest.param(
            "security: {capabilities: [CAP_DAC_OVERRIDE]}\n",
            "security.capabilities: CAP_DAC_OVERRIDE is not granted to team nlp",
            "mlq grant set team:nlp --capabilities CAP_DAC_OVERRIDE",
            id="a capability nobody granted is refused, naming it and the command that grants it",
        ),
        pytest.param(
            "security: {capabilities: [CAP_SETUID, CAP_SETGID]}\n",
            "security.capabilities: CAP_SETUID is not granted",
            "mlq grant set team:nlp",
            id="setuid capabilities are refused the same way",
        ),
        pytest.param(
            "volumes: [{source: /, target: /host, readonly: true}]\n",
            "volumes[0].source: / is outside the volume paths granted to team nlp",
            "--volume-paths /",
            id="a volume of the host's root is outside the granted paths",
        ),
        pytest.param(
            "volumes: [{source: /etc, target: /x}]\n",
            "volumes[0].source: /etc is outside the volume paths granted",
            "--volume-paths /etc",
            id="a volume of /etc is outside the granted paths",
        ),
        pytest.param(
            "devices: [/dev/kvm]\n",
            "devices[0]: /dev/kvm is not granted to team nlp",
            "--devices /dev/kvm",
            id="a device node nobody granted is refused",
        ),
    ],
)
def test_a_request_beyond_the_grants_is_refused_at_submit(daemon, unix_users, extra, field, wanted):
    r = submit(daemon, JOB + extra, user=unix_users["alice"])
    assert r.code == 3, r.err
    assert field in r.err and wanted in r.err
    assert daemon.rows("jobs") == 0


@pytest.mark.parametrize(
    "source",
    ["/proc", "/proc/1", "/sys/fs/cgroup", "/dev", "{state}", "{state}/runs", "{socket_dir}"],
)
def test_mlqs_own_dirs_and_the_kernels_are_never_mounted_whoever_asks(daemon, source):
    source = source.format(state=daemon.state_dir, socket_dir=daemon.socket.parent)
    r = submit(daemon, JOB + f"volumes: [{{source: {source}, target: /x}}]\n")  # as root
    assert r.code == 3, r.err
    assert "which no job may mount" in r.err


def test_an_admin_grant_gives_one_team_what_another_team_is_refused(daemon, unix_users):
    carol, alice, dave = unix_users["carol"], unix_users["alice"], unix_users["dave"]
    cv_job = JOB.replace("team: nlp", "team: cv") + "security: {capabilities: [CAP_NET_RAW]}\n"
    assert submit(daemon, cv_job, user=carol).code == 3
    # only an mlq admin grants; a team admin may not
    r = daemon.cli("grant", "set", "team:cv", "--capabilities", "CAP_NET_RAW", user=carol)
    assert r.code == 3 and "may not grant" in r.err
    r = daemon.cli("grant", "set", "team:cv", "--capabilities", "CAP_NET_RAW", user=dave)
    assert r.code == 0, r.err
    assert submit(daemon, cv_job, user=carol).code == 0
    nlp_job = JOB + "security: {capabilities: [CAP_NET_RAW]}\n"
    r = submit(daemon, nlp_job, user=alice)
    assert r.code == 3 and "CAP_NET_RAW is not granted to team nlp" in r.err
    listed = daemon.cli("grant", "list", "--json").json()["grants"]
    assert {
        "subject": "team:cv",
        "capabilities": ["CAP_NET_RAW"],
        "volume_paths": [],
        "devices": [],
        "networks": [],
    } in listed
    # taken back: refused again
    assert daemon.cli("grant", "delete", "team:cv", user=dave).code == 0
    assert submit(daemon, cv_job, user=carol).code == 3


def test_a_grant_names_a_real_capability_team_or_class(daemon):
    r = daemon.cli("grant", "set", "team:nosuch", "--capabilities", "CAP_NET_RAW")
    assert r.code == 1 and 'team "nosuch" does not exist' in r.err
    r = daemon.cli("grant", "set", "team:cv", "--capabilities", "CAP_ALL_OF_THEM")
    assert r.code == 2 and "capabilities[0]" in r.err
    r = daemon.cli("grant", "set", "everyone", "--devices", "/dev/fuse")
    assert r.code == 2 and "is not a grant subject" in r.err


def test_capabilities_inside_a_user_namespace_need_no_grant(daemon, unix_users):
    text = JOB + "security: {user_namespace: true, capabilities: [CAP_SETUID, CAP_DAC_OVERRIDE]}\n"
    r = submit(daemon, text, user=unix_users["alice"])
    assert r.code == 0, r.err


def test_a_volume_in_another_users_0700_home_is_refused_at_submit(daemon, unix_users):
    home = Path(tempfile.mkdtemp(prefix="mlq-home-", dir="/home"))
    try:
        (home / "data").mkdir()
        bob = unix_users["bob"]
        os.chown(home, bob.pw_uid, bob.pw_gid)
        home.chmod(0o700)
        r = submit(
            daemon,
            JOB + f"volumes: [{{source: {home}/data, target: /data}}]\n",
            user=unix_users["alice"],
        )
        assert r.code == 2, r.err
        assert f"volumes[0].source: {home}/data is not reachable by uid" in r.err
        # bob reaches it, so bob may mount it
        bob_job = JOB + f"volumes: [{{source: {home}/data, target: /data}}]\n"
        assert submit(daemon, bob_job, user=bob).code == 0
    finally:
        shutil.rmtree(home, ignore_errors=True)


def test_another_user_sees_no_env_value_or_command_argument(daemon, unix_users):
    alice, bob, carol, dave = (unix_users[k] for k in ("alice", "bob", "carol", "dave"))
    r = submit(daemon, JOB, user=alice)
    assert r.code == 0, r.err
    job_id = str(r.json()["jobs"][0]["id"])
    # a member of the same team, neither the owner nor an admin
    shown = daemon.cli("show", job_id, "--json", user=bob)
    assert shown.code == 0
    text = shown.out
    assert "hunter2" not in text and "s3cret-arg" not in text and "echo $TOKEN" not in text
    spec = shown.json()["spec"]
    assert spec["env"] == {"TOKEN": "<hidden>"} and spec["command"] == ["/bin/sh", "<hidden>"]
    assert shown.json()["redacted"] is True
    assert "hunter2" not in daemon.cli("show", job_id, user=bob).out
    # the owner, the team's admin and an mlq admin see everything
    for who in (alice, carol, dave):
        seen = daemon.cli("show", job_id, "--json", user=who).json()
        assert seen["spec"]["env"] == {"TOKEN": "hunter2"} and seen["redacted"] is False
        assert seen["spec"]["command"][-1] == "s3cret-arg"


def test_the_state_dir_is_not_readable_by_other_users(daemon, unix_users):
    assert submit(daemon, JOB, user=unix_users["alice"]).code == 0
    sd = daemon.state_dir
    assert stat.S_IMODE(sd.stat().st_mode) == 0o700
    files = ["mlq.db", "daemon.lock"] if daemon.backend == "sqlite" else ["daemon.lock"]
    for name in files:
        assert stat.S_IMODE((sd / name).stat().st_mode) & 0o077 == 0, name
    r = daemon.cli("queue", user=unix_users["bob"])  # the API still serves them
    assert r.code == 0
    import subprocess

    peek = subprocess.run(
        ["cat", str(sd / files[0])], user=unix_users["bob"].pw_uid, capture_output=True
    )
    assert peek.returncode != 0 and b"Permission denied" in peek.stderr
