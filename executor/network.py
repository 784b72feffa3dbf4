"""Bridge networking: a veth pair per job, one end on the node's bridge, and NAT.

For ``network: bridge`` the launcher makes a named network namespace
(``/run/netns/mlq-<run>``), a veth pair with pyroute2 whose host end joins the
bridge (``mlq0`` unless the node's config names another) and whose other end
becomes the job's ``eth0`` with an address from the subnet and a default route via
the bridge. The job's init joins that namespace, and the supervisor then removes the
name, so the namespace (and the veth in it) lives exactly as long as the job.
Addresses are leases: one file per address under ``<state>/net/<bridge>/``, made
with O_EXCL and removed by the supervisor when the job ends. Jobs on one bridge
reach each other; the bridge itself stays (like docker0). ``none`` needs nothing
here: init brings up loopback.

Beyond the node, through nftables (the ``nft`` command, package nftables): mlq owns
one table, ``ip mlq``, and touches no other. Per bridge it holds a set
``<bridge>_nat`` of the addresses whose jobs may go out (their request says
``nat``), chains that accept what they send to other interfaces and drop the rest
of what the bridge's jobs send out (a NAT-off job reaches nothing beyond the node),
drop connections from outside into the bridge (replies pass), and masquerade the
set's traffic as the host. An address joins the set when its veth is set up and
leaves it when the run's network is released (``release``, ``teardown``); each set
up first drops elements whose lease is gone (a run that ended while nothing
watched), and ``reconcile`` does that for every bridge of a state dir at start.
``net.ipv4.ip_forward`` is turned on (and left on) the first time a NAT job needs it.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import ipaddress
import json
import logging
import os
import shutil
import subprocess
from contextlib import contextmanager
from dataclasses import dataclass

from mlq.executor.errors import ExecutorError
from mlq.executor.request import Network, bridge_problem, subnet_problem

log = logging.getLogger("mlq.network")

NETNS_DIR = "/run/netns"
TABLE = "mlq"  # family ip: the one nftables table mlq owns
IP_FORWARD = "/proc/sys/net/ipv4/ip_forward"


@dataclass
class JobNetwork:
    netns_name: str
    netns_path: str
    host_if: str
    address: str
    prefixlen: int
    gateway: str
    lease: str
    # empty in records from before NAT: the lease's directory names the bridge
    bridge: str = ""
    nat: bool = False
    run: str = ""  # the run the lease is written for

    def bridge_name(self) -> str:
        return self.bridge or os.path.basename(os.path.dirname(self.lease))


@contextmanager
def _locked(path: str):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _lock_path(lease: str) -> str:
    """The state dir's network lock, from a lease path (``<state>/net/<bridge>/<ip>``)."""
    return os.path.join(os.path.dirname(os.path.dirname(lease)), ".lock")


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


# ---------------------------------------------------------------- nftables


def _nft_binary() -> str | None:
    return shutil.which("nft") or next(
        (p for p in ("/usr/sbin/nft", "/sbin/nft") if os.access(p, os.X_OK)), None
    )


def _nft(*args: str, script: str | None = None) -> str:
    """Run ``nft`` (a script on stdin with ``script``); its output, or ExecutorError."""
    nft = _nft_binary()
    if nft is None:
        raise ExecutorError("nft is not installed (Debian package nftables)")
    cmd = [nft, *args] + (["-f", "-"] if script is not None else [])
    feed = {"input": script} if script is not None else {"stdin": subprocess.DEVNULL}
    try:
        p = subprocess.run(cmd, capture_output=True, text=True, timeout=30, **feed)
    except (OSError, subprocess.TimeoutExpired) as exc:
        raise ExecutorError(f"nft {' '.join(args) or '-f -'}: {exc}") from None
    if p.returncode != 0:
        what = " ".join(args) if script is None else "a script"
        raise ExecutorError(f"nft {what}: {p.stderr.strip() or f'exit {p.returncode}'}")
    return p.stdout


def nat_set(bridge: str) -> str:
    """The set of the addresses on ``bridge`` whose jobs may go out."""
    return f"{bridge}_nat"


