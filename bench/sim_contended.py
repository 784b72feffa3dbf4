"""Benchmark: mlq's queue orders on the contended Philly replay, beside Helios' simulator.

The workload is ``../shared/traces/philly-contended/`` (its README.md): 68,503 Philly
jobs of October and November 2017 from the 11 virtual clusters that Helios (Hu et al.,
"Characterization and Prediction of Deep Learning Workloads in Large-Scale GPU
Datacenters", SC'21) replays, on 78 nodes of 8 GPUs, each VC a team capped at its own
nodes. The Helios figures below are that README's: Helios' own simulator
(S-Lab-System-Group/HeliosArtifact) run on exactly this workload, means over all jobs.

    .venv/bin/python bench/sim_contended.py              # the whole trace (minutes)
    .venv/bin/python bench/sim_contended.py --days 7     # the first week only

Runs mlq's policy under each queue order (``default``: the cluster file's; ``short-first``;
``fifo-order``: by submission) and the strict FIFO baseline ``fifo``, and prints their
mean JCT and queueing with ratios to Helios' SJF oracle and SRTF, the fairness figures
(worst team's p95 JCT, Jain's index over the teams' mean bounded slowdown, the longest
wait) and the wall time of each replay. Helios' rows have no fairness figures: its
artifact reports means only. mlq folds the 186 wider-than-a-node jobs onto one node
(their GPU-time kept), which Helios places across nodes; and ``fifo`` ignores the teams'
caps, so it is not Helios' per-VC FIFO. It prints figures and asserts nothing.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlq.cli.plan import progress_bars  # noqa: E402
from mlq.scheduler.simreport import parse_policies, replay, report  # noqa: E402
from mlq.scheduler.simulate import load_sim_cluster  # noqa: E402
from mlq.scheduler.traces import load_trace  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
WORKLOAD = ROOT.parent / "shared" / "traces" / "philly-contended"

# (policy, what it knows, mean JCT s, mean queueing s): philly-contended/README.md
HELIOS = [
    ("Helios FIFO", "submission order", 363_891, 352_410),
    ("Helios SJF", "true duration (oracle)", 56_879, 45_399),
    ("Helios QSSF", "duration with Helios' error", 53_123, 41_642),
    ("Helios SJF-limit", "the user's time limit", 48_495, 37_014),
    ("Helios SRTF", "remaining time (oracle, preempts)", 30_733, 19_247),
]
SJF = HELIOS[1]
SRTF = HELIOS[4]


def _s(v: float | None) -> str:
    return "-" if v is None else f"{v:,.0f}"


def _x(v: float, ref: float) -> str:
    return f"{v / ref:.2f}"


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--days", type=float, help="only jobs submitted in the first N days")
    ap.add_argument(
        "--policy",
        default="default,short-first,fifo-order,fifo",
        help="mlq policies to run, separated by commas",
    )
    ap.add_argument("--workload", type=Path, default=WORKLOAD, help="the trace's folder")
    args = ap.parse_args()

    policies = parse_policies(args.policy)
    cluster = load_sim_cluster(args.workload / "cluster.yaml")
    jobs = load_trace(args.workload / "trace.csv", days=args.days, max_gpus=cluster.max_node_gpus)
    with progress_bars(policies) as bars:
        result = report(jobs, cluster, replay(jobs, cluster, policies, progress=bars))

    print(
        f"{args.workload.name}: {len(jobs):,} jobs"
        f"{f' (the first {args.days:g} days)' if args.days else ''} on {cluster.gpus} GPUs "
        f"({len(cluster.nodes)} nodes); times in seconds, ratios are JCT and queueing over "
        "Helios' SJF oracle and SRTF"
    )
    if args.days:
        print("(Helios' figures are over the whole trace: ratios compare only a full run)")
    head = (
        f"{'policy':18} {'mean JCT':>9} {'/SJF':>5} {'/SRTF':>5} {'mean queue':>10} "
        f"{'/SJF':>5} {'/SRTF':>5} {'p95 JCT':>9} {'worst team p95':>14} {'Jain':>5} "
        f"{'max queue':>10} {'wall':>6}"
    )
    print(head)
    print("-" * len(head))

    def line(name: str, jct: float, queue: float, f: dict | None) -> None:
        fair = (
            f"{_s(f['jct_s']['p95']):>9} {_s(f['worst_team_p95_jct_s']):>14} "
            f"{f['jain_index']:>5.3f} {_s(f['max_queue_s']):>10} {f['wall_s']:>5.0f}s"
            if f
            else f"{'-':>9} {'-':>14} {'-':>5} {'-':>10} {'-':>6}"
        )
        print(
            f"{name:18} {_s(jct):>9} {_x(jct, SJF[2]):>5} {_x(jct, SRTF[2]):>5} "
            f"{_s(queue):>10} {_x(queue, SJF[3]):>5} {_x(queue, SRTF[3]):>5} {fair}"
        )

    for name, _, jct, queue in HELIOS:
        line(name, jct, queue, None)
    for p in result["policies"]:
        f = result[p]
        line(f"mlq {p}", f["jct_s"]["mean"], f["queue_s"]["mean"], f)
    print()
    for name, knows, _, _ in HELIOS:
        print(f"{name}: {knows}")
    print(
        "Jain: Jain's fairness index over the teams' mean bounded slowdown "
        "(JCT / max(run time, 60 s), at least 1); 1 is perfectly even, 1/11 one team bearing all"
    )


if __name__ == "__main__":
    main()
