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


def time_cmd(argv_for, runs: int) -> list[float]:
    out = []
    for i in range(runs):
        argv = argv_for(i)
        t = time.perf_counter()
        proc = subprocess.run(argv, stdin=subprocess.DEVNULL, capture_output=True)
        out.append(time.perf_counter() - t)
        if proc.returncode != 0:
            raise RuntimeError(
                f"{' '.join(argv)}: exit {proc.returncode}: {proc.stderr.decode()[-300:]}"
            )
    return out


def time_mlq(rootfs: Path, state: Path, runs: int) -> tuple[list[float], list[float]]:
    from mlq.executor import LaunchRequest, Outcome, Process, Resources, Root, helper, start, wait

    helper.path()
    total, started = [], []
    for i in range(runs):
        req = LaunchRequest(
            run_id=f"bench-{os.getpid()}-{i}",
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
        shutil.rmtree(h.run_dir, ignore_errors=True)
    return total, started


def inner_crun(bundle: str, runs: int) -> None:
    """In a private mount namespace: hide the empty cgroup2 mount crun trips on, then time."""
    subprocess.run(["umount", "/sys/fs/cgroup/unified"], check=False)
    times = time_cmd(lambda i: ["crun", "run", "-b", bundle, f"bench-crun-{os.getpid()}-{i}"], runs)
    print(json.dumps(times))


def ms(xs: list[float], q: float = 0.5) -> float:
    xs = sorted(xs)
    return xs[min(len(xs) - 1, int(q * len(xs)))] * 1000


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--runs", type=int, default=300)
    ap.add_argument("--inner-crun", nargs=2, metavar=("BUNDLE", "RUNS"), help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.inner_crun:
        inner_crun(args.inner_crun[0], int(args.inner_crun[1]))
        return
    if os.geteuid() != 0:
        sys.exit("bench/launch needs root (namespaces, cgroups)")
    work = Path(tempfile.mkdtemp(prefix="mlq-bench-launch-"))
    try:
        rootfs = make_rootfs(work / "rootfs")
        bundle = make_bundle(work / "bundle", rootfs)
        results: dict[str, list[float]] = {}
        # warm-up: compile the helper, fault in the binaries
        time_mlq(rootfs, work / "state", 3)
        mlq_total, mlq_started = time_mlq(rootfs, work / "state", args.runs)
        results["mlq"] = mlq_total
        if shutil.which("runc"):
            results["runc run"] = time_cmd(
                lambda i: ["runc", "run", "-b", str(bundle), f"bench-runc-{os.getpid()}-{i}"],
                args.runs,
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
                    str(args.runs),
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
            results["bwrap"] = time_cmd(lambda i: bwrap, args.runs)
        results["unshare"] = time_cmd(
            lambda i: ["unshare", "-fmpuinC", f"--root={rootfs}", "/bin/true"], args.runs
        )
        mlq_med = ms(mlq_total)
        print(
            f"launch of /bin/true, fully isolated, median of {args.runs} runs "
            f"(kernel {os.uname().release}, {os.cpu_count()} CPUs)"
        )
        print(f"{'tool':<10} {'median ms':>10} {'p90 ms':>8} {'mlq / tool':>11}")
        for name, xs in results.items():
            print(f"{name:<10} {ms(xs):>10.2f} {ms(xs, 0.9):>8.2f} {mlq_med / ms(xs):>11.2f}")
        print(
            f"mlq start() returned (job running in its cgroup) after {ms(mlq_started):.2f} ms median;"
            " the rest is the job, its reaping, the fsync'd status and the cleanup"
        )
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    main()
