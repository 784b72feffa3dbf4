"""Bridge networking: a veth pair per job, one end on the ``mlq0`` bridge.

For ``network: bridge`` the launcher makes a named network namespace
(``/run/netns/mlq-<run>``), a veth pair with pyroute2 whose host end joins the
bridge and whose other end becomes the job's ``eth0`` with an address from the
subnet and a default route via the bridge. The job's init joins that namespace,
and the supervisor then removes the name, so the namespace (and the veth in it)
lives exactly as long as the job. Addresses are leases: one file per address
under ``<state>/net/<bridge>/``, made with O_EXCL and removed by the supervisor
when the job ends. Jobs on one bridge reach each other; the bridge itself stays
(like docker0). ``none`` needs nothing here: init brings up loopback.
"""

from __future__ import annotations

import fcntl
import hashlib
import ipaddress
import os
from contextlib import contextmanager
from dataclasses import dataclass

from mlq.executor.errors import ExecutorError
from mlq.executor.request import Network

NETNS_DIR = "/run/netns"


@dataclass
class JobNetwork:
    netns_name: str
    netns_path: str
    host_if: str
    address: str
    prefixlen: int
    gateway: str
    lease: str


@contextmanager
def _locked(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _ensure_bridge(ipr, net: Network, gateway: str, prefixlen: int) -> int:
    found = ipr.link_lookup(ifname=net.bridge)
    if not found:
        ipr.link("add", ifname=net.bridge, kind="bridge")
        found = ipr.link_lookup(ifname=net.bridge)
    idx = found[0]
    have = {a.get_attr("IFA_ADDRESS") for a in ipr.get_addr(index=idx)}
    if gateway not in have:
        ipr.addr("add", index=idx, address=gateway, prefixlen=prefixlen)
    ipr.link("set", index=idx, state="up")
    return idx


def _lease(lease_dir: str, subnet: ipaddress.IPv4Network, run_id: str) -> tuple[str, str]:
    os.makedirs(lease_dir, exist_ok=True)
    hosts = subnet.hosts()
    next(hosts)  # the first host is the bridge's own address
    for ip in hosts:
        path = os.path.join(lease_dir, str(ip))
        try:
            fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        except FileExistsError:
            continue
        os.write(fd, run_id.encode())
        os.close(fd)
        return str(ip), path
    raise ExecutorError(f"allocate an address in {subnet}: every address is leased")


def setup(net: Network, run_key: str, state_dir: str) -> JobNetwork:
    """Make the job's namespace, veth pair and address; undone by ``teardown``.

    ``run_key`` (the run directory) names the interfaces; it is unique on the node.
    """
    from pyroute2 import IPRoute, NetNS, netns

    try:
        subnet = ipaddress.ip_network(net.subnet)
    except ValueError as exc:
        raise ExecutorError(f"network subnet {net.subnet}: {exc}") from None
    gateway = str(next(subnet.hosts()))
    short = hashlib.sha256(run_key.encode()).hexdigest()[:10]
    name = f"mlq-{short}"
    host_if, peer_if = f"mlqv{short}", f"mlqp{short}"
    lease_dir = os.path.join(state_dir, "net", net.bridge)
    with _locked(os.path.join(state_dir, "net", ".lock")):
        address, lease = _lease(lease_dir, subnet, os.path.basename(run_key))
    jn = JobNetwork(
        name, os.path.join(NETNS_DIR, name), host_if, address, subnet.prefixlen, gateway, lease
    )
    try:
        netns.create(name)
        with IPRoute() as ipr:
            with _locked(os.path.join(state_dir, "net", ".lock")):
                br = _ensure_bridge(ipr, net, gateway, subnet.prefixlen)
            ipr.link(
                "add", ifname=host_if, kind="veth", peer={"ifname": peer_if, "net_ns_fd": name}
            )
            ipr.link("set", index=ipr.link_lookup(ifname=host_if)[0], master=br, state="up")
        with NetNS(name) as ns:
            idx = ns.link_lookup(ifname=peer_if)[0]
            ns.link("set", index=idx, ifname="eth0")
            ns.addr("add", index=idx, address=address, prefixlen=subnet.prefixlen)
            ns.link("set", index=idx, state="up")
            ns.link("set", index=ns.link_lookup(ifname="lo")[0], state="up")
            ns.route("add", dst="default", gateway=gateway)
    except Exception as exc:
        teardown(jn)
        raise ExecutorError(f"set up veth {host_if} on {net.bridge}: {exc}") from None
    return jn


def delete_host_link(host_if: str) -> None:
    """Delete a run's host-side veth now, if it is still there. The kernel deletes it
    when the job's network namespace goes, but that happens later, on a kernel work
    queue (seconds on a loaded machine); a run that has ended should leave nothing."""
    if not os.path.exists(f"/sys/class/net/{host_if}"):
        return
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=host_if):
            try:
                ipr.link("del", index=idx)
            except Exception:
                pass  # gone meanwhile


def teardown(jn: JobNetwork) -> None:
    """Remove what ``setup`` made (idempotent; the supervisor does the same at the end)."""
    from pyroute2 import IPRoute

    if os.path.exists(jn.netns_path):
        try:
            from pyroute2 import netns

            netns.remove(jn.netns_name)
        except Exception:
            pass
    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=jn.host_if):
            try:
                ipr.link("del", index=idx)
            except Exception:
                pass
    try:
        os.unlink(jn.lease)
    except FileNotFoundError:
        pass
