"""A real cluster on this machine: PostgreSQL, two control planes, N agent processes.

Run: .venv/bin/python bench/cluster.py [AGENTS] [--lease S]
Every agent is a real ``mlq agent`` process with 8 declared GPUs (in the root network
namespace, on 127.0.0.1: several agents per namespace, no bridge jobs), its own state
dir, socket and cgroup parent. Prints:

(a) submissions per second over one connection, through a node's agent (the user's
    path: vouched and forwarded over mutual TLS) and on the control plane's own
    socket; then from CLIENTS users at once, each on its own node's socket (how a
    cluster's users submit: concurrent submissions share a commit), beside Slurm's
    published 500 jobs/s; submit-to-running latency (p50, p99) of jobs submitted one
    after another through agents;
(b) the control plane's takeover time after ``kill -9`` of the active one (until the
    standby answers, and until a job submitted then runs);
(c) node failure: ``kill -9`` of an agent with a job running, to that job NODE_FAIL
    (detection, bounded by the lease) and to it running again on another node.

One scheduling pass at 1,000 nodes and 10,000 pending jobs: bench/cluster_pass.py.
"""

from __future__ import annotations

import contextlib
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests" / "cluster"))

import pg_helpers  # noqa: E402
from _common import MLQ  # noqa: E402
from clusterlab import remove_agent_cgroups  # noqa: E402
from mlq.cli.client import Client  # noqa: E402
from sqlalchemy import create_engine, text  # noqa: E402
from sqlalchemy.pool import NullPool  # noqa: E402

SLURM_PUBLISHED = 500.0
CLUSTER = """
teams:
  - {name: nlp, members: [root]}
"""


def node_yaml(name: str) -> str:
    gpus = ", ".join(f"{{index: {i}, model: H100-80GB}}" for i in range(8))
    return (
        f"node: {{name: {name}, cpus: 64, memory: 512Gi, gpus: declared, "
        f"declared_gpus: [{gpus}]}}\n"
    )


def spec(cmd: str, gpus: int = 0) -> dict:
    return {
        "name": "b", "team": "nlp", "kind": "batch", "command": ["/bin/sh", "-c", cmd],
        "resources": {"cpus": "100m", "memory": "32Mi", "gpus": gpus},
        "network": "none",
    }  # fmt: skip


