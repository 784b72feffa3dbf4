"""The scheduling policy: one pure function from a snapshot to decisions.

``decide(snapshot)`` reads as Kueue's cycle does, one step a line:

1. copy the snapshot's free room into an index (placement.Room) and charge every
   running job to its team's usage;
2. order the pending jobs: class value, then the team's dominant share of its
   guarantee (recomputed as the pass starts jobs), then submission time;
3. for each job: Held and Dependency first; then the team's limit (a job over it may
   only preempt its own team's lower jobs); then a start on free room, packed onto the
   fullest node; else preemption (class rules, or reclaim of a guarantee from
   borrowers); else it waits for Resources and, if it is the first such job, holds an
   EASY backfill reservation that every later job must not delay.

No I/O, no clock, no randomness: the same snapshot gives the same decisions.
docs/scheduling.md states every rule as implemented.
"""

from __future__ import annotations

import heapq
import math
from collections import deque

from mlq.scheduler import quota
from mlq.scheduler.placement import NodeRoom, Request, Room, canonical, fit_with_freed, take_slices
from mlq.scheduler.preemption import Held, VictimSet, id_key, victims_on_node
from mlq.scheduler.snapshot import (
    Decisions,
    JobId,
    MigSlot,
    PendingJob,
    Preemption,
    PriorityRule,
    Snapshot,
    Start,
    Team,
)

DEFAULT_RULES = (
    PriorityRule("inference", 1000, frozenset({"training", "batch"}), preemptible=False),
    PriorityRule("training", 500, frozenset({"batch"})),
    PriorityRule("batch", 100),
)
# Once a victim set of one job is found, look at this many more candidate nodes for a
# cheaper one before settling (bounds the search on large clusters; see the docs).
PREEMPT_LOOKAHEAD = 32


