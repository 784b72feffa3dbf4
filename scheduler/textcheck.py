"""Text a user sends that mlq must refuse before it stores or runs it.

A NUL byte ends a C string (a command argument would be cut short where the
kernel reads it), a lone UTF-16 surrogate cannot be written as UTF-8 (the
database and every JSON answer would fail on it), and a control character in a
name, a path or an identifier breaks every listing that prints it (a name ending
in a newline splits `mlq queue`'s table). Command arguments and environment values
may hold tabs and newlines (scripts do); nothing else may hold control characters.
"""

from __future__ import annotations

import re
from typing import Any

_CONTROL = re.compile(r"[\x00-\x1f\x7f]")
_CONTROL_BUT_SPACE = re.compile(r"[\x00-\x08\x0b\x0c\x0e-\x1f\x7f]")
_SURROGATE = re.compile(r"[\ud800-\udfff]")
# where newlines and tabs are fine: the command line and environment values
FREE_TEXT = (("command",), ("env", "*"))


def text_problem(value: str, free: bool = False) -> str | None:
    """What is wrong with one string, or None."""
    if "\x00" in value:
        return "contains a NUL byte"
    if _SURROGATE.search(value):
        return "contains a lone UTF-16 surrogate (not valid Unicode text)"
    if (_CONTROL_BUT_SPACE if free else _CONTROL).search(value):
        return "contains a control character (newline, tab, escape, ...)"
    return None


def _loc(path: tuple[Any, ...]) -> str:
    out = ""
    for p in path:
        out += f"[{p}]" if isinstance(p, int) else (("." if out else "") + str(p))
    return out


def _is_free(path: tuple[Any, ...]) -> bool:
    keys = tuple(p for p in path if not isinstance(p, int))
    return any(
        len(keys) == len(pat) and all(a == "*" or a == b for a, b in zip(pat, keys, strict=True))
        for pat in FREE_TEXT
    )


def problems(data: Any, path: tuple[Any, ...] = (), limit: int = 20) -> list[str]:
    """Every string of ``data`` (keys included) that breaks the rules, as ``field: why``."""
    out: list[str] = []

    def walk(x: Any, at: tuple[Any, ...]) -> None:
        if len(out) >= limit:
            return
        if isinstance(x, str):
            why = text_problem(x, free=_is_free(at))
            if why:
                out.append(f"{_loc(at) or 'value'}: {why}")
        elif isinstance(x, dict):
            for k, v in x.items():
                if isinstance(k, str) and (why := text_problem(k)):
                    out.append(f"{_loc((*at, repr(k)[1:-1]))}: the key {why}")
                walk(v, (*at, k))
        elif isinstance(x, list):
            for i, v in enumerate(x):
                walk(v, (*at, i))

    walk(data, path)
    return out
