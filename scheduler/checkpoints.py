"""How long a job's checkpoint volume is kept: the policy, pure (no I/O, no clock).

A checkpoint volume (``<state>/checkpoints/<job id>/``) is kept while its job can
still run again: pending (requeued and preempted jobs come back as pending), held,
starting, running or stopping. Once the job is in a final state (COMPLETED, FAILED,
OUT_OF_MEMORY, TIMEOUT, CANCELLED, PREEMPTED without requeue, NODE_FAIL) it is kept for
the retention (the cluster config's ``checkpoint_retention``, 7 days by default) after
the job ended, then removed by the daemon's sweep; ``null`` keeps volumes for ever. A
volume no job of this daemon owns (a name that is not a job ID, or a job no longer
in the store) is never removed by the sweep, only by an admin's ``prune``.
docs/daemon.md "Checkpoint volumes".

The daemon (``scheduler/daemon/checkpoints.py``) does the I/O: it lists the volumes,
reads their jobs, asks ``judge`` and ``choose``, and removes what they return.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from enum import IntEnum

from mlq.scheduler import states

DEFAULT_RETENTION_S = 7 * 86400


class Fate(IntEnum):
    """What becomes of a volume, from the most protected to the least."""

    ACTIVE = 0  # its job can still run: never removed
    UNOWNED = 1  # no job of this daemon's: kept until an admin prunes it
    RETAINED = 2  # its job ended: kept until ``removes_at``
    DUE = 3  # its job ended more than the retention ago: the next sweep removes it


@dataclass(frozen=True)
class Volume:
    """One checkpoint volume as found on the node."""

    key: str  # its directory's name: the job's ID for the daemon's jobs
    modified: float  # the directory's mtime


@dataclass(frozen=True)
class Owner:
    """The job a volume belongs to, as the store has it."""

    job_id: int
    user: str
    team: str
    state: str
    ended_at: float | None


@dataclass(frozen=True)
class Entry:
    volume: Volume
    owner: Owner | None
    fate: Fate
    removes_at: float | None  # when the sweep removes it; None: not while things stay so


def job_id_of(key: str) -> int | None:
    """The job ID a volume's name stands for, or None (``mlq run`` names by job name)."""
    return int(key) if key.isascii() and key.isdigit() and not key.startswith("0") else None


def judge(
    volumes: Iterable[Volume], owners: Mapping[int, Owner], retention_s: float | None, now: float
) -> list[Entry]:
    """Each volume's fate under the retention, in job ID order (unowned names last)."""
    out = []
    for v in volumes:
        jid = job_id_of(v.key)
        owner = owners.get(jid) if jid is not None else None
        if owner is None:
            out.append(Entry(v, None, Fate.UNOWNED, None))
        elif owner.state not in states.FINAL:
            out.append(Entry(v, owner, Fate.ACTIVE, None))
        elif retention_s is None:
            out.append(Entry(v, owner, Fate.RETAINED, None))
        else:
            # a final job without an end time (never ran): from when it was found so
            ended = owner.ended_at if owner.ended_at is not None else v.modified
            at = ended + retention_s
            out.append(Entry(v, owner, Fate.DUE if at <= now else Fate.RETAINED, at))
    return sorted(out, key=lambda e: (job_id_of(e.volume.key) is None, _order(e)))


def _order(e: Entry) -> tuple[int, str]:
    jid = job_id_of(e.volume.key)
    return (jid or 0, e.volume.key)


def due(entries: Iterable[Entry]) -> list[Entry]:
    """What the sweep removes now."""
    return [e for e in entries if e.fate == Fate.DUE]


class PruneRefused(ValueError):
    """A named job's volume may not be removed (or there is none); every problem."""

    def __init__(self, problems: list[str]) -> None:
        self.problems = problems
        super().__init__("; ".join(problems))


def choose(
    entries: list[Entry], now: float, older_than_s: float | None, job_ids: Iterable[int] = ()
) -> list[Entry]:
    """What an admin's prune removes. Named jobs: their volumes (every one must exist
    and its job must not be able to run again, else nothing is removed). Otherwise
    with ``older_than_s``: the volumes of jobs that ended longer ago than that, and
    unowned ones not modified for as long; without it, what is due. A volume whose job
    can still run is never chosen."""
    named = list(dict.fromkeys(job_ids))
    if named:
        by_id: dict[int | None, list[Entry]] = {}
        for e in entries:  # a requeued job may have left a volume on each of its nodes
            by_id.setdefault(job_id_of(e.volume.key), []).append(e)
        problems = []
        chosen = []
        for jid in named:
            found = by_id.get(jid, [])
            if not found:
                problems.append(f"job {jid} has no checkpoint volume on any node")
            for e in found:
                if e.fate == Fate.ACTIVE:
                    state = e.owner.state if e.owner else "active"
                    problems.append(
                        f"job {jid} is {state}: its checkpoint volume is kept while the job "
                        "can still run (cancel it first)"
                    )
                    break
                if older_than_s is None or _age(e, now) >= older_than_s:
                    chosen.append(e)
        if problems:
            raise PruneRefused(problems)
        return chosen
    if older_than_s is None:
        return due(entries)
    return [e for e in entries if e.fate != Fate.ACTIVE and _age(e, now) >= older_than_s]


def _age(e: Entry, now: float) -> float:
    """Since the job ended; for an unowned volume, since it was last modified."""
    if e.owner is not None and e.owner.ended_at is not None:
        return now - e.owner.ended_at
    return now - e.volume.modified
