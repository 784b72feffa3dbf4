"""Helpers shared by the benchmarks: a throwaway mlq daemon and a throwaway Slurm."""

from __future__ import annotations

import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
MLQ = str(Path(sys.executable).parent / "mlq")
PEER = ROOT.parent / "shared" / "peers" / "slurm" / "peer"

# Cordoned (schedulable: false): every job is accepted (one GPU, so a GPU job fits)
# and stays queued, so submission figures measure the API and the store.
BENCH_CLUSTER = """
node: {name: bench, cpus: 64, memory: 512Gi, schedulable: false, gpus: declared,
       declared_gpus: [{index: 0, model: H100-80GB}]}
teams:
  - {name: nlp, members: [root], guarantee: {gpu: 4}, limit: {gpu: 8}}
"""

TRIVIAL_JOB = """
name: trivial
team: nlp
kind: batch
command: [/bin/true]
resources: {cpus: 1, memory: 64Mi}
"""

# A job that stays queued on the bench node (cordoned, or its one GPU held), so
# submission figures measure the API and the store, not jobs being launched.
QUEUED_JOB = TRIVIAL_JOB.replace("{cpus: 1, memory: 64Mi}", "{gpus: 1, cpus: 1, memory: 64Mi}")


@contextmanager
def mlq_daemon(cluster: str = BENCH_CLUSTER, env: dict[str, str] | None = None) -> Iterator[dict]:
    """Start ``mlq server`` in a temp dir; yields the environment to reach it."""
    home = Path(tempfile.mkdtemp(prefix="mlq-bench-"))
    (home / "cluster.yaml").write_text(cluster)
    e = (
        dict(os.environ)
        | {
            "MLQ_SOCKET": str(home / "mlq.sock"),
            "MLQ_STATE_DIR": str(home / "state"),
        }
        | (env or {})
    )
    log = open(home / "server.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [MLQ, "server", "--config", str(home / "cluster.yaml")], env=e, stdout=log, stderr=log
    )
    try:
        for _ in range(200):
            if subprocess.run([MLQ, "whoami"], env=e, capture_output=True).returncode == 0:
                break
            time.sleep(0.05)
        else:
            raise RuntimeError((home / "server.log").read_text())
        yield {"env": e, "home": home, "proc": proc}
    finally:
        proc.terminate()
        proc.wait(timeout=30)
        shutil.rmtree(home, ignore_errors=True)


@contextmanager
def slurm() -> Iterator[dict | None]:
    """A real single-node Slurm from shared/peers, or None when it cannot start."""
    if not PEER.exists():
        print(f"# Slurm peer not found at {PEER}; Slurm figures skipped")
        yield None
        return
    if shutil.which("sbatch") is None:
        subprocess.run([str(PEER), "install"], check=False, capture_output=True)
    d = Path(tempfile.mkdtemp(prefix="slurm-bench-"))
    d.chmod(0o755)  # munged runs as the munge user and must reach its socket dir
    r = subprocess.run([str(PEER), "start", str(d)], capture_output=True, text=True)
    if r.returncode != 0:
        print(f"# Slurm peer did not start: {r.stderr.strip()[-300:]}")
        subprocess.run([str(PEER), "stop", str(d)], capture_output=True)
        yield None
        return
    env = dict(os.environ) | {"SLURM_CONF": str(d / "etc" / "slurm.conf")}
    try:
        yield {"env": env, "dir": d}
    finally:
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
        subprocess.run([str(PEER), "stop", str(d)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def wall(cmd: list[str], env: dict[str, str], n: int) -> list[float]:
    """Wall times of ``n`` runs of a whole process, in seconds."""
    out = []
    for _ in range(n):
        t = time.perf_counter()
        subprocess.run(
            cmd, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, check=True
        )
        out.append(time.perf_counter() - t)
    return out


def median_ms(xs: list[float]) -> float:
    return statistics.median(xs) * 1000
