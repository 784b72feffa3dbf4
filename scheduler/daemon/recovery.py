"""After a restart: re-adopt every run that lives, record those that ended meanwhile.

A job caught between STARTING and its launch never ran: it goes back to PENDING,
with whatever its cut-short launch left removed. Nothing is started twice: a run
whose supervisor lives is adopted, never launched again; a job recorded STOPPING
whose stop was never sent gets it now.
"""

from __future__ import annotations

import logging
import os
from typing import Any

from mlq.scheduler import states
from mlq.scheduler.daemon.logs import run_id

log = logging.getLogger("mlq.loop")


def recover(loop: Any) -> None:
    """``loop``: the daemon's Loop (its store, nodes and ``finish``). A job on a node
    the loop does not know yet (an agent that has not registered since) is left as it
    is: its agent re-adopts it, or its node's lease decides (``fleet.py``)."""
    store = loop.store
    for job in store.jobs(states_in=(states.STARTING, states.RUNNING, states.STOPPING)):
        run = run_id(job)
        slot = loop.nodes.of(job)
        if slot is None:
            continue
        executor = slot.executor
        found = executor.adopt(run) if job.run_dir else None
        if found is None or (not found.started and found.status is None):
            requeue_unstarted(loop, job)
        elif found.running:
            if job.state == states.STARTING and found.confirmed:
                store.transition(job.id, states.RUNNING, "re-adopted after a daemon restart")
            elif job.state == states.STOPPING and not found.stop_asked:
                # STOPPING was recorded, but the daemon died before it asked: ask now
                executor.stop(run)
            log.info("re-adopted job %s", job.id)
        elif not found.started and job.state == states.STARTING:
            requeue_unstarted(loop, job)
        else:
            log.info("job %s ended while the daemon was down", job.id)
            loop.finish(job, found.status)


def requeue_unstarted(loop: Any, job: Any) -> None:
    slot = loop.nodes.of(job)
    if slot is not None:
        slot.carver.release(job)  # slices carved for a start that never ran
    if job.run_dir and slot is not None:
        # a launch cut short may have made cgroups before it was recorded anywhere
        left = slot.executor.discard(run_id(job))
        if left:
            log.info("job %s: removed what its cut-short launch left: %s", job.id, left)
    loop.store.transition(
        job.id,
        states.PENDING,
        "Requeued: the daemon stopped before the job started",
        node=None,
        devices=None,
        run_dir=None,
        started_at=None,
        launch=None,
    )


def reap_orphans() -> None:
    """Reap every exited child, including orphans adopted as a subreaper. Exit
    statuses are not needed here: supervisors write theirs to status.json."""
    while True:
        try:
            pid, _ = os.waitpid(-1, os.WNOHANG)
        except ChildProcessError:
            return
        if pid == 0:
            return
