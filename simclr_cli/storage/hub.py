"""Release checkpoints in a local cache: resolution of ``--checkpoint``, verified downloads.

``download`` fetches a registry name or an http(s) URL (:mod:`simclr_cli.storage.fetch` streams it
into
``<cache>/<name>.part``, resuming and retrying), checks its sha256, validates that the file loads
as a checkpoint (weights only) holding the model its registry entry names, and only then renames
it into the cache. A lock file (:mod:`simclr_cli.storage.filelock`) serialises concurrent downloads
of
the same file; the cache manifest records each file's sha256 on first download so later
downloads are verified against it.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
import re
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any
from urllib.parse import unquote, urlsplit

from simclr_cli.errors import CheckpointError, DownloadError, UsageError
from simclr_cli.storage import fileio
from simclr_cli.storage.checkpoint import load_checkpoint
from simclr_cli.storage.fetch import DEFAULT_SETTINGS, DownloadSettings, fetch, say, sha256_of
from simclr_cli.storage.filelock import locked
from simclr_cli.storage.registry import REGISTRY, RUN_CHECKPOINT, RegistryEntry, checkpoint_kind

MANIFEST = "manifest.json"
_PART = ".part"
_LOCK = ".lock"
# Seconds to wait for another process updating the manifest (a read-modify-write: quick).
_MANIFEST_LOCK_TIMEOUT = 60.0


@dataclass(frozen=True)
class _Target:
    """What to fetch and where it goes."""

    url: str
    filename: str
    sha256: str | None  # from the registry or --sha256: always verified
    name: str | None  # registry name, if any
    entry: RegistryEntry | None = None  # what the file must hold, for a release


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
    sha256: str | None = None,
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
        sha256: the file's expected sha256 (hex); verified, for a URL or a release alike.

    Returns:
        The path of the verified file in the cache.

    Raises:
        UsageError: ``name_or_url`` is neither a registry name nor an http(s) URL.
        DownloadError: the download failed, was truncated or did not match its sha256.
        CheckpointError: the file is not a usable checkpoint (it is removed from the cache).
    """
    target = _target(name_or_url)
    if sha256 is not None:
        target = dataclasses.replace(target, sha256=_check_sha256(sha256))
    cache = _make_cache(cache_dir)
    dest = cache / target.filename
    assert dest.parent == cache, dest  # filenames are sanitised; never write outside the cache

    def waiting() -> None:
        say(progress, f"waiting for another download of {target.filename} ...")

    with locked(cache / f".{target.filename}{_LOCK}", settings.lock_timeout, waiting):
        if from_file is not None:
            return _import_file(Path(from_file), target, dest, force, progress)
        if dest.is_file() and not force and _cached_ok(dest, target):
            say(progress, f"{target.filename} is already cached: {dest} (--force re-downloads)")
            return dest
        part = dest.with_name(dest.name + _PART)
        if force:
            part.unlink(missing_ok=True)
        hint = _from_file_hint(target)
        digest, size = fetch(target.url, part, settings, progress, hint, label=target.filename)
        _install(part, dest, target, digest, size, source=target.url, progress=progress)
    from simclr_cli.console import human_bytes

    say(progress, f"saved {target.filename} ({human_bytes(size)}) to {dest}")
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
    kind = checkpoint_kind(text)
    if kind == "file":
        return Path(text).expanduser()
    if kind == "run":
        return Path(text).expanduser() / RUN_CHECKPOINT
    if kind in ("release", "url"):
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
        return _Target(entry.url, entry.filename, entry.sha256, entry.name, entry)
    parts = urlsplit(name_or_url)
    if parts.scheme not in ("http", "https") or not parts.netloc:
        raise UsageError(
            "NAME",
            name_or_url,
            f"give a release name ({', '.join(REGISTRY)}) or an http(s) URL",
        )
    for entry in REGISTRY.values():  # a release URL is stored under its release name
        if entry.url == name_or_url:
            return _Target(entry.url, entry.filename, entry.sha256, entry.name, entry)
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
        return target.sha256 is None or sha256_of(dest).hexdigest() == target.sha256
    return record.get("size") == dest.stat().st_size and (
        target.sha256 is None or record.get("sha256") == target.sha256
    )


