"""The cluster config (``configs/cluster.yaml``): this node, priority classes with
their defaults, teams and quotas.

The daemon loads it into the store at first start; from then on teams, quotas
and classes live in the store and change through the CLI. ``mlq plan`` and the
simulator reuse the same models for their inputs.
"""

from __future__ import annotations

import os
import re
import socket
from pathlib import Path
from typing import Annotated, Any, Literal

from mlq.executor.request import bridge_problem, subnet_problem
from mlq.executor.units import parse_cpus, parse_size
from mlq.scheduler.checkpoints import DEFAULT_RETENTION_S
from mlq.scheduler.errors import InvalidInput
from mlq.scheduler.grants import (
    DEFAULT_VOLUME_PATHS,
    GRANTED_NETWORKS,
    SUBJECT_HELP,
    SUBJECT_RE,
    Grant,
)
from mlq.scheduler.spec import (
    CAPABILITIES,
    AbsPath,
    Bytes,
    Millicores,
    Seconds,
    Strict,
    load_yaml,
    validation_problems,
)
from mlq.scheduler.webhooks import Rules, parse_network
from pydantic import BeforeValidator, Field, ValidationError, model_validator

RESOURCE_RE = re.compile(
    r"^(gpu|cpu|memory|gpu-equivalent|gpu:[A-Za-z0-9._-]+|mig:\d+g\.\d+gb(\+me)?)$"
)
RESOURCE_HELP = "use gpu, gpu:<model>, mig:<profile>, cpu, memory or gpu-equivalent"


def parse_quota_value(resource: str, value: object) -> float:
    """A quota amount in base units: GPUs/slices as counts, cpu in millicores,
    memory in bytes, gpu-equivalent in GPUs (fractions allowed)."""
    if not RESOURCE_RE.match(resource):
        raise ValueError(f'"{resource}" is not a quota resource; {RESOURCE_HELP}')
    try:
        if resource == "cpu":
            return float(parse_cpus(value))
        if resource == "memory":
            return float(parse_size(value))
    except ValueError as exc:
        shown = f'"{value}"' if isinstance(value, str) else repr(value)
        raise ValueError(f"{shown} {exc}") from None
    if isinstance(value, bool) or not isinstance(value, int | float | str):
        raise ValueError(f"{value!r} is not a count")
    try:
        n = float(value)
    except ValueError:
        raise ValueError(f'"{value}" is not a count') from None
    if n < 0:
        raise ValueError(f"{value!r} must not be negative")
    if resource != "gpu-equivalent" and n != int(n):
        raise ValueError(f"{value!r} is not a whole number of {resource}")
    return n


def _quota_map(v: object) -> object:
    if v is None:
        return {}
    if not isinstance(v, dict):
        raise ValueError("is not a mapping like {gpu: 4, cpu: 64, memory: 512Gi}")
    return {str(k): parse_quota_value(str(k), val) for k, val in v.items()}


QuotaMap = Annotated[dict[str, float], BeforeValidator(_quota_map)]


class ClassDefaults(Strict):
    cpus: Millicores = 1000  # default values are not validated: base units
    memory: Bytes = 4 * 2**30
    time_limit: Seconds | None = None


DEFAULT_LOG_LIMIT = 100 * 2**20  # bytes kept of each output stream of a run


class PriorityClass(Strict):
    name: str
    value: int = Field(ge=-(10**9), le=10**9)
    preempts: list[str] = []
    preemptible: bool = True
    min_run_time: Seconds = 0
    # the order of the class's queue inside each team: docs/scheduling.md "Order"
    order: Literal["fifo", "short-first"] = "short-first"
    defaults: ClassDefaults = ClassDefaults()
    # the newest bytes of each of a run's stdout and stderr that are kept (older
    # output is dropped, and mlq logs says how much)
    log_limit: Bytes = DEFAULT_LOG_LIMIT
    # network: bridge jobs of the class reach beyond the node, masqueraded as it;
    # false: they reach the node and each other only (docs/executor.md "Network")
    nat: bool = True


DEFAULT_CLASSES = (
    PriorityClass(
        name="inference",
        value=1000,
        preempts=["training", "batch"],
        preemptible=False,
        defaults=ClassDefaults(cpus=4, memory=16 * 2**30),
    ),
    PriorityClass(
        name="training",
        value=500,
        preempts=["batch"],
        defaults=ClassDefaults(cpus=4, memory=16 * 2**30, time_limit=7 * 86400),
    ),
    PriorityClass(
        name="batch",
        value=100,
        preempts=[],
        defaults=ClassDefaults(cpus=1, memory=4 * 2**30, time_limit=86400),
    ),
)


