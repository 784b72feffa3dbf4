"""Images: an OCI layout with two layers and a whiteout, a rootfs tarball, the layer cache."""

from __future__ import annotations

import gzip
import hashlib
import io
import json
import os
import tarfile
from pathlib import Path

import pytest
from exec_helpers import make_rootfs, run
from mlq.executor import BadRequest, Outcome, Root


def _tar_of(entries: list[tuple[str, bytes | None]], base: Path | None = None) -> bytes:
    """A tar with ``base``'s tree (if any) plus (name, content) files (None: a dir)."""
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        if base is not None:
            tf.add(base, arcname=".")
        for name, data in entries:
            info = tarfile.TarInfo(name)
            if data is None:
                info.type = tarfile.DIRTYPE
                info.mode = 0o755
                tf.addfile(info)
            else:
                info.size = len(data)
                info.mode = 0o644
                tf.addfile(info, io.BytesIO(data))
    return buf.getvalue()


def _blob(layout: Path, data: bytes) -> dict:
    digest = hashlib.sha256(data).hexdigest()
    (layout / "blobs" / "sha256").mkdir(parents=True, exist_ok=True)
    (layout / "blobs" / "sha256" / digest).write_bytes(data)
    return {"digest": f"sha256:{digest}", "size": len(data)}


def make_oci_layout(tmp: Path) -> Path:
    """Layer 1: busybox, /etc/keep, /etc/gone, /opt/old/x. Layer 2 deletes /etc/gone,
    makes /opt/old opaque with a new file, and adds /etc/added."""
    base = make_rootfs(tmp / "base")
    layer1 = _tar_of(
        [
            ("etc/keep", b"kept\n"),
            ("etc/gone", b"deleted\n"),
            ("opt/old", None),
            ("opt/old/x", b"x\n"),
        ],
        base,
    )
    layer2 = _tar_of(
        [
            ("etc/.wh.gone", b""),
            ("etc/added", b"added\n"),
            ("opt/old", None),
            ("opt/old/.wh..wh..opq", b""),
            ("opt/old/y", b"y\n"),
        ]
    )
    layout = tmp / "oci"
    layout.mkdir()
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    config = _blob(layout, b"{}")
    config["mediaType"] = "application/vnd.oci.image.config.v1+json"
    layers = []
    # the base layer plain, the top one gzipped: both media types a registry serves
    for data, media in ((layer1, "tar"), (gzip.compress(layer2), "tar+gzip")):
        d = _blob(layout, data)
        d["mediaType"] = f"application/vnd.oci.image.layer.v1.{media}"
        layers.append(d)
    manifest = {"schemaVersion": 2, "config": config, "layers": layers}
    m = _blob(layout, json.dumps(manifest).encode())
    m["mediaType"] = "application/vnd.oci.image.manifest.v1+json"
    (layout / "index.json").write_text(json.dumps({"schemaVersion": 2, "manifests": [m]}))
    return layout


def test_an_oci_layout_is_applied_in_order_with_whiteouts_and_its_layers_are_reused(
    state_dir, tmp_path
):
    layout = make_oci_layout(tmp_path)
    script = "ls /etc; ls /opt/old; cat /etc/keep /etc/added"
    st, out, _ = run(state_dir, ["/bin/sh", "-c", script], root=Root(image=str(layout)))
    assert st.state == Outcome.COMPLETED
    words = out.split()
    assert "gone" not in words and "x" not in words
    assert {"keep", "added", "y", "kept"} <= set(words)

    runs = sorted(Path(state_dir, "runs").iterdir())
    first = json.loads((runs[0] / "launch.json").read_text())["image"]
    assert first["kind"] == "oci" and [x["cached"] for x in first["layers"]] == [False, False]
    inodes = [os.stat(x["path"]).st_ino for x in first["layers"]]

    st, out2, _ = run(state_dir, ["/bin/sh", "-c", script], root=Root(image=str(layout)))
    assert out2 == out
    second_run = next(p for p in Path(state_dir, "runs").iterdir() if p not in runs)
    second = json.loads((second_run / "launch.json").read_text())["image"]
    assert [x["cached"] for x in second["layers"]] == [True, True]
    assert [os.stat(x["path"]).st_ino for x in second["layers"]] == inodes
    assert len(list(Path(state_dir, "layers", "sha256").iterdir())) == 2


def test_a_rootfs_tarball_is_unpacked_once_and_shared(state_dir, tmp_path):
    rootfs = make_rootfs(tmp_path / "rootfs", {"/etc/flavour": "exported\n"})
    tarball = tmp_path / "image.tar"
    tarball.write_bytes(_tar_of([], rootfs))
    for _ in range(2):
        st, out, _ = run(state_dir, ["/bin/cat", "/etc/flavour"], root=Root(image=str(tarball)))
        assert (st.state, out) == (Outcome.COMPLETED, "exported\n")
    assert len(list(Path(state_dir, "layers", "sha256").iterdir())) == 1


def test_a_tarball_member_escaping_the_layer_is_refused(state_dir, tmp_path):
    evil = tmp_path / "evil.tar"
    evil.write_bytes(_tar_of([("../../escaped", b"x")]))
    with pytest.raises(Exception, match="escaped|outside|unpack"):
        run(state_dir, ["/bin/true"], root=Root(image=str(evil)))
    assert not (tmp_path / "escaped").exists()


def test_an_image_that_does_not_exist_is_refused_and_nothing_is_kept(state_dir, tmp_path):
    with pytest.raises(BadRequest, match="does not exist"):
        run(state_dir, ["/bin/true"], root=Root(image=str(tmp_path / "nope")))
    assert list(Path(state_dir, "runs").iterdir()) == []
