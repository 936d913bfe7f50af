"""DataLoader worker processes: the stop signals they ignore, and shutting them down.

Workers leave SIGINT and SIGTERM to the main process: a terminal's Ctrl-C, systemd, Slurm's
``scancel`` and ``kill -- -PGID`` signal every process of the group, and a worker killed by one
would make the main process fail instead of finishing its step, writing a checkpoint and
exiting 130. The price: Python's exit handler stops daemonic children with SIGTERM and waits for
them, so a worker still running at exit keeps the command from ever exiting (a persistent worker
waits for work forever). An exception's traceback keeps a loader's iterator alive past the
error, and torch's own clean-up of its workers runs only at interpreter exit, after that
handler has started.

So every loop over a loader with workers shuts them down on its way out, error or not
(:func:`worker_batches` for one pass, :func:`shut_down` for a loader's persistent workers), and
the command line, last, shuts down any a path forgot (:func:`stop_leftover_workers`).
"""

from __future__ import annotations

import contextlib
import gc
import multiprocessing
import signal
from collections.abc import Iterable, Iterator
from typing import Any


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: SIGINT and SIGTERM are left to the main process.

    Workers still end with the main process: the loops shut them down (see the module), and
    they exit when their parent dies.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


def shut_down(loader: Any) -> None:
    """Stop the workers of a loader's persistent iterator now (a no-op for any other loader)."""
    iterator = getattr(loader, "_iterator", None)
    if iterator is not None:
        _stop(iterator)
        loader._iterator = None


@contextlib.contextmanager
def worker_batches(loader: Iterable[Any]) -> Iterator[Iterator[Any]]:
    """One pass over ``loader`` whose workers are shut down when the block ends, error or not."""
    iterator = iter(loader)
    try:
        yield iterator
    finally:
        _stop(iterator)
        if getattr(loader, "_iterator", None) is iterator:  # persistent: start afresh next time
            loader._iterator = None  # type: ignore[attr-defined]


def _stop(iterator: Any) -> None:
    # torch's multi-process iterator shuts its workers down here (and removes them from its
    # SIGCHLD watch first); the single-process iterator has no workers.
    stop = getattr(iterator, "_shutdown_workers", None)
    if stop is not None:
        stop()


def stop_leftover_workers() -> None:
    """Shut down the workers of any DataLoader iterator still alive (the CLI's last step).

    A safety net for a path that did not shut its workers down: without it the command would
    hang at exit (see the module). Cheap when no worker runs; otherwise it finds the iterators
    among the live objects.
    """
    if not any(child.daemon for child in multiprocessing.active_children()):
        return
    for obj in gc.get_objects():
        if type(obj).__name__ == "_MultiProcessingDataLoaderIter":  # torch's; not imported here
            _stop(obj)
