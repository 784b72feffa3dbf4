"""What the policy sees of the store: the daemon's snapshot of one pass.

Active jobs (rows and their specs) become the policy's PendingJob and RunningJob
through ``scheduler/build.py``, the node through its ``NodeView``. A pending job
whose image is not unpacked yet is left out (the executor prepares it meanwhile)
and gets its reason here; one whose image cannot be used is reported to fail.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from mlq.executor.asuser import HostUser, supplementary_groups
from mlq.executor.interface import Executor
from mlq.scheduler import build, states
from mlq.scheduler.daemon import dependencies, gangs
from mlq.scheduler.daemon.specs import SpecCache
from mlq.scheduler.snapshot import Gpu, Node, Reason, ReasonCode, Snapshot, Team, rules_from_classes
from mlq.scheduler.store import Store


@dataclass
class NodeView:
    """This node as the loop sees it: capacity from the config, GPUs from the executor."""

    name: str
    cpus: int
    memory: int
    gpus: Any  # mlq.executor.gpus.NodeGpus
    can_carve: bool = True  # may carve MIG slices now (scheduler/daemon/carving.py)
    schedulable: bool = True  # false: cordoned, offered nothing new
    topology: str = ""  # its switches, outermost first (gang.py)
    _node: tuple[Any, Node, Any] | None = field(default=None, repr=False, compare=False)

    def snapshot_node(self) -> Node:
        """The same ``Node`` object while nothing of it changed: the placement keeps
        what it derives from a node's GPU layout by the object (placement.py)."""
        key = (self.name, self.cpus, self.memory, self.can_carve, id(self.gpus))
        if self._node is not None and self._node[0] == key and self._node[2] is self.gpus:
            return self._node[1]
        node = Node(
            name=self.name,
            cpus=self.cpus,
            memory=self.memory,
            can_carve=self.can_carve,
            gpus=tuple(Gpu(g.index, g.model, g.mig) for g in self.gpus.shapes()),
            topology=self.topology,
        )
        self._node = (key, node, self.gpus)
        return node


@dataclass
class View:
    """One pass's snapshot, the rows behind it, and the pending jobs it left out."""

    snapshot: Snapshot
    jobs: dict[int, Any]
    waiting: dict[int, str] = field(default_factory=dict)  # job -> reason (its image)
    parts: dict[int, list[Any]] = field(default_factory=dict)  # a multi-node job's rows


def view(
    store: Store,
    executor: Executor | None,
    specs: SpecCache,
    nodes: tuple[Node, ...],
    active: list[Any],
    deps: dict[int, dependencies.Seen],
    now: float,
    image_failed: Callable[[Any, str], None],
    built: dict[int, tuple[object, object]] | None = None,
) -> View:
    """``built``: the loop's cache of what each row became, by job id: a row it kept
    since the last pass (the same object) becomes the same PendingJob or RunningJob
    again without being built (a pass over 10,000 waiting jobs reads and builds only
    what changed). Dropped whenever the classes change."""
    listed = store.classes()
    classes = {c.name: c for c in listed}
    cache: dict[int, tuple[object, object]] = {} if built is None else built
    if cache.get(-1, (None,))[0] != listed:  # a class changed (store.classes() is a copy)
        cache.clear()
        cache[-1] = (listed, None)
    seen: set[int] = {-1}
    running, pending = [], []
    waiting: dict[int, str] = {}
    checked: dict[tuple[str, int, int], Any] = {}
    parts = gangs.by_gang(active)
    for j in active:
        spec = specs.of(j)
        defaults = classes[j.priority_class].defaults if j.priority_class in classes else None
        # a multi-node job: its rank 0 row stands for it while every part is pending
        if j.state == states.PENDING and j.gang_id is not None:
            if j.gang_rank or not gangs.schedulable(parts[j.gang_id], spec.resources.nodes):
                continue
        if j.state == states.PENDING:
            # images are checked on this machine's node; an agent prepares its own
            # before it launches (the job stays STARTING meanwhile)
            if spec.image != "host" and not j.held and executor is not None:
                key = (spec.image, j.uid, j.gid)
                verdict = checked.get(key)
                if verdict is None:
                    user = HostUser(j.uid, j.gid, supplementary_groups(j.uid, j.gid))
                    verdict = checked[key] = executor.image(spec.image, user)
                if verdict.error is not None:
                    image_failed(j, verdict.error)
                    continue
                if verdict.waiting:
                    waiting[j.id] = Reason(ReasonCode.IMAGE_PENDING, spec.image)
                    continue
            blocked = j.depends_on != "[]" and dependencies.blocked(j, deps)
            seen.add(j.id)
            got = cache.get(j.id)
            if got is not None and got[0] is j and got[1].blocked_by_dependency == blocked:
                pending.append(got[1])
                continue
            pending.append(
                build.pending(
                    j.id,
                    j.team,
                    j.priority_class,
                    spec.resources,
                    defaults or spec.resources,
                    time_limit=spec.time_limit,
                    submitted_at=j.submitted_at,
                    blocked_by_dependency=blocked,
                    held=j.held,
                    hold_note=hold_note(j.user, j.held_by) if j.held else "",
                    array_id=j.array_id,
                    array_limit=spec.array_limit or 0,
                    user=j.user,
                )
            )
            cache[j.id] = (j, pending[-1])
        else:
            seen.add(j.id)
            got = cache.get(j.id)
            if got is not None and got[0] is j and j.started_at:
                running.append(got[1])
                continue
            held_gpus, slots = build.held_slices(json.loads(j.devices) if j.devices else {})
            running.append(
                build.running(
                    j.gang_id if j.gang_id is not None else j.id,
                    j.team,
                    j.priority_class,
                    spec.resources,
                    defaults or spec.resources,
                    node=j.node or "",
                    gpus=held_gpus,
                    mig=slots,
                    time_limit=spec.time_limit,
                    started_at=j.started_at or now,
                    checkpoint_at=j.checkpoint_at,
                    stopping_for=j.stop_for if j.state == states.STOPPING else None,
                    grace_s=spec.preemption.grace_period,
                    parts=spec.resources.nodes,
                    array_id=j.array_id,
                    user=j.user,
                )
            )
            cache[j.id] = (j, running[-1])
    for k in [k for k in cache if k not in seen]:
        del cache[k]
    snap = Snapshot(
        now=now,
        # a cordoned or down node holds its running jobs but is offered nothing new
        nodes=nodes,
        running=tuple(running),
        pending=tuple(pending),
        teams=snapshot_teams(store.teams()),
        classes=rules_from_classes(store.classes()),
    )
    return View(snap, {j.id: j for j in active}, waiting, parts)


def hold_note(owner: str, held_by: str) -> str:
    """The end of a held job's reason: ``Held by bob``, or ``Held by admin carol`` (a
    hold its owner may not release: mlq hold)."""
    if not held_by:
        return ""
    return f"by {held_by}" if held_by == owner else f"by admin {held_by}"


def snapshot_teams(teams: list[Any]) -> tuple[Team, ...]:
    """The store's teams as the policy sees them (quotas and per-user limits)."""
    return tuple(Team(t.name, t.guarantee, t.limit, t.per_user) for t in teams)
