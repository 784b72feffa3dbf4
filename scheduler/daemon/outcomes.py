"""How a run ended, as the job's next state and the reason a person reads.

The executor reports an ``Outcome`` (COMPLETED, FAILED, OUT_OF_MEMORY, TIMEOUT,
STOPPED) with its exit code, signal and counters; why mlq stopped it (a
``StopCause``) is the control loop's. This module turns the two into the store's
steps; every user-facing sentence about a job's end is written here, once.
"""

from __future__ import annotations

from enum import StrEnum
from typing import Any

from mlq.executor.status import Outcome, Status
from mlq.executor.units import format_size
from mlq.scheduler import states
from mlq.scheduler.spec import JobSpec

Step = tuple[str, str, dict[str, Any]]


class StopCause(StrEnum):
    """Why mlq stopped a running job (the ``stop_cause`` column)."""

    PREEMPT = "preempt"
    CANCEL = "cancel"
    REQUEUE = "requeue"  # mlq requeue: stopped gracefully, back to PENDING


# A part of a multi-node job stopped because another part ended: its stop_cause is
# this prefix and the state the whole job ends in (the first part's), e.g.
# "part:FAILED"; after NODE_FAIL or PREEMPTED it is requeued as that part was.
PART_CAUSE = "part:"
REQUEUED_WITH_PART = (states.NODE_FAIL, states.PREEMPTED)


# what a requeued job forgets of its last run
REQUEUE_FIELDS: dict[str, Any] = {
    "node": None, "devices": None, "cgroup": None, "stop_cause": None, "stop_for": None,
    "ended_at": None, "launch": None, "stop_now": False,
}  # fmt: skip


def how(status: Status) -> str:
    """``signal SIGKILL`` or ``exit code 3``."""
    return f"signal {status.signal}" if status.signal else f"exit code {status.exit_code}"


def ended(job: Any, spec: JobSpec, status: Status, now: float) -> list[Step]:
    """The store steps for a run that ended (PREEMPTED then PENDING for a requeue)."""
    outcome = Outcome(status.state)
    oom_kills = int(status.oom_kills or 0)
    fields: dict[str, Any] = {
        "ended_at": now,
        "launch": None,
        "exit_code": status.exit_code,
        "signal": status.signal,
        "max_memory": status.max_memory_bytes or None,
        "oom_kills": oom_kills,
    }
    ending = how(status)
    # Slurm's rule: a run whose cgroup saw the kernel kill for memory ended
    # OUT_OF_MEMORY, whatever its exit code (a parent that survived its children's
    # OOM kills and exited 0 still lost work to them)
    if oom_kills and outcome in (Outcome.COMPLETED, Outcome.FAILED):
        outcome = Outcome.OUT_OF_MEMORY
    if job.stop_cause == StopCause.PREEMPT:
        steps: list[Step] = [
            (states.PREEMPTED, f"Preempted for job {job.stop_for} ({ending})", fields)
        ]
        if spec.preemption.requeue:
            requeue = {**REQUEUE_FIELDS, "restart_count": job.restart_count + 1}
            why = f"Requeued after preemption (restart {job.restart_count + 1})"
            steps.append((states.PENDING, why, requeue))
        return steps
    if job.stop_cause == StopCause.CANCEL:
        return [(states.CANCELLED, f"{job.reason} ({ending})", fields)]
    if job.stop_cause == StopCause.REQUEUE:  # its checkpoint volume stays where it is
        back = {**fields, **REQUEUE_FIELDS, "restart_count": job.restart_count + 1}
        return [(states.PENDING, f"{job.reason} ({ending})", back)]
    if job.stop_cause and job.stop_cause.startswith(PART_CAUSE):
        return part_ended(job, spec, job.stop_cause[len(PART_CAUSE) :], job.reason, fields)
    if outcome == Outcome.OUT_OF_MEMORY:
        limit = format_size(spec.resources.memory or 0)
        kills = "1 process" if oom_kills <= 1 else f"{oom_kills} processes"
        reason = (
            f"killed by the kernel for memory: it used more than its limit of {limit} "
            f"(resources.memory; {kills} killed, {ending}); raise resources.memory or use less"
        )
        return [(states.OUT_OF_MEMORY, reason, fields)]
    if outcome == Outcome.TIMEOUT:
        reason = f"ran past its time limit of {spec.time_limit}s and was stopped ({ending})"
        return [(states.TIMEOUT, reason, fields)]
    if outcome == Outcome.COMPLETED:
        return [(states.COMPLETED, "exit code 0", fields)]
    if outcome == Outcome.STOPPED:
        return [(states.CANCELLED, f"stopped outside mlq ({ending})", fields)]
    return [(states.FAILED, status.error or ending, fields)]


def node_failed(job: Any, spec: JobSpec, why: str, now: float) -> list[Step]:
    """The store steps for a run whose node was declared down (NODE_FAIL, then PENDING
    on another node when ``preemption.requeue`` allows it, as after a preemption)."""
    reason = f"node {job.node} failed: {why}"
    steps: list[Step] = [(states.NODE_FAIL, reason, {"ended_at": now, "launch": None})]
    if spec.preemption.requeue:
        restart = job.restart_count + 1
        why_requeued = f"Requeued after its node {job.node} failed (restart {restart})"
        steps.append((states.PENDING, why_requeued, {**REQUEUE_FIELDS, "restart_count": restart}))
    return steps


def part_ended(
    job: Any, spec: JobSpec, state: str, reason: str, fields: dict[str, Any]
) -> list[Step]:
    """A multi-node job's part that ends with its job: the state another part ended in
    (its reason), requeued with it after NODE_FAIL or PREEMPTED."""
    steps: list[Step] = [(state, reason, fields)]
    if state in REQUEUED_WITH_PART and spec.preemption.requeue:
        restart = job.restart_count + 1
        requeue = {**REQUEUE_FIELDS, "restart_count": restart}
        steps.append((states.PENDING, f"Requeued with its job (restart {restart})", requeue))
    return steps


def could_not_start(why: str) -> str:
    return f"could not start: {why}"
