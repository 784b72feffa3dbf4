"""The ``mlq plan`` scenario: a described cluster state, read into a policy Snapshot.

The format is documented in docs/scenario-format.md. It reuses the cluster config's
models (priority classes, GPU declarations, quota maps) and the job file's units, so
a scenario is checked with the same rules and the same messages as those files.
Problems that need the whole file (an unknown node, a GPU held twice, a MIG layout
that breaks the placement rules) are collected and reported together.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, Literal

from mlq.executor import mig
from mlq.scheduler import build
from mlq.scheduler.cluster import DEFAULT_CLASSES, GpuDecl, PriorityClass, TeamConfig
from mlq.scheduler.errors import InvalidInput
from mlq.scheduler.snapshot import (
    MigSlot,
    Snapshot,
    Team,
    rules_from_classes,
)
from mlq.scheduler.spec import (
    MAX_NODES,
    Bytes,
    Millicores,
    Seconds,
    Strict,
    load_yaml,
    validation_problems,
)
from pydantic import Field, ValidationError

JobIdField = int | str


class ScenarioNode(Strict):
    name: str
    cpus: Millicores
    memory: Bytes
    gpus: list[GpuDecl] = []
    topology: str = Field("", max_length=255)  # its switches, outermost first: spine1/rack3


class HeldSlice(Strict):
    """``{gpu: 1, start: 0}``: a running job's slice; the profile is the carved one."""

    gpu: int = Field(ge=0)
    start: int = Field(ge=0, le=7)
    profile: str | None = None


class ScenarioMig(Strict):
    profile: str
    count: int = Field(1, ge=1)


class ScenarioRunning(Strict):
    id: JobIdField
    team: str
    kind: Literal["training", "inference", "batch"] = "batch"
    priority_class: str | None = None
    node: str
    gpus: list[int] = []
    mig: list[HeldSlice] = []
    cpus: Millicores | None = None
    memory: Bytes | None = None
    started_at: float = 0
    checkpoint_at: float | None = None
    time_limit: Seconds | None = None
    stopping_for: JobIdField | None = None
    grace_period: Seconds = 30  # preemption.grace_period: how long it may take to stop
    # one part of a multi-node job: its id is listed once per part, each on its node
    parts: int = Field(1, ge=1, le=MAX_NODES)


class ScenarioPending(Strict):
    id: JobIdField
    team: str
    kind: Literal["training", "inference", "batch"] = "batch"
    priority_class: str | None = None
    gpus: int = Field(0, ge=0, le=64)
    gpu_model: str | None = None
    mig: ScenarioMig | None = None
    cpus: Millicores | None = None
    memory: Bytes | None = None
    submitted_at: float = 0
    time_limit: Seconds | None = None
    blocked_by_dependency: bool = False
    held: bool = False
    nodes: int = Field(1, ge=1, le=MAX_NODES)  # a multi-node job's parts; the rest per part


class Scenario(Strict):
    now: float
    priority_classes: list[PriorityClass] = list(DEFAULT_CLASSES)
    nodes: list[ScenarioNode] = Field(min_length=1)
    teams: list[TeamConfig] = []
    running: list[ScenarioRunning] = []
    pending: list[ScenarioPending] = []


