"""A cluster on one machine, for real: PostgreSQL, control planes, agents in netns.

``ClusterLab`` makes the cluster CA and certificates with ``mlq cluster``, starts
``mlq server --listen`` processes in the root network namespace on the lab bridge's
address (one port each: a standby does not listen until it is active) and ``mlq
agent`` processes, each inside its own network namespace (``netlab.py``), with its
own state dir, socket, cgroup parent and GPUs (a fake NVML inventory of its own). The CLI runs as the test users
against any node's agent socket (users reach the cluster through their node) or a
control plane's own socket (admins on the control-plane host).
"""

from __future__ import annotations

import contextlib
import json
import os
import pwd
import signal
import subprocess
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from daemon_helpers import GROUPS, MLQ, USERS, Result
from netlab import LabNode, NetLab
from sqlalchemy import create_engine, text
from sqlalchemy.pool import NullPool

LEASE_S = 4.0
HEARTBEAT_S = 0.5
BASE_PORT = 7811

CLUSTER_YAML = f"""
admin_group: {GROUPS["admins"]}
teams:
  - name: nlp
    members: [{USERS["bob"]}, "@{GROUPS["nlp"]}"]
    admins: [{USERS["carol"]}]
    guarantee: {{gpu: 4}}
    limit: {{gpu: 8}}
  - name: cv
    members: [{USERS["carol"]}, {USERS["alice"]}]
    guarantee: {{gpu: 2}}
    limit: {{gpu: 6}}
  - name: ops
    members: [{USERS["carol"]}]
"""


def remove_agent_cgroups(names: list[str]) -> None:
    """Kill and remove what each agent left in its cgroup parent (``mlq-<name>``, on
    v2 and under every v1 controller), then the parent: killed supervisors leave
    their runs' cgroups behind."""
    import glob

    from mlq.executor.cgroups import kill_and_remove

    for name in names:
        for base in glob.glob(f"/sys/fs/cgroup/mlq-{name}") + glob.glob(
            f"/sys/fs/cgroup/*/mlq-{name}"
        ):
            if os.path.isdir(base):
                for child in os.listdir(base):
                    if os.path.isdir(os.path.join(base, child)):
                        kill_and_remove(os.path.join(base, child))
                with contextlib.suppress(OSError):
                    os.rmdir(base)


def live_runs(nodes: dict[str, Any]) -> dict[str, set[int]]:
    """Each node's jobs with a live process, from its agent's cgroups (mlq-<node>/<run>)."""
    import glob

    out: dict[str, set[int]] = {}
    for name in nodes:
        found: set[int] = set()
        pattern = [f"/sys/fs/cgroup/mlq-{name}/*/cgroup.procs",
                   f"/sys/fs/cgroup/memory/mlq-{name}/*/cgroup.procs"]  # fmt: skip
        for f in (p for pat in pattern for p in glob.glob(pat)):
            try:
                if Path(f).read_text().strip():
                    found.add(int(Path(f).parent.name.split(".", 1)[0]))
            except (OSError, ValueError):
                pass
        out[name] = found
    return out


def node_yaml(name: str, cpus: int = 8) -> str:
    """The agent's node config: its GPUs are discovered (through the fake NVML)."""
    return f"node:\n  name: {name}\n  cpus: {cpus}\n  memory: 16Gi\n"


def fake_inventory(name: str, gpus: int) -> str:
    """A fake NVML inventory (docs/gpus.md): ``gpus`` whole H100s, UUIDs seeded by name."""
    rows = "".join(f"  - {{index: {i}, name: NVIDIA H100 80GB HBM3}}\n" for i in range(gpus))
    return f'node: {name}\ndriver_version: "550.90.07"\ngpus:\n{rows}'


@dataclass
class Proc:
    name: str
    popen: subprocess.Popen[Any]
    log: Path

    def alive(self) -> bool:
        return self.popen.poll() is None

    def kill9(self) -> None:
        with contextlib.suppress(ProcessLookupError):
            os.kill(self.popen.pid, signal.SIGKILL)
        self.popen.wait(timeout=10)

    def stop(self) -> None:
        if self.alive():
            self.popen.send_signal(signal.SIGTERM)
            try:
                self.popen.wait(timeout=20)
            except subprocess.TimeoutExpired:
                self.kill9()


