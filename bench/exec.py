"""Into a running job: median wall time of `mlq exec JOB -- true` as a whole process
(and of the exec socket's round trip alone, the same request without the CLI's
Python start-up), next to what a user would do instead: `nsenter` by hand into the job's init (root,
every namespace, no cgroup, ids or seccomp: less than mlq exec does) and Slurm's
`srun --jobid=J --overlap true` into a running job of a real single-node Slurm.

Run: .venv/bin/python bench/exec.py [RUNS]
"""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from _common import MLQ, TRIVIAL_JOB, median_ms, mlq_daemon, slurm, wall
from mlq.scheduler.paths import exec_socket_path

CLUSTER = """
node: {name: bench, cpus: 64, memory: 512Gi}
teams:
  - {name: nlp, members: [root]}
"""
LONG_JOB = TRIVIAL_JOB.replace("command: [/bin/true]", "command: [/bin/sleep, '600']")


def _init_pid(state: Path, job_id: int) -> int:
    for _ in range(200):
        for sup in state.glob(f"runs/{job_id}.*/supervisor.json"):
            pid = json.loads(sup.read_text()).get("init_pid")
            if pid:
                return int(pid)
        time.sleep(0.05)
    raise RuntimeError(f"job {job_id} never started")


def _socket_round_trips(env: dict[str, str], job: int, runs: int) -> list[float]:
    """The request mlq exec sends, from connect to the command's exit line."""
    out = []
    null = os.open(os.devnull, os.O_RDWR)
    try:
        for _ in range(runs):
            t = time.perf_counter()
            with socket.socket(socket.AF_UNIX) as s:
                s.connect(exec_socket_path(env["MLQ_SOCKET"]))
                line = json.dumps({"job": job, "args": ["/bin/true"]}).encode() + b"\n"
                socket.send_fds(s, [line], [null, null, null])
                for answer in s.makefile():
                    if '"exit"' in answer:
                        break
            out.append(time.perf_counter() - t)
    finally:
        os.close(null)
    return out


def main(runs: int = 30) -> None:
    rows: list[tuple[str, float]] = []
    with tempfile.NamedTemporaryFile("w", suffix=".yaml", delete=False) as f:
        f.write(LONG_JOB)
    with mlq_daemon(CLUSTER) as d:
        env = d["env"]
        out = subprocess.run(
            [MLQ, "submit", f.name, "--json"], env=env, capture_output=True, text=True, check=True
        )
        job = json.loads(out.stdout)["jobs"][0]["id"]
        init = _init_pid(Path(env["MLQ_STATE_DIR"]), job)
        time.sleep(0.5)  # RUNNING by now
        ex = wall([MLQ, "exec", str(job), "--", "/bin/true"], env, runs)
        raw = _socket_round_trips(env, job, runs)
        helps = wall([MLQ, "--help"], env, runs)
        ns = wall(["nsenter", "-t", str(init), "-a", "/bin/true"], env, runs)
        py = wall([sys.executable, "-c", "pass"], env, runs)
        subprocess.run([MLQ, "cancel", "--now", str(job)], env=env, capture_output=True)
    rows += [
        ("python -c pass", median_ms(py)),
        ("mlq --help (the CLI's start-up)", median_ms(helps)),
        ("nsenter -t INIT -a true (root, by hand)", median_ms(ns)),
        ("exec socket round trip (no CLI)", median_ms(raw)),
        ("mlq exec JOB -- true", median_ms(ex)),
    ]
    with slurm() as s:
        if s is not None:
            with tempfile.NamedTemporaryFile("w", suffix=".sh", delete=False) as sh:
                sh.write("#!/bin/sh\nsleep 600\n")
            r = subprocess.run(
                ["sbatch", "--parsable", "-o", "/dev/null", sh.name],
                env=s["env"], capture_output=True, text=True,
            )  # fmt: skip
            jid = r.stdout.strip().split(";")[0]
            for _ in range(100):
                q = subprocess.run(
                    ["squeue", "-h", "-j", jid, "-o", "%T"],
                    env=s["env"], capture_output=True, text=True,
                )  # fmt: skip
                if q.stdout.strip() == "RUNNING":
                    break
                time.sleep(0.1)
            try:
                sr = wall(["srun", f"--jobid={jid}", "--overlap", "/bin/true"], s["env"], runs)
                rows.append(("srun --jobid=J --overlap true (Slurm)", median_ms(sr)))
            except subprocess.CalledProcessError as exc:
                print(f"# srun into a running job failed here: {exc}")
    width = max(len(r[0]) for r in rows)
    print(f"median wall time over {runs} runs, whole processes")
    for name, ms in rows:
        print(f"  {name:<{width}}  {ms:7.1f} ms")
    by = dict(rows)
    mine = by["mlq exec JOB -- true"]
    print(f"mlq exec / nsenter = {mine / by['nsenter -t INIT -a true (root, by hand)']:.1f}x")
    srun = by.get("srun --jobid=J --overlap true (Slurm)")
    if srun:
        print(f"mlq exec / srun --overlap = {mine / srun:.2f}x")


if __name__ == "__main__":
    main(int(sys.argv[1]) if len(sys.argv) > 1 else 30)
