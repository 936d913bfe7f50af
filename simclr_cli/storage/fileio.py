"""Atomic file writes: the one implementation every writer of the package uses.

A file is written to a temporary file in its destination folder, flushed and fsync'ed, then
renamed over the destination (``os.replace`` is atomic on POSIX and Windows) and the folder is
fsync'ed so the rename survives a power loss. A reader sees the old file or the complete new one,
never a mix, and the temporary file is removed on any failure.

Temporary files are named ``.<name>.<pid>-<random>.tmp``: a process killed mid-write (kill -9,
power loss) cannot remove its own, so :func:`remove_dead_temps` removes those of processes that
no longer run, and never those of a live writer.

Errors of the file system (a full disk, no permission, a read-only mount) become one
:class:`~simclr_cli.errors.WriteError` line that names the destination and the fix, also when a
library replaced the ``OSError`` on its way out (torch's zip writer raises a ``RuntimeError``).
New files get the mode the umask allows (``0644`` under the usual ``022``), like any file the
user creates.
"""

from __future__ import annotations

import contextlib
import errno
import json
import os
import re
import secrets
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import IO, Any

from simclr_cli import signals
from simclr_cli.errors import OutputExistsError, WriteError, os_error_fix

TEMP_SUFFIX = ".tmp"
# Temporaries without a pid (written by simclr-cli before 0.x): dead once untouched this long.
_LEGACY_STALE_S = 60.0
_TEMP_PATTERN = re.compile(r"^\..+\.(\d+)-[0-9a-f]+\.tmp$")


# --------------------------------------------------------------------------------------------
# temporaries


def temp_path(path: str | os.PathLike[str]) -> Path:
    """Create an empty temporary file next to ``path`` (mode from the umask) and return it.

    Args:
        path: the destination the temporary file will be renamed to.

    Raises:
        WriteError: the folder cannot be written.
    """
    path = Path(path)
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        while True:
            tmp = path.with_name(f".{path.name}.{os.getpid()}-{secrets.token_hex(4)}{TEMP_SUFFIX}")
            try:
                # 0o666 & ~umask, as open() gives: mkstemp's 0600 hid results from colleagues.
                os.close(os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666))
                return tmp
            except FileExistsError:  # 32 random bits collided: draw again
                continue
    except OSError as error:
        raise write_error(path, error) from None


def check_writable(path: str | os.PathLike[str]) -> None:
    """Fail now, before any work, where ``path`` could not be written later; leave nothing
    behind (a probe file beside it, and the folders made for it, are removed again).

    Raises:
        WriteError: the folder cannot be created or written.
    """
    path = Path(path)
    missing = [p for p in path.parents if not p.exists()]  # deepest first
    try:
        temp_path(path).unlink()
    finally:
        for created in missing:
            with contextlib.suppress(OSError):
                created.rmdir()


