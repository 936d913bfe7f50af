"""Rank-aware terminal output.

Only the main process (rank 0) prints; other ranks get a console that writes nothing, so
library code never has to ask which rank it is on. Messages go to stderr so that stdout
stays clean for ``--json`` output.
"""

from __future__ import annotations

import io
import os
import sys

from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)


def _is_main_process() -> bool:
    # Read the environment rather than torch.distributed: the console is used before the
    # process group exists, and by launchers that never create one.
    return os.environ.get("RANK", os.environ.get("SLURM_PROCID", "0")) == "0"


_console: Console | None = None
_silent = Console(file=io.StringIO(), quiet=True)


def get_console() -> Console:
    """The stderr console on rank 0; a silent one everywhere else."""
    global _console
    if not _is_main_process():
        return _silent
    if _console is None or _console.file is not sys.stderr:
        _console = Console(stderr=True, highlight=False)
    return _console


def stdout_console() -> Console:
    """A console on stdout, for results a user may pipe (tables, JSON); silent off rank 0."""
    if not _is_main_process():
        return _silent
    return Console(highlight=False, soft_wrap=True)


def make_progress(*fields: str, transient: bool = False) -> Progress:
    """A progress bar with ETA; ``fields`` name extra task fields shown after the bar.

    Example: ``make_progress("loss", "lr")`` and ``progress.update(task, loss="0.71")``.
    Disabled (prints nothing) off rank 0.
    """
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TextColumn("eta"),
        TimeRemainingColumn(),
    ]
    columns += [TextColumn(f"{name} {{task.fields[{name}]}}") for name in fields]
    return Progress(
        *columns,
        console=get_console(),
        transient=transient,
        disable=not _is_main_process(),
    )


def human_bytes(n: float) -> str:
    """``1536`` -> ``"1.5 KiB"``: binary units up to TiB, whole bytes below 1 KiB."""
    for unit in ("B", "KiB", "MiB", "GiB", "TiB"):
        if n < 1024 or unit == "TiB":
            return f"{n:.0f} {unit}" if unit == "B" else f"{n:.1f} {unit}"
        n /= 1024
    raise AssertionError("unreachable")
