"""Many machines, for real: PostgreSQL, two control planes, and agents each in its
own network namespace on a test bridge (docs/cluster.md). Leases here are 4 s with a
heartbeat every 0.5 s, so a node is down within about 4 s of its last sync."""

from __future__ import annotations

import json
import ssl
import threading
import time
from collections import defaultdict
from pathlib import Path

import pytest
from clusterlab import ClusterLab, live_runs

JOB = """
name: {name}
team: {team}
kind: {kind}
command: [/bin/sh, -c, "{cmd}"]
resources: {{cpus: 500m, memory: 128Mi, gpus: {gpus}}}
preemption: {{grace_period: {grace}}}
"""


def submit(
    c: ClusterLab,
    user,
    node: str,
    name: str,
    team: str,
    gpus: int,
    cmd: str = "sleep 60",
    kind: str = "training",
    grace: int = 5,
) -> int:
    f = c.job_file(f"{name}.yaml", JOB.format(**locals() | {"c": None}))
    r = c.cli("submit", str(f), "--json", user=user, node=node)
    assert r.code == 0, r.err
    return r.json()["jobs"][0]["id"]


def start(c: ClusterLab, nodes=("n1", "n2", "n3"), gpus: int = 4) -> None:
    c.start_server(0)
    for n in nodes:
        c.add_node(n, gpus=gpus)
        c.start_agent(n)


def runs_of(c: ClusterLab, job_id: int) -> list[str]:
    """The node of each run of the job, in order, from its events ("on n2")."""
    return [r.split()[-1] for s, r in c.events(job_id) if s == "STARTING"]


def test_a_job_runs_on_an_agents_node_and_its_output_is_read_from_another(
    cluster: ClusterLab, unix_users
) -> None:
    start(cluster, nodes=("n1", "n2"))
    bob = unix_users["bob"]
    job = submit(cluster, bob, "n1", "hello", "nlp", 1, cmd="echo hello from the cluster")
    cluster.wait(lambda: cluster.job(job)["state"] == "COMPLETED", 30, str(cluster.events(job)))
    out = cluster.cli("logs", str(job), user=bob, node="n2")
    assert out.code == 0, out.err
    assert "hello from the cluster" in out.out
    nodes = cluster.cli("nodes", "--json", user=bob, node="n2").json()["nodes"]
    assert sorted(n["name"] for n in nodes) == ["n1", "n2"]
    assert all(n["state"] == "up" and n["last_heartbeat"] for n in nodes)
    assert all(n["gpu_source"] == "nvml" and len(n["gpus"]) == 4 for n in nodes)
    uuids = {g["uuid"] for n in nodes for g in n["gpus"]}
    assert len(uuids) == 8  # each node its own GPUs


def test_jobs_spread_over_the_nodes_and_team_quotas_hold_across_the_cluster(
    cluster: ClusterLab, unix_users
) -> None:
    """nlp may hold 8 GPUs and cv 6; 12 GPUs on three nodes; 22 GPUs asked. Replayed
    from the events: no moment where a team is past its limit or a node past 4 GPUs."""
    start(cluster)
    bob, alice = unix_users["bob"], unix_users["alice"]
    # every job is queued before any node takes one, so they compete at once however
    # slowly the submissions come (drained nodes offer nothing)
    nodes = ("n1", "n2", "n3")
    for n in nodes:
        assert cluster.cli("node", "drain", n, socket=cluster.cp_socket(0)).code == 0
    asked: dict[int, tuple[str, int]] = {}
    for i in range(8):
        asked[submit(cluster, bob, "n1", f"nlp{i}", "nlp", 2, cmd="sleep 1.5")] = ("nlp", 2)
    for i in range(6):
        asked[submit(cluster, alice, "n2", f"cv{i}", "cv", 1, cmd="sleep 1.5")] = ("cv", 1)
    for n in nodes:
        assert cluster.cli("node", "resume", n, socket=cluster.cp_socket(0)).code == 0
    cluster.wait(
        lambda: all(cluster.job(j)["state"] == "COMPLETED" for j in asked),
        90,
        "not all jobs completed",
    )
    rows = cluster.sql("SELECT job_id, at, state, reason FROM job_events ORDER BY at, id")
    team_use: dict[str, int] = defaultdict(int)
    node_use: dict[str, int] = defaultdict(int)
    holding: dict[int, str] = {}
    used_nodes = set()
    for job_id, _, state, reason in rows:
        team, g = asked[job_id]
        if state == "STARTING":
            node = reason.split()[-1]
            holding[job_id] = node
            used_nodes.add(node)
            team_use[team] += g
            node_use[node] += g
            assert team_use["nlp"] <= 8 and team_use["cv"] <= 6, dict(team_use)
            assert node_use[node] <= 4, dict(node_use)
        elif state in ("COMPLETED", "FAILED") and job_id in holding:
            team_use[team] -= g
            node_use[holding.pop(job_id)] -= g
    assert used_nodes == {"n1", "n2", "n3"}