def _rules(bridge: str, subnet: str) -> tuple[str, str]:
    """Two nft scripts that make (or remake: idempotent, atomic each) the table's part
    for ``bridge``: its set and chains, then the entries that send its packets there.
    Two, because nft reads an interval map's elements from the kernel before it adds
    one, and the map is not there until the first script ran."""
    t, br = f"ip {TABLE}", json.dumps(bridge)
    out, into, snat = f"{bridge}_out", f"{bridge}_in", f"{bridge}_snat"
    table = f"""add table {t}
add set {t} {nat_set(bridge)} {{ type ipv4_addr; }}
add map {t} from_bridge {{ type ifname : verdict; }}
add map {t} to_bridge {{ type ifname : verdict; }}
add map {t} from_subnet {{ type ipv4_addr : verdict; flags interval; }}
add chain {t} forward {{ type filter hook forward priority filter; policy accept; }}
add chain {t} postrouting {{ type nat hook postrouting priority srcnat; policy accept; }}
add chain {t} {out}
add chain {t} {into}
add chain {t} {snat}
flush chain {t} forward
flush chain {t} postrouting
flush chain {t} {out}
flush chain {t} {into}
flush chain {t} {snat}
add rule {t} forward iifname vmap @from_bridge
add rule {t} forward oifname vmap @to_bridge
add rule {t} postrouting ip saddr vmap @from_subnet
add rule {t} {out} oifname {br} accept
add rule {t} {out} ip saddr @{nat_set(bridge)} accept
add rule {t} {out} counter drop
add rule {t} {into} iifname {br} accept
add rule {t} {into} ct state established,related accept
add rule {t} {into} counter drop
add rule {t} {snat} oifname {br} return
add rule {t} {snat} ip saddr @{nat_set(bridge)} masquerade
"""
    entries = f"""add element {t} from_bridge {{ {br} : jump {out} }}
add element {t} to_bridge {{ {br} : jump {into} }}
add element {t} from_subnet {{ {subnet} : jump {snat} }}
"""
    return table, entries


def ensure_table(bridge: str, subnet: str) -> None:
    """Make or update mlq's table for ``bridge`` (other bridges' parts stay as they are)."""
    for script in _rules(bridge, subnet):
        _nft(script=script)


def nat_elements(bridge: str) -> set[str]:
    """The addresses in ``bridge``'s NAT set; empty if mlq's table or the set is absent."""
    if _nft_binary() is None:
        return set()
    try:
        text = _nft("-j", "list", "set", "ip", TABLE, nat_set(bridge))
    except ExecutorError:
        return set()  # no table, no set: nothing in it
    found: set[str] = set()
    for item in json.loads(text).get("nftables", []):
        for e in (item.get("set") or {}).get("elem", []):
            if isinstance(e, str):
                found.add(e)
    return found


def _set_element(verb: str, bridge: str, address: str) -> None:
    _nft(verb, "element", "ip", TABLE, nat_set(bridge), f"{{ {address} }}")


def _prune(bridge: str, lease_dir: str) -> None:
    """Drop the NAT set's addresses that no lease holds (runs that ended unwatched)."""
    for address in nat_elements(bridge):
        if not os.path.exists(os.path.join(lease_dir, address)):
            _set_element("delete", bridge, address)


def reconcile(state_dir: str) -> None:
    """At start: for every bridge this state dir leased on, no NAT address without a lease."""
    net_dir = os.path.join(state_dir, "net")
    if not os.path.isdir(net_dir) or _nft_binary() is None:
        return
    try:
        with _locked(os.path.join(net_dir, ".lock")):
            for bridge in sorted(os.listdir(net_dir)):
                lease_dir = os.path.join(net_dir, bridge)
                if os.path.isdir(lease_dir) and not bridge_problem(bridge):
                    _prune(bridge, lease_dir)
    except (OSError, ExecutorError) as exc:
        log.warning("reconcile the NAT addresses of %s: %s", net_dir, exc)


def forget_bridge(bridge: str, subnet: str) -> None:
    """Remove ``bridge``'s part of mlq's table, and the table once no bridge has one
    (a bridge an admin no longer uses, once none of its jobs runs; tests)."""
    t, br = ("ip", TABLE), json.dumps(bridge)
    steps = [
        ("delete", "element", *t, "from_bridge", f"{{ {br} }}"),
        ("delete", "element", *t, "to_bridge", f"{{ {br} }}"),
        ("delete", "element", *t, "from_subnet", f"{{ {subnet} }}"),
        *(("delete", "chain", *t, f"{bridge}_{c}") for c in ("out", "in", "snat")),
        ("delete", "set", *t, nat_set(bridge)),
    ]
    for step in steps:
        with contextlib.suppress(ExecutorError):
            _nft(*step)
    try:
        text = _nft("-j", "list", "table", *t)
    except ExecutorError:
        return  # no table
    items = json.loads(text).get("nftables", [])
    if not any((i.get("map") or {}).get("elem") for i in items):
        _nft("delete", "table", *t)


def _forwarding_on() -> None:
    """NAT is routing: turn net.ipv4.ip_forward on if it is off (and leave it on)."""
    if _forwarding():
        return
    with open(IP_FORWARD, "w") as f:
        f.write("1")
    log.warning("turned on net.ipv4.ip_forward for NAT of bridge jobs (docs/executor.md)")


def _forwarding() -> bool:
    with open(IP_FORWARD) as f:
        return f.read().strip() != "0"


