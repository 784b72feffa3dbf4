"""NAT per priority class, as an admin and users live it: the daemon's config names the
bridge and its subnet, ``mlq class set batch --no-nat`` shuts a class in, and real
bridge jobs of two classes reach a server outside the node, or do not."""

from __future__ import annotations

import os
import subprocess

import pytest
from daemon_helpers import MLQ
from exec_helpers import outside_network
from mlq.executor.network import forget_bridge, nat_elements

BRIDGE, SUBNET = "mlqe2e0", "10.236.0.0/24"
PORT = 7101
TERMINAL = {"COMPLETED", "FAILED", "OUT_OF_MEMORY", "TIMEOUT", "CANCELLED", "PREEMPTED"}

JOB = """
name: {name}
team: nlp
kind: {kind}
image: host
network: bridge
command: [python3, -c, "{client}"]
resources: {{cpus: 1, memory: 256Mi}}
"""
# one line, as the job file's command: what the outside server saw, or why not
CLIENT = (
    "import socket\\n"
    "try:\\n"
    " c = socket.create_connection(('{server}', {port}), timeout=4)\\n"
    " print(c.recv(100).decode().strip())\\n"
    "except OSError as e:\\n"
    " print('blocked', e)"
)


@pytest.fixture
def nat_daemon(make_daemon):
    """A daemon whose config names its bridge and subnet (the node section is read at
    every start); its bridge and that bridge's part of mlq's table go after it."""
    d = make_daemon()
    d.stop()
    node = f"node: {{name: e2e, bridge: {{name: {BRIDGE}, subnet: {SUBNET}}},"
    d.config.write_text(d.config.read_text().replace("node: {name: e2e,", node))
    d.start()
    try:
        yield d
    finally:
        for j in d.client().get("/v1/jobs")["jobs"]:  # none, unless the test failed
            d.client().post("/v1/jobs/cancel", {"ids": [j["id"]], "now": True})
            d.wait_for(j["id"], TERMINAL, timeout=30)
        assert nat_elements(BRIDGE) == set()  # every job's address left with its run
        forget_bridge(BRIDGE, SUBNET)
        subprocess.run(["ip", "link", "del", BRIDGE], capture_output=True)


def test_a_class_with_nat_off_keeps_its_bridge_jobs_in_and_others_go_out_as_the_node(
    nat_daemon, unix_users
):
    d, alice = nat_daemon, unix_users["alice"]
    # only an mlq admin switches it, and the listing says it
    assert d.cli("class", "set", "batch", "--no-nat", user=alice).code == 3
    r = d.cli("class", "set", "batch", "--no-nat")
    assert r.code == 0, r.err
    classes = {c["name"]: c for c in d.cli("class", "list", "--json").json()["classes"]}
    assert (classes["batch"]["nat"], classes["training"]["nat"]) == (False, True)
    assert classes["batch"]["default_time_limit"] == "1d"  # the rest of batch untouched
    listing = d.cli("class", "list").out.splitlines()
    assert listing[0].split()[-1] == "NAT"
    rows = {line.split()[0]: line.split() for line in listing[2:]}
    assert (rows["batch"][-1], rows["training"][-1]) == ("off", "on")

    tag = f"e{os.getpid() % 10000}"
    with outside_network(tag, SUBNET, prefix="10.237.0", port=PORT) as (server, host_side):
        client = CLIENT.format(server=server, port=PORT)
        out = d.submit(JOB.format(name="fetch", kind="training", client=client), user=alice)
        shut = d.submit(JOB.format(name="shut", kind="batch", client=client), user=alice)
        for job in (out, shut):
            assert d.wait_for(job, TERMINAL)["state"] == "COMPLETED"
        # on the bridge the config names, with the first address of its subnet
        shown = subprocess.run(["ip", "-br", "addr", "show", BRIDGE], capture_output=True)
        assert "10.236.0.1/24" in shown.stdout.decode()
        # out of the node's bridge, from its subnet, seen as the node's own address
        assert d.log(out).strip() == f"seen {host_side}"
        assert d.log(shut).startswith("blocked")
        # switched back, the class's next job goes out: the flag is read at each start
        assert d.cli("class", "set", "batch", "--nat").code == 0
        again = d.submit(JOB.format(name="again", kind="batch", client=client), user=alice)
        assert d.wait_for(again, TERMINAL)["state"] == "COMPLETED"
        assert d.log(again).strip() == f"seen {host_side}"


@pytest.mark.parametrize(
    ("bridge", "expected"),
    [
        pytest.param(
            "{name: mlq0, subnet: 10.88.0.0/33}",
            'node.bridge.subnet: "10.88.0.0/33" is not an IPv4 network in CIDR form',
            id="a subnet that is no CIDR names the field",
        ),
        pytest.param(
            "{name: mlq0, subnet: 10.88.0.0/30}",
            'node.bridge.subnet: "10.88.0.0/30" is too small',
            id="a subnet with no room for jobs names the field",
        ),
        pytest.param(
            "{name: a-bridge-name-too-long}",
            'node.bridge.name: "a-bridge-name-too-long" is longer than 15 characters',
            id="a bridge name longer than an interface name names the field",
        ),
        pytest.param(
            '{name: "mlq 0;"}',
            'node.bridge.name: "mlq 0;" is not an interface name',
            id="a bridge name with odd characters names the field",
        ),
    ],
)
def test_a_bad_bridge_in_the_config_stops_the_server_naming_the_field(
    daemon_home, bridge, expected
):
    config = daemon_home / "cluster.yaml"
    config.write_text(f"node: {{name: e2e, gpus: declared, bridge: {bridge}}}\n")
    env = dict(os.environ, MLQ_SOCKET=str(daemon_home / "run" / "mlq.sock"))
    env["MLQ_STATE_DIR"] = str(daemon_home / "state")
    p = subprocess.run(
        [MLQ, "server", "--config", str(config)],
        env=env,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert p.returncode != 0
    assert expected in p.stderr, p.stderr
