"""Benchmark: how far off ``mlq queue --start`` is, on a simulated trace.

Replays a trace through the simulator with mlq's default policy and, every
``--every`` decisions, asks ``scheduler/estimate.py`` when each pending job will
start, from that moment's snapshot (what the daemon would answer then); at the end
compares each estimate with when the job did start. The estimate plays running jobs
to their time limits, so it errs late when jobs end early; beside it, the estimate a
user gets from nothing (``now``: "it starts at once") as the baseline.

    .venv/bin/python bench/start_estimate.py                      # the synthetic week
    .venv/bin/python bench/start_estimate.py --days 2 --every 200

Prints the number of estimates, their median and p90 absolute error, the mean signed
error (positive: later than it was), the share within 15 minutes and within an hour,
and the share of jobs it gave no estimate (beyond its horizon), for both. It prints
figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlq.scheduler.estimate import estimate_starts  # noqa: E402
from mlq.scheduler.simulate import load_sim_cluster, simulate  # noqa: E402
from mlq.scheduler.traces import load_trace  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--trace", default=str(ROOT / "bench" / "traces" / "synthetic.csv"))
    ap.add_argument("--cluster", default=str(ROOT / "configs" / "sim" / "synthetic.yaml"))
    ap.add_argument("--days", type=float, default=None)
    ap.add_argument("--every", type=int, default=100, help="estimate every N decisions")
    ap.add_argument(
        "--used", type=float, default=None,
        help="share of its limit a job runs (default: the trace's mean, what the daemon "
        "measures from its finished runs)",
    )  # fmt: skip
    args = ap.parse_args()
    cluster = load_sim_cluster(args.cluster)
    jobs = load_trace(args.trace, days=args.days, max_gpus=cluster.max_node_gpus)
    used = args.used
    if used is None:
        shares = [j.duration / j.time_limit for j in jobs if j.time_limit]
        used = statistics.fmean(shares) if shares else 1.0
    # (job, asked at, estimate at the limits, estimate at the share used)
    asked: list[tuple[int, float, float | None, float | None]] = []
    seen = [0]
    spent = [0.0]

    def observe(snap) -> None:
        seen[0] += 1
        if seen[0] % args.every or not snap.pending:
            return
        t0 = time.perf_counter()
        bound = estimate_starts(snap)
        for job, at in estimate_starts(snap, used=used).items():
            asked.append((int(job), snap.now, bound[job], at))
        spent[0] += time.perf_counter() - t0

    result = simulate(jobs, cluster, "default", observe=observe)
    started = {s.job.id: s.first_start for s in result.jobs}
    rows = []
    ways = ((f"mlq (used {used:.2f})", 3), ("at time limits", 2), ("now (no estimate)", 1))
    for name, k in ways:
        errors, none = [], 0
        for rec in asked:
            actual = started.get(rec[0])
            if actual is None:
                continue
            e = rec[k]
            if e is None:
                none += 1
                continue
            errors.append(e - actual)
        absolute = sorted(abs(x) for x in errors)
        n = len(absolute)
        rows.append(
            (
                name,
                n,
                statistics.median(absolute) / 60 if n else float("nan"),
                absolute[int(0.9 * (n - 1))] / 60 if n else float("nan"),
                statistics.fmean(errors) / 60 if n else float("nan"),
                sum(1 for x in absolute if x <= 900) / n if n else 0.0,
                sum(1 for x in absolute if x <= 3600) / n if n else 0.0,
                none / max(1, n + none),
            )
        )
    print(
        f"trace: {len(jobs)} jobs; {seen[0]} decisions; estimates every {args.every}: "
        f"{len(asked)} estimates in {spent[0]:.1f}s ({1000 * spent[0] / max(1, len(asked)):.2f} ms each)"
    )
    head = ("estimate", "n", "median |err| min", "p90 |err| min", "mean err min",
            "within 15 min", "within 1 h", "no estimate")  # fmt: skip
    print("  ".join(f"{h:>18}" for h in head))
    for r in rows:
        cells = [r[0], str(r[1]), f"{r[2]:.1f}", f"{r[3]:.1f}", f"{r[4]:+.1f}",
                 f"{r[5]:.0%}", f"{r[6]:.0%}", f"{r[7]:.0%}"]  # fmt: skip
        print("  ".join(f"{c:>18}" for c in cells))
    ours, limits, base = rows
    if ours[2]:
        print(
            f"median |error| over mlq's: at time limits {limits[2] / ours[2]:.2f}x, "
            f"now {base[2] / ours[2]:.2f}x"
        )


if __name__ == "__main__":
    main()
