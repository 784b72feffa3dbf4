"""Opening host paths as the job's user: the kernel checks every access, not mlq.

A root daemon that opens a path a user named (an image tarball, an OCI layout, a
volume source) must open it with that user's credentials, or the user reaches
what they could not reach on the host (a file inside another user's 0700 home, a
0600 root tarball). Linux keeps the filesystem credentials (fsuid, fsgid and the
supplementary groups) per *thread* at the syscall level; glibc's wrappers
broadcast ``setgroups`` to every thread, so the raw syscalls are used here and the
change stays on the calling thread for the duration of one ``with`` block. While
the fsuid is not 0 the kernel also clears the thread's file capabilities
(CAP_DAC_OVERRIDE and friends), so root's bypasses are gone too.

The C helper does the same (``setfsuid``) when it opens volume sources for its
bind mounts, so a path swapped for a symlink after the check changes nothing.
"""

from __future__ import annotations

import ctypes
import errno
import os
import platform
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass

# raw syscall numbers: glibc's setgroups() would change every thread of the daemon
_NR = {
    "x86_64": {"setgroups": 116, "setfsuid": 122, "setfsgid": 123},
    "aarch64": {"setgroups": 159, "setfsuid": 151, "setfsgid": 152},
}[platform.machine()]
_libc = ctypes.CDLL(None, use_errno=True)
_libc.syscall.restype = ctypes.c_long


@dataclass(frozen=True)
class HostUser:
    """Who a path is opened as: host uid, gid and supplementary gids."""

    uid: int
    gid: int
    groups: tuple[int, ...] = ()

    @property
    def is_root(self) -> bool:
        return self.uid == 0


def _setgroups(groups: tuple[int, ...] | list[int]) -> None:
    arr = (ctypes.c_uint * max(1, len(groups)))(*groups)
    if _libc.syscall(_NR["setgroups"], len(groups), arr) != 0:
        e = ctypes.get_errno()
        raise OSError(e, f"setgroups: {os.strerror(e)}")


def _setfs(which: str, ident: int) -> None:
    _libc.syscall(_NR[which], ident)
    # setfsuid reports no error; asking with -1 returns the value now in force
    if _libc.syscall(_NR[which], -1) != ident:
        raise OSError(errno.EPERM, f"{which}({ident}) did not take effect")


@contextmanager
def as_user(user: HostUser) -> Iterator[None]:
    """This thread's filesystem accesses are the user's until the block ends."""
    if user.is_root or os.geteuid() != 0:
        yield  # root reaches everything anyway; a non-root process can only be itself
        return
    saved = os.getgroups()
    _setgroups(tuple(user.groups) or (user.gid,))
    try:
        _setfs("setfsgid", user.gid)
        try:
            _setfs("setfsuid", user.uid)
            try:
                yield
            finally:
                _setfs("setfsuid", 0)
        finally:
            _setfs("setfsgid", 0)
    finally:
        _setgroups(saved)


def open_as(user: HostUser, path: str, flags: int = os.O_RDONLY) -> int:
    """``os.open`` with the user's credentials (close-on-exec added)."""
    with as_user(user):
        return os.open(path, flags | os.O_CLOEXEC)


def reachable_as(user: HostUser, path: str) -> OSError | None:
    """None if the user can reach ``path`` (search permission on every directory on
    the way, following symlinks as they would), else the error they would get."""
    try:
        fd = open_as(user, path, os.O_PATH)
    except OSError as exc:
        return exc
    os.close(fd)
    return None


def supplementary_groups(uid: int, gid: int) -> tuple[int, ...]:
    """A user's groups as this node knows them now (Slurm's initgroups at launch); a
    uid the node does not know keeps only its primary group."""
    import pwd

    try:
        name = pwd.getpwuid(uid).pw_name
    except KeyError:
        return (gid,)
    return tuple(os.getgrouplist(name, gid))


def home_of(uid: int) -> str:
    """A user's home directory as this node knows it (``/`` for a uid it does not)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_dir or "/"
    except KeyError:
        return "/"


def user_name(uid: int) -> str:
    """A user's name as this node knows it (``""`` for a uid it does not)."""
    import pwd

    try:
        return pwd.getpwuid(uid).pw_name
    except KeyError:
        return ""