def _firewall(net: Network, address: str, lease_dir: str) -> None:
    """The table for the job's bridge, stale NAT addresses dropped, the job's address
    in the NAT set or out of it. Under the state dir's network lock. Without nft (or a
    kernel without nf_tables) only a NAT-off job on a host that forwards nothing runs:
    nothing it sends is routed beyond the node then."""
    try:
        if _nft_binary() is None:
            raise ExecutorError("nft is not installed (Debian package nftables)")
        ensure_table(net.bridge, net.subnet)
        _prune(net.bridge, lease_dir)
        if net.nat:
            _set_element("add", net.bridge, address)
            _forwarding_on()
        elif address in nat_elements(net.bridge):
            _set_element("delete", net.bridge, address)
    except ExecutorError as exc:
        if net.nat:
            raise ExecutorError(f"NAT for the job: {exc}") from None
        if _forwarding():
            raise ExecutorError(
                f"keep the NAT-off job in: {exc}; net.ipv4.ip_forward is on, and only "
                "mlq's nftables table keeps what it sends from being routed out"
            ) from None
        log.warning(
            "bridge %s: %s; NAT-off jobs stay in while the host forwards nothing",
            net.bridge,
            exc,
        )


def _revoke(jn: JobNetwork) -> None:
    """Take the run's address out of the NAT set unless another run leases it now.
    Under the state dir's network lock."""
    try:
        with open(jn.lease) as f:
            holder = f.read()
    except FileNotFoundError:
        holder = None
    if holder is not None and holder != jn.run:
        return  # the address went to another run, whose set-up decided
    bridge = jn.bridge_name()
    if jn.address in nat_elements(bridge):
        _set_element("delete", bridge, jn.address)


def setup(net: Network, run_key: str, state_dir: str) -> JobNetwork:
    """Make the job's namespace, veth pair and address; undone by ``teardown``.

    ``run_key`` (the run directory) names the interfaces; it is unique on the node.
    """
    from pyroute2 import IPRoute, NetNS, config, netns

    # NetNS works through a forked child, stopped with SIGTERM: with the caller's
    # Python handler still in place there, the child wrote the signal to the wakeup fd
    # it shares with the caller's event loop, and the daemon took it for its own
    # SIGTERM and shut down. The child dies of it instead.
    config.disable_mp_signal = True
    if problem := bridge_problem(net.bridge):
        raise ExecutorError(f'network.bridge: "{net.bridge}" {problem}')
    if problem := subnet_problem(net.subnet):
        raise ExecutorError(f'network.subnet: "{net.subnet}" {problem}')
    subnet = ipaddress.IPv4Network(net.subnet)
    gateway = str(next(subnet.hosts()))
    short = hashlib.sha256(run_key.encode()).hexdigest()[:10]
    name = f"mlq-{short}"
    host_if, peer_if = f"mlqv{short}", f"mlqp{short}"
    lease_dir = os.path.join(state_dir, "net", net.bridge)
    lock = os.path.join(state_dir, "net", ".lock")
    run = os.path.basename(run_key)
    with _locked(lock):
        address, lease = _lease(lease_dir, subnet, run)
    jn = JobNetwork(
        name,
        os.path.join(NETNS_DIR, name),
        host_if,
        address,
        subnet.prefixlen,
        gateway,
        lease,
        net.bridge,
        net.nat,
        run,
    )
    try:
        netns.create(name)
        with IPRoute() as ipr:
            with _locked(lock):
                br = _ensure_bridge(ipr, net, gateway, subnet.prefixlen)
                # before the job's link is up: its address goes out (NAT) or not at all
                _firewall(net, address, lease_dir)
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


def _delete_host_link(host_if: str) -> None:
    if not os.path.exists(f"/sys/class/net/{host_if}"):
        return
    from pyroute2 import IPRoute

    with IPRoute() as ipr:
        for idx in ipr.link_lookup(ifname=host_if):
            try:
                ipr.link("del", index=idx)
            except Exception:
                pass  # gone meanwhile


def release(jn: JobNetwork) -> None:
    """What remains of a run's network once it ended (the supervisor removed its
    namespace's name and its lease): its host-side veth and its NAT address. The
    kernel deletes the veth when the job's network namespace goes, but that happens
    later, on a kernel work queue (seconds on a loaded machine); a run that has ended
    should leave nothing."""
    _delete_host_link(jn.host_if)
    if jn.nat:
        with _locked(_lock_path(jn.lease)):
            try:
                _revoke(jn)
            except ExecutorError as exc:  # the next set-up on the bridge prunes it
                log.warning("release NAT address %s of run %s: %s", jn.address, jn.run, exc)


def teardown(jn: JobNetwork) -> None:
    """Remove what ``setup`` made (idempotent; the supervisor does the same at the end)."""
    if os.path.exists(jn.netns_path):
        try:
            from pyroute2 import netns

            netns.remove(jn.netns_name)
        except Exception:
            pass
    _delete_host_link(jn.host_if)
    with _locked(_lock_path(jn.lease)):
        try:
            _revoke(jn)
        except ExecutorError as exc:
            log.warning("release NAT address %s: %s", jn.address, exc)
        try:
            with open(jn.lease) as f:
                ours = f.read() in ("", jn.run) or not jn.run
        except FileNotFoundError:
            ours = False
        if ours:
            os.unlink(jn.lease)