def test_an_inference_job_preempts_on_the_node_whose_room_frees_soonest(
    cluster: ClusterLab, unix_users
) -> None:
    start(cluster)
    bob, alice, carol = unix_users["bob"], unix_users["alice"], unix_users["carol"]
    slow1 = submit(cluster, bob, "n1", "slow1", "nlp", 4, grace=300, cmd="trap '' TERM; sleep 600")
    slow2 = submit(cluster, bob, "n1", "slow2", "nlp", 4, grace=300, cmd="trap '' TERM; sleep 600")
    quick = submit(cluster, alice, "n2", "quick", "cv", 4, grace=2)
    for j in (slow1, slow2, quick):
        cluster.wait(lambda j=j: cluster.job(j)["state"] == "RUNNING", 30, str(cluster.events(j)))
    quick_node = cluster.job(quick)["node"]
    serve = submit(cluster, carol, "n3", "serve", "ops", 4, kind="inference", cmd="sleep 60")
    cluster.wait(lambda: cluster.job(serve)["state"] == "RUNNING", 30, str(cluster.events(serve)))
    assert cluster.job(serve)["node"] == quick_node
    assert [s for s, _ in cluster.events(quick)][-2:] == ["PREEMPTED", "PENDING"]
    assert cluster.job(slow1)["state"] == cluster.job(slow2)["state"] == "RUNNING"


def test_an_agent_killed_with_jobs_running(cluster: ClusterLab, unix_users) -> None:
    """kill -9 of n1's agent: n1 is down within the lease, its jobs end NODE_FAIL and
    run again elsewhere, each exactly once; nothing of theirs runs on n1 meanwhile;
    n1's agent started again finds nothing of its own and rejoins."""
    start(cluster)
    bob = unix_users["bob"]
    jobs = [submit(cluster, bob, "n1", f"t{i}", "nlp", 2) for i in range(3)]
    once = submit(cluster, bob, "n1", "once", "nlp", 1, kind="inference")  # not requeued
    cluster.wait(
        lambda: all(cluster.job(j)["state"] == "RUNNING" for j in [*jobs, once]), 30, "not all ran"
    )
    victim = cluster.job(jobs[0])["node"]
    on_victim = [j for j in [*jobs, once] if cluster.job(j)["node"] == victim]
    monitor = Monitor(cluster)
    t0 = time.monotonic()
    cluster.agents[victim].kill9()
    cluster.wait(lambda: cluster.node_state(victim) == "down", 15, "the node never went down")
    detected = time.monotonic() - t0
    assert detected < cluster.lease_s + 3
    requeued = [j for j in on_victim if j != once]
    cluster.wait(
        lambda: all(cluster.job(j)["state"] == "RUNNING" for j in requeued), 30, "not re-run"
    )
    for j in requeued:
        states_ = [s for s, _ in cluster.events(j)]
        assert states_.count("NODE_FAIL") == 1 and states_.count("RUNNING") == 2, states_
        first, second = runs_of(cluster, j)
        assert first == victim != second
        assert cluster.job(j)["restart_count"] == 1
    if once in on_victim:
        assert cluster.job(once)["state"] == "NODE_FAIL"
        assert "failed: no heartbeat" in cluster.job(once)["reason"]
    reason = cluster.cli("nodes", "--json", user=bob, node="n2" if victim != "n2" else "n3")
    assert reason.code == 0, reason.err
    down = next(n for n in reason.json()["nodes"] if n["name"] == victim)
    assert down["state"] == "down" and "no heartbeat" in down["reason"]
    cluster.start_agent(victim)  # waits until it is up again
    assert live_runs(cluster.nodes)[victim] == set()
    monitor.stop()
    assert monitor.twice == [], monitor.twice


