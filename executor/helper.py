"""The compiled helpers, built at install time, found here: ``mlq-runtime`` (the
runtime that sets up and supervises every run) and ``mlq-job`` (the small static
``mlq`` bound into every job at ``/.mlq/bin/mlq``, for ``mlq checkpoint-done``).

``scripts/install-venv`` (or a packager) runs ``python -m mlq.executor.helper build``,
which compiles ``executor/runtime/*.c`` with the system C compiler into
``<sys.prefix>/libexec/mlq/mlq-runtime`` (the virtualenv's, for a checkout) and
``executor/jobtool/mlq-job.c``, linked ``-static-pie``, into ``mlq-job`` beside it,
and records the hash of all their sources next to each (``mlq-runtime.sha256``,
``mlq-job.sha256``). ``path()`` returns the runtime, or ``$MLQ_RUNTIME`` if set, and
``job_tool_path()`` the job's tool, or ``$MLQ_JOB_TOOL``, after checking that it
exists and was built from the sources installed beside this module; otherwise they
raise ``ExecutorError`` saying to run ``scripts/install-venv``. Nothing is ever
compiled on first use.

    python -m mlq.executor.helper build [--output PATH]   # compile, record the hash
    python -m mlq.executor.helper                         # print the checked path
"""

from __future__ import annotations

import argparse
import functools
import hashlib
import os
import shlex
import shutil
import subprocess
import sys
import tempfile

from mlq.executor.errors import ExecutorError

SOURCE_DIR = os.path.join(os.path.dirname(os.path.abspath(__file__)), "runtime")
JOB_TOOL_SOURCE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "jobtool", "mlq-job.c")
NAME = "mlq-runtime"
JOB_TOOL_NAME = "mlq-job"
# Warnings are errors: the helper runs as root in every job's set-up. Hardening: a
# fortified libc, stack protector and clash protection, PIE, full RELRO, no
# executable stack. $CFLAGS and $LDFLAGS (a distribution's) come after these.
CFLAGS = [
    "-std=gnu11",
    "-O2",
    "-Wall",
    "-Wextra",
    "-Werror",
    "-U_FORTIFY_SOURCE",
    "-D_FORTIFY_SOURCE=2",
    "-fstack-protector-strong",
    "-fstack-clash-protection",
    "-fPIE",
    "-pthread",
]
LDFLAGS = ["-pie", "-Wl,-z,relro", "-Wl,-z,now", "-Wl,-z,noexecstack", "-pthread"]
# The job's tool runs in images of any libc (or none): static, and still a PIE
JOB_TOOL_CFLAGS = [f for f in CFLAGS if f != "-pthread"]
JOB_TOOL_LDFLAGS = ["-static-pie", "-Wl,-z,relro", "-Wl,-z,now", "-Wl,-z,noexecstack"]

_checked: set[str] = set()  # binaries found current in this process


def sources() -> list[str]:
    """The helper's C sources and header, in a fixed order."""
    try:
        names = sorted(n for n in os.listdir(SOURCE_DIR) if n.endswith((".c", ".h")))
    except FileNotFoundError:
        names = []
    if not names:
        raise ExecutorError(f"the runtime helper's sources are missing from {SOURCE_DIR}")
    return [os.path.join(SOURCE_DIR, n) for n in names]


def job_tool_sources() -> list[str]:
    """The job tool's one C source."""
    if not os.path.exists(JOB_TOOL_SOURCE):
        raise ExecutorError(f"the job tool's source {JOB_TOOL_SOURCE} is missing")
    return [JOB_TOOL_SOURCE]


@functools.cache
def source_hash() -> str:
    """sha256 over the names and contents of both helpers' sources: one build makes
    both, so either one's change makes both stale."""
    h = hashlib.sha256()
    for src in [*sources(), *job_tool_sources()]:
        with open(src, "rb") as f:
            data = f.read()
        h.update(f"{os.path.basename(src)}\0{len(data)}\0".encode())
        h.update(data)
    return h.hexdigest()