class MigSlice(Strict):
    """A MIG slice carved on a GPU: its profile and its start slot."""

    profile: str
    start: int = Field(ge=0, le=7)


class GpuDecl(Strict):
    """A GPU as declared in a config or scenario (discovery fills the same shape)."""

    index: int = Field(ge=0)
    model: str
    mig: list[MigSlice] | None = None  # None: not in MIG mode


def _bridge_name(v: object) -> object:
    if isinstance(v, str) and (problem := bridge_problem(v)):
        raise ValueError(problem)
    return v


def _bridge_subnet(v: object) -> object:
    if isinstance(v, str) and (problem := subnet_problem(v)):
        raise ValueError(problem)
    return v


class BridgeConfig(Strict):
    """Where the node's ``network: bridge`` jobs get their veth: the bridge (made if
    missing, kept like docker0) and the IPv4 subnet its jobs' addresses come from (the
    first address is the bridge's own)."""

    name: Annotated[str, BeforeValidator(_bridge_name)] = "mlq0"
    subnet: Annotated[str, BeforeValidator(_bridge_subnet)] = "10.88.0.0/16"


class NodeConfig(Strict):
    name: str = Field(default_factory=lambda: socket.gethostname().split(".")[0])
    cpus: Millicores | Literal["auto"] = "auto"
    memory: Bytes | Literal["auto"] = "auto"
    gpus: Literal["discover", "declared"] = "discover"
    declared_gpus: list[GpuDecl] = []
    # whether mlq may carve (and later destroy) MIG slices on this node's GPUs in MIG
    # mode; false: jobs get only the slices already carved (docs/gpus.md)
    mig_carve: bool = True
    # false: the node takes no new jobs (cordoned, as kubectl cordon); running jobs
    # stay, and a job it could hold is still accepted and waits
    schedulable: bool = True
    # where the node sits in the network: its switches, outermost first, such as
    # spine1/rack3; a multi-node job's parts go under the lowest common switch
    topology: str = Field("", max_length=255, pattern=r"^[A-Za-z0-9_.:/-]*$")
    # the bridge of network: bridge jobs, and their subnet
    bridge: BridgeConfig = BridgeConfig()

    @model_validator(mode="after")
    def _declared(self) -> NodeConfig:
        if self.declared_gpus and self.gpus != "declared":
            raise ValueError(
                "declared_gpus is set but gpus is not 'declared'; set gpus: declared to use them "
                "(mlq never mixes declared and discovered GPUs)"
            )
        return self

    def cpu_millicores(self) -> int:
        return (os.cpu_count() or 1) * 1000 if self.cpus == "auto" else int(self.cpus)

    def memory_bytes(self) -> int:
        if self.memory != "auto":
            return int(self.memory)
        return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")


class PerUser(Strict):
    """A team's limits on each of its users (Slurm's MaxJobsPerUser and
    MaxTRESPerUser=gres/gpu): running jobs (a multi-node job counts once) and GPUs held
    (whole GPUs, and MIG slices as their share of a GPU). None: no limit."""

    jobs: int | None = Field(None, ge=1, le=10**9)
    gpus: float | None = Field(None, gt=0, le=10**9)

    def as_map(self) -> dict[str, float]:
        return {k: float(v) for k, v in self.model_dump().items() if v is not None}


class TeamConfig(Strict):
    name: str = Field(pattern=r"^[a-z0-9][a-z0-9_-]{0,62}$")
    members: list[str] = []  # Unix users, or groups written as "@group"
    admins: list[str] = []
    guarantee: QuotaMap = {}
    limit: QuotaMap = {}
    # what each user of the team may hold at once: running jobs, GPUs (gpu-equivalents)
    per_user: PerUser = PerUser()

    @model_validator(mode="after")
    def _limits(self) -> TeamConfig:
        for key, g in self.guarantee.items():
            if key in self.limit and self.limit[key] < g:
                raise ValueError(
                    f"limit.{key} is below guarantee.{key}; a limit must be at least the guarantee"
                )
        return self


