"""Output helpers: JSON for scripts, rich tables for people (rich imported lazily)."""

from __future__ import annotations

import json
import sys
import time
from datetime import datetime
from typing import Any


def print_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, sort_keys=False) + "\n")


# Piped output is never cut: scripts and logs get whole rows, however long.
PIPED_WIDTH = 100_000
# Columns of free text, which give up their width when a row is wider than the
# terminal (cut with an ellipsis, as squeue cuts them); the others keep theirs whole.
FLEXIBLE = frozenset({"NAME", "REASON", "MEMBERS", "ADMINS", "MESSAGE", "CAPABILITIES",
                      "VOLUME PATHS", "DEVICES", "UUID"})  # fmt: skip
GAP = 3  # between two columns: padding on each side and the box's blank separator


def width() -> int | None:
    """The terminal's width, or None when the output is not a terminal."""
    if not sys.stdout.isatty():
        return None
    import shutil

    return shutil.get_terminal_size().columns


def console() -> Any:
    from rich.console import Console

    w = width()
    return Console(highlight=False, soft_wrap=False, width=w or PIPED_WIDTH)


def table(
    columns: list[str],
    rows: list[list[Any]],
    title: str | None = None,
    optional: tuple[str, ...] = (),
) -> Any:
    """A table that fits the terminal: key columns (IDs, states, times, numbers) keep
    their width; the free-text ones (``FLEXIBLE``; the reason last) share what is left
    and are cut with an ellipsis; where even that is too wide, the ``optional``
    columns go, in that order (as squeue shows fewer at 80 columns). Piped, every
    cell is whole."""
    from rich import box
    from rich.table import Table

    cells = [["" if v is None else str(v) for v in r] for r in rows]
    room = width()

    def natural_widths(cols: list[str], cells: list[list[str]]) -> list[int]:
        return [max([len(c), *(len(r[i]) for r in cells)]) for i, c in enumerate(cols)]

    def narrowest(cols: list[str], nat: list[int]) -> int:  # flexible ones at their header
        return sum(len(c) if c in FLEXIBLE else n for c, n in zip(cols, nat, strict=True)) + (
            GAP * (len(cols) - 1)
        )

    natural = natural_widths(columns, cells)
    for name in optional:
        if room is None or narrowest(columns, natural) <= room or name not in columns:
            continue
        k = columns.index(name)
        columns = columns[:k] + columns[k + 1 :]
        cells = [r[:k] + r[k + 1 :] for r in cells]
        natural = natural[:k] + natural[k + 1 :]
    limits: dict[int, int] = {}
    total = sum(natural) + GAP * (len(columns) - 1)
    flex = [i for i, c in enumerate(columns) if c in FLEXIBLE]
    if room is not None and total > room and flex:
        budget = room - (total - sum(natural[i] for i in flex))
        # the narrowest first get what they need; the rest share what remains
        for n, i in enumerate(sorted(flex, key=lambda i: natural[i])):
            share = max(len(columns[i]), budget // (len(flex) - n))
            limits[i] = min(natural[i], share)
            budget -= limits[i]
    t = Table(box=box.SIMPLE_HEAD, title=title, pad_edge=False, show_edge=False)
    for i, c in enumerate(columns):
        if i in limits:
            t.add_column(c, no_wrap=True, overflow="ellipsis", max_width=limits[i])
        else:
            t.add_column(c, no_wrap=True, overflow="fold", min_width=natural[i])
    for r in cells:
        t.add_row(*r)
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
