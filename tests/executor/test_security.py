"""A job reaches nothing its user cannot reach on the host (docs/security.md).

Each test is an attack a plain user could try, run for real: jobs run as the
test users (``unix_users``), image and volume paths are opened with their
credentials, layers are unpacked so that nothing escapes them, and the cgroup
allows only the job's own devices. Paths live in a world-traversable scratch dir
(pytest's own tmp dirs are root's 0700) so the test users can reach what they own.
"""

from __future__ import annotations

import grp
import io
import os
import shutil
import stat
import tarfile
import tempfile
from pathlib import Path

import pytest
from exec_helpers import make_rootfs, mknod_char, run
from mlq.executor import BadRequest, IdMap, LaunchError, Mount, Namespaces, Outcome, Root, User
from mlq.executor import plan as plan_mod


@pytest.fixture
def public(tmp_path) -> Path:
    d = Path(tempfile.mkdtemp(prefix="mlq-sec-"))
    d.chmod(0o755)
    yield d
    shutil.rmtree(d, ignore_errors=True)


@pytest.fixture
def alice(unix_users) -> User:
    a = unix_users["alice"]
    return User(uid=a.pw_uid, gid=a.pw_gid, additional_gids=os.getgrouplist(a.pw_name, a.pw_gid))


def _tar(path: Path, entries: list[tarfile.TarInfo | tuple[tarfile.TarInfo, bytes]], base=None):
    buf = io.BytesIO()
    with tarfile.open(fileobj=buf, mode="w") as tf:
        if base is not None:
            tf.add(base, arcname=".")
        for e in entries:
            info, data = e if isinstance(e, tuple) else (e, None)
            tf.addfile(info, io.BytesIO(data) if data is not None else None)
    path.write_bytes(buf.getvalue())
    path.chmod(0o644)
    return path


def _info(name: str, kind: bytes = tarfile.REGTYPE, **kw) -> tarfile.TarInfo:
    info = tarfile.TarInfo(name)
    info.type = kind
    for k, v in kw.items():
        setattr(info, k, v)
    return info


def _file(name: str, data: bytes, mode: int = 0o644) -> tuple[tarfile.TarInfo, bytes]:
    return _info(name, size=len(data), mode=mode), data


def _busybox_tree(public: Path) -> Path:
    return make_rootfs(public / "base")


# ------------------------------------------------------------------- images, unpacked


def test_a_symlink_then_file_pair_in_a_tarball_never_writes_outside_its_layer(
    state_dir, public, alice
):
    victim = public / "victim"
    victim.write_text("root's file\n")
    victim.chmod(0o644)
    tarball = _tar(
        public / "evil.tar",
        [
            _info("etc/passwd", tarfile.SYMTYPE, linkname=str(victim)),
            _file("etc/passwd", b"pwned\n", 0o666),
        ],
        base=_busybox_tree(public),
    )
    st, out, _ = run(state_dir, ["/bin/cat", "/etc/passwd"], root=Root(str(tarball)), user=alice)
    assert (st.state, out) == (Outcome.COMPLETED, "pwned\n")  # in the layer, not on the host
    assert victim.read_text() == "root's file\n"
    assert (victim.stat().st_uid, stat.S_IMODE(victim.stat().st_mode)) == (0, 0o644)


def test_a_tarball_entry_through_a_symlink_is_refused_and_writes_nothing(state_dir, public, alice):
    target = public / "outside"
    target.mkdir()
    tarball = _tar(
        public / "evil.tar",
        [_info("d", tarfile.SYMTYPE, linkname=str(target)), _file("d/planted", b"x")],
    )
    with pytest.raises(BadRequest, match="passes through d"):
        run(state_dir, ["/bin/true"], root=Root(str(tarball)), user=alice)
    assert list(target.iterdir()) == []


def test_a_hard_link_to_a_host_file_is_refused(state_dir, public, alice):
    tarball = _tar(public / "evil.tar", [_info("shadow", tarfile.LNKTYPE, linkname="/etc/shadow")])
    with pytest.raises(BadRequest, match="hard link 'shadow'"):
        run(state_dir, ["/bin/true"], root=Root(str(tarball)), user=alice)


def test_setuid_bits_and_device_nodes_do_not_survive_unpacking(state_dir, public, alice):
    tarball = _tar(
        public / "image.tar",
        [
            _file("opt/rootshell", b"#!/bin/sh\nid\n", 0o4755),
            _file("opt/groupshell", b"#!/bin/sh\nid\n", 0o2755),
            _info("opt/kvm", tarfile.CHRTYPE, devmajor=10, devminor=232, mode=0o666),
            _info("opt/sda", tarfile.BLKTYPE, devmajor=8, devminor=0, mode=0o666),
            _info("opt/fifo", tarfile.FIFOTYPE, mode=0o666),
        ],
        base=_busybox_tree(public),
    )
    st, out, _ = run(
        state_dir, ["/bin/sh", "-c", "stat -c '%a %n' /opt/*"], root=Root(str(tarball)), user=alice
    )
    assert st.state == Outcome.COMPLETED
    assert out.split("\n")[:-1] == ["755 /opt/groupshell", "755 /opt/rootshell"]
    # nor in the cache on the host, which is root's alone
    layers = Path(state_dir, "layers")
    assert stat.S_IMODE(layers.stat().st_mode) == 0o700
    for p in layers.rglob("*"):
        mode = p.lstat().st_mode
        assert not (mode & (stat.S_ISUID | stat.S_ISGID)) or p.is_dir(), p
        assert not (stat.S_ISCHR(mode) or stat.S_ISBLK(mode) or stat.S_ISFIFO(mode)), p


