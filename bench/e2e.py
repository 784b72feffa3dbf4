"""bench/e2e: mlq's running system next to a real single-node Slurm, in the same run.

Both schedulers get the same node (2 CPUs, 8 GPUs: declared fake GPUs for mlq, fake
device files for Slurm), the same job commands and 1-CPU jobs; mlq runs first, then
its daemon is stopped and Slurm starts, so neither competes with the other.

(a) submit -> the job's first command (it writes ``date +%s.%N`` into a host dir:
    a ``volumes:`` bind mount for mlq, the path itself for Slurm), and submit -> the
    scheduler reports it done (mlq: GET /v1/jobs/{id}; Slurm: squeue; polled every
    --poll s), median over --jobs trivial jobs run one after another. The submit is
    the user's command, a whole process on both sides: ``mlq submit FILE`` and
    ``sbatch FILE``. mlq's CLI is Python and pays tens of ms of start-up that sbatch
    (C) does not, so the rows "mlq API / sbatch" repeat mlq's series with POST
    /v1/jobs on a kept connection, the scheduler's own share (Slurm's column stays
    sbatch: the peer has no slurmrestd). Then the time to drain one array of
    /bin/true jobs (mlq: --drain; Slurm: --slurm-drain, extrapolated to --drain).
(b) preemption: a low-priority job holds all 8 GPUs, traps SIGTERM, writes the time
    and exits at once; a high-priority 1-GPU job is submitted. Measured: submit ->
    the victim's signal, submit -> the preemptor's first command. mlq: victim
    kind: training (requeue: false), preemptor kind: inference, --rounds rounds with
    ``mlq submit`` and --rounds with the API. Slurm: victim in partition low
    (PreemptMode=REQUEUE, GraceTime=10), preemptor in partition high. Slurm decides
    at the submit, but a victim submitted without --signal gets nothing at the start
    of GraceTime: SIGCONT+SIGTERM come only when it is requeued at grace end (~16 s
    here). So Slurm runs --slurm-rounds rounds as configured and --slurm-rounds with
    the victim submitted with ``--signal=B:TERM@60`` (preempt_send_user_signal then
    sends its batch shell SIGTERM at once): what a Slurm user who checkpoints does,
    and the equivalent of mlq's SIGTERM-then-grace.
    One more round with requeue: the preemptor's last command -> the victim's
    restart (Slurm's is bound by cred_expire, 10 s in the peer's config).

    .venv/bin/python bench/e2e.py                 # about 5 minutes
    .venv/bin/python bench/e2e.py --jobs 10 --drain 200 --slurm-drain 50 --rounds 2
    .venv/bin/python bench/e2e.py --no-slurm      # mlq alone

Needs root (mlq's executor, the Slurm peer). The figures depend on the machine's
load: on a shared 2-core machine expect spread, and compare ratios more than ms.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path

import yaml
from _common import MLQ, PEER, mlq_daemon
from mlq.cli.client import Client

GPUS = 8
CLUSTER = f"""
node:
  name: bench
  cpus: 2
  memory: 16Gi
  gpus: declared
  declared_gpus: [{", ".join(f"{{index: {i}, model: H100-80GB}}" for i in range(GPUS))}]
teams:
  - {{name: nlp, members: [root]}}
  - {{name: search, members: [root]}}
"""
MLQ_FINAL = {"COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "PREEMPTED"}
SLURM_ACTIVE = {
    "PENDING",
    "CONFIGURING",
    "RUNNING",
    "COMPLETING",
    "REQUEUED",
    "REQUEUE_HOLD",
    "REQUEUE_FED",
    "RESIZING",
    "SUSPENDED",
    "STAGE_OUT",
    "SIGNALING",
}


# -- the job commands, the same on both sides (only DIR and the job id variable differ) --


def start_cmd(out: str, idvar: str) -> str:
    return f"date +%s.%N > {out}/start.${idvar}"


def victim_cmd(out: str, idvar: str) -> str:
    """Holds its GPUs until a signal; writes when and which signal, then exits at once.
    ``sleep & wait``: a trap runs as soon as the signal arrives, not after the sleep."""
    return (
        f'on() {{ echo "$(date +%s.%N) $1" > {out}/signal.${idvar}; kill $! 2>/dev/null; exit 0; }}; '
        "trap 'on TERM' TERM; trap 'on INT' INT; trap 'on USR1' USR1; trap 'on HUP' HUP; "
        f"date +%s.%N >> {out}/vstart.${idvar}; "
        "sleep 1000 & wait"
    )


def preemptor_cmd(out: str, idvar: str, hold_s: float) -> str:
    tail = f"; sleep {hold_s}; date +%s.%N > {out}/end.${idvar}" if hold_s else ""
    return start_cmd(out, idvar) + tail


def read_stamps(path: Path, want: int = 1, timeout: float = 120) -> list[str]:
    """The first ``want`` complete lines of a file a job writes, waiting for them."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        try:
            text = path.read_text()
        except FileNotFoundError:
            text = ""
        lines = text.split("\n")[:-1]  # only lines the writer has finished
        if len(lines) >= want:
            return lines[:want]
        time.sleep(0.01)  # the figure is the time written in the file, not when read
    raise TimeoutError(f"read {path}: no {want} line(s) after {timeout:.0f} s")