def _cross_problems(sc: Scenario) -> list[str]:
    """Every reference and placement rule the models alone cannot check."""
    out: list[str] = []
    classes = {c.name for c in sc.priority_classes}
    for i, c in enumerate(sc.priority_classes):
        for p in c.preempts:
            if p not in classes:
                out.append(
                    f'priority_classes[{i}].preempts: "{p}" is not a class; known: {", ".join(sorted(classes))}'
                )
    nodes: dict[str, ScenarioNode] = {}
    for i, n in enumerate(sc.nodes):
        if n.name in nodes:
            out.append(f'nodes[{i}].name: "{n.name}" is used by two nodes')
        nodes[n.name] = n
        seen: set[int] = set()
        for k, g in enumerate(n.gpus):
            where = f"nodes[{i}].gpus[{k}]"
            if g.index in seen:
                out.append(f"{where}.index: {g.index} is used by two GPUs of {n.name}")
            seen.add(g.index)
            if g.mig is not None:
                model = mig.canonical_model(g.model)
                if model is None:
                    out.append(
                        f'{where}.model: "{g.model}" has no MIG profiles; known: {", ".join(mig.CATALOGUE)}'
                    )
                    continue
                for problem in mig.layout_problems(model, [(s.profile, s.start) for s in g.mig]):
                    out.append(f"{where}.mig: {problem}")
    ids: set[Any] = set()
    held: set[tuple[str, int, int | None]] = set()
    pending_ids = {j.id for j in sc.pending}
    parts: dict[Any, list[ScenarioRunning]] = {}
    for r in sc.running:
        parts.setdefault(r.id, []).append(r)
    for i, r in enumerate(sc.running):
        where = f"running[{i}]"
        same = parts[r.id]
        if r.id in ids and (r.parts == 1 or any(o.parts != r.parts for o in same)):
            out.append(f"{where}.id: {r.id!r} is used by two jobs")
        elif r.parts > 1 and r.id not in ids:
            if len(same) != r.parts:
                out.append(
                    f"{where}.parts: {r.parts}, but job {r.id!r} is listed {len(same)} times"
                )
            if len({o.node for o in same}) != len(same):
                out.append(f"{where}.node: two parts of job {r.id!r} are on one node")
        ids.add(r.id)
        _class_problem(out, where, r.kind, r.priority_class, classes)
        n = nodes.get(r.node)
        if n is None:
            out.append(f'{where}.node: "{r.node}" is not a node; known: {", ".join(nodes)}')
            continue
        if r.gpus and r.mig:
            out.append(f"{where}: gpus and mig are exclusive")
        gpus = {g.index: g for g in n.gpus}
        for g in r.gpus:
            if g not in gpus:
                out.append(f"{where}.gpus: {n.name} has no GPU {g}")
            elif gpus[g].mig is not None:
                out.append(
                    f"{where}.gpus: GPU {g} of {n.name} is in MIG mode; hold its slices with mig"
                )
            elif (r.node, g, None) in held:
                out.append(f"{where}.gpus: GPU {g} of {n.name} is held by two jobs")
            held.add((r.node, g, None))
        for k, s in enumerate(r.mig):
            decl = gpus.get(s.gpu)
            carved = {c.start: c.profile for c in (decl.mig or [])} if decl else {}
            if decl is None or decl.mig is None:
                out.append(f"{where}.mig[{k}]: GPU {s.gpu} of {n.name} is not in MIG mode")
            elif s.start not in carved:
                out.append(
                    f"{where}.mig[{k}]: GPU {s.gpu} of {n.name} has no slice at start {s.start}"
                )
            elif s.profile is not None and s.profile != carved[s.start]:
                out.append(
                    f'{where}.mig[{k}].profile: "{s.profile}" but the slice at start {s.start} is {carved[s.start]}'
                )
            elif (r.node, s.gpu, s.start) in held:
                out.append(
                    f"{where}.mig[{k}]: the slice at start {s.start} of GPU {s.gpu} is held by two jobs"
                )
            held.add((r.node, s.gpu, s.start))
        if r.stopping_for is not None and r.stopping_for not in pending_ids:
            out.append(f"{where}.stopping_for: {r.stopping_for!r} is not a pending job")
    for i, p in enumerate(sc.pending):
        where = f"pending[{i}]"
        if p.id in ids:
            out.append(f"{where}.id: {p.id!r} is used by two jobs")
        ids.add(p.id)
        _class_problem(out, where, p.kind, p.priority_class, classes)
        if p.gpus and p.mig:
            out.append(f"{where}: gpus and mig are exclusive; ask for whole GPUs or MIG slices")
        if p.mig and not mig.model_of_profile(p.mig.profile):
            known = sorted({name for ps in mig.CATALOGUE.values() for name in ps})
            out.append(
                f'{where}.mig.profile: "{p.mig.profile}" is not a MIG profile of any GPU model; known: {", ".join(known)}'
            )
    return out


def _class_problem(
    out: list[str], where: str, kind: str, cls: str | None, classes: set[str]
) -> None:
    name = cls or kind
    if name not in classes:
        field = "priority_class" if cls else "kind"
        out.append(
            f'{where}.{field}: "{name}" is not a priority class; known: {", ".join(sorted(classes))}'
        )


def parse_scenario(data: Any, source: str | None = None) -> Snapshot:
    """A validated scenario as the policy's Snapshot; InvalidInput lists every problem."""
    if not isinstance(data, dict):
        raise InvalidInput(
            "a scenario is a mapping with now, nodes, teams, running, pending", source
        )
    try:
        sc = Scenario.model_validate(data)
    except ValidationError as exc:
        raise InvalidInput(validation_problems(exc, Scenario), source) from None
    problems = _cross_problems(sc)
    if problems:
        raise InvalidInput(problems, source)
    return to_snapshot(sc)


def to_snapshot(sc: Scenario) -> Snapshot:
    classes = {c.name: c for c in sc.priority_classes}
    nodes = tuple(
        build.node(n.name, n.cpus, n.memory, n.gpus, topology=n.topology) for n in sc.nodes
    )
    carved = {
        (n.name, g.index): {s.start: s.profile for s in g.mig or []}
        for n in sc.nodes
        for g in n.gpus
    }
    running = []
    for r in sc.running:
        cls = classes[r.priority_class or r.kind]
        slots = (MigSlot(s.gpu, carved[(r.node, s.gpu)][s.start], s.start) for s in r.mig)
        running.append(
            build.running(
                r.id,
                r.team,
                cls.name,
                r,
                cls.defaults,
                node=r.node,
                gpus=r.gpus,
                mig=slots,
                time_limit=r.time_limit,
                started_at=r.started_at,
                checkpoint_at=r.checkpoint_at,
                stopping_for=r.stopping_for,
                grace_s=r.grace_period,
                parts=r.parts,
            )
        )
    pending = []
    for p in sc.pending:
        cls = classes[p.priority_class or p.kind]
        pending.append(
            build.pending(
                p.id,
                p.team,
                cls.name,
                p,
                cls.defaults,
                time_limit=p.time_limit,
                submitted_at=p.submitted_at,
                blocked_by_dependency=p.blocked_by_dependency,
                held=p.held,
            )
        )
    teams = tuple(Team(t.name, dict(t.guarantee), dict(t.limit)) for t in sc.teams)
    return Snapshot(
        now=sc.now,
        nodes=nodes,
        running=tuple(running),
        pending=tuple(pending),
        teams=teams,
        classes=rules_from_classes(sc.priority_classes),
    )


def load_scenario(path: str | Path) -> Snapshot:
    return parse_scenario(load_yaml(path), str(path))
