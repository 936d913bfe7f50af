"""HTTP download of one file into a partial file: resume, retries, length check, progress.

:func:`fetch` streams a URL into a ``.part`` file while hashing it, resumes a partial file with
an HTTP ``Range`` request, retries transient failures (timeouts, dropped connections, 5xx
responses) with exponential backoff and checks the length the server announced. A host name
that does not resolve and a refused connection fail at once: offline, or with a wrong host or
port, waiting changes nothing. Verifying the hash and the checkpoint, and moving the
file into the cache, is :mod:`simclr_cli.storage.hub`'s job.
"""

from __future__ import annotations

import hashlib
import os
import re
import socket
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import requests
from rich.console import Console
from rich.progress import (
    BarColumn,
    DownloadColumn,
    Progress,
    TextColumn,
    TimeRemainingColumn,
    TransferSpeedColumn,
)

from simclr_cli.errors import DownloadError


@dataclass(frozen=True)
class DownloadSettings:
    """Network knobs; tests shrink them."""

    connect_timeout: float = 10.0  # seconds to open the connection
    read_timeout: float = 60.0  # seconds without a byte before giving up on a read
    retries: int = 4  # extra attempts after connection errors and 5xx responses
    backoff: float = 1.0  # seconds before the first retry; doubles after each
    chunk_size: int = 1 << 20
    lock_timeout: float = 3600.0  # seconds to wait for another download of the same file


DEFAULT_SETTINGS = DownloadSettings()


class _Retry(Exception):
    """A transient failure: the next attempt resumes from the partial file."""


class _Unreachable(Exception):
    """The host name does not resolve, or the host refuses the connection: no retry helps."""


def fetch(
    url: str, part: Path, settings: DownloadSettings, progress: bool, hint: str, label: str
) -> tuple[str, int]:
    """Download ``url`` into ``part`` with retries and resume.

    Args:
        url: an http(s) URL.
        part: the partial file; bytes already in it are resumed from.
        settings: timeouts, retries and backoff.
        progress: show a progress bar and retry messages on stderr.
        hint: the offline fallback, appended to errors.
        label: the progress bar's description.

    Returns:
        The sha256 (hex) and size of the whole file.

    Raises:
        DownloadError: the server refused, or every attempt failed (one line, with ``hint``).
    """
    attempt = 0
    with _progress_bar(progress) as bar, requests.Session() as session:
        task = _LazyTask(bar, label, progress)
        while True:
            try:
                result = _attempt(session, url, part, settings, task, hint)
                task.close()
                return result
            except OSError as e:  # writing the part file (requests' errors are handled inside)
                raise DownloadError(
                    f"cannot write {part} ({e.strerror or e}); free disk space or choose "
                    "another --cache-dir"
                ) from None
            except _Unreachable as e:
                raise DownloadError(f"download of {url} failed ({e}); {hint}") from None
            except _Retry as e:
                attempt += 1
                if attempt > settings.retries:
                    raise DownloadError(
                        f"download of {url} failed after {attempt} attempts ({e}); {hint}"
                    ) from None
                delay = settings.backoff * 2 ** (attempt - 1)
                say(progress, f"{e}; retrying in {delay:.1f} s")
                time.sleep(delay)


