"""A node that an agent serves, as the control loop's ``Executor`` for it.

The loop drives every node the same way; for a remote one the orders are rows of
the store (a STARTING/RUNNING/STOPPING job on this node, its epoch and launch
request, ``stop_now``), which the agent reads on its next sync (``fleet.py``). So
``start`` and ``stop`` only wake the node's waiting sync; ``poll``, ``stats`` and
``checkpoint_mark`` answer from what the agent last reported; ``read_log`` asks the
agent through the sync channel and waits for its answer. Nothing here talks to the
network: the agent calls in (pull), which is why a node behind a NAT or a slow link
still works, and why a partitioned node simply stops renewing its lease.
"""

from __future__ import annotations

import base64
import contextlib
import itertools
import os
import threading
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from mlq.executor.asuser import HostUser
from mlq.executor.cgroups import Stats
from mlq.executor.errors import ExecutorError
from mlq.executor.gpus import MigChangeFailed, NodeGpus
from mlq.executor.imageprep import Verdict
from mlq.executor.interface import Executor, Found, News, Started
from mlq.executor.request import LaunchRequest
from mlq.executor.rundir import VolumeInfo
from mlq.executor.status import Status
from mlq.scheduler import wire

FETCH_TIMEOUT_S = 10.0
_ids = itertools.count(1)


class NodeUnreachable(ExecutorError):
    """The node's agent did not answer in time (it is down, partitioned or slow)."""


@dataclass
class Pending:
    fetch: wire.Fetch
    done: threading.Event = field(default_factory=threading.Event)
    answer: wire.Fetched | None = None


