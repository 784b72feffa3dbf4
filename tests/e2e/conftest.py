"""Fixtures for end-to-end tests: a real daemon running real jobs through the real
executor (namespaces, cgroups, overlay), with nothing of mlq left after each test."""

from __future__ import annotations

import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "executor"))
from daemon_helpers import ROOT, Daemon  # noqa: E402
from exec_helpers import leftovers  # noqa: E402
from mlq.cli.client import Client  # noqa: E402

TERMINAL = {"COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "PREEMPTED"}


def cluster(
    users: dict, gpus: int | str = 0, cpus: int = 16, extra_teams: str = "", extra: str = ""
) -> str:
    """``gpus``: that many declared H100s, or "discover" for NVML (the fake, in tests);
    ``extra``: more top-level keys of the config."""
    if gpus == "discover":
        source = "gpus: discover"
    else:
        decl = ", ".join(f"{{index: {i}, model: H100-80GB}}" for i in range(int(gpus)))
        source = f"gpus: declared, declared_gpus: [{decl}]"
    members = ", ".join(["root"] + [u.pw_name for u in users.values()])
    return f"""
node: {{name: e2e, cpus: {cpus}, memory: 64Gi, {source}}}
admin_group: mlqt-admins
teams:
  - {{name: nlp, members: [{members}], limit: {{gpu: 8}}}}
  - {{name: search, members: [{members}]}}
  - {{name: cv, members: [{members}]}}
{extra_teams}
grants:
  # the usual data paths, and the checkout: some jobs run mlq itself from it
  - {{to: "*", volume_paths: [/home, /srv, /data, /scratch, /mnt, /tmp, /var/tmp, {ROOT}]}}
{extra}
"""


class E2E(Daemon):
    """A daemon plus helpers to submit jobs and wait for their states."""

    def client(self) -> Client:
        return Client(str(self.socket))

    def submit(self, text: str, *args: str, user=None) -> int:
        path = self.job_file(f"job-{time.monotonic_ns()}.yaml", text)
        r = self.cli("submit", str(path), "--json", *args, user=user)
        assert r.code == 0, r.err
        return r.json()["jobs"][0]["id"]

    def show(self, job_id: int) -> dict:
        return self.client().get(f"/v1/jobs/{job_id}")

    def wait_for(self, job_id: int, states: set[str] | str, timeout: float = 60) -> dict:
        want = {states} if isinstance(states, str) else states
        deadline = time.monotonic() + timeout
        while True:
            job = self.show(job_id)
            if job["state"] in want:
                return job
            if time.monotonic() > deadline:
                raise AssertionError(f"job {job_id} is {job['state']}, not {want}: {job['events']}")
            time.sleep(0.05)

    def log(self, job_id: int, run: int | None = None, stream: str = "stdout") -> str:
        args = ["logs", str(job_id)] + (["--run", str(run)] if run is not None else [])
        r = self.cli(*args, *(["--stderr"] if stream == "stderr" else []))
        assert r.code == 0, r.err
        return r.out


@pytest.fixture
def make_daemon(daemon_home: Path, unix_users) -> Iterator[Callable[..., E2E]]:
    made: list[E2E] = []

    def make(env: dict[str, str] | None = None, **kw) -> E2E:
        config = daemon_home / "cluster.yaml"
        config.write_text(cluster(unix_users, **kw))
        # a long safety-net interval: every start below is driven by events, not by it
        extra = {"MLQ_SCHEDULE_INTERVAL": "600"} | (env or {})
        d = E2E(home=daemon_home, config=config, extra_env=extra)
        d.start()
        made.append(d)
        return d

    yield make
    for d in made:
        # cancel whatever still runs, so every supervisor cleans up its job
        if d.proc is None:
            d.start()
        active = d.client().get("/v1/jobs")["jobs"]
        if active:
            d.client().post("/v1/jobs/cancel", {"ids": [j["id"] for j in active], "now": True})
            for j in active:
                d.wait_for(j["id"], TERMINAL, timeout=30)
        d.stop()
    deadline = time.monotonic() + 10
    while (left := leftovers(str(daemon_home))) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not left, f"mlq left behind: {left}"