class _Pass:
    """The working state of one decision."""

    def __init__(self, snap: Snapshot) -> None:
        self.now = snap.now
        self.rules = {r.name: r for r in (snap.classes or DEFAULT_RULES)}
        self.teams = {t.name: t for t in snap.teams}
        self.room = Room(snap.nodes)
        self.usage: dict[str, dict[str, float]] = {}
        self.held: list[list[Held]] = [[] for _ in self.room.nodes]
        self.stopping: dict[JobId, list[Held]] = {}
        # node index -> (end, gpus, slots, cpu, mem) started or claimed in this pass
        self.added: dict[int, list[tuple[float, tuple, tuple, int, int]]] = {}
        self.starts: list[Start] = []
        self.preemptions: list[Preemption] = []
        self.reasons: dict[JobId, str] = {}
        self.head: tuple[float, int | None] | None = None  # (shadow time, reserved node)
        self.place_failed: set[tuple] = set()
        self.preempt_failed: set[tuple] = set()
        for r in snap.running:
            self._charge_running(r)
        self.room.index_all()

    # -- step 1: what is held ---------------------------------------------------------

    def rule(self, name: str) -> PriorityRule:
        return self.rules.get(name) or PriorityRule(name, 0)

    def team(self, name: str) -> Team:
        return self.teams.get(name) or Team(name)

    def team_usage(self, name: str) -> dict[str, float]:
        return self.usage.setdefault(name, {})

    def _charge_running(self, r) -> None:
        n = self.room.by_name.get(r.node)
        if n is None:  # a job on a node that left the snapshot holds nothing we can give
            return
        if r.mig:
            demand = quota.mig_demand([s.profile for s in r.mig], r.cpus, r.memory)
        else:
            model = n.models.get(r.gpus[0], "") if r.gpus else ""
            demand = quota.whole_gpu_demand(len(r.gpus), model, r.cpus, r.memory)
        rule = self.rule(r.priority_class)
        end = r.started_at + r.time_limit if r.time_limit is not None else math.inf
        since = r.checkpoint_at if r.checkpoint_at is not None else r.started_at
        h = Held(r, rule, n.i, demand, end, lost=max(0.0, self.now - since))
        self.held[n.i].append(h)
        quota.add(self.team_usage(r.team), demand)
        self.room.hold(n, r.gpus, r.mig, r.cpus, r.memory)
        if r.stopping_for is not None:
            self.stopping.setdefault(r.stopping_for, []).append(h)

    # -- step 2: the order --------------------------------------------------------------

    def share(self, team: str) -> float:
        return quota.dominant_share(self.team_usage(team), self.team(team).guarantee)

    def order(self, pending: tuple[PendingJob, ...]):
        levels: dict[int, dict[str, list[PendingJob]]] = {}
        for j in pending:
            levels.setdefault(self.rule(j.priority_class).value, {}).setdefault(j.team, []).append(
                j
            )
        for value in sorted(levels, reverse=True):
            queues = {
                t: deque(sorted(js, key=lambda j: (j.submitted_at, id_key(j.id))))
                for t, js in levels[value].items()
            }
            heap = [
                (self.share(t), q[0].submitted_at, id_key(q[0].id), t) for t, q in queues.items()
            ]
            heapq.heapify(heap)
            while heap:
                _, _, _, t = heapq.heappop(heap)
                q = queues[t]
                yield q.popleft()
                if q:
                    heapq.heappush(heap, (self.share(t), q[0].submitted_at, id_key(q[0].id), t))

    # -- step 3: each job ---------------------------------------------------------------

    def run(self, pending: tuple[PendingJob, ...]) -> Decisions:
        for j in self.order(pending):
            self.reasons[j.id] = ""  # keep queue order; filled below unless it starts
            reason = self.consider(j)
            if reason is None:
                del self.reasons[j.id]
            else:
                self.reasons[j.id] = reason
        return Decisions(tuple(self.starts), tuple(self.preemptions), dict(self.reasons))

    def consider(self, j: PendingJob) -> str | None:
        """Start, preempt for, or give the reason ``j`` waits (None when it starts)."""
        if j.held:
            return "Held"
        if j.blocked_by_dependency:
            return "Dependency"
        rule = self.rule(j.priority_class)
        team = self.team(j.team)
        req = Request(
            gpus=j.gpus if not j.mig else 0,
            model=canonical(j.gpu_model) if j.gpu_model else None,
            profile=j.mig.profile if j.mig else None,
            count=j.mig.count if j.mig else 0,
            cpus=j.cpus,
            memory=j.memory,
        )
        already = [h for h in self.stopping.get(j.id, ()) if not h.chosen]
        usage = dict(self.team_usage(j.team))
        for h in already:  # victims stopping for j free their team's usage for j
            if h.job.team == j.team:
                quota.add(usage, h.demand, -1)
        demands = self.demands(j, req)  # model (or None) -> demand, only models within limit
        allowed = {
            m: d for m, d in demands.items() if quota.over_limit(usage, d, team.limit) is None
        }

        # backfill: after the first job blocked on Resources, a job must not delay it
        avoid = -1
        if self.head is not None:
            shadow, reserved = self.head
            ends_in_time = j.time_limit is not None and self.now + j.time_limit <= shadow
            if not ends_in_time:
                if reserved is None:
                    return "Priority"
                avoid = reserved

        if not allowed:
            first = next(iter(demands.values()))
            key, used, limit = quota.over_limit(usage, first, team.limit)  # type: ignore[misc]
            vs = self.preempt(j, rule, req, list(demands), usage, avoid, already, own_team=True)
            if vs is not None:
                return self.commit_preemption(j, req, vs)
            return quota.quota_reason(j.team, key, used, limit)

        models = [m for m in allowed if m is not None]
        placed = self.place_now(req, models, avoid)
        if placed is not None:
            self.commit_start(j, req, placed, allowed)
            return None
        reclaim = quota.within_guarantee(usage, next(iter(allowed.values())), team.guarantee)
        if rule.preempts or reclaim or already:
            vs = self.preempt(
                j, rule, req, models, usage, avoid, already, own_team=False, reclaim=reclaim
            )
            if vs is not None:
                return self.commit_preemption(j, req, vs)
        if avoid >= 0 and fit_with_freed(self.room.nodes[avoid], req, models, [], [], 0, 0):
            return "Priority"  # it would fit, but only on the room the head job waits for
        if self.head is None:
            self.head = self.reservation(req, models)
        return "Resources"

    def demands(self, j: PendingJob, req: Request) -> dict[str | None, quota.Demand]:
        if req.profile:
            return {None: quota.mig_demand([req.profile] * req.count, req.cpus, req.memory)}
        if req.gpus:
            models = [req.model] if req.model else self.room.whole_models or [""]
            return {m: quota.whole_gpu_demand(req.gpus, m, req.cpus, req.memory) for m in models}
        return {None: quota.whole_gpu_demand(0, "", req.cpus, req.memory)}

    # -- starting on free room ----------------------------------------------------------

    def place_now(self, req: Request, models: list[str], avoid: int):
        key = (req, tuple(models), avoid)
        if key in self.place_failed:
            return None
        room = self.room
        got = None
        if req.profile:
            n = room.find_slices(req.profile, req.count, req.cpus, req.memory, avoid)
            if n is not None:
                got = (n, None)
        elif req.gpus:
            found = room.find_whole(req.gpus, models, req.cpus, req.memory, avoid)
            if found is not None:
                got = found
        else:
            n = room.find_cpu(req.cpus, req.memory, avoid)
            if n is not None:
                got = (n, None)
        if got is None:
            # room only shrinks during a pass, so the same shape will not fit later
            self.place_failed.add(key)
        return got

    def commit_start(self, j: PendingJob, req: Request, placed, allowed) -> None:
        n, model = placed
        gpus: tuple[int, ...] = ()
        slots: tuple[MigSlot, ...] = ()
        if req.profile:
            slots = tuple(take_slices(n, req.profile, req.count))
        elif req.gpus:
            gpus = tuple(n.free[model][: req.gpus])
        self.room.hold(n, gpus, slots, req.cpus, req.memory)
        self.room.reindex(n)
        quota.add(self.team_usage(j.team), allowed[model if req.gpus else None])
        end = self.now + j.time_limit if j.time_limit is not None else math.inf
        self.added.setdefault(n.i, []).append((end, gpus, slots, req.cpus, req.memory))
        self.starts.append(Start(j.id, n.name, gpus, slots))

    # -- preemption ---------------------------------------------------------------------

    def preempt(
        self,
        j: PendingJob,
        rule: PriorityRule,
        req: Request,
        models: list,
        usage: dict[str, float],
        avoid: int,
        already: list[Held],
        own_team: bool,
        reclaim: bool = False,
    ) -> VictimSet | None:
        """The cheapest victim set on one node, or None."""
        memo = (
            req,
            tuple(models),
            avoid,
            rule.name,
            j.team if (own_team or reclaim) else None,
            own_team,
        )
        if not already and memo in self.preempt_failed:
            return None
        team = self.team(j.team)
        whole_models = [m for m in models if m is not None]

        def eligible(h: Held) -> bool:
            if h.chosen or h.job.stopping_for is not None or not h.rule.preemptible:
                return False
            if self.now - h.job.started_at < h.rule.min_run_time:
                return False
            if own_team:
                return h.job.team == j.team and h.rule.name in rule.preempts
            if h.rule.name in rule.preempts:
                return True
            return reclaim and h.job.team != j.team and self.borrowed(h)

        def quota_ok(chosen: list[Held], model: str | None) -> bool:
            if not own_team:
                return True
            u = dict(usage)
            for h in chosen:
                quota.add(u, h.demand, -1)
            d = self.demands(j, req)
            demand = d.get(model) if model in d else next(iter(d.values()))
            return quota.over_limit(u, demand, team.limit) is None

        already_nodes = {h.node for h in already}
        best: VictimSet | None = None
        since_found = 0
        for i, held in enumerate(self.held):
            if i == avoid or (not held and i not in already_nodes):
                continue
            mine = [h for h in already if h.node == i]
            cands = [(self.victim_key(h), h) for h in held if eligible(h)]
            if not cands and not mine:
                continue
            n = self.room.nodes[i]
            if not self.could_fit(n, req, whole_models, mine, [h for _, h in cands]):
                continue
            vs = victims_on_node(n, req, whole_models, cands, mine, quota_ok)
            if vs is not None and (best is None or vs.cost() < best.cost()):
                best = vs
            if best is not None:
                if not best.victims:
                    break
                since_found += 1
                if since_found > PREEMPT_LOOKAHEAD:
                    break
        if best is None and not already:
            self.preempt_failed.add(memo)
        return best

    def could_fit(self, n: NodeRoom, req: Request, models: list[str], mine, cands) -> bool:
        """A cheap upper bound: would the job fit if every candidate stopped?"""
        pool = mine + cands
        if n.free_cpu + sum(h.job.cpus for h in pool) < req.cpus:
            return False
        if n.free_mem + sum(h.job.memory for h in pool) < req.memory:
            return False
        if req.gpus:
            freed = sum(1 for h in pool for g in h.job.gpus if n.models.get(g) in models)
            return max((len(n.free.get(m, ())) for m in models), default=0) + freed >= req.gpus
        return True

    def victim_key(self, h: Held) -> tuple:
        """Borrowers' jobs first, then the lowest class, then the least work lost."""
        return (0 if self.borrowed(h) else 1, h.rule.value, h.lost, id_key(h.id))

    def borrowed(self, h: Held) -> bool:
        t = self.team(h.job.team)
        return quota.is_borrowed(self.team_usage(h.job.team), h.demand, t.guarantee)

    def commit_preemption(self, j: PendingJob, req: Request, vs: VictimSet) -> str:
        n = vs.node
        gone = vs.already + vs.victims
        held_gpus = {g for h in gone for g in h.job.gpus}
        held_slots = {(s.gpu, s.start) for h in gone for s in h.job.mig}
        # claim the free part of the room the job will take, so nobody else takes it
        gpus = [g for g in vs.gpus if g not in held_gpus]
        slots = [s for s in vs.mig if (s.gpu, s.start) not in held_slots]
        cpu = max(0, req.cpus - vs.freed_cpu)
        mem = max(0, req.memory - vs.freed_mem)
        self.room.hold(n, gpus, slots, cpu, mem)
        self.room.reindex(n)
        for h in vs.victims:
            h.chosen = True
            quota.add(self.team_usage(h.job.team), h.demand, -1)
            self.preemptions.append(Preemption(h.id, j.id))
        for h in vs.already:
            h.chosen = True
        model = n.models.get(vs.gpus[0]) if vs.gpus else None
        d = self.demands(j, req)
        quota.add(self.team_usage(j.team), d.get(model) or next(iter(d.values())))
        end = self.now + j.time_limit if j.time_limit is not None else math.inf
        self.added.setdefault(n.i, []).append(
            (end, tuple(vs.gpus), tuple(vs.mig), req.cpus, req.memory)
        )
        names = ",".join(str(h.id) for h in sorted(gone, key=lambda h: id_key(h.id)))
        return f"PreemptionPending {names}"

    # -- backfill reservation -------------------------------------------------------------

    def reservation(self, req: Request, models: list[str]) -> tuple[float, int | None]:
        """The head job's earliest start by running jobs' time limits, and the node."""
        best: tuple[float, int | None] = (math.inf, None)
        for n in self.room.nodes:
            events = [
                (h.end, h.job.gpus, h.job.mig, h.job.cpus, h.job.memory)
                for h in self.held[n.i]
                if not h.chosen and h.job.stopping_for is None and h.end < best[0]
            ]
            events += [e for e in self.added.get(n.i, ()) if e[0] < best[0]]
            if not events:
                continue
            events.sort(key=lambda e: e[0])
            gpus: list[int] = []
            slots: list[MigSlot] = []
            cpu = mem = 0
            for end, g, s, c, m in events:
                gpus.extend(g)
                slots.extend(s)
                cpu += c
                mem += m
                if fit_with_freed(n, req, models, gpus, slots, cpu, mem) is not None:
                    if (max(end, self.now), n.i) < (
                        best[0],
                        best[1] if best[1] is not None else math.inf,
                    ):
                        best = (max(end, self.now), n.i)
                    break
        return best


def decide(snapshot: Snapshot) -> Decisions:
    """Which pending jobs start where, which running jobs stop for whom, and why every
    other pending job waits."""
    return _Pass(snapshot).run(snapshot.pending)
