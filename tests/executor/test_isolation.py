"""What a job sees inside: its own PID 1, hostname, network, root, and no privileges."""

from __future__ import annotations

import os
import sys

import pytest
from exec_helpers import mknod_char, run
from mlq.executor import BadRequest, Device, Outcome, User

# The interpreter itself, not the venv's link to it: a checkout under /tmp is hidden
# from host-image jobs, whose /tmp is their own tmpfs.
PY = os.path.realpath(sys.executable)

SECCOMP_PROBE = """
import ctypes, os
libc = ctypes.CDLL(None, use_errno=True)
r = libc.unshare(0x10000000)  # CLONE_NEWUSER: allowed to any user, unless filtered
print("unshare", r, os.strerror(ctypes.get_errno()) if r else "ok")
r = libc.syscall(250, 0, -3, 1, 0, 0)  # keyctl(KEYCTL_GET_KEYRING_ID, session, create)
print("keyctl", r, os.strerror(ctypes.get_errno()) if r < 0 else "ok")
"""


def test_pid_1_is_mlq_init_and_the_hosts_processes_are_invisible(state_dir):
    st, out, _ = run(
        state_dir, ["/bin/sh", "-c", "cat /proc/1/comm; ls /proc | grep -c '^[0-9]'; hostname"]
    )
    comm, count, hostname = out.split()
    assert st.state == Outcome.COMPLETED
    assert comm == "mlq-init"
    assert int(count) <= 4  # init, sh, ls, grep: none of the host's
    assert hostname == "testjob"


def test_network_none_has_only_loopback_and_it_is_up(state_dir):
    st, out, _ = run(
        state_dir, ["/bin/sh", "-c", "ls /sys/class/net; cat /sys/class/net/lo/operstate"]
    )
    assert out.split() == ["lo", "unknown"]


def test_the_root_is_the_images_and_a_read_only_root_refuses_writes(state_dir, busybox_rootfs):
    from mlq.executor import Root

    st, out, err = run(
        state_dir,
        [
            "/bin/sh",
            "-c",
            "cat /etc/mlq-image; touch /newfile; echo rc=$?; touch /tmp/ok && echo tmp-ok",
        ],
        root=Root(image=busybox_rootfs, readonly=True),
    )
    assert out.split() == ["busybox-image", "rc=1", "tmp-ok"]
    assert "Read-only file system" in err
    assert not os.path.exists(os.path.join(busybox_rootfs, "newfile"))


def test_writes_to_a_writable_root_land_in_the_runs_upper_layer_not_the_image(
    state_dir, busybox_rootfs
):
    from mlq.executor import Root

    st, out, _ = run(
        state_dir,
        ["/bin/sh", "-c", "echo changed > /etc/mlq-image; cat /etc/mlq-image"],
        root=Root(image=busybox_rootfs),
    )
    assert out.strip() == "changed"
    with open(os.path.join(busybox_rootfs, "etc/mlq-image")) as f:
        assert f.read() == "busybox-image\n"


PRIVILEGED_CALLS = """
import ctypes, os, socket
libc = ctypes.CDLL(None, use_errno=True)
r = libc.mount(b"none", b"/mnt", b"tmpfs", 0, None)
print("mount", r, os.strerror(ctypes.get_errno()))
r = libc.sethostname(b"other", 5)
print("sethostname", r, os.strerror(ctypes.get_errno()))
print(socket.gethostname())
"""


def test_mount_and_sethostname_fail_with_eperm(state_dir):
    st, out, err = run(state_dir, [PY, "-c", PRIVILEGED_CALLS])
    assert out.splitlines() == [
        "mount -1 Operation not permitted",
        "sethostname -1 Operation not permitted",
        "testjob",
    ]


@pytest.mark.parametrize(
    "seccomp,expect",
    [
        pytest.param(False, ["unshare 0 ok", "keyctl"], id="without the filter both calls work"),
        pytest.param(
            True,
            ["unshare -1 Operation not permitted", "keyctl -1 Operation not permitted"],
            id="the filter refuses them with EPERM",
        ),
    ],
)
def test_seccomp_refuses_what_dockers_profile_refuses(state_dir, seccomp, expect):
    st, out, _ = run(state_dir, [PY, "-c", SECCOMP_PROBE], seccomp=seccomp)
    lines = out.splitlines()
    assert lines[0] == expect[0]
    assert lines[1].startswith(expect[1])
    if not seccomp:
        assert int(lines[1].split()[1]) > 0, lines[1]


