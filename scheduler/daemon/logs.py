"""Reading a job's output: every run of a requeued job keeps its own log files, in
``<state>/runs/<job>.<restart>/stdout|stderr``, labelled by run number.

A stream's offsets run over everything the job ever wrote to it. Its supervisor
keeps only the newest bytes (the run's log limit, in two files of half each), so
the stream reads as: ``dropped`` bytes that are gone (counted in ``logcut.json``),
then ``stdout.1``, then ``stdout``. An offset in the dropped part reads from the
first kept byte, and the chunk says how many bytes it skipped.

``read_stream`` knows nothing of jobs (``mlq run`` follows a run dir with it) and
imports nothing heavy.
"""

from __future__ import annotations

import contextlib
import json
import os
import time
from pathlib import Path
from typing import TYPE_CHECKING

from mlq.scheduler import states
from mlq.scheduler.errors import InvalidInput, NotFound

if TYPE_CHECKING:
    from mlq.scheduler.daemon import schemas as S
    from mlq.scheduler.models import Job

MAX_CHUNK = 4 * 2**20  # the most one request may read: a chunk is held in memory whole


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


def _dropped(run_dir: Path, stream: str) -> int:
    """Bytes of the stream that are gone; 0 for a run that never dropped any (or one
    from before log limits, which has no logcut.json)."""
    try:
        return max(int(json.loads((run_dir / "logcut.json").read_bytes()).get(stream, 0)), 0)
    except (OSError, ValueError, TypeError, AttributeError):
        return 0


def _open(path: Path) -> int | None:
    try:
        return os.open(path, os.O_RDONLY | os.O_CLOEXEC)
    except FileNotFoundError:
        return None


def _same(path: Path, fd: int | None) -> bool:
    """Whether ``path`` still names the file ``fd`` is open on (or still nothing)."""
    try:
        st = os.stat(path)
    except FileNotFoundError:
        return fd is None
    if fd is None:
        return False
    mine = os.fstat(fd)
    return (st.st_dev, st.st_ino) == (mine.st_dev, mine.st_ino)


def _snapshot(run_dir: Path, stream: str, tries: int = 50) -> tuple[int, int | None, int | None]:
    """(dropped, fd of ``stream.1``, fd of ``stream``) as one consistent state.

    The supervisor rotates in three steps: the current file becomes ``.1``, the new
    count is written, a new current file is made. Read between them, the three do
    not add up; so they are read again until the count is the same before and after
    the opens, both names still lead to the files opened, and a ``.1`` never comes
    without a current file. The steps take microseconds: a retry or two at most.
    """
    old_path, cur_path = run_dir / f"{stream}.1", run_dir / stream
    for _ in range(tries):
        gone = _dropped(run_dir, stream)
        old, cur = _open(old_path), _open(cur_path)
        if (
            _dropped(run_dir, stream) == gone
            and _same(old_path, old)
            and _same(cur_path, cur)
            and (cur is not None or old is None)
        ):
            return gone, old, cur
        for fd in (old, cur):
            if fd is not None:
                os.close(fd)
        time.sleep(0.001)
    # never consistent: a supervisor killed mid-rotation leaves a .1 without a
    # current file for good, and what is there is all there is
    return _dropped(run_dir, stream), _open(old_path), _open(cur_path)


def read_stream(run_dir: Path, stream: str, offset: int, limit: int) -> tuple[int, bytes]:
    """(bytes skipped because they are gone, up to ``limit`` bytes from there).

    The data starts at ``offset + skipped``; never more than ``limit`` bytes are read.
    """
    gone, old, cur = _snapshot(run_dir, stream)
    try:
        skipped = max(gone - offset, 0)
        pos = offset + skipped - gone  # in the kept bytes: .1, then the current file
        parts: list[bytes] = []
        left = limit
        for fd, last in ((old, False), (cur, True)):
            if fd is None or left <= 0:
                continue
            # .1 no longer grows; the current file may have grown since the snapshot,
            # and what it has now follows on exactly
            size = os.fstat(fd).st_size
            if pos >= size and not last:
                pos -= size
                continue
            data = os.pread(fd, left, pos)
            parts.append(data)
            left -= len(data)
            pos = 0
        return skipped, b"".join(parts)
    finally:
        for fd in (old, cur):
            if fd is not None:
                os.close(fd)


def _log_limit(run_dir: Path) -> int | None:
    """The bytes of each stream the run keeps (its launch request's), or None: all."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        limit = json.loads((run_dir / "request.json").read_bytes()).get("log_limit")
        return int(limit) if limit else None
    return None


def read_log(job: Job, stream: str, run: int | None, offset: int, limit: int) -> S.LogChunk:
    from mlq.scheduler.daemon import schemas as S

    if offset < 0:
        raise InvalidInput(f"offset: {offset} is not allowed; use 0 or more (bytes)")
    if not 0 <= limit <= MAX_CHUNK:
        raise InvalidInput(f"limit: {limit} is not allowed; use 0 to 4Mi ({MAX_CHUNK}) bytes")
    runs = runs_of(job)
    if run is None:
        run = max(runs) if runs else job.restart_count
    if runs and run not in runs:
        raise NotFound(f"job {job.id} has no run {run}; runs: {', '.join(map(str, runs))}")
    run_dir = runs.get(run)
    skipped, data = read_stream(run_dir, stream, offset, limit) if run_dir else (0, b"")
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
        next_offset=offset + skipped + len(data),
        dropped=skipped,
        log_limit=_log_limit(run_dir) if run_dir else None,
        data=data.decode("utf-8", errors="replace"),
        running=more,
        state=job.state,
    )
