"""Synthetic workload traces for ``mlq simulate``, with what Philly lacks: inference
arrivals and MIG-sized jobs.

    .venv/bin/python bench/traces/generate.py --days 7 --seed 1 -o bench/traces/synthetic.csv

Distributions (all seeded; the same arguments give the same file):

- Arrivals: a Poisson process per kind whose rate follows the day,
  rate(t) = base * (1 + 0.6 * sin(2 pi (t / 86400 - 0.25))), peaking at 12:00.
  Base rates per hour: training 14, batch 10, MIG jobs 8, inference 1.5.
- training: whole GPUs 1 (50%), 2 (20%), 4 (15%), 8 (15%); run time log-normal with
  median 2 h and sigma 1.3, from 5 min to 3 days; checkpoints every 30 min.
- batch: 1 whole GPU; run time log-normal, median 30 min, sigma 1.0, from 1 min to
  1 day; no checkpoints (the cluster default applies).
- MIG jobs (kind training, 70%, or inference, 30%): one slice of 1g.10gb (50%),
  2g.20gb (25%) or 3g.40gb (25%); run time log-normal, median 1 h, sigma 1.0.
- inference: 1 (70%) or 2 (30%) whole GPUs; serving sessions, log-normal, median 4 h,
  sigma 0.8, from 10 min to 2 days; no time limit (inference has none by default).
- Teams: nlp 30%, vision 25%, speech 20%, recsys 15%, research 10% of every kind.
- Time limits (training, batch, MIG): the run time rounded up to whole hours, doubled
  (users ask for more than they need; every job ends within its limit).
"""

from __future__ import annotations

import argparse
import math
import random
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))

from mlq.scheduler.traces import TraceJob, write_trace  # noqa: E402

TEAMS = (("nlp", 0.30), ("vision", 0.25), ("speech", 0.20), ("recsys", 0.15), ("research", 0.10))
RATES_PER_HOUR = {"training": 14.0, "batch": 10.0, "mig": 8.0, "inference": 1.5}


def _pick(rnd: random.Random, table) -> object:
    x, acc = rnd.random(), 0.0
    for value, weight in table:
        acc += weight
        if x < acc:
            return value
    return table[-1][0]


def _lognormal(rnd: random.Random, median: float, sigma: float, lo: float, hi: float) -> float:
    return min(hi, max(lo, rnd.lognormvariate(math.log(median), sigma)))


def _limit(duration: float) -> int:
    return max(1, math.ceil(duration / 3600)) * 3600 * 2


def _arrivals(rnd: random.Random, per_hour: float, seconds: float) -> list[float]:
    """A day-shaped Poisson process by thinning: peak rate 1.6x the base."""
    peak = per_hour * 1.6 / 3600
    t, out = 0.0, []
    while True:
        t += rnd.expovariate(peak)
        if t >= seconds:
            return out
        rate = per_hour / 3600 * (1 + 0.6 * math.sin(2 * math.pi * (t / 86400 - 0.25)))
        if rnd.random() < rate / peak:
            out.append(t)


def generate(days: float, seed: int = 1, scale: float = 1.0) -> list[TraceJob]:
    rnd = random.Random(seed)
    seconds = days * 86400
    rows: list[tuple] = []
    for kind, rate in RATES_PER_HOUR.items():
        for t in _arrivals(rnd, rate * scale, seconds):
            team = _pick(rnd, TEAMS)
            if kind == "training":
                gpus = _pick(rnd, ((1, 0.5), (2, 0.2), (4, 0.15), (8, 0.15)))
                d = _lognormal(rnd, 7200, 1.3, 300, 3 * 86400)
                rows.append((t, d, gpus, team, "training", None, _limit(d), 1800))
            elif kind == "batch":
                d = _lognormal(rnd, 1800, 1.0, 60, 86400)
                rows.append((t, d, 1, team, "batch", None, _limit(d), None))
            elif kind == "mig":
                profile = _pick(rnd, (("1g.10gb", 0.5), ("2g.20gb", 0.25), ("3g.40gb", 0.25)))
                k = "training" if rnd.random() < 0.7 else "inference"
                d = _lognormal(rnd, 3600, 1.0, 60, 86400)
                rows.append(
                    (t, d, 1, team, k, profile, _limit(d) if k == "training" else None, 1800)
                )
            else:
                gpus = 1 if rnd.random() < 0.7 else 2
                d = _lognormal(rnd, 4 * 3600, 0.8, 600, 2 * 86400)
                rows.append((t, d, gpus, team, "inference", None, None, None))
    rows.sort(key=lambda r: r[0])
    return [
        TraceJob(i, round(t, 1), round(d, 1), g, team, k, p, lim, ck)
        for i, (t, d, g, team, k, p, lim, ck) in enumerate(rows)
    ]


def main() -> None:
    ap = argparse.ArgumentParser(description="Write a synthetic mlq trace CSV.")
    ap.add_argument("--days", type=float, default=7)
    ap.add_argument("--seed", type=int, default=1)
    ap.add_argument("--scale", type=float, default=1.0, help="multiply every arrival rate")
    ap.add_argument("-o", "--output", default="bench/traces/synthetic.csv")
    args = ap.parse_args()
    jobs = generate(args.days, args.seed, args.scale)
    write_trace(args.output, jobs)
    kinds: dict[str, int] = {}
    for j in jobs:
        key = f"{j.kind}+mig" if j.mig_profile else j.kind
        kinds[key] = kinds.get(key, 0) + 1
    gpu_h = (
        sum(j.duration * (j.gpus if not j.mig_profile else int(j.mig_profile[0]) / 7) for j in jobs)
        / 3600
    )
    print(f"{args.output}: {len(jobs)} jobs over {args.days:g} days {kinds}; {gpu_h:.0f} GPU-hours")


if __name__ == "__main__":
    main()
