"""The compiled runtime helper: built from runtime.c on first use, never committed.

``path()`` returns the binary for the current source, compiling it with the
system C compiler (gcc from build-essential) into ``executor/build/`` (or
``$MLQ_HELPER_DIR``, or ``~/.cache/mlq``) under a name that carries the source's
hash, so an edited runtime.c is rebuilt and an old binary never runs.
``python -m mlq.executor.helper`` builds it ahead (scripts/test does).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import sys
import tempfile

from mlq.executor.errors import ExecutorError

SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime.c")
_cached: str | None = None


def _candidate_dirs() -> list[str]:
    dirs = []
    if os.environ.get("MLQ_HELPER_DIR"):
        dirs.append(os.environ["MLQ_HELPER_DIR"])
    dirs.append(os.path.join(os.path.dirname(SOURCE), "build"))
    dirs.append(os.path.join(os.path.expanduser("~"), ".cache", "mlq"))
    return dirs


def path() -> str:
    """The helper binary for this source, compiled if needed."""
    global _cached
    if _cached and os.path.exists(_cached):
        return _cached
    with open(SOURCE, "rb") as f:
        digest = hashlib.sha256(f.read()).hexdigest()[:16]
    name = f"mlq-runtime-{digest}"
    for d in _candidate_dirs():
        p = os.path.join(d, name)
        if os.access(p, os.X_OK):
            _cached = p
            return p
    errors = []
    for d in _candidate_dirs():
        try:
            os.makedirs(d, exist_ok=True)
            _cached = _compile(os.path.join(d, name))
            return _cached
        except (OSError, ExecutorError) as exc:
            errors.append(f"{d}: {exc}")
    raise ExecutorError("build the runtime helper: " + "; ".join(errors))


def _compile(target: str) -> str:
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise ExecutorError("no C compiler (install build-essential)")
    fd, tmp = tempfile.mkstemp(prefix=".mlq-runtime-", dir=os.path.dirname(target))
    os.close(fd)
    try:
        proc = subprocess.run(
            [cc, "-O2", "-Wall", "-pthread", "-o", tmp, SOURCE],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ExecutorError(f"{cc} runtime.c failed: {proc.stderr.strip()[-2000:]}")
        os.chmod(tmp, 0o755)
        os.replace(tmp, target)  # atomic: a concurrent build never runs a half-written file
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    return target


if __name__ == "__main__":
    print(path())
    sys.exit(0)
