"""Output helpers: JSON for scripts, rich tables for people (rich imported lazily)."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


def console() -> Any:
    from rich.console import Console

    # Piped output is not cut at 80 columns: scripts and logs get whole rows.
    return Console(highlight=False, soft_wrap=False, width=None if sys.stdout.isatty() else 200)


def table(columns: list[str], rows: list[list[Any]], title: str | None = None) -> Any:
    from rich import box
    from rich.table import Table

    t = Table(box=box.SIMPLE_HEAD, title=title, pad_edge=False, show_edge=False)
    for c in columns:
        t.add_column(c, no_wrap=True, overflow="fold")
    for r in rows:
        t.add_row(*("" if v is None else str(v) for v in r))
    return t


def parse_iso(ts: str | None) -> float | None:
    if not ts:
        return None
    return datetime.fromisoformat(ts.replace("Z", "+00:00")).timestamp()


def age(ts: str | None, now: float | None = None) -> str:
    """``42s``, ``5m``, ``3h``, ``2d`` since an RFC 3339 time."""
    t = parse_iso(ts)
    if t is None:
        return ""
    d = max(0, int((now or time.time()) - t))
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60)):
        if d >= size:
            return f"{d // size}{unit}"
    return f"{d}s"


def local_time(ts: str | None) -> str:
    t = parse_iso(ts)
    if t is None:
        return ""
    return datetime.fromtimestamp(t).strftime("%Y-%m-%d %H:%M:%S")


def job_label(j: dict[str, Any]) -> str:
    """A listed job's ID as squeue writes it: ``12 (7_3)`` for index 3 of array 7,
    ``13 (12+1)`` for rank 1 of multi-node job 12 (Slurm's het-job notation)."""
    if j.get("array_index") is not None:
        return f"{j['id']} ({j['array_id']}_{j['array_index']})"
    if j.get("gang_rank") is not None:
        return f"{j['id']} ({j['gang_id']}+{j['gang_rank']})"
    return str(j["id"])