def test_a_tarball_its_user_cannot_read_is_not_unpacked_even_once_root_unpacked_it(
    state_dir, public, alice
):
    tarball = _tar(
        public / "root-only.tar", [_file("secret", b"root's secret\n")], _busybox_tree(public)
    )
    tarball.chmod(0o600)
    st, out, _ = run(state_dir, ["/bin/cat", "/secret"], root=Root(str(tarball)))  # root may
    assert out == "root's secret\n"
    with pytest.raises(BadRequest, match="not readable by uid"):
        run(state_dir, ["/bin/cat", "/secret"], root=Root(str(tarball)), user=alice)


def test_an_oci_digest_that_is_a_path_is_refused(state_dir, public, alice):
    layout = public / "oci"
    (layout / "blobs" / "sha256").mkdir(parents=True)
    (layout / "oci-layout").write_text('{"imageLayoutVersion": "1.0.0"}')
    (layout / "index.json").write_text(
        '{"schemaVersion": 2, "manifests": [{"digest": "sha256:../../../../etc/shadow"}]}'
    )
    with pytest.raises(BadRequest, match="not sha256:<64 hex digits>"):
        run(state_dir, ["/bin/true"], root=Root(str(layout)), user=alice)


# ------------------------------------------------------------------- paths, as the user


def _locked_dir(public: Path, owner: int = 0) -> Path:
    """A 0700 directory of ``owner`` holding a world-readable tree: only the lock
    on the way keeps others out, as with another user's home."""
    locked = public / f"locked-{owner}"
    inner = locked / "data"
    make_rootfs(inner, {"/secret": "not yours\n"})
    for p in [inner, *inner.rglob("*")]:
        os.lchown(p, owner, owner)
    os.chown(locked, owner, owner)
    locked.chmod(0o700)
    return inner


def test_a_rootfs_in_a_root_only_directory_is_refused(state_dir, public, alice):
    rootfs = _locked_dir(public)
    with pytest.raises(BadRequest, match="not readable by uid"):
        run(state_dir, ["/bin/cat", "/secret"], root=Root(str(rootfs)), user=alice)


def test_a_volume_inside_another_users_0700_home_is_refused(state_dir, public, alice, unix_users):
    bob = unix_users["bob"].pw_uid
    data = _locked_dir(public, owner=bob)
    with pytest.raises(BadRequest, match=r"mounts\[0\].source: .*Permission denied as uid"):
        run(state_dir, ["/bin/cat", "/data/secret"], mounts=[Mount(str(data), "/data")], user=alice)


def test_a_workdir_behind_another_users_0700_directory_is_entered_as_the_user(
    state_dir, public, alice, unix_users
):
    """chdir as root would leave the job in a directory its user may not search, from
    where relative names reach files the lock on the way keeps from it."""
    outside_tmp = Path(
        tempfile.mkdtemp(prefix="mlq-sec-", dir="/var/tmp")
    )  # a job's /tmp is its own
    try:
        outside_tmp.chmod(0o755)
        data = _locked_dir(outside_tmp, owner=unix_users["bob"].pw_uid)
        with pytest.raises(LaunchError, match=r"cwd: chdir .*Permission denied"):
            run(state_dir, ["/bin/cat", "secret"], cwd=str(data), user=alice)
    finally:
        shutil.rmtree(outside_tmp, ignore_errors=True)


def _swap_after_checks(monkeypatch, link: Path, to: Path) -> None:
    """Re-point ``link`` after the executor's checks, before the helper mounts it:
    the race a user would try between a check and a mount, made certain."""
    build = plan_mod.build

    def swapped(*args, **kw):
        link.unlink()
        link.symlink_to(to)
        return build(*args, **kw)

    monkeypatch.setattr(plan_mod, "build", swapped)


def test_a_volume_symlink_swapped_after_the_checks_still_leads_only_where_the_user_reaches(
    state_dir, public, alice, unix_users, monkeypatch
):
    mine = public / "mine"
    mine.mkdir()
    os.chown(mine, alice.uid, alice.gid)
    bobs = _locked_dir(public, owner=unix_users["bob"].pw_uid)
    link = public / "link"
    link.symlink_to(mine)
    _swap_after_checks(monkeypatch, link, bobs)
    with pytest.raises(LaunchError, match="Permission denied"):
        run(state_dir, ["/bin/cat", "/data/secret"], mounts=[Mount(str(link), "/data")], user=alice)