def sha256_of(path: Path) -> Any:
    """A sha256 hash object fed with the whole file (call ``.hexdigest()``, or keep updating)."""
    digest = hashlib.sha256()
    with path.open("rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest


class _LazyTask:
    """A progress-bar row that appears on its first update, so that a download that never got
    an answer leaves no empty ``0/? bytes`` row above its error. Off a terminal (a log file),
    plain lines instead (:class:`~simclr_cli.console.PlainLines`: one every 30 s and the last).
    """

    def __init__(self, bar: Progress, description: str, enabled: bool) -> None:
        self.bar, self.description, self.enabled = bar, description, enabled
        self.task: Any = None
        self.plain: Any = None

    def update(self, **fields: Any) -> None:
        """Create the row on first use, then update it."""
        if self.bar.disable:  # no terminal (or no progress wanted)
            self._plain_update(**fields)
            return
        if self.task is None:
            self.task = self.bar.add_task(self.description, total=fields.get("total"))
        self.bar.update(self.task, **fields)

    def _plain_update(self, total: int | None = None, completed: int | None = None) -> None:
        from simclr_cli.console import PlainLines

        if not self.enabled:
            return
        if self.plain is None or total is not None:  # a new attempt announces its length
            start = completed or 0  # a resumed part file: the rate counts the new bytes only
            self.plain = PlainLines(f"downloading {self.description}", total or 0, start, "bytes")
        if completed is not None:
            self.plain.update(completed)

    def close(self) -> None:
        """The last plain line of a download that went well (a bar needs nothing)."""
        if self.plain is not None:
            self.plain.close()


def _connection_problem(error: BaseException, url: str) -> tuple[str, bool]:
    """What went wrong under a requests connection error, in words, and whether a retry may
    help: the root cause is buried in urllib3's exception chain (a failed DNS lookup or a
    refused connection, which no retry mends; a timeout or a reset, which one may)."""
    request = getattr(error, "request", None)  # after a redirect: the host that failed
    host = urlsplit(getattr(request, "url", None) or url).hostname or url
    pending: list[object] = [error]
    seen: set[int] = set()
    while pending:
        cause = pending.pop()
        if not isinstance(cause, BaseException) or id(cause) in seen:
            continue
        seen.add(id(cause))
        if isinstance(cause, socket.gaierror):
            return f"cannot resolve {host} (no network, or no DNS)", False
        if isinstance(cause, ConnectionRefusedError):
            return f"{host} refused the connection (nothing listens on that port)", False
        if isinstance(cause, (TimeoutError, requests.Timeout)):
            return f"{host} did not answer in time", True
        # requests wraps urllib3's MaxRetryError (in args), which holds the cause in .reason.
        pending += [cause.__cause__, cause.__context__, getattr(cause, "reason", None)]
        pending += list(cause.args)
    return type(error).__name__, True


def _attempt(
    session: requests.Session,
    url: str,
    part: Path,
    settings: DownloadSettings,
    task: _LazyTask,
    hint: str,
) -> tuple[str, int]:
    """One GET: resume from ``part`` when it has bytes, stream, hash, check the length."""
    offset = part.stat().st_size if part.is_file() else 0
    # identity: the Content-Length must count the bytes written (no transparent gzip).
    headers = {"Accept-Encoding": "identity"}
    if offset:
        headers["Range"] = f"bytes={offset}-"
    try:
        response = session.get(
            url,
            headers=headers,
            stream=True,
            timeout=(settings.connect_timeout, settings.read_timeout),
        )
    except (requests.ConnectionError, requests.Timeout) as e:
        problem, transient = _connection_problem(e, url)
        if not transient:
            raise _Unreachable(problem) from None
        raise _Retry(f"connection failed: {problem}") from None
    except requests.RequestException as e:  # invalid URL, redirect loop, ...
        raise DownloadError(f"request to {url} failed ({type(e).__name__}); {hint}") from None
    with response:
        offset = _check_status(response, url, part, offset, hint)
        # On resume the hash must cover the bytes already on disk.
        digest = sha256_of(part) if offset else hashlib.sha256()
        total = _expected_total(response, offset)
        task.update(total=total, completed=offset)  # the bar appears once bytes can come
        size = _stream(response, part, offset, digest, settings, task)
    if total is not None and size != total:
        raise _Retry(f"connection closed early: got {size} of {total} bytes")
    return digest.hexdigest(), size


def _check_status(response: requests.Response, url: str, part: Path, offset: int, hint: str) -> int:
    """Map the status to an offset to resume from (0 when the server ignored Range)."""
    status = response.status_code
    if status == 206:
        first = re.match(r"bytes (\d+)-", response.headers.get("Content-Range", ""))
        if first and int(first.group(1)) == offset:
            return offset
        part.unlink(missing_ok=True)
        raise _Retry("server answered the resume request with another range")
    if status == 200:
        return 0  # a full body (also when the server ignores Range): start over
    if status == 416:  # the partial file is not a prefix of the remote file
        part.unlink(missing_ok=True)
        raise _Retry("server rejected the resume range")
    if status >= 500:
        raise _Retry(f"HTTP {status} from server")
    raise DownloadError(f"HTTP {status} for {url}; check the name or URL, or {hint}")


def _expected_total(response: requests.Response, offset: int) -> int | None:
    total = re.search(r"/(\d+)$", response.headers.get("Content-Range", ""))
    if total:
        return int(total.group(1))
    length = response.headers.get("Content-Length")
    return offset + int(length) if length and length.isdigit() else None


def _stream(
    response: requests.Response,
    part: Path,
    offset: int,
    digest: Any,
    settings: DownloadSettings,
    task: _LazyTask,
) -> int:
    """Append the body to ``part`` (truncated to ``offset``); keep what arrived on errors."""
    size = offset
    with part.open("r+b" if offset else "wb") as f:
        f.seek(offset)
        f.truncate()
        try:
            for chunk in response.iter_content(chunk_size=settings.chunk_size):
                f.write(chunk)
                digest.update(chunk)
                size += len(chunk)
                task.update(completed=size)
        except (requests.RequestException, ConnectionError):
            # ChunkedEncodingError / ProtocolError / read timeout: keep the bytes, resume later.
            raise _Retry(f"connection lost after {size} bytes") from None
        finally:
            f.flush()
            os.fsync(f.fileno())
    return size


# --------------------------------------------------------------------------------------------
# Output
# --------------------------------------------------------------------------------------------


def _progress_bar(enabled: bool) -> Progress:
    """Bytes, speed and ETA on stderr; disabled off a terminal, where a bar would leave a blank
    line in the log (:class:`_LazyTask` prints plain lines there)."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_console(),
        disable=not (enabled and _console().is_terminal),
        transient=False,
    )


def _console() -> Console:
    from simclr_cli.console import get_console

    return get_console()


def say(enabled: bool, message: str) -> None:
    """Print a download message on stderr (rank 0) when ``enabled``.

    Args:
        enabled: the caller's ``progress`` flag.
        message: one line.
    """
    if enabled:
        _console().print(message, highlight=False)
