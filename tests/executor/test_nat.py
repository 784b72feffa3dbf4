"""NAT for bridge jobs, for real: an "outside" network namespace on a veth of its own,
a TCP server in it that answers with the address it sees, and jobs on a bridge that
reach it masqueraded as the host, or (NAT off) not at all; nothing stays behind.

The outside namespace routes the bridge's subnet back through the host, so that a
job's packets would reach it even unmasqueraded wherever the host forwards them: only
mlq's table keeps a NAT-off job in, and only masquerading hides a NAT job's address.
"""

from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path

import pytest
from exec_helpers import finish, outside_network, request
from mlq.executor import Network, Outcome, kill_now, start
from mlq.executor.interface import LocalExecutor
from mlq.executor.network import TABLE, forget_bridge, nat_elements, nat_set
from mlq.executor.status import read_status


def _kernel_has_nftables() -> bool:
    """Whether a table can be made: listing works on a kernel without nf_tables too
    (user-mode-linux's lists nothing and refuses ``add table``, EOPNOTSUPP)."""
    probe = f"mlq_probe_{os.getpid()}"
    p = subprocess.run(["nft", "add", "table", "ip", probe], capture_output=True)
    subprocess.run(["nft", "delete", "table", "ip", probe], capture_output=True)
    return p.returncode == 0


# nft is installed where the suite runs (scripts/test); a kernel without nf_tables
# fails each test with one line (tests/vm leaves this file out: user-mode-linux has none)
@pytest.fixture(autouse=True, scope="module")
def _nf_tables() -> None:
    if not _kernel_has_nftables():
        pytest.fail(
            "NAT needs nf_tables: this kernel has none (nft add table fails)", pytrace=False
        )


PY = os.path.realpath(sys.executable)
NAT = Network(mode="bridge", bridge="mlqnat0", subnet="10.233.0.0/24")
NO_NAT = Network(mode="bridge", bridge="mlqnat0", subnet="10.233.0.0/24", nat=False)
OUTSIDE = "10.234.0.2"  # the server, in the outside namespace
HOST_SIDE = "10.234.0.1"  # the host's address on the link to it
PORT = 7100

# connect once, say what the server saw (or why not), then stay up for ``argv[1]`` s
CLIENT = f"""
import socket, sys, time
try:
    c = socket.create_connection(("{OUTSIDE}", {PORT}), timeout=4)
    print(c.recv(100).decode().strip(), flush=True)
except OSError as e:
    print("blocked", e, flush=True)
time.sleep(float(sys.argv[1]))
"""


def _nft_text() -> str:
    p = subprocess.run(["nft", "list", "table", "ip", TABLE], capture_output=True, text=True)
    return p.stdout if p.returncode == 0 else ""


@pytest.fixture
def outside():
    with outside_network(str(os.getpid() % 100000), NAT.subnet, port=PORT) as (server, host):
        assert (server, host) == (OUTSIDE, HOST_SIDE)
        yield


@pytest.fixture(autouse=True)
def forwarding_restored():
    """A NAT job turns net.ipv4.ip_forward on and the executor leaves it on; this
    machine gets its own setting back after each test."""
    forward = Path("/proc/sys/net/ipv4/ip_forward")
    was = forward.read_text().strip()
    yield
    forward.write_text(was)


@pytest.fixture(autouse=True)
def remove_test_bridge():
    """The bridge and its part of mlq's table stay between jobs (like docker0); this
    test's own ones go after it, and nothing of them is left."""
    yield
    from pyroute2 import IPRoute

    forget_bridge(NAT.bridge, NAT.subnet)
    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=NAT.bridge):
            ipr.link("del", index=idx)
    assert NAT.bridge not in _nft_text()


