"""Benchmark: the time of one scheduling decision (policy.decide) at scale.

Clusters of 10, 100 and 1,000 nodes of 8 GPUs: a quarter of the nodes have all their
H100-80GB GPUs in MIG mode (half carved 3g+2g+1g, half left uncarved). Running
training jobs fill about 60% of the GPUs and every team is within its guarantee. One
node in ten is an H200 node full of training and batch jobs, and every inference job
asks for an H200, so those inference jobs need preemption. Pending
queues of 1k, 10k and 100k jobs: training (1-8 GPUs), batch, MIG slices, inference;
eight teams with guarantees and limits.

    .venv/bin/python bench/decision.py            # all sizes
    .venv/bin/python bench/decision.py --quick    # 1k and 10k pending only

Prints the median time per decision (CPU time of the process) for each size, what the decisions were, and the
growth exponent (slope of log time against log queue length, and against log nodes).
For comparison: Slurm's main scheduling loop looks at only ~100 jobs per event
(default_queue_depth) and leaves the rest to a backfill pass that takes minutes on
queues this long; Kueue admits one head per ClusterQueue per cycle.
"""

from __future__ import annotations

import argparse
import math
import random
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from mlq.scheduler.policy import decide  # noqa: E402
from mlq.scheduler.snapshot import (  # noqa: E402
    Gpu,
    MigRequest,
    MigSlot,
    Node,
    PendingJob,
    RunningJob,
    Snapshot,
    Team,
)

