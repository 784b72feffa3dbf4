"""Workload traces for ``mlq simulate``: mlq's CSV format, and Microsoft's Philly trace.

mlq's trace CSV has a header and the columns ``submit_time, duration, gpus, team,
kind`` (seconds, seconds, whole GPUs, team name, training|inference|batch) and,
optionally, ``mig_profile`` (then ``gpus`` is the number of slices), ``time_limit``
(seconds; empty for the class default) and ``checkpoint_interval`` (seconds; empty for
the cluster's default).

A Philly CSV (``timestamp,duration,num_gpus,gpu_time,cluster``, as published with the
Pollux artifact) is recognised by its header and imported: ``cluster`` (the virtual
cluster) is the team, every job is ``training``, submit times count from the first
submission, rows are sorted by time. Philly has no time limits; a user's limit is
modelled as the run time rounded up to whole hours and doubled, so every job ends
within its limit and backfill has estimates to work with. Jobs larger than one node
(9-128 GPUs, 0.35% of jobs) become multi-node jobs of whole 8-GPU nodes' parts (a
32-GPU job is 4 parts of 8 GPUs; a 12-GPU job 2 parts of 6), the fewest nodes that
hold them. ``fold`` instead folds them onto one whole node, keeping their GPU-time
(a 32-GPU job of one hour becomes an 8-GPU job of four hours), as mlq did before it
ran jobs across machines.

An mlq trace's optional ``nodes`` column makes a row a multi-node job of that many
parts, each of ``gpus`` GPUs.
"""

from __future__ import annotations

import csv
import math
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path

from mlq.scheduler.errors import InvalidInput
from mlq.scheduler.spec import KINDS

PHILLY_HEADER = ["timestamp", "duration", "num_gpus", "gpu_time", "cluster"]


@dataclass(frozen=True, slots=True)
class TraceJob:
    id: int
    submit_time: float
    duration: float
    gpus: int  # whole GPUs, or slices when mig_profile is set
    team: str
    kind: str
    mig_profile: str | None = None
    time_limit: int | None = None
    checkpoint_interval: int | None = None
    folded_from: int | None = None  # a Philly job wider than a node: its original GPUs
    nodes: int = 1  # a multi-node job's parts, each of ``gpus``

    @property
    def total_gpus(self) -> int:
        return self.gpus * self.nodes


def _num(
    row: dict[str, str], key: str, line: int, source: str, required: bool = True
) -> float | None:
    text = (row.get(key) or "").strip()
    if not text:
        if required:
            raise InvalidInput(f"line {line}: {key} is empty; it is required", source)
        return None
    try:
        value = float(text)
    except ValueError:
        raise InvalidInput(f'line {line}: {key}: "{text}" is not a number', source) from None
    if value < 0:
        raise InvalidInput(f"line {line}: {key}: {text} must not be negative", source)
    return value


def read_trace(path: str | Path, since: str | None = None, fold: bool = False) -> list[TraceJob]:
    """Read an mlq trace CSV (or import a Philly CSV), sorted by submit time.

    ``since`` drops the jobs submitted before it (seconds into the trace, or for a
    Philly trace a date such as 2017-10-01) and counts time from it."""
    offset = None
    if since is not None:
        try:
            offset = float(since)
        except ValueError:
            offset = None
    p = Path(path)
    try:
        f = p.open(newline="")
    except OSError as exc:
        raise InvalidInput(f"cannot read {p}: {exc.strerror}") from None
    with f:
        reader = csv.DictReader(f)
        header = [h.strip() for h in reader.fieldnames or []]
        if header[:5] == PHILLY_HEADER:
            return _philly(
                reader, str(p), since=since if offset is None else None, offset=offset, fold=fold
            )
        if since is not None and offset is None:
            raise InvalidInput(f'--since: "{since}" is not a number of seconds', str(p))
        missing = [
            c for c in ("submit_time", "duration", "gpus", "team", "kind") if c not in header
        ]
        if missing:
            raise InvalidInput(
                f"missing columns {', '.join(missing)}; a trace has submit_time, duration, gpus, "
                "team, kind and optionally mig_profile, time_limit, checkpoint_interval",
                str(p),
            )
        jobs = []
        for line, row in enumerate(reader, start=2):
            row = {k.strip(): v for k, v in row.items() if k}
            kind = row["kind"].strip()
            if kind not in KINDS:
                raise InvalidInput(
                    f'line {line}: kind: "{kind}" is not allowed; use {", ".join(KINDS)}', str(p)
                )
            tl = _num(row, "time_limit", line, str(p), required=False)
            ck = _num(row, "checkpoint_interval", line, str(p), required=False)
            gpus = _num(row, "gpus", line, str(p))
            assert gpus is not None
            nodes = _num(row, "nodes", line, str(p), required=False)
            if nodes is not None and (nodes < 1 or nodes != int(nodes)):
                raise InvalidInput(f"line {line}: nodes: {nodes:g} is not 1 or more", str(p))
            jobs.append(
                TraceJob(
                    id=len(jobs),
                    submit_time=_num(row, "submit_time", line, str(p)) or 0.0,
                    duration=_num(row, "duration", line, str(p)) or 0.0,
                    gpus=int(gpus),
                    team=row["team"].strip(),
                    kind=kind,
                    mig_profile=(row.get("mig_profile") or "").strip() or None,
                    time_limit=int(tl) if tl is not None else None,
                    checkpoint_interval=int(ck) if ck is not None else None,
                    nodes=int(nodes) if nodes is not None else 1,
                )
            )
    jobs.sort(key=lambda j: (j.submit_time, j.id))
    if offset:
        jobs = [
            TraceJob(**{**_fields(j), "id": i, "submit_time": j.submit_time - offset})
            for i, j in enumerate(x for x in jobs if x.submit_time >= offset)
        ]
    return jobs


