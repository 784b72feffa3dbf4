"""The control plane's nodes: agents' syncs in, orders out, leases, nodes that die.

Each agent syncs (``wire.py``): the first sync with its facts registers the node (a
``Slot`` of the loop with a ``RemoteNode`` executor); every sync renews its lease
and reports its runs. A report counts only when it names the job's current node and
epoch: anything else is a run that another decision replaced, and since the answer
lists only current orders, the agent kills it.

A node whose last sync is older than its lease is declared down, in a pass (under
the loop's lock): each of its jobs ends ``NODE_FAIL`` and is requeued where its
``preemption.requeue`` says so (a job being cancelled ends CANCELLED). The agent
stops its runs by itself well before that (``agent.py``: after ``lease_s *
wire.SELF_FENCE`` without an answer), so a requeued job never runs on two nodes at
once. A down node that syncs again is answered with no orders (its agent kills
what it still holds) and comes back up once it holds nothing stale.

A control plane that takes over gives every node a fresh lease from its start: it
declares no node down for a silence it did not see.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import threading
import time
from dataclasses import dataclass, field
from typing import Any

from mlq.executor.gpus import NodeGpus
from mlq.scheduler import states, wire
from mlq.scheduler.daemon import outcomes
from mlq.scheduler.daemon.carving import Carver
from mlq.scheduler.daemon.logs import run_id
from mlq.scheduler.daemon.nodeset import Slot
from mlq.scheduler.daemon.remote import RemoteNode
from mlq.scheduler.daemon.view import NodeView
from mlq.scheduler.errors import Conflict, NotFound, Refused
from mlq.scheduler.grants import forbidden_paths

log = logging.getLogger("mlq.fleet")


@dataclass
class NoCarve:
    mig_carve: bool = False  # agents' nodes carve no MIG slices (yet)


@dataclass
class NodeState:
    name: str
    remote: RemoteNode
    slot: Slot
    last_seen: float  # monotonic, as this control plane saw it
    state: str = "up"
    reason: str = ""
    address: str = ""
    boot: str = ""
    gen: int = 0  # bumped whenever the node's orders change
    event: asyncio.Event | None = None
    aio: asyncio.AbstractEventLoop | None = None
    wall_seen: float = 0.0
    saved_at: float = 0.0  # when last_heartbeat was last written to the store
    facts: dict[str, Any] = field(default_factory=dict)


class Fleet:
    def __init__(
        self, loop: Any, lease_s: float = 30.0, heartbeat_s: float = 2.0, term: int = 0
    ) -> None:
        self.loop = loop
        self.store = loop.store
        self.clock = loop.clock
        self.lease_s = lease_s
        self.heartbeat_s = heartbeat_s
        self.term = term
        self.nodes: dict[str, NodeState] = {}
        self._lock = threading.Lock()
        loop.before_pass.append(self.check_leases)
        loop.node_health = self.health
        for row in self.store.node_rows():  # known nodes: a fresh lease from now
            facts = {
                "cpus": row.cpus, "memory": row.memory, "gpus": json.loads(row.gpus or "{}"),
                "state_dir": row.state_dir, "socket": row.socket, "topology": row.topology,
            }  # fmt: skip
            st = self._add(row.name, wire.NodeFacts(**facts))
            st.state, st.reason, st.address = row.state, row.reason, row.address
            st.slot.address = row.address
            st.slot.up = row.state == "up"
            st.wall_seen = row.last_heartbeat

    # -- registry ------------------------------------------------------------------

    def _add(self, name: str, facts: wire.NodeFacts) -> NodeState:
        gpus = NodeGpus.from_json(facts.gpus) if facts.gpus else NodeGpus(source="declared")
        st: NodeState

        def wake() -> None:
            self.wake(name)

        remote = RemoteNode(name, gpus, wake)
        view = NodeView(
            name, facts.cpus, facts.memory, gpus, can_carve=False, topology=facts.topology
        )
        carver = Carver(view, self.store, NoCarve(), remote)
        slot = Slot(
            view, remote, carver, facts.state_dir,
            forbidden_paths(facts.state_dir, facts.socket), remote=True,
        )  # fmt: skip
        st = NodeState(name, remote, slot, last_seen=self.clock.monotonic())
        st.facts = facts.model_dump()
        with self.loop._lock:
            old = self.nodes.get(name)
            if old is not None:
                old.remote.close()
            self.nodes[name] = st
            self.loop.nodes.add(slot)
        return st

    def wake(self, name: str) -> None:
        """The node's orders changed: its waiting sync answers now."""
        st = self.nodes.get(name)
        if st is None:
            return
        with self._lock:
            st.gen += 1
        if st.aio is not None and st.event is not None:
            with contextlib.suppress(RuntimeError):  # its loop is closed: nobody waits
                st.aio.call_soon_threadsafe(st.event.set)

    def health(self) -> dict[str, dict[str, Any]]:
        return {
            n.name: {
                "state": n.state, "reason": n.reason, "address": n.address,
                "last_heartbeat": n.wall_seen or None,
            }
            for n in self.nodes.values()
        }  # fmt: skip

    # -- a sync (the API's event loop) ---------------------------------------------

    async def sync(self, node: str, req: wire.SyncRequest, address: str) -> wire.SyncReply:
        if req.node != node:
            raise Refused(f'node "{node}" may not sync as node "{req.node}"')
        st = self.nodes.get(node)
        if req.facts is not None and (st is None or req.facts.model_dump() != st.facts):
            st = await asyncio.to_thread(self._register, node, req.facts, address)
        if st is None:
            return self._reply(None, [], want_facts=True)
        st.last_seen = self.clock.monotonic()
        st.wall_seen = self.clock.time()
        st.address = st.slot.address = address
        aio = asyncio.get_running_loop()
        if st.aio is not aio:  # the server's one event loop (a test may run several)
            st.aio, st.event = aio, asyncio.Event()
        if req.boot != st.boot:
            if st.boot:
                log.info("node %s: its agent restarted (%s -> %s)", node, st.boot, req.boot)
            st.boot = req.boot
        await asyncio.to_thread(self._take_reports, st, req)
        # hold the answer until the node's orders change, a fetch waits, or the
        # heartbeat is due: one round trip brings an order to the node
        deadline = time.monotonic() + self.heartbeat_s
        assert st.event is not None
        while req.gen == st.gen and not st.remote.take_fetches():
            st.event.clear()
            if req.gen != st.gen:
                break
            left = deadline - time.monotonic()
            if left <= 0:
                break
            try:
                await asyncio.wait_for(st.event.wait(), left)
            except TimeoutError:
                break
        gen = st.gen
        orders = await asyncio.to_thread(self._orders, st)
        return self._reply(st, orders, gen=gen)

    def _reply(
        self, st: NodeState | None, orders: list[wire.Order], gen: int = 0, want_facts: bool = False
    ) -> wire.SyncReply:
        return wire.SyncReply(
            term=self.term,
            gen=gen,
            lease_s=self.lease_s,
            heartbeat_s=self.heartbeat_s,
            state=st.state if st else "unknown",
            orders=orders,
            fetches=st.remote.take_fetches() if st else [],
            want_facts=want_facts,
        )

    def _register(self, node: str, facts: wire.NodeFacts, address: str) -> NodeState:
        old = self.nodes.get(node)
        self.store.save_node(
            node, cpus=facts.cpus, memory=facts.memory, gpus=json.dumps(facts.gpus),
            state_dir=facts.state_dir, socket=facts.socket, address=address,
            topology=facts.topology,
        )  # fmt: skip
        st = self._add(node, facts)
        if old is not None:  # keep what this control plane knows of it
            st.state, st.reason, st.slot.up = old.state, old.reason, old.slot.up
            st.boot, st.gen = old.boot, old.gen + 1
        else:
            self.store.save_node(node, state="up", reason="")
        log.info("node %s registered from %s: %s", node, address, st.slot.view.gpus.summary())
        self.loop.ask("node")
        return st

    def _take_reports(self, st: NodeState, req: wire.SyncRequest) -> None:
        ids = sorted({int(r.run_id.split(".", 1)[0]) for r in req.runs if r.run_id[:1].isdigit()})
        jobs = {j.id: j for j in self.store.jobs(ids=ids, with_spec=False)} if ids else {}
        ended: dict[str, Any] = {}
        live: dict[str, dict[str, int]] = {}
        began = False
        for r in req.runs:
            try:
                job = jobs.get(int(r.run_id.split(".", 1)[0]))
            except ValueError:
                continue
            if (
                job is None
                or job.node != st.name
                or job.epoch != r.epoch
                or run_id(job) != r.run_id
                or job.state not in (states.STARTING, states.RUNNING, states.STOPPING)
            ):
                continue  # replaced by another decision: not in the answer, so killed
            try:
                if r.state == "ended" and r.status is not None:
                    ended[r.run_id] = wire.status_from_json(r.status)
                elif r.stats:
                    live[r.run_id] = vars(wire.stats_from_json(r.stats))
            except (ValueError, KeyError, TypeError) as exc:
                log.warning(
                    "node %s: a report of run %s makes no sense: %s", st.name, r.run_id, exc
                )
                continue
            if r.state in ("running", "ended") and job.state == states.STARTING:
                try:
                    self.store.transition(
                        job.id, states.RUNNING, f"on {st.name}",
                        expect=(states.STARTING,), cgroup=r.cgroup,
                    )  # fmt: skip
                    began = True
                except (Conflict, NotFound):
                    pass
        st.remote.reported(ended, live)
        for key, mtime in req.marks.items():
            if key.isdigit():
                st.remote.marks[int(key)] = mtime
        st.remote.answer(req.fetched)
        if st.state == "down" and req.stray == 0 and not any(r.state != "ended" for r in req.runs):
            self._set_state(st, "up", "")
            log.info("node %s is back: it holds no stale run", st.name)
            self.loop.ask("node up")
        now = self.clock.time()
        if now - st.saved_at > max(5.0, self.heartbeat_s):
            st.saved_at = now
            self.store.save_node(st.name, last_heartbeat=now, address=st.address)
        if began:
            self.loop.ask("run began")

    def _orders(self, st: NodeState) -> list[wire.Order]:
        if st.state != "up":
            return []  # a down node's runs are no longer its own
        out = []
        for j in self.store.node_runs(st.name):
            if not j.launch or j.epoch is None:
                continue
            stop = ""
            if j.state == states.STOPPING:
                stop = "now" if j.stop_now else "graceful"
            out.append(
                wire.Order(job_id=j.id, run_id=run_id(j), epoch=j.epoch, launch=j.launch, stop=stop)
            )
        return out

    def _set_state(self, st: NodeState, state: str, reason: str) -> None:
        st.state, st.reason = state, reason
        st.slot.up = state == "up"
        self.store.save_node(st.name, state=state, reason=reason, last_heartbeat=st.wall_seen)

    # -- leases (a pass, under the loop's lock) ------------------------------------

    def check_leases(self) -> None:
        now = self.clock.monotonic()
        for st in list(self.nodes.values()):
            if st.state == "up" and now - st.last_seen > self.lease_s:
                silent = now - st.last_seen
                self.declare_down(st, f"no heartbeat for {silent:.0f}s (lease {self.lease_s:g}s)")

    def declare_down(self, st: NodeState, why: str) -> None:
        log.warning("node %s is down: %s", st.name, why)
        self._set_state(st, "down", why)
        now = self.clock.time()
        for j in self.store.node_runs(st.name):
            job = self.store.job(j.id)
            spec = self.loop.specs.of(job)
            if job.state == states.STOPPING and job.stop_cause == outcomes.StopCause.CANCEL:
                steps = [(states.CANCELLED, f"{job.reason} (its node {st.name} failed)",
                          {"ended_at": now, "launch": None})]  # fmt: skip
            else:
                steps = outcomes.node_failed(job, spec, why, now)
            try:
                self.store.transitions(
                    job.id, steps, expect=(states.STARTING, states.RUNNING, states.STOPPING)
                )
            except (Conflict, NotFound):
                continue
            st.remote.forget(run_id(job))
            log.warning("job %s: %s", job.id, steps[-1][1])
        self.wake(st.name)