def stamp(path: Path, want: int = 1, timeout: float = 120) -> float:
    return float(read_stamps(path, want, timeout)[want - 1].split()[0])


def until(check: Callable[[], bool], what: str, timeout: float, every: float) -> float:
    """Poll ``check`` until it holds; returns the wall time (time.time()) it first did."""
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if check():
            return time.time()
        time.sleep(every)
    raise TimeoutError(f"{what}: not after {timeout:.0f} s")


# -- mlq ---------------------------------------------------------------------------


class Mlq:
    """The mlq side: submits with ``mlq submit FILE --json``, polls the API."""

    idvar = "MLQ_JOB_ID"

    def __init__(self, env: dict[str, str], work: Path, out: Path, poll: float) -> None:
        self.env, self.work, self.out, self.poll = env, work, out, poll
        self.client = Client(env["MLQ_SOCKET"])
        self.problems: list[str] = []  # jobs that did not end as they should: reported
        self.volumes = [{"source": str(out), "target": "/out"}]

    def submit(self, spec: dict, *args: str) -> list[int]:
        path = self.work / f"job-{time.monotonic_ns()}.yaml"
        path.write_text(yaml.safe_dump(spec))
        r = subprocess.run(
            [MLQ, "submit", str(path), "--json", *args], env=self.env, capture_output=True
        )
        if r.returncode != 0:
            raise RuntimeError(f"mlq submit {path}: {r.stderr.decode().strip()}")
        return [j["id"] for j in json.loads(r.stdout)["jobs"]]

    def job(self, cmd: str, name: str) -> dict:
        return {
            "name": name,
            "team": "nlp",
            "kind": "batch",
            "command": ["/bin/sh", "-c", cmd],
            "resources": {"cpus": 1, "memory": "64Mi"},
            "volumes": self.volumes,
        }

    def state(self, job_id: int) -> str:
        return self.client.get(f"/v1/jobs/{job_id}")["state"]

    def wait(self, job_id: int, states: set[str], timeout: float = 120) -> float:
        try:
            return until(
                lambda: self.state(job_id) in states, f"mlq job {job_id}", timeout, self.poll
            )
        except TimeoutError:
            j = self.client.get(f"/v1/jobs/{job_id}")
            seen = [(e["state"], e["reason"]) for e in j["events"]]
            raise TimeoutError(
                f"mlq job {job_id}: not {sorted(states)} after {timeout:.0f} s: {seen}"
            ) from None

    def cancel_all(self) -> None:
        active = [j["id"] for j in self.client.get("/v1/jobs")["jobs"]]
        if active:
            self.client.post("/v1/jobs/cancel", {"ids": active, "now": True})
            for j in active:
                self.wait(j, MLQ_FINAL, timeout=60)

    def latency(self, n: int, api: bool = False) -> tuple[list[float], list[float], list[float]]:
        """``api``: submit with POST /v1/jobs on a kept connection instead of the CLI, to
        show the scheduler's own share without the CLI's process start-up."""
        submit, start, done = [], [], []
        spec = self.job(start_cmd("/out", self.idvar), "trivial")
        for _ in range(n):
            t0 = time.time()
            if api:
                job_id = self.client.post("/v1/jobs", {"spec": spec})["jobs"][0]["id"]
            else:
                (job_id,) = self.submit(spec)
            submit.append(time.time() - t0)
            done.append(self.wait(job_id, MLQ_FINAL) - t0)
            start.append(stamp(self.out / f"start.{job_id}") - t0)
            if (j := self.client.get(f"/v1/jobs/{job_id}"))["state"] != "COMPLETED":
                self.problems.append(f"job {job_id} ended {j['state']}: {j['reason']}")
        return submit, start, done

    def drain(self, n: int) -> float:
        spec = self.job("true", "drain") | {"command": ["/bin/true"], "volumes": []}
        t0 = time.time()
        ids = self.submit(spec, "--array", f"0-{n - 1}")

        def empty() -> bool:
            s = self.client.get("/v1/status")
            return s["running"] == 0 and s["pending"] == 0

        took = until(empty, f"mlq drain of {n}", 900, 0.05) - t0
        hist = self.client.get("/v1/history", limit=n + 10)["jobs"]
        wanted = set(ids)
        for j in hist:
            if j["id"] in wanted and j["state"] != "COMPLETED":
                self.problems.append(f"drain: job {j['id']} ended {j['state']}: {j['reason']}")
        return took

    def preemption_round(self, requeue: bool, variant: str = "cli") -> dict[str, float | str]:
        """``variant``: "cli" submits the preemptor with ``mlq submit``, "api" with POST."""
        victim = self.job(victim_cmd("/out", self.idvar), "victim") | {
            "kind": "training",
            "resources": {"gpus": GPUS, "cpus": 1, "memory": "256Mi"},
            "preemption": {"requeue": requeue},
        }
        hold = 1.0 if requeue else 0
        preemptor = self.job(preemptor_cmd("/out", self.idvar, hold), "serve") | {
            "team": "search",
            "kind": "inference",
            "resources": {"gpus": 1, "cpus": 1, "memory": "128Mi"},
        }
        (v,) = self.submit(victim)
        self.wait(v, {"RUNNING"})
        stamp(self.out / f"vstart.{v}")  # its trap is set
        t0 = time.time()
        if variant == "api":
            p = self.client.post("/v1/jobs", {"spec": preemptor})["jobs"][0]["id"]
        else:
            (p,) = self.submit(preemptor)
        sig_line = read_stamps(self.out / f"signal.{v}")[0].split()
        r: dict[str, float | str] = {
            "signal": sig_line[1],
            "to_signal": float(sig_line[0]) - t0,
            "to_start": stamp(self.out / f"start.{p}") - t0,
        }
        if requeue:
            end = stamp(self.out / f"end.{p}")
            r["requeue"] = stamp(self.out / f"vstart.{v}", want=2, timeout=60) - end
        self.wait(p, MLQ_FINAL)
        self.cancel_all()
        return r


# -- Slurm --------------------------------------------------------------------------


class Slurm:
    """The Slurm side: submits with ``sbatch``, polls ``squeue``."""

    idvar = "SLURM_JOB_ID"

    def __init__(self, env: dict[str, str], work: Path, out: Path, poll: float) -> None:
        self.env, self.work, self.out, self.poll = env, work, out, poll
        self.problems: list[str] = []  # jobs that did not end as they should: reported

    def run(self, *argv: str) -> str:
        r = subprocess.run(argv, env=self.env, capture_output=True, text=True)
        if r.returncode != 0:
            raise RuntimeError(f"{' '.join(argv)}: {r.stderr.strip()}")
        return r.stdout

    def submit(self, cmd: str, *args: str) -> int:
        path = self.work / f"job-{time.monotonic_ns()}.sh"
        path.write_text(f"#!/bin/sh\n{cmd}\n")
        out = self.run("sbatch", "--parsable", "-c", "1", "-o", "/dev/null", *args, str(path))
        return int(out.strip().split(";")[0])

    def states(self, job_id: int) -> list[str]:
        """The states of a job (one per task of an array); an unknown job has none."""
        r = subprocess.run(
            ["squeue", "-h", "-r", "-j", str(job_id), "-o", "%T"],
            env=self.env,
            capture_output=True,
            text=True,
        )
        return r.stdout.split()

    def done(self, job_id: int) -> bool:
        return not any(s in SLURM_ACTIVE for s in self.states(job_id))

    def wait(self, job_id: int, timeout: float = 120) -> float:
        return until(lambda: self.done(job_id), f"Slurm job {job_id}", timeout, self.poll)

    def cancel_all(self) -> None:
        self.run("scancel", "--user=root")
        until(lambda: not self.run("squeue", "-h").strip(), "Slurm queue empty", 120, 0.2)

    def latency(self, n: int) -> tuple[list[float], list[float], list[float]]:
        submit, start, done = [], [], []
        for _ in range(n):
            t0 = time.time()
            job_id = self.submit(start_cmd(str(self.out), self.idvar))
            submit.append(time.time() - t0)
            done.append(self.wait(job_id) - t0)
            start.append(stamp(self.out / f"start.{job_id}") - t0)
            if (s := self.states(job_id)) not in ([], ["COMPLETED"]):
                self.problems.append(f"job {job_id} ended {s}")
        return submit, start, done

    def drain(self, n: int) -> float:
        t0 = time.time()
        job_id = self.submit("true", f"--array=0-{n - 1}")
        took = until(lambda: self.done(job_id), f"Slurm drain of {n}", 1800, 0.5) - t0
        states = self.states(job_id)
        if states and (len(states) != n or set(states) != {"COMPLETED"}):
            self.problems.append(f"drain: {len(states)} tasks in {sorted(set(states))}")
        return took

    def preemption_round(self, requeue: bool, variant: str = "default") -> dict[str, float | str]:
        """``variant``: "default" submits the victim as the peer is configured, "signal"
        with --signal=B:TERM@60 so that its batch shell gets SIGTERM at preemption."""
        out = str(self.out)
        hold = 1.0 if requeue else 0
        extra = ["--signal=B:TERM@60"] if variant == "signal" else []
        v = self.submit(victim_cmd(out, self.idvar), "-p", "low", f"--gres=gpu:{GPUS}", *extra)
        until(lambda: self.states(v) == ["RUNNING"], f"Slurm victim {v}", 120, self.poll)
        stamp(self.out / f"vstart.{v}")
        t0 = time.time()
        p = self.submit(preemptor_cmd(out, self.idvar, hold), "-p", "high", "--gres=gpu:1")
        sig_line = read_stamps(self.out / f"signal.{v}", timeout=60)[0].split()
        r: dict[str, float | str] = {
            "signal": sig_line[1],
            "to_signal": float(sig_line[0]) - t0,
            "to_start": stamp(self.out / f"start.{p}", timeout=90) - t0,
        }
        if requeue:
            end = stamp(self.out / f"end.{p}")
            r["requeue"] = stamp(self.out / f"vstart.{v}", want=2, timeout=180) - end
        self.wait(p)
        self.cancel_all()
        return r


