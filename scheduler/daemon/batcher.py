"""Group commit for submissions: those that arrive during a write share the next one.

Twenty clients submitting at once each wait for their own answer. A submit hands
its rows to the batcher and awaits; the batcher writes on a worker thread, one
transaction at a time (``Store.add_job_groups``), and everything queued while a
write is in flight goes into the next one, so the event loop goes on parsing
requests while the database works and the rate grows with the number of clients.
Each submission is answered only once its transaction committed, so an
acknowledged job is committed, as before. A group that fails is retried on its
own, so one bad submission never fails another's. Per-user caps count what is
queued or being written too, so concurrent submits of one user cannot pass a cap
together: ``user_load`` reads, under the lock each commit holds, the user's committed
load and what of theirs was committed by this batcher, so a batch that commits while
the load is read is counted exactly once (in the store, or as still queued).
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections import Counter
from collections.abc import AsyncIterator
from typing import Any

from mlq.scheduler.store import Store

log = logging.getLogger("mlq.api")


class SubmitBatcher:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._queue: list[tuple[list[dict[str, Any]], bool, asyncio.Future]] = []
        self._writer: asyncio.Task | None = None
        # per user, what was handed to the batcher (written on the event loop only) and
        # what of it was written (in the worker thread only, under _commit): queued is
        # the difference, so neither counter has two writers
        self._enqueued_jobs: Counter[str] = Counter()
        self._enqueued_bytes: Counter[str] = Counter()
        self._written_jobs: Counter[str] = Counter()
        self._written_bytes: Counter[str] = Counter()
        self._commit = threading.Lock()  # a write and its count, atomic to user_load
        self._turns: dict[str, list[Any]] = {}  # user -> [lock, holders and waiters]

    @contextlib.asynccontextmanager
    async def one_at_a_time(self, user: str) -> AsyncIterator[None]:
        """Hold ``user``'s turn: their cap checks and enqueues do not interleave."""
        held = self._turns.setdefault(user, [asyncio.Lock(), 0])
        held[1] += 1
        try:
            async with held[0]:
                yield
        finally:
            held[1] -= 1
            if held[1] == 0:
                del self._turns[user]

    def enqueue(self, rows: list[dict[str, Any]], as_array: bool) -> asyncio.Future:
        """Queue ``rows`` for the next write (counted against the user's caps from
        now on); the future is done once they are committed (their ``id`` and
        ``array_id`` filled in), or holds the error that refused them."""
        loop = asyncio.get_running_loop()
        fut: asyncio.Future = loop.create_future()
        self._queue.append((rows, as_array, fut))
        user = rows[0]["user"]
        self._enqueued_jobs[user] += len(rows)
        self._enqueued_bytes[user] += sum(r["spec_bytes"] for r in rows)
        if self._writer is None:
            self._writer = loop.create_task(self._write_all())
        return fut

    async def _write_all(self) -> None:
        try:
            while self._queue:
                batch, self._queue = self._queue, []
                errors = await asyncio.to_thread(self._write, [(r, a) for r, a, _ in batch])
                for (_, _, fut), err in zip(batch, errors, strict=True):
                    if fut.done():
                        continue  # its client went away
                    if err is None:
                        fut.set_result(None)
                    else:
                        fut.set_exception(err)
        finally:
            self._writer = None

    async def user_load(self, user: str) -> tuple[tuple[int, int], tuple[int, int]]:
        """The user's committed (active jobs, spec bytes), and what of theirs is queued
        or being written: read together, so nothing is counted twice or missed. Call
        it holding the user's turn (``one_at_a_time``)."""

        def read() -> tuple[tuple[int, int], tuple[int, int]]:
            with self._commit:
                load = self.store.user_load(user)
                written = (self._written_jobs[user], self._written_bytes[user])
            return load, written

        load, written = await asyncio.to_thread(read)
        # the user's turn is held: nothing of theirs was enqueued meanwhile
        queued = (
            self._enqueued_jobs[user] - written[0],
            self._enqueued_bytes[user] - written[1],
        )
        return load, queued

    def _write(self, groups: list[tuple[list[dict[str, Any]], bool]]) -> list[Exception | None]:
        """On a worker thread: every group in one transaction, or, if that fails, each
        on its own; what each group's write raised (None: committed). A group that
        failed counts as written too: the store does not hold it, nor does the queue."""
        with self._commit:
            errors = self._write_groups(groups)
            for rows, _ in groups:
                user = rows[0]["user"]
                self._written_jobs[user] += len(rows)
                self._written_bytes[user] += sum(r["spec_bytes"] for r in rows)
        return errors

    def _write_groups(
        self, groups: list[tuple[list[dict[str, Any]], bool]]
    ) -> list[Exception | None]:
        try:
            self.store.add_job_groups(groups)
            return [None] * len(groups)
        except Exception as exc:
            if len(groups) == 1:
                return [exc]
        out: list[Exception | None] = []
        for group in groups:  # isolate the one that fails
            try:
                self.store.add_job_groups([group])
                out.append(None)
            except Exception as exc:
                out.append(exc)
        return out
