"""The ``simclr`` command line: Typer declares flags, a config model validates them.

Each command builds one frozen config from its flags, calls one library function and prints
a summary (:mod:`~simclr_cli.cli.commands`; what they share: :mod:`~simclr_cli.cli.app`).
Errors a user can fix become one line on stderr (exit 2 for a bad option value, 1 for a runtime
failure, 130 for Ctrl-C); ``SIMCLR_DEBUG=1`` shows the traceback instead. That error boundary
is :func:`run`, here.
"""

from __future__ import annotations

import contextlib
import os
import re
import signal
import sys
import traceback

import typer
from pydantic import ValidationError

from simclr_cli import signals
from simclr_cli.cli import commands  # noqa: F401 - defines the commands on `app`
from simclr_cli.cli.app import app
from simclr_cli.config import flag_name
from simclr_cli.data import workers
from simclr_cli.errors import SimCLRError, invalid_value, os_error_line

try:  # typer >= 0.29 ships its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer depends on click
    from click import exceptions as click_exceptions

_EXITS = tuple({typer.Exit, getattr(click_exceptions, "Exit", typer.Exit)})
_ABORTS = tuple({typer.Abort, getattr(click_exceptions, "Abort", typer.Abort), KeyboardInterrupt})


# -- error boundary --------------------------------------------------------------------------


def _validation_line(error: ValidationError) -> str:
    """The first problem of a config validation, as ``--flag: ...``."""
    first = error.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:
        return msg
    flag = flag_name(str(first["loc"][0]))
    value = first.get("input")
    allowed = msg[0].lower() + msg[1:] if msg else msg
    return invalid_value(flag, value, allowed)


def _usage_line(error: Exception, argv: list[str]) -> str:
    """Click's message, plus the offending value when a flag could not be parsed."""
    message = error.format_message().replace("\n", " ")  # type: ignore[attr-defined]
    param = getattr(error, "param", None)
    opts = getattr(param, "opts", None) or []
    for i, token in enumerate(argv):
        name, _, inline = token.partition("=")
        if name in opts:
            value = inline if inline else (argv[i + 1] if i + 1 < len(argv) else "")
            return invalid_value(opts[0], value, _without_flag_and_value(message, value))
    return message


def _without_flag_and_value(message: str, value: str) -> str:
    """Click's ``Invalid value for '--epochs': 'two' is not a valid integer.`` without the parts
    :func:`invalid_value` already says: ``not a valid integer``."""
    message = re.sub(r"^Invalid value for '[^']*':\s*", "", message).rstrip(".")
    message = message.removeprefix(f"{value!r} is ").removeprefix(f"{value} is ")
    return message[:1].lower() + message[1:]


def _error_line(error: BaseException) -> str:
    """One line for an error, also when a DataLoader worker re-raised it with its traceback."""
    text = str(error)
    if "Original Traceback" in text:  # torch's worker re-raise: "Caught X in DataLoader worker"
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.startswith(type(error).__module__) else last
    return " ".join(text.split())


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    return code


def _fail_handled(debug: bool, message: str, code: int) -> int:
    """:func:`_fail` inside an ``except`` block: with ``SIMCLR_DEBUG`` set, the traceback first."""
    if debug:
        traceback.print_exc()
    return _fail(message, code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (``main`` exits with it)."""
    debug = os.environ.get("SIMCLR_DEBUG", "") not in ("", "0")
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = signal.getsignal(signal.SIGTERM)
    signals.terminated.clear()
    signals.terminate_as_interrupt()  # SIGTERM while starting up: exit 130 with a line
    try:
        return _run(argv, debug)
    finally:
        workers.stop_leftover_workers()  # a worker left running would hang the exit
        with contextlib.suppress(ValueError, TypeError):  # not the main thread, or not ours
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str], debug: bool) -> int:
    """The error boundary of :func:`run`."""
    try:
        command = typer.main.get_command(app)
        result = command.main(args=argv, prog_name="simclr", standalone_mode=False)
        if result == 130:  # typer turns Ctrl-C into an exit code of 130
            return _fail(signals.interrupt_line(), 130)
        return result if isinstance(result, int) else 0
    except _EXITS as exit_:
        if exit_.exit_code == 130:  # typer turns Ctrl-C into Exit(130)
            return _fail(signals.interrupt_line(), 130)
        return exit_.exit_code
    except click_exceptions.UsageError as error:
        if type(error).__name__ == "NoArgsIsHelpError":
            sys.stdout.write(error.format_message() + "\n")
            return 0
        return _fail_handled(debug, _usage_line(error, argv), 2)
    except ValidationError as error:
        return _fail_handled(debug, _validation_line(error), 2)
    except SimCLRError as error:
        return _fail_handled(debug, _error_line(error), error.exit_code)
    except signals.Terminated:
        return _fail_handled(debug, "interrupted (SIGTERM)", 130)
    except _ABORTS:
        return _fail_handled(debug, "interrupted", 130)
    except OSError as error:
        line = os_error_line(error)
        if line is None:
            raise  # not a file-system problem the user can fix: keep the traceback
        return _fail_handled(debug, line, 1)
    except RuntimeError as error:
        if not _worker_died(error):
            raise  # a bug: the traceback is what a report needs
        return _fail_handled(
            debug,
            f"{' '.join(str(error).split())} (often the out-of-memory killer); "
            "lower --workers or --batch-size",
            1,
        )


def _worker_died(error: RuntimeError) -> bool:
    """Whether ``error`` is torch's report of a DataLoader worker that was killed or vanished."""
    text = str(error)
    return "DataLoader worker" in text and (
        "killed by signal" in text or "exited unexpectedly" in text
    )


def main() -> None:
    """The ``simclr`` entry point: run the CLI on ``sys.argv`` and exit with its code."""
    sys.exit(run())
