"""The control tests' harness: a loop with its parts (a fake executor, a frozen clock,
a temporary SQLite store), and the few things tests do to it."""

from __future__ import annotations

from pathlib import Path

from fakes import FakeExecutor
from mlq.scheduler.clock import FrozenClock
from mlq.scheduler.cluster import parse_cluster
from mlq.scheduler.daemon.auth import Caller
from mlq.scheduler.daemon.loop import Loop
from mlq.scheduler.daemon.peer import Peer
from mlq.scheduler.daemon.submit import job_rows, prepare
from mlq.scheduler.daemon.view import NodeView
from mlq.scheduler.store import Store, sqlite_url

CLUSTER = {
    "node": {"name": "n1", "cpus": 8, "memory": "32Gi", "gpus": "declared"},
    "teams": [
        {"name": "nlp", "members": ["alice"], "guarantee": {"cpu": 4}, "limit": {"cpu": 8}},
        {"name": "cv", "members": ["bob"]},
    ],
}


class Harness:
    """A loop with its parts, and the few things tests do to it."""

    def __init__(self, tmp: Path, cluster: dict | None = None) -> None:
        self.cluster = parse_cluster(cluster or CLUSTER)
        self.store = Store(sqlite_url(tmp))
        self.store.seed(self.cluster)
        self.clock = FrozenClock()
        self.executor = FakeExecutor()
        node = self.cluster.node
        view = NodeView(node.name, node.cpu_millicores(), node.memory_bytes(), self.executor.gpus)
        self.loop = Loop(self.store, self.executor, self.clock, self.cluster, view, str(tmp))

    def submit(self, user: str = "alice", **spec) -> int:
        uid = {"alice": 1001, "bob": 1002, "root": 0}[user]
        caller = Caller(Peer(1, uid, uid, user, ()), is_admin=user == "root")
        text = {"name": "j", "team": "nlp", "command": ["true"]} | spec
        resolved, indices = prepare(self.store, caller, text, None, None, [])
        rows = job_rows(self.store, caller, resolved, indices)
        for r in rows:
            r["submitted_at"] = self.clock.time()
        self.store.add_jobs(rows)
        return int(rows[0]["id"])

    def job(self, job_id: int):
        return self.store.job(job_id)

    def events(self, job_id: int) -> list[tuple[str, str]]:
        return [(e.state, e.reason) for e in self.store.events(job_id)]

    def run(self, job_id: int, restart: int = 0) -> str:
        return f"{job_id}.{restart}"
