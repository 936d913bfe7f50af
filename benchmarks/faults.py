"""Random fault trials: kill -9 during a pretrain then ``--resume auto``; downloads that go wrong.

Usage::

    nice -n 10 python benchmarks/faults.py [--kill-trials 20] [--download-trials 24]
        [--decode-trials 6] [--writer-trials 10] [--seed 0]

Kill trials: a tiny pretrain (a 2-conv encoder, 48 shapes images of 8 px, batch 12, 3 epochs)
runs in a child process through the CLI and is killed with SIGKILL at a random moment (start-up,
a step or a checkpoint write), then continued with ``--resume auto`` until it finishes. A trial
passes when the final weights are bit-identical to an uninterrupted run, ``metrics.jsonl`` holds
each step once and no temporary file is left.

Download trials: a loopback HTTP server drops the connection mid-body, stalls past the read
timeout, flips one byte of a zip checkpoint, or serves another release's file. A trial passes
when the outcome is the promised one: a dropped or stalled transfer resumes and installs the exact
bytes; a corrupt or wrong file is refused with one error and nothing is cached.

Decode trials: a folder with an image that passes indexing and fails to decode (a PNG with valid
chunk checksums around random data), read by DataLoader workers: ``features --workers 2`` (stops
at the first: exit 1), a pretrain with one such image of eight (skipped and counted: exit 0) and
one with 14 of 15 (past the cap: exit 1). A trial passes when the command exits with that code
within a generous guard and no process of its group (a worker) outlives it.

Writer trials: two tiny pretrains into one ``--out`` (fresh, or two ``--resume auto`` of a
finished run with a longer ``--epochs``) started 0-1 s apart. A trial passes when every refusal
names the other writer's pid (or, for a fresh run started after the first finished, finds its
run), and ``config.json``, ``checkpoint_last.pt`` and ``metrics.jsonl`` (each step once) belong
to one run.

Prints a table of (trial kind, trials, passed).
"""

from __future__ import annotations

import argparse
import json
import os
import random
import signal
import struct
import subprocess
import sys
import tempfile
import threading
import time
import zlib
from collections import Counter
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import MappingProxyType
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
sys.path[:0] = [str(ROOT), str(ROOT / "tests")]

import torch  # noqa: E402

torch.set_num_threads(1)

CHILD = """
import sys
import torch
torch.set_num_threads(1)
sys.path[:0] = [{root!r}, {tests!r}]
from train_fixtures import tiny_simclr
from simclr_cli.training import pretrain as train
from simclr_cli.cli import run
train.build_simclr = tiny_simclr
sys.exit(run(sys.argv[1:]))
"""
ARGS = [
    "pretrain", "--dataset", "shapes", "--limit", "48", "--image-size", "8", "--stem", "cifar",
    "--batch-size", "12", "--epochs", "3", "--warmup-epochs", "1", "--workers", "0",
    "--device", "cpu", "--precision", "fp32", "--log-every", "1", "--checkpoint-every", "1",
    "--seed", "0",
]  # fmt: skip


def pretrain(out: Path, *extra: str, args: list[str] = ARGS) -> subprocess.Popen:
    """Start the tiny CLI pretrain in a child process (its own process group)."""
    code = CHILD.format(root=str(ROOT), tests=str(ROOT / "tests"))
    argv = [sys.executable, "-c", code, *args, "--out", str(out), *extra]
    return start(argv)


def start(argv: list[str], cwd: Path | None = None) -> subprocess.Popen:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": str(ROOT)}
    return subprocess.Popen(
        argv, env=env, cwd=cwd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True,
        start_new_session=True,  # its DataLoader workers share its group: see group_alive
    )  # fmt: skip


def final_weights(out: Path) -> dict[str, torch.Tensor]:
    path = out / "checkpoint_last.pt"
    return torch.load(path, map_location="cpu", weights_only=True)["state_dict"]