class Bench:
    def __init__(self, agents: int, lease: float, heartbeat: float) -> None:
        self.home = Path(tempfile.mkdtemp(prefix="mlq-bench-cluster-"))
        self.n, self.lease, self.heartbeat = agents, lease, heartbeat
        self.pg = pg_helpers.start_cluster()
        self.url = self.pg.database()
        self.procs: dict[str, subprocess.Popen] = {}
        (self.home / "cluster.yaml").write_text(CLUSTER)
        subprocess.run(
            [MLQ, "cluster", "init", "--pki", str(self.home / "pki"), "--address", "127.0.0.1"],
            check=True, capture_output=True,
        )  # fmt: skip

    def server(self, i: int) -> None:
        cmd = [
            MLQ, "server", "--listen", f"127.0.0.1:{7900 + i}", "--pki", str(self.home / "pki"),
            "--state-dir", str(self.home / f"cp{i}"), "--socket", str(self.home / f"cp{i}.sock"),
            "--database-url", self.url, "--config", str(self.home / "cluster.yaml"),
            "--lease", str(self.lease), "--heartbeat", str(self.heartbeat),
        ]  # fmt: skip
        for k in range(self.n):  # the bench submits as root through its agents
            cmd += ["--admin-node", f"n{k:03d}"]
        log = open(self.home / f"cp{i}.log", "ab")  # noqa: SIM115
        self.procs[f"cp{i}"] = subprocess.Popen(cmd, stdout=log, stderr=log)

    def agent(self, name: str) -> None:
        pki = self.home / f"pki-{name}"
        if not pki.exists():
            subprocess.run(
                [MLQ, "cluster", "add-node", name, "--pki", str(self.home / "pki"),
                 "--out", str(pki)], check=True, capture_output=True,
            )  # fmt: skip
            (self.home / f"{name}.yaml").write_text(node_yaml(name))
        cmd = [
            MLQ, "agent", "--name", name, "--server", "https://127.0.0.1:7900",
            "--server", "https://127.0.0.1:7901", "--pki", str(pki),
            "--state-dir", str(self.home / name), "--socket", str(self.home / f"{name}.sock"),
            "--config", str(self.home / f"{name}.yaml"), "--log-level", "warning",
        ]  # fmt: skip
        log = open(self.home / f"{name}.log", "ab")  # noqa: SIM115
        self.procs[name] = subprocess.Popen(cmd, stdout=log, stderr=log)

    def wait_socket(self, path: Path, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            try:
                Client(str(path)).get("/v1/whoami")
                return
            except Exception:
                time.sleep(0.05)
        raise RuntimeError(f"{path} never answered")

    def sql(self, q: str, **kw: object) -> list[tuple]:
        e = create_engine(self.url, poolclass=NullPool)
        try:
            with e.begin() as conn:
                return [tuple(r) for r in conn.execute(text(q), kw)]
        finally:
            e.dispose()

    def wait_state(self, job: int, state: str, timeout: float = 60) -> float:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.sql("SELECT state FROM jobs WHERE id = :i", i=job)
            if rows and rows[0][0] == state:
                return time.monotonic()
            time.sleep(0.01)
        raise RuntimeError(f"job {job} never became {state}")

    def wait_settled(self, timeout: float = 300) -> None:
        deadline = time.monotonic() + timeout
        while self.sql("SELECT count(*) FROM jobs WHERE state IN ('PENDING', 'STARTING')")[0][0]:
            if time.monotonic() > deadline:
                raise RuntimeError("the queue never settled")
            time.sleep(0.2)

    def wait_restarted(self, job: int, state: str, timeout: float = 60) -> float:
        """When ``job``, restarted at least once, is in ``state``."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            rows = self.sql("SELECT state, restart_count FROM jobs WHERE id = :i", i=job)
            if rows and rows[0][1] > 0 and rows[0][0] in state.split("|"):
                return time.monotonic()
            time.sleep(0.01)
        raise RuntimeError(f"job {job} was never restarted into {state}")

    def close(self) -> None:
        for p in self.procs.values():
            if p.poll() is None:
                p.send_signal(signal.SIGTERM)
        for p in self.procs.values():
            try:
                p.wait(timeout=20)
            except subprocess.TimeoutExpired:
                p.kill()
        for d in self.home.glob("n*/runs/*/supervisor.json"):
            try:
                import json

                os.killpg(int(json.loads(d.read_text())["pid"]), signal.SIGKILL)
            except Exception:
                pass
        remove_agent_cgroups([f"n{k:03d}" for k in range(self.n)])
        pg_helpers.remove_cluster(self.pg)


def concurrent_rate(sockets: list[str], each: int, job: dict, blocker: int) -> float:
    """Jobs per second when every socket's user submits ``each`` jobs at once."""
    go = threading.Barrier(len(sockets) + 1)
    errors: list[Exception] = []

    def user(path: str) -> None:
        try:
            client = Client(path)
            client.get("/v1/whoami")  # connected before the clock starts
            go.wait()
            for _ in range(each):
                client.post("/v1/jobs", {"spec": job, "after": [blocker]})
        except Exception as exc:
            errors.append(exc)
            go.abort()  # the others (and the clock) do not wait for this one

    threads = [threading.Thread(target=user, args=(p,)) for p in sockets]
    for t in threads:
        t.start()
    with contextlib.suppress(threading.BrokenBarrierError):
        go.wait()
    t0 = time.perf_counter()
    for t in threads:
        t.join()
    if errors:
        raise RuntimeError(f"{len(errors)} users failed: {errors[0]}")
    return len(sockets) * each / (time.perf_counter() - t0)


def pct(xs: list[float], p: float) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(p / 100 * len(xs)))]