def test_uid_0_cannot_write_proc_sys_or_its_own_memory_limit(state_dir, cgroup_version):
    limit = (
        "/sys/fs/cgroup/memory.max"
        if cgroup_version == 2
        else "/sys/fs/cgroup/memory/memory.limit_in_bytes"
    )
    script = (
        f"id -u; echo 1 > /proc/sys/kernel/panic; echo rc=$?; "
        f"echo {'max' if cgroup_version == 2 else -1} > {limit}; echo rc=$?; cat {limit}; cat /proc/self/status | grep CapEff"
    )
    st, out, err = run(state_dir, ["/bin/sh", "-c", script])
    lines = out.splitlines()
    assert lines[0] == "0"
    assert lines[1] != "rc=0" and lines[2] != "rc=0"
    assert int(lines[3]) == 256 * 2**20  # unchanged
    assert lines[4].split()[1] == "0000000000000000"
    assert err.count("Read-only file system") == 2, err


def test_capabilities_are_dropped_except_the_ones_asked_for(state_dir):
    st, out, _ = run(
        state_dir,
        ["/bin/sh", "-c", "grep -E 'CapEff|CapBnd|NoNewPrivs' /proc/self/status"],
        capabilities=["CAP_NET_BIND_SERVICE"],
    )
    fields = dict(line.split(":\t") for line in out.splitlines())
    assert int(fields["CapEff"], 16) == 1 << 10
    assert int(fields["CapBnd"], 16) == 1 << 10
    assert fields["NoNewPrivs"] == "1"


def test_the_job_runs_as_the_requested_user(state_dir):
    st, out, _ = run(state_dir, ["/bin/sh", "-c", "id -u; id -g"], user=User(uid=1234, gid=2345))
    assert out.split() == ["1234", "2345"]


def test_no_file_descriptor_of_the_launcher_leaks_into_the_job(state_dir, tmp_path):
    leak = os.open(tmp_path / "secret", os.O_CREAT | os.O_RDWR)
    os.set_inheritable(leak, True)
    try:
        st, out, _ = run(
            state_dir, [PY, "-c", "import os; print(sorted(os.listdir('/proc/self/fd')))"]
        )
    finally:
        os.close(leak)
    assert out.strip() == "['0', '1', '2', '3']"  # 3 is listdir's own


def test_only_the_assigned_gpu_device_nodes_exist(state_dir, tmp_path):
    nodes = tmp_path / "dev"
    (nodes / "nvidia-caps").mkdir(parents=True)
    gpu0 = mknod_char(nodes / "nvidia0", 195, 0)
    mknod_char(nodes / "nvidia1", 195, 1)
    ctl = mknod_char(nodes / "nvidiactl", 195, 255)
    cap = mknod_char(nodes / "nvidia-caps" / "nvidia-cap12", 237, 12)
    script = "ls /dev | grep nvidia; ls /dev/nvidia-caps; stat -c '%t:%T' /dev/nvidia0; echo $CUDA_VISIBLE_DEVICES"
    st, out, _ = run(
        state_dir,
        ["/bin/sh", "-c", script],
        devices=[Device(gpu0), Device(ctl), Device(cap)],
        env={"CUDA_VISIBLE_DEVICES": "0", "NVIDIA_VISIBLE_DEVICES": "0"},
    )
    assert out.split() == ["nvidia-caps", "nvidia0", "nvidiactl", "nvidia-cap12", "c3:0", "0"]

    st, out, _ = run(state_dir, ["/bin/sh", "-c", "ls /dev | grep -c nvidia"])
    assert out.strip() == "0"


def test_a_device_node_missing_on_the_host_is_refused_before_anything_is_made(state_dir, tmp_path):
    with pytest.raises(BadRequest, match="nvidia7 does not exist"):
        run(state_dir, ["/bin/true"], devices=[Device(str(tmp_path / "nvidia7"))])
    assert not os.path.exists(os.path.join(state_dir, "runs"))


def test_a_host_image_job_does_not_see_mlqs_state_dir(state_dir):
    st, out, _ = run(state_dir, ["/bin/sh", "-c", f"ls -A {state_dir} | wc -l"])
    assert st.state == Outcome.COMPLETED
    assert out.strip() == "0"  # runs/, other jobs' logs: hidden


def test_shm_is_sized_and_oci_masked_paths_are_empty(state_dir):
    script = "grep ' /dev/shm ' /proc/mounts; wc -c < /proc/keys; ls /proc/acpi 2>/dev/null | wc -l"
    st, out, _ = run(state_dir, ["/bin/sh", "-c", script], shm_size=16 * 2**20)
    shm, keys, acpi = out.splitlines()
    assert "size=16384k" in shm
    assert (keys.strip(), acpi.strip()) == ("0", "0")
