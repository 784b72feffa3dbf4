"""Kubernetes-style quantities: memory sizes, CPU counts and durations.

Every parser takes what a YAML file may hold (int, float or str) and returns an
int in base units (bytes, millicores, seconds), or raises ``ValueError`` with a
message that says what is allowed; callers prefix the field path and value.
"""

from __future__ import annotations

import re

_BINARY = {"Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "Ti": 2**40, "Pi": 2**50}
_DECIMAL = {"k": 10**3, "K": 10**3, "M": 10**6, "G": 10**9, "T": 10**12, "P": 10**15}
_SIZE_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(Ki|Mi|Gi|Ti|Pi|k|K|M|G|T|P)?\s*$")
_CPU_RE = re.compile(r"^\s*(\d+(?:\.\d+)?)\s*(m)?\s*$")
_DURATION_PART = re.compile(r"(\d+(?:\.\d+)?)(d|h|m|s)")
_DURATION_UNITS = {"d": 86400, "h": 3600, "m": 60, "s": 1}
_CLOCK_RE = re.compile(r"^(?:(\d+)-)?(?:(\d+):)?(\d+):(\d+)$")  # Slurm's [D-]HH:MM:SS

# Every quantity fits a signed 64-bit integer (the databases' and the kernel's files')
MAX_QUANTITY = 2**63 - 1
SIZE_HELP = "use a number of bytes or a unit: 512Mi, 32Gi, 32G"
CPU_HELP = "use a number of CPUs (2, 0.5) or millicores (500m)"
DURATION_HELP = "use seconds or units: 90s, 15m, 12h, 1d, 1h30m (or HH:MM:SS)"


def _bounded(n: float, what: str, help_text: str) -> int:
    if not n < MAX_QUANTITY:  # also inf and nan
        raise ValueError(f"is too large for a {what}; {help_text}")
    return int(n)


def parse_size(value: object) -> int:
    """Bytes from ``32Gi``, ``32G``, ``512Mi`` or a plain integer."""
    if isinstance(value, bool):
        raise ValueError(f"is not a size; {SIZE_HELP}")
    if isinstance(value, int):
        if value < 0:
            raise ValueError(f"must not be negative; {SIZE_HELP}")
        return _bounded(value, "size", SIZE_HELP)
    if isinstance(value, str):
        m = _SIZE_RE.fullmatch(value)
        if m:
            number, unit = m.groups()
            factor = _BINARY.get(unit or "") or _DECIMAL.get(unit or "") or 1
            if len(number) > 40:
                raise ValueError(f"is too large for a size; {SIZE_HELP}")
            if "." not in number:  # exact: 9223372036854775807 must not round up
                return _bounded(int(number) * factor, "size", SIZE_HELP)
            return _bounded(float(number) * factor, "size", SIZE_HELP)
        if value.strip().startswith("-"):
            raise ValueError(f"must not be negative; {SIZE_HELP}")
    raise ValueError(f"is not a size; {SIZE_HELP}")


def parse_cpus(value: object) -> int:
    """Millicores from ``2``, ``0.5`` or ``500m``; must be more than zero."""
    if isinstance(value, bool):
        raise ValueError(f"is not a CPU count; {CPU_HELP}")
    if isinstance(value, int | float):
        number, is_milli = str(value), False
    elif isinstance(value, str) and (m := _CPU_RE.fullmatch(value)):
        number, is_milli = m.groups()
    else:
        raise ValueError(f"is not a CPU count; {CPU_HELP}")
    try:
        f = float(number) * (1 if is_milli else 1000)
    except (OverflowError, ValueError):
        raise ValueError(f"is not a CPU count; {CPU_HELP}") from None
    milli = _bounded(round(f) if f < MAX_QUANTITY else f, "CPU count", CPU_HELP)
    if milli <= 0:
        raise ValueError(f"must be more than zero; {CPU_HELP}")
    return milli


def parse_duration(value: object) -> int:
    """Seconds from ``90s``, ``15m``, ``12h``, ``1d``, ``1h30m``, ``HH:MM:SS`` or an int."""
    if isinstance(value, bool):
        raise ValueError(f"is not a duration; {DURATION_HELP}")
    if isinstance(value, int | float):
        if value < 0:
            raise ValueError(f"must not be negative; {DURATION_HELP}")
        return _bounded(value, "duration", DURATION_HELP)
    if isinstance(value, str):
        text = value.strip()
        if len(text) > 40:
            raise ValueError(f"is too long for a duration; {DURATION_HELP}")
        if text.isdigit():
            return _bounded(int(text), "duration", DURATION_HELP)
        if m := _CLOCK_RE.fullmatch(text):
            days, hours, minutes, seconds = (int(g) if g else 0 for g in m.groups())
            return _bounded(
                days * 86400 + hours * 3600 + minutes * 60 + seconds, "duration", DURATION_HELP
            )
        parts = _DURATION_PART.findall(text)
        if parts and "".join(n + u for n, u in parts) == text:
            total = sum(float(n) * _DURATION_UNITS[u] for n, u in parts)
            return _bounded(total, "duration", DURATION_HELP)
    raise ValueError(f"is not a duration; {DURATION_HELP}")


def format_size(n: int) -> str:
    """The shortest exact binary form (``32Gi``), else bytes."""
    for unit in ("Pi", "Ti", "Gi", "Mi", "Ki"):
        if n and n % _BINARY[unit] == 0:
            return f"{n // _BINARY[unit]}{unit}"
    return str(n)


def format_cpus(milli: int) -> str:
    """``2``, ``0.5`` or ``250m``."""
    if milli % 1000 == 0:
        return str(milli // 1000)
    if milli % 100 == 0:
        return f"{milli / 1000:g}"
    return f"{milli}m"


def format_duration(seconds: int) -> str:
    """``1h30m``, ``90s`` style, the inverse of :func:`parse_duration`."""
    if seconds == 0:
        return "0s"
    out = []
    for unit, size in (("d", 86400), ("h", 3600), ("m", 60), ("s", 1)):
        if seconds >= size:
            out.append(f"{seconds // size}{unit}")
            seconds %= size
    return "".join(out)


def human_size(n: int) -> str:
    """A size for people: ``23.5Gi``, ``512Mi``; exact when it can be."""
    exact = format_size(n)
    if exact.endswith(("Mi", "Gi", "Ti", "Pi")) or n < 2**20:
        return exact
    for unit in ("Pi", "Ti", "Gi", "Mi", "Ki"):
        if n >= _BINARY[unit]:
            return f"{n / _BINARY[unit]:.1f}{unit}"
    return str(n)
