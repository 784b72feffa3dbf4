"""A fake executor for the control tests: the Executor protocol, in memory.

Every call is recorded; a test ends a run with the status it wants (``end``), says
what ``adopt`` finds after a "restart" (``found``), makes a start fail
(``fail_start``) or an image wait (``images``). No process, cgroup or file is made.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from mlq.executor.asuser import HostUser
from mlq.executor.cgroups import Stats
from mlq.executor.gpus import NodeGpus, from_declared
from mlq.executor.imageprep import READY, Verdict
from mlq.executor.interface import Found, News, Started
from mlq.executor.request import LaunchRequest
from mlq.executor.status import Outcome, Status


def status(outcome: str = "COMPLETED", code: int = 0, signal: str | None = None, oom: int = 0,
           error: str | None = None) -> Status:  # fmt: skip
    return Status(Outcome(outcome), code, signal, 1.0, 2**20, oom, error=error)


@dataclass
class FakeExecutor:
    gpus: NodeGpus = field(default_factory=lambda: from_declared([], "n1"))
    started: dict[str, LaunchRequest] = field(default_factory=dict)
    running: set[str] = field(default_factory=set)
    ended: dict[str, Status] = field(default_factory=dict)
    stops: list[tuple[str, bool]] = field(default_factory=list)
    discarded: list[str] = field(default_factory=list)
    found: dict[str, Found] = field(default_factory=dict)
    fail_start: dict[str, Exception] = field(default_factory=dict)  # job id prefix -> error
    images: dict[str, Verdict] = field(default_factory=dict)
    marks: dict[int, float] = field(default_factory=dict)

    # -- what tests do ------------------------------------------------------------------

    def end(self, run_id: str, st: Status) -> None:
        assert run_id in self.running, f"{run_id} is not running"
        self.running.discard(run_id)
        self.ended[run_id] = st

    # -- the protocol ---------------------------------------------------------------------

    def start(self, request: LaunchRequest) -> Started:
        job = request.run_id.split(".")[0]
        if job in self.fail_start:
            raise self.fail_start[job]
        self.started[request.run_id] = request
        self.running.add(request.run_id)
        return Started(request.run_id, f"/fake/cgroup/{request.run_id}")

    def stop(self, run_id: str, now: bool = False) -> None:
        self.stops.append((run_id, now))

    def poll(self, run_id: str) -> Status | None:
        return self.ended.pop(run_id, None)

    def adopt(self, run_id: str) -> Found:
        got = self.found.get(run_id)
        if got is not None and got.running:
            self.running.add(run_id)
        return got or Found(running=False, started=False)

    def discard(self, run_id: str) -> list[str]:
        self.discarded.append(run_id)
        return []

    def has_run(self, run_id: str) -> bool:
        return run_id in self.started or run_id in self.found

    def has_runs(self, run_ids: list[str]) -> set[str]:
        return {r for r in run_ids if self.has_run(r)}

    def news(self) -> News:
        return News()

    def locate(self, run_id: str) -> str:
        return f"fake:{run_id}"

    def stats(self, run_id: str) -> Stats | None:
        return Stats() if run_id in self.running else None

    def read_log(
        self, run_id: str, stream: str, offset: int, limit: int
    ) -> tuple[int, bytes, int | None]:
        return 0, b"", None

    def checkpoint_mark(self, key: str | int) -> float | None:
        return self.marks.get(int(key))

    def inventory(self, refresh: bool = False) -> NodeGpus:
        return self.gpus

    def image(self, image: str, user: HostUser) -> Verdict:
        return self.images.get(image, READY)

    def carve(self, gpu: int, profile: str, start: int) -> NodeGpus:
        raise NotImplementedError

    def destroy(self, gpu: int, start: int, uuid: str | None = None) -> NodeGpus:
        raise NotImplementedError

    def wait_fds(self) -> list[int]:
        return []
