"""The device allow-list of a job's cgroup: only its own device nodes can be opened.

"Only these nodes exist in the job's /dev" is not enough: a node can appear anyway
(in an image, a volume, a checkpoint dir), and opening it would reach the device.
So, as runc and crun do, the cgroup itself allows only the standard character
devices (null, zero, full, random, urandom, tty, ptmx, the job's ptys) and the
job's own devices (its GPUs, or devices an admin granted), and refuses everything
else, whatever the node's permissions say. One list of rules, two encodings: the
v1 ``devices`` controller's ``devices.allow`` lines, and on v2 a
``BPF_PROG_TYPE_CGROUP_DEVICE`` program attached to the cgroup (the kernel keeps
it attached until the cgroup is removed).
"""

from __future__ import annotations

import ctypes
import os
import platform
import stat
import struct
from dataclasses import dataclass

from mlq.executor.errors import ExecutorError


@dataclass(frozen=True)
class Rule:
    """Allow ``access`` (of "rwm") to a char ("c") or block ("b") device; None = any."""

    kind: str
    major: int | None
    minor: int | None
    access: str = "rwm"

    def v1(self) -> str:
        star = lambda n: "*" if n is None else str(n)  # noqa: E731
        return f"{self.kind} {star(self.major)}:{star(self.minor)} {self.access}"


# What every job may open (runc's defaults, less /dev/net/tun and mknod of anything).
STANDARD = (
    Rule("c", 1, 3),  # null
    Rule("c", 1, 5),  # zero
    Rule("c", 1, 7),  # full
    Rule("c", 1, 8),  # random
    Rule("c", 1, 9),  # urandom
    Rule("c", 5, 0),  # tty
    Rule("c", 5, 2),  # ptmx
    Rule("c", 136, None),  # the job's own ptys (devpts)
)


def rules_for(paths: list[str]) -> list[Rule]:
    """The standard rules plus one per host device node the job is given."""
    out = list(STANDARD)
    for p in paths:
        try:
            st = os.stat(p)
        except OSError as exc:
            raise ExecutorError(f"device {p}: {exc.strerror}") from None
        if stat.S_ISCHR(st.st_mode):
            kind = "c"
        elif stat.S_ISBLK(st.st_mode):
            kind = "b"
        else:
            raise ExecutorError(f"device {p} is not a device node")
        rule = Rule(kind, os.major(st.st_rdev), os.minor(st.st_rdev))
        if rule not in out:
            out.append(rule)
    return out


# ---------------------------------------------------------------- cgroup v2: BPF

_BPF_NR = {"x86_64": 321, "aarch64": 280}[platform.machine()]
BPF_PROG_LOAD, BPF_PROG_ATTACH = 5, 8
BPF_PROG_TYPE_CGROUP_DEVICE, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI = 15, 6, 2
DEV_TYPE = {"b": 1, "c": 2}  # BPF_DEVCG_DEV_BLOCK, _CHAR
ACCESS = {"m": 1, "r": 2, "w": 4}  # BPF_DEVCG_ACC_MKNOD, _READ, _WRITE
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


def _insn(code: int, dst: int = 0, src: int = 0, off: int = 0, imm: int = 0) -> bytes:
    return struct.pack("<BBhi", code, (src << 4) | dst, off, imm)


LDX_W, AND32_K, RSH32_K, MOV32_X, JNE_K, MOV64_K, EXIT = 0x61, 0x54, 0x74, 0xBC, 0x55, 0xB7, 0x95


def bpf_program(rules: list[Rule]) -> bytes:
    """The device program: 1 (allow) if a rule matches the access, else 0.

    The context is ``struct bpf_cgroup_dev_ctx {u32 access_type; u32 major; u32
    minor;}`` with the access bits in the high half of access_type and the type
    in the low half (as runc's devicefilter reads it)."""
    head = [
        _insn(LDX_W, 2, 1, 0),  # r2 = access_type
        _insn(AND32_K, 2, imm=0xFFFF),  # r2 = type
        _insn(LDX_W, 3, 1, 0),
        _insn(RSH32_K, 3, imm=16),  # r3 = access
        _insn(LDX_W, 4, 1, 4),  # r4 = major
        _insn(LDX_W, 5, 1, 8),  # r5 = minor
    ]
    prog = list(head)
    for r in rules:
        allowed = sum(ACCESS[c] for c in r.access)
        # r1 = access & ~allowed: non-zero means an access the rule does not allow
        checks = [(1, 0)]
        checks += [(4, r.major)] if r.major is not None else []
        checks += [(5, r.minor)] if r.minor is not None else []
        size = 1 + 2 + len(checks) + 2
        # every jump skips to the end of this rule's block: the next rule
        block = [_insn(JNE_K, 2, off=size - 1, imm=DEV_TYPE[r.kind])]
        block += [_insn(MOV32_X, 1, 3), _insn(AND32_K, 1, imm=~allowed & 0xFFFF)]
        for reg, val in checks:
            block.append(_insn(JNE_K, reg, off=size - len(block) - 1, imm=val))
        block += [_insn(MOV64_K, 0, imm=1), _insn(EXIT)]
        prog += block
    prog += [_insn(MOV64_K, 0, imm=0), _insn(EXIT)]  # no rule matched: refuse
    return b"".join(prog)


def _bpf(cmd: int, attr: ctypes.Array) -> int:
    r = _libc.syscall(_BPF_NR, cmd, attr, len(attr))
    if r < 0:
        raise OSError(ctypes.get_errno(), os.strerror(ctypes.get_errno()))
    return int(r)


def attach_v2(cgroup_dir: str, rules: list[Rule]) -> None:
    """Load the device program and attach it to the cgroup (the cgroup keeps it)."""
    code = bpf_program(rules)
    insns = ctypes.create_string_buffer(code, len(code))
    license = ctypes.create_string_buffer(b"GPL")
    log = ctypes.create_string_buffer(1 << 16)
    attr = ctypes.create_string_buffer(128)
    struct.pack_into(
        "<IIQQIIQ",
        attr,
        0,
        BPF_PROG_TYPE_CGROUP_DEVICE,
        len(code) // 8,
        ctypes.addressof(insns),
        ctypes.addressof(license),
        1,
        len(log),
        ctypes.addressof(log),
    )
    struct.pack_into("<I", attr, 68, BPF_CGROUP_DEVICE)  # expected_attach_type
    try:
        prog = _bpf(BPF_PROG_LOAD, attr)
    except OSError as exc:
        text = log.value.decode(errors="replace").strip().splitlines()[-1:] or [""]
        raise ExecutorError(
            f"load the device filter for {cgroup_dir}: {exc.strerror} {text[0]}"
        ) from None
    try:
        cg = os.open(cgroup_dir, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
        try:
            a = ctypes.create_string_buffer(32)
            struct.pack_into("<IIII", a, 0, cg, prog, BPF_CGROUP_DEVICE, BPF_F_ALLOW_MULTI)
            _bpf(BPF_PROG_ATTACH, a)
        finally:
            os.close(cg)
    except OSError as exc:
        raise ExecutorError(f"attach the device filter to {cgroup_dir}: {exc.strerror}") from None
    finally:
        os.close(prog)