def _read_manifest(cache: Path) -> dict[str, dict[str, Any]]:
    try:
        data = json.loads((cache / MANIFEST).read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def _record(cache: Path, filename: str, record: dict[str, Any]) -> None:
    """Add one file to the manifest (read-modify-write under the manifest lock, atomic write)."""
    with locked(cache / f".{MANIFEST}{_LOCK}", _MANIFEST_LOCK_TIMEOUT):
        manifest = _read_manifest(cache)
        manifest[filename] = record
        fileio.write_json_atomic(cache / MANIFEST, manifest)


# --------------------------------------------------------------------------------------------
# Verification and installation
# --------------------------------------------------------------------------------------------


def _check_sha256(value: str) -> str:
    """``--sha256``: 64 hex digits, compared in lower case."""
    if not re.fullmatch(r"[0-9a-fA-F]{64}", value):
        raise UsageError("--sha256", value, "give the 64 hex digits of the file's sha256")
    return value.lower()


def _expected_sha256(dest: Path, target: _Target) -> tuple[str | None, str]:
    """The hash to verify and where it comes from: the registry or ``--sha256`` when set, else
    the hash recorded at the first download, else None."""
    if target.sha256:
        return target.sha256.lower(), "expected"
    record = _read_manifest(dest.parent).get(dest.name)
    if record and record.get("sha256"):
        return record["sha256"], "recorded at the first download"
    return None, ""


def _install(
    part: Path,
    dest: Path,
    target: _Target,
    digest: str,
    size: int,
    source: str,
    progress: bool = True,
) -> None:
    """Verify sha256 and that the file loads as the checkpoint it claims to be, then move it
    into the cache and record its hash."""
    expected, origin = _expected_sha256(dest, target)
    if expected is not None and digest != expected:
        part.unlink(missing_ok=True)
        raise DownloadError(_mismatch(target, source, expected, origin, digest))
    try:
        payload = load_checkpoint(part, shown=source)  # weights-only load, zip CRCs, conversion
        if target.entry is not None:
            _check_release_matches(payload, target.entry, source)
    except CheckpointError as e:
        part.unlink(missing_ok=True)
        raise CheckpointError(
            f"{source} is not a usable checkpoint and was removed from the cache: "
            f"{e.problem}; "
            f"{_usable_fix(target, source)}"
        ) from None
    _replace_record_note(dest, digest, progress)
    fileio.commit(part, dest)
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
    )


def _mismatch(target: _Target, source: str, expected: str, origin: str, digest: str) -> str:
    """The sha256 mismatch line, with the command that gets out of it."""
    line = (
        f"sha256 mismatch for {target.filename} from {source}: {origin} {expected}, got {digest}; "
        "the file was not cached"
    )
    if origin == "expected":
        return line + "; retry, or check the file's source and --sha256"
    name = target.name or target.url
    return (
        line + "; if the first download was damaged or the file changed upstream, replace the "
        f"record with `simclr download {name} --force --sha256 HASH` (the hash you trust, "
        "e.g. from the publisher)"
    )


def _usable_fix(target: _Target, source: str) -> str:
    """What to do about a file that is not the checkpoint it should be."""
    if source == target.url:
        return "check the URL, or retry if the download was damaged"
    return f"give the file downloaded from {target.url}"


_RELEASE_FIELDS = ("arch", "stem", "hidden_dim", "projection_dim", "head_bias")


def _check_release_matches(payload: dict[str, Any], entry: RegistryEntry, source: str) -> None:
    """Refuse a file that holds another model than the registry entry it is stored under.

    Compared: architecture, stem and head (hidden and projection dims, bias), where the file
    states them (a converted release file states all).
    """
    spec = payload["model"]
    known = [key for key in _RELEASE_FIELDS if spec.get(key) is not None]
    if all(spec[key] == getattr(entry, key) for key in known):
        return
    found, wanted = _model_summary(spec), _model_summary(dataclasses.asdict(entry))
    others = [e.name for e in REGISTRY.values() if _model_summary(dataclasses.asdict(e)) == found]
    hint = f"; it looks like {' or '.join(others)}" if others else ""
    raise CheckpointError(
        f"{source} holds {found} but {entry.name} is {wanted}",
        problem=f"it holds {found} but the release {entry.name} is {wanted}{hint}",
    )


def _model_summary(model: dict[str, Any]) -> str:
    """``a resnet18 (imagenet stem, head 512-64 without bias)`` for the mismatch line."""
    bias = "with" if model.get("head_bias", True) else "without"
    return (
        f"a {model.get('arch')} ({model.get('stem')} stem, head "
        f"{model.get('hidden_dim')}-{model.get('projection_dim')} {bias} bias)"
    )


def _replace_record_note(dest: Path, digest: str, progress: bool) -> None:
    """Say when a new file (``--force --sha256``) replaces a differently recorded hash."""
    record = _read_manifest(dest.parent).get(dest.name)
    if record and record.get("sha256") not in (None, digest):
        say(
            progress,
            f"note: {dest.name} differs from the file first cached (sha256 "
            f"{record['sha256'][:12]}..., now {digest[:12]}...); the record is replaced",
        )


def _import_file(src: Path, target: _Target, dest: Path, force: bool, progress: bool) -> Path:
    """Copy a hand-fetched file into the cache, verified like a download."""
    if not src.is_file():
        raise DownloadError(f"--from-file {src} does not exist; give the downloaded file")
    if dest.is_file() and not force:
        say(progress, f"{target.filename} is already cached: {dest} (--force replaces it)")
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
    _install(part, dest, target, digest.hexdigest(), part.stat().st_size, str(src), progress)
    say(progress, f"imported {src} as {dest}")
    return dest


def _from_file_hint(target: _Target) -> str:
    """The offline fallback, spelled out for this file."""
    name = target.name or target.url
    return f"fetch {target.url} by hand and run `simclr download {name} --from-file FILE`"


# REGISTRY stays importable from here, as the CHANGELOG promises; its home is registry.py.
__all__ = ["MANIFEST", "REGISTRY", "cached", "download", "registry_table", "resolve_checkpoint"]