def test_an_agent_restarted_within_the_lease_re_adopts_its_runs(cluster: ClusterLab, unix_users):
    """The runs' supervisors outlive the agent: a restart before the node could be
    declared down re-adopts them; nothing is requeued, nothing runs twice."""
    start(cluster, nodes=("n1",))
    bob = unix_users["bob"]
    job = submit(cluster, bob, "n1", "long", "nlp", 1, cmd="sleep 4; echo done")
    cluster.wait(lambda: cluster.job(job)["state"] == "RUNNING", 30, str(cluster.events(job)))
    cluster.agents["n1"].kill9()
    cluster.start_agent("n1")
    cluster.wait(lambda: cluster.job(job)["state"] == "COMPLETED", 30, str(cluster.events(job)))
    assert [s for s, _ in cluster.events(job)] == [
        "PENDING", "STARTING", "RUNNING", "COMPLETED"
    ]  # fmt: skip
    assert "re-adopted run" in cluster.agents["n1"].log.read_text()
    assert cluster.cli("logs", str(job), user=bob, node="n1").out.strip() == "done"


def test_a_partitioned_node_never_runs_a_job_that_runs_elsewhere(
    cluster: ClusterLab, unix_users
) -> None:
    start(cluster)
    bob = unix_users["bob"]
    jobs = [submit(cluster, bob, "n1", f"t{i}", "nlp", 2) for i in range(3)]
    cluster.wait(lambda: all(cluster.job(j)["state"] == "RUNNING" for j in jobs), 30, "not run")
    node = cluster.job(jobs[0])["node"]
    mine = [j for j in jobs if cluster.job(j)["node"] == node]
    monitor = Monitor(cluster)
    cluster.nodes[node].cut()
    cluster.wait(lambda: cluster.node_state(node) == "down", 15, "the node never went down")
    cluster.wait(lambda: all(cluster.job(j)["state"] == "RUNNING" for j in mine), 30, "not re-run")
    assert all(runs_of(cluster, j)[-1] != node for j in mine)
    cluster.nodes[node].reconnect()
    cluster.wait(lambda: cluster.node_state(node) == "up", 20, "the node never came back")
    time.sleep(1)
    monitor.stop()
    assert monitor.samples > 20
    assert monitor.twice == [], monitor.twice
    assert live_runs(cluster.nodes)[node] == set()


def test_the_standby_takes_over_when_the_active_control_plane_is_killed(
    cluster: ClusterLab, unix_users
) -> None:
    """kill -9 of the active control plane during a burst of submissions: every
    acknowledged job is there and no run starts twice; prints the takeover time."""
    cluster.start_server(0)
    cluster.start_server(1, wait=False)
    for n in ("n1", "n2", "n3"):
        cluster.add_node(n)
        cluster.start_agent(n)
    bob = unix_users["bob"]
    acked: list[int] = []
    stop = threading.Event()

    def burst(node: str) -> None:
        f = cluster.job_file(f"b-{node}.yaml", JOB.format(
            name="b", team="nlp", kind="batch", cmd="sleep 0.2", gpus=0, grace=5))  # fmt: skip
        while not stop.is_set():
            r = cluster.cli("submit", str(f), "--json", user=bob, node=node)
            if r.code == 0:
                acked.append(r.json()["jobs"][0]["id"])

    threads = [threading.Thread(target=burst, args=(n,)) for n in ("n1", "n2")]
    for t in threads:
        t.start()
    time.sleep(3)
    before = len(acked)
    t0 = time.monotonic()
    cluster.servers[0].kill9()
    cluster.wait_active(1)
    takeover = time.monotonic() - t0
    time.sleep(3)
    stop.set()
    for t in threads:
        t.join()
    print(f"\ntakeover: {takeover:.2f}s; {before} jobs acknowledged before, {len(acked)} in all")
    assert len(acked) > before  # submissions went on through the new leader
    have = {r[0] for r in cluster.sql("SELECT id FROM jobs")}
    assert set(acked) <= have
    cluster.wait(
        lambda: all(cluster.job(j)["state"] == "COMPLETED" for j in acked), 120, "not all ran"
    )
    starts = cluster.sql(
        "SELECT job_id, count(*) FROM job_events WHERE state = 'STARTING' GROUP BY job_id"
    )
    assert all(n == 1 for _, n in starts), [s for s in starts if s[1] != 1]
    assert takeover < 10


