"""Helpers for the executor's tests: run a job, build a rootfs, make device nodes."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import stat
import subprocess
import sys
from pathlib import Path

import pytest
from mlq.executor import LaunchRequest, Process, Resources, Status, kill_now, start, wait
from mlq.executor.runner import cgroup_name

BUSYBOX = shutil.which("busybox") or "/bin/busybox"
APPLETS = [
    "sh",
    "ls",
    "cat",
    "echo",
    "touch",
    "mkdir",
    "rm",
    "sleep",
    "hostname",
    "mount",
    "id",
    "grep",
    "wc",
    "test",
    "kill",
    "ps",
    "true",
    "false",
    "printf",
    "head",
    "tail",
    "sed",
    "ip",
    "nc",
    "stat",
    "env",
    "trap",
    "find",
    "dd",
    "uname",
]


def _alive(pid: int, starttime: int | None = None) -> bool:
    try:
        text = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return False
    rest = text[text.rindex(")") + 2 :].split()
    return rest[0] not in ("Z", "X") and (starttime is None or int(rest[19]) == starttime)


def nat_addresses(bridge: str) -> set[str]:
    """The addresses in ``bridge``'s NAT set of mlq's nftables table."""
    from mlq.executor.network import nat_elements

    return nat_elements(bridge)


def leftovers(marker: str) -> list[str]:
    """What remains of the runs made under ``marker`` (a test's tmp dir): cgroups,
    mounts, veths, network namespaces, NAT addresses, supervisors and inits. Only this test's runs
    are looked at, so suites running side by side on the node do not confuse it."""
    found: list[str] = []
    base = Path(marker)
    # not a recursive glob: supervisors delete overlay dirs under runs/ meanwhile
    for req_file in [*base.glob("runs/*/request.json"), *base.glob("*/runs/*/request.json")]:
        run_dir = req_file.parent
        req = LaunchRequest.from_json(req_file.read_text())
        name = cgroup_name(req)
        root = Path("/sys/fs/cgroup")
        found += [str(p) for p in [root / "mlq" / name, *root.glob(f"*/mlq/{name}")] if p.exists()]
        try:
            sup = json.loads((run_dir / "supervisor.json").read_text())
        except (OSError, ValueError):
            sup = None
        if sup and _alive(sup["pid"], sup["starttime"]):
            found.append(f"supervisor {sup['pid']} of {run_dir.name}")
        if sup and _alive(sup["init_pid"]):
            try:
                if Path(f"/proc/{sup['init_pid']}/comm").read_text().strip() == "mlq-init":
                    found.append(f"init {sup['init_pid']} of {run_dir.name}")
            except OSError:
                pass
        try:
            net = json.loads((run_dir / "launch.json").read_text()).get("network")
        except (OSError, ValueError):
            net = None
        if net:
            if Path("/sys/class/net", net["host_if"]).exists():
                found.append(f"veth {net['host_if']}")
            if Path(net["netns_path"]).exists():
                found.append(f"netns {net['netns_path']}")
            if net.get("nat") and net["address"] in nat_addresses(net["bridge"]):
                try:
                    holder = Path(net["lease"]).read_text()
                except OSError:
                    holder = None
                if holder != net.get("run"):  # ended, and no other run leases it now
                    found.append(f"NAT address {net['address']} of {run_dir.name}")
    with open("/proc/self/mountinfo") as f:
        found += [line.split()[4] for line in f if marker in line]
    return found


# A TCP server that answers each connection with the address it sees, then closes it.
SEEN_SERVER = """
import socket, sys
s = socket.socket(); s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
s.bind(("0.0.0.0", int(sys.argv[1]))); s.listen(8)
print("listening", flush=True)
while True:
    c, addr = s.accept(); c.sendall(f"seen {addr[0]}\\n".encode()); c.close()
"""


@contextlib.contextmanager
def outside_network(tag: str, route_back: str, prefix: str = "10.234.0", port: int = 7100):
    """A network outside the node: a namespace ``mlqt-out-<tag>`` on a veth pair of its
    own (the host's end ``mlqto<tag>`` is ``<prefix>.1``, the namespace's ``<prefix>.2``)
    with a ``SEEN_SERVER`` on ``port``, and a route back to ``route_back`` through the
    host, as a router on a real network could have. Yields (server address, host's
    address on the link); removes all of it, and restores ``net.ipv4.ip_forward``."""
    ns, host_if = f"mlqt-out-{tag}", f"mlqto{tag}"
    outside, host_side = f"{prefix}.2", f"{prefix}.1"
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    forwarding = forward.read_text().strip()
    server = None

    def ip(*args: str) -> None:
        subprocess.run(["ip", *args], check=True, capture_output=True)

    try:
        ip("netns", "add", ns)
        ip("link", "add", host_if, "type", "veth", "peer", "name", "eth0", "netns", ns)
        ip("addr", "add", f"{host_side}/24", "dev", host_if)
        ip("link", "set", host_if, "up")
        ip("-n", ns, "addr", "add", f"{outside}/24", "dev", "eth0")
        ip("-n", ns, "link", "set", "eth0", "up")
        ip("-n", ns, "link", "set", "lo", "up")
        ip("-n", ns, "route", "add", route_back, "via", host_side)
        py = os.path.realpath(sys.executable)
        server = subprocess.Popen(
            ["ip", "netns", "exec", ns, py, "-c", SEEN_SERVER, str(port)],
            stdout=subprocess.PIPE,
            text=True,
        )
        assert server.stdout is not None and server.stdout.readline().strip() == "listening"
        yield outside, host_side
    finally:
        if server is not None:
            server.kill()
            server.wait()
        subprocess.run(["ip", "netns", "del", ns], capture_output=True)
        subprocess.run(["ip", "link", "del", host_if], capture_output=True)
        forward.write_text(forwarding)  # the executor leaves it on: the machine gets it back
        assert not Path("/run/netns", ns).exists()
        assert not Path("/sys/class/net", host_if).exists()


def make_rootfs(root: Path, files: dict[str, str] | None = None) -> Path:
    """A minimal root filesystem: static busybox and its applets, plus ``files``."""
    (root / "bin").mkdir(parents=True, exist_ok=True)
    for d in ("etc", "proc", "sys", "dev", "tmp"):
        (root / d).mkdir(exist_ok=True)
    shutil.copy2(BUSYBOX, root / "bin" / "busybox")
    for a in APPLETS:
        link = root / "bin" / a
        if not link.exists():
            link.symlink_to("busybox")
    for rel, text in (files or {}).items():
        p = root / rel.lstrip("/")
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_text(text)
    return root


_counter = [0]


def request(state_dir: str, args: list[str], **kw) -> LaunchRequest:
    _counter[0] += 1
    proc_kw = {k: kw.pop(k) for k in ("env", "cwd", "user", "capabilities", "seccomp") if k in kw}
    return LaunchRequest(
        run_id=kw.pop("run_id", f"t{os.getpid()}-{_counter[0]}"),
        state_dir=state_dir,
        process=Process(args=args, **proc_kw),
        hostname=kw.pop("hostname", "testjob"),
        resources=kw.pop("resources", Resources(memory_max=256 * 2**20, pids_max=256)),
        **kw,
    )


def finish(handle, timeout: float = 60) -> Status:
    st = wait(handle, timeout=timeout)
    if st is None:
        kill_now(handle)
        st = wait(handle, timeout=10)
        pytest.fail(f"run {handle.run_id} did not end within {timeout}s: {st}")
    return st


def run(state_dir: str, args: list[str], **kw) -> tuple[Status, str, str]:
    """Start a job, wait for it, and return its status, stdout and stderr."""
    h = start(request(state_dir, args, **kw))
    st = finish(h)
    return st, Path(h.stdout).read_text(), Path(h.stderr).read_text()


def mknod_char(path: Path, major: int, minor: int) -> str:
    os.mknod(path, stat.S_IFCHR | 0o666, os.makedev(major, minor))
    return str(path)


def sh(cmd: str) -> str:
    return subprocess.run(cmd, shell=True, capture_output=True, text=True).stdout
