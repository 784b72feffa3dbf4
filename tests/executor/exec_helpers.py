"""Helpers for the executor's tests: run a job, build a rootfs, make device nodes."""

from __future__ import annotations

import os
import shutil
import stat
import subprocess
from pathlib import Path

import pytest
from mlq.executor import LaunchRequest, Process, Resources, Status, kill_now, start, wait

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = [
    "sh",
    "ls",
    "cat",
    "echo",
    "touch",
    "mkdir",
    "rm",
    "sleep",
    "hostname",
    "mount",
    "id",
    "grep",
    "wc",
    "test",
    "kill",
    "ps",
    "true",
    "false",
    "printf",
    "head",
    "tail",
    "sed",
    "ip",
    "nc",
    "stat",
    "env",
    "trap",
    "find",
    "dd",
    "uname",
]


def cgroup_leftovers() -> list[str]:
    out = []
    root = Path("/sys/fs/cgroup")
    for parent in [root / "mlq", *root.glob("*/mlq")]:
        if parent.is_dir():
            out += [str(p) for p in parent.iterdir() if p.is_dir()]
    return out


def leftovers(marker: str) -> list[str]:
    found = cgroup_leftovers()
    with open("/proc/self/mountinfo") as f:
        found += [line.split()[4] for line in f if marker in line]
    if os.path.isdir("/sys/class/net"):
        found += [n for n in os.listdir("/sys/class/net") if n.startswith(("mlqv", "mlqp"))]
    if os.path.isdir("/run/netns"):
        found += [f"/run/netns/{n}" for n in os.listdir("/run/netns") if n.startswith("mlq-")]
    for pid in os.listdir("/proc"):
        if pid.isdigit():
            try:
                comm = Path(f"/proc/{pid}/comm").read_text().strip()
                st = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0]
            except OSError:
                continue
            if comm.startswith("mlq-runtime") and st not in ("Z", "X"):
                found.append(f"process {pid} {comm}")
            if comm == "mlq-init":
                found.append(f"process {pid} {comm}")
    return found


def make_rootfs(root: Path, files: dict[str, str] | None = None) -> Path:
    """A minimal root filesystem: static busybox and its applets, plus ``files``."""
    (root / "bin").mkdir(parents=True, exist_ok=True)
    for d in ("etc", "proc", "sys", "dev", "tmp"):
        (root / d).mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for a in APPLETS:
        link = root / "bin" / a
        if not link.exists():
            link.symlink_to("busybox")
    for rel, text in (files or {}).items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


_counter = [0]


def request(state_dir: str, args: list[str], **kw) -> LaunchRequest:
    _counter[0] += 1
    proc_kw = {k: kw.pop(k) for k in ("env", "cwd", "user", "capabilities", "seccomp") if k in kw}
    return LaunchRequest(
        run_id=kw.pop("run_id", f"t{os.getpid()}-{_counter[0]}"),
        state_dir=state_dir,
        process=Process(args=args, **proc_kw),
        hostname=kw.pop("hostname", "testjob"),
        resources=kw.pop("resources", Resources(memory_max=256 * 2**20, pids_max=256)),
        **kw,
    )


def finish(handle, timeout: float = 60) -> Status:
    st = wait(handle, timeout=timeout)
    if st is None:
        kill_now(handle)
        st = wait(handle, timeout=10)
        pytest.fail(f"run {handle.run_id} did not end within {timeout}s: {st}")
    return st


def run(state_dir: str, args: list[str], **kw) -> tuple[Status, str, str]:
    """Start a job, wait for it, and return its status, stdout and stderr."""
    h = start(request(state_dir, args, **kw))
    st = finish(h)
    return st, Path(h.stdout).read_text(), Path(h.stderr).read_text()


def mknod_char(path: Path, major: int, minor: int) -> str:
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    return str(path)


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout
