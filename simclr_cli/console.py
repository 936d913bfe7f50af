"""Rank-aware terminal output.

Only the main process (rank 0) prints; other ranks get a console that writes nothing, so
library code never has to ask which rank it is on. Messages go to stderr so that stdout
stays clean for ``--json`` output.
"""

from __future__ import annotations

import io
import math
import os
import sys
import time

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
    """The stderr console on rank 0; a silent one everywhere else.

    Off a terminal (a log file, a pipe) every message is one line however long: rich would
    otherwise wrap it at its default 80 columns, one event over several lines of the log.
    """
    global _console
    if not _is_main_process():
        return _silent
    if _console is None or _console.file is not sys.stderr:
        _console = Console(stderr=True, highlight=False)
        _console.soft_wrap = not _console.is_terminal
    return _console


def stdout_console() -> Console:
    """A console on stdout, for results a user may pipe (tables, JSON); silent off rank 0."""
    if not _is_main_process():
        return _silent
    return Console(highlight=False, soft_wrap=True)


def make_progress(*fields: str, transient: bool = False, eta: bool = True) -> Progress:
    """A progress bar with ETA; ``fields`` name extra task fields shown after the bar.

    Example: ``make_progress("loss", "lr")`` and ``progress.update(task, loss="0.71")``.
    With ``eta=False`` rich's own remaining-time column is left out (:class:`StepProgress`
    shows a smoothed one as a field). Disabled (prints nothing) off rank 0.
    """
    columns = [
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
    ]
    if eta:
        columns += [TextColumn("eta"), TimeRemainingColumn()]
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


# ----------------------------------------------------------------------------------------------
# progress for terminals and for log files

# Off a terminal (nohup, SLURM, CI, `> log 2>&1`) a progress line is printed at most this often
# (and at the first and the last update); SIMCLR_PROGRESS_SECONDS changes it.
PROGRESS_SECONDS = 30.0
# Weight of the newest rate in the smoothed rate a terminal's ETA is based on.
RATE_SMOOTHING = 0.3


def progress_seconds() -> float:
    """Seconds between plain progress lines: ``$SIMCLR_PROGRESS_SECONDS`` or the default."""
    try:
        return max(0.0, float(os.environ.get("SIMCLR_PROGRESS_SECONDS", PROGRESS_SECONDS)))
    except ValueError:
        return PROGRESS_SECONDS


def is_terminal() -> bool:
    """Whether progress goes to a terminal (a live bar) or to a file or pipe (plain lines)."""
    return get_console().is_terminal


def phase(message: str) -> None:
    """Say what a command is doing now (``loading data...``), on a terminal and in a log."""
    get_console().print(f"{message}...", markup=False, highlight=False, soft_wrap=True)


def clock(seconds: float) -> str:
    """``0:05:07`` for 307 seconds; ``-`` when unknown."""
    if not math.isfinite(seconds) or seconds < 0:
        return "-"
    whole = int(round(seconds))
    return f"{whole // 3600}:{whole // 60 % 60:02d}:{whole % 60:02d}"


