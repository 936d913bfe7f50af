"""Stop signals: the one place that decides what SIGINT and SIGTERM do.

Two phases. From the start of a command (:func:`terminate_as_interrupt`), SIGTERM interrupts like
Ctrl-C does, so a process stopped while it starts up (importing torch, building a dataset) exits
130 with one line instead of dying by the signal. While work that can stop cleanly runs (the
training loop, a launcher waiting for its workers), :func:`stop_requests` turns the first signal
into a request the work polls, and a second one into :class:`KeyboardInterrupt`: the user does
not want to wait.
"""

from __future__ import annotations

import contextlib
import signal
import threading
from collections.abc import Iterator
from dataclasses import dataclass

STOP_SIGNALS = (signal.SIGINT, signal.SIGTERM)


class Terminated(KeyboardInterrupt):
    """SIGTERM, raised where Python raises KeyboardInterrupt for SIGINT (exit code 130)."""

    def __init__(self, signum: int = signal.SIGTERM) -> None:
        super().__init__(signal.Signals(signum).name)
        self.signum = signum


@dataclass
class StopRequest:
    """Set by the first SIGINT/SIGTERM; the work stops at its next safe point."""

    signum: int | None = None

    @property
    def requested(self) -> bool:
        """Whether a signal arrived."""
        return self.signum is not None


def _in_main_thread() -> bool:
    """Handlers can only be installed from the main thread."""
    return threading.current_thread() is threading.main_thread()


# The last SIGTERM turned into an interrupt: Typer reports every KeyboardInterrupt as Ctrl-C.
terminated: list[int] = []


def _raise_terminated(signum: int, frame: object) -> None:
    terminated.append(signum)
    raise Terminated(signum)


def interrupt_line() -> str:
    """The one line for an interrupt: which signal it was."""
    return "interrupted (SIGTERM)" if terminated else "interrupted (Ctrl-C)"


def terminate_as_interrupt() -> None:
    """Make SIGTERM raise :class:`Terminated` (a KeyboardInterrupt), as SIGINT does."""
    if _in_main_thread() and signal.getsignal(signal.SIGTERM) is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, _raise_terminated)


@contextlib.contextmanager
def stop_requests() -> Iterator[StopRequest]:
    """The first SIGINT/SIGTERM sets the request; a second one raises KeyboardInterrupt.

    The previous handlers are restored on exit.
    """
    request = StopRequest()
    if not _in_main_thread():
        yield request
        return

    def handler(signum: int, frame: object) -> None:
        if request.requested:
            raise KeyboardInterrupt  # a second signal: stop now
        request.signum = signum

    previous = {sig: signal.signal(sig, handler) for sig in STOP_SIGNALS}
    try:
        yield request
    finally:
        for sig, old in previous.items():
            signal.signal(sig, old)


def interrupt_in(error: BaseException) -> KeyboardInterrupt | None:
    """The KeyboardInterrupt under ``error`` (a library may have wrapped it), or None."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, KeyboardInterrupt):
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
