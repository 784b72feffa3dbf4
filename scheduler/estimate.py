"""When will a pending job start? (``mlq queue --start``, Slurm's ``squeue --start``.)

Pure, like the policy it runs: from a snapshot, play the queue forward with nothing
new arriving and every running job ending at its time limit (the same bound backfill
reserves by), asking ``policy.decide`` at each end what would start; a job's estimate
is the time it starts in that play. Preemption is played as the policy decides it:
the victims end at once (their grace) and are not requeued. It is an estimate:
jobs end before their limits (then starts come sooner), and jobs submitted later
with a higher class or a lower fair share go first (then later).

Bounded: the play stops after ``max_steps`` decisions or at ``horizon`` seconds;
jobs that have not started by then get no estimate (None), as squeue prints N/A.
"""

from __future__ import annotations

import dataclasses
import heapq
import math

from mlq.scheduler import build
from mlq.scheduler.policy import decide
from mlq.scheduler.snapshot import JobId, RunningJob, Snapshot

HORIZON_S = 30 * 86400.0
MAX_STEPS = 400


def estimate_starts(
    snap: Snapshot,
    horizon: float = HORIZON_S,
    max_steps: int = MAX_STEPS,
    used: float = 1.0,
) -> dict[JobId, float | None]:
    """Each pending job's estimated start (snapshot time; None: not within the play).
    A job the policy would start now gets ``snap.now``. ``used``: the share of its
    time limit a job is expected to run (1: all of it, backfill's bound; the daemon
    passes what its finished jobs used, ``accounting.limit_used``)."""

    def _end(r: RunningJob) -> float:
        if r.stopping_for is not None:
            return r.started_at  # a victim already stopping: gone within its grace
        if r.time_limit is None:
            return math.inf
        return max(r.started_at + used * r.time_limit, snap.now + 1.0)

    pending = {p.id: p for p in snap.pending}
    running = list(snap.running)
    out: dict[JobId, float | None] = dict.fromkeys(pending)
    now = snap.now
    for _ in range(max_steps):
        if not pending or now > snap.now + horizon:
            break
        cur = dataclasses.replace(
            snap, now=now, running=tuple(running), pending=tuple(pending.values())
        )
        d = decide(cur)
        victims = {p.victim for p in d.preemptions}
        if victims:
            running = [r for r in running if r.id not in victims]
        for s in d.starts:
            p = pending.get(s.job)
            if p is None:
                continue
            if out[s.job] is None:
                out[s.job] = now
            running.append(build.started(p, s, now))
            if s.rank == s.parts - 1:  # every part placed
                pending.pop(s.job, None)
        if victims:
            continue  # decide again at once: the room the victims held is free now
        ends = [e for e in (_end(r) for r in running) if e > now]
        if not ends:
            break
        now = heapq.nsmallest(1, ends)[0]
        running = [r for r in running if _end(r) > now]
    return out
