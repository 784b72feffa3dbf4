"""Boots a real cgroup v2 kernel over this machine's own filesystem and runs a suite in it.

Two ways, tried in this order:

1. **user-mode-linux** (Debian's ``user-mode-linux``): a Linux kernel as an ordinary
   process over hostfs, near native speed, booted in about 3 s. It panics before its
   init runs on CPUs with AMX tile state ("ptrace set fp regs failed, errno = 14").
2. **qemu** (Debian's ``qemu-system-x86``): Debian's own kernel (``kernel.py`` caches
   it) over a virtio-9p root, with KVM where the host has a real one (``kvm_intel``
   or ``kvm_amd``: the ``/dev/kvm`` of these VMs is a paravirtual hypervisor that
   cannot run a stock kernel) and otherwise software emulation, where CPU work is
   about 7-15x slower than on the host.

Either way ``guest-init.sh`` is PID 1: it mounts cgroup2 with memory, cpu, pids and
io enabled, runs pytest on the given paths and writes ``boot.txt``, ``junit.xml``,
``pytest.txt`` and ``exit_code`` to a host directory. Both ways need root (hostfs
and 9p passthrough keep the files' owners).

``python tests/vm/boot.py [PYTEST ARGS]`` runs only this part and prints the counts;
``MLQ_VM_WAY=qemu`` (or ``uml``) skips the other way.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import time
import xml.etree.ElementTree as ET
from dataclasses import dataclass, field
from pathlib import Path
from threading import Event

HERE = Path(__file__).resolve().parent
REPO = HERE.parents[1]
INIT = HERE / "guest-init.sh"
DEFAULT_ARGS = "tests/executor"
# a boot of the qemu way's guest writes boot.txt within about 10 s; the suite itself
# takes minutes under software emulation
TIMEOUT_S = int(os.environ.get("MLQ_VM_TIMEOUT", "900"))
# seconds each way may take to reach its init (seen: UML 3 s, qemu 5-10 s unloaded)
BOOT_S = {"uml": 60, "qemu": 180}
QBOOT = Path("/usr/share/qemu/qboot.rom")
KERNEL_ARGS = [
    "panic=-1",
    "cgroup_no_v1=all",
    "mitigations=off",
    "random.trust_cpu=on",
    "cryptomgr.notests",
    "apparmor=0",
    "audit=0",
    "nowatchdog",
    "quiet",
]


@dataclass
class Result:
    """What one boot left in its output dir, read back on the host."""

    way: str
    booted: bool
    console: str
    boot: str = ""
    tests: int = 0
    failures: int = 0
    errors: int = 0
    skipped: int = 0
    exit_code: int | None = None
    report: str = ""
    seconds: float = 0.0
    notes: list[str] = field(default_factory=list)

    def counts(self) -> str:
        return (
            f"{self.tests} tests, {self.failures} failed, {self.errors} errors, "
            f"{self.skipped} skipped"
        )

    @property
    def passed(self) -> bool:
        return (
            self.booted
            and self.tests > 0
            and self.failures == self.errors == self.skipped == 0
            and self.exit_code == 0
        )

    def why_not_booted(self) -> str:
        """One line: the console's last two lines that say what broke, and any notes."""
        lines = [ln.strip() for ln in self.console.splitlines() if ln.strip()]
        words = ("panic", "failed", "error", "errno", "not found")
        hits = [ln for ln in lines if any(w in ln.lower() for w in words)]
        parts = hits[-2:] or lines[-1:] or ([] if self.notes else ["no console output"])
        return "; ".join([p[-200:] for p in parts] + self.notes)


def _read(out: Path, way: str, console: str, seconds: float, notes: list[str]) -> Result:
    boot = out / "boot.txt"
    r = Result(way=way, booted=boot.exists(), console=console, seconds=seconds, notes=notes)
    if not r.booted:
        return r
    r.boot = boot.read_text()
    r.report = (out / "pytest.txt").read_text() if (out / "pytest.txt").exists() else ""
    if (out / "exit_code").exists():
        r.exit_code = int((out / "exit_code").read_text().strip() or -1)
    if (out / "junit.xml").exists():
        suite = ET.parse(out / "junit.xml").getroot().find("testsuite")
        if suite is not None:
            r.tests = int(suite.get("tests", 0))
            r.failures = int(suite.get("failures", 0))
            r.errors = int(suite.get("errors", 0))
            r.skipped = int(suite.get("skipped", 0))
    return r


def _guest_env(out: Path, way: str, modules: Path, args: str) -> list[str]:
    return [
        f"MLQ_VM_WAY={way}",
        f"MLQ_VM_OUT={out}",
        f"MLQ_VM_REPO={REPO}",
        f"MLQ_VM_MODULES={modules}",
        f"MLQ_VM_ARGS={args}",
        "MLQ_EXPECT_CGROUP=2",
    ]