@contextmanager
def slurm_peer() -> Iterator[dict | None]:
    """_common.slurm(), on free ports: the peer's ports (6817, 6818) are fixed, and a
    Slurm that another bench runs at the same time, or left behind, holds them."""
    if not PEER.exists():
        print(f"# Slurm peer not found at {PEER}; Slurm figures skipped")
        yield None
        return
    d = Path(tempfile.mkdtemp(prefix="slurm-e2e-"))
    d.chmod(0o755)  # munged runs as the munge user and must reach its socket dir
    # a copy of the peer next to its own template: the script reads it from its folder
    (d / "peer").mkdir()
    peer = d / "peer" / "peer"
    shutil.copy2(PEER, peer)
    conf = (PEER.parent / "slurm.conf.in").read_text()
    for key, default in (("SlurmctldPort", 6817), ("SlurmdPort", 6818)):
        if f"{key}={default}\n" not in conf:
            raise RuntimeError(f"{PEER.parent / 'slurm.conf.in'}: no {key}={default} to move")
        conf = conf.replace(f"{key}={default}\n", f"{key}={free_port()}\n")
    (d / "peer" / "slurm.conf.in").write_text(conf)
    run = d / "run"
    r = subprocess.run([str(peer), "start", str(run)], capture_output=True, text=True)
    env = dict(os.environ) | {"SLURM_CONF": str(run / "etc" / "slurm.conf")}
    try:
        if r.returncode != 0:
            print(f"# Slurm peer did not start: {r.stderr.strip()[-300:]}")
            yield None
        else:
            yield {"env": env, "dir": run}
    finally:
        subprocess.run(["scancel", "--user=root"], env=env, capture_output=True)
        subprocess.run([str(peer), "stop", str(run)], capture_output=True)
        shutil.rmtree(d, ignore_errors=True)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


