"""mlq's errors, each with the CLI exit code and the HTTP status it maps to.

Every error a user can cause is one of these, with a message they can act on; the
CLI turns it into one line on stderr and its exit code, the API into its HTTP
status (and the CLI's client back into the same class). They live here, in the
lowest layer, so the executor raises them without importing the scheduler. A
launch that failed names the step and the object.
"""

from __future__ import annotations


class MlqError(Exception):
    """Base of every error mlq reports to a user."""

    exit_code = 1


class InvalidInput(MlqError):
    """Bad input: a job file, scenario or argument. Holds every problem found at once."""

    exit_code = 2

    def __init__(self, problems: list[str] | str, source: str | None = None) -> None:
        self.problems = [problems] if isinstance(problems, str) else list(problems)
        self.source = source
        head = f"{source}: " if source else ""
        super().__init__(head + "; ".join(self.problems))


class Refused(MlqError):
    """The caller may not do this (HTTP 403)."""

    exit_code = 3


class Unreachable(MlqError):
    """The daemon cannot be reached."""

    exit_code = 4


class NotFound(MlqError):
    """No such job, team or class (HTTP 404)."""

    exit_code = 1


class Conflict(MlqError):
    """The request clashes with the current state (HTTP 409), e.g. cancelling a finished job."""

    exit_code = 1


# The one map between errors and HTTP statuses, both ways (the API and its client)
HTTP_STATUS: dict[type[MlqError], int] = {
    InvalidInput: 422,
    Refused: 403,
    NotFound: 404,
    Conflict: 409,
}


def status_of(exc: MlqError) -> int:
    return next((code for cls, code in HTTP_STATUS.items() if isinstance(exc, cls)), 500)


def error_for_status(status: int) -> type[MlqError]:
    """The error class for an HTTP status the daemon answered (400 and 413: bad input)."""
    if status in (400, 413):
        return InvalidInput
    return next((cls for cls, code in HTTP_STATUS.items() if code == status), MlqError)


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
