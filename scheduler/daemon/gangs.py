"""Multi-node jobs in the daemon: one row per part, one life for all of them.

A job with ``resources.nodes: N`` is stored as N rows (``gang_id`` the first one's id,
the job's id a user sees; ``gang_rank`` 0..N-1). Each part runs as any job does on its
node (its own run, epoch, cgroup and checkpoint volume), so starts, stops, fencing,
node failure and recovery are the single-node ones. What this module adds:

- **the snapshot** sees one PendingJob (rank 0's row, only while every part is
  PENDING) and one RunningJob per running part, all under the job's id (view.py);
- **the start**: the policy starts every part in one pass; each gets the environment
  torchrun, DeepSpeed and NCCL read (``part_env``);
- **one life** (``settle``, every pass): once a part ends other than COMPLETED, every
  other part is stopped (gracefully, its signal and grace period) and ends in that
  state with that part's reason; a part requeued alone (its node failed) takes the
  others with it, requeued too; a preemption stops every part (the loop's apply).
  A part that COMPLETED leaves the others running: the job completes when all have.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Sequence
from typing import Any

from mlq.scheduler import states
from mlq.scheduler.daemon.outcomes import PART_CAUSE
from mlq.scheduler.errors import Conflict, NotFound
from mlq.scheduler.snapshot import Start

log = logging.getLogger("mlq.loop")

# The rendezvous port on rank 0's node: torchrun's default range, one port per job
# (a job file's env.MASTER_PORT wins, for a node where that port is taken)
PORT_BASE, PORT_SPAN = 29500, 10000


def by_gang(rows: Sequence[Any]) -> dict[int, list[Any]]:
    """The rows of each multi-node job among ``rows``, by rank."""
    out: dict[int, list[Any]] = {}
    for r in rows:
        if r.gang_id is not None:
            out.setdefault(r.gang_id, []).append(r)
    for parts in out.values():
        parts.sort(key=lambda r: r.gang_rank or 0)
    return out


def schedulable(parts: Sequence[Any], nodes: int) -> bool:
    """Whether the job may be offered to the policy: every part is PENDING."""
    return len(parts) == nodes and all(p.state == states.PENDING for p in parts)


def part_env(
    job_id: int, rank: int, spec: Any, nodes: Sequence[str], master: str
) -> dict[str, str]:
    """What part ``rank`` of job ``job_id`` finds in its environment: torchrun's and
    DeepSpeed's variables (one process per node is mlq's; ``LOCAL_WORLD_SIZE`` is what
    torchrun's ``--nproc-per-node`` should start) and mlq's own."""
    r = spec.resources
    local = max(1, r.gpus or (r.mig.count if r.mig else 0))
    env = {
        "MASTER_ADDR": master,
        "MASTER_PORT": spec.env.get("MASTER_PORT") or str(PORT_BASE + job_id % PORT_SPAN),
        "WORLD_SIZE": str(local * len(nodes)),
        "RANK": str(rank * local),  # the node's first global rank
        "NODE_RANK": str(rank),
        "GROUP_RANK": str(rank),
        "LOCAL_WORLD_SIZE": str(local),
        "NNODES": str(len(nodes)),
        "MLQ_JOB_ID": str(job_id),
        "MLQ_NODELIST": ",".join(nodes),
        "MLQ_NNODES": str(len(nodes)),
        "MLQ_NODE_RANK": str(rank),
    }
    return env


def start(loop: Any, job_id: int, starts: Sequence[Start], parts: Sequence[Any]) -> None:
    """Start every part the policy placed (all of them in this pass, or none)."""
    by_rank = {p.gang_rank: p for p in parts}
    if len(starts) != len(parts) or any(
        by_rank.get(s.rank) is None or by_rank[s.rank].state != states.PENDING for s in starts
    ):
        log.info("job %s: its parts changed since the snapshot; not started", job_id)
        return
    ordered = sorted(starts, key=lambda s: s.rank)
    names = [s.node for s in ordered]
    slot0 = loop.nodes.get(names[0])
    master = (slot0.address if slot0 is not None else "") or names[0]
    spec = loop.specs.of(parts[0])
    for s in ordered:
        part = by_rank[s.rank]
        env = part_env(job_id, s.rank, spec, names, master)
        try:
            loop.launcher.start(part, s, env=env)
        except Exception as exc:  # recorded on the part: settle() ends the others
            log.exception("starting part %s of job %s failed", s.rank, job_id)
            loop.launcher.failed(part, f"{type(exc).__name__}: {exc}")


def settle(loop: Any, active: Sequence[Any], now: float) -> bool:
    """Bring the parts of each multi-node job to one fate; whether anything changed."""
    changed = False
    for job_id, live in by_gang(active).items():
        nodes = loop.specs.of(live[0]).resources.nodes
        running = [p for p in live if p.state in (states.STARTING, states.RUNNING)]
        pending = [p for p in live if p.state == states.PENDING]
        if len(live) < nodes:  # a part ended for good
            ended = [
                p for p in loop.store.jobs(gang=job_id, with_spec=False) if p.state in states.FINAL
            ]
            failed = sorted(
                (p for p in ended if p.state != states.COMPLETED),
                key=lambda p: (p.ended_at or 0.0, p.gang_rank or 0),
            )
            if failed:
                first = failed[0]
                state = first.state
                why = f"part {first.gang_rank} on {first.node or '-'} ended {state}: {first.reason}"
            elif pending:
                state = states.CANCELLED
                why = "another part completed; a multi-node job does not restart parts alone"
            else:
                continue  # the others still run: the job completes when they all have
        elif pending and running:  # a part was requeued alone: its node failed
            first = pending[0]
            state = states.NODE_FAIL
            # its NODE_FAIL names the node and why ("node n2 failed: no heartbeat ...")
            failure = next(
                (e.reason for e in reversed(loop.store.events(first.id)) if e.state == state),
                first.reason,
            )
            why = f"part {first.gang_rank}: {failure}"
            pending = []
        else:
            continue
        for p in running:
            with contextlib.suppress(Conflict, NotFound):  # moved since it was read
                loop.launcher.stop(p, f"{PART_CAUSE}{state}", why)
                changed = True
        for p in pending:
            with contextlib.suppress(Conflict, NotFound):  # moved since it was read
                loop.store.transition(p.id, state, why, expect=(states.PENDING,), ended_at=now)
                changed = True
    return changed