def _first_line(handle, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        text = Path(handle.stdout).read_text()
        if text.endswith("\n"):
            return text.strip()
        time.sleep(0.05)
    pytest.fail(f"run {handle.run_id} said nothing within {timeout}s")


def test_a_bridge_job_reaches_outside_masqueraded_as_the_host(state_dir, outside):
    job = start(request(state_dir, [PY, "-c", CLIENT, "60"], network=NAT))
    try:
        assert _first_line(job) == f"seen {HOST_SIDE}"  # the host's address, not 10.233.x
        assert job.address in nat_elements(NAT.bridge)
    finally:
        kill_now(job)
    assert finish(job).state != Outcome.COMPLETED
    # its address left the NAT set with its veth and its lease
    assert nat_elements(NAT.bridge) == set()
    assert os.listdir(Path(state_dir, "net", NAT.bridge)) == []


def test_a_job_of_a_class_with_nat_off_reaches_nothing_outside(state_dir, outside):
    # a NAT job beside it: the host forwards, the table is there, and it gets out
    nat_job = start(request(state_dir, [PY, "-c", CLIENT, "60"], network=NAT))
    shut = start(request(state_dir, [PY, "-c", CLIENT, "0"], network=NO_NAT))
    try:
        assert _first_line(nat_job) == f"seen {HOST_SIDE}"
        assert shut.address not in nat_elements(NAT.bridge)
        assert finish(shut).state == Outcome.COMPLETED
        assert Path(shut.stdout).read_text().startswith("blocked")
    finally:
        kill_now(nat_job)
    finish(nat_job)
    assert nat_elements(NAT.bridge) == set()


def test_a_nat_address_whose_run_ended_unwatched_is_dropped_at_the_next_start(state_dir, outside):
    # the run ends and its supervisor removes its lease, but nobody waits on it (the
    # daemon is down): its NAT address stays until an executor starts on the state dir
    job = start(request(state_dir, [PY, "-c", CLIENT, "0"], network=NAT))
    deadline = time.monotonic() + 30
    while read_status(job.run_dir, job.cgroup_version) is None and time.monotonic() < deadline:
        time.sleep(0.05)
    while Path(state_dir, "net", NAT.bridge, job.address).exists():
        time.sleep(0.05)  # the supervisor's last steps
    assert job.address in nat_elements(NAT.bridge)
    LocalExecutor(state_dir)  # a daemon's start
    assert nat_elements(NAT.bridge) == set()
    assert finish(job).state == Outcome.COMPLETED
    assert Path(job.stdout).read_text().strip() == f"seen {HOST_SIDE}"


def test_the_table_is_mlqs_own_and_set_up_again_changes_nothing(state_dir, outside):
    before = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    for _ in range(2):
        assert finish(start(request(state_dir, [PY, "-c", CLIENT, "0"], network=NAT))).state == (
            Outcome.COMPLETED
        )
    after = subprocess.run(["nft", "list", "tables"], capture_output=True, text=True).stdout
    assert set(after.split("\n")) - set(before.split("\n")) <= {f"table ip {TABLE}"}
    text = _nft_text()
    # one part for the bridge however many jobs set it up, and no address of theirs left
    assert text.count(f"chain {NAT.bridge}_out ") == 1
    assert text.count(f'"{NAT.bridge}" : jump {NAT.bridge}_out') == 1
    assert f"set {nat_set(NAT.bridge)} " in text and nat_elements(NAT.bridge) == set()


def test_without_nft_a_nat_job_is_refused_naming_the_package_and_a_nat_off_one_runs(
    state_dir, monkeypatch
):
    import mlq.executor.network as network
    from mlq.executor import LaunchError

    monkeypatch.setattr(network, "_nft_binary", lambda: None)
    forward = Path(network.IP_FORWARD)
    was = forward.read_text().strip()
    forward.write_text("0")  # the host routes nothing: a NAT-off job cannot get out
    try:
        with pytest.raises(LaunchError, match=r"nft is not installed \(Debian package nftables\)"):
            start(request(state_dir, [PY, "-c", "pass"], network=NAT))
        shut = start(request(state_dir, [PY, "-c", CLIENT, "0"], network=NO_NAT))
        assert finish(shut).state == Outcome.COMPLETED
        forward.write_text("1")  # now only mlq's table could keep one in: refused
        with pytest.raises(LaunchError, match="only mlq's nftables table keeps"):
            start(request(state_dir, [PY, "-c", "pass"], network=NO_NAT))
    finally:
        forward.write_text(was)
    assert os.listdir(Path(state_dir, "net", NAT.bridge)) == []


def test_a_nat_job_whose_supervisor_was_lost_leaves_no_nat_address(state_dir):
    # a node crash or a SIGKILL of the supervisor: adopt finishes the run, and its
    # lease and NAT address go with its veth and namespace
    import signal

    from mlq.executor import adopt

    h = start(request(state_dir, ["/bin/sleep", "60"], network=NAT))
    assert h.address in nat_elements(NAT.bridge)
    os.kill(h.supervisor_pid, signal.SIGKILL)
    os.waitpid(h.supervisor_pid, 0)
    st = adopt(h.run_dir)
    assert st.state == Outcome.FAILED and "lost" in st.error
    assert nat_elements(NAT.bridge) == set()
    assert os.listdir(Path(state_dir, "net", NAT.bridge)) == []
