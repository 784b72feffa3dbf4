"""What ``mlq nodes`` and ``mlq top`` show: this node's capacity, each GPU and MIG
slice with the job holding it, and each team's use against its quota."""

from __future__ import annotations

import json
from typing import Any

from mlq.scheduler import quota, states
from mlq.scheduler.daemon import schemas as S
from mlq.scheduler.daemon.loop import spec_of
from mlq.scheduler.models import Job
from mlq.scheduler.store import Store
from mlq.scheduler.units import format_cpus, human_size


def team_usage(jobs: list[Job], models: dict[int, str]) -> dict[str, dict[str, float]]:
    """Each team's use of every quota key by its running (and stopping) jobs."""
    usage: dict[str, dict[str, float]] = {}
    for j in jobs:
        spec = spec_of(j)
        r = spec.resources
        held = json.loads(j.devices) if j.devices else {}
        if held.get("mig"):
            demand = quota.mig_demand(
                [m["profile"] for m in held["mig"]], r.cpus or 0, r.memory or 0
            )
        else:
            gpus = held.get("gpus", [])
            model = models.get(gpus[0], "") if gpus else ""
            demand = quota.whole_gpu_demand(len(gpus), model, r.cpus or 0, r.memory or 0)
        quota.add(usage.setdefault(j.team, {}), demand)
    return usage


def node_view(store: Store, node: Any) -> S.NodeOut:
    running = store.jobs(states_in=(states.STARTING, states.RUNNING, states.STOPPING))
    holders: dict[tuple, int] = {}
    cpus = memory = 0
    for j in running:
        spec = spec_of(j)
        cpus += spec.resources.cpus or 0
        memory += spec.resources.memory or 0
        held = json.loads(j.devices) if j.devices else {}
        for g in held.get("gpus", []):
            holders[("gpu", g)] = j.id or 0
        for m in held.get("mig", []):
            holders[("mig", m["gpu"], m["start"])] = j.id or 0
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
    models = {g["index"]: g.get("model", "") for g in inv["gpus"]}
    usage = team_usage(running, models)
    teams = [
        S.TeamUsage(team=t.name, used=usage.get(t.name, {}), guarantee=t.guarantee, limit=t.limit)
        for t in store.teams()
    ]
    return S.NodeOut(
        name=node.name,
        cpus=format_cpus(node.cpus),
        memory=human_size(node.memory),
        cpus_used=format_cpus(cpus) if cpus else "0",
        memory_used=human_size(memory),
        gpu_source=inv.get("source", ""),
        gpu_problem=inv.get("reason"),
        gpus=gpus,
        teams=teams,
    )
