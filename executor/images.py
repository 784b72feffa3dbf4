"""Images: from a job's ``image`` to the read-only lower layers of its overlay root.

Four kinds: ``host`` (the host's ``/``), a rootfs directory (used in place), a
rootfs tarball (``docker export``), and an OCI image layout (index, manifest,
layers applied in order, with whiteouts). Tarballs and OCI layers are unpacked
once into a content-addressed cache, ``<state>/layers/sha256/<digest>`` (under a
0700 root directory), that every job on the image shares read-only: 50 jobs on
one 10 GB image cost 10 GB. Unpacking is ``layerfs.extract``: nothing lands
outside the layer, no setuid bit or device node survives. Every file of an image
is opened with the submitting user's credentials (``asuser``).
"""

from __future__ import annotations

import errno
import gzip
import hashlib
import json
import os
import re
import shutil
import stat
import tarfile
import uuid
import zlib
from dataclasses import dataclass
from typing import BinaryIO

from mlq.executor.asuser import HostUser, as_user, open_as
from mlq.executor.errors import BadRequest, ExecutorError
from mlq.executor.layerfs import UnsafeEntry, extract

HEX_DIGEST = re.compile(r"^[0-9a-f]{64}$")
MAX_JSON = 4 << 20  # an index or manifest larger than this is not an image
ROOT = HostUser(0, 0)
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
    as_user: bool = False  # a directory the user named: the helper opens it as them


@dataclass
class ImageLayers:
    """Lower layers, the top one first (overlayfs's ``lowerdir`` order)."""

    kind: str
    layers: list[Layer]

    @property
    def lowerdir(self) -> str:
        return ":".join(layer.path for layer in self.layers)


def resolve(image: str, state_dir: str, user: HostUser = ROOT) -> ImageLayers:
    """The layers for ``image``, unpacking into the cache what is not there yet.

    Every path of the image is reached with ``user``'s credentials: a rootfs
    directory is checked here and opened as the user again by the helper when it
    mounts it; a tarball or an OCI layout's files are opened as the user and read
    through those descriptors, so a file the user cannot read is never unpacked.
    """
    if image == "host":
        return ImageLayers("host", [Layer("/")])
    if not os.path.isabs(image):
        raise BadRequest(f'image: "{image}" is not host or an absolute path')
    try:
        with as_user(user):
            st = os.stat(image)
            is_oci = stat.S_ISDIR(st.st_mode) and os.path.exists(os.path.join(image, "oci-layout"))
    except OSError as exc:
        raise BadRequest(
            f"image: {image} {_why(exc, user)}; use host, a rootfs directory, "
            "a tarball or an OCI layout that you can read"
        ) from None
    if is_oci:
        return _oci_layout(image, state_dir, user)
    if stat.S_ISDIR(st.st_mode):
        return ImageLayers("rootfs", [Layer(image, as_user=True)])
    if stat.S_ISREG(st.st_mode):
        return ImageLayers("tarball", [_tarball(image, state_dir, user)])
    raise BadRequest(
        f"image: {image} is not a directory or a regular file; use host, a rootfs "
        "directory, a tarball or an OCI layout"
    )


def is_ready(image: str, state_dir: str, user: HostUser = ROOT) -> bool:
    """Whether ``resolve`` would find every layer of ``image`` in the cache (cheap: a
    few small reads, never a hash or an unpack), so a caller can prepare the image
    elsewhere first. An image that cannot be read counts as ready: ``resolve`` then
    refuses it at once, with its reason."""
    if image == "host":
        return True
    try:
        with as_user(user):
            st = os.stat(image)
            is_oci = stat.S_ISDIR(st.st_mode) and os.path.exists(os.path.join(image, "oci-layout"))
        if stat.S_ISDIR(st.st_mode) and not is_oci:
            return True
        if not is_oci:
            with _open_file(user, image, "tarball") as f:
                key = _index_key(os.fstat(f.fileno()))
            with open(os.path.join(state_dir, "layers", "index", key)) as fi:
                digest = fi.read().strip()
            return bool(HEX_DIGEST.match(digest)) and os.path.isdir(_cache(state_dir, digest))
        with _open_file(user, os.path.join(image, "index.json"), "OCI index") as f:
            index = json.loads(f.read(MAX_JSON))
        manifest = json.loads(_blob(image, _pick_manifest(image, index, user)["digest"], user))
        return all(
            os.path.isdir(_cache(state_dir, _hex(d.get("digest"), image)))
            for d in manifest.get("layers", [])
        )
    except FileNotFoundError:
        return False  # a layer (or the index entry) not made yet
    except (OSError, ValueError, KeyError, TypeError, BadRequest):
        return True


