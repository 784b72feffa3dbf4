"""Why a job waits, with numbers; and whether any node could ever hold it.

The policy decides with short reason codes (``Resources``, ``Priority``, ...), fast
and shared between alike jobs. What a person needs is the number behind the code:
which resource is short, by how much, and where the most of it is free. ``explain``
turns the codes of one pass into that text, from the same snapshot and the pass's
own starts (pure: no I/O, no clock but the snapshot's); ``never_fits`` says what no
node of the cluster could hold at all, which the daemon refuses at submit (as
Slurm refuses "Requested node configuration is not available").
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass, replace
from datetime import UTC, datetime

from mlq.executor import mig
from mlq.executor.units import format_cpus, format_size
from mlq.scheduler.snapshot import (
    Decisions,
    JobId,
    Node,
    PendingJob,
    PriorityRule,
    Reason,
    ReasonCode,
    Snapshot,
)


@dataclass
class _Free:
    """What one node has free after the pass: CPUs, memory, idle whole GPUs per
    model, idle MIG slices per profile."""

    node: str
    cpus: int
    memory: int
    gpus: dict[str, int]
    slices: dict[str, int]


def free_room(snap: Snapshot, decisions: Decisions | None = None) -> list[_Free]:
    """Each node's free room once the running jobs and the pass's starts hold theirs."""
    out: dict[str, _Free] = {}
    held_gpus: dict[str, set[int]] = {}
    held_slices: dict[str, set[tuple[int, int]]] = {}
    for n in snap.nodes:
        out[n.name] = _Free(n.name, n.cpus, n.memory, {}, {})
        held_gpus[n.name] = set()
        held_slices[n.name] = set()
    pending = {p.id: p for p in snap.pending}
    holders = [(r.node, r.cpus, r.memory, r.gpus, r.mig) for r in snap.running]
    for s in decisions.starts if decisions else ():
        p = pending.get(s.job)
        if p is not None:
            holders.append((s.node, p.cpus, p.memory, s.gpus, s.mig))
    for node, cpus, memory, gpus, slices in holders:
        f = out.get(node)
        if f is None:
            continue
        f.cpus -= cpus
        f.memory -= memory
        held_gpus[node].update(gpus)
        held_slices[node].update((m.gpu, m.start) for m in slices)
    for n in snap.nodes:
        f = out[n.name]
        for g in n.gpus:
            if g.mig is None:
                if g.index not in held_gpus[n.name]:
                    f.gpus[g.model] = f.gpus.get(g.model, 0) + 1
            else:
                for profile, start in g.mig:
                    if (g.index, start) not in held_slices[n.name]:
                        f.slices[profile] = f.slices.get(profile, 0) + 1
    return list(out.values())


def _needs(j: PendingJob) -> list[tuple[str, int]]:
    """(resource, amount) the job needs on one node."""
    needs = [("cpu", j.cpus), ("memory", j.memory)]
    if j.gpus:
        needs.append((f"gpu:{j.gpu_model}" if j.gpu_model else "gpu", j.gpus))
    if j.mig is not None:
        needs.append((f"mig:{j.mig.profile}", j.mig.count))
    return needs


def _amount(f: _Free, resource: str) -> int:
    if resource == "cpu":
        return f.cpus
    if resource == "memory":
        return f.memory
    if resource == "gpu":
        return sum(f.gpus.values())
    if resource.startswith("gpu:"):
        return f.gpus.get(resource[4:], 0)
    return f.slices.get(resource[4:], 0)


def _show(resource: str, n: int) -> str:
    if resource == "cpu":
        return format_cpus(max(n, 0))
    if resource == "memory":
        return format_size(max(n, 0))
    return str(max(n, 0))


def resources_reason(j: PendingJob, room: list[_Free]) -> Reason:
    """``Resources: gpu 2 > 0 free (largest free on vm)``, or which ones no single
    node has free together."""
    needs = _needs(j)
    for res, want in needs:
        if not want:
            continue
        best = max(room, key=lambda f: _amount(f, res), default=None)
        have = _amount(best, res) if best else 0
        if want > have:
            where = best.node if best and have > 0 else None
            return Reason(ReasonCode.RESOURCES, res, _show(res, want), _show(res, have), where)
    asked = ", ".join(f"{r} {_show(r, n)}" for r, n in needs if n)
    return Reason(ReasonCode.RESOURCES, asked)


def min_run_reason(j: PendingJob, snap: Snapshot, rules: dict[str, PriorityRule]) -> Reason | None:
    """``MinRunTime: job 12 may be preempted from 14:05`` when the room the job needs
    is held by jobs it may preempt that are still inside their minimum run time."""
    rule = rules.get(j.priority_class)
    if rule is None or not rule.preempts:
        return None
    protected = []
    for r in snap.running:
        other = rules.get(r.priority_class)
        if other is None or r.priority_class not in rule.preempts or not other.preemptible:
            continue
        until = r.started_at + other.min_run_time
        if other.min_run_time and until > snap.now:
            protected.append((until, r))
    if not protected:
        return None
    until, r = min(protected, key=lambda x: x[0])
    at = datetime.fromtimestamp(until, UTC).strftime("%H:%M:%S UTC")
    return Reason(ReasonCode.MIN_RUN_TIME, r.id, at)


def explain(snap: Snapshot, decisions: Decisions) -> dict[JobId, str]:
    """The pass's reasons with their numbers (the policy's codes, detailed)."""
    room: list[_Free] | None = None
    rules = {c.name: c for c in snap.classes}
    pending = {p.id: p for p in snap.pending}
    memo: dict[tuple, str] = {}
    out: dict[JobId, str] = {}
    for job_id, reason in decisions.reasons.items():
        j = pending.get(job_id)
        if reason != ReasonCode.RESOURCES.value or j is None:
            out[job_id] = reason
            continue
        key = (j.priority_class, *(_needs(j)))
        text = memo.get(key)
        if text is None:
            if room is None:
                room = free_room(snap, decisions)
            text = memo[key] = min_run_reason(j, snap, rules) or resources_reason(j, room)
        out[job_id] = text
    return out


def never_fits(j: PendingJob, nodes: Iterable[Node]) -> str | None:
    """What no node could ever hold, as ``field: amount ... (largest: node with N)``;
    for a multi-node job, also fewer nodes that could hold a part than it has parts."""
    nodes = list(nodes)
    if not nodes:
        return None
    if j.nodes > 1:
        part = replace(j, nodes=1)
        if (why := never_fits(part, nodes)) is not None:
            return why
        able = sum(1 for n in nodes if never_fits(part, [n]) is None)
        if able < j.nodes:
            return (
                f"resources.nodes: {j.nodes} parts, each on its own node, but {able} of the "
                f"cluster's {len(nodes)} nodes could hold one"
            )
        return None

    def largest(value, what: str, show) -> str:
        best = max(nodes, key=value)
        return f"{show(value(best))} on {best.name}" if value(best) else f"no node has {what}"

    if all(j.cpus > n.cpus for n in nodes):
        best = largest(lambda n: n.cpus, "CPUs", format_cpus)
        return f"resources.cpus: {format_cpus(j.cpus)} is more than any node has (largest: {best})"
    if all(j.memory > n.memory for n in nodes):
        best = largest(lambda n: n.memory, "memory", format_size)
        return (
            f"resources.memory: {format_size(j.memory)} is more than any node has (largest: {best})"
        )
    if j.gpus:

        def whole(n: Node) -> int:
            return sum(
                1
                for g in n.gpus
                if g.mig is None and (j.gpu_model is None or g.model == j.gpu_model)
            )

        if all(j.gpus > whole(n) for n in nodes):
            what = f"{j.gpu_model} GPUs" if j.gpu_model else "GPUs"
            best = largest(whole, f"whole {what}", str)
            return f"resources.gpus: {j.gpus} is more than any node has (largest: {best})"
    if j.mig is not None:

        def slots(n: Node) -> int:
            count = 0
            for g in n.gpus:
                if g.mig is None:
                    continue
                have = sum(1 for p, _ in g.mig if p == j.mig.profile)
                possible = len(mig.valid_starts(g.model, j.mig.profile)) if n.can_carve else 0
                count += max(have, possible)
            return count

        if all(j.mig.count > slots(n) for n in nodes):
            best = largest(slots, f"MIG {j.mig.profile} slices", str)
            return (
                f"resources.mig: {j.mig.count} x {j.mig.profile} is more than any node could "
                f"hold (largest: {best})"
            )
    if all(not (j.cpus <= n.cpus and j.memory <= n.memory) for n in nodes):
        return "resources: no node has the CPUs and the memory asked for together"
    return None
