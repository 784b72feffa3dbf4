"""The ``mlq`` command: one typer app, each noun's commands in its own module.

Start-up is kept lean on purpose: command modules import only typer and the
standard library at top level; rich, pydantic and the server's stack are
imported inside the commands that need them, so ``mlq queue --json`` does not
pay for FastAPI. Every ``MlqError`` becomes one line on stderr and its exit code.
"""

import importlib
import re
import sys

import typer

app = typer.Typer(
    name="mlq",
    help="mlq: a batch scheduler for ML jobs on shared GPU machines.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)

# mlq run's own errors, apart from its job's exit codes (docker run's numbers)
RUN_ERROR, RUN_CANNOT_EXEC, RUN_NOT_FOUND = 125, 126, 127

# Each module defines ``register(app)``; the order is the order of ``mlq --help``.
COMMAND_MODULES = ("jobs", "nodes", "admin", "checkpoints", "serve", "plan", "run", "execute")

for _name in COMMAND_MODULES:
    importlib.import_module(f"mlq.cli.{_name}").register(app)


def main() -> None:
    """The CLI's only exit paths: the command's result, one line for every error.

    Exit codes: 0 ok; 1 an error of the daemon or the job (not found, a conflict,
    an internal error); 2 bad input or a usage mistake (unknown option, missing
    argument); 3 refused (not allowed, beyond a grant or a cap); 4 the daemon
    cannot be reached; 130 interrupted. Never a traceback.

    ``mlq run``, ``mlq exec``, ``mlq attach`` and ``mlq submit -i`` exit with their
    command's exit code, so their own errors cannot use those numbers: as ``docker run`` and ``docker exec``, 125 for
    an error of mlq (any of the above), 126 for a command that cannot be executed,
    127 for one that does not exist.
    """
    from mlq.scheduler.errors import MlqError

    args = sys.argv[1:]
    running_a_job = (
        args[:1] in (["run"], ["exec"], ["attach"])
        or (
            args[:1] == ["submit"]  # -i: an interactive job's command's code
            and any(a == "--interactive" or re.fullmatch(r"-[a-z]*i[a-z]*", a) for a in args[1:])
        )
    )

    def code(usual: int) -> int:
        return RUN_ERROR if running_a_job else usual

    try:
        rv = app(standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except MlqError as exc:
        print(f"mlq: error: {_one_line(str(exc))}", file=sys.stderr)
        from mlq.executor.errors import LaunchError

        if running_a_job and isinstance(exc, LaunchError) and exc.step == "exec":
            sys.exit(RUN_NOT_FOUND if "No such file" in exc.message else RUN_CANNOT_EXEC)
        sys.exit(code(exc.exit_code))
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:
        name = type(exc).__name__
        if name == "Abort":
            sys.exit(130)
        if hasattr(exc, "format_message"):  # click's usage errors (vendored by typer)
            ctx = getattr(exc, "ctx", None)
            where = f" (see: {ctx.command_path} --help)" if ctx is not None else ""
            print(f"mlq: error: {_one_line(exc.format_message())}{where}", file=sys.stderr)
            sys.exit(code(2))
        if isinstance(exc, BrokenPipeError):  # `mlq queue | head`
            sys.exit(0)
        print(f"mlq: error: unexpected {name}: {_one_line(str(exc))}", file=sys.stderr)
        sys.exit(code(1))


def _one_line(text: str) -> str:
    return " ".join(text.split())