# -- the run and the table -----------------------------------------------------------


def measure(side: Mlq | Slurm, args: argparse.Namespace, drain_n: int, rounds: int) -> dict:
    """Everything for one scheduler: latency series, drain, preemption rounds."""
    name = type(side).__name__
    print(f"# {name}: warm-up, {args.jobs} jobs one after another", flush=True)
    side.latency(2)
    submit, start, done = side.latency(args.jobs)
    api = {}
    if isinstance(side, Mlq):
        print(f"# {name}: {args.jobs} more, submitted through the API", flush=True)
        _, api["api_start"], api["api_done"] = side.latency(args.jobs, api=True)
    print(f"# {name}: drain of {drain_n} jobs", flush=True)
    drain = side.drain(drain_n)
    # two variants each: mlq's preemptor by CLI then by API; Slurm's victim as
    # configured, then with --signal=B:TERM@60 (see the module docstring)
    first, second = ("cli", "api") if isinstance(side, Mlq) else ("default", "signal")
    rounds_of: dict[str, list[dict]] = {}
    for variant in (first, second):
        print(f"# {name}: {rounds} preemption rounds, {variant}", flush=True)
        rounds_of[variant] = [side.preemption_round(False, variant) for _ in range(rounds)]
    requeue = []
    if args.requeue:
        print(f"# {name}: one preemption round with requeue", flush=True)
        # Slurm's victim as configured: with --signal it exits by itself at once and
        # ends COMPLETED instead of being requeued
        requeue = [float(side.preemption_round(True, first)["requeue"])]
    a, b = rounds_of[first], rounds_of[second]
    return {
        "submit": submit,
        "start": start,
        "done": done,
        "drain_n": drain_n,
        "drain_s": drain,
        "a_signal": [float(r["to_signal"]) for r in a],
        "a_start": [float(r["to_start"]) for r in a],
        "b_signal": [float(r["to_signal"]) for r in b],
        "b_start": [float(r["to_start"]) for r in b],
        "signals": {v: sorted({str(r["signal"]) for r in rs}) for v, rs in rounds_of.items()},
        "rounds": {v: len(rs) for v, rs in rounds_of.items()},
        "requeue": requeue,
        "problems": side.problems,
    } | api


def run_mlq(args: argparse.Namespace, work: Path) -> dict:
    out = work / "mlq-out"
    out.mkdir(mode=0o777)
    with mlq_daemon(CLUSTER, {"MLQ_SCHEDULE_INTERVAL": "600"}) as d:
        side = Mlq(d["env"], work, out, args.poll)
        try:
            return measure(side, args, args.drain, args.rounds)
        except Exception:
            log = (d["home"] / "server.log").read_text(errors="replace")
            print("# mlq server.log, last lines:\n" + "\n".join(log.splitlines()[-30:]))
            raise
        finally:
            side.cancel_all()  # every supervisor cleans up its job before the daemon goes


def run_slurm(args: argparse.Namespace, work: Path) -> dict | None:
    out = work / "slurm-out"
    out.mkdir(mode=0o777)
    with slurm_peer() as s:
        if s is None:
            return None
        side = Slurm(s["env"], work, out, args.poll)
        try:
            return measure(side, args, args.slurm_drain, args.slurm_rounds)
        finally:
            side.cancel_all()


def fmt(xs: list[float]) -> str:
    """Median in ms, with the range when there is more than one figure."""
    if not xs:
        return "-"
    med = statistics.median(xs) * 1000
    if len(xs) == 1:
        return f"{med:,.0f}"
    return f"{med:,.0f} [{min(xs) * 1000:,.0f}-{max(xs) * 1000:,.0f}]"


def ratio(m: list[float], s: list[float]) -> str:
    if not m or not s:
        return "-"
    r = statistics.median(s) / statistics.median(m)
    return f"{r:,.1f}x" if r >= 1 else f"{r:.2f}x"


