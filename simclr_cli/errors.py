"""User-facing errors.

Every error a user can cause or fix derives from :class:`SimCLRError`. The CLI prints
``str(error)`` as one line on stderr and exits with ``error.exit_code``; library code
raises these instead of printing. Programmer mistakes stay ``assert``/``TypeError``.
"""

from __future__ import annotations

from pathlib import PurePath


def invalid_value(option: str, value: object, allowed: str) -> str:
    """The line for a bad option value: ``--flag: invalid value 'x'; what is allowed``.

    Paths are shown as text ('runs/x'), not as ``PosixPath('runs/x')``.
    """
    shown = str(value) if isinstance(value, PurePath) else value
    return f"{option}: invalid value {shown!r}; {allowed}"


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
    """A checkpoint is missing, corrupt, unsafe or of the wrong kind."""


class DownloadError(SimCLRError):
    """A download failed, was truncated or did not verify."""


class DistributedError(SimCLRError):
    """A distributed run could not start, or a worker failed."""


class TrainingError(SimCLRError):
    """Training cannot continue (e.g. a non-finite loss)."""


class OutputExistsError(SimCLRError):
    """An output file exists and ``--overwrite`` was not given."""
