"""mlq's exceptions, each carrying the CLI exit code it maps to.

Every error a user can cause is one of these, with a message they can act on;
the CLI turns it into one line on stderr and the exit code below.
"""

from __future__ import annotations

from typing import Any

# The classes live with the executor, the lowest layer, so that it raises them
# without importing the scheduler; this module adds what reading job files needs.
from mlq.executor.errors import (  # noqa: F401  (the scheduler's and the CLI's names for them)
    HTTP_STATUS,
    Conflict,
    InvalidInput,
    MlqError,
    NotFound,
    Refused,
    Unreachable,
    error_for_status,
    status_of,
)


def _loc(loc: tuple[Any, ...]) -> str:
    out = ""
    for part in loc:
        if isinstance(part, int):
            out += f"[{part}]"
        else:
            out += ("." if out else "") + str(part)
    return out or "(file)"


def _show(value: Any) -> str:
    if isinstance(value, str):
        return f'"{value}"'
    if isinstance(value, dict):
        return "{...}"
    return repr(value)


def describe_validation_error(exc: Any, prefix: str = "") -> list[str]:
    """One line per problem of a pydantic ``ValidationError``: path, value, what is allowed."""
    lines: list[str] = []
    for err in exc.errors():
        loc = tuple(p for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
        path = (
            (prefix + "." if prefix and loc else prefix) + _loc(loc) if loc else prefix or "(file)"
        )
        kind = err["type"]
        msg = err["msg"]
        if msg.startswith("Value error, "):
            msg = msg[len("Value error, ") :]
        if msg.startswith("Assertion failed, "):
            msg = msg[len("Assertion failed, ") :]
        ctx = err.get("ctx") or {}
        if kind == "extra_forbidden":
            allowed = ctx.get("allowed")
            lines.append(f"{path}: unknown key" + (f"; allowed: {allowed}" if allowed else ""))
        elif kind == "missing":
            lines.append(f"{path}: required but missing")
        elif kind in ("literal_error", "enum"):
            lines.append(f"{path}: {_show(err.get('input'))} is not allowed; {msg.lower()}")
        elif not loc and not prefix:
            lines.append(msg)
        elif msg.startswith("["):  # a list validator naming its entry: "[2]: ..."
            lines.append(f"{path}{msg}")
        elif "input" in err and not isinstance(err["input"], dict | list):
            lines.append(f"{path}: {_show(err['input'])} {msg[:1].lower() + msg[1:]}")
        else:
            lines.append(f"{path}: {msg}")
    return lines