def report(m: dict | None, s: dict | None, args: argparse.Namespace) -> None:
    m = m or {}
    s = s or {}
    # (label, mlq's series, Slurm's series)
    rows = [
        (f"submit command returns (n={args.jobs})", "submit", "submit"),
        ("submit command -> job's first command", "start", "start"),
        ("submit command -> scheduler reports done", "done", "done"),
        ("mlq API / sbatch -> job's first command", "api_start", "start"),
        ("mlq API / sbatch -> scheduler reports done", "api_done", "done"),
        ("preemption: mlq submit / sbatch -> victim's signal", "a_signal", "a_signal"),
        ("  ... -> preemptor's first command", "a_start", "a_start"),
        ("  same, Slurm victim --signal=B:TERM: signal", "a_signal", "b_signal"),
        ("  ... -> preemptor's first command", "a_start", "b_start"),
        ("  mlq API / sbatch --signal: victim's signal", "b_signal", "b_signal"),
        ("  ... -> preemptor's first command", "b_start", "b_start"),
        ("preemptor ends -> requeued victim restarts", "requeue", "requeue"),
    ]
    head = ("metric", "mlq ms: median [min-max]", "Slurm ms: median [min-max]", "Slurm/mlq")
    table = [head] + [
        (label, fmt(m.get(mk, [])), fmt(s.get(sk, [])), ratio(m.get(mk, []), s.get(sk, [])))
        for label, mk, sk in rows
    ]
    widths = [max(len(r[i]) for r in table) for i in range(4)]
    print()
    for i, r in enumerate(table):
        print(
            "  ".join(
                c.ljust(w) if j == 0 else c.rjust(w)
                for j, (c, w) in enumerate(zip(r, widths, strict=True))
            )
        )
        if i == 0:
            print("  ".join("-" * w for w in widths))
    print()
    for side, figures in (("mlq", m), ("Slurm", s)):
        if figures:
            got = "; ".join(
                f"{v}: {figures['rounds'][v]} rounds, signal {'/'.join(sig)}"
                for v, sig in figures["signals"].items()
            )
            print(f"{side} preemption rounds: {got}" + "; +1 with requeue" * bool(args.requeue))
    if m:
        mrate = m["drain_n"] / m["drain_s"]
        print(f"drain: mlq {m['drain_n']:,} jobs in {m['drain_s']:.1f} s = {mrate:,.1f} jobs/s")
    if s:
        srate = s["drain_n"] / s["drain_s"]
        est = args.drain / srate
        print(
            f"drain: Slurm {s['drain_n']:,} jobs in {s['drain_s']:.1f} s = {srate:,.2f} jobs/s;"
            f" EXTRAPOLATED to {args.drain:,} jobs: {est:,.0f} s (not measured)"
        )
        if m:
            print(f"drain rate mlq/Slurm = {mrate / srate:,.1f}x")
    if s:
        print(
            "Slurm without --signal sends the victim nothing at the start of GraceTime:"
            " SIGCONT+SIGTERM come when it is requeued at grace end"
        )
    for side, figures in (("mlq", m), ("Slurm", s)):
        for problem in figures.get("problems", []):
            print(f"PROBLEM {side}: {problem}")
    if s and args.requeue:
        print(
            "Slurm's requeue wait is bound by the requeued job's BeginTime, set from"
            " cred_expire (10 s in the peer's slurm.conf, 120 s by default)"
        )


def main() -> None:
    p = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    p.add_argument("--jobs", type=int, default=30, help="sequential trivial jobs per scheduler")
    p.add_argument("--drain", type=int, default=1000, help="mlq's array of /bin/true jobs")
    p.add_argument("--slurm-drain", type=int, default=200, help="Slurm's array (slow: ~2 jobs/s)")
    p.add_argument("--rounds", type=int, default=5, help="mlq preemption rounds")
    p.add_argument("--slurm-rounds", type=int, default=3, help="Slurm preemption rounds")
    p.add_argument(
        "--no-requeue", dest="requeue", action="store_false", help="skip the requeue round"
    )
    p.add_argument("--poll", type=float, default=0.02, help="poll interval for job states, s")
    p.add_argument("--no-slurm", dest="slurm", action="store_false")
    p.add_argument("--no-mlq", dest="mlq", action="store_false")
    args = p.parse_args()
    work = Path(tempfile.mkdtemp(prefix="mlq-e2e-bench-"))
    work.chmod(0o755)
    t = time.monotonic()
    try:
        m = run_mlq(args, work) if args.mlq else None
        s = run_slurm(args, work) if args.slurm else None
    finally:
        shutil.rmtree(work, ignore_errors=True)
    report(m, s, args)
    print(f"# whole bench: {time.monotonic() - t:.0f} s")


if __name__ == "__main__":
    main()