def test_the_control_plane_refuses_what_no_node_vouches_for(cluster: ClusterLab, unix_users):
    """Its TCP port: no certificate, no connection; a certificate of another CA, none
    either. Through a node: a user cannot say they are someone else, and root on a
    node is not root of the cluster."""
    start(cluster, nodes=("n1",))
    host, port = cluster.lab.host_address, cluster.url(0).rsplit(":", 1)[1]
    plain = ssl.create_default_context(cafile=str(cluster.pki / "ca.crt"))
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        request_over_tls(plain, host, int(port), "GET", "/v1/jobs")
    other = Path(cluster.home / "other-ca")
    from mlq.scheduler import pki

    pki.init_ca(other)
    pki.issue(other, other, "n1", "node")
    forged = pki.client_context(cluster.pki / "ca.crt", other / "n1.crt", other / "n1.key")
    with pytest.raises((ssl.SSLError, ConnectionError, OSError)):
        request_over_tls(forged, host, int(port), "GET", "/v1/jobs")
    # a user on n1 cannot act as another: the agent puts in who connected
    bob, carol = unix_users["bob"], unix_users["carol"]
    job = submit(cluster, carol, "n1", "carols", "cv", 0)
    code, body = raw_over_unix(
        cluster.node_socket("n1"), "POST", "/v1/jobs/cancel", json.dumps({"ids": [job]}),
        {"X-Mlq-Uid": str(carol.pw_uid), "X-Mlq-Gid": str(carol.pw_gid)}, user=bob,
    )  # fmt: skip
    assert code == 200 and json.loads(body)["results"][0]["ok"] is False, body
    assert "mlqt-bob may not cancel" in body
    r = cluster.cli("quota", "set", "nlp", "--limit", "gpu=100", node="n1")
    assert r.code == 3 and "root on node n1 is not root of the cluster" in r.err, r.err
    f = cluster.job_file("root.yaml", JOB.format(
        name="r", team="nlp", kind="batch", cmd="id", gpus=0, grace=5))  # fmt: skip
    r = cluster.cli("submit", str(f), node="n1")
    assert r.code == 3 and "root on node n1 is not root of the cluster" in r.err, r.err
    assert cluster.cli("whoami", node="n1").code == 0  # reading is anyone's
    # the same from the control plane's own socket: root there is root
    assert cluster.cli("quota", "set", "nlp", "--limit", "gpu=100").code == 0
    assert cluster.cli("whoami", "--json", user=bob, node="n1").json()["user"] == bob.pw_name


# -- helpers -----------------------------------------------------------------------


class Monitor:
    """Samples, every 20 ms, which jobs have live processes on which node; records any
    moment a job has them on two nodes."""

    def __init__(self, c: ClusterLab) -> None:
        self.c = c
        self.twice: list[tuple[int, list[str]]] = []
        self.samples = 0
        self._stop = threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)
        self._t.start()

    def _run(self) -> None:
        while not self._stop.is_set():
            where: dict[int, list[str]] = defaultdict(list)
            for node, jobs in live_runs(self.c.nodes).items():
                for j in jobs:
                    where[j].append(node)
            self.twice += [(j, ns) for j, ns in where.items() if len(ns) > 1]
            self.samples += 1
            time.sleep(0.02)

    def stop(self) -> None:
        self._stop.set()
        self._t.join()


def request_over_tls(ctx: ssl.SSLContext, host: str, port: int, method: str, path: str) -> int:
    import http.client

    conn = http.client.HTTPSConnection(host, port, context=ctx, timeout=5)
    conn.request(method, path)
    return conn.getresponse().status


