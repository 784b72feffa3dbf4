"""The ``mlq`` command: one typer app, each noun's commands in its own module.

Start-up is kept lean on purpose: command modules import only typer and the
standard library at top level; rich, pydantic and the server's stack are
imported inside the commands that need them, so ``mlq queue --json`` does not
pay for FastAPI. Every ``MlqError`` becomes one line on stderr and its exit code.
"""

import importlib
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

# Each module defines ``register(app)``; the order is the order of ``mlq --help``.
COMMAND_MODULES = ("jobs", "nodes", "admin", "serve", "plan", "run")

for _name in COMMAND_MODULES:
    importlib.import_module(f"mlq.cli.{_name}").register(app)


def main() -> None:
    from mlq.scheduler.errors import MlqError

    try:
        rv = app(standalone_mode=False)
        if isinstance(rv, int) and rv:
            sys.exit(rv)
    except MlqError as exc:
        print(f"mlq: error: {exc}", file=sys.stderr)
        sys.exit(exc.exit_code)
    except SystemExit:
        raise
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as exc:  # click's usage errors and the like
        import click

        if isinstance(exc, click.exceptions.Abort):
            sys.exit(130)
        if isinstance(exc, click.ClickException):
            exc.show()
            sys.exit(2)
        raise