def _index_key(st: os.stat_result) -> str:
    # ctime too: a user can set a recycled inode's size and mtime, never its ctime
    return hashlib.sha256(
        f"{st.st_dev}:{st.st_ino}:{st.st_size}:{st.st_mtime_ns}:{st.st_ctime_ns}".encode()
    ).hexdigest()


def _why(exc: OSError, user: HostUser) -> str:
    """Why a path failed, in the user's terms."""
    if exc.errno == errno.ENOENT:
        return "does not exist"
    if exc.errno == errno.EACCES:
        return f"is not readable by uid {user.uid} (permission denied on the way)"
    return f"cannot be opened by uid {user.uid}: {exc.strerror}"


def _layers_dir(state_dir: str) -> str:
    """The shared layer cache: root's, mode 0700 (a job reaches its layers only
    through the overlay the helper mounts, never by path)."""
    d = os.path.join(state_dir, "layers")
    os.makedirs(d, mode=0o700, exist_ok=True)
    if stat.S_IMODE(os.stat(d).st_mode) != 0o700:
        os.chmod(d, 0o700)
    return d


def _cache(state_dir: str, hexdigest: str) -> str:
    return os.path.join(state_dir, "layers", "sha256", hexdigest)


def _open_file(user: HostUser, path: str, what: str) -> BinaryIO:
    """A regular file opened read-only as ``user`` (never a FIFO that would block)."""
    try:
        fd = open_as(user, path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOCTTY)
    except OSError as exc:
        raise BadRequest(f"image: {what} {path} {_why(exc, user)}") from None
    st = os.fstat(fd)
    if not stat.S_ISREG(st.st_mode):
        os.close(fd)
        raise BadRequest(f"image: {what} {path} is not a regular file")
    os.set_blocking(fd, True)
    return os.fdopen(fd, "rb")


def _tarball(path: str, state_dir: str, user: HostUser) -> Layer:
    # The digest of a multi-GB tarball is worth computing once: an index keyed by the
    # file's identity (device, inode, size, mtime, ctime) remembers it. The file is opened
    # as the user first, so the index never hands out a layer its user cannot read.
    with _open_file(user, path, "tarball") as f:
        key = _index_key(os.fstat(f.fileno()))
        index = os.path.join(_layers_dir(state_dir), "index", key)
        try:
            with open(index) as fi:
                digest = fi.read().strip()
            if HEX_DIGEST.match(digest) and os.path.isdir(_cache(state_dir, digest)):
                return Layer(_cache(state_dir, digest), f"sha256:{digest}", cached=True)
        except FileNotFoundError:
            pass
        digest = _sha256_file(f)
        f.seek(0)
        layer = _unpack(f, path, digest, state_dir, _compression(f))
    os.makedirs(os.path.dirname(index), mode=0o700, exist_ok=True)
    _atomic_write(index, digest)
    return layer


def _oci_layout(root: str, state_dir: str, user: HostUser) -> ImageLayers:
    try:
        with _open_file(user, os.path.join(root, "index.json"), "OCI index") as f:
            index = json.loads(f.read(MAX_JSON))
        manifest_desc = _pick_manifest(root, index, user)
        manifest = json.loads(_blob(root, manifest_desc["digest"], user))
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise BadRequest(f"image: {root}: not a readable OCI image layout ({exc})") from None
    layers: list[Layer] = []
    for desc in manifest.get("layers", []):
        media = desc.get("mediaType", "")
        if media not in LAYER_TYPES:
            raise BadRequest(
                f"image: {root}: layer {desc.get('digest')} has type {media}; supported: tar, tar+gzip"
            )
        hexd = _hex(desc.get("digest"), root)
        cached = _cache(state_dir, hexd)
        # the blob is opened as the user even when its layer is cached: reading it
        # is what entitles the job to the layer
        with _open_file(user, os.path.join(root, "blobs", "sha256", hexd), "layer") as f:
            if os.path.isdir(cached):
                layers.append(Layer(cached, desc["digest"], cached=True))
                continue
            if _sha256_file(f) != hexd:
                raise BadRequest(f"image: {root}: blob {hexd} does not match its digest")
            f.seek(0)
            layers.append(_unpack(f, root, hexd, state_dir, LAYER_TYPES[media]))
    if not layers:
        raise BadRequest(f"image: {root}: the manifest lists no layers")
    layers.reverse()  # manifests list the base first; overlayfs wants the top first
    return ImageLayers("oci", layers)


