"""Each job's resolved spec, parsed once: a stored spec changes only by mlq update,
which forgets it here (``forget``).

Owned by the control loop and shared with the API's views (``mlq nodes``,
``mlq top``), instead of a module-level dictionary each of them reached into.
"""

from __future__ import annotations

from typing import Any

from mlq.scheduler.spec import JobSpec
from mlq.scheduler.store import Store

MAX_SPECS = 200_000  # finished jobs are not looked up again: the cache is bounded


class SpecCache:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._specs: dict[int, JobSpec] = {}

    def of(self, job: Any) -> JobSpec:
        """The job's spec (rows read without their spec text must be ``load``-ed first)."""
        spec = self._specs.get(job.id or 0)
        if spec is None:
            if len(self._specs) > MAX_SPECS:
                self._specs.clear()
            text = getattr(job, "spec", None)
            if text is None:  # a row read without its spec column
                self.load([job])
                return self._specs[job.id or 0]
            spec = self._specs[job.id or 0] = JobSpec.model_validate_json(text)
        return spec

    def forget(self, ids: list[int]) -> None:
        """Parse these jobs' specs again when next asked (mlq update changed them)."""
        for i in ids:
            self._specs.pop(i, None)

    def load(self, jobs: list[Any]) -> None:
        """Parse, in one query, the specs of jobs not seen before."""
        missing = [j.id for j in jobs if j.id not in self._specs]
        if missing:
            if len(self._specs) > MAX_SPECS:
                self._specs.clear()
            for job_id, text in self.store.specs(missing):
                self._specs[job_id] = JobSpec.model_validate_json(text)
