"""A job's output as the API serves it: every run of a requeued job keeps its own
output, labelled by run number; the bytes come from the executor (``Executor.read_log``),
which owns the run dirs."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from mlq.executor.rundir import MAX_CHUNK
from mlq.scheduler import states
from mlq.scheduler.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from mlq.scheduler.daemon import schemas as S
    from mlq.scheduler.models import Job


def run_id(job: Any, restart: int | None = None) -> str:
    """The executor's name for one run of a job: ``<job>.<restart>``."""
    return f"{job.id}.{job.restart_count if restart is None else restart}"


def runs_of(job: Job, executor: Any) -> list[int]:
    """The run numbers of the job that have output, oldest first."""
    if not job.run_dir:
        return []
    names = [run_id(job, n) for n in range(job.restart_count + 1)]
    have = executor.has_runs(names)  # a remote node: one question to its agent
    return [n for n, name in enumerate(names) if name in have]


def read_log(
    job: Job, executor: Any, stream: str, run: int | None, offset: int, limit: int
) -> S.LogChunk:
    from mlq.scheduler.daemon import schemas as S

    if offset < 0:
        raise InvalidInput(f"offset: {offset} is not allowed; use 0 or more (bytes)")
    if not 0 <= limit <= MAX_CHUNK:
        raise InvalidInput(f"limit: {limit} is not allowed; use 0 to 4Mi ({MAX_CHUNK}) bytes")
    runs = runs_of(job, executor)
    if run is None:
        run = max(runs) if runs else job.restart_count
    if runs and run not in runs:
        raise NotFound(f"job {job.id} has no run {run}; runs: {', '.join(map(str, runs))}")
    if run in runs:
        skipped, data, kept = executor.read_log(run_id(job, run), stream, offset, limit)
    else:
        skipped, data, kept = 0, b"", None
    current = run == job.restart_count and job.state in (
        states.STARTING,
        states.RUNNING,
        states.STOPPING,
    )
    more = current or (job.state == states.PENDING and run == job.restart_count and not runs)
    return S.LogChunk(
        job_id=job.id or 0,
        run=run,
        runs=runs,
        stream=stream,
        offset=offset,
        next_offset=offset + skipped + len(data),
        dropped=skipped,
        log_limit=kept,
        data=data.decode("utf-8", errors="replace"),
        running=more,
        state=job.state,
    )