def raw_over_unix(sock_path, method, path, body, headers, user) -> tuple[int, str]:
    """A hand-made request on a node's socket, as ``user`` (a child drops to them)."""
    import subprocess
    import sys

    script = f"""
import http.client, socket, sys, json
class C(http.client.HTTPConnection):
    def connect(self):
        self.sock = socket.socket(socket.AF_UNIX); self.sock.connect({str(sock_path)!r})
c = C("mlq")
c.request({method!r}, {path!r}, body={body!r}, headers={{**{headers!r}, "Content-Type": "application/json"}})
r = c.getresponse(); sys.stdout.write(json.dumps([r.status, r.read().decode()]))
"""
    p = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=30,
        user=user.pw_uid, group=user.pw_gid, extra_groups=[],
    )  # fmt: skip
    assert p.returncode == 0, p.stderr
    code, text_ = json.loads(p.stdout)
    return code, text_


GANG = """
name: {name}
team: nlp
kind: training
command: {command}
network: host
resources: {{nodes: {nodes}, cpus: 500m, memory: 128Mi, gpus: {gpus}}}
preemption: {{grace_period: 5}}
{extra}
"""


def submit_gang(
    c: ClusterLab,
    user,
    name: str,
    command: list[str],
    nodes: int = 2,
    gpus: int = 2,
    extra: str = "",
) -> int:
    c.cli("grant", "set", "team:nlp", "--networks", "host")
    text_ = GANG.format(name=name, command=json.dumps(command), nodes=nodes, gpus=gpus, extra=extra)
    f = c.job_file(f"{name}.yaml", text_)
    r = c.cli("submit", str(f), "--json", user=user, node="n1")
    assert r.code == 0, r.err
    return r.json()["jobs"][0]["id"]


def parts_of(c: ClusterLab, job_id: int) -> list[int]:
    return [
        r[0] for r in c.sql("SELECT id FROM jobs WHERE gang_id = :j ORDER BY gang_rank", j=job_id)
    ]


def test_a_part_that_fails_fails_the_whole_job_with_its_reason(
    cluster: ClusterLab, unix_users
) -> None:
    start(cluster)
    bob = unix_users["bob"]
    cmd = ["/bin/sh", "-c", 'if [ "$NODE_RANK" = 1 ]; then sleep 1; exit 3; fi; exec sleep 60']
    job = submit_gang(cluster, bob, "fails", cmd)
    cluster.wait(lambda: cluster.job(job)["state"] == "FAILED", 60, str(cluster.events(job)))
    assert "part 1 on n" in cluster.job(job)["reason"]
    assert "exit code 3" in cluster.job(job)["reason"]
    assert [s for s, _ in cluster.events(job)][-2:] == ["STOPPING", "FAILED"]


RENDEZVOUS = r"""
import os, socket, time
rank, world = int(os.environ["NODE_RANK"]), int(os.environ["MLQ_NNODES"])
addr, port = os.environ["MASTER_ADDR"], int(os.environ["MASTER_PORT"])
if rank == 0:
    srv = socket.create_server(("0.0.0.0", port))
    got = []
    for _ in range(world - 1):
        conn, _peer = srv.accept()
        got.append(conn.makefile().readline().strip())
        conn.sendall(b"hello from rank 0\n")
        conn.close()
    print(f"rank 0 of {world} got: {sorted(got)}", flush=True)
else:
    for _ in range(200):
        try:
            conn = socket.create_connection((addr, port), timeout=2)
            break
        except OSError:
            time.sleep(0.1)
    conn.sendall(f"rank {rank} on {os.environ['MLQ_NODELIST'].split(',')[rank]}\n".encode())
    print(f"rank {rank} of {world} got: {conn.makefile().readline().strip()}", flush=True)
"""


