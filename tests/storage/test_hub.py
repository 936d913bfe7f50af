"""Downloads against a real HTTP server on 127.0.0.1 that misbehaves on request."""

from __future__ import annotations

import dataclasses
import hashlib
import json
import multiprocessing
import os
import pathlib
import re
import socket
import threading
import time
from http.server import ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import requests
import torch
import torchvision
from hub_fixtures import FAST, Loopback, _entry, _Handler, _use_registry
from release_fixtures import make_release_checkpoint

from simclr_cli.errors import CheckpointError, DownloadError, UsageError
from simclr_cli.storage import fetch, hub
from simclr_cli.storage.checkpoint import load_checkpoint, load_model

# ---------------------------------------------------------------------------- the test server


# ---------------------------------------------------------------------------- payloads


@pytest.fixture(scope="module")
def release_files(tmp_path_factory: pytest.TempPathFactory) -> dict[str, bytes]:
    folder = tmp_path_factory.mktemp("releases")
    out = {}
    for layout in ("1.0", "1.1", "ddp"):
        make_release_checkpoint(folder / f"{layout}.tar", layout)
        out[layout] = (folder / f"{layout}.tar").read_bytes()
    return out


def _visible(cache: Path) -> list[str]:
    """Cache entries a user would see (lock files are hidden dot files)."""
    return sorted(p.name for p in cache.iterdir() if not p.name.startswith("."))


# ---------------------------------------------------------------------------- success and cache