def kill_trial(work: Path, reference: dict[str, torch.Tensor], rng: random.Random) -> bool:
    """Kill -9 at a random moment, resume until done, compare with the uninterrupted run."""
    out = work / f"kill-{rng.random():.6f}"
    child = pretrain(out)
    time.sleep(rng.uniform(0.5, 8.0))  # start-up takes ~2-4 s here; the run ~3-6 s more
    child.send_signal(signal.SIGKILL)
    child.wait()
    resumed = pretrain(out, "--resume", "auto")
    _, err = resumed.communicate()
    if resumed.returncode != 0:
        print(f"  resume failed ({resumed.returncode}): {err[-300:]}", file=sys.stderr)
        return False
    weights = final_weights(out)
    same = weights.keys() == reference.keys() and all(
        torch.equal(weights[k], reference[k]) for k in weights
    )
    lines = (out / "metrics.jsonl").read_text().splitlines()
    steps = [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]
    leftovers = list(out.glob(".*.tmp"))
    return same and steps == list(range(1, 13)) and not leftovers


# ---------------------------------------------------------------------- late decode failures

HANG_GUARD_S = 300  # far above the seconds these commands take; past it the trial failed
TINY_FOLDER_ARGS = [
    "pretrain", "--image-size", "8", "--stem", "cifar", "--batch-size", "4", "--epochs", "1",
    "--warmup-epochs", "0", "--workers", "2", "--device", "cpu", "--precision", "fp32",
]  # fmt: skip


def group_alive(pgid: int) -> list[int]:
    """Processes of group ``pgid`` still running (a DataLoader worker that outlived its command)."""
    alive = []
    for entry in Path("/proc").iterdir():
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except (OSError, IndexError):
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(int(entry.name))
    return alive


def finishes(child: subprocess.Popen) -> tuple[int | None, str]:
    """``child``'s exit code and stderr; None (and the group killed) when it hung or left a
    process of its group running."""
    try:
        _, err = child.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        return None, "hung"
    if group_alive(child.pid):
        os.killpg(child.pid, signal.SIGKILL)
        return None, "a worker outlived the command"
    return child.returncode, err


def broken_png(path: Path) -> None:
    """A PNG whose chunk CRCs are valid around random image data (passes indexing)."""

    def chunk(kind: bytes, data: bytes) -> bytes:
        return (
            struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
        )

    header = chunk(b"IHDR", struct.pack(">IIBBBBB", 40, 40, 8, 2, 0, 0, 0))
    path.write_bytes(
        b"\x89PNG\r\n\x1a\n" + header + chunk(b"IDAT", os.urandom(600)) + chunk(b"IEND", b"")
    )


def image_folder(root: Path, good: int, broken: int, rng: random.Random) -> Path:
    from PIL import Image

    root.mkdir(parents=True)
    for i in range(good):
        colour = tuple(rng.randrange(256) for _ in range(3))
        Image.new("RGB", (40, 40), colour).save(root / f"img{i:02d}.png")
    for i in range(broken):
        broken_png(root / f"img{good + i:02d}.png")
    return root


def decode_trial(kind: str, work: Path, rng: random.Random) -> bool:
    """A late decode failure with DataLoader workers: the promised exit code, nothing left."""
    trial = work / f"{kind}-{rng.random():.6f}"
    if kind == "features":  # stops at the first: exit 1
        from eval_fixtures import save_native_checkpoint

        image_folder(trial / "d", 7, 1, rng)
        save_native_checkpoint(trial / "ck.pt")
        argv = [sys.executable, "-m", "simclr_cli", "features", "--checkpoint", "ck.pt"]
        argv += ["--dataset", "./d", "--out", "feats", "--workers", "2", "--device", "cpu"]
        code, err = finishes(start(argv, cwd=trial))
        return code == 1 and "error: cannot decode" in err and not (trial / "feats").exists()
    if kind == "skip":  # pretraining skips one broken image of eight: exit 0
        folder = image_folder(trial / "d", 7, 1, rng)
        child = pretrain(trial / "run", "--dataset", str(folder), args=TINY_FOLDER_ARGS)
        code, err = finishes(child)
        return code == 0 and "skipped 1 image that failed to decode" in " ".join(err.split())
    folder = image_folder(trial / "d", 1, 14, rng)  # "garbage": past the cap of 10, exit 1
    code, err = finishes(pretrain(trial / "run", "--dataset", str(folder), args=TINY_FOLDER_ARGS))
    return code == 1 and "11 images of" in err and "failed to decode" in err


# ---------------------------------------------------------------------------- two writers


def metric_steps(out: Path) -> list[int]:
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    return [r["step"] for r in records if "loss" in r]