class RemoteNode:
    """The ``Executor`` of one agent's node (see the module doc)."""

    def __init__(self, name: str, gpus: NodeGpus, wake: Callable[[], None]) -> None:
        self.name = name
        self.gpus = gpus
        self._wake_node = wake  # the node's waiting sync answers now
        self._lock = threading.Lock()
        self.ended: dict[str, Status] = {}  # run id -> how it ended (reported, not yet recorded)
        self.live: dict[str, dict[str, int]] = {}  # run id -> its last live figures
        self.marks: dict[int, float] = {}  # job id -> its checkpoint mark's time
        self.fetches: dict[str, Pending] = {}
        self._r, self._w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)

    # -- fed by the node's syncs (the API's thread) ----------------------------------

    def reported(self, ended: dict[str, Status], live: dict[str, dict[str, int]]) -> None:
        with self._lock:
            new = set(ended) - set(self.ended)
            self.ended.update(ended)
            self.live = live
        if new:
            self.notify()

    def notify(self) -> None:
        """Wake the loop (a run ended, or one began)."""
        with contextlib.suppress(BlockingIOError):
            os.write(self._w, b"x")

    def drain(self) -> None:
        with contextlib.suppress(BlockingIOError):
            while os.read(self._r, 4096):
                pass

    def take_fetches(self) -> list[wire.Fetch]:
        with self._lock:
            return [p.fetch for p in self.fetches.values() if p.answer is None]

    def answer(self, fetched: list[wire.Fetched]) -> None:
        with self._lock:
            for f in fetched:
                p = self.fetches.get(f.id)
                if p is not None:
                    p.answer = f
                    p.done.set()

    def _ask(self, fetch: wire.Fetch) -> wire.Fetched:
        p = Pending(fetch)
        with self._lock:
            self.fetches[fetch.id] = p
        self._wake_node()
        try:
            if not p.done.wait(FETCH_TIMEOUT_S) or p.answer is None:
                raise NodeUnreachable(
                    f"node {self.name} did not answer within {FETCH_TIMEOUT_S:.0f}s; see mlq nodes"
                )
            if p.answer.error:
                raise ExecutorError(f"node {self.name}: {p.answer.error}")
            return p.answer
        finally:
            with self._lock:
                self.fetches.pop(fetch.id, None)

    # -- the Executor protocol (the loop's thread) ---------------------------------

    def start(self, request: LaunchRequest) -> Started:
        # the order is the job's row, written with STARTING: tell the node
        self._wake_node()
        return Started(request.run_id, "", confirmed=False)

    def stop(self, run_id: str, now: bool = False) -> None:
        # STOPPING (and stop_now) is in the job's row already
        self._wake_node()

    def poll(self, run_id: str) -> Status | None:
        with self._lock:
            return self.ended.get(run_id)

    def adopt(self, run_id: str) -> Found:
        # after a takeover: the order is in the store, the agent re-reports the run
        return Found(running=True, started=True, stop_asked=True, confirmed=False)

    def discard(self, run_id: str) -> list[str]:
        with self._lock:
            self.ended.pop(run_id, None)
            self.live.pop(run_id, None)
        return []

    def forget(self, run_id: str) -> None:
        """The run's end is recorded: nothing more to keep of it."""
        self.discard(run_id)

    def has_run(self, run_id: str) -> bool:
        with self._lock:
            if run_id in self.ended or run_id in self.live:
                return True
        return False

    def has_runs(self, run_ids: list[str]) -> set[str]:
        """Which of these runs the node keeps output of (asked of the agent)."""
        got = self._ask(wire.Fetch(id=f"f{next(_ids)}", kind="has", runs=run_ids))
        return set(got.runs)

    def news(self) -> News:
        with self._lock:
            return News(ended=bool(self.ended), marks=bool(self.marks))

    def locate(self, run_id: str) -> str:
        return f"{self.name}:{run_id}"

    def stats(self, run_id: str) -> Stats | None:
        with self._lock:
            figures = self.live.get(run_id)
        return Stats(**figures) if figures else None

    def read_log(
        self, run_id: str, stream: str, offset: int, limit: int
    ) -> tuple[int, bytes, int | None]:
        got = self._ask(
            wire.Fetch(
                id=f"f{next(_ids)}",
                kind="log",
                run_id=run_id,
                stream=stream,
                offset=offset,
                limit=limit,
            )
        )
        return got.skipped, base64.b64decode(got.data), got.limit

    @property
    def volumes(self) -> RemoteVolumes:
        """The node's checkpoint volumes, asked of its agent (rundir.LocalVolumes's calls)."""
        return RemoteVolumes(self)

    def checkpoint_mark(self, key: str | int) -> float | None:
        with self._lock:
            return self.marks.get(int(key))

    def inventory(self, refresh: bool = False) -> NodeGpus:
        return self.gpus

    def image(self, image: str, user: HostUser) -> Verdict:
        return Verdict(ready=True)  # the agent prepares it before it launches

    def carve(self, gpu: int, profile: str, start: int) -> NodeGpus:
        raise MigChangeFailed(
            f"node {self.name}: mlq does not carve MIG slices on agents' nodes yet", ""
        )

    def destroy(self, gpu: int, start: int, uuid: str | None = None) -> NodeGpus:
        raise MigChangeFailed(f"node {self.name}: mlq carves nothing on agents' nodes", "")

    def wait_fds(self) -> list[int]:
        return [self._r]

    def close(self) -> None:
        for fd in (self._r, self._w):
            with contextlib.suppress(OSError):
                os.close(fd)


if TYPE_CHECKING:  # a RemoteNode is an Executor (mypy checks it here)
    _is_executor: type[Executor] = RemoteNode


class RemoteVolumes:
    """An agent's checkpoint volumes: ``list`` and ``remove`` as ``rundir.LocalVolumes``,
    each a fetch the agent answers on its next sync (NodeUnreachable when it does not)."""

    def __init__(self, node: RemoteNode) -> None:
        self.node = node

    def list(self, sizes: bool = False) -> list[VolumeInfo]:
        got = self.node._ask(wire.Fetch(id=f"f{next(_ids)}", kind="volumes", sizes=sizes))
        return [VolumeInfo(k, m, b) for k, m, b in got.volumes]

    def remove(self, key: str) -> int:
        got = self.node._ask(wire.Fetch(id=f"f{next(_ids)}", kind="drop", keys=[key]))
        for k, _, size in got.volumes:
            if k == key:
                return size or 0
        raise OSError(
            f"node {self.node.name} could not remove checkpoint volume {key} (its log says why)"
        )
