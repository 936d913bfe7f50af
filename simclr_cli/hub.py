"""Release checkpoints: a declarative registry and verified, resumable downloads into a cache.

``download`` streams a file over http(s) into ``<cache>/<name>.part`` while hashing it, resumes a
partial file with an HTTP ``Range`` request, retries connection errors and 5xx responses with
exponential backoff, checks the length and sha256, validates that the file loads as a checkpoint
(weights only) and only then renames it into the cache. A lock file serialises concurrent
downloads of the same file; the cache manifest records each file's sha256 on first download so
later downloads are verified against it.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import re
import socket
import tempfile
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from types import MappingProxyType
from typing import Any
from urllib.parse import unquote, urlsplit

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

from simclr_cli.checkpoint import fsync_dir, load_checkpoint
from simclr_cli.errors import CheckpointError, DownloadError, UsageError

try:  # POSIX; on Windows downloads of the same file are not serialised
    import fcntl
except ImportError:  # pragma: no cover - exercised only on Windows
    fcntl = None  # type: ignore[assignment]

MANIFEST = "manifest.json"
_PART = ".part"
_LOCK = ".lock"


# --------------------------------------------------------------------------------------------
# Registry
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Published:
    """An accuracy published with a release, and how it was measured."""

    dataset: str
    top1: float | None
    protocol: str
    source: str


@dataclass(frozen=True)
class RegistryEntry:
    """A release checkpoint: where it lives and what model it holds."""

    name: str
    url: str
    arch: str
    epochs: int
    hidden_dim: int
    projection_dim: int
    head_bias: bool
    batch_size: int
    optimizer: str
    published: Published
    sha256: str | None = None  # verified when set; otherwise recorded in the cache manifest
    dataset: str = "stl10 (unlabeled)"
    image_size: int = 96

    @property
    def filename(self) -> str:
        """File name in the cache."""
        return f"{self.name}.tar"

    @property
    def head(self) -> str:
        """Head dims, e.g. ``2048-2048-64 without bias``."""
        feature_dim = 2048 if self.arch.startswith(("resnet50", "resnet101", "wide")) else 512
        bias = "with bias" if self.head_bias else "without bias"
        return f"{feature_dim}-{self.hidden_dim}-{self.projection_dim} {bias}"


_RELEASES = "https://github.com/Spijkervet/SimCLR/releases/download"
_README = "Spijkervet/SimCLR README, 'Pre-trained models' table (commit 89af1a8)"
_PROTOCOL = (
    "logistic regression (Adam) trained on frozen encoder features h of the STL-10 train split "
    "at 96 px, top-1 on the STL-10 test split (upstream testing/logistic_regression.py)"
)

REGISTRY: Mapping[str, RegistryEntry] = MappingProxyType(
    {
        e.name: e
        for e in (
            RegistryEntry(
                name="resnet50-stl10",
                url=f"{_RELEASES}/1.2/checkpoint_100.tar",
                arch="resnet50",
                epochs=100,
                hidden_dim=2048,
                projection_dim=64,
                head_bias=False,
                batch_size=256,
                optimizer="adam",
                # An older README revision lists 0.791 for the same file.
                published=Published("stl10", 0.829, _PROTOCOL, _README),
            ),
            RegistryEntry(
                name="resnet18-stl10",
                url=f"{_RELEASES}/1.1/checkpoint_100.tar",
                arch="resnet18",
                epochs=100,
                hidden_dim=512,
                projection_dim=64,
                head_bias=False,
                batch_size=256,
                optimizer="adam",
                published=Published("stl10", 0.765, _PROTOCOL, _README),
            ),
            RegistryEntry(
                name="resnet18-stl10-40ep",
                url=f"{_RELEASES}/1.0/checkpoint_40.tar",
                arch="resnet18",
                epochs=40,
                hidden_dim=512,
                projection_dim=64,
                head_bias=True,
                batch_size=256,
                optimizer="adam",
                published=Published("stl10", 0.719, _PROTOCOL, _README),
            ),
        )
    }
)


# --------------------------------------------------------------------------------------------
# Download settings
# --------------------------------------------------------------------------------------------


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


@dataclass(frozen=True)
class _Target:
    """What to fetch and where it goes."""

    url: str
    filename: str
    sha256: str | None  # from the registry: always verified
    name: str | None  # registry name, if any


class _Retry(Exception):
    """A transient failure: the next attempt resumes from the partial file."""


# --------------------------------------------------------------------------------------------
# Public API
# --------------------------------------------------------------------------------------------


def download(
    name_or_url: str,
    cache_dir: str | os.PathLike[str],
    force: bool = False,
    from_file: str | os.PathLike[str] | None = None,
    progress: bool = True,
    settings: DownloadSettings = DEFAULT_SETTINGS,
) -> Path:
    """Fetch a release checkpoint (registry name) or an http(s) URL into the cache.

    Args:
        name_or_url: a :data:`REGISTRY` name or an http(s) URL.
        cache_dir: the cache folder (created when missing); nothing is written outside it.
        force: download again even when the file is cached (the old file stays until the new
            one is verified).
        from_file: import this local file instead of downloading (for offline machines).
        progress: show a progress bar and messages on stderr.
        settings: timeouts, retries and backoff.

    Returns:
        The path of the verified file in the cache.

    Raises:
        UsageError: ``name_or_url`` is neither a registry name nor an http(s) URL.
        DownloadError: the download failed, was truncated or did not match its sha256.
        CheckpointError: the file is not a usable checkpoint (it is removed from the cache).
    """
    target = _target(name_or_url)
    cache = _make_cache(cache_dir)
    dest = cache / target.filename
    assert dest.parent == cache, dest  # filenames are sanitised; never write outside the cache
    with _locked(cache / f".{target.filename}{_LOCK}", target, settings, progress):
        if from_file is not None:
            return _import_file(Path(from_file), target, dest, force, progress)
        if dest.is_file() and not force and _cached_ok(dest, target):
            _say(progress, f"{target.filename} is already cached: {dest} (--force re-downloads)")
            return dest
        part = dest.with_name(dest.name + _PART)
        if force:
            part.unlink(missing_ok=True)
        digest, size = _fetch(target, part, settings, progress)
        _install(part, dest, target, digest, size, source=target.url)
    _say(progress, f"saved {target.filename} ({_human(size)}) to {dest}")
    return dest


def resolve_checkpoint(
    path_or_name: str | os.PathLike[str], cache_dir: str | os.PathLike[str], progress: bool = True
) -> Path:
    """Turn ``--checkpoint`` into a file: a path, a run folder, a registry name or a URL.

    Args:
        path_or_name: an existing file, a run folder holding ``checkpoint_last.pt``, a
            :data:`REGISTRY` name (downloaded on first use) or an http(s) URL.
        cache_dir: the cache folder.
        progress: show download progress on stderr.

    Returns:
        The checkpoint file.

    Raises:
        CheckpointError: nothing matches; the message lists the release names.
    """
    text = str(path_or_name)
    path = Path(text).expanduser()
    if path.is_file():
        return path
    if path.is_dir() and (path / "checkpoint_last.pt").is_file():
        return path / "checkpoint_last.pt"
    if text in REGISTRY or urlsplit(text).scheme in ("http", "https"):
        return download(text, cache_dir, progress=progress)
    raise CheckpointError(
        f"checkpoint {text!r} not found; give a checkpoint file, a run folder, or a release "
        f"name ({', '.join(REGISTRY)}; see `simclr download --list`)"
    )


def cached(cache_dir: str | os.PathLike[str]) -> list[dict[str, Any]]:
    """The checkpoints in the cache: name, path, size in bytes, source URL and sha256.

    Only files the manifest records or a release file name count: other files in the folder
    (e.g. results that ``linear-eval`` writes next to a cached checkpoint) are not listed.
    """
    cache = Path(cache_dir).expanduser()
    if not cache.is_dir():
        return []
    manifest = _read_manifest(cache)
    by_file = {e.filename: e.name for e in REGISTRY.values()}
    rows = []
    for path in sorted(cache.iterdir()):
        if not path.is_file() or (path.name not in manifest and path.name not in by_file):
            continue
        record = manifest.get(path.name, {})
        rows.append(
            {
                "name": by_file.get(path.name, path.name),
                "path": str(path),
                "size": path.stat().st_size,
                "url": record.get("url"),
                "sha256": record.get("sha256"),
            }
        )
    return rows


def registry_table(cache_dir: str | os.PathLike[str] | None = None) -> list[dict[str, Any]]:
    """One row per release for ``simclr download --list`` / ``simclr info``; json-able."""
    present = {row["name"]: row for row in cached(cache_dir)} if cache_dir is not None else {}
    return [
        {
            "name": e.name,
            "arch": e.arch,
            "epochs": e.epochs,
            "head": e.head,
            "dataset": e.dataset,
            "image_size": e.image_size,
            "accuracy": e.published.top1,  # published STL-10 top-1, see "protocol"
            "protocol": e.published.protocol,
            "source": e.published.source,
            "url": e.url,
            "sha256": e.sha256,
            "cached": e.name in present,
            "size_bytes": present[e.name]["size"] if e.name in present else None,
        }
        for e in REGISTRY.values()
    ]


# --------------------------------------------------------------------------------------------
# Targets and the cache
# --------------------------------------------------------------------------------------------


def _target(name_or_url: str) -> _Target:
    """Registry entry or URL -> what to fetch; anything else is a usage error."""
    if not isinstance(name_or_url, str) or not name_or_url:
        raise UsageError("NAME", name_or_url, f"give a release name ({', '.join(REGISTRY)})")
    if name_or_url in REGISTRY:
        entry = REGISTRY[name_or_url]
        return _Target(entry.url, entry.filename, entry.sha256, entry.name)
    parts = urlsplit(name_or_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            "NAME",
            name_or_url,
            f"give a release name ({', '.join(REGISTRY)}) or an http(s) URL",
        )
    for entry in REGISTRY.values():  # a release URL is stored under its release name
        if entry.url == name_or_url:
            return _Target(entry.url, entry.filename, entry.sha256, entry.name)
    return _Target(name_or_url, _url_filename(name_or_url), None, None)


def _url_filename(url: str) -> str:
    """A safe cache file name for a URL: short hash of the URL + sanitised basename."""
    base = unquote(urlsplit(url).path.rsplit("/", 1)[-1])
    base = re.sub(r"[^A-Za-z0-9._-]", "_", base).lstrip(".") or "checkpoint"
    # Different URLs often share a basename (checkpoint_100.tar): the hash keeps them apart.
    return f"{hashlib.sha256(url.encode()).hexdigest()[:10]}-{base[:100]}"


def _make_cache(cache_dir: str | os.PathLike[str]) -> Path:
    cache = Path(cache_dir).expanduser().resolve()
    try:
        cache.mkdir(parents=True, exist_ok=True)
    except OSError as e:
        raise DownloadError(
            f"cannot create the cache folder {cache} ({e.strerror}); choose another with "
            "--cache-dir or SIMCLR_CACHE_DIR"
        ) from None
    if not os.access(cache, os.W_OK):
        raise DownloadError(
            f"the cache folder {cache} is not writable; choose another with --cache-dir or "
            "SIMCLR_CACHE_DIR"
        )
    return cache


def _cached_ok(dest: Path, target: _Target) -> bool:
    """Whether a cached file still matches its manifest record (size; cheap)."""
    record = _read_manifest(dest.parent).get(dest.name)
    if record is None:  # placed by hand: a registry hash is still verified (once per use)
        return target.sha256 is None or _hash_prefix(dest, 1).hexdigest() == target.sha256
    return record.get("size") == dest.stat().st_size and (
        target.sha256 is None or record.get("sha256") == target.sha256
    )


def _read_manifest(cache: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((cache / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record(cache: Path, filename: str, record: dict[str, Any], progress: bool) -> None:
    """Add one file to the manifest (read-modify-write under the manifest lock, atomic write)."""
    settings = DownloadSettings(lock_timeout=60.0)
    with _locked(cache / f".{MANIFEST}{_LOCK}", None, settings, progress):
        manifest = _read_manifest(cache)
        manifest[filename] = record
        fd, tmp = tempfile.mkstemp(dir=cache, prefix=f".{MANIFEST}.", suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as f:
                json.dump(manifest, f, indent=2, sort_keys=True)
                f.flush()
                os.fsync(f.fileno())
            os.replace(tmp, cache / MANIFEST)
        except BaseException:
            Path(tmp).unlink(missing_ok=True)
            raise


def _expected_sha256(dest: Path, target: _Target) -> str | None:
    """The registry hash when set, else the hash recorded on first download, else None."""
    if target.sha256:
        return target.sha256.lower()
    record = _read_manifest(dest.parent).get(dest.name)
    return record.get("sha256") if record else None


def _install(part: Path, dest: Path, target: _Target, digest: str, size: int, source: str) -> None:
    """Verify sha256 and that the file loads as a checkpoint, then move it into the cache."""
    expected = _expected_sha256(dest, target)
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(
            f"sha256 mismatch for {target.filename} from {source}: expected {expected}, got "
            f"{digest}; the file was removed, retry or delete {dest.parent / MANIFEST} if the "
            "upstream file changed"
        )
    try:
        load_checkpoint(part)  # weights-only load + conversion: the file is usable
    except CheckpointError as e:
        part.unlink(missing_ok=True)
        raise CheckpointError(
            f"{source} is not a usable checkpoint and was removed from the cache: {e}"
        ) from None
    os.replace(part, dest)
    fsync_dir(dest.parent)
    _record(
        dest.parent,
        dest.name,
        {
            "name": target.name,
            "url": target.url,
            "sha256": digest,
            "size": size,
            "saved": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        },
        progress=False,
    )


def _import_file(src: Path, target: _Target, dest: Path, force: bool, progress: bool) -> Path:
    """Copy a hand-fetched file into the cache, verified like a download."""
    if not src.is_file():
        raise DownloadError(f"--from-file {src} does not exist; give the downloaded file")
    if dest.is_file() and not force:
        _say(progress, f"{target.filename} is already cached: {dest} (--force replaces it)")
        return dest
    part = dest.with_name(dest.name + _PART)
    digest = hashlib.sha256()
    try:
        with src.open("rb") as fin, part.open("wb") as fout:
            while chunk := fin.read(1 << 20):
                digest.update(chunk)
                fout.write(chunk)
            fout.flush()
            os.fsync(fout.fileno())
    except BaseException as e:
        # A half-copied file must not stay behind: a later download would resume from it.
        part.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise DownloadError(
                f"cannot copy {src} into the cache ({e.strerror or e}); check the file and free "
                "disk space, or choose another --cache-dir"
            ) from None
        raise
    _install(part, dest, target, digest.hexdigest(), part.stat().st_size, source=str(src))
    _say(progress, f"imported {src} as {dest}")
    return dest


@contextlib.contextmanager
def _locked(
    lock_path: Path, target: _Target | None, settings: DownloadSettings, progress: bool
) -> Iterator[None]:
    """Hold an exclusive ``flock`` on ``lock_path``; say so once if another process holds it."""
    if fcntl is None:  # pragma: no cover
        yield
        return
    with lock_path.open("a") as f:
        deadline = time.monotonic() + settings.lock_timeout
        waiting = False
        while True:
            try:
                fcntl.flock(f.fileno(), fcntl.LOCK_EX | fcntl.LOCK_NB)
                break
            except BlockingIOError:
                if not waiting and target is not None:
                    _say(progress, f"waiting for another download of {target.filename} ...")
                waiting = True
                if time.monotonic() > deadline:
                    raise DownloadError(
                        f"another process has held {lock_path} for {settings.lock_timeout:.0f} "
                        "s; if no download is running, delete that file and retry"
                    ) from None
                time.sleep(0.05)
        try:
            yield
        finally:
            fcntl.flock(f.fileno(), fcntl.LOCK_UN)


# --------------------------------------------------------------------------------------------
# HTTP
# --------------------------------------------------------------------------------------------


def _fetch(
    target: _Target, part: Path, settings: DownloadSettings, progress: bool
) -> tuple[str, int]:
    """Download ``target.url`` into ``part`` with retries and resume; return (sha256 hex, size)."""
    url, hint = target.url, _from_file_hint(target)
    attempt = 0
    with _progress_bar(progress) as bar, requests.Session() as session:
        task = bar.add_task(part.name.removesuffix(_PART), total=None)
        while True:
            try:
                return _attempt(session, url, part, settings, bar, task, hint)
            except OSError as e:  # writing the part file (requests' errors are handled inside)
                raise DownloadError(
                    f"cannot write {part} ({e.strerror or e}); free disk space or choose "
                    "another --cache-dir"
                ) from None
            except _Retry as e:
                attempt += 1
                if attempt > settings.retries:
                    raise DownloadError(
                        f"download of {url} failed after {attempt} attempts ({e}); {hint}"
                    ) from None
                delay = settings.backoff * 2 ** (attempt - 1)
                _say(progress, f"{e}; retrying in {delay:.1f} s")
                time.sleep(delay)


def _connection_problem(error: BaseException, url: str) -> str:
    """What went wrong under a requests connection error, in words: the root cause is buried
    in urllib3's exception chain (a failed DNS lookup, a refused connection, a timeout)."""
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
            return f"cannot resolve {host} (no network, or no DNS)"
        if isinstance(cause, ConnectionRefusedError):
            return f"{host} refused the connection"
        if isinstance(cause, (TimeoutError, requests.Timeout)):
            return f"{host} did not answer in time"
        # requests wraps urllib3's MaxRetryError (in args), which holds the cause in .reason.
        pending += [cause.__cause__, cause.__context__, getattr(cause, "reason", None)]
        pending += list(cause.args)
    return type(error).__name__