def default_path() -> str:
    """Where ``build`` puts the helper: under this Python's prefix (the virtualenv)."""
    return os.path.join(sys.prefix, "libexec", "mlq", NAME)


def stamp_path(binary: str) -> str:
    """The file next to BINARY that records the hash of the sources it was built from."""
    return binary + ".sha256"


def path() -> str:
    """The helper binary, checked to exist and to match its sources."""
    return _checked_binary(os.environ.get("MLQ_RUNTIME") or default_path(), "the runtime helper")


def job_tool_path() -> str:
    """The job's ``mlq`` (bound at ``/.mlq/bin/mlq``), checked like the runtime."""
    binary = os.environ.get("MLQ_JOB_TOOL") or os.path.join(
        os.path.dirname(default_path()), JOB_TOOL_NAME
    )
    return _checked_binary(binary, "the job tool")


def _checked_binary(binary: str, what: str) -> str:
    if binary in _checked and os.access(binary, os.X_OK):
        return binary
    how = "run scripts/install-venv (or python -m mlq.executor.helper build)"
    if not os.access(binary, os.X_OK):
        raise ExecutorError(f"{what} {binary} is missing: {how}")
    try:
        with open(stamp_path(binary)) as f:
            built_from = f.read().strip()
    except OSError:
        built_from = ""
    if built_from != source_hash():
        where = SOURCE_DIR if what == "the runtime helper" else JOB_TOOL_SOURCE
        raise ExecutorError(f"{what} {binary} is older than its sources in {where}: {how}")
    _checked.add(binary)
    return binary


def build(target: str | None = None) -> str:
    """Compile the runtime into TARGET and the job tool beside it (each atomically,
    each with its sources' hash recorded); returns TARGET."""
    target = os.path.abspath(target or default_path())
    cc = os.environ.get("CC") or shutil.which("cc") or shutil.which("gcc")
    if not cc:
        raise ExecutorError("build the runtime helper: no C compiler (install gcc and libc6-dev)")
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    _compile(cc, CFLAGS, sources(), LDFLAGS, target, "the runtime helper")
    tool = os.path.join(os.path.dirname(target), JOB_TOOL_NAME)
    _compile(cc, JOB_TOOL_CFLAGS, job_tool_sources(), JOB_TOOL_LDFLAGS, tool, "the job tool")
    return target


def _compile(
    cc: str, cflags: list[str], srcs: list[str], ldflags: list[str], target: str, what: str
) -> None:
    digest = source_hash()
    fd, tmp = tempfile.mkstemp(prefix=f".{os.path.basename(target)}-", dir=os.path.dirname(target))
    os.close(fd)
    try:
        cmd = [
            *shlex.split(cc),
            *cflags,
            *shlex.split(os.environ.get("CFLAGS", "")),
            "-o",
            tmp,
            *srcs,
            *ldflags,
            *shlex.split(os.environ.get("LDFLAGS", "")),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, check=False)
        if proc.returncode != 0:
            raise ExecutorError(
                f"build {what}: {' '.join(cmd)} failed: {proc.stderr.strip()[-2000:]}"
            )
        # 0755 and never setuid: the job tool runs with the job's own privileges
        os.chmod(tmp, 0o755)
        # the binary first, then its stamp: a binary under a stale stamp is refused,
        # never run
        os.replace(tmp, target)
        with open(tmp, "w") as f:
            f.write(digest + "\n")
        os.chmod(tmp, 0o644)
        os.replace(tmp, stamp_path(target))
    finally:
        if os.path.exists(tmp):
            os.unlink(tmp)
    _checked.discard(target)


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(prog="python -m mlq.executor.helper", description=__doc__)
    sub = parser.add_subparsers(dest="command")
    b = sub.add_parser("build", help="compile the helpers and record their sources' hash")
    b.add_argument(
        "--output",
        help=f"the runtime to write, the job tool beside it (default: {default_path()})",
    )
    args = parser.parse_args(argv)
    try:
        print(build(args.output) if args.command == "build" else path())
    except ExecutorError as exc:
        print(f"mlq: {exc}", file=sys.stderr)
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