def commit(tmp: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """fsync ``tmp``, rename it over ``path`` and fsync the folder; ``tmp`` is gone afterwards.

    Raises:
        WriteError: the rename or the sync failed (``tmp`` is removed).
    """
    tmp, path = Path(tmp), Path(path)
    try:
        with open(tmp, "rb+") as handle:
            os.fsync(handle.fileno())
        os.replace(tmp, path)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_error(path, error) from None
    fsync_dir(path.parent)
    return path


def remove_dead_temps(folder: str | os.PathLike[str]) -> list[Path]:
    """Remove the temporaries that killed writers left in ``folder``; return what was removed.

    A temporary whose pid is not a running process is dead. A pid-less one (an older version)
    counts as dead once untouched for a minute. Temporaries of live processes stay.
    """
    removed = []
    folder = Path(folder)
    if not folder.is_dir():
        return removed
    for tmp in folder.glob(f".*{TEMP_SUFFIX}"):
        if _is_dead_temp(tmp):
            with contextlib.suppress(OSError):  # another process may remove it first
                tmp.unlink()
                removed.append(tmp)
    return removed


def _is_dead_temp(tmp: Path) -> bool:
    match = _TEMP_PATTERN.match(tmp.name)
    if match is not None:
        return not pid_alive(int(match.group(1)))
    try:
        return time.time() - tmp.stat().st_mtime > _LEGACY_STALE_S
    except OSError:
        return False


def pid_alive(pid: int) -> bool:
    """Whether a process with this pid exists (signal 0 checks without signalling)."""
    if pid == os.getpid():
        return True
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # it exists, owned by someone else
        return True
    except OSError:
        return False
    return True


def refuse_overwrite(
    folder: str | os.PathLike[str], names: tuple[str, ...], overwrite: bool
) -> None:
    """The one overwrite rule of the commands that write results (``features``, ``linear-eval``):
    earlier results are replaced only with ``--overwrite``; checked before the work starts.

    Raises:
        OutputExistsError: one of ``names`` exists in ``folder`` and ``overwrite`` is off.
    """
    existing = [name for name in names if (Path(folder) / name).exists()]
    if existing and not overwrite:
        raise OutputExistsError(
            f"{folder} already holds {', '.join(existing)}; pass --overwrite to replace them "
            "or choose another --out"
        )


# --------------------------------------------------------------------------------------------
# writers


def link_or_copy(source: str | os.PathLike[str], path: str | os.PathLike[str]) -> Path:
    """Make ``path`` a second name of the complete file ``source``, atomically: a hard link (no
    second copy on disk), or a copy where the file system has no links.

    Later atomic writes of ``source`` rename a new file over its name and leave the inode that
    ``path`` names untouched, so the two names stop sharing data instead of both changing.

    Raises:
        WriteError: neither a link nor a copy could be made (the temporary name is removed).
    """
    source, path = Path(source), Path(path)
    tmp = temp_path(path)
    try:
        tmp.unlink()  # the reserved name, for the link to take
        try:
            os.link(source, tmp)
        except OSError:  # FAT, some network mounts: no hard links
            shutil.copyfile(source, tmp)
    except OSError as error:
        tmp.unlink(missing_ok=True)
        raise write_error(path, error) from None
    return commit(tmp, path)


@contextlib.contextmanager
def atomic_write(
    path: str | os.PathLike[str], mode: str = "wb", encoding: str | None = None
) -> Iterator[IO[Any]]:
    """Open a temporary file for writing; on success it replaces ``path`` atomically.

    Args:
        path: the destination.
        mode: ``"wb"`` or ``"w"``.
        encoding: for text mode (default UTF-8).

    Raises:
        WriteError: a file-system error while writing (the temporary file is removed).
    """
    path = Path(path)
    tmp = temp_path(path)
    try:
        with write_errors_of(path), open(tmp, mode, encoding=_encoding(mode, encoding)) as f:
            yield f
        # commit() fsyncs through a fresh descriptor: once per file, not twice.
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise
    commit(tmp, path)


def _encoding(mode: str, encoding: str | None) -> str | None:
    return None if "b" in mode else encoding or "utf-8"


@contextlib.contextmanager
def write_errors_of(path: str | os.PathLike[str]) -> Iterator[None]:
    """Turn a file-system error while writing ``path`` into one :class:`WriteError` line.

    Also an OSError that a library replaced on its way out (torch's zip writer raises a
    RuntimeError whose context is the OSError); likewise a KeyboardInterrupt it wrapped is
    raised as itself. Other errors pass unchanged.
    """
    try:
        yield
    except (WriteError, KeyboardInterrupt):
        raise
    except BaseException as error:
        interrupt = signals.interrupt_in(error)
        if interrupt is not None:  # a second Ctrl-C inside torch's writer: still an interrupt
            raise interrupt from None
        cause = _os_error_in(error)
        if cause is None or os_error_fix(cause) is None:
            raise
        raise write_error(Path(path), cause) from None


def write_bytes_atomic(path: str | os.PathLike[str], data: bytes) -> Path:
    """Replace ``path`` with ``data`` atomically."""
    with atomic_write(path, "wb") as f:
        f.write(data)
    return Path(path)


def write_text_atomic(path: str | os.PathLike[str], text: str) -> Path:
    """Replace ``path`` with ``text`` (UTF-8) atomically."""
    with atomic_write(path, "w") as f:
        f.write(text)
    return Path(path)


def write_json_atomic(path: str | os.PathLike[str], obj: Any) -> Path:
    """Replace ``path`` with ``obj`` as indented, key-sorted JSON atomically."""
    return write_text_atomic(path, json.dumps(obj, indent=2, sort_keys=True) + "\n")


def append_line(path: str | os.PathLike[str], line: str) -> None:
    """Append one line to a log file (not atomic: a kill may cut the last line; readers skip it).

    Raises:
        WriteError: the disk is full, or the file cannot be written.
    """
    with write_errors_of(path), open(path, "a", encoding="utf-8") as f:
        f.write(line + "\n")


def fsync_dir(folder: str | os.PathLike[str]) -> None:
    """Flush a directory entry (a rename) to disk; a no-op where directories cannot be opened."""
    try:
        fd = os.open(folder, os.O_RDONLY)
    except OSError:  # Windows cannot open directories
        return
    try:
        os.fsync(fd)
    except OSError:
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------------------------
# errors


def write_error(path: Path, error: OSError) -> WriteError:
    """The one line for a failed write of ``path``: what happened and what to do."""
    fix = os_error_fix(error) or "check the folder, or choose another path"
    reason = error.strerror or os.strerror(error.errno or errno.EIO)
    return WriteError(f"cannot write {path}: {reason}; {fix}")


def _os_error_in(error: BaseException) -> OSError | None:
    """The OSError under ``error``: itself, or its cause/context (torch wraps write errors)."""
    seen: set[int] = set()
    current: BaseException | None = error
    while current is not None and id(current) not in seen:
        if isinstance(current, OSError) and current.errno is not None:
            return current
        seen.add(id(current))
        current = current.__cause__ or current.__context__
    return None
