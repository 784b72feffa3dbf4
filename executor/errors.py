"""The executor's errors: a launch that failed names the step and the object."""

from __future__ import annotations

from mlq.scheduler.errors import InvalidInput, MlqError


class ExecutorError(MlqError):
    """Something on this node went wrong (a cgroup write, a mount, a veth)."""


class LaunchError(ExecutorError):
    """A launch failed at ``step``; whatever it had made is undone."""

    def __init__(self, step: str, message: str) -> None:
        self.step = step
        self.message = message
        super().__init__(f"launch failed at {step}: {message}")


class BadRequest(InvalidInput):
    """The request cannot be launched as written (missing device node, volume source...)."""