GiB = 2**30
TEAMS = [f"team{i}" for i in range(8)]
NOW = 1_000_000.0
MIG_LAYOUT = (("3g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6))


def build(nodes_n: int, pending_n: int, seed: int = 1) -> Snapshot:
    rnd = random.Random(seed)
    nodes: list[Node] = []
    running: list[RunningJob] = []
    jid = 0
    for i in range(nodes_n):
        name = f"n{i:04d}"
        if i % 10 == 9:  # an H200 node, full of preemptible jobs
            nodes.append(
                Node(name, 128_000, 2048 * GiB, tuple(Gpu(g, "H200-141GB") for g in range(8)))
            )
            for g in range(0, 8, 2):
                jid += 1
                running.append(
                    RunningJob(
                        f"r{jid}",
                        rnd.choice(TEAMS),
                        rnd.choice(("training", "batch")),
                        name,
                        gpus=(g, g + 1),
                        cpus=8000,
                        memory=64 * GiB,
                        started_at=NOW - rnd.randint(600, 86400),
                        time_limit=7 * 86400,
                    )
                )
            continue
        mig_node = i % 4 == 3
        gpus = tuple(
            Gpu(g, "H100-80GB", (MIG_LAYOUT if g % 2 == 0 else ()) if mig_node else None)
            for g in range(8)
        )
        nodes.append(Node(name, 128_000, 2048 * GiB, gpus))
        if mig_node:  # hold 60% of the carved slices
            for g in range(0, 8, 2):
                for profile, start in MIG_LAYOUT:
                    if rnd.random() < 0.6:
                        jid += 1
                        running.append(
                            RunningJob(
                                f"r{jid}",
                                rnd.choice(TEAMS),
                                "training",
                                name,
                                mig=(MigSlot(g, profile, start),),
                                cpus=2000,
                                memory=16 * GiB,
                                started_at=NOW - rnd.randint(600, 86400),
                                time_limit=86400,
                            )
                        )
            continue
        g = 0
        while g < 8 and rnd.random() < 0.75:  # about 60% of whole GPUs held, in 1-2 GPU jobs
            size = min(rnd.choice((1, 1, 2)), 8 - g)
            jid += 1
            running.append(
                RunningJob(
                    f"r{jid}",
                    rnd.choice(TEAMS),
                    "training",
                    name,
                    gpus=tuple(range(g, g + size)),
                    cpus=4000 * size,
                    memory=32 * GiB * size,
                    started_at=NOW - rnd.randint(600, 86400),
                    time_limit=rnd.choice((3600, 86400, None)),
                )
            )
            g += size
    pending: list[PendingJob] = []
    for k in range(pending_n):
        r = rnd.random()
        team = rnd.choice(TEAMS)
        sub = NOW - rnd.randint(0, 86400)
        tl = rnd.choice((1800, 3600, 4 * 3600, 86400))
        if r < 0.05:
            job = PendingJob(
                f"p{k}",
                team,
                "inference",
                gpus=rnd.choice((1, 2)),
                gpu_model="H200-141GB",
                cpus=4000,
                memory=32 * GiB,
                submitted_at=sub,
            )
        elif r < 0.20:
            job = PendingJob(
                f"p{k}",
                team,
                "training",
                mig=MigRequest(rnd.choice(("1g.10gb", "2g.20gb", "3g.40gb"))),
                cpus=2000,
                memory=16 * GiB,
                submitted_at=sub,
                time_limit=tl,
            )
        elif r < 0.35:
            job = PendingJob(
                f"p{k}",
                team,
                "batch",
                gpus=1,
                cpus=2000,
                memory=16 * GiB,
                submitted_at=sub,
                time_limit=tl,
            )
        else:
            g = rnd.choice((1, 1, 2, 4, 8))
            job = PendingJob(
                f"p{k}",
                team,
                "training",
                gpus=g,
                cpus=4000 * g,
                memory=32 * GiB * g,
                submitted_at=sub,
                time_limit=tl,
            )
        pending.append(job)
    total = nodes_n * 8
    teams = tuple(
        Team(t, {"gpu-equivalent": total / len(TEAMS)}, {"gpu-equivalent": total / len(TEAMS) * 2})
        for t in TEAMS
    )
    return Snapshot(NOW, tuple(nodes), tuple(running), tuple(pending), teams)


def measure(nodes_n: int, pending_n: int, repeats: int) -> tuple[float, dict[str, int], float]:
    snap = build(nodes_n, pending_n)
    held = sum(len(r.gpus) + len(r.mig) for r in snap.running)
    times = []
    decisions = None
    for _ in range(repeats):
        # CPU time of this process: the machines here are shared, and wall time would
        # count the other tenants' work too (the two agree on an idle machine)
        t0 = time.process_time()
        decisions = decide(snap)
        times.append(time.process_time() - t0)
    assert decisions is not None
    reasons: dict[str, int] = {}
    for r in decisions.reasons.values():
        key = r.split(" ")[0]
        reasons[key] = reasons.get(key, 0) + 1
    summary = {"start": len(decisions.starts), "preempt": len(decisions.preemptions), **reasons}
    return statistics.median(times), summary, held / max(1, sum(len(n.gpus) for n in snap.nodes))


def slope(xs: list[float], ys: list[float]) -> float:
    lx, ly = [math.log(x) for x in xs], [math.log(y) for y in ys]
    mx, my = statistics.fmean(lx), statistics.fmean(ly)
    return sum((a - mx) * (b - my) for a, b in zip(lx, ly, strict=True)) / sum(
        (a - mx) ** 2 for a in lx
    )


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="1k and 10k pending only")
    ap.add_argument("--repeats", type=int, default=5)
    args = ap.parse_args()
    sizes_p = [1_000, 10_000] if args.quick else [1_000, 10_000, 100_000]
    sizes_n = [10, 100, 1_000]
    results: dict[tuple[int, int], float] = {}
    print(f"{'nodes':>6} {'pending':>8} {'held':>5} {'median ms':>10}  decisions (median CPU ms)")
    for n in sizes_n:
        for p in sizes_p:
            reps = max(1, args.repeats if p <= 10_000 else 2)
            t, summary, full = measure(n, p, reps)
            results[(n, p)] = t
            text = " ".join(f"{k}={v}" for k, v in summary.items())
            print(f"{n:>6} {p:>8} {full:>5.0%} {t * 1000:>10.1f}  {text}", flush=True)
    print()
    for n in sizes_n:
        print(
            f"growth with queue length at {n:>5} nodes: time ~ pending^{slope(sizes_p, [results[(n, p)] for p in sizes_p]):.2f}"
        )
    for p in sizes_p:
        print(
            f"growth with cluster size at {p:>6} pending: time ~ nodes^{slope(sizes_n, [results[(n, p)] for n in sizes_n]):.2f}"
        )
    t = results[(1_000, 10_000)]
    verdict = "under" if t < 0.1 else "over"
    print(f"\n10k pending x 1,000 nodes: {t * 1000:.1f} ms per decision ({verdict} the 100 ms aim)")


if __name__ == "__main__":
    main()
