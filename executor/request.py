"""The launch request: what one job run needs, modelled on the OCI runtime config.

A reader who knows runc's ``config.json`` finds the same shape: ``process``
(args, env, cwd, user, capabilities, no_new_privs), ``root``, ``hostname``,
``mounts``, ``linux.resources``, ``linux.namespaces`` with uid/gid maps and
``linux.devices``. mlq adds what a batch runtime needs on top: the checkpoint
volume, the network mode, the stop signal, grace period and time limit, and the
state directory where logs and status land. Plain dataclasses, JSON both ways:
the request is stored next to the run as ``request.json``. The executor knows
nothing of teams, quotas or priorities; scheduler/launch.py builds requests.
"""

from __future__ import annotations

import dataclasses
import ipaddress
import json
import os
import re
import signal
import types
import typing
from dataclasses import dataclass, field
from typing import Any, Literal

from mlq.executor.asuser import HostUser

DEFAULT_PATH = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"
# where every job finds mlq's own small `mlq` (checkpoint-done), whatever its image:
# bound read-only by plan.mounts and appended to the job's PATH, last, so an mlq
# the image has (or the host's, on image: host) comes first
JOB_TOOL_DIR = "/.mlq/bin"
JOB_TOOL = f"{JOB_TOOL_DIR}/mlq"
# what every job has of its own, whatever its image (plan.mounts): a host directory
# under one of these is not what the job sees there
JOB_PRIVATE_DIRS = ("/tmp", "/dev", "/proc", "/sys")
CPU_PERIOD_US = 100_000  # cpu.max's period: a job's CPUs are its quota per period
MEMORY_HIGH_PERCENT = 87  # memory.high when only memory.max is given (throttle before OOM)


def memory_high_of(memory_max: int) -> int:
    return memory_max * MEMORY_HIGH_PERCENT // 100


@dataclass
class User:
    """``process.user``: the ids the command runs as (in the user namespace, if any)."""

    uid: int = 0
    gid: int = 0
    additional_gids: list[int] = field(default_factory=list)


@dataclass
class Process:
    """``process``: the command and how it runs."""

    args: list[str]
    env: dict[str, str] = field(default_factory=dict)
    cwd: str = "/"
    user: User = field(default_factory=User)
    # Capabilities KEPT (names like CAP_NET_BIND_SERVICE); every other one is dropped.
    capabilities: list[str] = field(default_factory=list)
    no_new_privs: bool = True
    seccomp: bool = True


@dataclass
class Root:
    """``root``: the image and whether the job may write its root.

    ``image`` is ``host`` (the host's ``/`` as the one lower layer), a rootfs
    directory, a rootfs tarball (``docker export``), or an OCI image layout
    directory (``skopeo copy ... oci:DIR``).
    """

    image: str = "host"
    readonly: bool = False


@dataclass
class Mount:
    """One entry of ``mounts``: a bind mount of a host path into the job."""

    source: str
    destination: str
    readonly: bool = False


@dataclass
class Checkpoint:
    """The per-job checkpoint volume: a host directory that outlives the job's runs."""

    source: str
    destination: str = "/checkpoints"


@dataclass
class Resources:
    """``linux.resources`` in base units; ``None`` leaves the kernel's default (no limit)."""

    memory_max: int | None = None
    memory_high: int | None = None  # None with memory_max set: MEMORY_HIGH_PERCENT of it
    memory_swap_max: int | None = 0  # swap on top of memory_max; 0 = none
    cpu_quota_us: int | None = None
    cpu_period_us: int = CPU_PERIOD_US
    pids_max: int | None = None
    io_weight: int | None = None  # 1..10000, v2 scale

    def effective_memory_high(self) -> int | None:
        if self.memory_high is not None:
            return self.memory_high
        return memory_high_of(self.memory_max) if self.memory_max else None