def test_the_parts_of_a_two_node_job_rendezvous_at_master_addr_and_exchange_data(
    cluster: ClusterLab, unix_users
) -> None:
    import sys

    start(cluster)
    bob = unix_users["bob"]
    job = submit_gang(cluster, bob, "rdv", [sys.executable, "-c", RENDEZVOUS])
    cluster.wait(lambda: cluster.job(job)["state"] == "COMPLETED", 60, str(cluster.events(job)))
    parts = parts_of(cluster, job)
    nodes = [cluster.job(p)["node"] for p in parts]
    assert len(set(nodes)) == 2
    logs = [cluster.cli("logs", str(p), user=bob, node="n3") for p in parts]
    assert all(r.code == 0 for r in logs), [r.err for r in logs]
    assert f"rank 0 of 2 got: ['rank 1 on {nodes[1]}']" in logs[0].out
    assert "rank 1 of 2 got: hello from rank 0" in logs[1].out


def test_a_three_node_job_waits_for_a_busy_node_and_starts_every_part_when_it_frees(
    cluster: ClusterLab, unix_users
) -> None:
    start(cluster)
    bob, alice = unix_users["bob"], unix_users["alice"]
    busy = submit(cluster, alice, "n2", "busy", "cv", 4, cmd="sleep 600", grace=1)
    cluster.wait(lambda: cluster.job(busy)["state"] == "RUNNING", 30, str(cluster.events(busy)))
    job = submit_gang(cluster, bob, "wide", ["/bin/sh", "-c", "sleep 600"], nodes=3)
    parts = parts_of(cluster, job)
    cluster.wait(lambda: "nodes free" in (cluster.job(job)["reason"] or ""), 30, "no reason")
    assert cluster.job(job)["reason"] == "Resources: 2 of 3 nodes free for its parts"
    queue = cluster.cli("queue", user=bob, node="n3")
    assert all(f"{p} ({job}+{rank})" in queue.out for rank, p in enumerate(parts)), queue.out
    time.sleep(3)  # passes go by: no part may start while one cannot
    assert {cluster.job(p)["state"] for p in parts} == {"PENDING"}
    assert not any(s == "STARTING" for p in parts for s, _ in cluster.events(p))
    assert not set(parts) & set().union(*live_runs(cluster.nodes).values())
    r = cluster.cli("cancel", str(busy), user=alice, node="n2")
    assert r.code == 0, r.err
    cluster.wait(
        lambda: all(cluster.job(p)["state"] == "RUNNING" for p in parts),
        30,
        str([cluster.events(p) for p in parts]),
    )
    assert sorted(cluster.job(p)["node"] for p in parts) == ["n1", "n2", "n3"]
    ended = cluster.sql(
        "SELECT at FROM job_events WHERE job_id = :j AND state = 'CANCELLED'", j=busy
    )[0][0]
    starts = cluster.sql(
        "SELECT at FROM job_events WHERE job_id = ANY(:ps) AND state = 'STARTING'",
        ps=list(parts),
    )
    assert len(starts) == 3 and all(at >= ended for (at,) in starts)
    assert max(at for (at,) in starts) - min(at for (at,) in starts) < 5  # one pass, not one by one


CHECKPOINTING = r"""
echo "start restart=$MLQ_RESTART_COUNT rank=$NODE_RANK ckpt=$(cat $MLQ_CHECKPOINT_DIR/state 2>/dev/null || echo none)"
trap 'echo "rank $NODE_RANK at step 7" > $MLQ_CHECKPOINT_DIR/state; echo checkpointed; exit 0' TERM
if [ "$MLQ_RESTART_COUNT" = 1 ]; then exit 0; fi
while true; do sleep 0.1; done
"""


