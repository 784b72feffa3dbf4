"""What ``mlq nodes`` and ``mlq top`` show: each node's state and capacity, each GPU
and MIG slice with the job holding it, and each team's use against its quota (the policy's
own figures: ``policy.team_usage`` on a snapshot of the running jobs)."""

from __future__ import annotations

import json
from typing import Any

from mlq.executor.units import format_cpus, human_size
from mlq.scheduler import build, states
from mlq.scheduler.daemon import schemas as S
from mlq.scheduler.daemon.view import snapshot_teams
from mlq.scheduler.policy import team_usage
from mlq.scheduler.snapshot import Snapshot, rules_from_classes
from mlq.scheduler.store import Store


def node_views(store: Store, loop: Any) -> list[S.NodeOut]:
    """``loop``: the daemon's Loop (its nodes and spec cache). Every node it knows, with
    the jobs holding its GPUs; team use is the cluster's (the same on every node)."""
    specs = loop.specs
    classes = {c.name: c for c in store.classes()}
    running = store.jobs(states_in=(states.STARTING, states.RUNNING, states.STOPPING))
    holders: dict[tuple, int] = {}
    used: dict[str, list[int]] = {}  # node -> [millicores, bytes]
    shapes = []
    busy = {j.node for j in running}
    for j in running:
        spec = specs.of(j)
        u = used.setdefault(j.node or "", [0, 0])
        u[0] += spec.resources.cpus or 0
        u[1] += spec.resources.memory or 0
        held = json.loads(j.devices) if j.devices else {}
        for g in held.get("gpus", []):
            holders[(j.node, "gpu", g)] = j.id or 0
        for m in held.get("mig", []):
            holders[(j.node, "mig", m["gpu"], m["start"])] = j.id or 0
        gpus, slots = build.held_slices(held)
        klass = classes.get(j.priority_class)
        shapes.append(
            build.running(
                j.id, j.team, j.priority_class, spec.resources,
                klass.defaults if klass else spec.resources,
                node=j.node or "", gpus=gpus, mig=slots, time_limit=spec.time_limit,
                started_at=j.started_at or 0.0,
            )
        )  # fmt: skip
    teams = store.teams()
    slots_ = loop.nodes.all()
    snap = Snapshot(
        now=0.0,
        nodes=tuple(s.view.snapshot_node() for s in slots_),
        running=tuple(shapes),
        teams=snapshot_teams(teams),
        classes=rules_from_classes(store.classes()),
    )
    usage = team_usage(snap)
    team_rows = [
        S.TeamUsage(team=t.name, used=usage.get(t.name, {}), guarantee=t.guarantee, limit=t.limit)
        for t in teams
    ]
    health = loop.node_health() if hasattr(loop, "node_health") else {}
    out = []
    for slot in slots_:
        node = slot.view
        inv = node.gpus.to_json()
        gpus = []
        for g in inv["gpus"]:
            entry = dict(g)
            if g.get("mig"):
                entry["mig"] = [
                    {**m, "job": holders.get((node.name, "mig", g["index"], m.get("start")))}
                    for m in g["mig"]
                ]
                entry["job"] = None
            else:
                entry["job"] = holders.get((node.name, "gpu", g["index"]))
            gpus.append(entry)
        cpus, memory = used.get(node.name, [0, 0])
        h = health.get(node.name, {})
        state, reason = h.get("state", "up" if slot.up else "down"), h.get("reason", "")
        if state == "up" and node.name in loop.drained:  # Slurm's words, by what still runs
            state = "draining" if node.name in busy else "drained"
            reason = loop.drained[node.name]
        out.append(
            S.NodeOut(
                name=node.name,
                state=state,
                reason=reason,
                last_heartbeat=h.get("last_heartbeat"),
                address=h.get("address", ""),
                topology=slot.view.topology,
                cpus=format_cpus(node.cpus),
                memory=human_size(node.memory),
                cpus_used=format_cpus(cpus) if cpus else "0",
                memory_used=human_size(memory),
                gpu_source=inv.get("source", ""),
                gpu_problem=inv.get("reason"),
                gpus=gpus,
                teams=team_rows,
            )
        )
    return out
