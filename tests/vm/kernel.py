"""Builds and caches what the qemu way boots: Debian's kernel, its modules, an initramfs.

Used by ``tests/vm`` whenever user-mode-linux cannot boot (hosts with AMX tile
state). Nothing under /boot changes: the current ``linux-image-amd64`` kernel
package is fetched with ``apt-get download`` and unpacked with ``dpkg-deb -x``
into a scratch dir, and from it the cache keeps:

- ``vmlinux``: the uncompressed kernel (the xz payload of the bzImage), which
  qboot starts in a few seconds where the compressed one takes about 20;
- ``modules/lib/modules/<release>``: only the modules the guest loads (9p and
  virtio to mount the host's ``/``; overlay, veth and bridge for the executor)
  with their dependencies and a fresh ``modules.dep``, for ``modprobe -d``;
- ``initramfs.cpio``: a static busybox, the 9p and virtio modules, and an
  ``/init`` that mounts the host's ``/`` over virtio-9p and switches to it.

The cache lives outside the checkout (``MLQ_VM_CACHE``, default
``/var/cache/mlq-tests/vm``), is built under a lock, appears all at once (built
in a scratch dir and renamed), and is rebuilt when missing. Run as a script
(``scripts/test`` does) to build it ahead of the tests.
"""

from __future__ import annotations

import fcntl
import lzma
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path

CACHE = Path(os.environ.get("MLQ_VM_CACHE", "/var/cache/mlq-tests/vm"))
BUSYBOX = Path("/bin/busybox")
# modules the initramfs loads to reach the root filesystem, and those the guest's
# init loads from the 9p root for the executor's tests
ROOT_MODULES = ["virtio_pci", "9pnet_virtio", "9p"]
GUEST_MODULES = ["overlay", "veth", "bridge"]
# for mlq's nftables table (NAT of bridge jobs); a kernel without them skips those tests
NFT_MODULES = ["nf_tables", "nft_chain_nat", "nft_masq", "nft_ct"]
XZ_MAGIC = b"\xfd7zXZ\x00"


class BuildError(Exception):
    """The qemu way's kernel could not be made ready; the message says which step."""


@dataclass(frozen=True)
class Kernel:
    """A ready cache entry: what ``boot.py`` hands to qemu."""

    release: str
    vmlinux: Path
    initramfs: Path
    modules: Path  # the ``-d`` directory for the guest's modprobe


def ready() -> Kernel | None:
    """The cached kernel, if a complete one is there."""
    current = CACHE / "current"
    try:
        release = (current / "release").read_text().strip()
    except OSError:
        return None
    k = Kernel(release, current / "vmlinux", current / "initramfs.cpio", current / "modules")
    return k if k.vmlinux.exists() and k.initramfs.exists() else None


