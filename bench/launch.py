"""bench/launch: how long from "start /bin/true, fully isolated" to "it exited", per tool.

mlq (start + wait: all namespaces, a cgroup with memory/cpu/pids limits, an
overlay root over a busybox rootfs, the supervisor's durable status and its
cleanup) side by side with what a user would pick instead, on the same rootfs:
``runc run`` and ``crun run`` on an equivalent OCI bundle (same namespaces and
limits), ``bwrap`` with the same namespaces, and ``unshare``. Prints each
tool's median (and p90) over --runs runs and mlq's ratio to each.

crun refuses this v1-hybrid cgroup host ("drop all controllers from cgroupv2")
unless /sys/fs/cgroup/unified is unmounted, so its runs happen in a child with a
private mount namespace where it is; that child times crun itself, so the
namespace set-up is not charged to crun.

    sudo .venv/bin/python bench/launch.py [--runs 300]
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

APPLETS = ("sh", "true", "ls", "cat")


def make_rootfs(root: Path) -> Path:
    (root / "bin").mkdir(parents=True)
    for d in ("proc", "sys", "dev", "tmp", "etc", "mnt"):
        (root / d).mkdir()
    shutil.copy2(shutil.which("busybox") or "/bin/busybox", root / "bin" / "busybox")
    for a in APPLETS:
        (root / "bin" / a).symlink_to("busybox")
    return root


def make_bundle(bundle: Path, rootfs: Path) -> Path:
    bundle.mkdir()
    subprocess.run(["runc", "spec"], cwd=bundle, check=True)
    cfg = json.loads((bundle / "config.json").read_text())
    cfg["root"] = {"path": str(rootfs), "readonly": False}
    cfg["process"]["args"] = ["/bin/true"]
    cfg["process"]["terminal"] = False
    cfg["linux"]["resources"] = {
        "memory": {"limit": 256 << 20},
        "pids": {"limit": 256},
        "cpu": {"quota": 100_000, "period": 100_000},
    }
    ns = cfg["linux"]["namespaces"]
    if not any(n["type"] == "cgroup" for n in ns):
        ns.append({"type": "cgroup"})
    (bundle / "config.json").write_text(json.dumps(cfg, indent=1))
    return bundle


def time_cmd(argv_for, runs: int, gap: float = 0.0) -> list[float]:
    out = []
    for i in range(runs):
        time.sleep(gap)
        argv = argv_for(i)
        t = time.perf_counter()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
        out.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.decode()[-300:]}"
            )
    return out


def time_mlq(
    rootfs: Path, state: Path, runs: int, gap: float = 0.0
) -> tuple[list[float], list[float]]:
    from mlq.executor import LaunchRequest, Outcome, Process, Resources, Root, helper, start, wait

    helper.path()
    total, started = [], []
    for i in range(runs):
        time.sleep(gap)
        req = LaunchRequest(
            run_id=f"bench-{os.getpid()}-{time.monotonic_ns()}",
            state_dir=str(state),
            process=Process(args=["/bin/true"]),
            root=Root(image=str(rootfs)),
            hostname="bench",
            resources=Resources(memory_max=256 << 20, pids_max=256, cpu_quota_us=100_000),
        )
        t = time.perf_counter()
        h = start(req)
        t1 = time.perf_counter()
        st = wait(h)
        t2 = time.perf_counter()
        if st is None or st.state != Outcome.COMPLETED:
            raise RuntimeError(f"mlq run {i}: {st}")
        started.append(t1 - t)
        total.append(t2 - t)
    return total, started


def inner_crun(bundle: str, runs: int, gap: float) -> None:
    """In a private mount namespace: hide the empty cgroup2 mount crun trips on, then time."""
    subprocess.run(["umount", "/sys/fs/cgroup/unified"], check=False)
    tag = f"{os.getpid()}-{time.monotonic_ns()}"
    times = time_cmd(lambda i: ["crun", "run", "-b", bundle, f"bench-crun-{tag}-{i}"], runs, gap)
    print(json.dumps(times))


def ms(xs: list[float], q: float = 0.5) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def measure(rootfs: Path, bundle: Path, state: Path, runs: int, gap: float) -> dict:
    results: dict[str, list[float]] = {}
    results["mlq"], started = time_mlq(rootfs, state, runs, gap)
    results["mlq start()"] = started
    if shutil.which("runc"):
        tag = f"{os.getpid()}-{time.monotonic_ns()}"
        results["runc run"] = time_cmd(
            lambda i: ["runc", "run", "-b", str(bundle), f"bench-runc-{tag}-{i}"], runs, gap
        )
    if shutil.which("crun"):
        out = subprocess.run(
            [
                "unshare",
                "-m",
                "--propagation",
                "private",
                sys.executable,
                __file__,
                "--inner-crun",
                str(bundle),
                str(runs),
                str(gap),
            ],
            capture_output=True,
            text=True,
            check=True,
        ).stdout
        results["crun run"] = json.loads(out)
    if shutil.which("bwrap"):
        bwrap = [
            "bwrap",
            "--unshare-pid",
            "--unshare-net",
            "--unshare-ipc",
            "--unshare-uts",
            "--unshare-cgroup",
            "--die-with-parent",
            "--bind",
            str(rootfs),
            "/",
            "--proc",
            "/proc",
            "--dev",
            "/dev",
            "/bin/true",
        ]
        results["bwrap"] = time_cmd(lambda i: bwrap, runs, gap)
    results["unshare"] = time_cmd(
        lambda i: ["unshare", "-fmpuinC", f"--root={rootfs}", "/bin/true"], runs, gap
    )
    return results


def report(title: str, results: dict[str, list[float]]) -> None:
    mlq_med = ms(results["mlq"])
    print(title)
    print(f"  {'tool':<12} {'median ms':>10} {'p90 ms':>8} {'mlq / tool':>11}")
    for name, xs in results.items():
        ratio = "" if name == "mlq start()" else f"{mlq_med / ms(xs):>11.2f}"
        print(f"  {name:<12} {ms(xs):>10.2f} {ms(xs, 0.9):>8.2f} {ratio}")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--spaced-runs", type=int, default=60, help="runs 50 ms apart (0: skip)")
    ap.add_argument(
        "--inner-crun", nargs=3, metavar=("BUNDLE", "RUNS", "GAP"), help=argparse.SUPPRESS
    )
    args = ap.parse_args()
    if args.inner_crun:
        inner_crun(args.inner_crun[0], int(args.inner_crun[1]), float(args.inner_crun[2]))
        return
    if os.geteuid() != 0:
        sys.exit("bench/launch needs root (namespaces, cgroups)")
    work = Path(tempfile.mkdtemp(prefix="mlq-bench-launch-"))
    try:
        rootfs = make_rootfs(work / "rootfs")
        bundle = make_bundle(work / "bundle", rootfs)
        time_mlq(rootfs, work / "state", 3)  # warm-up: build the helper, fault binaries in
        print(
            f"launch of /bin/true, fully isolated (kernel {os.uname().release}, "
            f"{os.cpu_count()} CPUs); mlq start() = until the job runs in its cgroup"
        )
        report(
            f"back to back, median of {args.runs} runs:",
            measure(rootfs, bundle, work / "state", args.runs, 0.0),
        )
        if args.spaced_runs:
            # launches 50 ms apart, as a scheduler's are: on a v1 host each cgroup join then
            # waits out a full RCU grace period, which back-to-back runs partly share
            report(
                f"50 ms apart, median of {args.spaced_runs} runs:",
                measure(rootfs, bundle, work / "state", args.spaced_runs, 0.05),
            )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
