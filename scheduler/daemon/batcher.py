"""Group commit for submissions: those that arrive together share one transaction.

Twenty clients submitting at once each wait for their own answer; on the daemon's
one event loop their requests are parsed one after another, and each used to pay a
whole transaction. Here a submit hands its rows to the batcher and awaits; the
batcher writes every submission queued in the same turn of the event loop in one
transaction (``Store.add_job_groups``) and only then answers each of them, so an
acknowledged job is committed, as before. A group that fails is retried on its own,
so one bad submission never fails another's. Per-user caps count what is queued in
the batch too, so concurrent submits of one user cannot pass a cap together.
"""

from __future__ import annotations

import asyncio
import logging
from collections import Counter
from typing import Any

from mlq.scheduler.store import Store

log = logging.getLogger("mlq.api")


class SubmitBatcher:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: list[tuple[list[dict[str, Any]], bool, asyncio.Future]] = []
        self._scheduled = False
        # what the queued submissions add per user: (jobs, spec bytes)
        self.queued_jobs: Counter[str] = Counter()
        self.queued_bytes: Counter[str] = Counter()

    async def add(self, rows: list[dict[str, Any]], as_array: bool) -> None:
        """Store ``rows`` (their ``id`` and ``array_id`` are filled in) once committed."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._queue.append((rows, as_array, fut))
        user = rows[0]["user"]
        self.queued_jobs[user] += len(rows)
        self.queued_bytes[user] += sum(r["spec_bytes"] for r in rows)
        if not self._scheduled:
            self._scheduled = True
            loop.call_soon(self._flush)
        await fut

    def _flush(self) -> None:
        batch, self._queue = self._queue, []
        self._scheduled = False
        self.queued_jobs.clear()
        self.queued_bytes.clear()
        try:
            self.store.add_job_groups([(rows, arr) for rows, arr, _ in batch])
        except Exception:
            if len(batch) == 1:
                batch[0][2].set_exception(_current())
                return
            for rows, arr, fut in batch:  # isolate the one that fails
                try:
                    self.store.add_job_groups([(rows, arr)])
                except Exception as exc:
                    fut.set_exception(exc)
                else:
                    fut.set_result(None)
            return
        for _, _, fut in batch:
            fut.set_result(None)


def _current() -> BaseException:
    import sys

    exc = sys.exc_info()[1]
    assert exc is not None
    return exc
