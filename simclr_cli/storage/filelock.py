"""An exclusive lock file (POSIX ``flock``) that serialises processes writing one cache file.

Used by :mod:`simclr_cli.storage.hub` so that two downloads of the same checkpoint, or two updates
of the
cache manifest, do not interleave. On systems without ``fcntl`` (Windows) nothing is serialised.
"""

from __future__ import annotations

import contextlib
import os
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from simclr_cli.errors import DownloadError

try:  # POSIX; on Windows downloads of the same file are not serialised
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]


@contextlib.contextmanager
def locked(
    lock_path: Path, timeout: float, on_wait: Callable[[], None] | None = None
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; call ``on_wait`` once if another process
    holds it.

    The lock file is removed when released (a failed download leaves no empty file behind).
    Removal is safe because a waiter re-checks, once it holds the lock, that the path still
    names the file it locked; if not, it locks the new file instead.

    Args:
        lock_path: the lock file (created when missing).
        timeout: seconds to wait for another holder.
        on_wait: called the first time the lock is found taken (e.g. to say so).

    Raises:
        DownloadError: another process held the lock for ``timeout`` seconds.
    """
    if fcntl is None:  # pragma: no cover
        yield
        return
    deadline = time.monotonic() + timeout
    waiting = False
    while True:
        f = lock_path.open("a")
        try:
            waiting = _acquire(f, lock_path, timeout, on_wait, deadline, waiting)
            if _same_file(f, lock_path):
                break
        except BaseException:
            f.close()
            raise
        f.close()  # the holder removed this file: lock the one now at the path
    try:
        yield
    finally:
        lock_path.unlink(missing_ok=True)  # while still holding it: see the docstring
        fcntl.flock(f.fileno(), fcntl.LOCK_UN)
        f.close()


def _acquire(
    f: Any,
    lock_path: Path,
    timeout: float,
    on_wait: Callable[[], None] | None,
    deadline: float,
    waiting: bool,
) -> bool:
    """Block (polling) until ``f`` is locked; return whether we had to wait."""
    while True:
        try:
            fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
            return waiting
        except BlockingIOError:
            if not waiting and on_wait is not None:
                on_wait()
            waiting = True
            if time.monotonic() > deadline:
                raise DownloadError(
                    f"another process has held {lock_path} for {timeout:.0f} "
                    "s; if no download is running, delete that file and retry"
                ) from None
            time.sleep(0.05)


def _same_file(f: Any, path: Path) -> bool:
    """Whether the open file ``f`` is still the file at ``path``."""
    try:
        return os.path.samestat(os.fstat(f.fileno()), path.stat())
    except OSError:
        return False
