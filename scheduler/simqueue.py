"""The simulator's pending queue, and which of its jobs can matter to a decision.

On a contended replay most pending jobs wait at their team's limit, and at every event
the policy would look at each of them again to give the same answer. A job is *inert*
in a pass when nothing it could do there changes another job's fate:

- its team has a limit, and the job is over it (for every GPU model it may take) on the
  team's usage when the pass starts;
- the team's usage cannot drop during the pass: no pending job's class preempts a class
  the team runs (its own jobs included), and the team borrows nothing that a reclaim
  could take (every running job is covered by its guarantee, none of it over);
- it is not the first such job of its class and shape in its team's queue order
  (``policy.queue_key``): that one may hold the team's quota reservation, so it goes in
  whenever another job of the team does;
- or the team could take it, but not before ``n`` jobs of its class and shape that are
  ahead of it with a time limit as short or shorter, where ``n`` bounds how many such
  jobs the team's free quota takes (``_Group.may_start``).

The policy gives an inert job a QuotaLimit (or Priority) reason and changes nothing:
its usage only grows in the pass, so it stays over its limit; its own preemption
search finds no victim of its team; it never holds the cluster's backfill reservation.
So leaving inert jobs out of the snapshot gives the same starts and preemptions, in
work proportional to the jobs that can move (tests/policy/test_simulate_fast.py runs
both ways on a trace and compares every decision).

Exclusion must be sound, inclusion need not be: where float sums could differ from the
policy's (gpu-equivalents of MIG slices), the tests lean towards including.
"""

from __future__ import annotations

import bisect
import heapq
import math
from collections.abc import Iterable
from dataclasses import dataclass, field

from mlq.scheduler import quota
from mlq.scheduler.placement import Room
from mlq.scheduler.policy import DEFAULT_RULES, queue_key
from mlq.scheduler.snapshot import JobId, Node, PendingJob, PriorityRule, RunningJob, Team

# keys whose sums are not whole numbers: compared with a margin towards "not inert"
_INEXACT = {"gpu-equivalent"}
_EPS = 1e-9  # the policy's own tolerance (quota.over_limit)
_MARGIN = 1e-7


@dataclass(slots=True)
class _Group:
    """The pending jobs of one team, class and request shape, in queue order."""

    demands: tuple[quota.Demand, ...]  # one per GPU model the jobs may take
    jobs: dict[JobId, PendingJob] = field(default_factory=dict)
    # (queue key, time limit, id) sorted; entries of jobs no longer here are skipped
    queue: list[tuple[tuple, float, JobId]] = field(default_factory=list)
    min_limit: float = math.inf  # a lower bound on the jobs' time limits
    first: PendingJob | None = None  # head(), until the group changes

    def add(self, key: tuple, j: PendingJob) -> None:
        limit = j.time_limit if j.time_limit is not None else math.inf
        self.jobs[j.id] = j
        self.first = None
        entry = (key, limit, j.id)
        at = bisect.bisect_left(self.queue, entry)
        if at == len(self.queue) or self.queue[at] != entry:  # a requeued job's entry stays
            self.queue.insert(at, entry)
        self.min_limit = min(self.min_limit, limit)

    def live(self) -> list[tuple[tuple, float, JobId]]:
        if len(self.queue) > 2 * len(self.jobs) + 16:
            self.queue = [e for e in self.queue if e[2] in self.jobs]
            if not self.jobs:
                self.min_limit = math.inf
        return self.queue

    def head(self) -> PendingJob:
        """The first job in queue order."""
        if self.first is None or self.first.id not in self.jobs:
            for _, _, jid in self.live():
                if jid in self.jobs:
                    self.first = self.jobs[jid]
                    break
            else:
                raise LookupError("empty group")
        return self.first

    def may_start(self, n: float) -> list[PendingJob]:
        """The jobs that could take the team's quota in a pass where at most ``n`` of this
        group can: a job goes only if fewer than ``n`` jobs ahead of it have a time limit
        as short or shorter. (Within a group only the time limit tells jobs apart, and a
        shorter limit never makes a start harder; so if a job ahead with a limit as short
        did not start, this one does not either, and if ``n`` did, the quota is gone.)"""
        jobs = self.jobs
        if n >= len(jobs):
            return list(jobs.values())
        out: list[PendingJob] = []
        shortest: list[float] = []  # max-heap (negated) of the n shortest limits ahead
        for _, limit, jid in self.live():
            if jid not in jobs:
                continue
            if len(shortest) < n:
                out.append(jobs[jid])
                heapq.heappush(shortest, -limit)
                continue
            nth = -shortest[0]
            if limit < nth:
                out.append(jobs[jid])
                heapq.heapreplace(shortest, -limit)
            elif nth <= self.min_limit:
                break  # no later job has a shorter limit than the n ahead
        return out


