"""How the v2 harness picks its way: these run on the host, in a second or two."""

from __future__ import annotations

import time

import boot
import pytest

PANIC = """\
Core dump limits :
userspace - ptrace set fp regs failed, errno = 14
Kernel panic - not syncing: Attempted to kill init! exitcode=0x0000000b
"""


@pytest.fixture
def panicking_uml(tmp_path, monkeypatch):
    """A stand-in for linux.uml on an AMX host: panics before init, then hangs."""
    fake = tmp_path / "linux.uml"
    fake.write_text(f"#!/bin/sh\ncat <<'EOF'\n{PANIC}EOF\nexec sleep 600\n")
    fake.chmod(0o755)
    monkeypatch.setenv("MLQ_VM_UML", str(fake))
    monkeypatch.delenv("MLQ_VM_WAY", raising=False)
    return fake


def test_a_uml_that_panics_is_given_up_at_once_and_qemu_is_tried(
    panicking_uml, tmp_path, monkeypatch
):
    tried_qemu: list[str] = []

    def qemu(out, args, timeout=0, stop=None):
        tried_qemu.append(args)
        (out / "boot.txt").write_text("way qemu\nkernel 6.1.0-test\n")
        return boot._read(out, "qemu", "", 1.0, [])

    monkeypatch.setattr(boot, "boot_qemu", qemu)
    t0 = time.monotonic()
    r, tried = boot.run_suite(tmp_path / "work", "tests/executor")
    assert time.monotonic() - t0 < 30  # not the 60 s boot deadline: the panic is seen
    assert [t.way for t in tried] == ["uml", "qemu"]
    assert tried_qemu == ["tests/executor"]
    assert r.way == "qemu" and r.booted
    why = tried[0].why_not_booted()
    assert "ptrace set fp regs failed, errno = 14" in why and "Kernel panic" in why


def test_when_no_way_boots_the_reason_of_each_is_one_line(panicking_uml, tmp_path, monkeypatch):
    monkeypatch.setattr(
        boot,
        "boot_qemu",
        lambda out, args, timeout=0, stop=None: boot.Result(
            "qemu", False, "", notes=["qemu-system-x86_64 not found (qemu-system-x86)"]
        ),
    )
    r, tried = boot.run_suite(tmp_path / "work", "tests/executor")
    assert not r.booted
    reasons = [t.why_not_booted() for t in tried]
    assert all("\n" not in x for x in reasons)
    assert "Kernel panic" in reasons[0]
    assert "qemu-system-x86_64 not found" in reasons[1]


def test_qemu_uses_kvm_only_where_the_host_has_a_real_one(monkeypatch):
    acc, cpu = boot.accel()
    from pathlib import Path

    real = any(Path(f"/sys/module/{m}").exists() for m in ("kvm_intel", "kvm_amd"))
    assert (acc == "kvm") == (real and Path("/dev/kvm").exists())
    assert cpu == ("host" if acc == "kvm" else "Nehalem")