def ensure() -> Kernel:
    """The cached kernel, built first if it is missing (minutes at most: one download)."""
    if (k := ready()) is not None:
        return k
    CACHE.mkdir(parents=True, exist_ok=True)
    with open(CACHE / ".lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if (k := ready()) is not None:  # another process built it while we waited
            return k
        with tempfile.TemporaryDirectory(dir=CACHE, prefix=".build-") as scratch:
            entry = _build(Path(scratch))
            current = CACHE / "current"
            if current.is_symlink() or current.exists():
                old = current.resolve()
                current.unlink()
                shutil.rmtree(old, ignore_errors=True)
            final = CACHE / entry.name
            shutil.rmtree(final, ignore_errors=True)
            entry.rename(final)
            current.symlink_to(final.name)
    k = ready()
    if k is None:
        raise BuildError(f"built the kernel cache in {CACHE} but it is not complete")
    return k


def _run(cmd: list[str], cwd: Path | None = None) -> str:
    try:
        p = subprocess.run(cmd, cwd=cwd, capture_output=True, text=True, check=False)
    except FileNotFoundError as e:
        raise BuildError(f"{cmd[0]}: not installed ({e})") from e
    if p.returncode != 0:
        raise BuildError(f"{' '.join(cmd)}: exit {p.returncode}: {p.stderr.strip()[-500:]}")
    return p.stdout


def _kernel_package() -> str:
    """The image package that ``linux-image-amd64`` points at today."""
    out = _run(["apt-cache", "depends", "linux-image-amd64"])
    for line in out.splitlines():
        dep = line.strip().removeprefix("Depends:").strip()
        if dep.startswith("linux-image-") and dep != "linux-image-amd64":
            return dep
    raise BuildError("apt-cache depends linux-image-amd64 names no linux-image-* package")


def _build(scratch: Path) -> Path:
    package = _kernel_package()
    debs = scratch / "debs"
    debs.mkdir()
    download = ["apt-get", "download", "-q", "-o", "APT::Sandbox::User=root", package]
    try:
        _run(download, cwd=debs)
    except BuildError:  # package lists older than the mirror: refresh them once
        _run(["apt-get", "update", "-q"])
        _run(download, cwd=debs)
    deb = next(debs.glob("*.deb"), None)
    if deb is None:
        raise BuildError(f"apt-get download {package} left no .deb")
    unpacked = scratch / "unpacked"
    _run(["dpkg-deb", "-x", str(deb), str(unpacked)])
    releases = [p.name for p in (unpacked / "lib" / "modules").iterdir()]
    if len(releases) != 1:
        raise BuildError(f"{deb.name}: expected one module tree, found {releases}")
    release = releases[0]
    entry = scratch / release
    entry.mkdir()
    (entry / "vmlinux").write_bytes(_vmlinux(unpacked / "boot" / f"vmlinuz-{release}"))

    tree = unpacked / "lib" / "modules" / release
    _run(["depmod", "-b", str(unpacked), release])
    deps = _module_deps(tree)
    root_mods = _closure(deps, ROOT_MODULES)
    kept = _closure(deps, ROOT_MODULES + GUEST_MODULES + NFT_MODULES)
    dest = entry / "modules" / "lib" / "modules" / release
    for rel in kept:
        (dest / rel).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(tree / rel, dest / rel)
    for name in ("modules.builtin", "modules.builtin.modinfo", "modules.order"):
        if (tree / name).exists():
            shutil.copy2(tree / name, dest / name)
    _run(["depmod", "-b", str(entry / "modules"), release])
    _initramfs(entry / "initramfs.cpio", tree, root_mods)
    (entry / "release").write_text(release + "\n")
    return entry


def _vmlinux(bzimage: Path) -> bytes:
    """The ELF kernel inside a bzImage (what the kernel's extract-vmlinux does for xz)."""
    data = bzimage.read_bytes()
    at = data.find(XZ_MAGIC)
    while at >= 0:
        try:
            out = lzma.LZMADecompressor(format=lzma.FORMAT_XZ).decompress(data[at:])
        except lzma.LZMAError:
            out = b""
        if out[:4] == b"\x7fELF":
            return out
        at = data.find(XZ_MAGIC, at + 1)
    raise BuildError(f"{bzimage}: no xz-compressed ELF kernel inside (not CONFIG_KERNEL_XZ?)")


def _module_deps(tree: Path) -> dict[str, tuple[str, list[str]]]:
    """Module name -> (its path in the tree, the paths it depends on), from modules.dep."""
    deps: dict[str, tuple[str, list[str]]] = {}
    for line in (tree / "modules.dep").read_text().splitlines():
        path, _, rest = line.partition(":")
        name = Path(path).name.split(".ko")[0].replace("-", "_")
        deps[name] = (path, rest.split())
    return deps


def _closure(deps: dict[str, tuple[str, list[str]]], names: list[str]) -> list[str]:
    """Paths of ``names`` and everything they need, each after what it needs."""
    by_path = {path: d for path, d in deps.values()}
    order: list[str] = []

    def visit(path: str) -> None:
        if path in order:
            return
        for d in reversed(by_path.get(path, [])):
            visit(d)
        order.append(path)

    for n in names:
        if n not in deps:
            continue  # built into this kernel: nothing to load
        visit(deps[n][0])
    return order


INIT = """#!/bin/busybox sh
# PID 1 of the initramfs: load 9p and virtio, mount the host's / and switch to it.
/bin/busybox --install -s /bin
mkdir -p /proc /sys /dev /newroot
mount -t proc proc /proc
mount -t devtmpfs dev /dev
{insmods}
if ! mount -t 9p -o trans=virtio,version=9p2000.L,msize=512000,cache=loose root /newroot; then
  echo "mlq-vm: mounting the host's / over 9p failed" >&2
  reboot -f
fi
umount /dev /proc
exec switch_root /newroot "${{MLQ_GUEST_INIT:?}}"
"""


def _initramfs(out: Path, tree: Path, modules: list[str]) -> None:
    insmods = "\n".join(f"insmod /mods/{Path(m).name}" for m in modules)
    files: list[tuple[str, int, bytes]] = [
        ("bin", stat.S_IFDIR | 0o755, b""),
        ("mods", stat.S_IFDIR | 0o755, b""),
        ("bin/busybox", stat.S_IFREG | 0o755, BUSYBOX.read_bytes()),
        ("init", stat.S_IFREG | 0o755, INIT.format(insmods=insmods).encode()),
    ]
    files += [
        (f"mods/{Path(m).name}", stat.S_IFREG | 0o644, (tree / m).read_bytes()) for m in modules
    ]
    with open(out, "wb") as f:
        for ino, (name, mode, body) in enumerate(files, start=1):
            f.write(_cpio_entry(ino, name, mode, body))
        f.write(_cpio_entry(0, "TRAILER!!!", 0, b""))


def _cpio_entry(ino: int, name: str, mode: int, body: bytes) -> bytes:
    """One entry of the kernel's initramfs format (cpio "newc")."""
    fields = [ino, mode, 0, 0, 1, 0, len(body), 0, 0, 0, 0, len(name) + 1, 0]
    head = b"070701" + b"".join(b"%08X" % v for v in fields) + name.encode() + b"\0"
    head += b"\0" * (-len(head) % 4)
    return head + body + b"\0" * (-len(body) % 4)


if __name__ == "__main__":
    try:
        k = ensure()
    except BuildError as e:
        sys.exit(f"tests/vm: {e}")
    print(f"tests/vm: kernel {k.release} ready in {k.vmlinux.parent}")
