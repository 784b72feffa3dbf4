"""The network lab itself: nodes reach each other and the host, a cut node does not,
and nothing of a lab is left after it, or after a crashed one."""

from __future__ import annotations

import ipaddress
import os
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator

import pytest
from netlab import LabNode, NetLab, node_address

# Connects to argv[1]:argv[2] within argv[3] seconds; the exit status says whether it did.
CONNECT = (
    "import socket, sys\n"
    "socket.create_connection((sys.argv[1], int(sys.argv[2])), timeout=float(sys.argv[3]))"
)
# Listens on argv[1] in the node's namespace, says so, and accepts forever.
SERVE = (
    "import socket, sys\n"
    "s = socket.create_server(('0.0.0.0', int(sys.argv[1])))\n"
    "print('ready', flush=True)\n"
    "while True:\n"
    "    s.accept()[0].close()"
)


def connects(node: LabNode, address: str, port: int, timeout: float = 1.0) -> bool:
    r = node.run(
        [sys.executable, "-c", CONNECT, address, str(port), str(timeout)],
        capture_output=True,
        timeout=timeout + 10,
    )
    return r.returncode == 0


@pytest.fixture
def host_port(netlab: NetLab) -> Iterator[int]:
    """A TCP server in the root namespace on the lab's host address: the control plane."""
    srv = socket.create_server((netlab.host_address, 0))
    srv.settimeout(0.2)
    stop = threading.Event()

    def serve() -> None:
        while not stop.is_set():
            try:
                srv.accept()[0].close()
            except TimeoutError:
                pass

    t = threading.Thread(target=serve, daemon=True)
    t.start()
    yield srv.getsockname()[1]
    stop.set()
    t.join()
    srv.close()


def lab_leftovers(prefix: str) -> list[str]:
    links = subprocess.run(["ip", "-o", "link"], capture_output=True, text=True, check=True)
    names = [line.split(":")[1].strip().split("@")[0] for line in links.stdout.splitlines()]
    spaces = subprocess.run(["ip", "netns", "list"], capture_output=True, text=True, check=True)
    return [f"link {n}" for n in names if n.startswith(prefix)] + [
        f"netns {line}" for line in spaces.stdout.splitlines() if line.startswith(prefix)
    ]


def test_nodes_reach_each_other_and_a_cut_node_reaches_nothing_until_reconnected(
    netlab: NetLab, host_port: int
) -> None:
    n1, n2, n3 = (netlab.add_node(n) for n in ("n1", "n2", "a-rather-long-name"))
    assert (n1.address, n2.address, netlab.host_address) == (
        "10.213.0.11",
        "10.213.0.12",
        "10.213.0.1",
    )
    assert n3.host_if == "mlqth3"  # "mlqth-a-rather-long-name" is over IFNAMSIZ

    server = n2.popen([sys.executable, "-c", SERVE, "7000"], stdout=subprocess.PIPE, text=True)
    assert server.stdout.readline() == "ready\n"
    # The pid is the target's own (nsenter exec'd it in place), so a test can kill -9 it.
    with open(f"/proc/{server.pid}/cmdline", "rb") as f:
        assert f.read().split(b"\0")[:2] == [sys.executable.encode(), b"-c"]
    assert connects(n1, n2.address, 7000)
    assert connects(n1, netlab.host_address, host_port)
    assert connects(n3, netlab.host_address, host_port)

    n1.cut()
    start = time.monotonic()
    assert not connects(n1, netlab.host_address, host_port, timeout=1.0)
    assert time.monotonic() - start < 2.5
    assert connects(n2, netlab.host_address, host_port)

    n1.reconnect()
    deadline = time.monotonic() + 3
    while not connects(n1, netlab.host_address, host_port) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert connects(n1, netlab.host_address, host_port)
    # The server is left running: close() has to kill it.


def test_close_kills_what_runs_in_the_lab_and_leaves_nothing() -> None:
    with NetLab(prefix="mlqtz") as lab:
        sleeper = lab.add_node("a").popen(["sleep", "60"])
        assert lab_leftovers("mlqtz")
    assert sleeper.returncode == -9
    assert lab_leftovers("mlqtz") == []
    lab.close()  # idempotent


def test_a_crashed_lab_is_cleaned_up_by_the_next_one_with_its_prefix() -> None:
    crashed = NetLab(prefix="mlqtc")
    sleeper = crashed.add_node("a").popen(["sleep", "60"])
    try:
        lab = NetLab(prefix="mlqtc")  # the crashed one is never closed
        try:
            assert sleeper.wait(timeout=5) == -9
            assert lab_leftovers("mlqtc") == ["link mlqtc-br"]  # the new lab's own bridge
            assert lab.add_node("a").address == "10.213.0.11"
        finally:
            lab.close()
    finally:
        sleeper.kill()
        sleeper.wait()
    assert lab_leftovers("mlqtc") == []
    assert not os.path.exists("/run/netns/mlqtc-a")


@pytest.mark.parametrize(
    ("n", "want"),
    [(1, "10.213.0.11"), (245, "10.213.0.255"), (246, "10.213.1.11"), (491, "10.213.2.11")],
)
def test_node_addresses_go_on_into_the_third_octet(n: int, want: str) -> None:
    assert node_address(ipaddress.IPv4Network("10.213.0.0/16"), n) == want
