"""Promises under faults: full disks, signals, mismatched resumes, damaged and wrong files.

Each test reproduces a fault of issue 15 (or 16) and checks the one-line error, the exit code and
that nothing half-written is left behind.
"""

from __future__ import annotations

import builtins
import errno
import json
import os
import signal
import stat
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from hub_fixtures import (
    FAST,
    Loopback,
    _entry,
    _use_registry,
)
from launch_fixtures import launch_cfg as cfg_of
from process_fixtures import cli_flags, options, start_child, wait_for
from release_fixtures import make_release_checkpoint
from train_fixtures import config, metric_steps

from simclr_cli.cli import run
from simclr_cli.distributed import launching, plan_launch
from simclr_cli.errors import CheckpointError, DownloadError
from simclr_cli.storage import fileio, hub
from simclr_cli.storage.checkpoint import load_checkpoint, save_checkpoint
from simclr_cli.training import pretrain as train

# A hang guard for a signalled child to exit, far above the seconds it takes on a busy machine.
CHILD_EXIT_GUARD_S = 600


class FullDisk:
    """A writable file whose writes fail with ENOSPC, as on a full file system."""

    def __init__(self, inner: Any) -> None:
        self.inner = inner

    def write(self, data: Any) -> int:
        raise OSError(errno.ENOSPC, "No space left on device")

    def __enter__(self) -> FullDisk:
        return self

    def __exit__(self, *exc: object) -> None:
        self.inner.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self.inner, name)


