"""Server throughput: 1,000 submissions over one client connection, jobs per second.

Run: .venv/bin/python bench/api_throughput.py [N]
Compares with Slurm's published sustained rate (500 jobs/s) and with a real
single-node Slurm measured here: sbatch calls in a row (each a whole process, as
Slurm has no persistent client connection).
"""

from __future__ import annotations

import sys
import tempfile
import time

import yaml
from _common import QUEUED_JOB, mlq_daemon, slurm, wall
from mlq.cli.client import Client

SLURM_PUBLISHED = 500.0


def main(n: int = 1000) -> None:
    spec = yaml.safe_load(QUEUED_JOB)
    with mlq_daemon() as d:
        client = Client(d["env"]["MLQ_SOCKET"])
        for _ in range(20):  # warm up
            client.post("/v1/jobs", {"spec": spec})
        t = time.perf_counter()
        for _ in range(n):
            client.post("/v1/jobs", {"spec": spec})
        mlq_rate = n / (time.perf_counter() - t)
        t = time.perf_counter()
        client.post("/v1/jobs", {"spec": spec, "array": f"0-{n - 1}"})
        array_rate = n / (time.perf_counter() - t)
    print(f"mlq: {n} submissions over one connection: {mlq_rate:,.0f} jobs/s")
    print(f"mlq: one array of {n}: {array_rate:,.0f} jobs/s")
    print(
        f"Slurm published sustained: {SLURM_PUBLISHED:,.0f} jobs/s -> mlq/Slurm = {mlq_rate / SLURM_PUBLISHED:.2f}x"
    )
    with slurm() as s:
        if s is None:
            return
        with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as f:
            f.write("#!/bin/sh\n#SBATCH --hold\ntrue\n")
        k = 200
        times = wall(["sbatch", "--hold", "-o", "/dev/null", f.name], s["env"], k)
        sbatch_rate = k / sum(times)
        print(f"Slurm measured here: {k} sbatch calls in a row: {sbatch_rate:,.0f} jobs/s")
        print(f"mlq over one connection / sbatch in a row = {mlq_rate / sbatch_rate:.1f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 1000)