def _run(
    way: str, cmd: list[str], out: Path, console: Path, timeout: int, stop: Event | None
) -> Result:
    """Runs one guest to its end. A guest that has not written boot.txt within
    BOOT_S, or whose console shows a kernel panic first, is killed: that way
    cannot boot here, and the next one gets its turn at once."""
    notes: list[str] = []
    t0 = time.monotonic()
    with open(console, "w") as con:
        try:
            proc = subprocess.Popen(
                cmd, stdin=subprocess.DEVNULL, stdout=con, stderr=subprocess.STDOUT
            )
        except OSError as e:
            return Result(way, False, "", notes=[f"could not start {cmd[0]}: {e}"])
        try:
            while proc.poll() is None:
                elapsed = time.monotonic() - t0
                booted = (out / "boot.txt").exists()
                if stop is not None and stop.is_set():
                    notes.append("stopped: the test session ended first")
                    break
                if not booted and elapsed > BOOT_S[way]:
                    notes.append(f"did not reach its init within {BOOT_S[way]}s")
                    break
                if not booted and "Kernel panic" in console.read_text(errors="replace"):
                    time.sleep(0.5)  # the panic's own lines, for the report
                    break
                if elapsed > timeout:
                    notes.append(f"did not finish in {timeout}s")
                    break
                time.sleep(0.25)
        finally:
            if proc.poll() is None:
                proc.kill()
            proc.wait()
    text = console.read_text(errors="replace") if console.exists() else ""
    return _read(out, way, text, time.monotonic() - t0, notes)


def uml_command() -> list[str] | None:
    """Debian's user-mode-linux kernel (``MLQ_VM_UML`` names another, as tests do)."""
    linux = (
        os.environ.get("MLQ_VM_UML")
        or shutil.which("linux.uml")
        or shutil.which("linux", path="/usr/bin")
    )
    return [linux] if linux else None


def boot_uml(out: Path, args: str, timeout: int = TIMEOUT_S, stop: Event | None = None) -> Result:
    linux = uml_command()
    if linux is None:
        return Result("uml", False, "", notes=["linux.uml not found (Debian's user-mode-linux)"])
    modules = Path("/usr/lib/uml/modules")
    cmd = [
        *linux,
        "mem=1G",
        "root=/dev/root",
        "rootfstype=hostfs",
        "rootflags=/",
        "rw",
        f"init={INIT}",
        "quiet",
        "con=null",
        "con0=fd:0,fd:1",
        *_guest_env(out, "uml", modules, args),
    ]
    return _run("uml", cmd, out, out.parent / "uml-console.txt", timeout, stop)


def accel() -> tuple[str, str]:
    """qemu's accelerator and CPU model: KVM only where the host has a real one."""
    if Path("/dev/kvm").exists() and any(
        Path(f"/sys/module/{m}").exists() for m in ("kvm_intel", "kvm_amd")
    ):
        return "kvm", "host"
    # Nehalem: under TCG it ran hashing about 2.5x faster than "max"
    return "tcg,thread=multi", "Nehalem"


def boot_qemu(out: Path, args: str, timeout: int = TIMEOUT_S, stop: Event | None = None) -> Result:
    sys.path.insert(0, str(HERE))
    import kernel  # tests/vm/kernel.py

    qemu = shutil.which("qemu-system-x86_64")
    if qemu is None:
        return Result("qemu", False, "", notes=["qemu-system-x86_64 not found (qemu-system-x86)"])
    try:
        k = kernel.ensure()
    except kernel.BuildError as e:
        return Result("qemu", False, "", notes=[f"no kernel: {e}"])
    acc, cpu = accel()
    cpus = max(1, min(4, os.cpu_count() or 1))
    firmware = ["-bios", str(QBOOT)] if QBOOT.exists() else []
    cmd = [
        qemu,
        "-M",
        "pc",
        "-accel",
        acc,
        "-cpu",
        cpu,
        "-smp",
        str(cpus),
        "-m",
        "2048",
        "-nodefaults",
        "-no-user-config",
        "-nographic",
        "-no-reboot",
        *firmware,
        "-kernel",
        str(k.vmlinux),
        "-initrd",
        str(k.initramfs),
        "-append",
        " ".join(
            [
                "console=ttyS0",
                *KERNEL_ARGS,
                f"MLQ_GUEST_INIT={INIT}",
                *_guest_env(out, "qemu", k.modules, args),
            ]
        ),
        "-fsdev",
        "local,id=root,path=/,security_model=passthrough,multidevs=remap",
        "-device",
        "virtio-9p-pci,fsdev=root,mount_tag=root",
        "-serial",
        "stdio",
    ]
    return _run("qemu", cmd, out, out.parent / "qemu-console.txt", timeout, stop)


def run_suite(
    workdir: Path, args: str = DEFAULT_ARGS, stop: Event | None = None
) -> tuple[Result, list[Result]]:
    """Boots the first way that works and runs ``args`` in it.

    Returns the way that booted (or the last one tried) and every attempt, so a
    caller can say why each way that did not boot failed."""
    ways = {"uml": boot_uml, "qemu": boot_qemu}
    only = os.environ.get("MLQ_VM_WAY")
    order = [only] if only in ways else list(ways)
    tried: list[Result] = []
    for way in order:
        out = workdir / way
        out.mkdir(parents=True, exist_ok=True)
        r = ways[way](out, args, stop=stop)
        tried.append(r)
        if r.booted or (stop is not None and stop.is_set()):
            return r, tried
    return tried[-1], tried


def main(argv: list[str]) -> int:
    sys.path.insert(0, str(REPO / "executor"))
    args = " ".join(argv) or DEFAULT_ARGS
    work = Path(tempfile.mkdtemp(prefix="mlq-vm-"))
    try:
        r, tried = run_suite(work, args)
        for t in tried:
            if not t.booted:
                print(f"{t.way}: did not boot: {t.why_not_booted()}")
        if not r.booted:
            return 1
        print(r.report[-4000:])
        print(f"{r.way}: {r.counts()} in {r.seconds:.0f}s")
        return 0 if r.passed else 1
    finally:
        shutil.rmtree(work, ignore_errors=True)


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