def test_an_inference_job_preempts_a_two_node_job_whose_parts_checkpoint_and_resume(
    cluster: ClusterLab, unix_users
) -> None:
    start(cluster, nodes=("n1", "n2"))
    bob, carol = unix_users["bob"], unix_users["carol"]
    job = submit_gang(
        cluster, bob, "train", ["/bin/sh", "-c", CHECKPOINTING], gpus=4,
        extra="checkpoint: {target: /checkpoints}",
    )  # fmt: skip
    parts = parts_of(cluster, job)
    cluster.wait(lambda: all(cluster.job(p)["state"] == "RUNNING" for p in parts), 30, "not run")
    first = {p: cluster.job(p)["node"] for p in parts}
    serve = submit(cluster, carol, "n1", "serve", "ops", 4, kind="inference", cmd="sleep 3")
    cluster.wait(lambda: cluster.job(serve)["state"] == "RUNNING", 30, str(cluster.events(serve)))
    cluster.wait(
        lambda: all(cluster.job(p)["state"] == "COMPLETED" for p in parts),
        60,
        str([cluster.events(p) for p in parts]),
    )
    assert cluster.job(serve)["state"] == "COMPLETED"
    for p in parts:  # both parts stopped with their signal, both requeued, both back
        states_ = [s for s, _ in cluster.events(p)]
        assert states_[3:6] == ["STOPPING", "PREEMPTED", "PENDING"], cluster.events(p)
        assert states_[-1] == "COMPLETED" and states_.count("RUNNING") == 2, cluster.events(p)
    for rank, p in enumerate(parts):
        assert cluster.job(p)["restart_count"] == 1
        out = cluster.cli("logs", str(p), user=bob, node="n2").out
        assert f"start restart=0 rank={rank} ckpt=none" in out, out
        assert "checkpointed" in out, out
        if cluster.job(p)["node"] == first[p]:  # checkpoints stay on their node
            assert f"start restart=1 rank={rank} ckpt=rank {rank} at step 7" in out, out
        else:
            assert f"start restart=1 rank={rank}" in out, out


def test_a_node_failure_under_one_part_is_a_node_fail_of_the_whole_job(
    cluster: ClusterLab, unix_users
) -> None:
    start(cluster)
    bob = unix_users["bob"]
    cmd = ["/bin/sh", "-c", 'echo "restart $MLQ_RESTART_COUNT"; exec sleep 600']
    job = submit_gang(cluster, bob, "train", cmd, gpus=4)
    parts = parts_of(cluster, job)
    cluster.wait(lambda: all(cluster.job(p)["state"] == "RUNNING" for p in parts), 30, "not run")
    victim = cluster.job(parts[1])["node"]
    survivor = cluster.job(parts[0])["node"]
    cluster.agents[victim].kill9()
    cluster.wait(
        lambda: all(
            cluster.job(p)["state"] == "RUNNING" and cluster.job(p)["restart_count"] == 1
            for p in parts
        ),
        40,
        str([cluster.events(p) for p in parts]),
    )
    for p in parts:  # both parts ended NODE_FAIL, both requeued, neither on the dead node
        assert [s for s, _ in cluster.events(p)].count("NODE_FAIL") == 1, cluster.events(p)
        assert cluster.job(p)["node"] != victim
    survivor_end = next(r for s, r in cluster.events(parts[0]) if s == "NODE_FAIL")
    assert f"part 1: node {victim}" in survivor_end, survivor_end
    assert victim not in live_runs({survivor: None})
    cluster.start_agent(victim)
    assert live_runs(cluster.nodes)[victim] == set()


def test_mlq_requeue_of_a_two_node_job_stops_and_restarts_every_part(
    cluster: ClusterLab, unix_users
) -> None:
    start(cluster, nodes=("n1", "n2"))
    bob = unix_users["bob"]
    job = submit_gang(
        cluster, bob, "train", ["/bin/sh", "-c", CHECKPOINTING], gpus=4,
        extra="checkpoint: {target: /checkpoints}",
    )  # fmt: skip
    parts = parts_of(cluster, job)
    cluster.wait(lambda: all(cluster.job(p)["state"] == "RUNNING" for p in parts), 30, "not run")
    time.sleep(0.5)  # their traps are set
    r = cluster.cli("requeue", str(parts[1]), user=bob, node="n2")  # any part names the job
    assert r.code == 0, r.err
    cluster.wait(
        lambda: all(cluster.job(p)["state"] == "COMPLETED" for p in parts),
        60,
        str([cluster.events(p) for p in parts]),
    )
    for rank, p in enumerate(parts):
        assert cluster.job(p)["restart_count"] == 1
        assert f"Requeued by {bob.pw_name}" in [r for s, r in cluster.events(p) if s == "STOPPING"]
        out = cluster.cli("logs", str(p), user=bob, node="n1").out
        assert "checkpointed" in out and f"start restart=1 rank={rank}" in out, out


