"""Unpacking one image layer so that nothing escapes it: the tar ``data`` filter, in full.

Python 3.11's ``tarfile`` has no ``filter=``, and a root daemon that unpacks a
user's archive with plain ``extract`` can be made to write anywhere (a symlink
entry followed by a file of the same name, a hard link to ``/etc/shadow``) and to
leave setuid-root binaries and device nodes behind. Here every entry is created
relative to a directory descriptor, one path component at a time, never following
a symlink (``O_NOFOLLOW`` on each component); an existing entry is unlinked
before its replacement is created with ``O_EXCL``. What survives:

- directories, regular files, symlinks (any target: a symlink is only ever
  followed inside the job's root, after pivot_root) and hard links to entries
  already unpacked from the same archive;
- owners as archived (images need root-owned files); permission bits without
  setuid and setgid (the sticky bit stays: ``/tmp`` needs it);
- OCI whiteouts, turned into overlayfs's (``.wh.x`` -> a 0/0 character device,
  ``.wh..wh..opq`` -> the ``trusted.overlay.opaque`` xattr).

Refused (the whole layer, with the entry named): absolute or ``..`` names that
leave the layer, a path through a symlink or a file, a hard link to something
outside the archive. Dropped silently, as Docker's and containerd's unpackers
do for rootless use: device nodes and FIFOs. Extended attributes are never
restored (``tarfile`` does not read them), so no file capability survives either.
"""

from __future__ import annotations

import contextlib
import errno
import os
import stat
import tarfile

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
DIR_FLAGS = os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC
KEEP_MODE = 0o1777  # everything but setuid and setgid


class UnsafeEntry(Exception):
    """A layer entry that would escape or subvert the layer; the message names it."""


def _parts(name: str, member: str) -> list[str]:
    parts = [p for p in name.split("/") if p not in ("", ".")]
    if ".." in parts:
        raise UnsafeEntry(f"entry {member!r} leaves the layer (..)")
    return parts


class _Dirs:
    """Directory descriptors under the layer's root, opened without following symlinks."""

    def __init__(self, root: str) -> None:
        self.root = os.open(root, DIR_FLAGS)
        self._cache: dict[tuple[str, ...], int] = {(): self.root}

    def close(self) -> None:
        for fd in self._cache.values():
            os.close(fd)
        self._cache.clear()

    def forget(self, parts: tuple[str, ...]) -> None:
        """An entry was replaced: descriptors of it and below it are stale."""
        for key in [k for k in self._cache if k[: len(parts)] == parts and k]:
            os.close(self._cache.pop(key))

    def open(self, parts: tuple[str, ...], member: str, create: bool = True) -> int:
        """The directory ``parts`` (made if missing), refusing symlinks and files on the way."""
        fd = self._cache.get(parts)
        if fd is not None:
            return fd
        parent = self.open(parts[:-1], member, create)
        name = parts[-1]
        try:
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except FileNotFoundError:
            if not create:
                raise
            os.mkdir(name, 0o755, dir_fd=parent)
            fd = os.open(name, DIR_FLAGS, dir_fd=parent)
        except OSError as exc:
            if exc.errno in (errno.ELOOP, errno.ENOTDIR):
                raise UnsafeEntry(
                    f"entry {member!r} passes through {'/'.join(parts)}, which is not a directory"
                ) from None
            raise
        self._cache[parts] = fd
        return fd


def _clear(dirfd: int, name: str, keep_dir: bool) -> None:
    """Remove what stands at ``name`` so a new entry can be created there (tar's way)."""
    try:
        st = os.stat(name, dir_fd=dirfd, follow_symlinks=False)
    except FileNotFoundError:
        return
    if stat.S_ISDIR(st.st_mode):
        if keep_dir:
            return
        _rmtree_at(dirfd, name)
    else:
        os.unlink(name, dir_fd=dirfd)


def _rmtree_at(dirfd: int, name: str) -> None:
    fd = os.open(name, DIR_FLAGS, dir_fd=dirfd)
    try:
        for entry in os.listdir(fd):
            st = os.stat(entry, dir_fd=fd, follow_symlinks=False)
            if stat.S_ISDIR(st.st_mode):
                _rmtree_at(fd, entry)
            else:
                os.unlink(entry, dir_fd=fd)
    finally:
        os.close(fd)
    os.rmdir(name, dir_fd=dirfd)


def extract(tf: tarfile.TarFile, dest: str) -> int:
    """Unpack every entry of a streamed archive into ``dest``; returns how many were
    dropped (device nodes, FIFOs). Raises ``UnsafeEntry`` for an entry that escapes."""
    dirs = _Dirs(dest)
    dropped = 0
    try:
        for member in tf:
            parts = _parts(member.name, member.name)
            if not parts:
                continue
            *above, base = parts
            if member.ischr() or member.isblk() or member.isfifo():
                dropped += 1
                continue
            parent = dirs.open(tuple(above), member.name)
            if base == OPAQUE:
                os.setxattr(parent, "trusted.overlay.opaque", b"y")
                continue
            if base.startswith(WHITEOUT):
                target = base[len(WHITEOUT) :]
                dirs.forget((*above, target))
                _clear(parent, target, keep_dir=False)
                os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0), dir_fd=parent)
                continue
            if member.isdir():
                dirs.forget(tuple(parts))
                _clear(parent, base, keep_dir=True)
                with contextlib.suppress(FileExistsError):
                    os.mkdir(base, 0o700, dir_fd=parent)
                fd = dirs.open(tuple(parts), member.name, create=False)
                os.fchown(fd, member.uid, member.gid)
                os.fchmod(fd, member.mode & KEEP_MODE)
                continue
            dirs.forget(tuple(parts))
            _clear(parent, base, keep_dir=False)
            if member.issym():
                os.symlink(member.linkname, base, dir_fd=parent)
                os.chown(base, member.uid, member.gid, dir_fd=parent, follow_symlinks=False)
            elif member.islnk():
                *lab, lbase = _parts(member.linkname, member.name) or [""]
                try:
                    lparent = dirs.open(tuple(lab), member.name, create=False)
                    os.stat(lbase, dir_fd=lparent, follow_symlinks=False)
                except (FileNotFoundError, UnsafeEntry):
                    raise UnsafeEntry(
                        f"hard link {member.name!r} points to {member.linkname!r}, "
                        "which is not an earlier entry of the layer"
                    ) from None
                os.link(lbase, base, src_dir_fd=lparent, dst_dir_fd=parent, follow_symlinks=False)
            elif member.isreg():
                _write_file(tf, member, parent, base)
            else:
                dropped += 1  # unknown types: nothing a rootfs needs
    finally:
        dirs.close()
    return dropped


def _write_file(tf: tarfile.TarFile, member: tarfile.TarInfo, parent: int, base: str) -> None:
    fd = os.open(
        base,
        os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC,
        0o600,
        dir_fd=parent,
    )
    try:
        src = tf.extractfile(member)
        if src is not None:
            while chunk := src.read(1 << 20):
                view = memoryview(chunk)
                while view:
                    view = view[os.write(fd, view) :]
        os.fchown(fd, member.uid, member.gid)
        # after the chown: chown clears setuid bits, and there are none to keep anyway
        os.fchmod(fd, member.mode & KEEP_MODE)
        os.utime(fd, (member.mtime, member.mtime))
    finally:
        os.close(fd)
