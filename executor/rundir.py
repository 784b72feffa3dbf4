"""The state dir's layout, in one place: where a run's files, its logs and a job's
checkpoint volume live, and how a run's output is read back.

Nothing outside the executor reads these files: the daemon goes through the
``Executor`` (``interface.py``), so a remote executor can serve the same calls.

Each run of a job has ``<state>/runs/<run_id>/`` (request, plan, launch record,
supervisor record, status, and the output: ``stdout``/``stderr`` with ``.1`` and
``logcut.json``); a job's checkpoint volume is ``<state>/checkpoints/<key>/``, the
same for all its runs, with the mark ``.mlq-checkpoint-done`` that
``mlq checkpoint-done`` touches.

A stream's offsets run over everything the job ever wrote to it. Its supervisor
keeps only the newest bytes (the run's log limit, in two files of half each), so
the stream reads as: ``dropped`` bytes that are gone (counted in ``logcut.json``),
then ``stdout.1``, then ``stdout``. An offset in the dropped part reads from the
first kept byte, and the reader says how many bytes it skipped.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

CHECKPOINT_MARK = ".mlq-checkpoint-done"
MAX_CHUNK = 4 * 2**20  # the most one read returns: a chunk is held in memory whole


def run_dir(state_dir: str | Path, run_id: str) -> Path:
    return Path(state_dir) / "runs" / run_id


def checkpoint_dir(state_dir: str | Path, key: str | int) -> str:
    """The per-job checkpoint volume on the host; the same for every run of the job."""
    safe = re.sub(r"[^A-Za-z0-9_.-]", "_", str(key))
    return os.path.join(state_dir, "checkpoints", safe)


def checkpoint_mark(state_dir: str | Path, key: str | int) -> float | None:
    """When the job last reported a checkpoint (the mark's mtime), or None."""
    mark = Path(checkpoint_dir(state_dir, key)) / CHECKPOINT_MARK
    try:
        return mark.lstat().st_mtime  # the job's file: never follow its symlink
    except OSError:
        return None


@dataclass(frozen=True)
class CheckpointVolume:
    key: str  # the directory's name under <state>/checkpoints
    path: str
    modified: float  # the directory's mtime


def checkpoint_volumes(state_dir: str | Path) -> list[CheckpointVolume]:
    """The checkpoint volumes on this node (directories only; a removal's leftover,
    ``.removing-*``, is not one), by name."""
    root = os.path.join(state_dir, "checkpoints")
    try:
        entries = list(os.scandir(root))
    except FileNotFoundError:
        return []
    out = []
    for e in entries:
        if e.name.startswith(".") or not e.is_dir(follow_symlinks=False):
            continue
        with contextlib.suppress(FileNotFoundError):
            out.append(CheckpointVolume(e.name, e.path, e.stat(follow_symlinks=False).st_mtime))
    return sorted(out, key=lambda v: v.key)


def checkpoint_bytes(path: str) -> int:
    """The disk space a volume takes (as ``du``: allocated blocks, each inode once,
    never following a symlink)."""
    seen: set[tuple[int, int]] = set()
    total = 0
    stack = [path]
    while stack:
        try:
            it = os.scandir(stack.pop())
        except OSError:
            continue
        with it:
            for e in it:
                try:
                    st = e.stat(follow_symlinks=False)
                except OSError:
                    continue
                if (st.st_dev, st.st_ino) in seen:
                    continue
                seen.add((st.st_dev, st.st_ino))
                total += st.st_blocks * 512
                if e.is_dir(follow_symlinks=False):
                    stack.append(e.path)
    return total


@dataclass(frozen=True)
class VolumeInfo:
    """A checkpoint volume as a node reports it (its agent, over the wire, too)."""

    key: str
    modified: float
    bytes: int | None = None  # asked for: sizes walk every file


class LocalVolumes:
    """This machine's checkpoint volumes, as the daemon's sweep sees a node's (an
    agent's node answers the same two calls over the wire: scheduler/daemon/remote.py)."""

    def __init__(self, state_dir: str | Path) -> None:
        self.state_dir = str(state_dir)

    def list(self, sizes: bool = False) -> list[VolumeInfo]:
        return [
            VolumeInfo(v.key, v.modified, checkpoint_bytes(v.path) if sizes else None)
            for v in checkpoint_volumes(self.state_dir)
        ]

    def remove(self, key: str) -> int:
        """Remove the volume ``key``; the bytes it took."""
        size = checkpoint_bytes(checkpoint_dir(self.state_dir, key))
        remove_checkpoint(self.state_dir, key)
        return size


def remove_checkpoint(state_dir: str | Path, key: str) -> None:
    """Remove a job's checkpoint volume: renamed aside first (so no run ever finds
    half of it), then deleted without following any symlink the job left in it; a
    leftover of an earlier removal goes too."""
    root = os.path.join(state_dir, "checkpoints")
    gone = os.path.join(root, f".removing-{key}")
    with contextlib.suppress(FileNotFoundError):
        shutil.rmtree(gone)  # an earlier removal that was cut short
    os.rename(checkpoint_dir(state_dir, key), gone)
    shutil.rmtree(gone)


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


def log_limit(run_dir: Path) -> int | None:
    """The bytes of each stream the run keeps (its launch request's), or None: all."""
    with contextlib.suppress(OSError, ValueError, TypeError, AttributeError):
        limit = json.loads((run_dir / "request.json").read_bytes()).get("log_limit")
        return int(limit) if limit else None
    return None
