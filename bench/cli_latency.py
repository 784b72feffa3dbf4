"""CLI latency: median wall time of `mlq submit FILE --json` and `mlq queue --json`
as whole processes, with 1,000 jobs in the store, next to sbatch and squeue.

Run: .venv/bin/python bench/cli_latency.py [RUNS]
"""

from __future__ import annotations

import subprocess
import sys
import tempfile

import yaml
from _common import MLQ, QUEUED_JOB, median_ms, mlq_daemon, slurm, wall
from mlq.cli.client import Client


def main(runs: int = 50) -> None:
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(QUEUED_JOB)
    rows = []
    with mlq_daemon() as d:
        Client(d["env"]["MLQ_SOCKET"]).post(
            "/v1/jobs", {"spec": yaml.safe_load(QUEUED_JOB), "array": "0-999"}
        )
        py = wall([sys.executable, "-c", "pass"], d["env"], runs)
        sub = wall([MLQ, "submit", f.name, "--json"], d["env"], runs)
        q = wall([MLQ, "queue", "--json"], d["env"], runs)
        help_ = wall([MLQ, "--help"], d["env"], runs)
    rows += [
        ("python -c pass", median_ms(py)),
        ("mlq --help", median_ms(help_)),
        ("mlq submit FILE --json", median_ms(sub)),
        ("mlq queue --json (1,000 jobs)", median_ms(q)),
    ]
    with slurm() as s:
        if s is not None:
            with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as sh:
                sh.write("#!/bin/sh\ntrue\n")
            subprocess.run(
                ["sbatch", "--hold", "--array=0-999", "-o", "/dev/null", sh.name],
                env=s["env"],
                capture_output=True,
            )
            sb = wall(["sbatch", "--hold", "-o", "/dev/null", sh.name], s["env"], runs)
            sq = wall(["squeue", "--json"], s["env"], max(5, runs // 5))
            sq_plain = wall(["squeue"], s["env"], runs)
            rows += [
                ("sbatch", median_ms(sb)),
                ("squeue --json (1,000 jobs)", median_ms(sq)),
                ("squeue (1,000 jobs)", median_ms(sq_plain)),
            ]
    width = max(len(r[0]) for r in rows)
    print(f"median wall time over {runs} runs, whole processes")
    for name, ms in rows:
        print(f"  {name:<{width}}  {ms:7.1f} ms")
    by = dict(rows)
    if "sbatch" in by:
        print(f"mlq submit / sbatch = {by['mlq submit FILE --json'] / by['sbatch']:.1f}x")
        print(
            f"mlq queue --json / squeue --json = {by['mlq queue --json (1,000 jobs)'] / by['squeue --json (1,000 jobs)']:.2f}x"
        )


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 50)