def _hex(digest: object, root: str) -> str:
    """The hex part of a ``sha256:<64 hex>`` digest; anything else is refused (a
    digest is joined to paths: ``sha256:../../x`` must not name a file)."""
    algo, _, hexd = str(digest).partition(":")
    if algo != "sha256" or not HEX_DIGEST.match(hexd):
        raise BadRequest(f"image: {root}: digest {digest} is not sha256:<64 hex digits>")
    return hexd


def _pick_manifest(root: str, index: dict, user: HostUser, depth: int = 0) -> dict:
    manifests = index.get("manifests") or []
    if not manifests:
        raise ValueError("index.json lists no manifests")
    if depth > 4:
        raise ValueError("image indexes nest more than 4 deep")
    arch = {"x86_64": "amd64", "aarch64": "arm64"}.get(os.uname().machine, os.uname().machine)
    for m in manifests:
        if m.get("mediaType", "").endswith("index.v1+json"):
            # a nested image index: follow it
            return _pick_manifest(root, json.loads(_blob(root, m["digest"], user)), user, depth + 1)
        plat = m.get("platform")
        if plat is None or plat.get("architecture") == arch:
            return m
    raise ValueError(f"no manifest for {arch}")


def _blob(root: str, digest: str, user: HostUser) -> bytes:
    """A small JSON blob (index, manifest), read as the user and checked against its digest."""
    hexd = _hex(digest, root)
    with _open_file(user, os.path.join(root, "blobs", "sha256", hexd), "blob") as f:
        data = f.read(MAX_JSON + 1)
    if len(data) > MAX_JSON:
        raise ValueError(f"blob {hexd} is larger than {MAX_JSON} bytes")
    if hashlib.sha256(data).hexdigest() != hexd:
        raise ValueError(f"blob {hexd} does not match its digest")
    return data


def _sha256_file(f: BinaryIO) -> str:
    h = hashlib.sha256()
    while chunk := f.read(1 << 20):
        h.update(chunk)
    return h.hexdigest()


def _compression(f: BinaryIO) -> str:
    head = f.read(2)
    f.seek(0)
    return "gz" if head == b"\x1f\x8b" else ""


def _atomic_write(path: str, text: str) -> None:
    tmp = f"{path}.{uuid.uuid4().hex}"
    with open(tmp, "w") as f:
        f.write(text)
    os.replace(tmp, path)


def _unpack(f: BinaryIO, archive: str, hexdigest: str, state_dir: str, compression: str) -> Layer:
    """Unpack one layer into the cache: into a temp dir first, renamed when complete."""
    final = _cache(state_dir, hexdigest)
    os.makedirs(os.path.dirname(final), mode=0o700, exist_ok=True)
    tmp = os.path.join(_layers_dir(state_dir), f"tmp-{uuid.uuid4().hex}")
    os.mkdir(tmp, 0o700)
    try:
        raw: BinaryIO = gzip.GzipFile(fileobj=f) if compression == "gz" else f  # type: ignore[assignment]
        with tarfile.open(fileobj=raw, mode="r|") as tf:
            extract(tf, tmp)
        os.chmod(tmp, 0o755)
        try:
            os.rename(tmp, final)
        except OSError:
            # another launch unpacked the same layer meanwhile: keep theirs
            if not os.path.isdir(final):
                raise
            shutil.rmtree(tmp, ignore_errors=True)
            return Layer(final, f"sha256:{hexdigest}", cached=True)
    except UnsafeEntry as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise BadRequest(f"image: {archive}: {exc}") from None
    except (OSError, tarfile.TarError, EOFError, zlib.error) as exc:
        shutil.rmtree(tmp, ignore_errors=True)
        raise ExecutorError(f"unpack layer {archive}: {exc}") from None
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    return Layer(final, f"sha256:{hexdigest}", cached=False)
