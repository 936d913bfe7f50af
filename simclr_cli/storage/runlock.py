"""One writer per output: an exclusive lock held for the life of a command.

Two commands writing one run folder (or one set of result files) would interleave:
``metrics.jsonl`` with every step twice, a ``config.json`` of one run beside the checkpoint of
the other. A command that writes a run folder holds :func:`hold_folder` on it; one that writes
named files (``features.npy`` and its siblings, ``linear_eval.json``, an export) holds
:func:`hold_output` on its first file. A second writer is refused in one line that names the
process holding the lock.

The lock is a POSIX ``flock`` on a hidden file (``.simclr.lock`` in a run folder,
``.<file>.lock`` beside a file), which the kernel releases when the process ends, however it
ends: a ``kill -9`` leaves nothing stale. The file is removed on release. Forked children (such
as DataLoader workers) do not keep it: their copy of the descriptor is closed when they start.
On systems without ``fcntl`` (Windows) nothing is locked.
"""

from __future__ import annotations

import contextlib
import itertools
import os
from collections.abc import Iterator
from pathlib import Path

from simclr_cli.errors import OutputBusyError

try:  # POSIX
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]

FOLDER_LOCK = ".simclr.lock"

# Descriptors of the locks this process holds: closed in forked children (see the docstring).
_held: set[int] = set()


def _forget_in_child() -> None:
    for fd in list(_held):
        with contextlib.suppress(OSError):
            os.close(fd)  # the child's copy only: the parent's lock stays held
    _held.clear()


if hasattr(os, "register_at_fork"):
    os.register_at_fork(after_in_child=_forget_in_child)


@contextlib.contextmanager
def hold_folder(folder: Path, command: str, fix: str = "choose another --out") -> Iterator[None]:
    """Hold the lock of a run folder (``folder/.simclr.lock``) for the block.

    The folder is created if missing, and removed again on release if the block left it empty
    (a command refused before it wrote anything leaves no folder behind).

    Args:
        folder: the run folder.
        command: what holds it, for the message of a second writer (``"simclr pretrain"``).
        fix: the end of that message: what the second writer can do instead.

    Raises:
        OutputBusyError: another process holds the lock (its pid and command named).
        OSError: the folder cannot be created or written (the CLI names it in one line).
    """
    with _made(folder), _locked(folder / FOLDER_LOCK, folder, command, fix):
        yield


@contextlib.contextmanager
def hold_output(path: Path, command: str, fix: str = "choose another --out") -> Iterator[None]:
    """Hold the lock of an output file and the files written with it (``.<name>.lock`` beside
    ``path``) for the block; its folder is made and removed as :func:`hold_folder` does.

    Raises:
        OutputBusyError: another process holds the lock (its pid and command named).
        OSError: the folder cannot be created or written.
    """
    with _made(path.parent), _locked(path.with_name(f".{path.name}.lock"), path, command, fix):
        yield


@contextlib.contextmanager
def _made(folder: Path) -> Iterator[None]:
    """``folder``, created with its missing parents; those the block left empty are removed."""
    missing = list(itertools.takewhile(lambda p: not p.exists(), (folder, *folder.parents)))
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    finally:
        for made in missing:  # deepest first
            try:
                made.rmdir()
            except OSError:  # not empty: it holds what the command wrote
                break


@contextlib.contextmanager
def _locked(lock: Path, shown: Path, command: str, fix: str) -> Iterator[None]:
    """Take ``lock`` without waiting, write our pid and command into it, release it on exit."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    fd = _acquire(lock, shown, command, fix)
    _held.add(fd)
    try:
        os.ftruncate(fd, 0)
        os.write(fd, f"{os.getpid()} {command}\n".encode())
        yield
    finally:
        # Removed while still held: a process that opened it meanwhile finds, once it holds
        # its lock, that the path names another file (or none) and locks the path afresh.
        with contextlib.suppress(OSError):
            lock.unlink()
        _held.discard(fd)
        os.close(fd)  # releases the flock


def _acquire(lock: Path, shown: Path, command: str, fix: str) -> int:
    """An open descriptor of ``lock`` that holds its flock, or OutputBusyError."""
    while True:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o666)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise OutputBusyError(
                f"{shown} is being written by another process ({holder}); wait for it to "
                f"finish, or {fix}"
            ) from None
        except BaseException:
            os.close(fd)
            raise
        if _same_file(fd, lock):
            return fd
        os.close(fd)  # the holder removed this file on release: lock the one at the path now


def _holder(fd: int) -> str:
    """``pid 1234: simclr pretrain``, as the holder wrote it (it may not have yet)."""
    with contextlib.suppress(OSError, UnicodeDecodeError):
        text = os.pread(fd, 512, 0).decode().strip()
        pid, _, command = text.partition(" ")
        if pid.isdigit():
            return f"pid {pid}: {command}" if command else f"pid {pid}"
    return "its pid not yet written"


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.path.samestat(os.fstat(fd), path.stat())
    except OSError:
        return False
