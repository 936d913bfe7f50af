"""A loopback HTTP server, a small checkpoint and a test registry: the download tests."""

from __future__ import annotations

import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import MappingProxyType

import pytest
import torch

from simclr_cli.storage import hub, registry
from simclr_cli.storage.checkpoint import FORMAT
from simclr_cli.storage.fetch import DownloadSettings
from simclr_cli.storage.registry import Published, RegistryEntry

FAST = DownloadSettings(
    connect_timeout=2.0,
    read_timeout=5.0,
    retries=2,
    backoff=0.01,
    chunk_size=4096,
    lock_timeout=30.0,
)


@dataclass
class Route:
    """A file the server offers, and how it misbehaves.

    mode: "ok" (Range honoured), "drop_once" (first response cut mid-body), "ignore_range"
    (drop_once, then full 200 bodies whatever the Range), "truncate" (every response cut
    mid-body), "404", "500", "slow" (small chunks with pauses), "redirect" (302 to ``target``).
    """

    body: bytes = b""
    mode: str = "ok"
    target: str = ""
    served: int = 0


@dataclass
class Loopback:
    base: str
    routes: dict[str, Route] = field(default_factory=dict)
    log: list[tuple[str, str | None, int]] = field(default_factory=list)  # path, Range, status

    def add(self, path: str, body: bytes, mode: str = "ok", target: str = "") -> str:
        self.routes[path] = Route(body, mode, target)
        return self.base + path

    def requests_for(self, path: str) -> list[tuple[str, str | None, int]]:
        return [r for r in self.log if r[0] == path]


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    state: Loopback

    def log_message(self, *args: object) -> None:  # keep test output clean
        pass

    def do_GET(self) -> None:
        route = self.state.routes.get(self.path)
        wanted = self.headers.get("Range")
        if route is None or route.mode == "404":
            return self._status(404, wanted)
        if route.mode == "500":
            return self._status(500, wanted)
        if route.mode == "redirect":
            self.state.log.append((self.path, wanted, 302))
            self.send_response(302)
            self.send_header("Location", route.target)
            self.send_header("Content-Length", "0")
            self.end_headers()
            return
        route.served += 1
        body, start = route.body, 0
        honour_range = route.mode in ("ok", "drop_once", "slow")
        if wanted and honour_range:
            start = int(wanted.removeprefix("bytes=").split("-")[0])
        status = 206 if start else 200
        self.state.log.append((self.path, wanted, status))
        self.send_response(status)
        self.send_header("Content-Length", str(len(body) - start))
        if start:
            self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
        self.end_headers()
        cut = route.mode == "truncate" or (
            route.mode in ("drop_once", "ignore_range") and route.served == 1
        )
        if cut:  # promise the whole body, send half, hang up
            self.wfile.write(body[start : start + (len(body) - start) // 2])
            self.wfile.flush()
            self.close_connection = True
            return
        if route.mode == "slow":
            for i in range(start, len(body), 8192):
                self.wfile.write(body[i : i + 8192])
                self.wfile.flush()
                time.sleep(0.05)  # ~0.4 s per file: concurrent clients overlap
            return
        self.wfile.write(body[start:])

    def _status(self, code: int, wanted: str | None) -> None:
        self.state.log.append((self.path, wanted, code))
        self.send_response(code)
        self.send_header("Content-Length", "0")
        self.end_headers()


@pytest.fixture
def server() -> Iterator[Loopback]:
    httpd = ThreadingHTTPServer(("127.0.0.1", 0), _Handler)
    state = Loopback(base=f"http://127.0.0.1:{httpd.server_address[1]}")
    httpd.RequestHandlerClass = type("Handler", (_Handler,), {"state": state})
    thread = threading.Thread(target=httpd.serve_forever, args=(0.05,), daemon=True)
    thread.start()
    yield state
    httpd.shutdown()
    httpd.server_close()


@pytest.fixture(scope="module")
def small_checkpoint(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    """A valid (tiny) simclr-cli checkpoint, ~64 KiB so it spans many chunks."""
    path = tmp_path_factory.mktemp("small") / "small.pt"
    torch.save(
        {
            "format": FORMAT,
            "format_version": 1,
            "kind": "pretrain",
            "model": {"arch": "resnet18"},
            "state_dict": {"w": torch.arange(16384, dtype=torch.float32)},
        },
        path,
    )
    return path.read_bytes()


def _entry(name: str, url: str, epochs: int = 100, sha256: str | None = None, bias: bool = False):
    return RegistryEntry(
        name=name,
        url=url,
        arch="resnet18",
        epochs=epochs,
        hidden_dim=512,
        projection_dim=64,
        head_bias=bias,
        batch_size=256,
        optimizer="adam",
        published=Published("stl10", 0.5, "test protocol", "test"),
        sha256=sha256,
    )


def _use_registry(monkeypatch: pytest.MonkeyPatch, *entries: RegistryEntry) -> None:
    table = MappingProxyType({e.name: e for e in entries})
    monkeypatch.setattr(hub, "REGISTRY", table)
    monkeypatch.setattr(registry, "REGISTRY", table)  # what the release-file converter reads