@dataclass
class Device:
    """``linux.devices``: a host device node and where the job sees it.

    ``path`` must exist on the host; ``container_path`` defaults to ``path`` when
    that is under /dev, else ``/dev/<name>`` (``/dev/nvidia-caps/<name>`` for MIG
    capability nodes), so tests can point at nodes made with ``mknod`` in a temp dir.
    """

    path: str
    container_path: str | None = None

    def target(self) -> str:
        if self.container_path:
            return self.container_path
        if self.path.startswith("/dev/"):
            return self.path
        name = os.path.basename(self.path)
        if os.path.basename(os.path.dirname(self.path)) == "nvidia-caps":
            return f"/dev/nvidia-caps/{name}"
        return f"/dev/{name}"


@dataclass
class IdMap:
    """One line of ``uid_map``/``gid_map``."""

    container_id: int
    host_id: int
    size: int


@dataclass
class Namespaces:
    """PID, mount, UTS, IPC, network and cgroup are always new; the user one on request."""

    user: bool = False
    uid_mappings: list[IdMap] = field(default_factory=list)
    gid_mappings: list[IdMap] = field(default_factory=list)


# an interface name (IFNAMSIZ - 1 bytes) that is also an nftables name
BRIDGE_RE = re.compile(r"^[A-Za-z][A-Za-z0-9_.-]{0,14}$")
MAX_PREFIXLEN = 29  # the bridge's own address and room for five jobs


def bridge_problem(name: str) -> str | None:
    """Why ``name`` cannot be mlq's bridge ("is ..."; the caller shows the name), or None."""
    if BRIDGE_RE.match(name):
        return None
    if len(name) > 15:
        return "is longer than 15 characters, the most an interface name has"
    return "is not an interface name: a letter, then letters, digits, _ . or -"


def subnet_problem(text: str) -> str | None:
    """Why ``text`` cannot be a bridge's subnet ("is ..."), or None."""
    try:
        net = ipaddress.ip_network(text)
    except ValueError as exc:
        why = str(exc).replace(f"{text} ", "").replace(f"'{text}' ", "")
        return f"is not an IPv4 network in CIDR form like 10.88.0.0/16 ({why})"
    if net.version != 4:
        return "is not an IPv4 network; bridge jobs get IPv4 addresses"
    if net.prefixlen > MAX_PREFIXLEN:
        return (
            f"is too small: /{net.prefixlen} leaves no room for the bridge and its jobs; "
            f"use a /{MAX_PREFIXLEN} or larger"
        )
    return None


@dataclass
class Network:
    """``none``: own namespace, loopback only. ``bridge``: a veth on ``bridge`` in
    ``subnet``; with ``nat`` the job reaches beyond the node, masqueraded as the host,
    and without it nothing beyond the node (docs/executor.md "Network"). ``host``: the
    node's own network namespace (the daemon allows it only where an admin granted it)."""

    mode: Literal["none", "bridge", "host"] = "none"
    bridge: str = "mlq0"
    subnet: str = "10.88.0.0/16"
    nat: bool = True


@dataclass
class HostPaths:
    """Where the host paths a job's user named (volume sources, a rootfs directory)
    may lead once resolved as that user. ``allowed``: prefixes volume sources must
    be under (empty: anywhere the user reaches); ``denied``: prefixes no user-named
    path may reach, whoever asks (the executor adds /proc, /sys, /dev and its own
    state dir)."""

    allowed: list[str] = field(default_factory=list)
    denied: list[str] = field(default_factory=list)


@dataclass
class Alive:
    """A dead man's switch: the run is killed once ``path`` was not touched for
    ``stale_s`` seconds (a node agent touches it while its control plane answers;
    docs/cluster.md "Fencing"). The supervisor checks it, so it holds with no agent."""

    path: str
    stale_s: float


