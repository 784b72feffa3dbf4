"""What a node agent and the control plane say to each other (docs/cluster.md).

One call carries everything: the agent's ``POST /v1/agent/sync`` is its heartbeat
(its lease), its report (each run it holds: starting, running or ended, with the
allocation epoch it was ordered under, and each job's checkpoint mark), and its
question; the answer is the whole of what the node should run now (every order,
with its epoch and launch request, and whether to stop it) under the control
plane's term. The agent makes its node match the answer: it starts what it lacks,
stops what is marked, and kills anything it holds that is not in the answer. The
answer is held back (a long poll) until something changes for the node or the
heartbeat interval is up, so an order reaches a node within a round trip.
"""

from __future__ import annotations

from dataclasses import asdict, fields
from typing import Any, Literal

from mlq.executor.cgroups import Stats
from mlq.executor.status import Outcome, Status
from pydantic import BaseModel, ConfigDict, Field

RunState = Literal["starting", "running", "ended"]

# An agent stops its runs after this share of the lease without an answer; the
# control plane declares the node down only after the whole lease (docs/cluster.md).
SELF_FENCE = 0.5
# the control plane closes an agent's connection idle this long; an agent opens a new
# one instead of reusing one idle half of that (the server may be closing it)
KEEP_ALIVE_S = 30.0


class Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class RunReport(Strict):
    run_id: str = Field(max_length=64)
    epoch: int
    state: RunState
    cgroup: str = Field("", max_length=4096)
    status: dict[str, Any] | None = None  # how it ended (``status_json``)
    stats: dict[str, int] | None = None  # live figures of a running run


class Fetched(Strict):
    id: str = Field(max_length=64)
    error: str | None = None
    skipped: int = 0
    data: str = ""  # base64
    limit: int | None = None
    runs: list[str] = []  # for a "has" fetch: which of the asked runs it has
    # for "volumes": [key, modified, bytes or None] each; for "drop": [key, bytes] of
    # each removed (a volume it could not remove is logged on the node and left out)
    volumes: list[tuple[str, float, int | None]] = Field([], max_length=1_000_000)


class NodeFacts(Strict):
    """What a node has and where its agent keeps things (sent when it changes)."""

    cpus: int = Field(ge=0)  # millicores
    memory: int = Field(ge=0)  # bytes
    gpus: dict[str, Any]  # NodeGpus.to_json()
    state_dir: str = Field(max_length=4096)
    socket: str = Field(max_length=4096)
    topology: str = Field("", max_length=255)  # its switches, outermost first


class SyncRequest(Strict):
    node: str = Field(max_length=63)
    boot: str = Field(max_length=64)  # this agent process (a restart is a new boot)
    term: int = 0  # the highest control-plane term this agent has seen
    gen: int = -1  # the generation of the last answer it acted on
    facts: NodeFacts | None = None
    runs: list[RunReport] = Field(default_factory=list, max_length=100_000)
    marks: dict[str, float] = Field(default_factory=dict)  # job id -> checkpoint mark time
    fetched: list[Fetched] = Field(default_factory=list, max_length=1000)
    stray: int = 0  # live runs it holds that the last answer did not list (being killed)


class Order(Strict):
    job_id: int
    run_id: str
    epoch: int
    launch: str  # the LaunchRequest as JSON
    stop: Literal["", "graceful", "now"] = ""


class Fetch(Strict):
    id: str
    # log: a piece of a run's output; has: which runs it keeps; volumes: its checkpoint
    # volumes (with their sizes if ``sizes``); drop: remove the volumes ``keys``
    kind: Literal["log", "has", "volumes", "drop"]
    run_id: str = ""
    stream: str = "stdout"
    offset: int = 0
    limit: int = 0
    runs: list[str] = []
    sizes: bool = False
    keys: list[str] = Field([], max_length=100_000)


class SyncReply(Strict):
    term: int
    gen: int
    lease_s: float
    heartbeat_s: float
    state: str  # the node's state as the control plane sees it: "up" | "down"
    orders: list[Order]
    fetches: list[Fetch] = []
    want_facts: bool = False  # the control plane has not got this node's facts


def status_json(status: Status) -> dict[str, Any]:
    d = asdict(status)
    d["state"] = status.state.value
    return d


STATUS_FIELDS = {f.name for f in fields(Status)} - {"state", "stats"}
STATS_FIELDS = {f.name for f in fields(Stats)}


def stats_from_json(d: dict[str, Any]) -> Stats:
    """A node's figures; unknown keys are dropped (raises ValueError on a bad value)."""
    return Stats(**{k: int(v) for k, v in d.items() if k in STATS_FIELDS})


def status_from_json(d: dict[str, Any]) -> Status:
    """How a node says a run ended; raises ValueError (or KeyError) when it makes no sense."""
    rest = {k: v for k, v in d.items() if k in STATUS_FIELDS}
    status = Status(state=Outcome(d["state"]), stats=stats_from_json(d.get("stats") or {}), **rest)
    if not isinstance(status.exit_code, int) or not isinstance(status.duration_s, int | float):
        raise ValueError("exit_code and duration_s must be numbers")
    return status