def main(agents: int = 100, lease: float = 10.0) -> None:
    b = Bench(agents, lease, heartbeat=min(2.0, lease / 5))
    try:
        b.server(0)
        b.wait_socket(b.home / "cp0.sock")
        b.server(1)  # the standby: waits for the lock
        t0 = time.monotonic()
        names = [f"n{i:03d}" for i in range(agents)]
        for name in names:
            b.agent(name)
        for name in names:
            b.wait_socket(b.home / f"{name}.sock", timeout=300)
        deadline = time.monotonic() + 300
        while time.monotonic() < deadline:
            up = b.sql("SELECT count(*) FROM nodes WHERE state = 'up'")[0][0]
            if up == agents:
                break
            time.sleep(0.2)
        print(f"{agents} agents up in {time.monotonic() - t0:.1f}s (lease {lease:g}s, "
              f"heartbeat {b.heartbeat:g}s)")  # fmt: skip

        # (a) submissions: jobs held back by a dependency on a long job, so the figure
        # is the API, the store and the passes, not launches
        via_agent = Client(str(b.home / f"{names[0]}.sock"))
        direct = Client(str(b.home / "cp0.sock"))
        blocker = via_agent.post("/v1/jobs", {"spec": spec("sleep 3600")})["jobs"][0]["id"]
        n = 1000
        for label, client in (
            ("through a node's agent", via_agent),
            ("on the control plane's socket", direct),
        ):
            for _ in range(20):
                client.post("/v1/jobs", {"spec": spec("true"), "after": [blocker]})
            t = time.perf_counter()
            for _ in range(n):
                client.post("/v1/jobs", {"spec": spec("true"), "after": [blocker]})
            rate = n / (time.perf_counter() - t)
            print(f"(a) {n} submissions over one connection {label}: {rate:,.0f} jobs/s "
                  f"= {rate / SLURM_PUBLISHED:.1f}x Slurm's published {SLURM_PUBLISHED:.0f}")  # fmt: skip
        for clients in (16, 64):
            rate = concurrent_rate(
                [str(b.home / f"{names[i % agents]}.sock") for i in range(clients)],
                2000 // clients, spec("true"), blocker,
            )  # fmt: skip
            print(f"(a) {clients} users at once, each through its node's agent: {rate:,.0f} jobs/s "
                  f"= {rate / SLURM_PUBLISHED:.1f}x Slurm's published {SLURM_PUBLISHED:.0f}")  # fmt: skip
        direct.post("/v1/jobs/cancel", {"ids": [blocker]})
        b.wait_settled()  # its dependents end DependencyNeverSatisfied before (a) latency

        lat = []
        for i in range(200):
            client = Client(str(b.home / f"{names[i % agents]}.sock"))
            job = client.post("/v1/jobs", {"spec": spec("sleep 2")})["jobs"][0]["id"]
            sent = time.monotonic()
            lat.append((b.wait_state(job, "RUNNING") - sent) * 1000)
        print(f"(a) submit to RUNNING, 200 jobs one after another through agents: "
              f"p50 {statistics.median(lat):.0f} ms, p99 {pct(lat, 99):.0f} ms")  # fmt: skip

        # (b) takeover
        time.sleep(3)
        t = time.monotonic()
        b.procs["cp0"].kill()
        b.wait_socket(b.home / "cp1.sock")
        answered = time.monotonic() - t
        client = Client(str(b.home / f"{names[1]}.sock"))
        while True:
            try:
                job = client.post("/v1/jobs", {"spec": spec("sleep 30")})["jobs"][0]["id"]
                break
            except Exception:
                time.sleep(0.05)
        ran = b.wait_state(job, "RUNNING") - t
        print(f"(b) kill -9 of the active control plane: the standby answers after "
              f"{answered:.2f}s; a job submitted through an agent then runs {ran:.2f}s after the kill")  # fmt: skip

        # (c) node failure
        node = b.sql("SELECT node FROM jobs WHERE id = :i", i=job)[0][0]
        t = time.monotonic()
        b.procs[node].kill()
        # requeued: its restart count rises (it may be running again by the next poll)
        failed = b.wait_restarted(job, "PENDING|STARTING|RUNNING", timeout=lease * 3) - t
        again = b.wait_restarted(job, "RUNNING", timeout=60) - t
        other = b.sql("SELECT node FROM jobs WHERE id = :i", i=job)[0][0]
        print(f"(c) kill -9 of node {node}'s agent: its job NODE_FAIL and requeued after "
              f"{failed:.2f}s (lease {lease:g}s), running again on {other} after {again:.2f}s")  # fmt: skip
    finally:
        b.close()


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    lease = 10.0
    if "--lease" in sys.argv:
        lease = float(sys.argv[sys.argv.index("--lease") + 1])
        args = [a for a in args if a != sys.argv[sys.argv.index("--lease") + 1]]
    main(int(args[0]) if args else 100, lease)
