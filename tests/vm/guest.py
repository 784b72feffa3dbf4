"""The v2 guest run in the background of a test session, and the line it reports."""

from __future__ import annotations

import shutil
import tempfile
import threading
from pathlib import Path

import boot


class Guest:
    """One background run of the v2 suite: started once, awaited by the test."""

    def __init__(self, args: str) -> None:
        self.work = Path(tempfile.mkdtemp(prefix="mlq-vm-"))
        self.stop = threading.Event()
        self.outcome: tuple[boot.Result, list[boot.Result]] | None = None
        self.error: BaseException | None = None
        self._thread = threading.Thread(target=self._main, args=(args,), daemon=True)
        self._thread.start()

    def _main(self, args: str) -> None:
        try:
            self.outcome = boot.run_suite(self.work, args, stop=self.stop)
        except BaseException as e:  # reported by the test, not lost in a thread
            self.error = e

    def result(self, timeout: float) -> tuple[boot.Result, list[boot.Result]]:
        self._thread.join(timeout)
        if self._thread.is_alive():
            self.stop.set()
            self._thread.join(30)
        if self.error is not None:
            raise self.error
        assert self.outcome is not None, f"the cgroup v2 guest gave no result in {timeout:.0f}s"
        return self.outcome

    def close(self) -> None:
        self.stop.set()
        self._thread.join(30)
        shutil.rmtree(self.work, ignore_errors=True)


summary: list[str] = []  # what the session's terminal summary prints about the guest
