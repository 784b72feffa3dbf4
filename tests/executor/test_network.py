"""Bridge networking: two jobs on mlq0 reach each other; addresses are released."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest
from exec_helpers import finish, request
from mlq.executor import Network, Outcome, start

# The interpreter itself, not the venv's link to it: a checkout under /tmp is hidden
# from host-image jobs, whose /tmp is their own tmpfs.
PY = os.path.realpath(sys.executable)
# jobs on a bridge reach each other with NAT or without; without, on a kernel that has
# no nf_tables too (a tests/vm guest), as long as the host forwards nothing
NET = Network(mode="bridge", bridge="mlqtest0", subnet="10.231.0.0/24", nat=False)

SERVER = """
import socket
s = socket.socket(); s.bind(("0.0.0.0", 7000)); s.listen(1)
print("listening", flush=True)
c, addr = s.accept()
print(c.recv(100).decode(), "from", addr[0], flush=True)
"""

CLIENT = """
import socket, sys, time
for _ in range(200):
    try:
        c = socket.create_connection((sys.argv[1], 7000), timeout=1); break
    except OSError:
        time.sleep(0.05)
c.sendall(b"hello"); c.close()
print(open("/sys/class/net/eth0/operstate").read().strip())
"""


@pytest.fixture(autouse=True)
def remove_test_bridge():
    """The bridge stays between jobs (like docker0); this test's own one goes after it,
    with its part of mlq's nftables table."""
    yield
    from mlq.executor.network import forget_bridge
    from pyroute2 import IPRoute

    forget_bridge(NET.bridge, NET.subnet)
    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=NET.bridge):
            ipr.link("del", index=idx)


def test_two_bridge_jobs_reach_each_other_and_their_addresses_are_released(state_dir):
    server = start(request(state_dir, [PY, "-c", SERVER], network=NET))
    client = start(request(state_dir, [PY, "-c", CLIENT, server.address], network=NET))
    assert server.address != client.address
    leases = Path(state_dir, "net", NET.bridge)
    assert sorted(os.listdir(leases)) == sorted([server.address, client.address])
    client_status, server_status = finish(client), finish(server)
    assert (client_status.state, server_status.state) == (Outcome.COMPLETED, Outcome.COMPLETED)
    assert Path(client.stdout).read_text().strip() == "up"
    assert Path(server.stdout).read_text().split()[1:] == ["hello", "from", client.address]
    assert os.listdir(leases) == []
    # nothing_left: no veth and no network namespace of mlq remain
