"""Glue shared by the typer CLIs: one line per user error, no tracebacks, JSON output."""

from __future__ import annotations

import functools
import json
import os
import sys
from collections.abc import Callable, Sequence
from typing import Any, TypeVar

import typer

from quant_common.atomic import json_default
from quant_common.errors import QuantError

F = TypeVar("F", bound=Callable[..., Any])

DEBUG_ENV = "QUANT_DEBUG"


def fail(message: str, code: int = 2) -> None:
    """Print one line to stderr and exit with ``code``."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    raise SystemExit(code)


def handle_errors(func: F) -> F:
    """Turn a ``QuantError`` (or an unexpected crash) into one line and a non-zero exit.

    Set QUANT_DEBUG=1 to see the traceback of an unexpected error.
    """

    @functools.wraps(func)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return func(*args, **kwargs)
        except QuantError as exc:
            if os.environ.get(DEBUG_ENV):
                raise
            fail(str(exc), exc.exit_code)
        except KeyboardInterrupt:
            fail("interrupted; no partial outputs were kept", 130)
        except (SystemExit, GeneratorExit):
            raise
        except Exception as exc:  # noqa: BLE001 - a CLI must never print a traceback at users
            if os.environ.get(DEBUG_ENV) or exc.__class__.__name__ in {"Exit", "Abort"}:
                raise
            first = str(exc).splitlines()[0] if str(exc) else ""
            fail(f"unexpected {exc.__class__.__name__}: {first} (rerun with {DEBUG_ENV}=1 for the traceback "
                 "and report it)", 1)
        return None

    return wrapper  # type: ignore[return-value]


def print_json(obj: Any) -> None:
    """Print ``obj`` as one JSON object on stdout (the ``--json`` contract)."""
    sys.stdout.write(json.dumps(obj, default=json_default) + "\n")
    sys.stdout.flush()


Registrar = Callable[[typer.Typer], None]


def make_app(name: str, help: str, summary: str, registrars: Sequence[Registrar]) -> typer.Typer:
    """One typer app for a console script: ``registrars`` each add their commands (``module.register``).

    ``summary`` is the group callback's one-line help; an explicit callback keeps typer in multi-command mode
    (with a lone registered command it would run that command as the whole app, and ``tool build X`` breaks).
    """
    app = typer.Typer(name=name, help=help, no_args_is_help=True, add_completion=False,
                      pretty_exceptions_enable=False)

    def group() -> None:
        pass

    group.__doc__ = summary
    app.callback()(group)
    for register in registrars:
        register(app)
    return app
