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

from mlq.scheduler import gang, quota
from mlq.scheduler.cluster import DEFAULT_CLASSES
from mlq.scheduler.placement import NodeRoom, Request, Room, canonical, fit_with_freed, take_slices
from mlq.scheduler.preemption import Held, VictimSet, id_key, victims_on_node
from mlq.scheduler.snapshot import (
    Decisions,
    JobId,
    MigSlot,
    PendingJob,
    Preemption,
    PriorityRule,
    Reason,
    ReasonCode,
    Snapshot,
    Start,
    Team,
    rules_from_classes,
)

# the reasons without numbers, made once: the policy hands out the same value each time
HELD, DEPENDENCY, PRIORITY, RESOURCES = (
    Reason(c)
    for c in (ReasonCode.HELD, ReasonCode.DEPENDENCY, ReasonCode.PRIORITY, ReasonCode.RESOURCES)
)
NO_TEAM = Team("")  # a job of a team the snapshot does not list: no per-user limits


def gpu_equivalents(j: PendingJob) -> float:
    """What a job holds in GPUs (all its parts): whole GPUs, slices as their share."""
    per_part = j.gpus or (quota.mig_share(j.mig.profile) * j.mig.count if j.mig else 0.0)
    return per_part * j.nodes


def _num(v: float) -> str:
    return f"{v:g}" if v != int(v) else str(int(v))


# A snapshot without classes gets the cluster config's default classes (one home)
DEFAULT_RULES = rules_from_classes(DEFAULT_CLASSES)
# The "short-first" order: a job's place in its class's queue is its submission time
# plus LIMIT_WEIGHT seconds per second of its time limit (NO_LIMIT_S without one), so a
# shorter job goes before an older, longer one, and every job gains on newer ones as it
# waits (no starvation: docs/scheduling.md "Order").
LIMIT_WEIGHT = 8.0
NO_LIMIT_S = 7 * 86400


def _short_first(j: PendingJob) -> float:
    limit = j.time_limit if j.time_limit is not None else NO_LIMIT_S
    return j.submitted_at + LIMIT_WEIGHT * limit


def queue_key(rule: PriorityRule, j: PendingJob) -> tuple:
    """Where ``j`` stands in its team's queue (smaller first): what order() sorts by."""
    return (
        -rule.value,
        _short_first(j) if rule.order == "short-first" else j.submitted_at,
        id_key(j.id),
    )


NOWHERE: frozenset[int] = frozenset()  # no node to avoid

# Once a victim set of one job is found, look at this many more candidate nodes for a
# cheaper one before settling (bounds the search on large clusters; see the docs).
PREEMPT_LOOKAHEAD = 4


