"""Images prepared off the caller's thread: one user's 40 GB tarball never delays
another user's job.

Hashing and unpacking a layer can take minutes. The control loop asks ``check``
for each pending job's image once per pass (a few small reads:
``images.is_ready``); an image not in the layer cache yet is unpacked by a small
pool of worker threads, as the job's submitter (every file of it is opened with
their credentials), while the job waits with the reason ``ImagePending``. A worker
that finishes makes ``fd`` readable, so a loop that waits on the executor's
descriptors wakes; a failure (unreadable, unsafe entry, bad layout) is the job's,
and it ends FAILED with that reason.
"""

from __future__ import annotations

import contextlib
import logging
import os
import threading
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from mlq.executor import images
from mlq.executor.asuser import HostUser

log = logging.getLogger("mlq.images")
WORKERS = 2


@dataclass(frozen=True)
class Verdict:
    ready: bool
    error: str | None = None  # set: the image cannot be used; the job fails with it

    @property
    def waiting(self) -> bool:
        return not self.ready and self.error is None


READY = Verdict(True)


class ImagePrep:
    """Which images are ready, which are being unpacked, which failed."""

    def __init__(self, state_dir: str) -> None:
        self.state_dir = state_dir
        self._done_r, self._done_w = os.pipe2(os.O_NONBLOCK | os.O_CLOEXEC)
        self._pool = ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix="mlq-image")
        self._lock = threading.Lock()
        self._busy: set[tuple[str, HostUser]] = set()
        self._failed: dict[tuple[str, HostUser], str] = {}

    def check(self, image: str, user: HostUser) -> Verdict:
        """Ready to launch, being prepared (started here if need be), or failed."""
        key = (image, user)
        with contextlib.suppress(BlockingIOError):
            while os.read(self._done_r, 4096):
                pass
        with self._lock:
            if key in self._busy:
                return Verdict(False)
            failed = self._failed.pop(key, None)
        if failed is not None:
            return Verdict(False, failed)
        if images.is_ready(image, self.state_dir, user):
            return READY
        with self._lock:
            self._busy.add(key)
        self._pool.submit(self._prepare, key)
        return Verdict(False)

    def _prepare(self, key: tuple[str, HostUser]) -> None:
        image, user = key
        try:
            images.resolve(image, self.state_dir, user)
            log.info("image %s ready (as uid %d)", image, user.uid)
        except Exception as exc:  # the job's failure, not the daemon's
            log.info("image %s failed: %s", image, exc)
            with self._lock:
                self._failed[key] = str(exc)
        finally:
            with self._lock:
                self._busy.discard(key)
            with contextlib.suppress(BlockingIOError):
                os.write(self._done_w, b"x")

    @property
    def fd(self) -> int:
        """Readable when an image finished (drained by ``check``)."""
        return self._done_r

    def close(self) -> None:
        self._pool.shutdown(wait=False, cancel_futures=True)