def _over(usage: dict[str, float], demand: quota.Demand, limit: dict[str, float]) -> bool:
    """Over ``limit`` for certain (the policy's test, minus a margin on inexact keys)."""
    for key, amount in demand:
        if amount and key in limit:
            margin = _MARGIN if key in _INEXACT else 0.0
            if usage.get(key, 0.0) + amount > limit[key] + _EPS + margin:
                return True
    return False


class SimQueue:
    """Pending jobs by team, class and shape, with each team's running jobs counted."""

    def __init__(
        self, nodes: Iterable[Node], teams: Iterable[Team], rules: Iterable[PriorityRule]
    ) -> None:
        self.teams = {t.name: t for t in teams}
        self.rules = {r.name: r for r in (tuple(rules) or DEFAULT_RULES)}
        nodes = tuple(nodes)
        self.whole_models = Room(nodes).whole_models or [""]
        self.model_of = {(n.name, g.index): g.model for n in nodes for g in n.gpus}
        self.groups: dict[str, dict[tuple, _Group]] = {}
        self.where: dict[JobId, _Group] = {}
        self.pending_classes: dict[str, int] = {}
        # per team: running demand shapes and their counts, running classes, how many
        # running jobs its guarantee does not cover, and its usage (None: to recompute)
        self.shapes: dict[str, dict[quota.Demand, int]] = {}
        self.classes: dict[str, dict[str, int]] = {}
        self.uncovered: dict[str, int] = {}
        self._usage: dict[str, dict[str, float] | None] = {}
        self._preempted_by_pending: set[str] | None = set()

    def __len__(self) -> int:
        return len(self.where)

    def __contains__(self, jid: JobId) -> bool:
        return jid in self.where

    # -- pending ----------------------------------------------------------------------

    def _demands(self, j: PendingJob) -> tuple[quota.Demand, ...]:
        """One per GPU model the job may take; a multi-node job's are all its parts'."""
        if j.mig:
            got = (quota.mig_demand([j.mig.profile] * j.mig.count, j.cpus, j.memory),)
        elif j.gpus:
            models = [j.gpu_model] if j.gpu_model else self.whole_models
            got = tuple(quota.whole_gpu_demand(j.gpus, m, j.cpus, j.memory) for m in models)
        else:
            got = (quota.whole_gpu_demand(0, "", j.cpus, j.memory),)
        return got if j.nodes == 1 else tuple(quota.scale(d, j.nodes) for d in got)

    def add(self, j: PendingJob) -> None:
        rule = self.rule(j.priority_class)
        gkey = (j.priority_class, j.gpus, j.gpu_model, j.mig, j.cpus, j.memory, j.nodes)
        team = self.groups.setdefault(j.team, {})
        g = team.get(gkey)
        if g is None:
            g = team[gkey] = _Group(self._demands(j))
        g.add(queue_key(rule, j), j)
        self.where[j.id] = g
        n = self.pending_classes.get(j.priority_class, 0)
        self.pending_classes[j.priority_class] = n + 1
        if n == 0:
            self._preempted_by_pending = None

    def pop(self, jid: JobId) -> PendingJob:
        g = self.where.pop(jid)
        j = g.jobs.pop(jid)
        n = self.pending_classes[j.priority_class] - 1
        if n:
            self.pending_classes[j.priority_class] = n
        else:
            del self.pending_classes[j.priority_class]
            self._preempted_by_pending = None
        return j

    def rule(self, name: str) -> PriorityRule:
        return self.rules.get(name) or PriorityRule(name, 0)

    def all(self) -> tuple[PendingJob, ...]:
        return tuple(
            j for team in self.groups.values() for g in team.values() for j in g.jobs.values()
        )

    # -- running ----------------------------------------------------------------------

    def _running_demand(self, r: RunningJob) -> quota.Demand:
        if r.mig:
            return quota.mig_demand([s.profile for s in r.mig], r.cpus, r.memory)
        model = self.model_of.get((r.node, r.gpus[0]), "") if r.gpus else ""
        return quota.whole_gpu_demand(len(r.gpus), model, r.cpus, r.memory)

    def running(self, r: RunningJob, sign: int) -> None:
        """Count a job that starts (+1) or ends (-1) against its team."""
        d = self._running_demand(r)
        shapes = self.shapes.setdefault(r.team, {})
        shapes[d] = shapes.get(d, 0) + sign
        if not shapes[d]:
            del shapes[d]
        classes = self.classes.setdefault(r.team, {})
        classes[r.priority_class] = classes.get(r.priority_class, 0) + sign
        if not classes[r.priority_class]:
            del classes[r.priority_class]
        t = self.teams.get(r.team)
        if t is None or quota.covering_keys(d, t.guarantee) is None:
            self.uncovered[r.team] = self.uncovered.get(r.team, 0) + sign
        self._usage[r.team] = None

    def usage(self, team: str) -> dict[str, float]:
        got = self._usage.get(team)
        if got is None:
            got = {}
            for d, count in self.shapes.get(team, {}).items():
                quota.add(got, d, count)
            self._usage[team] = got
        return got

    def _reducible(self, team: Team) -> bool:
        """Whether the team's usage might drop in a pass (a preemption or reclaim)."""
        if self._preempted_by_pending is None:
            self._preempted_by_pending = {
                c for p in self.pending_classes for c in self.rule(p).preempts
            }
        if any(c in self._preempted_by_pending for c in self.classes.get(team.name, ())):
            return True
        if self.uncovered.get(team.name):
            return True
        usage = self.usage(team.name)
        for key, g in team.guarantee.items():
            margin = _MARGIN if key in _INEXACT else 0.0
            if usage.get(key, 0.0) > g + _EPS - margin:
                return True
        return False

    # -- the snapshot's pending jobs -----------------------------------------------------

    def time_sensitive(self) -> bool:
        """Whether a later decision on the same jobs could preempt what this one could
        not: a class some pending job may take (or reclaim) has a minimum run time."""
        return any(r.min_run_time and r.preemptible for r in self.rules.values())

    def _starts_bound(self, g: _Group, usage: dict[str, float], limit: dict[str, float]) -> float:
        """At most how many of the group's jobs the team's quota takes now (any model)."""
        best = 0.0
        for d in g.demands:
            n = math.inf
            for key, amount in d:
                if amount and key in limit:
                    margin = _MARGIN if key in _INEXACT else 0.0
                    room = limit[key] - usage.get(key, 0.0) + _EPS + margin
                    n = min(n, math.floor(room / amount) if room >= 0 else 0)
            best = max(best, n)
        return best

    def relevant(self) -> list[PendingJob]:
        """The pending jobs a decision must see: all but the inert ones."""
        out: list[PendingJob] = []
        for name, groups in self.groups.items():
            t = self.teams.get(name)
            if t is None or not t.limit or self._reducible(t):
                for g in groups.values():
                    out.extend(g.jobs.values())
                continue
            usage = self.usage(name)
            limit = t.limit
            heads: list[PendingJob] = []
            some = False
            for g in groups.values():
                if not g.jobs:
                    continue
                n = self._starts_bound(g, usage, limit)
                if n > 0:
                    got = g.may_start(n)
                    out.extend(got)
                    some = some or bool(got)
                else:
                    heads.append(g.head())
            if some:
                # the first of each shape the quota cannot take: one of them may hold the
                # team's quota reservation (which one depends on the pass's rounds)
                out.extend(heads)
        return out