class _Pass:
    """The working state of one decision."""

    def __init__(self, snap: Snapshot) -> None:
        self.now = snap.now
        self.rules = {r.name: r for r in (snap.classes or DEFAULT_RULES)}
        self.teams = {t.name: t for t in snap.teams}
        self.room = Room(snap.nodes)
        self.usage: dict[str, dict[str, float]] = {}
        # running jobs per node; their Held views are built when a node is first examined
        self.jobs_on: list[list] = [[] for _ in self.room.nodes]
        self._held: dict[int, list[Held]] = {}
        self.chosen_ids: set[JobId] = set()
        self._shapes: dict[tuple, tuple[quota.Demand, list[str] | None]] = {}
        self.stopping: dict[JobId, list[Held]] = {}
        # node index -> (end, gpus, slots, cpu, mem) started or claimed in this pass
        self.added: dict[int, list[tuple[float, tuple, tuple, int, int]]] = {}
        self.starts: list[Start] = []
        self.preemptions: list[Preemption] = []
        self.reasons: dict[JobId, str] = {}
        # the backfill reservation: (shadow time, the nodes reserved for the head job)
        self.head: tuple[float, frozenset[int] | None] | None = None
        self.place_failed: set[tuple] = set()
        self.preempt_failed: set[tuple] = set()
        self.hopeless: dict[tuple, str] = {}  # (shape, class, team, avoid, models) -> reason
        self.demand_cache: dict[Request, dict[str | None, quota.Demand]] = {}
        # search key -> nodes still worth looking at for it (room and victims only shrink
        # during a pass, so a node that cannot help a shape now will not help it later)
        self.preempt_nodes: dict[tuple, list[int]] = {}
        self.over: dict[str, set[str]] = {}  # team -> keys it holds over its guarantee
        self.shares: dict[str, float] = {}  # team -> dominant share, dropped on change
        self.by_usage: dict[str, dict] = {}  # team -> request -> allowed, see cached()
        self.requests: dict[JobId, Request] = {}
        self.request_of: dict[tuple, Request] = {}  # a job's request fields -> Request
        self.per_model_limit: dict[str, bool] = {}  # team -> its limit names a gpu:<model>
        # alike(job) -> (reason, head version, team usage version): see settled_alike()
        self.verdicts: dict[tuple, tuple[str, int, int]] = {}
        self.head_version = 0
        self.team_version: dict[str, int] = {}
        self.covers: dict[tuple[str, Request], tuple | None] = {}
        # node index -> (class, team, covered by its guarantee) -> devices held by jobs
        # that may still be victims: a cheap bound on what preemption could free there
        self.victim_gpus: list[dict[tuple[str, str, bool], int]] = [{} for _ in self.room.nodes]
        self.uncovered: set[str] = set()  # teams running jobs their guarantee does not cover
        # (class, team) -> devices of its jobs that may still be victims, all and those
        # its guarantee covers: built when a search first asks (victim_totals)
        self.class_victims: dict[tuple[str, str], list[int]] | None = None
        # team -> its quota reservation [shadow time, usage then, the head's demand, the
        # head's id], or None when its head can never fit; set by the team's first job in
        # queue order that its quota could not take when the pass began (note_head)
        self.team_heads: dict[str, list | None] = {}
        self.team_added: dict[str, list[tuple[float, quota.Demand]]] = {}  # this pass's starts
        self._team_jobs: dict[str, list[tuple]] | None = None  # see team_jobs()
        self.gang_nodes: dict[JobId, list[int]] = {}  # a multi-node running job's nodes
        # array id -> its jobs running, or started or preempted for in this pass: for
        # throttled arrays (array: 0-99%4); built when a throttled job is first seen
        self._array_running: dict[JobId, int] | None = None
        self._array_waited: set[JobId] = set()
        # (team, user) -> [jobs, gpu-equivalents] running, started or preempted for in
        # this pass: for teams with per-user limits; built when first asked
        self._user_use: dict[tuple[str, str], list[float]] | None = None
        self._user_waited: set[JobId] = set()
        self._snap = snap
        self._charge_running(snap.running)
        for t in self.usage:
            self.charge(t, ())
        self.start_usage = {t: dict(u) for t, u in self.usage.items()}
        self.team_limits = any(t.limit for t in snap.teams)
        self.over_at_start: dict[str, dict[Request, bool]] = {}  # team -> request -> over
        self.room.index_all()

    # -- step 1: what is held ---------------------------------------------------------

    def rule(self, name: str) -> PriorityRule:
        got = self.rules.get(name)
        if got is None:  # a class the snapshot does not define: lowest, preempts nothing
            got = self.rules[name] = PriorityRule(name, 0)
        return got

    def team(self, name: str) -> Team:
        got = self.teams.get(name)
        if got is None:  # a team without quotas
            got = self.teams[name] = Team(name)
        return got

    def team_usage(self, name: str) -> dict[str, float]:
        return self.usage.setdefault(name, {})

    def charge(self, team: str, demand: quota.Demand, sign: float = 1.0) -> None:
        """Change a team's usage and refresh the keys it holds over its guarantee."""
        usage = self.team_usage(team)
        quota.add(usage, demand, sign)
        g = (self.teams.get(team) or self.team(team)).guarantee
        self.over[team] = {k for k, v in g.items() if usage.get(k, 0.0) > v + 1e-9} if g else set()
        self.shares.pop(team, None)
        self.by_usage.pop(team, None)
        self.team_version[team] = self.team_version.get(team, 0) + 1

    def cached(self, team: str) -> dict:
        """Per-team answers that depend only on the team's usage; dropped on change."""
        got = self.by_usage.get(team)
        if got is None:
            got = self.by_usage[team] = {}
        return got

    def _shape(self, r, n: NodeRoom) -> tuple:
        if r.mig:
            return (r.team, tuple(s.profile for s in r.mig), r.cpus, r.memory)
        model = n.models.get(r.gpus[0], "") if r.gpus else ""
        return (r.team, len(r.gpus), model, r.cpus, r.memory)

    def _demand(self, shape: tuple) -> tuple[quota.Demand, list[str] | None]:
        """A running job's demand and the guarantee keys that cover it, per (team, shape)."""
        got = self._shapes.get(shape)
        if got is None:
            team, what, *rest = shape
            cpus, memory = rest[-2], rest[-1]
            if isinstance(what, tuple):
                demand = quota.mig_demand(what, cpus, memory)
            else:
                demand = quota.whole_gpu_demand(what, rest[0], cpus, memory)
            got = self._shapes[shape] = (
                demand,
                quota.covering_keys(demand, self.team(team).guarantee),
            )
        return got

    def _charge_running(self, running) -> None:
        """Hold every running job's devices and charge its team. This runs for every job
        on every decision, so it does only counting; per-job views are built lazily."""
        by_name = self.room.by_name
        # shape -> [running jobs of it, covered by its team's guarantee, devices each]:
        # one dict lookup per job (hashing the shape is a good part of the cost)
        totals: dict[tuple, list] = {}
        stopping_nodes: set[int] = set()
        now = self.now
        rules = self.rules
        jobs_on = self.jobs_on
        victim_gpus = self.victim_gpus
        hold = self.room.hold
        for r in running:
            n = by_name.get(r.node)
            if n is None:  # a job on a node that left the snapshot holds nothing we can give
                continue
            gpus = r.gpus
            if r.mig:
                shape: tuple = (r.team, tuple(s.profile for s in r.mig), r.cpus, r.memory)
                hold(n, (), r.mig, 0, 0)
            else:
                model = n.models.get(gpus[0], "") if gpus else ""
                shape = (r.team, len(gpus), model, r.cpus, r.memory)
                if gpus:
                    free = n.free.get(model)
                    if free:
                        for idx in gpus:
                            if idx in free:
                                free.remove(idx)
            n.free_cpu -= r.cpus
            n.free_mem -= r.memory
            jobs_on[n.i].append(r)
            if r.parts > 1:  # the nodes of each multi-node job's parts
                self.gang_nodes.setdefault(r.id, []).append(n.i)
            got = totals.get(shape)
            if got is None:
                cover = self._demand(shape)[1]
                devices = (shape[1] if isinstance(shape[1], int) else len(shape[1])) or 1
                got = totals[shape] = [0, cover is not None, devices]
            got[0] += 1
            if r.stopping_for is not None:
                stopping_nodes.add(n.i)
                continue
            rule = rules.get(r.priority_class) or self.rule(r.priority_class)
            if rule.preemptible and (
                not rule.min_run_time or now - r.started_at >= rule.min_run_time
            ):
                # it may be a victim: count its devices per (class, team, covered) on
                # its node, the preemption search's cheap bound on what a node can free
                if not got[1]:
                    self.uncovered.add(r.team)
                counts = victim_gpus[n.i]
                vkey = (rule.name, r.team, got[1])
                counts[vkey] = counts.get(vkey, 0) + got[2]
        for shape, (count, _, _) in totals.items():
            quota.add(self.team_usage(shape[0]), self._demand(shape)[0], count)
        for i in sorted(stopping_nodes):
            for h in self.held_on(i):
                if h.job.stopping_for is not None:
                    self.stopping.setdefault(h.job.stopping_for, []).append(h)

    def held_on(self, i: int) -> list[Held]:
        """The running jobs of node ``i`` as the policy's mutable views (built once)."""
        held = self._held.get(i)
        if held is None:
            held = self._held[i] = []
            n = self.room.nodes[i]
            for r in self.jobs_on[i]:
                demand, cover = self._demand(self._shape(r, n))
                end = r.started_at + r.time_limit if r.time_limit is not None else math.inf
                since = r.checkpoint_at if r.checkpoint_at is not None else r.started_at
                # a multi-node job loses the work of every part
                lost = max(0.0, self.now - since) * r.parts
                rule = self.rule(r.priority_class)
                held.append(
                    Held(
                        r,
                        rule,
                        i,
                        demand,
                        end,
                        lost=lost,
                        cover=cover,
                        rank=(rule.value, lost, id_key(r.id)),
                    )
                )
        return held

    # -- step 2: the order --------------------------------------------------------------

    def request(self, j: PendingJob) -> Request:
        got = self.requests.get(j.id)
        if got is None:
            # one Request object per distinct job shape: a queue of 10^5 jobs asks for a
            # few hundred shapes, so building each once is cheaper, and every live
            # Request (a tuple subclass, which the cyclic GC never untracks) makes the
            # collector's passes longer
            shape = (j.gpus, j.gpu_model, j.mig, j.cpus, j.memory)
            got = self.request_of.get(shape)
            if got is None:
                got = self.request_of[shape] = self._request(j)
            self.requests[j.id] = got
        return got

    @staticmethod
    def _request(j: PendingJob) -> Request:
        m = j.mig
        return Request(  # gpus, model, profile, count, cpus, memory (positional: cheaper)
            0 if m else j.gpus,
            canonical(j.gpu_model) if j.gpu_model else None,
            m.profile if m else None,
            m.count if m else 0,
            j.cpus,
            j.memory,
        )

    def would_borrow(self, j: PendingJob) -> bool:
        """Whether starting ``j`` would take its team past its guarantee (Kueue orders
        such jobs after those that fit within their team's guarantee)."""
        g = (self.teams.get(j.team) or self.team(j.team)).guarantee
        if not g:
            return True
        req = self.requests.get(j.id) or self.request(j)
        ck = (j.team, req) if j.nodes == 1 else (j.team, req, j.nodes)
        cover = self.covers.get(ck, False)
        if cover is False:  # the guarantee keys that cover this shape never change
            d = next(iter(self.demands(j, req).values()))
            amounts = dict(d)
            keys = quota.covering_keys(d, g)
            cover = self.covers[ck] = (
                None if keys is None else tuple((k, amounts[k], g[k]) for k in keys)
            )
        if cover is None:
            return True
        usage = self.usage.get(j.team)
        if usage is None:
            usage = self.team_usage(j.team)
        for k, amount, limit in cover:  # noqa: SIM110 (a loop, not any(): runs for most jobs)
            if usage.get(k, 0.0) + amount > limit + 1e-9:
                return True
        return False

    def share(self, team: str) -> float:
        got = self.shares.get(team)
        if got is None:
            got = self.shares[team] = quota.dominant_share(
                self.team_usage(team), self.team(team).guarantee
            )
        return got

    def defers(self, j: PendingJob) -> bool:
        """Jobs that would borrow and could be preempted wait for the second round."""
        rule = self.rules.get(j.priority_class) or self.rule(j.priority_class)
        return rule.preemptible and self.would_borrow(j)

    def order(self, pending: tuple[PendingJob, ...]):
        """Merge the teams' queues (each by class, then age) by the teams' keys; a team's
        key is recomputed whenever its head changes, so shares follow this pass's starts.

        A team's key is (-class value, share, submitted, id, team); all but the share are
        the job's own, so each job's part is built once, and the merge only looks up the
        share (cached until the team's usage changes) when the team's head changes."""
        classes = {j.priority_class for j in pending}
        value = {c: -self.rule(c).value for c in classes}
        short = {c for c in classes if self.rule(c).order == "short-first"}
        # ids of one type compare as they are; a mix of ints and strings needs id_key
        plain = all(isinstance(j.id, int) for j in pending) or all(
            isinstance(j.id, str) for j in pending
        )
        # records hold the job's index, not the job: tuples of plain values are not
        # tracked by the cyclic garbage collector, whose scans of 10^4 live records
        # would otherwise cost more than the merge itself
        by_team: dict[str, list[tuple]] = {}
        for k, j in enumerate(pending):  # k: a tie on every field keeps the input order
            c = j.priority_class
            limit = j.time_limit
            by_team.setdefault(j.team, []).append(
                (
                    value[c],
                    # _short_first(j), inline: this runs for every queued job
                    j.submitted_at + LIMIT_WEIGHT * (limit if limit is not None else NO_LIMIT_S)
                    if c in short
                    else j.submitted_at,
                    j.id if plain else id_key(j.id),
                    k,
                )
            )
        queues: dict[str, list[tuple]] = {}
        for t, recs in by_team.items():
            recs.sort()
            recs.reverse()  # the head last, so taking it is a pop()
            queues[t] = recs
        shares = self.shares
        heap = [(q[-1][0], self.share(t), q[-1][1], q[-1][2], t) for t, q in queues.items()]
        heapq.heapify(heap)
        while heap:
            t = heap[0][-1]
            q = queues[t]
            yield pending[q.pop()[-1]]
            if q:
                v, sub, idk, _ = q[-1]
                share = shares.get(t)
                if share is None:
                    share = self.share(t)
                heapq.heapreplace(heap, (v, share, sub, idk, t))
            else:
                heapq.heappop(heap)

    # -- step 3: each job ---------------------------------------------------------------

    def run(self, pending: tuple[PendingJob, ...]) -> Decisions:
        """Two rounds in queue order: first the jobs that fit within their team's
        guarantee (or cannot be preempted), then the jobs that would borrow. So room that
        a team reclaims is not taken straight back by a borrower's requeued job of a
        higher class (Kueue, too, admits non-borrowing entries first)."""
        # the second round's jobs and their alike keys, as two lists: a (job, key) pair
        # per job would be one more object for the garbage collector to track
        later: list[PendingJob] = []
        later_keys: list[tuple | None] = []
        reasons = self.reasons
        verdicts = self.verdicts
        team_version = self.team_version
        for j in self.order(pending):
            reasons[j.id] = ""  # keep queue order; filled below unless it starts
            key = self.alike(j)  # fixed for the pass: computed once, used by both rounds
            if key is not None:  # settled_alike(j, key), inline: it runs for every job
                got = verdicts.get(key)
                if (
                    got is not None
                    and got[1] == self.head_version
                    and got[2] == team_version.get(j.team, 0)
                ):
                    reasons[j.id] = got[0]
                    continue
            if self.team_limits:
                self.note_head(j)
            if not j.held and not j.blocked_by_dependency and self.defers(j):
                later.append(j)
                later_keys.append(key)
                continue
            self.settle(j, key)
        for j, key in zip(later, later_keys, strict=True):
            if key is None or not self.settled_alike(j, key):
                self.settle(j, key)
        return Decisions(tuple(self.starts), tuple(self.preemptions), dict(reasons))

    def alike(self, j: PendingJob) -> tuple | None:
        """What makes two pending jobs of one team behave the same in this pass."""
        if j.held or j.blocked_by_dependency or (self.stopping and j.id in self.stopping):
            return None
        if j.array_limit:  # its verdict hangs on its array's count too
            return None
        if j.user and self.teams.get(j.team, NO_TEAM).per_user:  # and on its user's use
            return None
        req = self.requests.get(j.id) or self.request(j)
        # a flat tuple of plain values, which the garbage collector stops tracking
        return (j.team, j.priority_class, j.time_limit, j.nodes, *req)

    def settled_alike(self, j: PendingJob, key: tuple) -> bool:
        """Give ``j`` the reason an identical job of its team got (``key``: alike(j)), if
        nothing it depends on changed since: the team's usage and the backfill head. Room
        and victims only shrink in a pass, so the verdict holds; this keeps long queues
        cheap."""
        got = self.verdicts.get(key)
        if got is None or got[1] != self.head_version or got[2] != self.team_version.get(j.team, 0):
            return False
        self.reasons[j.id] = got[0]
        return True

    def settle(self, j: PendingJob, key: tuple | None) -> None:
        reason = self.consider(j, key)
        if reason is None:
            del self.reasons[j.id]
        else:
            self.reasons[j.id] = reason

    def consider(self, j: PendingJob, like: tuple | None = None) -> str | None:
        """Start, preempt for, or give the reason ``j`` waits (None when it starts);
        ``like``: alike(j), under which the reason is kept for identical jobs."""
        if j.held:
            return Reason(ReasonCode.HELD, j.hold_note) if j.hold_note else HELD
        if j.blocked_by_dependency:
            return DEPENDENCY
        if j.array_limit and self.array_full(j):
            return Reason(ReasonCode.ARRAY_LIMIT, j.array_id, j.array_limit)
        if j.user and (over := self.over_user_limit(j)) is not None:
            return over
        if j.nodes > 1:
            return self.consider_gang(j)
        # dict lookups first, the creating methods only on a miss: this runs per job
        rule = self.rules.get(j.priority_class) or self.rule(j.priority_class)
        team = self.teams.get(j.team) or self.team(j.team)
        req = self.requests.get(j.id) or self.request(j)
        stopping = self.stopping.get(j.id) if self.stopping else None
        already = [h for h in stopping if not h.chosen] if stopping else []
        usage = self.usage.get(j.team)
        if usage is None:
            usage = self.team_usage(j.team)
        if already:  # victims stopping for j free their team's usage for j
            usage = dict(usage)
            for h in already:
                if h.job.team == j.team:
                    quota.add(usage, h.demand, -1)
        demands = self.demand_cache.get(req) or self.demands(j, req)  # model (or None) -> demand
        if not team.limit:
            allowed = demands
        elif already:
            allowed = {
                m: d for m, d in demands.items() if quota.over_limit(usage, d, team.limit) is None
            }
        else:
            cache = self.cached(j.team)  # request -> allowed, until the team's usage changes
            allowed = cache.get(req)
            if allowed is None:
                allowed = cache[req] = self.within_limit(j.team, usage, demands, team.limit)

        # the team's quota reservation (note_head): later jobs must not delay its head
        if allowed and self.team_heads:
            held = self.team_heads.get(j.team)
            if (
                held is not None
                and held[3] != j.id
                and not self.leaves_quota(j, held, allowed, team)
            ):
                return PRIORITY

        # backfill: after the first job blocked on Resources, a job must not delay it
        avoid = NOWHERE
        if self.head is not None:
            shadow, reserved = self.head
            ends_in_time = j.time_limit is not None and self.now + j.time_limit <= shadow
            if not ends_in_time:
                if reserved is None:
                    return PRIORITY
                avoid = reserved

        if not allowed:
            first = next(iter(demands.values()))
            key, used, limit = quota.over_limit(usage, first, team.limit)  # type: ignore[misc]
            held = self.team_heads.get(j.team) if self.team_heads else None
            if (
                held is not None
                and held[3] != j.id
                and not self.leaves_quota(j, held, demands, team)
            ):
                # it could not take the quota its victims would free: preempting for it
                # would only let another job of its team take the room back
                return quota.quota_reason(j.team, key, used, limit)
            models_all = list(demands)
            vs = self.preempt(j, rule, req, models_all, usage, avoid, already, own_team=True)
            if vs is None and self.may_end_within(j, rule, first):
                # its own lower-class jobs inside the guarantee, if with them gone the
                # team is within its guarantee (so at its limit when the two are equal)
                vs = self.preempt(
                    j, rule, req, models_all, usage, avoid, already, True, within=True
                )
            if vs is not None:
                return self.commit_preemption(j, req, vs)
            return quota.quota_reason(j.team, key, used, limit)

        # the same shape, class and team already found nothing this pass: room, victims
        # and the team's standing only shrink during a pass, so give the reason cheaply
        hopeless = (req, j.priority_class, j.team, avoid, len(allowed))
        if not already and hopeless in self.hopeless:
            return self.verdict(j, like, self.hopeless[hopeless])
        models = [m for m in allowed if m is not None]
        placed = self.place_now(req, models, avoid)
        if placed is not None:
            self.commit_start(j, req, placed, allowed)
            return None
        first_allowed = next(iter(allowed.values()))
        if already:
            reclaim = bool(team.guarantee) and quota.within_guarantee(
                usage, first_allowed, team.guarantee
            )
        else:
            reclaim = not self.would_borrow(j)
        if rule.preempts or reclaim or already:
            vs = self.preempt(
                j, rule, req, models, usage, avoid, already, own_team=False, reclaim=reclaim
            )
            if vs is None and not reclaim and self.may_end_within(j, rule, first_allowed):
                # Kueue's attempt without borrowing: with its own victims gone the team
                # may be back within its guarantee, and then it reclaims as well
                vs = self.preempt(
                    j, rule, req, models, usage, avoid, already, False, reclaim=True, within=True
                )
            if vs is not None:
                return self.commit_preemption(j, req, vs)
        if avoid and any(
            fit_with_freed(self.room.nodes[i], req, models, [], [], 0, 0) for i in avoid
        ):
            reason = PRIORITY  # it would fit, but only on the room the head job waits for
        else:
            reason = RESOURCES
            if self.head is None:
                self.head = self.reservation(req, models)
                self.head_version += 1
                return reason  # later jobs see a new reservation: do not reuse this verdict
        if not already:
            self.hopeless[hopeless] = reason
            self.verdict(j, like, reason)
        return reason

    def verdict(self, j: PendingJob, key: tuple | None, reason: str) -> str:
        if key is not None:
            self.verdicts[key] = (reason, self.head_version, self.team_version.get(j.team, 0))
        return reason

    def within_limit(
        self,
        team: str,
        usage: dict[str, float],
        demands: dict[str | None, quota.Demand],
        limit: dict[str, float],
    ) -> dict[str | None, quota.Demand]:
        """The demands (one per GPU model the job may take) that keep the team within
        its limit. Without a per-model limit the models' demands differ only in a key
        the limit does not name, so one check answers for all of them."""
        per_model = self.per_model_limit.get(team)
        if per_model is None:
            per_model = self.per_model_limit[team] = any(k.startswith("gpu:") for k in limit)
        if len(demands) > 1 and not per_model:
            first = next(iter(demands.values()))
            return dict(demands) if quota.over_limit(usage, first, limit) is None else {}
        return {m: d for m, d in demands.items() if quota.over_limit(usage, d, limit) is None}

    def demands(self, j: PendingJob, req: Request) -> dict[str | None, quota.Demand]:
        """What ``j`` counts against its team's quota, per GPU model it may take: a
        multi-node job counts all its parts."""
        key = req if j.nodes == 1 else (req, j.nodes)
        got = self.demand_cache.get(key)
        if got is None:
            got = self._demands(req)
            if j.nodes > 1:
                got = {m: quota.scale(d, j.nodes) for m, d in got.items()}
            self.demand_cache[key] = got  # type: ignore[index]
        return got

    def _demands(self, req: Request) -> dict[str | None, quota.Demand]:
        if req.profile:
            return {None: quota.mig_demand([req.profile] * req.count, req.cpus, req.memory)}
        if req.gpus:
            models = [req.model] if req.model else self.room.whole_models or [""]
            return {m: quota.whole_gpu_demand(req.gpus, m, req.cpus, req.memory) for m in models}
        return {None: quota.whole_gpu_demand(0, "", req.cpus, req.memory)}

    # -- starting on free room ----------------------------------------------------------

    def place_now(self, req: Request, models: list[str], avoid: frozenset[int]):
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
        self.room.reindex(n, [s.gpu for s in slots] if slots else ())
        demand = allowed[model if req.gpus else None]
        self.charge(j.team, demand)
        end = self.now + j.time_limit if j.time_limit is not None else math.inf
        self.added.setdefault(n.i, []).append((end, gpus, slots, req.cpus, req.memory))
        self.quota_taken(j, end, demand)
        self.starts.append(Start(j.id, n.name, gpus, slots))
        self.took(j)

    def array_running(self, array_id: JobId | None) -> int:
        """How many jobs of the array run now, or were started or preempted for in this
        pass."""
        if self._array_running is None:
            counts: dict[JobId, int] = {}
            for r in self._snap.running:
                if r.array_id is not None:
                    counts[r.array_id] = counts.get(r.array_id, 0) + 1
            # a job whose victims are stopping has its place already
            self._array_waited = {r.stopping_for for r in self._snap.running if r.stopping_for}
            for p in self._snap.pending:
                if p.array_id is not None and p.id in self._array_waited:
                    counts[p.array_id] = counts.get(p.array_id, 0) + 1
            self._array_running = counts
        return self._array_running.get(array_id, 0) if array_id is not None else 0

    def over_user_limit(self, j: PendingJob) -> Reason | None:
        """The reason ``j`` waits when starting it would take its user past a limit
        of its team's (``Team.per_user``)."""
        limits = self.teams.get(j.team, NO_TEAM).per_user
        if not limits or not j.user:
            return None
        jobs, gpus = self.user_uses().get((j.team, j.user), (0.0, 0.0))
        if j.id in self._user_waited:  # its own place: not counted against it
            jobs, gpus = jobs - 1, gpus - gpu_equivalents(j)
        if "jobs" in limits and jobs + 1 > limits["jobs"]:
            return Reason(ReasonCode.USER_LIMIT, j.user, "jobs", _num(jobs), _num(limits["jobs"]))
        need = gpu_equivalents(j)
        if need and "gpus" in limits and gpus + need > limits["gpus"] + 1e-9:
            return Reason(ReasonCode.USER_LIMIT, j.user, "gpus", _num(gpus), _num(limits["gpus"]))
        return None

    def user_uses(self) -> dict[tuple[str, str], list[float]]:
        """(team, user) -> [jobs, gpu-equivalents]: running, and started or preempted
        for in this pass."""
        if self._user_use is None:
            self._user_use = {}
            seen: set[JobId] = set()
            waited = {r.stopping_for for r in self._snap.running if r.stopping_for}
            for r in self._snap.running:
                if not r.user:
                    continue
                use = self._user_use.setdefault((r.team, r.user), [0.0, 0.0])
                if r.id not in seen:  # a multi-node job is a job once, its GPUs each part
                    seen.add(r.id)
                    use[0] += 1
                use[1] += len(r.gpus) + sum(quota.mig_share(m.profile) for m in r.mig)
            for p in self._snap.pending:  # a job whose victims stop has its place already
                if p.user and p.id in waited:
                    use = self._user_use.setdefault((p.team, p.user), [0.0, 0.0])
                    use[0] += 1
                    use[1] += gpu_equivalents(p)
                    self._user_waited.add(p.id)
        return self._user_use

    def array_full(self, j: PendingJob) -> bool:
        """Whether ``j``'s array runs as many as its throttle lets (``j`` not counted)."""
        n = self.array_running(j.array_id)
        return n - (j.id in self._array_waited) >= j.array_limit

    def took(self, j: PendingJob) -> None:
        """``j`` starts, or has victims stopping for it: it counts against its array's
        throttle and its user's limits from now on in this pass."""
        if j.user and self.teams.get(j.team, NO_TEAM).per_user:
            use = self.user_uses().setdefault((j.team, j.user), [0.0, 0.0])
            if j.id not in self._user_waited:  # else counted already
                use[0] += 1
                use[1] += gpu_equivalents(j)
        if j.array_limit and j.array_id is not None:
            self.array_running(j.array_id)
            assert self._array_running is not None
            if j.id in self._array_waited:  # counted already, by its stopping victims
                self._array_waited.discard(j.id)
                return
            self._array_running[j.array_id] = self._array_running.get(j.array_id, 0) + 1

    # -- the team's quota reservation ------------------------------------------------------

    def note_head(self, j: PendingJob) -> None:
        """The first job in a team's queue order that its quota could not take when the
        pass began holds the team's quota reservation: noted in the first round, where
        the job stands in the order, even when it waits for the second."""
        if j.team in self.team_heads or j.held or j.blocked_by_dependency:
            return
        team = self.teams.get(j.team) or self.team(j.team)
        if not team.limit or (self.stopping and j.id in self.stopping):
            return
        req = self.requests.get(j.id) or self.request(j)
        known = self.over_at_start.get(j.team)
        if known is None:
            known = self.over_at_start[j.team] = {}
        over = known.get(req)
        if over is None:
            start = self.start_usage.get(j.team) or {}
            over = known[req] = all(
                quota.over_limit(start, d, team.limit) is not None
                for d in self.demands(j, req).values()
            )
        if over:
            demands = self.demands(j, req)
            self.team_heads[j.team] = self.quota_reservation(j, demands, team)
            self.team_version[j.team] = self.team_version.get(j.team, 0) + 1

    def quota_reservation(self, j: PendingJob, demands: dict, team: Team) -> list | None:
        """When the team's running jobs, ending by their time limits, leave room in its
        limit for ``j``: [that time, the team's usage then, j's demand]; None if never."""
        need = next(iter(demands.values()))
        if quota.over_limit({}, need, team.limit) is not None:
            return None  # larger than the limit itself: it must not hold anyone back
        ends = list(self.team_added.get(j.team, ()))
        for r, shape in self.team_jobs(j.team):
            if r.id in self.chosen_ids:
                continue  # a victim of this pass: its team is no longer charged for it
            if r.stopping_for is not None:
                end = self.now  # leaving already
            elif r.time_limit is not None:
                end = r.started_at + r.time_limit
            else:
                end = math.inf
            ends.append((end, self._shapes[shape][0]))
        usage = dict(self.team_usage(j.team))
        ends.sort(key=lambda e: e[0])
        for k, (end, d) in enumerate(ends):
            if end == math.inf:
                break
            quota.add(usage, d, -1)
            if k + 1 < len(ends) and ends[k + 1][0] == end:
                continue  # jobs that end together free their quota together
            if quota.over_limit(usage, need, team.limit) is None:
                return [max(end, self.now), usage, need, j.id]
        return None

    def team_jobs(self, team: str) -> list[tuple]:
        """The team's running jobs with their shapes (_shape), grouped on first ask: only
        a pass with a team's quota reservation needs them."""
        got = self._team_jobs
        if got is None:
            got = self._team_jobs = {}
            for i, jobs in enumerate(self.jobs_on):
                n = self.room.nodes[i]
                for r in jobs:
                    got.setdefault(r.team, []).append((r, self._shape(r, n)))
        return got.get(team, [])

    def leaves_quota(self, j: PendingJob, held: list, allowed: dict, team: Team) -> bool:
        """Whether ``j`` may take its team's free quota while the team's head waits: it
        ends by the head's time, or the head still fits in the limit then beside it."""
        shadow, then, need, _ = held
        if j.time_limit is not None and self.now + j.time_limit <= shadow:
            return True
        usage = dict(then)
        quota.add(usage, next(iter(allowed.values())))
        return quota.over_limit(usage, need, team.limit) is None

    def quota_taken(self, j: PendingJob, end: float, demand: quota.Demand) -> None:
        """``j`` starts (or is promised room) in this pass, ending by ``end``."""
        team = j.team
        self.team_added.setdefault(team, []).append((end, demand))
        held = self.team_heads.get(team) if self.team_heads else None
        if held is not None and held[3] == j.id:
            self.team_heads[team] = None  # the head itself got its room
        elif held is not None and end > held[0]:
            quota.add(held[1], demand)  # still running when the head's time comes

    # -- preemption ---------------------------------------------------------------------

    def preempt(
        self,
        j: PendingJob,
        rule: PriorityRule,
        req: Request,
        models: list,
        usage: dict[str, float],
        avoid: frozenset[int],
        already: list[Held],
        own_team: bool,
        reclaim: bool = False,
        within: bool = False,
    ) -> VictimSet | None:
        """The cheapest victim set on one node, or None.

        Kueue's classical preemption, as if every team could borrow within the cohort.
        ``own_team``: the job is over its team's limit and takes only its own team's
        jobs. Else other teams' jobs join by class, or by ``reclaim`` (the job stays
        within its guarantee: their borrowed jobs of any class); a preemptible job that
        would borrow takes only other teams' borrowed jobs of classes it preempts.

        Its own team's jobs of classes it preempts are candidates when the job ends
        within its guarantee (``within``: the set must bring the team back inside it;
        or it is inside already) or cannot be preempted. A job that still borrows takes
        only those its team borrows: a job inside the guarantee, requeued, runs in the
        first round and would take the room back (Order 3 in docs/scheduling.md).
        Whoever's it is, a job taken because its team borrows must still be borrowed
        with the victims chosen before it gone (Kueue's candidateIsValid)."""
        # the job ends within its guarantee whatever it takes, or cannot be preempted
        free_own = not rule.preemptible or within
        if not free_own:
            free_own = not self.would_borrow(j) if own_team else reclaim
        if reclaim and not own_team and not self.borrowers_besides(j.team):
            reclaim = False  # no other team holds a borrowed job: nothing to reclaim
        memo = (
            req,
            tuple(models),
            avoid,
            rule.name,
            # its own team's jobs are candidates unlike other teams' only when it ends
            # within its guarantee and the team runs covered jobs it may preempt
            j.team
            if (
                own_team
                or reclaim
                or within
                or (free_own and rule.preemptible and self.own_candidates(j.team, rule))
            )
            else None,
            own_team,
            # the within-guarantee test depends on the team's usage, which changes
            self.team_version.get(j.team, 0) if within else -1,
        )
        if not already and memo in self.preempt_failed:
            return None
        if own_team and not already and not self.runs_any(j.team, rule.preempts):
            self.preempt_failed.add(memo)  # none of its team's jobs is of a class it takes
            return None
        team = self.team(j.team)
        whole_models = [m for m in models if m is not None]
        preemptible = rule.preemptible
        preempts = rule.preempts

        def eligible(h: Held) -> bool:
            if h.chosen or h.job.stopping_for is not None or not h.rule.preemptible:
                return False
            if self.now - h.job.started_at < h.rule.min_run_time:
                return False
            if h.job.team == j.team:
                return h.rule.name in preempts and (free_own or self.borrowed(h))
            if own_team:
                return False
            if h.rule.name in preempts:
                # a preemptible job that would borrow takes only jobs that borrow too: a
                # job within its team's guarantee would come straight back for the room
                if preemptible and not reclaim:
                    return self.borrowed(h)
                return True
            return reclaim and self.borrowed(h)

        def lends(h: Held, chosen: list[Held]) -> bool:
            """Whether a candidate taken because its team borrows still is borrowed with
            the victims chosen so far (and those already stopping for ``j``) gone."""
            if h.cover is None:
                return True
            t = h.job.team
            if t == j.team:
                if free_own:
                    return True
            elif h.rule.name in preempts and (reclaim or not preemptible):
                return True  # taken by class, borrowed or not
            gone = [c for c in chosen if c.job.team == t]
            if already:
                gone += [c for c in already if c.job.team == t]
            if not gone:
                return True  # eligible() found it borrowed on the team's usage
            u = self.usage.get(t) or {}
            g = self.team(t).guarantee
            for k in h.cover:
                left = u.get(k, 0.0)
                for c in gone:
                    for key, amount in c.demand:
                        if key == k:
                            left -= amount
                if left > g[k] + 1e-9:
                    return True
            return False

        def quota_ok(chosen: list[Held], model: str | None) -> bool:
            """With the chosen victims of its team gone, the job keeps its team within
            its guarantee (``within``) and its limit (``own_team``)."""
            u = dict(usage)
            for h in chosen:
                if h.job.team == j.team:
                    quota.add(u, h.demand, -1)
            d = self.demands(j, req)
            demand = d.get(model) if model in d else next(iter(d.values()))
            if within and not quota.within_guarantee(u, demand, team.guarantee):
                return False
            return not own_team or quota.over_limit(u, demand, team.limit) is None

        def may_free(key: tuple[str, str, bool]) -> bool:
            """Could jobs counted under this key be victims (an upper bound)?"""
            cls, t, covered = key
            if not self.rule(cls).preemptible:
                return False
            if t == j.team:
                return cls in preempts
            if own_team:
                return False
            if cls in preempts and (reclaim or not preemptible):
                return True
            if cls not in preempts and not reclaim:
                return False
            # another team's job, taken only while its team borrows
            return not covered or bool(self.over.get(t))

        # only a job taken because its team borrows needs lends(); a job that cannot be
        # preempted and does not reclaim takes every candidate by class
        valid = lends if (reclaim or preemptible) and not (own_team and free_own) else None
        best: VictimSet | None = None
        since_found = 0
        dead: set[int] = set()
        frees: dict[tuple[str, str, bool], bool] = {}  # may_free per key, for this search
        mine_nodes = list(dict.fromkeys(h.node for h in already))
        nodes = self.preempt_nodes.get(memo)
        if nodes is None:
            nodes = self.preempt_nodes[memo] = list(self.candidate_nodes(req, whole_models))
        for i in mine_nodes + nodes:
            if i in avoid:
                continue
            mine = [h for h in already if h.node == i] if already else []
            n = self.room.nodes[i]
            if not mine and req.gpus:
                potential = 0
                for k, v in self.victim_gpus[i].items():
                    if v:
                        ok = frees.get(k)
                        if ok is None:
                            ok = frees[k] = may_free(k)
                        if ok:
                            potential += v
                free = n.free
                most = 0
                for m in whole_models:
                    if m in free and len(free[m]) > most:
                        most = len(free[m])
                if potential + most < req.gpus:
                    dead.add(i)
                    continue
            held = [h for h in self.held_on(i) if eligible(h)]
            if not held and not mine:
                dead.add(i)
                continue
            if best is not None and len(best.victims) == 1 and not mine:
                # this node needs a victim too, so it wins only by losing less work
                if min(h.lost for h in held) > best.victims[0].lost:
                    since_found += 1
                    if since_found > PREEMPT_LOOKAHEAD:
                        break
                    continue
            if not self.could_fit(n, req, whole_models, mine, held):
                dead.add(i)
                continue
            cands = [(self.victim_key(h), h) for h in held]
            vs = victims_on_node(
                n,
                req,
                whole_models,
                cands,
                mine,
                quota_ok if (own_team or within) else None,
                valid,
            )
            if vs is None:
                dead.add(i)
            elif best is None or vs.cost() < best.cost():
                best = vs
            if best is not None:
                if not best.victims:
                    break
                since_found += 1
                if since_found > PREEMPT_LOOKAHEAD:
                    break
        if dead:
            self.preempt_nodes[memo] = [i for i in nodes if i not in dead]
        if best is None and not already:
            self.preempt_failed.add(memo)
        return best

    def candidate_nodes(self, req: Request, models: list[str]):
        """Nodes to look at for victims, by free room of the job's kind, most first (fewer
        victims needed), each once."""
        seen: set[int] = set()
        if req.profile:
            buckets = [self.room.slices.get(req.profile, [])]
        elif req.gpus:
            buckets = [self.room.whole[m] for m in models if m in self.room.whole]
        else:
            buckets = []
            yield from (i for i in range(len(self.room.nodes)) if i not in seen)
        top = max((len(b) for b in buckets), default=0)
        for k in range(top - 1, -1, -1):
            for b in buckets:
                if k < len(b):
                    for i in list(b[k]):
                        if i not in seen:
                            seen.add(i)
                            yield i

    def victim_totals(self) -> dict[tuple[str, str], list[int]]:
        """(class, team) -> [devices of its jobs that may still be victims, of those the
        ones its guarantee covers], summed over nodes when a search first asks."""
        totals = self.class_victims
        if totals is None:
            totals = self.class_victims = {}
            for counts in self.victim_gpus:
                for (cls, t, covered), v in counts.items():
                    if v:
                        got = totals.setdefault((cls, t), [0, 0])
                        got[0] += v
                        if covered:
                            got[1] += v
        return totals

    def own_candidates(self, team: str, rule: PriorityRule) -> bool:
        """Whether ``team`` runs jobs of classes ``rule`` preempts that its guarantee
        covers and that may still be victims (its uncovered jobs are borrowed, and
        those are candidates whoever's they are)."""
        if not rule.preempts:
            return False
        totals = self.victim_totals()
        return any(totals.get((c, team), (0, 0))[1] for c in rule.preempts)

    def runs_any(self, team: str, classes: frozenset[str]) -> bool:
        """Whether ``team`` runs jobs of these classes that may still be victims."""
        if not classes:
            return False
        totals = self.victim_totals()
        return any(totals.get((c, team), (0, 0))[0] for c in classes)

    def may_end_within(self, j: PendingJob, rule: PriorityRule, demand: quota.Demand) -> bool:
        """Whether a preemptible job that would borrow could end within its team's
        guarantee by preempting its own jobs (a cheap test: the team runs covered jobs
        of classes the job preempts, and the job alone fits the guarantee)."""
        if not rule.preemptible:
            return False  # its own jobs are candidates anyway
        g = (self.teams.get(j.team) or self.team(j.team)).guarantee
        if not g or not self.own_candidates(j.team, rule):
            return False
        return quota.within_guarantee({}, demand, g)

    def borrowers_besides(self, team: str) -> bool:
        """Whether a team other than ``team`` may hold borrowed jobs: it is over its
        guarantee in some key, or runs jobs its guarantee does not cover."""
        return any(t != team for t, keys in self.over.items() if keys) or any(
            t != team for t in self.uncovered
        )

    def could_fit(self, n: NodeRoom, req: Request, models: list[str], mine, cands) -> bool:
        """A cheap upper bound: would the job fit if every candidate stopped?"""
        cpu = mem = freed = 0
        node_models = n.models
        for pool in (mine, cands):
            for h in pool:
                job = h.job
                cpu += job.cpus
                mem += job.memory
                for g in job.gpus:
                    if node_models.get(g) in models:
                        freed += 1
        if n.free_cpu + cpu < req.cpus or n.free_mem + mem < req.memory:
            return False
        if req.gpus:
            return max((len(n.free.get(m, ())) for m in models), default=0) + freed >= req.gpus
        return True

    def victim_key(self, h: Held) -> tuple:
        """Borrowers' jobs first, then the lowest class, then the least work lost."""
        return (0 if self.borrowed(h) else 1, *h.rank)

    def borrowed(self, h: Held) -> bool:
        """Its team's guarantee does not cover it, or the team is over it in a key that does."""
        if h.cover is None:
            return True
        over = self.over.get(h.job.team)
        if over:
            for k in h.cover:  # noqa: SIM110 (a loop, not any(): runs per candidate victim)
                if k in over:
                    return True
        return False

    def commit_preemption(self, j: PendingJob, req: Request, vs: VictimSet) -> str:
        self.claim_victims(req, vs, j.id)
        self.took(j)
        n = vs.node
        model = n.models.get(vs.gpus[0]) if vs.gpus else None
        d = self.demands(j, req)
        demand = d.get(model) or next(iter(d.values()))
        self.charge(j.team, demand)
        end = self.now + j.time_limit if j.time_limit is not None else math.inf
        self.quota_taken(j, end, demand)
        self.added.setdefault(n.i, []).append(
            (end, tuple(vs.gpus), tuple(vs.mig), req.cpus, req.memory)
        )
        gone = vs.already + vs.victims
        ids = [h.id for h in sorted(gone, key=lambda h: id_key(h.id))]
        return Reason(ReasonCode.PREEMPTION_PENDING, *ids)

    def claim_victims(self, req: Request, vs: VictimSet, for_job: JobId) -> None:
        """Claim the free part of the room the job will take on ``vs.node``, so nobody
        else takes it, and mark its victims: a multi-node victim with every part."""
        n = vs.node
        gone = vs.already + vs.victims
        held_gpus = {g for h in gone for g in h.job.gpus}
        held_slots = {(s.gpu, s.start) for h in gone for s in h.job.mig}
        gpus = [g for g in vs.gpus if g not in held_gpus]
        slots = [s for s in vs.mig if (s.gpu, s.start) not in held_slots]
        cpu = max(0, req.cpus - vs.freed_cpu)
        mem = max(0, req.memory - vs.freed_mem)
        self.room.hold(n, gpus, slots, cpu, mem)
        self.room.reindex(n)
        for h in vs.victims:
            if h.chosen:  # a part of a multi-node job taken already with another part
                continue
            parts = [h]
            if h.job.parts > 1:
                parts += [
                    o
                    for i in self.gang_nodes.get(h.id, ())
                    if i != h.node
                    for o in self.held_on(i)
                    if o.id == h.id and not o.chosen
                ]
            for p in parts:
                self.take_victim(p)
            self.preemptions.append(Preemption(h.id, for_job))
        for h in vs.already:
            h.chosen = True

    def take_victim(self, h: Held) -> None:
        h.chosen = True
        self.chosen_ids.add(h.id)
        self.charge(h.job.team, h.demand, -1)
        counts = self.victim_gpus[h.node]
        devices = max(1, len(h.job.gpus) + len(h.job.mig))
        counts[(h.rule.name, h.job.team, h.cover is not None)] -= devices
        if self.class_victims is not None:
            got = self.class_victims[(h.rule.name, h.job.team)]
            got[0] -= devices
            if h.cover is not None:
                got[1] -= devices

    # -- multi-node jobs ------------------------------------------------------------------

    def consider_gang(self, j: PendingJob) -> str | None:
        """A multi-node job: every part starts in this pass, or none does. Its quota is
        all its parts'; it waits behind the backfill reservation like any job; it takes
        free nodes under the lowest common switch (gang.py), else preempts by its class
        on as many nodes as free room lacks; else it waits for Resources, naming how
        many nodes are free of how many it needs, and may hold the reservation itself
        (on the nodes that free soonest)."""
        rule = self.rule(j.priority_class)
        team = self.team(j.team)
        req = self.request(j)
        parts = j.nodes
        stopping = self.stopping.get(j.id) if self.stopping else None
        already = [h for h in stopping if not h.chosen] if stopping else []
        usage = dict(self.team_usage(j.team))
        for h in already:  # victims stopping for it free their team's usage for it
            if h.job.team == j.team:
                quota.add(usage, h.demand, -1)
        demands = self.demands(j, req)
        allowed = {
            m: d
            for m, d in demands.items()
            if not team.limit or quota.over_limit(usage, d, team.limit) is None
        }
        if allowed and self.team_heads:
            held = self.team_heads.get(j.team)
            if (
                held is not None
                and held[3] != j.id
                and not self.leaves_quota(j, held, allowed, team)
            ):
                return PRIORITY
        avoid = NOWHERE
        if self.head is not None:
            shadow, reserved = self.head
            if not (j.time_limit is not None and self.now + j.time_limit <= shadow):
                if reserved is None:
                    return PRIORITY
                avoid = reserved
        if not allowed:
            first = next(iter(demands.values()))
            key, used, limit = quota.over_limit(usage, first, team.limit)  # type: ignore[misc]
            return quota.quota_reason(j.team, key, used, limit)
        models = [m for m in allowed if m is not None]
        placed = self.place_gang(req, models, parts, avoid)
        if placed is not None:
            self.commit_gang(j, req, placed[0], placed[1], allowed)
            return None
        if already:
            # its victims are still stopping: hold what is free meanwhile, so that no
            # later job takes it (the parts start together once the victims are gone)
            for n in self.free_for_part(req, models, avoid)[:parts]:
                self.room.hold(n, (), (), req.cpus, req.memory)
                self.room.reindex(n, ())
            ids = sorted({h.id for h in already}, key=id_key)
            return Reason(ReasonCode.PREEMPTION_PENDING, *ids)
        if rule.preempts:
            found = self.preempt_gang(j, rule, req, models, usage, avoid)
            if found is not None:
                return self.commit_gang_preemption(j, req, found, allowed)
        if avoid and self.place_gang(req, models, parts, NOWHERE, dry=True) is not None:
            return PRIORITY  # it would fit, but only on room the head job waits for
        free = len(self.free_for_part(req, models, NOWHERE))
        if self.head is None:
            self.head = self.gang_reservation(req, models, parts)
            self.head_version += 1
        return Reason(ReasonCode.RESOURCES, free, parts, "nodes")

    def part_fits(self, n: NodeRoom, req: Request, model: str | None) -> bool:
        """Whether one part of ``req`` fits on ``n`` now (whole GPUs of ``model``)."""
        if n.free_cpu < req.cpus or n.free_mem < req.memory:
            return False
        if req.profile:
            return n.mig_cap.get(req.profile, 0) >= req.count
        if req.gpus:
            return len(n.free.get(model or "", ())) >= req.gpus
        return True

    def fullness(self, n: NodeRoom, req: Request, model: str | None) -> tuple:
        """Fullest first: the free room of the job's kind, then CPUs, then the index."""
        if req.profile:
            kind = n.mig_cap.get(req.profile, 0)
        else:
            kind = (
                sum(len(v) for v in n.free.values())
                if not req.gpus
                else len(n.free.get(model or "", ()))
            )
        return (kind, n.free_cpu, n.i)

    def free_for_part(self, req: Request, models: list[str], avoid: frozenset[int]) -> list:
        """The nodes where one part fits now, of the model with the most such nodes."""
        best: list = []
        for m in models or [None]:
            fits = [n for n in self.room.nodes if n.i not in avoid and self.part_fits(n, req, m)]
            if len(fits) > len(best):
                best = sorted(fits, key=lambda n, m=m: self.fullness(n, req, m))
        return best

    def place_gang(
        self,
        req: Request,
        models: list[str],
        parts: int,
        avoid: frozenset[int],
        dry: bool = False,
    ) -> tuple[list[NodeRoom], str | None] | None:
        """``parts`` nodes where a part of ``req`` fits now, all of one GPU model."""
        for m in models or [None]:
            fits = [n for n in self.room.nodes if n.i not in avoid and self.part_fits(n, req, m)]
            chosen = gang.choose(
                fits, parts, lambda n: n.topology, lambda n, m=m: self.fullness(n, req, m)
            )
            if chosen is not None:
                return chosen, m
        return None

    def hold_part(self, n: NodeRoom, req: Request, model: str | None) -> tuple[tuple, tuple]:
        """Take one part's devices, CPUs and memory on ``n`` (it fits: part_fits)."""
        gpus: tuple[int, ...] = ()
        slots: tuple[MigSlot, ...] = ()
        if req.profile:
            slots = tuple(take_slices(n, req.profile, req.count))
        elif req.gpus:
            gpus = tuple(n.free[model or ""][: req.gpus])
        self.room.hold(n, gpus, slots, req.cpus, req.memory)
        self.room.reindex(n, [s.gpu for s in slots] if slots else ())
        return gpus, slots

    def commit_gang(
        self, j: PendingJob, req: Request, nodes: list[NodeRoom], model: str | None, allowed
    ) -> None:
        end = self.now + j.time_limit if j.time_limit is not None else math.inf
        for rank, n in enumerate(nodes):
            gpus, slots = self.hold_part(n, req, model)
            self.added.setdefault(n.i, []).append((end, gpus, slots, req.cpus, req.memory))
            self.starts.append(Start(j.id, n.name, gpus, slots, rank, len(nodes)))
        demand = allowed[model if req.gpus else None]
        self.charge(j.team, demand)
        self.quota_taken(j, end, demand)
        self.took(j)

    def preempt_gang(
        self,
        j: PendingJob,
        rule: PriorityRule,
        req: Request,
        models: list[str],
        usage: dict[str, float],
        avoid: frozenset[int],
    ) -> tuple[list[NodeRoom], list[VictimSet], str | None] | None:
        """Free nodes and, for the parts they lack, a victim set each on other nodes
        (by the job's class only: a multi-node job does not reclaim a guarantee), all of
        one GPU model; None when the victims cannot make up the count."""
        for m in models or [None]:
            ms = [m] if m is not None else models
            free = [n for n in self.room.nodes if n.i not in avoid and self.part_fits(n, req, m)]
            free.sort(key=lambda n, m=m: self.fullness(n, req, m))
            free = free[: j.nodes - 1]
            taken = set(avoid) | {n.i for n in free}
            sets: list[VictimSet] = []
            while len(free) + len(sets) < j.nodes:
                vs = self.preempt(j, rule, req, ms, usage, frozenset(taken), [], own_team=False)
                if vs is None:
                    break
                sets.append(vs)
                taken.add(vs.node.i)
                sets += self.freed_with(vs, req, ms, taken)
            if len(free) + len(sets) < j.nodes:
                continue
            # a victim set whose victims no other set shares is kept only if needed; the
            # sets of one multi-node victim come first (stopping it frees all its nodes)
            ids = [{h.id for h in vs.victims} for vs in sets]
            order = sorted(
                range(len(sets)),
                key=lambda k: (
                    not any(ids[k] & ids[o] for o in range(len(sets)) if o != k),
                    sets[k].cost(),
                ),
            )
            kept = sorted(order[: j.nodes - len(free)])
            return free, [sets[k] for k in kept], m
        return None

    def freed_with(
        self, vs: VictimSet, req: Request, models: list[str], taken: set[int]
    ) -> list[VictimSet]:
        """The other nodes a multi-node victim of ``vs`` frees for a part of ``req``: one
        set each, with that victim's part there (``taken`` gains those nodes)."""
        out = []
        for h in vs.victims:
            for i in self.gang_nodes.get(h.id, ()) if h.job.parts > 1 else ():
                if i in taken:
                    continue
                part = next((o for o in self.held_on(i) if o.id == h.id and not o.chosen), None)
                if part is None:
                    continue
                n = self.room.nodes[i]
                r = part.job
                got = fit_with_freed(n, req, models, list(r.gpus), list(r.mig), r.cpus, r.memory)
                if got is not None:
                    out.append(VictimSet(n, [part], got[0], got[1], r.cpus, r.memory))
                    taken.add(i)
        return out

    def commit_gang_preemption(self, j: PendingJob, req: Request, found, allowed) -> str:
        self.took(j)
        free, sets, model = found
        end = self.now + j.time_limit if j.time_limit is not None else math.inf
        for n in free:  # claimed for the parts that start there once the victims are gone
            gpus, slots = self.hold_part(n, req, model)
            self.added.setdefault(n.i, []).append((end, gpus, slots, req.cpus, req.memory))
        for vs in sets:
            self.claim_victims(req, vs, j.id)
            self.added.setdefault(vs.node.i, []).append(
                (end, tuple(vs.gpus), tuple(vs.mig), req.cpus, req.memory)
            )
        demand = allowed[model if req.gpus else None]
        self.charge(j.team, demand)
        self.quota_taken(j, end, demand)
        ids = sorted({h.id for vs in sets for h in vs.victims}, key=id_key)
        return Reason(ReasonCode.PREEMPTION_PENDING, *ids)

    def gang_reservation(
        self, req: Request, models: list[str], parts: int
    ) -> tuple[float, frozenset[int] | None]:
        """The multi-node head job's earliest start: when ``parts`` nodes can each hold
        a part by the running jobs' time limits, and those nodes (the soonest)."""
        times = []
        for n in self.room.nodes:
            if any(self.part_fits(n, req, m) for m in models or [None]):
                times.append((self.now, n.i))
                continue
            at = self.fit_at(n, req, models, math.inf)
            if at < math.inf:
                times.append((at, n.i))
        if len(times) < parts:
            return math.inf, None
        times.sort()
        return times[parts - 1][0], frozenset(i for _, i in times[:parts])

    # -- backfill reservation -------------------------------------------------------------

    def reservation(self, req: Request, models: list[str]) -> tuple[float, frozenset[int] | None]:
        """The head job's earliest start by running jobs' time limits, and the node."""
        best: tuple[float, int | None] = (math.inf, None)
        for n in self.room.nodes:
            at = self.fit_at(n, req, models, best[0])
            if at < math.inf and (at, n.i) < (
                best[0],
                best[1] if best[1] is not None else math.inf,
            ):
                best = (at, n.i)
            if best[0] <= self.now:
                # room already free now (a job past its time limit): no later node, with
                # its higher index, can come earlier
                break
        return best[0], (None if best[1] is None else frozenset((best[1],)))

    def fit_at(self, n: NodeRoom, req: Request, models: list[str], bound: float) -> float:
        """When ``req`` fits on ``n`` as its running jobs end by their time limits (and
        this pass's starts by theirs), looking only at ends before ``bound``; inf if
        not by then."""
        # running jobs by their time limits; victims chosen now or earlier are left out
        # (their room is promised to the job they stop for)
        events = [
            (r.started_at + r.time_limit, r.gpus, r.mig, r.cpus, r.memory)
            for r in self.jobs_on[n.i]
            if r.time_limit is not None
            and r.started_at + r.time_limit < bound
            and r.stopping_for is None
            and r.id not in self.chosen_ids
        ]
        events += [e for e in self.added.get(n.i, ()) if e[0] < bound]
        if not events:
            return math.inf
        events.sort(key=lambda e: e[0])
        whole = bool(req.gpus) and not req.profile
        gpus: list[int] = []
        slots: list[MigSlot] = []
        cpu = mem = 0
        # whole GPUs: fit_with_freed's test kept incrementally (each model's free GPUs
        # plus those freed so far), not rebuilt after every event
        have = {x: set(n.free.get(x, ())) for x in models} if whole else {}
        for end, g, s, c, m in events:
            cpu += c
            mem += m
            if whole:
                for idx in g:
                    got = have.get(n.models.get(idx))
                    if got is not None:
                        got.add(idx)
                fits = (
                    n.free_cpu + cpu >= req.cpus
                    and n.free_mem + mem >= req.memory
                    and any(len(have[x]) >= req.gpus for x in models)
                )
            else:
                gpus.extend(g)
                slots.extend(s)
                fits = fit_with_freed(n, req, models, gpus, slots, cpu, mem) is not None
            if fits:
                return max(end, self.now)
        return math.inf


def team_usage(snapshot: Snapshot) -> dict[str, dict[str, float]]:
    """Each team's use of every quota key by the snapshot's running jobs: the very
    figures the policy decides by (``mlq nodes`` shows them)."""
    return {t: dict(u) for t, u in _Pass(snapshot).usage.items() if any(u.values())}


def decide(snapshot: Snapshot) -> Decisions:
    """Which pending jobs start where, which running jobs stop for whom, and why every
    other pending job waits."""
    return _Pass(snapshot).run(snapshot.pending)