@dataclass
class ClusterLab:
    lab: NetLab
    database_url: str
    home: Path = field(default_factory=lambda: Path(tempfile.mkdtemp(prefix="mlq-cluster-")))
    servers: dict[int, Proc] = field(default_factory=dict)
    agents: dict[str, Proc] = field(default_factory=dict)
    nodes: dict[str, LabNode] = field(default_factory=dict)
    agent_env: dict[str, dict[str, str]] = field(default_factory=dict)  # the fake NVML's
    lease_s: float = LEASE_S
    heartbeat_s: float = HEARTBEAT_S

    def __post_init__(self) -> None:
        self.home.chmod(0o755)
        (self.home / "run").mkdir(mode=0o755)
        self.pki = self.home / "pki"
        (self.home / "cluster.yaml").write_text(CLUSTER_YAML)
        self.mlq("cluster", "init", "--pki", str(self.pki), "--address", self.lab.host_address)

    # -- processes -----------------------------------------------------------------

    def mlq(self, *args: str) -> str:
        p = subprocess.run([MLQ, *args], capture_output=True, text=True, timeout=60)
        if p.returncode != 0:
            raise RuntimeError(f"mlq {' '.join(args)}: {p.stderr.strip()}")
        return p.stdout

    def url(self, i: int) -> str:
        return f"https://{self.lab.host_address}:{BASE_PORT + i}"

    def cp_socket(self, i: int) -> Path:
        return self.home / "run" / f"cp{i}.sock"

    def start_server(self, i: int, wait: bool = True) -> Proc:
        log = self.home / f"cp{i}.log"
        cmd = [
            MLQ, "server", "--listen", f"{self.lab.host_address}:{BASE_PORT + i}",
            "--pki", str(self.pki), "--state-dir", str(self.home / f"cp{i}"),
            "--socket", str(self.cp_socket(i)), "--database-url", self.database_url,
            "--config", str(self.home / "cluster.yaml"), "--lease", str(self.lease_s),
            "--heartbeat", str(self.heartbeat_s), "--log-level", "info",
        ]  # fmt: skip
        with open(log, "ab") as out:
            p = subprocess.Popen(cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True)
        proc = self.servers[i] = Proc(f"cp{i}", p, log)
        if wait:
            self.wait_active(i)
        return proc

    def wait_active(self, i: int, timeout: float = 30) -> float:
        """Until control plane ``i`` answers on its own socket; returns the seconds."""
        t0 = time.monotonic()
        self.wait(
            lambda: self.cli("whoami", socket=self.cp_socket(i)).code == 0,
            timeout,
            f"control plane {i} never became active: {self.tail(self.servers[i].log)}",
            alive=self.servers[i],
        )
        return time.monotonic() - t0

    def add_node(self, name: str, gpus: int = 4, cpus: int = 8) -> LabNode:
        node = self.nodes[name] = self.lab.add_node(name)
        d = self.home / f"pki-{name}"
        self.mlq("cluster", "add-node", name, "--pki", str(self.pki), "--out", str(d))
        (self.home / f"{name}.yaml").write_text(node_yaml(name, cpus))
        inv = self.home / f"{name}-gpus.yaml"
        inv.write_text(fake_inventory(name, gpus))
        from mlq.executor import fakenvml

        files = fakenvml.materialize(fakenvml.load_inventory(inv), self.home / f"{name}-fake", inv)
        self.agent_env[name] = files.env()
        return node

    def node_socket(self, name: str) -> Path:
        return self.home / "run" / f"{name}.sock"

    def start_agent(self, name: str, wait: bool = True) -> Proc:
        node = self.nodes[name]
        log = self.home / f"{name}.log"
        cmd = [MLQ, "agent", "--name", name]
        for i in sorted(self.servers) or [0, 1]:
            cmd += ["--server", self.url(i)]
        cmd += [
            "--pki", str(self.home / f"pki-{name}"), "--state-dir", str(self.home / name),
            "--socket", str(self.node_socket(name)), "--config", str(self.home / f"{name}.yaml"),
            "--log-level", "info",
        ]  # fmt: skip
        env = dict(os.environ) | self.agent_env.get(name, {})
        with open(log, "ab") as out:
            p = node.popen(
                cmd, stdout=out, stderr=subprocess.STDOUT, start_new_session=True, env=env
            )
        proc = self.agents[name] = Proc(name, p, log)
        if wait:
            self.wait(
                lambda: self.node_state(name) == "up",
                20,
                f"node {name} never came up: {self.tail(log)}",
                alive=proc,
            )
        return proc

    def close(self) -> None:
        for p in list(self.agents.values()) + list(self.servers.values()):
            p.stop()
        # the runs' supervisors outlive their agents on purpose: end them here
        for name in self.nodes:
            self._kill_runs(self.home / name)

    def _kill_runs(self, state_dir: Path) -> None:
        runs = state_dir / "runs"
        if not runs.is_dir():
            return
        for d in runs.iterdir():
            with contextlib.suppress(Exception):
                info = json.loads((d / "supervisor.json").read_text())
                os.killpg(int(info["pid"]), signal.SIGKILL)
        remove_agent_cgroups(list(self.nodes))

    # -- the CLI and the database --------------------------------------------------

    def cli(
        self,
        *args: str,
        user: pwd.struct_passwd | None = None,
        node: str | None = None,
        socket: Path | None = None,
        timeout: float = 60,
    ) -> Result:
        sock = socket or (self.node_socket(node) if node else self.cp_socket(self.active()))
        kwargs: dict[str, Any] = {}
        if user is not None:
            kwargs = {
                "user": user.pw_uid,
                "group": user.pw_gid,
                "extra_groups": os.getgrouplist(user.pw_name, user.pw_gid),
            }
        env = dict(os.environ) | {"MLQ_SOCKET": str(sock), "HOME": "/tmp"}
        p = subprocess.run(
            [MLQ, *args], env=env, capture_output=True, text=True, timeout=timeout,
            cwd=str(self.home), **kwargs,
        )  # fmt: skip
        return Result(p.returncode, p.stdout, p.stderr)

    def active(self) -> int:
        for i, p in sorted(self.servers.items()):
            if p.alive() and self.cp_socket(i).exists():
                with contextlib.suppress(Exception):
                    if self.cli("whoami", socket=self.cp_socket(i), timeout=5).code == 0:
                        return i
        return min(self.servers)

    def sql(self, statement: str, **params: object) -> list[tuple[Any, ...]]:
        engine = create_engine(self.database_url, poolclass=NullPool)
        try:
            with engine.begin() as conn:
                result = conn.execute(text(statement), params)
                return [tuple(r) for r in result] if result.returns_rows else []
        finally:
            engine.dispose()

    def node_state(self, name: str) -> str | None:
        rows = self.sql("SELECT state FROM nodes WHERE name = :n", n=name)
        return rows[0][0] if rows else None

    def job(self, job_id: int) -> dict[str, Any]:
        cols = ["id", "state", "node", "restart_count", "epoch", "reason"]
        rows = self.sql(f"SELECT {', '.join(cols)} FROM jobs WHERE id = :i", i=job_id)
        return dict(zip(cols, rows[0], strict=True))

    def events(self, job_id: int) -> list[tuple[str, str]]:
        return [
            (r[0], r[1])
            for r in self.sql(
                "SELECT state, reason FROM job_events WHERE job_id = :i ORDER BY id", i=job_id
            )
        ]

    def job_file(self, name: str, text_: str) -> Path:
        path = self.home / name
        path.write_text(text_)
        path.chmod(0o644)
        return path

    @staticmethod
    def tail(path: Path, n: int = 3000) -> str:
        try:
            return path.read_text(errors="replace")[-n:]
        except OSError:
            return "(no log)"

    def wait(
        self,
        ok: Callable[[], bool],
        timeout: float,
        message: str,
        alive: Proc | None = None,
    ) -> None:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if ok():
                return
            if alive is not None and not alive.alive():
                raise AssertionError(f"{alive.name} exited: {self.tail(alive.log)}")
            time.sleep(0.05)
        raise AssertionError(message)
