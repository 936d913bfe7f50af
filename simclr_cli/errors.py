"""User-facing errors.

Every error a user can cause or fix derives from :class:`SimCLRError`. The CLI prints
``str(error)`` as one line on stderr and exits with ``error.exit_code``; library code
raises these instead of printing. Programmer mistakes stay ``assert``/``TypeError``.
"""

from __future__ import annotations

import errno
import importlib
from pathlib import PurePath
from types import ModuleType


def invalid_value(option: str, value: object, allowed: str) -> str:
    """The line for a bad option value: ``--flag: invalid value 'x'; what is allowed``.

    Paths are shown as text ('runs/x'), not as ``PosixPath('runs/x')``.
    """
    shown = str(value) if isinstance(value, PurePath) else value
    return f"{option}: invalid value {shown!r}; {allowed}"


def plural(count: int, noun: str) -> str:
    """``1 training image``, ``2 training images``: a count with its noun."""
    return f"{count} {noun}" if count == 1 else f"{count} {noun}s"


class SimCLRError(Exception):
    """A failure the user can act on; the message names the problem and the fix."""

    exit_code: int = 1


class UsageError(SimCLRError):
    """An invalid option value, found after argument parsing (exit code 2)."""

    exit_code = 2

    def __init__(self, option: str, value: object, allowed: str) -> None:
        self.option = option
        self.value = value
        self.allowed = allowed
        super().__init__(invalid_value(option, value, allowed))


class DatasetError(SimCLRError):
    """A dataset is missing, empty, unreadable or cannot be downloaded."""


class CheckpointError(SimCLRError):
    """A checkpoint is missing, corrupt, unsafe or of the wrong kind.

    Attributes:
        problem: what is wrong with the file, without its path or advice, for callers that
            name the file and the fix in their own words (``download --from-file``).
    """

    def __init__(self, message: str, problem: str | None = None) -> None:
        super().__init__(message)
        self.problem = problem or message


class ResumeConflictError(CheckpointError):
    """A flag given to a resume disagrees with the run it continues: a bad option value, so
    exit code 2 like every other."""

    exit_code = 2


class DownloadError(SimCLRError):
    """A download failed, was truncated or did not verify."""


class DistributedError(SimCLRError):
    """A distributed run could not start, or a worker failed."""


class TrainingError(SimCLRError):
    """Training cannot continue (e.g. a non-finite loss)."""


class OutputExistsError(SimCLRError):
    """An output file exists and ``--overwrite`` was not given."""


class OutputBusyError(SimCLRError):
    """Another process is writing the same run folder or output files."""


class WriteError(SimCLRError):
    """An output file could not be written (a full disk, no permission, a read-only mount)."""


class MissingExtraError(SimCLRError):
    """An optional package is not installed; the message names the extra that provides it."""


class ExportError(SimCLRError):
    """An exported model could not be written or did not reproduce the checkpoint."""


def import_extra(module: str, extra: str, purpose: str) -> ModuleType:
    """Import an optional dependency, or fail with the one line that says how to install it.

    Args:
        module: the module to import (``"onnx"``, ``"matplotlib"``, ...).
        extra: the simclr-cli extra that installs it (``"export"``, ``"plots"``).
        purpose: what needs it, for the message (``"--format onnx"``).

    Raises:
        MissingExtraError: ``module`` cannot be imported.
    """
    try:
        return importlib.import_module(module)
    except ImportError:
        raise MissingExtraError(
            f"{purpose} needs the {module.split('.')[0]} package, which is not installed; "
            f"install the extra with: pip install 'simclr-cli[{extra}]'"
        ) from None


# What to do about a file-system error, by errno (the errors a user's machine causes).
_OS_FIXES = {
    errno.ENOENT: "check that the folder exists, or choose another path",
    errno.ENOTDIR: "a part of that path is a file, not a folder; choose another path",
    errno.EISDIR: "that is a folder; give a file",
    errno.EACCES: "check its permissions, or choose another path",
    errno.EPERM: "check its permissions, or choose another path",
    errno.EROFS: "that file system is read-only; choose another path",
    errno.ENOSPC: "free some space, or write somewhere else",
}
if hasattr(errno, "EDQUOT"):  # disk quota exceeded (not defined everywhere)
    _OS_FIXES[errno.EDQUOT] = _OS_FIXES[errno.ENOSPC]


def os_error_fix(error: OSError) -> str | None:
    """What to do about a file-system error the user can fix, or None (a bug)."""
    return _OS_FIXES.get(error.errno) if error.errno is not None else None


def os_error_line(error: OSError) -> str | None:
    """One line for a file-system error the user can fix (a path that does not exist, no
    permission, a full disk), or None for any other OSError (a bug: keep its traceback)."""
    fix = os_error_fix(error)
    if fix is None:
        return None
    where = ""
    if error.filename is not None:
        where = f": {error.filename}"
        if error.filename2 is not None:
            where += f" -> {error.filename2}"
    return f"{error.strerror or 'file system error'}{where}; {fix}"


class Interrupted(SimCLRError):
    """SIGINT/SIGTERM stopped the run after a checkpoint was written (exit code 130)."""

    exit_code = 130


# ----------------------------------------------------------------------------------------------
# entry points
