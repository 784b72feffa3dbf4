"""Reading YAML files (job files, configs, scenarios) with errors that name the file
and the line. Kept free of pydantic: the CLI reads job files with it at start-up."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import yaml
from mlq.scheduler.errors import InvalidInput

# libyaml's loader when the wheel has it: several times faster on big files
_LOADER = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


def load_yaml(path: str | Path) -> Any:
    """The file's contents; ``InvalidInput`` if it cannot be read or parsed."""
    p = Path(path)
    try:
        text = p.read_text()
    except OSError as exc:
        raise InvalidInput(f"cannot read {p}: {exc.strerror}") from None
    try:
        return yaml.load(text, Loader=_LOADER)  # noqa: S506 (a safe loader)
    except yaml.YAMLError as exc:
        mark = getattr(exc, "problem_mark", None)
        where = f" at line {mark.line + 1}" if mark else ""
        raise InvalidInput(
            f"not valid YAML{where}: {getattr(exc, 'problem', exc)}", str(p)
        ) from None
