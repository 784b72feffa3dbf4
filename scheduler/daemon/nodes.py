"""What ``mlq nodes`` and ``mlq top`` show: this node's capacity, each GPU and MIG
slice with the job holding it, and each team's use against its quota (the policy's
own figures: ``policy.team_usage`` on a snapshot of the running jobs)."""

from __future__ import annotations

import json
from typing import Any

from mlq.executor.units import format_cpus, human_size
from mlq.scheduler import build, states
from mlq.scheduler.daemon import schemas as S
from mlq.scheduler.policy import team_usage
from mlq.scheduler.snapshot import Snapshot, Team, rules_from_classes
from mlq.scheduler.store import Store


def node_view(store: Store, loop: Any) -> S.NodeOut:
    """``loop``: the daemon's Loop (its node view and spec cache)."""
    node, specs = loop.node, loop.specs
    running = store.jobs(states_in=(states.STARTING, states.RUNNING, states.STOPPING))
    holders: dict[tuple, int] = {}
    cpus = memory = 0
    shapes = []
    for j in running:
        spec = specs.of(j)
        cpus += spec.resources.cpus or 0
        memory += spec.resources.memory or 0
        held = json.loads(j.devices) if j.devices else {}
        for g in held.get("gpus", []):
            holders[("gpu", g)] = j.id or 0
        for m in held.get("mig", []):
            holders[("mig", m["gpu"], m["start"])] = j.id or 0
        gpus, slots = build.held_slices(held)
        shapes.append(
            build.running(
                j.id, j.team, j.priority_class, spec.resources, spec.resources,
                node=node.name, gpus=gpus, mig=slots, time_limit=spec.time_limit,
                started_at=j.started_at or 0.0,
            )
        )  # fmt: skip
    teams = store.teams()
    snap = Snapshot(
        now=0.0,
        nodes=(node.snapshot_node(),),
        running=tuple(shapes),
        teams=tuple(Team(t.name, t.guarantee, t.limit) for t in teams),
        classes=rules_from_classes(store.classes()),
    )
    usage = team_usage(snap)
    inv = node.gpus.to_json()
    gpus = []
    for g in inv["gpus"]:
        entry = dict(g)
        if g.get("mig"):
            entry["mig"] = [
                {**m, "job": holders.get(("mig", g["index"], m.get("start")))} for m in g["mig"]
            ]
            entry["job"] = None
        else:
            entry["job"] = holders.get(("gpu", g["index"]))
        gpus.append(entry)
    return S.NodeOut(
        name=node.name,
        cpus=format_cpus(node.cpus),
        memory=human_size(node.memory),
        cpus_used=format_cpus(cpus) if cpus else "0",
        memory_used=human_size(memory),
        gpu_source=inv.get("source", ""),
        gpu_problem=inv.get("reason"),
        gpus=gpus,
        teams=[
            S.TeamUsage(
                team=t.name, used=usage.get(t.name, {}), guarantee=t.guarantee, limit=t.limit
            )
            for t in teams
        ],
    )