@dataclass
class LaunchRequest:
    """One run of one job on this node."""

    run_id: str
    state_dir: str
    process: Process
    root: Root = field(default_factory=Root)
    hostname: str = "mlq"
    mounts: list[Mount] = field(default_factory=list)
    host_paths: HostPaths = field(default_factory=HostPaths)
    # whom the job's image and volume paths are opened as, on the host: its submitter
    # (None: the job's own user, mapped through its user namespace)
    submitter: User | None = None
    checkpoint: Checkpoint | None = None
    shm_size: int = 64 * 2**20
    resources: Resources = field(default_factory=Resources)
    devices: list[Device] = field(default_factory=list)
    namespaces: Namespaces = field(default_factory=Namespaces)
    network: Network = field(default_factory=Network)
    stop_signal: str = "SIGTERM"
    grace_period_s: float = 30.0
    time_limit_s: float | None = None
    # the newest bytes kept of each of stdout and stderr (None: all of it)
    log_limit: int | None = None
    alive: Alive | None = None  # set by a node agent (its heartbeat file)

    @property
    def run_dir(self) -> str:
        from mlq.executor.rundir import run_dir

        return str(run_dir(self.state_dir, self.run_id))

    def host_ids(self) -> tuple[int, int]:
        """The job user's uid and gid as the host sees them (through the user namespace)."""
        uid, gid = self.process.user.uid, self.process.user.gid
        if self.namespaces.user:
            uid = _map(self.namespaces.uid_mappings, uid)
            gid = _map(self.namespaces.gid_mappings, gid)
        return uid, gid

    def host_user(self) -> HostUser:
        """Whose credentials the job's user-named paths are opened with on the host."""
        if self.submitter is not None:
            u = self.submitter
            return HostUser(u.uid, u.gid, tuple(u.additional_gids))
        uid, gid = self.host_ids()
        return HostUser(uid, gid, tuple(self.process.user.additional_gids))

    def stop_signal_number(self) -> int:
        return int(getattr(signal, self.stop_signal))

    def env_list(self) -> list[str]:
        """The job's environment; PATH defaults to the usual one, like Docker's, and
        ends with the job tool's directory, whoever set it (the job file too)."""
        env = dict(self.process.env)
        env["PATH"] = with_job_tool(env.get("PATH", DEFAULT_PATH))
        env.setdefault("HOSTNAME", self.hostname)
        return [f"{k}={v}" for k, v in env.items()]

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def to_json(self) -> str:
        return json.dumps(self.to_dict())

    @classmethod
    def from_dict(cls, data: dict[str, Any]) -> LaunchRequest:
        return _build(cls, data)

    @classmethod
    def from_json(cls, text: str) -> LaunchRequest:
        return cls.from_dict(json.loads(text))


def with_job_tool(path: str) -> str:
    """PATH with ``JOB_TOOL_DIR`` last (once; an empty PATH becomes just that)."""
    dirs = [d for d in path.split(":") if d != JOB_TOOL_DIR]
    return ":".join([*dirs, JOB_TOOL_DIR]) if path else JOB_TOOL_DIR


def _map(maps: list[IdMap], ident: int) -> int:
    for m in maps:
        if m.container_id <= ident < m.container_id + m.size:
            return m.host_id + ident - m.container_id
    return ident


def _build(tp: Any, data: Any) -> Any:
    """Turn JSON data back into the (nested) dataclass ``tp``."""
    origin = typing.get_origin(tp)
    if origin in (typing.Union, types.UnionType):
        args = [a for a in typing.get_args(tp) if a is not type(None)]
        return None if data is None else _build(args[0], data)
    if origin is list:
        (item,) = typing.get_args(tp)
        return [_build(item, x) for x in data]
    if origin is dict:
        return dict(data)
    if dataclasses.is_dataclass(tp):
        if tp is Device and isinstance(data, str):
            return Device(path=data)
        hints = typing.get_type_hints(tp)
        known = {f.name for f in dataclasses.fields(tp)}
        unknown = set(data) - known
        if unknown:
            raise ValueError(f"{tp.__name__}: unknown fields {', '.join(sorted(unknown))}")
        return tp(**{k: _build(hints[k], v) for k, v in data.items()})
    return data