def fill_disk(monkeypatch: pytest.MonkeyPatch, name_part: str) -> None:
    """Make every write to files whose name contains ``name_part`` fail (at the file object)."""
    real_open, real_fdopen = builtins.open, os.fdopen

    def full_open(file: Any, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_open(file, mode, *args, **kwargs)
        writing = any(c in mode for c in "wa+")
        return FullDisk(handle) if writing and name_part in str(file) else handle

    def full_fdopen(fd: int, mode: str = "r", *args: Any, **kwargs: Any) -> Any:
        handle = real_fdopen(fd, mode, *args, **kwargs)
        target = os.readlink(f"/proc/self/fd/{fd}") if os.path.exists("/proc/self/fd") else ""
        return FullDisk(handle) if "w" in mode and name_part in target else handle

    monkeypatch.setattr(builtins, "open", full_open)
    monkeypatch.setattr(os, "fdopen", full_fdopen)


def pretrain_argv(out: Path, **overrides: Any) -> list[str]:
    return ["pretrain", *cli_flags(options(out, **overrides))]


def error_lines(capsys: pytest.CaptureFixture[str]) -> list[str]:
    return [line for line in capsys.readouterr().err.splitlines() if line.startswith("error:")]


# ------------------------------------------------------------------------------ full disks


@pytest.mark.usefixtures("tiny")
def test_a_full_disk_during_a_checkpoint_is_one_line_naming_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    fill_disk(monkeypatch, ".checkpoint_last.pt.")
    assert run(pretrain_argv(out, epochs=1, warmup_epochs=0)) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err
    assert f"error: cannot write {out / 'checkpoint_last.pt'}: No space left on device" in err
    assert [p.name for p in out.iterdir() if p.name.endswith(".tmp")] == []


@pytest.mark.usefixtures("tiny")
def test_a_full_disk_during_the_metrics_log_names_the_file(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    fill_disk(monkeypatch, "metrics.jsonl")
    assert run(pretrain_argv(out, epochs=1, warmup_epochs=0)) == 1
    assert error_lines(capsys) == [
        f"error: cannot write {out / 'metrics.jsonl'}: No space left on device; "
        "free some space, or write somewhere else"
    ]


def test_outputs_get_the_umask_mode(tmp_path: Path) -> None:
    previous = os.umask(0o022)
    try:
        path = save_checkpoint({"model": {}, "state_dict": {}}, tmp_path / "ck.pt")
        text = tmp_path / "config.json"
        fileio.write_json_atomic(text, {})
    finally:
        os.umask(previous)
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert stat.S_IMODE(text.stat().st_mode) == 0o644


# ------------------------------------------------------------------------------ signals


def held_in_write_child(out: Path, marker: Path, cli: list[str]) -> Any:
    """A CLI pretrain whose first checkpoint write stops inside torch's zip writer."""
    return start_child(
        {"cli": cli, "hold_save_at": 1, "hold_in_write": True, "marker": str(marker)}
    )


@pytest.mark.slow
def test_a_second_ctrl_c_during_a_save_exits_130_with_a_line(tmp_path: Path) -> None:
    out, marker = tmp_path / "run", tmp_path / "saving"
    child = held_in_write_child(out, marker, pretrain_argv(out, epochs=3))
    wait_for(marker.exists, child)
    child.send_signal(signal.SIGINT)  # the first: finish the step and save
    time.sleep(1.0)  # two signals close together would reach the handler as one
    child.send_signal(signal.SIGINT)  # the second: stop now, inside torch.save
    _, stderr = child.communicate(timeout=CHILD_EXIT_GUARD_S)
    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr and "error: interrupted" in stderr
    assert not list(out.glob(".*.tmp"))


@pytest.mark.slow
def test_sigterm_during_start_up_exits_130_with_a_line(tmp_path: Path) -> None:
    out, marker = tmp_path / "run", tmp_path / "started"
    # The marker is written before the data and the model are built: still starting up.
    child = start_child({"cli": pretrain_argv(out), "marker": str(marker), "mark_start": True})
    wait_for(marker.exists, child)
    child.send_signal(signal.SIGTERM)
    _, stderr = child.communicate(timeout=CHILD_EXIT_GUARD_S)
    assert child.returncode == 130, stderr
    assert "error: interrupted (SIGTERM)" in stderr and "Traceback" not in stderr


# ------------------------------------------------------------------------------ resume


@pytest.mark.usefixtures("tiny")
def test_a_resume_that_changes_the_model_or_optimizer_lists_every_difference(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    train.run_pretrain(config(out, epochs=1, warmup_epochs=0, optimizer="adam"))
    changed = config(
        out,
        epochs=2,
        resume="auto",
        stem="imagenet",
        hidden_dim=256,
        projection_dim=32,
        head="v2",
        optimizer="lars",
        arch="resnet34",
        image_size=32,
    )
    with pytest.raises(CheckpointError) as caught:
        train.run_pretrain(changed)
    message = str(caught.value)
    for part in (
        "--stem cifar (given: imagenet)",
        "--hidden-dim auto (512) (given: 256)",  # unset in the run: what it resolved to
        "--projection-dim 128 (given: 32)",
        "--head v1 (given: v2)",
        "--optimizer adam (given: lars)",
        "--arch resnet18 (given: resnet34)",
    ):
        assert part in message, message
    assert "None" not in message and "--epochs" not in message  # --epochs may change
    assert "leave out" in message and "--optimizer" in message.split("leave out")[1]


# ------------------------------------------------------------------------------ leftovers


@pytest.mark.usefixtures("tiny")
def test_a_fresh_start_drops_steps_a_killed_run_logged_before_its_first_checkpoint(
    tmp_path: Path,
) -> None:
    out = tmp_path / "run"
    out.mkdir()
    (out / "metrics.jsonl").write_text(
        "".join(json.dumps({"step": s, "loss": 1.0}) + "\n" for s in (1, 2))
    )
    train.run_pretrain(config(out, epochs=1, warmup_epochs=0, resume="auto"))
    assert metric_steps(out) == [1, 2, 3, 4]


@pytest.mark.usefixtures("tiny")
def test_a_run_removes_temporaries_of_dead_writers_only(tmp_path: Path) -> None:
    out = tmp_path / "run"
    out.mkdir()
    dead = out / ".checkpoint_epoch_1.pt.999999999-abcd1234.tmp"  # no such pid
    live = out / f".checkpoint_epoch_1.pt.{os.getppid()}-abcd1234.tmp"  # a running process
    dead.write_bytes(b"x" * 1000)
    live.write_bytes(b"x" * 1000)
    train.run_pretrain(config(out, epochs=1, warmup_epochs=0))
    assert not dead.exists() and live.exists()


def test_a_one_byte_checkpoint_is_called_truncated(tmp_path: Path) -> None:
    path = tmp_path / "ck.pt"
    path.write_bytes(b"P")
    with pytest.raises(CheckpointError, match="only 1 bytes long") as caught:
        load_checkpoint(path)
    assert "text file" not in str(caught.value)


def test_a_flipped_byte_in_a_zip_checkpoint_is_detected(tmp_path: Path) -> None:
    path = save_checkpoint({"model": {}, "state_dict": {"w": torch.zeros(4096)}}, tmp_path / "c.pt")
    data = bytearray(path.read_bytes())
    data[len(data) // 2] ^= 0x01  # inside the tensor data: torch.load alone accepts it
    path.write_bytes(bytes(data))
    with pytest.raises(CheckpointError, match="CRC mismatch"):
        load_checkpoint(path)


def test_an_oversized_image_is_skipped_without_pil_s_warning(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, recwarn: pytest.WarningsRecorder
) -> None:
    from PIL import Image

    from simclr_cli.data.datasets import ImageFolderDataset

    Image.new("RGB", (64, 64)).save(tmp_path / "big.png")
    Image.new("RGB", (8, 8)).save(tmp_path / "small.png")
    monkeypatch.setattr(Image, "MAX_IMAGE_PIXELS", 3000)  # 64x64: a warning, not an error
    dataset = ImageFolderDataset(tmp_path)
    assert dataset.skipped == 1 and len(dataset) == 1
    assert not [w for w in recwarn if issubclass(w.category, Image.DecompressionBombWarning)]


# ------------------------------------------------------------------------------ distributed


def test_a_worker_killed_by_a_signal_is_named_not_its_peer(tmp_path: Path) -> None:
    plan = plan_launch(cfg_of(processes=2), env={})
    record = {"rank": 0, "time": 1.0, "type": "RuntimeError", "simclr": False, "exit_code": 1}
    record.update(message="Connection reset by peer", traceback="")
    (tmp_path / "rank0.json").write_text(json.dumps(record))
    error = launching._worker_failure(tmp_path, plan, RuntimeError("exit 1"), [1, -9])
    assert str(error).startswith("worker rank 1 was killed by signal 9 (SIGKILL)")


# ------------------------------------------------------------------------------ downloads


def test_a_release_file_under_the_wrong_name_is_refused(
    server: Loopback,  # noqa: F811
    tmp_path: Path,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    make_release_checkpoint(tmp_path / "r34.tar", "1.1", arch="resnet34")
    entry = _entry("resnet18-test", server.base + "/missing")
    _use_registry(monkeypatch, entry)
    cache = tmp_path / "cache"
    with pytest.raises(CheckpointError) as caught:
        hub.download("resnet18-test", cache, from_file=tmp_path / "r34.tar", progress=False)
    message = str(caught.value)
    assert "a resnet34" in message and "a resnet18" in message
    assert ".part" not in message and "run folder" not in message
    assert sorted(p.name for p in cache.iterdir()) == []


def test_a_corrupted_first_download_is_not_cached(
    server: Loopback,  # noqa: F811
    small_checkpoint: bytes,  # noqa: F811
    tmp_path: Path,
) -> None:
    damaged = bytearray(small_checkpoint)
    damaged[len(damaged) // 2] ^= 0x01
    url = server.add("/flipped.pt", bytes(damaged))
    with pytest.raises(CheckpointError, match="CRC mismatch"):
        hub.download(url, tmp_path, progress=False, settings=FAST)
    assert list(tmp_path.iterdir()) == []  # no file, no manifest record, no lock file
    server.routes["/flipped.pt"].body = small_checkpoint
    assert (
        hub.download(url, tmp_path, progress=False, settings=FAST).read_bytes() == small_checkpoint
    )


def test_force_and_sha256_replace_a_wrong_recorded_hash(
    server: Loopback,  # noqa: F811
    small_checkpoint: bytes,  # noqa: F811
    tmp_path: Path,
) -> None:
    import hashlib

    url = server.add("/v.pt", small_checkpoint)
    hub.download(url, tmp_path, progress=False, settings=FAST)
    other = bytearray(small_checkpoint)
    other[-1] ^= 0x01  # the zip comment length: loads, but another hash
    server.routes["/v.pt"].body = bytes(other)
    with pytest.raises(DownloadError, match=r"--force --sha256 HASH"):
        hub.download(url, tmp_path, force=True, progress=False, settings=FAST)
    digest = hashlib.sha256(bytes(other)).hexdigest()
    try:
        path = hub.download(url, tmp_path, force=True, progress=False, settings=FAST, sha256=digest)
    except CheckpointError:
        pytest.skip("this torch version refuses the edited zip comment")
    assert path.read_bytes() == bytes(other)


def test_a_failed_download_leaves_no_lock_file_and_no_empty_bar(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    import socket

    with socket.socket() as s:  # a port nobody listens on
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(DownloadError):
        hub.download(f"http://127.0.0.1:{port}/x.pt", tmp_path, progress=True, settings=FAST)
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".lock")] == []
    assert "0/? bytes" not in capsys.readouterr().err
