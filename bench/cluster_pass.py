"""One scheduling pass of a control plane at scale: 1,000 nodes, 10,000 pending jobs.

Run: .venv/bin/python bench/cluster_pass.py [NODES] [PENDING] [--sqlite]
The control plane's loop in process, on PostgreSQL (a temporary cluster, as the
tests make), with NODES agents' nodes of 8 GPUs each, every GPU held by a running
1-GPU job, and PENDING jobs waiting: the steady state of a busy cluster, where every
pass looks at every pending job and finds no room. Prints the pass's wall and CPU
time (median of 10 passes), and the same for the single machine's daemon (one node,
the same queue on SQLite) beside it.
"""

from __future__ import annotations

import json
import statistics
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))

import pg_helpers  # noqa: E402
from mlq.executor.gpus import from_declared  # noqa: E402
from mlq.scheduler.clock import SystemClock  # noqa: E402
from mlq.scheduler.cluster import parse_cluster  # noqa: E402
from mlq.scheduler.daemon.auth import Caller  # noqa: E402
from mlq.scheduler.daemon.carving import Carver  # noqa: E402
from mlq.scheduler.daemon.fleet import NoCarve  # noqa: E402
from mlq.scheduler.daemon.loop import Loop  # noqa: E402
from mlq.scheduler.daemon.nodeset import Slot  # noqa: E402
from mlq.scheduler.daemon.peer import Peer  # noqa: E402
from mlq.scheduler.daemon.remote import RemoteNode  # noqa: E402
from mlq.scheduler.daemon.submit import job_rows, prepare  # noqa: E402
from mlq.scheduler.daemon.view import NodeView  # noqa: E402
from mlq.scheduler.store import Store, sqlite_url  # noqa: E402

GPUS = 8
CLUSTER = {
    "teams": [
        # no guarantees: nobody borrows, so no batch job may preempt another; the pass
        # finds no room for any pending job, as on a busy day
        {"name": "nlp", "members": ["alice"]},
        {"name": "cv", "members": ["alice"]},
    ],
}


def declared(name: str):
    return from_declared([_Decl(i) for i in range(GPUS)], name)


class _Decl:
    def __init__(self, i: int) -> None:
        self.index, self.model, self.mig, self.slices, self.name, self.uuid = (
            i, "H100-80GB", None, [], None, None,
        )  # fmt: skip


def fill(store: Store, nodes: list[str], pending: int) -> None:
    """Every GPU of every node held by a running job; ``pending`` jobs waiting."""
    store.seed(parse_cluster(CLUSTER))
    caller = Caller(Peer(1, 1001, 1001, "alice", ()), is_admin=True)
    spec = {"name": "j", "team": "nlp", "command": ["true"], "resources": {"gpus": 1}}
    running = len(nodes) * GPUS
    for team, n in (("nlp", running), ("cv", pending)):
        resolved, indices = prepare(
            store, caller, spec | {"team": team}, None, f"0-{n - 1}", [], (), []
        )
        store.add_jobs(job_rows(store, caller, resolved, indices))
    now = time.time()
    t = store.engine
    from sqlalchemy import text

    with t.begin() as conn:
        ids = [r[0] for r in conn.execute(text("SELECT id FROM jobs WHERE team = 'nlp'"))]
        rows = [
            {
                "id": i, "node": nodes[k // GPUS], "dev": json.dumps({"gpus": [k % GPUS], "mig": []}),
                "rd": f"{nodes[k // GPUS]}:{i}.0", "now": now, "ep": k + 1,
            }
            for k, i in enumerate(ids)
        ]  # fmt: skip
        conn.execute(
            text(
                "UPDATE jobs SET state = 'RUNNING', node = :node, devices = :dev, run_dir = :rd,"
                " started_at = :now, epoch = :ep, launch = '{}' WHERE id = :id"
            ),
            rows,
        )


def loop_for(store: Store, nodes: list[str], remote: bool) -> Loop:
    cluster = parse_cluster(CLUSTER)
    if not remote:
        gpus = declared(nodes[0])
        view = NodeView(nodes[0], 64000, 512 * 2**30, gpus, can_carve=False)
        return Loop(
            store, RemoteNode(nodes[0], gpus, lambda: None), SystemClock(), cluster, view, "/x"
        )
    loop = Loop(store, None, SystemClock(), cluster, None, "/x")
    for name in nodes:
        gpus = declared(name)
        ex = RemoteNode(name, gpus, lambda: None)
        view = NodeView(name, 64000, 512 * 2**30, gpus, can_carve=False)
        carver = Carver(view, store, NoCarve(), ex)
        loop.nodes.add(Slot(view, ex, carver, f"/var/lib/mlq-{name}", (), remote=True))
    return loop


def measure(loop: Loop, passes: int = 10) -> tuple[float, float, int]:
    loop.run_pass()  # the first pass parses every spec once (kept between passes)
    walls, cpus = [], []
    for _ in range(passes):
        c0, t0 = time.thread_time(), time.perf_counter()
        d = loop.run_pass()
        walls.append((time.perf_counter() - t0) * 1000)
        cpus.append((time.thread_time() - c0) * 1000)
        assert not d.starts, "the cluster should be full"
    return statistics.median(walls), statistics.median(cpus), len(d.reasons)


def main(n_nodes: int = 1000, pending: int = 10_000, sqlite: bool = False) -> None:
    nodes = [f"n{i:04d}" for i in range(n_nodes)]
    if sqlite:
        tmp = tempfile.mkdtemp(prefix="mlq-bench-pass-")
        store = Store(sqlite_url(tmp))
        fill(store, nodes, pending)
        wall, cpu, n = measure(loop_for(store, nodes, remote=True))
        print(f"{n_nodes} nodes, {n} pending, SQLite: a pass {wall:.1f} ms ({cpu:.1f} ms CPU)")
        return
    pg = pg_helpers.start_cluster()
    try:
        url = pg.database()
        store = Store(url)
        fill(store, nodes, pending)
        wall, cpu, n = measure(loop_for(store, nodes, remote=True))
        print(f"control plane, PostgreSQL: {n_nodes} nodes x {GPUS} GPUs all held, "
              f"{n} pending: a pass {wall:.1f} ms ({cpu:.1f} ms CPU), median of 10")  # fmt: skip
        store.close()
        url1 = pg.database()
        store1 = Store(url1)
        fill(store1, nodes[:1], pending)
        wall1, cpu1, n1 = measure(loop_for(store1, nodes[:1], remote=False))
        print(f"one node (today's daemon), PostgreSQL: {n1} pending: a pass {wall1:.1f} ms "
              f"({cpu1:.1f} ms CPU); cluster/one node = {wall / wall1:.2f}x")  # fmt: skip
        store1.close()
    finally:
        pg_helpers.remove_cluster(pg)


if __name__ == "__main__":
    args = [a for a in sys.argv[1:] if not a.startswith("--")]
    main(*(int(a) for a in args), sqlite="--sqlite" in sys.argv)  # type: ignore[arg-type]