def _attempt(
    session: requests.Session,
    url: str,
    part: Path,
    settings: DownloadSettings,
    bar: Progress,
    task: Any,
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
        raise _Retry(f"connection failed: {_connection_problem(e, url)}") from None
    except requests.RequestException as e:  # invalid URL, redirect loop, ...
        raise DownloadError(f"request to {url} failed ({type(e).__name__}); {hint}") from None
    with response:
        offset = _check_status(response, url, part, offset, hint)
        digest = _hash_prefix(part, offset)
        total = _expected_total(response, offset)
        bar.update(task, total=total, completed=offset)
        size = _stream(response, part, offset, digest, settings, bar, task)
    if total is not None and size != total:
        raise _Retry(f"connection closed early: got {size} of {total} bytes")
    return digest.hexdigest(), size


def _from_file_hint(target: _Target) -> str:
    """The offline fallback, spelled out for this file."""
    name = target.name or target.url
    return f"fetch {target.url} by hand and run `simclr download {name} --from-file FILE`"


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


def _hash_prefix(part: Path, offset: int) -> Any:
    """sha256 of the whole file on disk when ``offset`` > 0 (resume), else a fresh hash."""
    digest = hashlib.sha256()
    if offset:
        with part.open("rb") as f:
            while chunk := f.read(1 << 20):
                digest.update(chunk)
    return digest


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
    bar: Progress,
    task: Any,
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
                bar.update(task, completed=size)
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
    """Bytes, speed and ETA on stderr."""
    return Progress(
        TextColumn("[bold]{task.description}"),
        BarColumn(),
        DownloadColumn(binary_units=True),
        TransferSpeedColumn(),
        TimeRemainingColumn(),
        console=_console(),
        disable=not enabled,
        transient=False,
    )


def _console() -> Console:
    from simclr_cli.console import get_console

    return get_console()


def _say(enabled: bool, message: str) -> None:
    if enabled:
        _console().print(message, highlight=False)


def _human(size: int) -> str:
    value = float(size)
    for unit in ("B", "KiB", "MiB", "GiB"):
        if value < 1024 or unit == "GiB":
            return f"{value:.0f} {unit}" if unit == "B" else f"{value:.1f} {unit}"
        value /= 1024
    return f"{size} B"


__all__ = [
    "DEFAULT_SETTINGS",
    "REGISTRY",
    "DownloadSettings",
    "Published",
    "RegistryEntry",
    "cached",
    "download",
    "registry_table",
    "resolve_checkpoint",
]