def writers_trial(kind: str, work: Path, rng: random.Random) -> bool:
    """Two pretrains into one --out started together: one writes, the other is refused in
    one line naming its pid (or, if the first had finished, ran after it); files consistent."""
    out = work / f"writers-{kind}-{rng.random():.6f}"
    if kind == "resume":
        if finishes(pretrain(out))[0] != 0:
            return False
        extra, steps = ["--resume", "auto", "--epochs", "8"], list(range(1, 33))
    else:
        extra, steps = [], list(range(1, 13))
    seeds = (["--seed", "1"], ["--seed", "2"]) if kind == "fresh" else ([], [])
    first = pretrain(out, *extra, *seeds[0])
    time.sleep(rng.uniform(0.0, 1.0))
    second = pretrain(out, *extra, *seeds[1])
    runs = [(first.pid, *finishes(first)), (second.pid, *finishes(second))]
    if any(code not in (0, 1) for _, code, _ in runs):  # hung, a worker left, or a crash
        return False
    for (_, code, err), (other, _, _) in zip(runs, runs[::-1], strict=True):
        # A refusal names the other writer's pid, or (a fresh run after the first finished)
        # finds a run in the folder.
        if code == 1 and f"(pid {other}:" not in err and "already holds a run" not in err:
            return False
    saved = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    config = json.loads((out / "config.json").read_text())
    consistent = saved["config"]["seed"] == config["seed"] and metric_steps(out) == steps
    consistent &= saved["global_step"] == steps[-1] and not list(out.glob(".*.lock"))
    won = [i for i, (_, code, _) in enumerate(runs) if code == 0]
    print(f"  {kind}: exit codes {[code for _, code, _ in runs]}", file=sys.stderr)
    if kind == "fresh":  # exactly one writes, and the files are its own
        return consistent and len(won) == 1 and config["seed"] == won[0] + 1
    return consistent and len(won) >= 1  # resumes: both may succeed, one after the other


# ------------------------------------------------------------------------------ downloads


