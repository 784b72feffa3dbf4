"""Choosing victims: the smallest set of running jobs on one node whose room lets a
pending job start, preferring borrowers' jobs, then the lowest class, then the least
work lost; any victim the job does not need is dropped from the set.

Pure helpers over the policy's working copy (placement.Room); the policy decides who
may be a victim (class rules, reclaim, limits) and passes the candidates in.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass, field
from operator import itemgetter

from mlq.scheduler.placement import NodeRoom, Request, fit_with_freed
from mlq.scheduler.quota import Demand
from mlq.scheduler.snapshot import JobId, MigSlot, PriorityRule, RunningJob


@dataclass(slots=True, eq=False)
class Held:
    """A running job as the policy sees it during one decision."""

    job: RunningJob
    rule: PriorityRule
    node: int  # index into Room.nodes
    demand: Demand
    end: float  # estimated end by its time limit (inf when it has none)
    chosen: bool = False  # became a victim during this decision
    lost: float = 0.0  # seconds of work lost if stopped now
    cover: list[str] | None = None  # the team's guarantee keys that cover it (quota.py)
    rank: tuple = ()  # (class value, work lost, id_key): its victim order after "borrowed"

    @property
    def id(self) -> JobId:
        return self.job.id


def id_key(job_id: JobId) -> tuple:
    """Sort ints numerically and strings lexically, ints first."""
    return (0, job_id, "") if isinstance(job_id, int) else (1, 0, str(job_id))


@dataclass(slots=True)
class VictimSet:
    node: NodeRoom
    victims: list[Held]  # new victims to stop
    gpus: tuple[int, ...]
    mig: tuple[MigSlot, ...]
    freed_cpu: int = 0
    freed_mem: int = 0
    already: list[Held] = field(default_factory=list)  # stopping for this job already
    _cost: tuple | None = None

    def cost(self) -> tuple:
        """Fewer victims, then the room that frees soonest (the victims' longest grace
        period: the job starts once the last one has stopped), then less work lost, then
        the fuller node. Kept once computed: the search compares sets while the room
        stands still."""
        if self._cost is None:
            free = sum(len(v) for v in self.node.free.values())
            grace = max((v.job.grace_s for v in self.victims), default=0.0)
            lost = sum(v.lost for v in self.victims)
            self._cost = (len(self.victims), grace, lost, free, self.node.i)
        return self._cost


def _freed(held: list[Held]) -> tuple[list[int], list[MigSlot], int, int]:
    gpus: list[int] = []
    slots: list[MigSlot] = []
    cpu = mem = 0
    for h in held:
        gpus.extend(h.job.gpus)
        slots.extend(h.job.mig)
        cpu += h.job.cpus
        mem += h.job.memory
    return gpus, slots, cpu, mem


def victims_on_node(
    node: NodeRoom,
    req: Request,
    models: list[str],
    candidates: list[tuple[tuple, Held]],
    already: list[Held],
    quota_ok: Callable[[list[Held], str | None], bool] | None,
    valid: Callable[[Held, list[Held]], bool] | None = None,
) -> VictimSet | None:
    """Greedy in preference order until the job fits, then drop every victim it does not
    need (trying the least preferred first, as Kueue's minimal preemption does).

    ``candidates`` are (preference key, job) pairs already filtered for eligibility;
    ``quota_ok(victims, model)`` says whether the job's team ends within its limit (or
    guarantee) with those victims gone (None: nothing to check); ``valid(job, chosen)``
    says whether a candidate may still join once ``chosen`` are gone (Kueue's
    candidateIsValid: a team back within its guarantee no longer lends its other jobs;
    None: every candidate stays valid). Dropping a victim again only gives its team
    back usage, so the victims kept stay valid.
    """

    def fits(chosen: list[Held]):
        """The devices the job would get with ``chosen`` stopped, and the CPUs and memory
        they free; None if it would not fit."""
        gpus, slots, cpu, mem = _freed(already + chosen if already else chosen)
        got = fit_with_freed(node, req, models, gpus, slots, cpu, mem)
        if got is None:
            return None
        if quota_ok is not None:
            model = node.models.get(got[0][0]) if got[0] else None
            if not quota_ok(chosen, model):
                return None
        return got[0], got[1], cpu, mem

    # without victims: for whole GPUs with nothing stopping, it cannot fit unless one
    # model has enough free GPUs (the usual case: the search comes after no free fit)
    maybe = already or not req.gpus or req.profile
    if not maybe:
        free = node.free
        for m in models:
            if len(free.get(m, ())) >= req.gpus:
                maybe = True
                break
    if maybe:
        got = fits([])
        if got is not None:
            return VictimSet(node, [], got[0], got[1], already=already)
    candidates.sort(key=itemgetter(0))
    chosen: list[Held] = []
    for _, h in candidates:
        if valid is not None and not valid(h, chosen):
            continue
        chosen.append(h)
        got = fits(chosen)
        if got is not None:
            break
    else:
        return None
    # drop what is not needed: the last one added was needed; try the others from the
    # least preferred back to the most preferred
    for h in list(reversed(chosen[:-1])):
        trial = [c for c in chosen if c is not h]
        if (g := fits(trial)) is not None:
            chosen, got = trial, g
    return VictimSet(node, chosen, got[0], got[1], got[2], got[3], already)
