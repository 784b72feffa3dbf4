"""How a run ended: the outcome enum and the status the supervisor writes.

The supervisor writes ``<run>/status.json`` (fsync'd, renamed into place) before
it cleans up, so a daemon that was dead at the time reads the same answer later;
it is complete or absent, and a file that is neither (written by hand, by an older
supervisor on a full disk) reads as a FAILED run that names it, never an exception.
``Status.summary()`` is the shape ``mlq run --json`` prints.
"""

from __future__ import annotations

import contextlib
import json
import os
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

from mlq.executor.cgroups import STAT_FILES, Stats, keyed


class Outcome(StrEnum):
    """How a run ended. ``OUT_OF_MEMORY`` comes from the cgroup's oom_kill counter."""

    COMPLETED = "COMPLETED"  # exit 0
    FAILED = "FAILED"  # non-zero exit, a signal, or a launch/supervision error
    OUT_OF_MEMORY = "OUT_OF_MEMORY"  # the kernel killed it for its memory limit
    TIMEOUT = "TIMEOUT"  # the time limit ran out
    STOPPED = "STOPPED"  # stopped on request (preemption, cancel, Ctrl-C)


@dataclass
class Status:
    state: Outcome
    exit_code: int
    signal: str | None
    duration_s: float
    max_memory_bytes: int
    oom_kills: int
    reason: str = ""
    started_at: float = 0.0
    finished_at: float = 0.0
    error: str | None = None
    stats: Stats = field(default_factory=Stats)

    def summary(self) -> dict[str, Any]:
        return {
            "state": self.state.value,
            "exit_code": self.exit_code,
            "signal": self.signal,
            "duration_s": round(self.duration_s, 3),
            "max_memory_bytes": self.max_memory_bytes,
            "oom_kills": self.oom_kills,
        }


def stats_from_raw(version: int, raw: dict[str, Any], high_events: int | None) -> Stats:
    """Normalise the raw cgroup files the supervisor copied (already parsed to dicts)."""
    s = Stats()
    for name, v2file, v2key, _c, v1file, v1key, div in STAT_FILES:
        file, key = (v2file, v2key) if version == 2 else (v1file, v1key)
        if not file:
            continue
        value = raw.get(file)
        if isinstance(value, dict):
            n = int(value.get(key, 0)) if key else 0
        elif isinstance(value, int):
            n = value
        else:
            n = keyed(value, key) if isinstance(value, str) else 0
        setattr(s, name, n // (div if version == 1 else 1))
    if version == 1:
        s.memory_high_events = max(high_events or 0, 0)
    return s


def read_status(run_dir: str, cgroup_version: int) -> Status | None:
    """The written status of a run, or None while it has none.

    A status file that cannot be read as one (empty, truncated, not JSON, a key
    missing) is a FAILED run whose error names the file and why: the daemon reads
    statuses in every pass, and one bad file must not stop it.
    """
    path = os.path.join(run_dir, "status.json")
    try:
        with open(path, "rb") as f:
            text = f.read()
    except FileNotFoundError:
        return None
    except OSError as exc:
        return unreadable(path, exc.strerror or str(exc))
    if not text.strip():
        return unreadable(path, "it is empty")
    try:
        return status_from(json.loads(text), cgroup_version)
    except ValueError as exc:  # JSON's errors, and a state that is no Outcome
        return unreadable(path, str(exc))
    except KeyError as exc:
        return unreadable(path, f"it lacks {exc}")
    except (TypeError, AttributeError) as exc:
        return unreadable(path, f"a value has the wrong type ({exc})")


def status_from(d: Any, cgroup_version: int) -> Status:
    """A Status from the JSON the supervisor (or write_status) writes."""
    if not isinstance(d, dict):
        raise ValueError(f"it is not an object but {type(d).__name__} {d!r:.40}")
    stats = stats_from_raw(cgroup_version, d.get("cgroup") or {}, d.get("memory_high_events"))
    return Status(
        state=Outcome(d["state"]),
        exit_code=int(d["exit_code"]),
        signal=d.get("signal"),
        duration_s=float(d.get("duration_s", 0.0)),
        max_memory_bytes=int(d.get("max_memory_bytes", 0)),
        oom_kills=int(d.get("oom_kills", 0)),
        reason=d.get("reason", ""),
        started_at=float(d.get("started_at", 0.0)),
        finished_at=float(d.get("finished_at", 0.0)),
        error=d.get("error"),
        stats=stats,
    )


def unreadable(path: str, why: str) -> Status:
    """The status of a run whose status file is there but cannot be read."""
    return Status(
        state=Outcome.FAILED,
        exit_code=-1,
        signal=None,
        duration_s=0.0,
        max_memory_bytes=0,
        oom_kills=0,
        reason="unreadable",
        error=f"status file {path} is unreadable: {why}",
    )


def write_status(run_dir: str, data: dict[str, Any]) -> None:
    """Write a status from Python (a launch that failed, a supervisor that was lost).

    Complete or not at all, like the supervisor's: on a failure (a full disk) the
    temp file goes and the OSError is raised.
    """
    path = os.path.join(run_dir, "status.json")
    tmp = path + ".tmp"
    try:
        with open(tmp, "w") as f:
            json.dump(data, f)
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
