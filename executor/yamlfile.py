"""Reading YAML files (job files, configs, scenarios) with errors that name the file
and the line. Kept free of pydantic: the CLI reads job files with it at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from mlq.executor.errors import InvalidInput

# libyaml's loader when the wheel has it: several times faster on big files
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)
MAX_FILE_BYTES = 1 << 20  # a job file, config or scenario larger than this is refused
# Aliases are YAML's, and allowed; but "a: &a [x, x]; b: &b [*a, *a] ..." doubles
# at each step: a file of a few hundred bytes would expand to gigabytes once turned
# into JSON. What a document expands to is counted (shared nodes as often as they
# are referred to) and refused past this many values.
MAX_VALUES = 200_000


def load_yaml(path: str | Path, max_bytes: int = MAX_FILE_BYTES) -> Any:
    """The file's contents; ``InvalidInput`` if it cannot be read or parsed, is larger
    than ``max_bytes``, or expands (through aliases) past ``MAX_VALUES`` values."""
    p = Path(path)
    try:
        with open(p, "rb") as f:
            raw = f.read(max_bytes + 1)
    except OSError as exc:
        raise InvalidInput(f"cannot read {p}: {exc.strerror}") from None
    if len(raw) > max_bytes:
        raise InvalidInput(
            f"is larger than {max_bytes // 1024} KiB; a job file is not data", str(p)
        )
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise InvalidInput(f"is not UTF-8 text (byte {exc.start})", str(p)) from None
    try:
        data = yaml.load(text, Loader=_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InvalidInput(
            f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", str(p)
        ) from None
    n = expanded_size(data)
    if n > MAX_VALUES:
        raise InvalidInput(
            f"expands to more than {MAX_VALUES} values through its aliases (&/*); "
            "write the values out or use fewer aliases",
            str(p),
        )
    return data


def expanded_size(data: Any) -> int:
    """How many values ``data`` has once every shared reference is written out.

    Counted over the object graph with one visit per distinct container (sizes of
    shared containers are remembered), so an alias bomb is measured in microseconds
    without being expanded. A container that contains itself counts as unbounded."""
    sizes: dict[int, int] = {}
    active: set[int] = set()

    def size(x: Any) -> int:
        if not isinstance(x, (list, dict)):
            return 1
        key = id(x)
        if key in sizes:
            return sizes[key]
        if key in active:
            return MAX_VALUES + 1  # it refers to itself
        active.add(key)
        items = list(x.items()) if isinstance(x, dict) else [(None, v) for v in x]
        total = 1
        for k, v in items:
            total += (size(k) if k is not None else 0) + size(v)
            if total > MAX_VALUES:
                break
        active.discard(key)
        sizes[key] = min(total, MAX_VALUES + 1)
        return sizes[key]

    return size(data)
