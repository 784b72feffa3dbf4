"""Images: from a job's ``image`` to the read-only lower layers of its overlay root.

Four kinds: ``host`` (the host's ``/``), a rootfs directory (used in place), a
rootfs tarball (``docker export``), and an OCI image layout (index, manifest,
layers applied in order, with whiteouts). Tarballs and OCI layers are unpacked
once into a content-addressed cache, ``<state>/layers/sha256/<digest>``, that
every job on the image shares read-only: 50 jobs on one 10 GB image cost 10 GB.
OCI whiteouts become overlayfs whiteouts (``.wh.x`` -> a 0/0 character device,
``.wh..wh..opq`` -> the ``trusted.overlay.opaque`` xattr), so the kernel applies
them when it stacks the layers.
"""

from __future__ import annotations

import contextlib
import gzip
import hashlib
import json
import os
import shutil
import stat
import tarfile
import uuid
from dataclasses import dataclass

from mlq.executor.errors import BadRequest, ExecutorError

WHITEOUT = ".wh."
OPAQUE = ".wh..wh..opq"
LAYER_TYPES = {
    "application/vnd.oci.image.layer.v1.tar": "",
    "application/vnd.oci.image.layer.v1.tar+gzip": "gz",
    "application/vnd.docker.image.rootfs.diff.tar.gzip": "gz",
    "application/vnd.docker.image.rootfs.diff.tar": "",
}


@dataclass
class Layer:
    path: str
    digest: str | None = None
    cached: bool = True  # False: unpacked by this launch


@dataclass
class ImageLayers:
    """Lower layers, the top one first (overlayfs's ``lowerdir`` order)."""

    kind: str
    layers: list[Layer]

    @property
    def lowerdir(self) -> str:
        return ":".join(layer.path for layer in self.layers)


def resolve(image: str, state_dir: str) -> ImageLayers:
    """The layers for ``image``, unpacking into the cache what is not there yet."""
    if image == "host":
        return ImageLayers("host", [Layer("/")])
    if not os.path.isabs(image):
        raise BadRequest(f'image: "{image}" is not host or an absolute path')
    if os.path.isdir(image):
        if os.path.exists(os.path.join(image, "oci-layout")):
            return _oci_layout(image, state_dir)
        return ImageLayers("rootfs", [Layer(os.path.realpath(image))])
    if os.path.isfile(image):
        return ImageLayers("tarball", [_tarball(image, state_dir)])
    raise BadRequest(
        f'image: "{image}" does not exist; use host, a rootfs directory, a tarball or an OCI layout'
    )


def _cache(state_dir: str, hexdigest: str) -> str:
    return os.path.join(state_dir, "layers", "sha256", hexdigest)


def _tarball(path: str, state_dir: str) -> Layer:
    # The digest of a multi-GB tarball is worth computing once: an index keyed by the
    # file's identity (path, inode, size, mtime) remembers it.
    st = os.stat(path)
    key = hashlib.sha256(
        f"{os.path.realpath(path)}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}".encode()
    ).hexdigest()
    index = os.path.join(state_dir, "layers", "index", key)
    try:
        with open(index) as f:
            digest = f.read().strip()
        if os.path.isdir(_cache(state_dir, digest)):
            return Layer(_cache(state_dir, digest), f"sha256:{digest}", cached=True)
    except FileNotFoundError:
        pass
    digest = _sha256_file(path)
    layer = _unpack(path, digest, state_dir, _compression(path))
    os.makedirs(os.path.dirname(index), exist_ok=True)
    _atomic_write(index, digest)
    return layer


def _oci_layout(root: str, state_dir: str) -> ImageLayers:
    try:
        with open(os.path.join(root, "index.json")) as f:
            index = json.load(f)
        manifest_desc = _pick_manifest(root, index)
        manifest = json.loads(_blob(root, manifest_desc["digest"]).read_bytes_checked())
    except (OSError, ValueError, KeyError) as exc:
        raise BadRequest(f"image: {root}: not a readable OCI image layout ({exc})") from None
    layers: list[Layer] = []
    for desc in manifest.get("layers", []):
        media = desc.get("mediaType", "")
        if media not in LAYER_TYPES:
            raise BadRequest(
                f"image: {root}: layer {desc.get('digest')} has type {media}; supported: tar, tar+gzip"
            )
        algo, _, hexd = desc["digest"].partition(":")
        if algo != "sha256":
            raise BadRequest(f"image: {root}: layer digest {desc['digest']} is not sha256")
        cached = _cache(state_dir, hexd)
        if os.path.isdir(cached):
            layers.append(Layer(cached, desc["digest"], cached=True))
            continue
        blob = os.path.join(root, "blobs", "sha256", hexd)
        if _sha256_file(blob) != hexd:
            raise BadRequest(f"image: {root}: blob {hexd} does not match its digest")
        layers.append(_unpack(blob, hexd, state_dir, LAYER_TYPES[media]))
    if not layers:
        raise BadRequest(f"image: {root}: the manifest lists no layers")
    layers.reverse()  # manifests list the base first; overlayfs wants the top first
    return ImageLayers("oci", layers)


