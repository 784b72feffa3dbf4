"""How a run ended: the outcome enum and the status the supervisor writes.

The supervisor writes ``<run>/status.json`` (fsync'd, renamed into place) before
it cleans up, so a daemon that was dead at the time reads the same answer later.
``Status.summary()`` is the shape ``mlq run --json`` prints.
"""

from __future__ import annotations

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
    """The written status of a run, or None while it has none."""
    try:
        with open(os.path.join(run_dir, "status.json")) as f:
            d = json.load(f)
    except FileNotFoundError:
        return None
    stats = stats_from_raw(cgroup_version, d.get("cgroup") or {}, d.get("memory_high_events"))
    return Status(
        state=Outcome(d["state"]),
        exit_code=d["exit_code"],
        signal=d.get("signal"),
        duration_s=d.get("duration_s", 0.0),
        max_memory_bytes=d.get("max_memory_bytes", 0),
        oom_kills=d.get("oom_kills", 0),
        reason=d.get("reason", ""),
        started_at=d.get("started_at", 0.0),
        finished_at=d.get("finished_at", 0.0),
        error=d.get("error"),
        stats=stats,
    )


def write_status(run_dir: str, data: dict[str, Any]) -> None:
    """Write a status from Python (a launch that failed, a supervisor that was lost)."""
    path = os.path.join(run_dir, "status.json")
    tmp = path + ".tmp"
    with open(tmp, "w") as f:
        json.dump(data, f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    fd = os.open(run_dir, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