class Server:
    """A loopback server whose one route misbehaves as ``mode`` says."""

    def __init__(self) -> None:
        self.body, self.mode, self.served = b"", "ok", 0
        state = self

        class Handler(BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"

            def log_message(self, *args: object) -> None:
                pass

            def do_GET(self) -> None:  # noqa: N802 - http.server's name
                state.served += 1
                body, start = state.body, 0
                wanted = self.headers.get("Range")
                if wanted:
                    start = int(wanted.removeprefix("bytes=").split("-")[0])
                self.send_response(206 if start else 200)
                self.send_header("Content-Length", str(len(body) - start))
                if start:
                    self.send_header("Content-Range", f"bytes {start}-{len(body) - 1}/{len(body)}")
                self.end_headers()
                first = state.served == 1
                half = start + (len(body) - start) // 2
                if first and state.mode in ("drop", "stall"):
                    self.wfile.write(body[start:half])
                    self.wfile.flush()
                    if state.mode == "stall":
                        time.sleep(1.5)  # past the client's read timeout
                    self.close_connection = True
                    return
                self.wfile.write(body[start:])

        self.httpd = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.base = f"http://127.0.0.1:{self.httpd.server_address[1]}"
        threading.Thread(target=self.httpd.serve_forever, args=(0.05,), daemon=True).start()


def download_trial(
    kind: str, server: Server, files: dict[str, bytes], work: Path, rng: Any
) -> bool:
    """One download fault; True when the outcome is the promised one."""
    from simclr_cli.errors import SimCLRError
    from simclr_cli.storage import hub, registry

    settings = hub.DownloadSettings(read_timeout=0.5, retries=3, backoff=0.01, chunk_size=4096)
    cache = work / f"cache-{rng.random():.6f}"
    server.served, server.mode = 0, {"drop": "drop", "stall": "stall"}.get(kind, "ok")
    body = files["native"] if kind != "wrong" else files["resnet34"]
    if kind == "corrupt":
        flipped = bytearray(body)
        flipped[rng.randrange(len(flipped) // 4, 3 * len(flipped) // 4)] ^= 1 << rng.randrange(8)
        body = bytes(flipped)
    server.body = body
    path = f"/{kind}-{rng.random():.6f}.tar"
    if kind == "wrong":
        entry = registry.RegistryEntry(
            name="resnet18-trial", url=server.base + path, arch="resnet18", epochs=1,
            hidden_dim=512, projection_dim=64, head_bias=False, batch_size=1,
            optimizer="adam", published=registry.Published("stl10", None, "-", "-"),
        )  # fmt: skip
        table = MappingProxyType({entry.name: entry})
        hub.REGISTRY = registry.REGISTRY = table  # type: ignore[misc]
        name = entry.name
    else:
        name = server.base + path
    try:
        got = hub.download(name, cache, progress=False, settings=settings)
    except SimCLRError:
        refused = kind in ("corrupt", "wrong")
        return refused and not [p for p in cache.iterdir() if p.name != "manifest.json"]
    return kind in ("drop", "stall") and got.read_bytes() == files["native"]


def release_files(work: Path) -> dict[str, bytes]:
    """A zip checkpoint (native, ~64 KiB of weights) and a ResNet-34 release file."""
    from release_fixtures import make_release_checkpoint

    from simclr_cli.storage.checkpoint import save_checkpoint

    native = save_checkpoint(
        {"model": {"arch": "resnet18"}, "state_dict": {"w": torch.randn(16384)}}, work / "n.pt"
    )
    make_release_checkpoint(work / "r34.tar", "1.1", arch="resnet34")
    return {"native": native.read_bytes(), "resnet34": (work / "r34.tar").read_bytes()}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--kill-trials", type=int, default=20)
    parser.add_argument("--download-trials", type=int, default=24)
    parser.add_argument("--decode-trials", type=int, default=6)
    parser.add_argument("--writer-trials", type=int, default=10)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    trials: Counter[str] = Counter()
    passed: Counter[str] = Counter()
    with tempfile.TemporaryDirectory(prefix="simclr-faults-") as tmp:
        work = Path(tmp)
        straight = pretrain(work / "straight")
        if straight.wait() != 0:
            sys.exit(f"the uninterrupted run failed: {straight.stderr.read()[-500:]}")
        reference = final_weights(work / "straight")
        for i in range(args.kill_trials):
            ok = kill_trial(work, reference, rng)
            trials["kill -9, then --resume auto"] += 1
            passed["kill -9, then --resume auto"] += ok
            print(f"kill trial {i + 1}: {'pass' if ok else 'FAIL'}", file=sys.stderr)
        for i in range(args.decode_trials):
            kind = ("features", "skip", "garbage")[i % 3]
            label = {
                "features": "late decode failure, features --workers 2: exit 1, no worker left",
                "skip": "one undecodable image, pretrain --workers 2: skipped, exit 0, none left",
                "garbage": "14 of 15 undecodable, pretrain --workers 2: exit 1, no worker left",
            }[kind]
            ok = decode_trial(kind, work, rng)
            trials[label] += 1
            passed[label] += ok
            print(f"decode trial {i + 1} ({kind}): {'pass' if ok else 'FAIL'}", file=sys.stderr)
        for i in range(args.writer_trials):
            kind = ("fresh", "resume")[i % 2]
            label = {
                "fresh": "two fresh pretrains into one --out, started 0-1 s apart",
                "resume": "two --resume auto --epochs 8 of a 3-epoch run, started 0-1 s apart",
            }[kind]
            ok = writers_trial(kind, work, rng)
            trials[label] += 1
            passed[label] += ok
            print(f"writer trial {i + 1} ({kind}): {'pass' if ok else 'FAIL'}", file=sys.stderr)
        files, server = release_files(work), Server()
        kinds = ("drop", "stall", "corrupt", "wrong")
        for i in range(args.download_trials):
            kind = kinds[i % len(kinds)]
            ok = download_trial(kind, server, files, work, rng)
            label = {
                "drop": "download: connection dropped mid-body",
                "stall": "download: server stalls past the read timeout",
                "corrupt": "download: one bit flipped (zip checkpoint)",
                "wrong": "download: another release's file served",
            }[kind]
            trials[label] += 1
            passed[label] += ok
        server.httpd.shutdown()
    print("| trial kind | trials | passed |")
    print("|---|---:|---:|")
    for label in trials:
        print(f"| {label} | {trials[label]} | {passed[label]} |")


if __name__ == "__main__":
    main()