def test_download_streams_verifies_and_records_hash(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    url = server.add("/files/checkpoint_100.tar", small_checkpoint)
    path = hub.download(url, tmp_path, progress=True, settings=FAST)
    assert path.parent == tmp_path.resolve() and path.name.endswith("-checkpoint_100.tar")
    assert path.read_bytes() == small_checkpoint
    manifest = json.loads((tmp_path / hub.MANIFEST).read_text())
    assert manifest[path.name]["sha256"] == hashlib.sha256(small_checkpoint).hexdigest()
    assert manifest[path.name]["size"] == len(small_checkpoint)
    assert _visible(tmp_path) == sorted([path.name, hub.MANIFEST])
    assert "saved" in capsys.readouterr().err

    # A second download is served from the cache: no request, and it says so.
    again = hub.download(url, tmp_path, progress=True, settings=FAST)
    assert again == path and len(server.log) == 1
    assert "already cached" in capsys.readouterr().err


def test_progress_bar_shows_bytes_speed_and_eta(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import io

    from rich.console import Console

    screen = io.StringIO()
    terminal = Console(file=screen, force_terminal=True, width=120, color_system=None)
    monkeypatch.setattr(fetch, "_console", lambda: terminal)
    url = server.add("/bar/checkpoint_1.tar", small_checkpoint)
    hub.download(url, tmp_path, progress=True, settings=FAST)
    bars = [line for line in screen.getvalue().splitlines() if "B/s" in line]
    final = bars[-1]
    kib = f"{len(small_checkpoint) / 1024:.1f}"
    assert f"{kib}/{kib} KiB" in final, final  # bytes done / total, binary units
    assert re.search(r"\d+(\.\d+)? [KMG]?i?B/s", final)  # speed
    assert re.search(r"\d:\d\d:\d\d", final)  # ETA


def test_urls_with_the_same_basename_do_not_collide(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path
) -> None:
    a = hub.download(
        server.add("/1.1/checkpoint_100.tar", small_checkpoint),
        tmp_path,
        progress=False,
        settings=FAST,
    )
    b = hub.download(
        server.add("/1.2/checkpoint_100.tar", small_checkpoint),
        tmp_path,
        progress=False,
        settings=FAST,
    )
    assert a != b and a.parent == b.parent == tmp_path.resolve()


def test_hostile_url_names_stay_inside_the_cache(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path
) -> None:
    cache = tmp_path / "cache"
    url = server.add("/x/..%2F..%2Fescape.pt", small_checkpoint)
    path = hub.download(url, cache, progress=False, settings=FAST)
    assert path.parent == cache.resolve() and path.name.endswith("-_.._escape.pt")
    assert "/" not in path.name and not path.name.startswith(".")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["cache"]


def test_force_downloads_again_and_redirects_are_followed(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path
) -> None:
    server.add("/objects/blob", small_checkpoint)
    url = server.add(
        "/releases/ckpt.pt", b"", mode="redirect", target=server.base + "/objects/blob"
    )
    path = hub.download(url, tmp_path, progress=False, settings=FAST)
    hub.download(url, tmp_path, force=True, progress=False, settings=FAST)
    assert len(server.requests_for("/objects/blob")) == 2
    assert path.read_bytes() == small_checkpoint


def test_cached_file_with_wrong_size_is_fetched_again(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path
) -> None:
    url = server.add("/c.pt", small_checkpoint)
    path = hub.download(url, tmp_path, progress=False, settings=FAST)
    path.write_bytes(small_checkpoint[:100])  # damaged on disk
    hub.download(url, tmp_path, progress=False, settings=FAST)
    assert path.read_bytes() == small_checkpoint and len(server.log) == 2


# ---------------------------------------------------------------------------- resume and retry


def test_resume_after_the_connection_drops(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path
) -> None:
    url = server.add("/drop.pt", small_checkpoint, mode="drop_once")
    path = hub.download(url, tmp_path, progress=False, settings=FAST)
    assert path.read_bytes() == small_checkpoint
    (_, first_range, first), (_, second_range, second) = server.requests_for("/drop.pt")
    assert first_range is None and first == 200
    # Resumed from the bytes kept on disk (up to where the body stopped), rest sent as 206.
    resumed_at = int(second_range.removeprefix("bytes=").removesuffix("-"))
    assert 0 < resumed_at <= len(small_checkpoint) // 2 and second == 206
    manifest = json.loads((tmp_path / hub.MANIFEST).read_text())
    assert manifest[path.name]["sha256"] == hashlib.sha256(small_checkpoint).hexdigest()


def test_server_ignoring_range_gets_a_full_download(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path
) -> None:
    url = server.add("/norange.pt", small_checkpoint, mode="ignore_range")
    path = hub.download(url, tmp_path, progress=False, settings=FAST)
    assert path.read_bytes() == small_checkpoint
    (_, _, first), (_, second_range, second) = server.requests_for("/norange.pt")
    assert second_range is not None and second == 200  # asked to resume, got everything


def test_404_is_not_retried(
    server: Loopback, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.base + "/missing.pt"
    _use_registry(monkeypatch, _entry("gone", url))
    with pytest.raises(DownloadError, match="HTTP 404") as info:
        hub.download("gone", tmp_path, progress=False, settings=FAST)
    assert f"fetch {url} by hand and run `simclr download gone --from-file FILE`" in str(info.value)
    assert len(server.log) == 1
    assert _visible(tmp_path) == []


def test_500_is_retried_then_fails(server: Loopback, tmp_path: Path) -> None:
    url = server.add("/broken.pt", b"", mode="500")
    started = time.monotonic()
    with pytest.raises(DownloadError, match="after 3 attempts") as info:
        hub.download(url, tmp_path, progress=False, settings=FAST)
    assert "--from-file" in str(info.value) and "HTTP 500" in str(info.value)
    assert len(server.log) == 1 + FAST.retries
    assert time.monotonic() - started < 5
    assert _visible(tmp_path) == []


def test_unusable_cache_folder(tmp_path: Path) -> None:
    blocker = tmp_path / "file"
    blocker.write_text("x")
    with pytest.raises(DownloadError, match="cannot create the cache folder"):
        hub.download("http://127.0.0.1:9/x.pt", blocker / "cache", progress=False)


def _count_attempts(monkeypatch: pytest.MonkeyPatch) -> tuple[list[str], list[float]]:
    """Record every GET and every backoff sleep of a download (the sleeps are skipped)."""
    gets: list[str] = []
    sleeps: list[float] = []
    real_get = requests.Session.get

    def get(self: requests.Session, url: str, *args: object, **kwargs: object) -> object:
        gets.append(url)
        return real_get(self, url, *args, **kwargs)

    monkeypatch.setattr(requests.Session, "get", get)
    monkeypatch.setattr(fetch.time, "sleep", sleeps.append)
    for proxy in ("HTTP_PROXY", "HTTPS_PROXY", "ALL_PROXY", "http_proxy", "https_proxy"):
        monkeypatch.delenv(proxy, raising=False)
    return gets, sleeps


@pytest.mark.parametrize(
    ("where", "problem"),
    [
        ("refused", "refused the connection (nothing listens on that port)"),
        ("no-dns", "cannot resolve simclr-cli-test.invalid (no network, or no DNS)"),
    ],
)
def test_an_unreachable_host_fails_at_once_with_one_line(
    where: str, problem: str, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys
) -> None:
    # Offline (a name that does not resolve) or a wrong port (a refused connection): waiting
    # changes nothing, so there is one attempt, no backoff and one line, with the default retries.
    probe = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    port = probe.server_address[1]
    probe.server_close()  # nothing listens on this port any more
    url = {
        "refused": f"http://127.0.0.1:{port}/x.pt",
        "no-dns": "http://simclr-cli-test.invalid/x.pt",  # .invalid never resolves (RFC 2606)
    }[where]
    gets, sleeps = _count_attempts(monkeypatch)
    with pytest.raises(DownloadError) as info:
        hub.download(url, tmp_path, progress=True)
    assert (len(gets), sleeps) == (1, [])
    assert str(info.value).startswith(f"download of {url} failed (")
    assert problem in str(info.value) and "--from-file" in str(info.value)
    assert capsys.readouterr().err == ""  # no retry lines before the error
    assert _visible(tmp_path) == []


def test_a_failed_name_lookup_is_named(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    # What an offline machine sees: DNS cannot resolve the release host.
    def no_dns(*args: object, **kwargs: object) -> None:
        raise socket.gaierror(socket.EAI_AGAIN, "Temporary failure in name resolution")

    monkeypatch.setattr(socket, "getaddrinfo", no_dns)
    gets, sleeps = _count_attempts(monkeypatch)
    with pytest.raises(DownloadError) as info:
        hub.download("https://releases.example/x.pt", tmp_path, progress=False, settings=FAST)
    assert "failed (cannot resolve releases.example (no network, or no DNS))" in str(info.value)
    assert "--from-file" in str(info.value) and (len(gets), sleeps) == (1, [])


def test_a_dropped_connection_is_still_retried(
    server: Loopback, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add("/flaky.pt", b"", mode="500")  # a 5xx: transient, retried with backoff
    gets, sleeps = _count_attempts(monkeypatch)
    with pytest.raises(DownloadError, match="after 3 attempts"):
        hub.download(url, tmp_path, progress=False, settings=FAST)
    assert len(gets) == 1 + FAST.retries and len(sleeps) == FAST.retries


def test_a_refused_redirect_names_the_host_it_was_sent_to(server: Loopback, tmp_path: Path) -> None:
    # Release hosts redirect to a storage host: when that one fails, the error must name it.
    probe = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    closed_port = probe.server_address[1]
    probe.server_close()
    url = server.add(
        "/releases/gone.pt", b"", mode="redirect", target=f"http://localhost:{closed_port}/blob"
    )
    assert url.startswith("http://127.0.0.1:")
    with pytest.raises(DownloadError) as info:
        hub.download(url, tmp_path, progress=False, settings=FAST)
    assert "failed (localhost refused the connection" in str(info.value)


def test_a_server_that_never_answers_is_named(tmp_path: Path) -> None:
    # It accepts the connection (the listen backlog) but never sends a byte.
    silent = socket.socket()
    silent.bind(("127.0.0.1", 0))
    silent.listen()
    quick = dataclasses.replace(FAST, read_timeout=0.3, retries=1)
    try:
        with pytest.raises(DownloadError) as info:
            url = f"http://127.0.0.1:{silent.getsockname()[1]}/x.pt"
            hub.download(url, tmp_path, progress=False, settings=quick)
    finally:
        silent.close()
    assert "(connection failed: 127.0.0.1 did not answer in time)" in str(info.value)


def test_truncated_transfers_fail_without_installing(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path
) -> None:
    url = server.add("/trunc.pt", small_checkpoint, mode="truncate")
    with pytest.raises(DownloadError, match="failed after 3 attempts"):
        hub.download(url, tmp_path, progress=False, settings=FAST)
    assert not any(name.endswith("trunc.pt") for name in _visible(tmp_path))
    assert len(server.requests_for("/trunc.pt")) == 3


def test_truncated_file_on_the_server_is_removed(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path
) -> None:
    url = server.add("/short.pt", small_checkpoint[: len(small_checkpoint) // 2])
    with pytest.raises(CheckpointError, match="not a usable checkpoint and was removed"):
        hub.download(url, tmp_path, progress=False, settings=FAST)
    assert _visible(tmp_path) == []


# ---------------------------------------------------------------------------- verification


def test_registry_sha256_mismatch_removes_the_file(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add("/r.tar", small_checkpoint)
    _use_registry(monkeypatch, _entry("pinned", url, sha256="0" * 64))
    with pytest.raises(DownloadError, match="sha256 mismatch for pinned.tar"):
        hub.download("pinned", tmp_path, progress=False, settings=FAST)
    assert _visible(tmp_path) == []


def test_registry_sha256_match_installs(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add("/r.tar", small_checkpoint)
    digest = hashlib.sha256(small_checkpoint).hexdigest()
    _use_registry(monkeypatch, _entry("pinned", url, sha256=digest))
    path = hub.download("pinned", tmp_path, progress=False, settings=FAST)
    assert path.name == "pinned.tar" and path.read_bytes() == small_checkpoint


def test_hand_placed_file_is_checked_against_the_registry_hash(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add("/r.tar", small_checkpoint)
    digest = hashlib.sha256(small_checkpoint).hexdigest()
    _use_registry(monkeypatch, _entry("pinned", url, sha256=digest))
    (tmp_path / "pinned.tar").write_bytes(b"some other file")
    path = hub.download("pinned", tmp_path, progress=False, settings=FAST)
    assert path.read_bytes() == small_checkpoint and len(server.log) == 1
    hub.download("pinned", tmp_path, progress=False, settings=FAST)
    assert len(server.log) == 1  # now recorded and matching: served from the cache


def test_recorded_hash_is_verified_on_later_downloads(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path
) -> None:
    url = server.add("/changing.pt", small_checkpoint)
    path = hub.download(url, tmp_path, progress=False, settings=FAST)
    other = bytearray(small_checkpoint)
    other[-100] ^= 0xFF  # upstream file silently changed
    server.routes["/changing.pt"].body = bytes(other)
    with pytest.raises(DownloadError, match="sha256 mismatch"):
        hub.download(url, tmp_path, force=True, progress=False, settings=FAST)
    assert path.read_bytes() == small_checkpoint  # the verified copy is kept
    assert not any(n.endswith(".part") for n in _visible(tmp_path))


def test_not_a_checkpoint_is_removed(server: Loopback, tmp_path: Path) -> None:
    url = server.add("/page.html", b"<html>rate limited</html>" * 100)
    with pytest.raises(CheckpointError, match="removed from the cache") as info:
        hub.download(url, tmp_path, progress=False, settings=FAST)
    assert "is a text file, not a torch checkpoint (it begins '<html>rate limited" in str(
        info.value
    )
    assert _visible(tmp_path) == []


class _Marker:
    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (self.marker,))


def test_malicious_pickle_never_runs(server: Loopback, tmp_path: Path) -> None:
    marker = tmp_path / "code_ran"
    evil = tmp_path / "evil.pt"
    torch.save({"state_dict": _Marker(marker)}, evil, _use_new_zipfile_serialization=False)
    url = server.add("/evil.pt", evil.read_bytes())
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="refused for safety"):
        hub.download(url, cache, progress=False, settings=FAST)
    assert not marker.exists()
    assert _visible(cache) == []


# ---------------------------------------------------------------------------- concurrency


def test_concurrent_downloads_of_one_file(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path
) -> None:
    url = server.add("/slow.pt", small_checkpoint, mode="slow")
    results: list[Path] = []
    errors: list[BaseException] = []

    def worker() -> None:
        try:
            results.append(hub.download(url, tmp_path, progress=False, settings=FAST))
        except BaseException as e:  # surfaced below
            errors.append(e)

    threads = [threading.Thread(target=worker) for _ in range(2)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=60)
    assert errors == [] and len(results) == 2 and results[0] == results[1]
    assert results[0].read_bytes() == small_checkpoint
    assert len(server.requests_for("/slow.pt")) == 1  # the second waited, then found it cached
    assert [n for n in _visible(tmp_path) if n != hub.MANIFEST] == [results[0].name]


def _download_in_child(url: str, cache: str, out: object) -> None:
    try:
        out.put(str(hub.download(url, cache, progress=False, settings=FAST)))  # type: ignore[attr-defined]
    except BaseException as e:  # reported to the parent
        out.put(f"error: {e}")  # type: ignore[attr-defined]


@pytest.mark.skipif(not hasattr(os, "fork"), reason="needs fork")
def test_concurrent_downloads_from_two_processes(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path
) -> None:
    ctx = multiprocessing.get_context("fork")  # the children reuse the imported modules
    url = server.add("/slow.pt", small_checkpoint, mode="slow")
    out = ctx.Queue()
    children = [
        ctx.Process(target=_download_in_child, args=(url, str(tmp_path), out)) for _ in range(2)
    ]
    for child in children:
        child.start()
    results = [out.get(timeout=60) for _ in children]
    for child in children:
        child.join(timeout=10)
    assert results[0] == results[1] and not results[0].startswith("error"), results
    assert Path(results[0]).read_bytes() == small_checkpoint
    assert len(server.requests_for("/slow.pt")) == 1


# ---------------------------------------------------------------------------- release layouts


@pytest.mark.parametrize(
    ("layout", "bias", "epochs"), [("1.0", True, 40), ("1.1", False, 100), ("ddp", False, 100)]
)
def test_release_layouts_download_convert_and_load(
    server: Loopback,
    release_files: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    layout: str,
    bias: bool,
    epochs: int,
) -> None:
    url = server.add(f"/{layout}/checkpoint_{epochs}.tar", release_files[layout])
    _use_registry(monkeypatch, _entry("r18", url, epochs=epochs, bias=bias))
    path = hub.resolve_checkpoint("r18", tmp_path, progress=False)
    assert path.name == "r18.tar"
    payload = load_checkpoint(path)
    spec = payload["model"]
    assert (spec["arch"], spec["stem"], spec["head_bias"]) == ("resnet18", "imagenet", bias)
    assert (spec["hidden_dim"], spec["projection_dim"]) == (512, 64)
    assert payload["epoch"] == epochs  # from the registry entry the file is named after
    assert payload["converted_from"]["release"]["name"] == "r18"
    assert payload["converted_from"]["release"]["published_top1"] == 0.5
    model = load_model(payload)
    with torch.no_grad():
        h, z = model(torch.randn(1, 3, 64, 64))
    assert h.shape == (1, 512) and z.shape == (1, 64)
    assert len(server.log) == 1
    assert hub.resolve_checkpoint("r18", tmp_path, progress=False) == path
    assert len(server.log) == 1  # second use comes from the cache


@pytest.mark.parametrize(("layout", "bias"), [("1.0", True), ("1.1", False), ("ddp", False)])
def test_release_names_feed_linear_eval_and_features(
    server: Loopback,
    release_files: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
    layout: str,
    bias: bool,
) -> None:
    """`--checkpoint NAME` downloads on first use, then linear-eval and features run on shapes."""
    from transform_oracle import eval_transform

    from simclr_cli.config import FeaturesConfig, LinearEvalConfig
    from simclr_cli.data.datasets import ShapesDataset
    from simclr_cli.evaluation import features, linear_eval

    url = server.add(f"/{layout}/checkpoint_100.tar", release_files[layout])
    _use_registry(monkeypatch, _entry("r18", url, bias=bias))
    cache = tmp_path / "cache"
    common = {"dataset": "shapes", "image_size": 32, "device": "cpu", "workers": 0}
    common |= {"cache_dir": cache, "batch_size": 8, "checkpoint": "r18"}
    result = linear_eval.run_linear_eval(
        LinearEvalConfig(**common, limit=20, out=tmp_path / "eval")
    )
    assert result["test_images"] == 20 and 0.0 <= result["top1"] <= 1.0
    assert (tmp_path / "eval" / "linear_eval.json").is_file()
    features.export_features(FeaturesConfig(**common, limit=4, out=tmp_path / "features"))
    assert len(server.log) == 1  # downloaded once, then read from the cache

    # The exported rows are the release encoder's h, computed here without simclr-cli's loader.
    theirs = torchvision.models.resnet18(weights=None)
    theirs.fc = torch.nn.Identity()
    prefix = "module.encoder." if layout == "ddp" else "encoder."
    state = torch.load(cache / "r18.tar", weights_only=True)
    theirs.load_state_dict({k[len(prefix) :]: v for k, v in state.items() if k.startswith(prefix)})
    images = ShapesDataset(split="test", image_size=32, transform=eval_transform(32))
    rows = json.loads((tmp_path / "features" / "meta.json").read_text())["indices"]  # --limit 4
    assert len(rows) == 4
    with torch.no_grad():
        want = theirs.eval()(torch.stack([images[i][0] for i in rows])).numpy()
    got = np.load(tmp_path / "features" / "features.npy")
    np.testing.assert_allclose(got, want, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------- --from-file


def test_from_file_imports_without_network(
    server: Loopback,
    release_files: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = tmp_path / "by_hand.tar"
    src.write_bytes(release_files["1.1"])
    _use_registry(monkeypatch, _entry("r18", server.base + "/never.tar"))
    cache = tmp_path / "cache"
    path = hub.download("r18", cache, from_file=src, progress=False)
    assert path == cache.resolve() / "r18.tar" and path.read_bytes() == src.read_bytes()
    assert server.log == []
    assert [row["name"] for row in hub.cached(cache)] == ["r18"]


def test_from_file_rejects_non_checkpoints(
    server: Loopback, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    src = tmp_path / "notes.txt"
    src.write_text("not weights")
    _use_registry(monkeypatch, _entry("r18", server.base + "/never.tar"))
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError, match="not a usable checkpoint"):
        hub.download("r18", cache, from_file=src, progress=False)
    assert _visible(cache) == []
    with pytest.raises(DownloadError, match="does not exist"):
        hub.download("r18", cache, from_file=tmp_path / "absent.tar", progress=False)


def test_from_file_copy_failure_leaves_no_partial_file(
    server: Loopback,
    release_files: dict[str, bytes],
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    src = tmp_path / "by_hand.tar"
    src.write_bytes(release_files["1.1"])
    _use_registry(monkeypatch, _entry("r18", server.base + "/never.tar"))

    def disk_full(_fd: int) -> None:
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(hub.os, "fsync", disk_full)
    cache = tmp_path / "cache"
    with pytest.raises(DownloadError, match=r"cannot copy .*No space left.*--cache-dir") as raised:
        hub.download("r18", cache, from_file=src, progress=False)
    assert "\n" not in str(raised.value)
    assert [p.name for p in cache.iterdir() if p.name.endswith(".part")] == []


# ---------------------------------------------------------------------------- names and listing


@pytest.mark.parametrize(
    "bad", ["ftp://example.org/x.tar", "file:///etc/passwd", "no-such-model", "http://", ""]
)
def test_only_registry_names_and_http_urls(tmp_path: Path, bad: str) -> None:
    with pytest.raises(UsageError, match="release name"):
        hub.download(bad, tmp_path, progress=False)


def test_resolve_checkpoint_paths_and_unknown_names(tmp_path: Path) -> None:
    file = tmp_path / "mine.pt"
    file.write_bytes(b"x")
    assert hub.resolve_checkpoint(str(file), tmp_path / "cache") == file
    run = tmp_path / "run"
    run.mkdir()
    (run / "checkpoint_last.pt").write_bytes(b"x")
    assert hub.resolve_checkpoint(run, tmp_path / "cache") == run / "checkpoint_last.pt"
    with pytest.raises(
        CheckpointError, match="resnet50-stl10, resnet18-stl10, resnet18-stl10-40ep"
    ):
        hub.resolve_checkpoint("resnet99", tmp_path / "cache")


def test_registry_declares_the_three_releases() -> None:
    rows = {row["name"]: row for row in hub.registry_table()}
    assert rows["resnet50-stl10"]["url"].endswith("/1.2/checkpoint_100.tar")
    assert rows["resnet18-stl10"]["url"].endswith("/1.1/checkpoint_100.tar")
    assert rows["resnet18-stl10-40ep"]["url"].endswith("/1.0/checkpoint_40.tar")
    assert rows["resnet50-stl10"]["head"] == "2048-2048-64 without bias"
    assert rows["resnet18-stl10-40ep"]["head"] == "512-512-64 with bias"
    assert all(0 < row["accuracy"] < 1 and "STL-10" in row["protocol"] for row in rows.values())
    with pytest.raises(AttributeError):
        hub.REGISTRY["resnet18-stl10"].url = "http://elsewhere"  # type: ignore[misc]


def test_registry_table_shows_what_is_cached(
    server: Loopback, small_checkpoint: bytes, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    url = server.add("/a.tar", small_checkpoint)
    _use_registry(monkeypatch, _entry("a", url), _entry("b", server.base + "/b.tar"))
    hub.download("a", tmp_path, progress=False, settings=FAST)
    rows = {row["name"]: row for row in hub.registry_table(tmp_path)}
    assert rows["a"]["cached"] and rows["a"]["size_bytes"] == len(small_checkpoint)
    assert not rows["b"]["cached"] and rows["b"]["size_bytes"] is None
    (tmp_path / "linear_eval.json").write_text("{}")  # results written next to a checkpoint
    (tmp_path / "confusion_matrix.csv").write_text("1,0\n0,1\n")
    (listed,) = hub.cached(tmp_path)
    assert listed["name"] == "a" and listed["url"] == url
    assert listed["sha256"] == hashlib.sha256(small_checkpoint).hexdigest()
    (tmp_path / "b.tar").write_bytes(b"placed by hand")  # a release file name still counts
    assert [row["name"] for row in hub.cached(tmp_path)] == ["a", "b"]
