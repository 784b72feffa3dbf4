"""A network lab on one machine: a bridge in the root namespace, one namespace a node.

Cluster tests run the control plane in the root network namespace on the bridge's
address (``lab.host_address``) and each node agent in its own named namespace
(``/run/netns/<prefix>-<name>``), joined to the bridge by a veth pair whose host end
``cut()`` sets down and ``reconnect()`` up again. Everything the lab makes is named
from its prefix, so ``close()`` and the next lab's ``__init__`` find it by name even
after a crashed run: one lab per prefix at a time.
"""

from __future__ import annotations

import ipaddress
import os
import re
import shutil
import signal
import subprocess
import time
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from typing import Any

import pytest
from pyroute2 import IPRoute, netns

NETNS_DIR = "/run/netns"
IFNAMSIZ = 15  # the kernel's limit on an interface name, without the NUL
# Node addresses start at .11 so .1-.10 stay free for the host side (the bridge is .1).
FIRST_HOST = 11
PER_BLOCK = 256 - FIRST_HOST  # node addresses in one /24 block before the next one


class NetLabError(RuntimeError):
    """A lab operation failed; the message names the operation and the object."""


@dataclass
class LabNode:
    """One node: its namespace, its address on the bridge, the host end of its veth."""

    name: str
    netns: str
    address: str
    host_if: str
    # What popen started, so the lab can reap it after killing it at close.
    procs: list[subprocess.Popen[Any]] = field(default_factory=list, repr=False, compare=False)

    @property
    def netns_path(self) -> str:
        return os.path.join(NETNS_DIR, self.netns)

    def cut(self) -> None:
        """Take the node off the network: its veth's host end goes down."""
        _set_link_state(self.host_if, "down")

    def reconnect(self) -> None:
        """Put the node back on the network."""
        _set_link_state(self.host_if, "up")

    def command(self, argv: Sequence[str]) -> list[str]:
        """``argv`` run inside the node's namespace.

        nsenter without ``--fork`` execs the target in place (only a new pid namespace
        needs a fork), so the pid of the process started is the target's own pid.
        """
        return [_nsenter(), f"--net={self.netns_path}", "--", *argv]

    def popen(self, argv: Sequence[str], **kw: Any) -> subprocess.Popen[Any]:
        """Start ``argv`` in the node's namespace; ``Popen.pid`` is the target's pid.

        Returns once nsenter has exec'd the target (or exited): before that the process
        is still nsenter, perhaps still in the root namespace, where neither a test
        reading its cmdline nor ``close()`` looking for the lab's processes would find it.
        """
        nsenter = os.path.realpath(_nsenter())
        proc = subprocess.Popen(self.command(argv), **kw)
        self.procs.append(proc)
        deadline = time.monotonic() + 5
        while proc.poll() is None:
            try:
                if os.readlink(f"/proc/{proc.pid}/exe") != nsenter:
                    break
            except OSError:
                pass  # between exit and reaping: poll() says so next time
            if time.monotonic() > deadline:
                raise NetLabError(f"start {argv[0]} in netns {self.netns}: still nsenter after 5 s")
            time.sleep(0.001)
        return proc

    def run(self, argv: Sequence[str], **kw: Any) -> subprocess.CompletedProcess[Any]:
        """Run ``argv`` in the node's namespace to the end, like ``subprocess.run``."""
        return subprocess.run(self.command(argv), **kw)


class NetLab:
    """A bridge with the control plane's address and nodes added by ``add_node``."""

    def __init__(self, prefix: str = "mlqt", subnet: str = "10.213.0.0/16") -> None:
        # Alphanumeric and short: "<prefix>-" then names only this prefix's lab uses
        # (another prefix cannot contain "-"), and "<prefix>h-" leaves room in IFNAMSIZ.
        if not re.fullmatch(r"[a-z0-9]{1,8}", prefix):
            raise ValueError(f"netlab prefix {prefix!r}: want 1-8 of [a-z0-9]")
        self.prefix = prefix
        self.subnet = ipaddress.IPv4Network(subnet)
        self.host_address = str(self.subnet.network_address + 1)
        self.bridge = f"{prefix}-br"
        self.nodes: dict[str, LabNode] = {}
        _nsenter()  # fail now, not at the first popen
        clean(prefix)
        try:
            self._make_bridge()
            self._probe_veth()
        except BaseException:
            self.close()
            raise

    def __enter__(self) -> NetLab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _make_bridge(self) -> None:
        try:
            with IPRoute() as ipr:
                # STP off and no forward delay: a port that comes up forwards at once,
                # so reconnect() takes effect without a 15 s listening/learning wait.
                ipr.link(
                    "add",
                    ifname=self.bridge,
                    kind="bridge",
                    br_stp_state=0,
                    br_forward_delay=0,
                )
                idx = ipr.link_lookup(ifname=self.bridge)[0]
                ipr.addr(
                    "add", index=idx, address=self.host_address, prefixlen=self.subnet.prefixlen
                )
                ipr.link("set", index=idx, state="up")
        except Exception as exc:
            raise NetLabError(f"create bridge {self.bridge}: {exc} (bridge module?)") from exc

    def _probe_veth(self) -> None:
        # A throwaway pair, so a missing veth module shows at setup, not in add_node.
        # "h0"/"h00" never name a node's veth (nodes count from 1).
        a, b = f"{self.prefix}h0", f"{self.prefix}h00"
        try:
            with IPRoute() as ipr:
                ipr.link("add", ifname=a, kind="veth", peer=b)
                ipr.link("del", index=ipr.link_lookup(ifname=a)[0])
        except Exception as exc:
            raise NetLabError(f"create veth {a}: {exc} (veth module?)") from exc

    def add_node(self, name: str) -> LabNode:
        """A new namespace ``<prefix>-<name>`` whose ``eth0`` is on the bridge."""
        if not re.fullmatch(r"[A-Za-z0-9_.-]+", name):
            raise ValueError(f"netlab node name {name!r}: want [A-Za-z0-9_.-]+")
        if name in self.nodes:
            raise ValueError(f"netlab node {name!r}: exists")
        n = len(self.nodes) + 1
        host_if = f"{self.prefix}h-{name}"
        if len(host_if) > IFNAMSIZ:
            # The node's number instead: unique, and no "-" so it cannot meet a name.
            host_if = f"{self.prefix}h{n}"
        node = LabNode(name, f"{self.prefix}-{name}", node_address(self.subnet, n), host_if)
        self.nodes[name] = node  # before anything exists, so close() finds a half-made node
        try:
            netns.create(node.netns)
            with IPRoute() as ipr:
                # The peer is made inside the namespace under its final name: no
                # temporary name in the root namespace to collide or be left behind.
                ipr.link(
                    "add",
                    ifname=host_if,
                    kind="veth",
                    peer={"ifname": "eth0", "net_ns_fd": node.netns},
                )
                bridge = ipr.link_lookup(ifname=self.bridge)[0]
                ipr.link("set", index=ipr.link_lookup(ifname=host_if)[0], master=bridge, state="up")
            # flags=0: never create the namespace here, it must be the one made above.
            with IPRoute(netns=node.netns, flags=0) as ns:
                idx = ns.link_lookup(ifname="eth0")[0]
                ns.addr("add", index=idx, address=node.address, prefixlen=self.subnet.prefixlen)
                ns.link("set", index=idx, state="up")
                ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
                ns.route("add", dst="default", gateway=self.host_address)
        except Exception as exc:
            raise NetLabError(
                f"add node {name} (netns {node.netns}, veth {host_if}): {exc}"
            ) from exc
        return node

    def close(self) -> None:
        """Kill what runs in the lab's namespaces and remove them, the veths, the bridge."""
        clean(self.prefix)
        for node in self.nodes.values():
            for proc in node.procs:
                try:
                    proc.wait(timeout=5)  # killed by clean(); reap it
                except subprocess.TimeoutExpired:
                    pass  # stuck in the kernel; nothing more a test can do
        self.nodes.clear()