class GrantConfig(Strict):
    """``grants:`` entries: what an mlq admin allows beyond the defaults (docs/security.md)."""

    to: str
    capabilities: list[Literal[CAPABILITIES]] = []  # type: ignore[valid-type]
    volume_paths: list[AbsPath] = []
    devices: list[AbsPath] = []
    networks: list[Literal[GRANTED_NETWORKS]] = []  # type: ignore[valid-type]

    @model_validator(mode="after")
    def _subject(self) -> GrantConfig:
        if not SUBJECT_RE.match(self.to):
            raise ValueError(f'to: "{self.to}" is not a grant subject; {SUBJECT_HELP}')
        return self

    def grant(self) -> Grant:
        return Grant(
            self.to,
            tuple(dict.fromkeys(self.capabilities)),
            tuple(dict.fromkeys(os.path.normpath(p) for p in self.volume_paths)),
            tuple(dict.fromkeys(self.devices)),
            tuple(dict.fromkeys(self.networks)),
        )


DEFAULT_GRANTS = [GrantConfig(to="*", volume_paths=list(DEFAULT_VOLUME_PATHS))]


class UserCaps(Strict):
    """What one user may have queued at once (Slurm's MaxSubmitJobs): active jobs
    (pending, starting, running, stopping) and the bytes of their stored job files."""

    max_active_jobs: int = Field(10_000, ge=1, le=10**9)
    max_spec_bytes: Bytes = 256 * 2**20


def _network(v: object) -> object:
    if isinstance(v, str):
        try:
            parse_network(v)
        except ValueError:
            raise ValueError(
                "is not a network; use an address or CIDR such as 10.0.0.0/8"
            ) from None
    return v


class NotifyConfig(Strict):
    """Where and how job notifications are sent (docs/notifications.md)."""

    # when any: the only hosts a webhook may name ("*.example.com" for subdomains)
    hosts: list[Annotated[str, Field(min_length=1, max_length=253)]] = Field([], max_length=1000)
    # addresses outside the public internet webhooks may reach (none by default)
    networks: list[Annotated[str, BeforeValidator(_network)]] = Field([], max_length=1000)
    timeout: Seconds = Field(5, ge=1, le=60)  # one attempt, connect to answer
    attempts: int = Field(3, ge=1, le=10)
    queue: int = Field(1000, ge=1, le=100_000)  # events waiting; more are dropped
    senders: int = Field(4, ge=1, le=64)  # threads sending at once

    def rules(self) -> Rules:
        return Rules(tuple(self.hosts), tuple(parse_network(n) for n in self.networks))


class ClusterConfig(Strict):
    node: NodeConfig = NodeConfig()
    admin_group: str = "mlq-admin"
    priority_classes: list[PriorityClass] = list(DEFAULT_CLASSES)
    teams: list[TeamConfig] = []
    grants: list[GrantConfig] = DEFAULT_GRANTS
    user_caps: UserCaps = UserCaps()
    # how long a finished job's checkpoint volume is kept after the job ended, then
    # removed by the daemon's sweep (null: kept for ever); a job that can still run
    # keeps its volume whatever this says (scheduler/checkpoints.py, docs/daemon.md)
    checkpoint_retention: Seconds | None = DEFAULT_RETENTION_S
    notifications: NotifyConfig = NotifyConfig()

    @model_validator(mode="after")
    def _refs(self) -> ClusterConfig:
        names = [c.name for c in self.priority_classes]
        if len(set(names)) != len(names):
            raise ValueError("priority_classes: two classes share a name")
        for c in self.priority_classes:
            for p in c.preempts:
                if p not in names:
                    raise ValueError(
                        f'priority_classes.{c.name}.preempts: "{p}" is not a class; known: {", ".join(names)}'
                    )
        teams = [t.name for t in self.teams]
        if len(set(teams)) != len(teams):
            raise ValueError("teams: two teams share a name")
        subjects = [g.to for g in self.grants]
        if len(set(subjects)) != len(subjects):
            raise ValueError("grants: two entries grant to the same subject; merge them")
        for g in self.grants:
            kind, _, name = g.to.partition(":")
            if kind == "team" and name not in teams:
                raise ValueError(f'grants: "{g.to}" names no team; known: {", ".join(teams)}')
            if kind == "class" and name not in names:
                raise ValueError(f'grants: "{g.to}" names no class; known: {", ".join(names)}')
        return self

    def class_named(self, name: str) -> PriorityClass | None:
        return next((c for c in self.priority_classes if c.name == name), None)


def parse_cluster(data: Any, source: str | None = None) -> ClusterConfig:
    try:
        return ClusterConfig.model_validate(data or {})
    except ValidationError as exc:
        raise InvalidInput(validation_problems(exc, ClusterConfig), source) from None


def load_cluster(path: str | Path) -> ClusterConfig:
    return parse_cluster(load_yaml(path), str(path))