class PlainLines:
    """Progress as plain lines, printed at most every :func:`progress_seconds` (and at the first
    and the last update): what a log file can hold.

    Args:
        description: what is counted (``pretrain``, ``extracting features``).
        total: the count at the end.
        completed: the count at the start (a resumed run starts part-way).
        unit: the counted thing in the line (``step``; empty for a bare ``N/M``).
    """

    def __init__(self, description: str, total: int, completed: int = 0, unit: str = "") -> None:
        self.description, self.total, self.unit = description, total, unit
        self.start_count = self.completed = completed
        self.start = time.perf_counter()
        self.last_line = -math.inf
        self.pending = ""
        self.printed: int | None = None  # the count of the last line printed
        self.interval = progress_seconds()

    def update(self, completed: int, **fields: str) -> None:
        """Record progress; print a line when one is due (never two for the same count)."""
        self.completed = completed
        now = time.perf_counter()
        self.pending = self.line(now, fields)
        first = self.last_line == -math.inf
        if first or completed >= self.total or now - self.last_line >= self.interval:
            self.emit(now)

    def emit(self, now: float) -> None:
        """Print the pending line, unless a line already showed this count: one event, one
        line (an update repeated at an epoch's end, or the close after the last update)."""
        if self.pending and self.completed != self.printed:
            get_console().print(self.pending, markup=False, highlight=False, soft_wrap=True)
            self.printed = self.completed
        self.pending = ""
        self.last_line = now

    def close(self) -> None:
        """Print the last state if it was not printed yet."""
        self.emit(time.perf_counter())

    def line(self, now: float, fields: dict[str, str]) -> str:
        """``pretrain step 20/128 (16%) epoch 1.2/8 loss 4.1 ... elapsed 0:01:02 eta 0:05:30``."""
        elapsed = now - self.start
        done = self.completed - self.start_count
        rate = done / elapsed if elapsed > 0 and done > 0 else math.nan
        eta = (self.total - self.completed) / rate if math.isfinite(rate) and rate > 0 else math.nan
        share = f" ({100 * self.completed / self.total:.0f}%)" if self.total else ""
        unit = f"{self.unit} " if self.unit else ""
        parts = [f"{self.description} {unit}{self.completed}/{self.total}{share}"]
        parts += [f"{name} {value}" for name, value in fields.items()]
        parts += [f"elapsed {clock(elapsed)}", f"eta {clock(eta)}"]
        return " ".join(parts)


class SmoothedRate:
    """An exponential moving average of a count's rate, for an ETA that does not jump with
    every window."""

    def __init__(self, completed: int = 0) -> None:
        self.completed, self.time = completed, time.perf_counter()
        self.rate: float | None = None

    def update(self, completed: int) -> float:
        """Add the rate since the last update; return the smoothed rate (per second)."""
        now = time.perf_counter()
        if completed > self.completed and now > self.time:
            rate = (completed - self.completed) / (now - self.time)
            self.rate = (
                rate
                if self.rate is None
                else (RATE_SMOOTHING * rate + (1 - RATE_SMOOTHING) * self.rate)
            )
            self.completed, self.time = completed, now
        return self.rate or math.nan


class StepProgress:
    """Progress of a loop of known length: a live bar on a terminal, plain lines elsewhere.

    On a terminal the ETA comes from a smoothed rate (:class:`SmoothedRate`); in a log, from
    the average rate since the start (:class:`PlainLines`). Fields (``epoch``, ``loss``, ...)
    are shown in the order first given. Silent off rank 0.

    Example::

        with StepProgress("pretrain", total=100, unit="step") as progress:
            progress.update(10, epoch="0.5/5", loss="4.1")
    """

    def __init__(
        self,
        description: str,
        total: int,
        completed: int = 0,
        unit: str = "",
        fields: tuple[str, ...] = (),
        transient: bool = False,
    ) -> None:
        self.total, self.fields = total, fields
        self.plain: PlainLines | None = None
        self.bar: Progress | None = None
        self.rate = SmoothedRate(completed)
        if is_terminal():
            self.bar = make_progress(*fields, "eta", transient=transient, eta=False)
            blank = dict.fromkeys(fields, "-")
            self.task = self.bar.add_task(
                description, total=total, completed=completed, **blank, eta="-"
            )
        else:
            self.plain = PlainLines(description, total, completed, unit)

    def __enter__(self) -> StepProgress:
        if self.bar is not None:
            self.bar.__enter__()
        return self

    def __exit__(self, *exc: object) -> None:
        if self.bar is not None:
            self.bar.__exit__(*exc)  # type: ignore[arg-type]
        elif self.plain is not None and exc[0] is None:
            self.plain.close()

    def update(self, completed: int, **fields: str) -> None:
        """Set the count and the shown fields."""
        if self.plain is not None:
            self.plain.update(completed, **fields)
            return
        assert self.bar is not None
        rate = self.rate.update(completed)
        eta = (self.total - completed) / rate if math.isfinite(rate) and rate > 0 else math.nan
        self.bar.update(self.task, completed=completed, eta=clock(eta), **fields)

    def advance(self, steps: int = 1) -> None:
        """Count ``steps`` more."""
        done = self.plain.completed if self.plain is not None else self.rate.completed
        if self.bar is not None:
            done = int(self.bar.tasks[0].completed)
        self.update(done + steps)