def _pick_manifest(root: str, index: dict) -> dict:
    manifests = index.get("manifests") or []
    if not manifests:
        raise ValueError("index.json lists no manifests")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    for m in manifests:
        if m.get("mediaType", "").endswith("index.v1+json"):
            # a nested image index: follow it
            return _pick_manifest(root, json.loads(_blob(root, m["digest"]).read_bytes_checked()))
        plat = m.get("platform")
        if plat is None or plat.get("architecture") == arch:
            return m
    raise ValueError(f"no manifest for {arch}")


class _blob:
    def __init__(self, root: str, digest: str) -> None:
        algo, _, self.hex = digest.partition(":")
        self.path = os.path.join(root, "blobs", algo, self.hex)

    def read_bytes_checked(self) -> bytes:
        with open(self.path, "rb") as f:
            data = f.read()
        if hashlib.sha256(data).hexdigest() != self.hex:
            raise ValueError(f"blob {self.hex} does not match its digest")
        return data


def _sha256_file(path: str) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            h.update(chunk)
    return h.hexdigest()


def _compression(path: str) -> str:
    with open(path, "rb") as f:
        return "gz" if f.read(2) == b"\x1f\x8b" else ""


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _unpack(archive: str, hexdigest: str, state_dir: str, compression: str) -> Layer:
    """Unpack one layer into the cache: into a temp dir first, renamed when complete."""
    final = _cache(state_dir, hexdigest)
    os.makedirs(os.path.dirname(final), exist_ok=True)
    tmp = os.path.join(state_dir, "layers", f"tmp-{uuid.uuid4().hex}")
    os.makedirs(tmp)
    try:
        opener = gzip.open if compression == "gz" else open
        with opener(archive, "rb") as raw, tarfile.open(fileobj=raw, mode="r|") as tf:
            for member in tf:
                _apply(tf, member, tmp)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            # another launch unpacked the same layer meanwhile: keep theirs
            if not os.path.isdir(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return Layer(final, f"sha256:{hexdigest}", cached=True)
    except (OSError, tarfile.TarError) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExecutorError(f"unpack layer {archive}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Layer(final, f"sha256:{hexdigest}", cached=False)


def _inside(dest: str, path: str) -> bool:
    real = os.path.realpath(path)
    return real == dest or real.startswith(dest.rstrip("/") + "/")


def _apply(tf: tarfile.TarFile, member: tarfile.TarInfo, dest: str) -> None:
    name = os.path.normpath(member.name.lstrip("/"))
    if name in (".", ""):
        return
    if name == ".." or name.startswith("../"):
        raise ExecutorError(f"member {member.name} leaves the layer")
    base = os.path.basename(name)
    parent = os.path.join(dest, os.path.dirname(name))
    # a symlink unpacked earlier must not lead a later member out of the layer
    if not _inside(dest, parent):
        raise ExecutorError(f"member {member.name} leaves the layer through a symlink")
    if base == OPAQUE:
        os.makedirs(parent, exist_ok=True)
        os.setxattr(parent, "trusted.overlay.opaque", b"y")
        return
    if base.startswith(WHITEOUT):
        os.makedirs(parent, exist_ok=True)
        target = os.path.join(parent, base[len(WHITEOUT) :])
        with contextlib.suppress(FileNotFoundError):
            os.unlink(target)
        os.mknod(target, stat.S_IFCHR | 0o000, os.makedev(0, 0))
        return
    if member.islnk():
        link = os.path.normpath(member.linkname.lstrip("/"))
        if link == ".." or link.startswith("../") or not _inside(dest, os.path.join(dest, link)):
            raise ExecutorError(f"hard link {member.name} points out of the layer")
    member.name = name
    # setuid bits and owners are the image's business (sudo, ping): kept as archived
    tf.extract(member, dest, set_attrs=True, numeric_owner=True, **_NO_FILTER)


# Python 3.12+ (and late 3.11 builds) take a filter; the checks above are ours.
_NO_FILTER = {"filter": "fully_trusted"} if hasattr(tarfile, "fully_trusted_filter") else {}