def _fields(j: TraceJob) -> dict:
    return {f: getattr(j, f) for f in TraceJob.__slots__}


def _philly(
    reader: csv.DictReader,
    source: str,
    since: str | None = None,
    offset: float | None = None,
    node_gpus: int = 8,
    fold: bool = False,
) -> list[TraceJob]:
    start = None
    if since is not None:
        try:
            start = datetime.fromisoformat(since).timestamp()
        except ValueError:
            raise InvalidInput(
                f'--since: "{since}" is not a date (2017-10-01) or seconds', source
            ) from None
    rows = []
    for line, row in enumerate(reader, start=2):
        try:
            t = datetime.fromisoformat(row["timestamp"].strip()).timestamp()
        except ValueError:
            raise InvalidInput(
                f'line {line}: timestamp: "{row["timestamp"]}" is not a date', source
            ) from None
        duration = _num(row, "duration", line, source) or 0.0
        gpus = int(_num(row, "num_gpus", line, source) or 0)
        rows.append((t, line, duration, gpus, row["cluster"].strip()))
    rows.sort()
    t0 = rows[0][0] if rows else 0.0
    if offset is not None:
        start = t0 + offset
    if start is not None:
        rows = [r for r in rows if r[0] >= start]
        t0 = start
    jobs = []
    for t, _, duration, gpus, team in rows:
        folded = None
        nodes = 1
        if gpus > node_gpus and fold:
            folded, duration, gpus = gpus, duration * gpus / node_gpus, node_gpus
        elif gpus > node_gpus:
            nodes = math.ceil(gpus / node_gpus)
            gpus = math.ceil(gpus / nodes)
        limit = max(1, math.ceil(duration / 3600)) * 3600 * 2
        jobs.append(
            TraceJob(
                len(jobs),
                t - t0,
                max(1.0, duration),
                max(1, gpus),
                team,
                "training",
                time_limit=limit,
                folded_from=folded,
                nodes=nodes,
            )
        )
    return jobs


def load_trace(
    path: str | Path,
    days: float | None = None,
    max_gpus: int = 8,
    since: str | None = None,
    fold: bool = False,
) -> list[TraceJob]:
    """A trace, optionally cut to the jobs submitted in ``days`` days (from ``since``)."""
    jobs = read_trace(path, since, fold)
    if days is not None:
        jobs = [j for j in jobs if j.submit_time < days * 86400]
    too_big = [j for j in jobs if j.mig_profile is None and j.gpus > max_gpus]
    if too_big:
        j = too_big[0]
        raise InvalidInput(
            f"job {j.id} asks for {j.gpus} GPUs per node but the largest node has "
            f"{max_gpus}; give it more nodes (the trace's nodes column)"
        )
    return jobs


def write_trace(path: str | Path, jobs: list[TraceJob]) -> None:
    cols = [
        "submit_time",
        "duration",
        "gpus",
        "team",
        "kind",
        "mig_profile",
        "time_limit",
        "checkpoint_interval",
        "nodes",
    ]
    with Path(path).open("w", newline="") as f:
        w = csv.writer(f)
        w.writerow(cols)
        for j in jobs:
            w.writerow(
                [
                    f"{j.submit_time:g}",
                    f"{j.duration:g}",
                    j.gpus,
                    j.team,
                    j.kind,
                    j.mig_profile or "",
                    "" if j.time_limit is None else j.time_limit,
                    "" if j.checkpoint_interval is None else j.checkpoint_interval,
                    j.nodes,
                ]
            )