def test_a_rootfs_symlink_swapped_after_the_checks_is_opened_as_the_user(
    state_dir, public, alice, monkeypatch
):
    mine = make_rootfs(public / "myroot")
    locked = _locked_dir(public)
    link = public / "image"
    link.symlink_to(mine)
    _swap_after_checks(monkeypatch, link, locked)
    with pytest.raises(LaunchError, match="image .* as uid .*Permission denied"):
        run(state_dir, ["/bin/cat", "/secret"], root=Root(str(link)), user=alice)


@pytest.mark.parametrize("where", ["/proc", "state dir"])
def test_a_volume_leading_to_proc_or_mlqs_state_is_refused_whoever_asks(
    state_dir, public, monkeypatch, where
):
    target = Path("/proc") if where == "/proc" else Path(state_dir)
    link = public / "link"
    link.symlink_to(public)
    _swap_after_checks(monkeypatch, link, target)
    with pytest.raises(LaunchError, match="which no job may mount"):
        run(state_dir, ["/bin/true"], mounts=[Mount(str(link), "/x")])  # as root, even


def test_volumes_outside_the_granted_paths_are_refused_where_they_lead(state_dir, public, alice):
    from mlq.executor import HostPaths

    granted = public / "granted"
    granted.mkdir()
    (granted / "escape").symlink_to("/etc")
    with pytest.raises(LaunchError, match="outside the volume paths granted"):
        run(
            state_dir,
            ["/bin/true"],
            mounts=[Mount(str(granted / "escape"), "/x")],
            host_paths=HostPaths(allowed=[str(granted)]),
            user=alice,
        )


# ------------------------------------------------------------------- devices


def test_a_device_node_planted_in_a_volume_cannot_be_opened(state_dir, public, alice):
    vol = public / "vol"
    vol.mkdir()
    os.chmod(mknod_char(vol / "null2", 1, 3), 0o666)  # a twin of /dev/null, which it may use
    script = "echo hi > /dev/null && echo dev-null-ok; echo hi > /vol/null2; echo rc=$?"
    st, out, err = run(
        state_dir, ["/bin/sh", "-c", script], mounts=[Mount(str(vol), "/vol")], user=alice
    )
    ok, rc = out.split()
    assert (ok, rc != "rc=0") == ("dev-null-ok", True)
    assert "Permission denied" in err  # nodev on the volume


def test_a_device_node_in_an_image_cannot_be_opened_the_cgroup_refuses_it(state_dir, public, alice):
    rootfs = make_rootfs(public / "devroot")
    (rootfs / "opt").mkdir()
    for name, major, minor in (("fuse", 10, 229), ("null", 1, 3)):
        # fuse: openable by anyone without the filter; null: a device the job may use
        os.chmod(mknod_char(rootfs / "opt" / name, major, minor), 0o666)
    # only opened (a read of /dev/fuse before a mount fails EPERM on its own)
    script = "echo x > /opt/null && echo null-ok; true < /opt/fuse; echo rc=$?"
    st, out, err = run(state_dir, ["/bin/sh", "-c", script], root=Root(str(rootfs)), user=alice)
    ok, rc = out.split()
    assert (ok, rc != "rc=0") == ("null-ok", True)
    assert "Operation not permitted" in err  # the device cgroup refused the open


# ------------------------------------------------------------------- groups, volumes' owners


def test_a_user_namespace_job_has_its_users_groups_not_roots(state_dir, public, alice):
    shared = public / "team-share"
    shared.mkdir()
    gid = grp.getgrnam("mlqt-nlp").gr_gid
    (shared / "data").write_text("for the team\n")
    os.chown(shared, 0, gid)
    shared.chmod(0o750)
    ns = Namespaces(
        user=True, uid_mappings=[IdMap(0, alice.uid, 1)], gid_mappings=[IdMap(0, alice.gid, 1)]
    )
    st, out, _ = run(
        state_dir,
        ["/bin/cat", "/share/data"],
        mounts=[Mount(str(shared), "/share")],
        user=User(0, 0, alice.additional_gids),
        namespaces=ns,
    )
    assert (st.state, out) == (Outcome.COMPLETED, "for the team\n")


def test_the_checkpoint_volume_is_the_users_alone(state_dir, public, alice):
    from mlq.executor import Checkpoint

    ckpt = Path(state_dir) / "checkpoints" / "7"
    st, _, _ = run(state_dir, ["/bin/true"], checkpoint=Checkpoint(str(ckpt)), user=alice)
    assert st.state == Outcome.COMPLETED
    info = ckpt.stat()
    assert (info.st_uid, stat.S_IMODE(info.st_mode)) == (alice.uid, 0o700)
    assert stat.S_IMODE(ckpt.parent.stat().st_mode) == 0o700
