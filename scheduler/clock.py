"""The time the control loop reads: the wall clock for records, a monotonic one for gaps.

One seam so that tests freeze time (``FrozenClock``) and the loop's decisions are
replayable: nothing in the control plane calls ``time.time()`` directly.
"""

from __future__ import annotations

import time
from typing import Protocol


class Clock(Protocol):
    def time(self) -> float:
        """Seconds since the epoch (what records and the policy's ``now`` use)."""
        ...

    def monotonic(self) -> float:
        """Seconds on a clock that never goes back (gaps between passes)."""
        ...


class SystemClock:
    def time(self) -> float:
        return time.time()

    def monotonic(self) -> float:
        return time.monotonic()


class FrozenClock:
    """A clock that moves only when told to (``advance``)."""

    def __init__(self, now: float = 1_700_000_000.0) -> None:
        self.now = now
        self._mono = 0.0

    def time(self) -> float:
        return self.now

    def monotonic(self) -> float:
        return self._mono

    def advance(self, seconds: float) -> None:
        self.now += seconds
        self._mono += seconds