def test_mlq_exec_enters_a_job_from_its_node_as_its_owner_and_nowhere_else(
    cluster: ClusterLab, unix_users
) -> None:
    start(cluster, nodes=("n1", "n2"))
    alice, bob = unix_users["alice"], unix_users["bob"]
    job = submit(cluster, bob, "n1", "sleeper", "nlp", 1, cmd="sleep 120")
    cluster.wait(lambda: cluster.job(job)["state"] == "RUNNING", 30, str(cluster.events(job)))
    node = cluster.job(job)["node"]
    other = "n2" if node == "n1" else "n1"
    script = "id -un; echo $MLQ_JOB_ID; hostname"
    r = cluster.cli("exec", str(job), "--", "sh", "-c", script, user=bob, node=node)
    assert r.code == 0, r.err
    assert r.out.split() == [bob.pw_name, str(job), "sleeper"]
    # the agent of another node has no such run: it says where to go
    r = cluster.cli("exec", str(job), "--", "id", user=bob, node=other)
    assert r.code == 125 and f"job {job} is not running on node {other}" in r.err
    # another user on the job's own node: refused by its agent
    r = cluster.cli("exec", str(job), "--", "id", user=alice, node=node)
    assert r.code == 125 and f"{alice.pw_name} may not exec into job {job}" in r.err
    assert cluster.cli("cancel", str(job), user=bob, node=node).code == 0


SAVER = """
name: {name}
team: nlp
kind: batch
command: [/bin/sh, -c, "echo weights > $MLQ_CHECKPOINT_DIR/w; {cmd}"]
resources: {{cpus: 500m, memory: 128Mi}}
checkpoint: {{target: /ckpt}}
"""


def test_checkpoint_volumes_on_agents_nodes_are_listed_kept_while_needed_and_swept(
    cluster: ClusterLab, unix_users, monkeypatch
) -> None:
    monkeypatch.setenv("MLQ_CHECKPOINT_SWEEP_INTERVAL", "0.5")
    config = cluster.home / "cluster.yaml"
    config.write_text(config.read_text() + "\ncheckpoint_retention: 6s\n")
    start(cluster, nodes=("n1", "n2"))
    bob = unix_users["bob"]
    ids = {}
    for name, cmd in (("done", "true"), ("kept", "sleep 120")):
        f = cluster.job_file(f"{name}.yaml", SAVER.format(name=name, cmd=cmd))
        r = cluster.cli("submit", str(f), "--json", user=bob, node="n1")
        assert r.code == 0, r.err
        ids[name] = r.json()["jobs"][0]["id"]
    done, kept = ids["done"], ids["kept"]
    cluster.wait(lambda: cluster.job(done)["state"] == "COMPLETED", 30, str(cluster.events(done)))
    cluster.wait(lambda: cluster.job(kept)["state"] == "RUNNING", 30, str(cluster.events(kept)))
    where = {j: cluster.job(j)["node"] for j in (done, kept)}
    volume = {j: cluster.home / where[j] / "checkpoints" / str(j) for j in (done, kept)}
    assert volume[done].is_dir() and volume[kept].is_dir()
    # the control plane lists both, each on its agent's node, as an admin asks
    r = cluster.cli("checkpoints", "list", "--json", socket=cluster.cp_socket(0))
    assert r.code == 0, r.err
    listed = {c["job_id"]: c for c in r.json()["checkpoints"]}
    assert listed[done]["node"] == where[done] and listed[done]["fate"] in ("retained", "due")
    assert listed[kept]["node"] == where[kept] and listed[kept]["fate"] == "active"
    assert listed[done]["bytes"] > 0
    # past the retention the sweep removes the finished job's volume on its node
    cluster.wait(lambda: not volume[done].exists(), 60, f"{volume[done]} is still there")
    assert volume[kept].is_dir()  # its job can still run
    # a prune naming the running job removes nothing
    r = cluster.cli("checkpoints", "prune", str(kept), socket=cluster.cp_socket(0))
    assert r.code == 1 and "can still run" in r.err
    assert volume[kept].is_dir()
    assert cluster.cli("cancel", str(kept), user=bob, node="n1").code == 0