def node_address(subnet: ipaddress.IPv4Network, n: int) -> str:
    """Node ``n``'s address (from 1): .11 to .255 of the first /24, then of the next."""
    block, offset = divmod(n - 1, PER_BLOCK)
    ip = subnet.network_address + 256 * block + FIRST_HOST + offset
    if ip not in subnet or ip == subnet.broadcast_address:
        raise NetLabError(f"address node {n} in {subnet}: the subnet is full")
    return str(ip)


def _nsenter() -> str:
    path = shutil.which("nsenter")
    if path is None:
        raise NetLabError("find nsenter: not on PATH (util-linux)")
    return path


def _set_link_state(ifname: str, state: str) -> None:
    try:
        with IPRoute() as ipr:
            ipr.link("set", index=ipr.link_lookup(ifname=ifname)[0], state=state)
    except Exception as exc:
        raise NetLabError(f"set {ifname} {state}: {exc}") from exc


def _netns_names(prefix: str) -> list[str]:
    try:
        return [n for n in os.listdir(NETNS_DIR) if n.startswith(f"{prefix}-")]
    except FileNotFoundError:
        return []


def _pids_in(inodes: set[tuple[int, int]]) -> list[int]:
    """The processes whose network namespace is one of ``inodes`` ((st_dev, st_ino))."""
    found = []
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            st = os.stat(f"/proc/{entry}/ns/net")
        except OSError:
            continue  # gone, or a zombie: it holds no namespace any more
        if (st.st_dev, st.st_ino) in inodes:
            found.append(int(entry))
    return found


def clean(prefix: str) -> None:
    """Remove everything a lab with ``prefix`` made, whoever made it (idempotent)."""
    names = _netns_names(prefix)
    inodes = set()
    for name in names:
        try:
            st = os.stat(os.path.join(NETNS_DIR, name))
        except OSError:
            continue
        inodes.add((st.st_dev, st.st_ino))
    # Kill first: a namespace lives on while a process is in it, and a killed process
    # may have forked meanwhile, so repeat until none is left.
    deadline = time.monotonic() + 5
    while (pids := _pids_in(inodes)) and time.monotonic() < deadline:
        for pid in pids:
            try:
                os.kill(pid, signal.SIGKILL)
            except ProcessLookupError:
                pass
        time.sleep(0.02)
    # The host ends explicitly: the kernel deletes them with their namespace only
    # later, on a work queue, and deleting one end of a veth deletes both at once.
    ours = re.compile(rf"{prefix}(-br|h-.+|h\d+)")
    with IPRoute() as ipr:
        for link in ipr.get_links():
            if ours.fullmatch(link.get_attr("IFLA_IFNAME") or ""):
                try:
                    ipr.link("del", index=link["index"])
                except Exception:
                    pass  # gone meanwhile, with its peer
    for name in names:
        try:
            netns.remove(name)  # umount (lazy) and unlink
        except FileNotFoundError:
            pass


@pytest.fixture
def netlab() -> Iterator[NetLab]:
    """A fresh lab (prefix ``mlqt``), closed after the test."""
    if os.geteuid() != 0:
        pytest.fail("netlab needs root (network namespaces, bridge, veth)", pytrace=False)
    try:
        lab = NetLab()
    except NetLabError as exc:
        pytest.fail(f"netlab: {exc}", pytrace=False)
    try:
        yield lab
    finally:
        lab.close()
