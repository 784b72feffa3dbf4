"""Reading a job's output: every run of a requeued job keeps its own log files, in
``<state>/runs/<job>.<restart>/stdout|stderr``, labelled by run number."""

from __future__ import annotations

from pathlib import Path

from mlq.scheduler import states
from mlq.scheduler.daemon import schemas as S
from mlq.scheduler.errors import NotFound
from mlq.scheduler.models import Job


def runs_of(job: Job) -> dict[int, Path]:
    """Run number -> run dir, for every run of the job that has one."""
    if not job.run_dir:
        return {}
    runs_dir = Path(job.run_dir).parent
    out = {}
    for n in range(job.restart_count + 1):
        d = runs_dir / f"{job.id}.{n}"
        if d.is_dir():
            out[n] = d
    return out


def read_log(job: Job, stream: str, run: int | None, offset: int, limit: int) -> S.LogChunk:
    runs = runs_of(job)
    if run is None:
        run = max(runs) if runs else job.restart_count
    if runs and run not in runs:
        raise NotFound(f"job {job.id} has no run {run}; runs: {', '.join(map(str, runs))}")
    data = b""
    end = offset
    path = runs.get(run, Path("/nonexistent")) / stream
    try:
        with open(path, "rb") as f:
            f.seek(offset)
            data = f.read(limit)
            end = offset + len(data)
    except FileNotFoundError:
        pass
    current = run == job.restart_count and job.state in (
        states.STARTING,
        states.RUNNING,
        states.STOPPING,
    )
    more = current or (job.state == states.PENDING and run == job.restart_count and not runs)
    return S.LogChunk(
        job_id=job.id or 0,
        run=run,
        runs=sorted(runs),
        stream=stream,
        offset=offset,
        next_offset=end,
        data=data.decode("utf-8", errors="replace"),
        running=more,
        state=job.state,
    )
