"""Pretraining runs in separate processes: kill -9 mid-epoch and mid-save, SIGINT via the CLI.

The child process trains the tiny model of ``test_train.py`` and can be slowed down (a sleep
after each step) or held inside a checkpoint write (the bytes half written, then a sleep), so
that the test can kill it at a known moment.
"""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch
from process_fixtures import cli_flags, options, start_child, wait_for
from train_fixtures import (
    assert_same_weights,
    config,
    metric_steps,
    weights,
)

from simclr_cli.errors import CheckpointError
from simclr_cli.storage.checkpoint import load_checkpoint
from simclr_cli.training import pretrain as train


def logged_steps(out: Path) -> list[int]:
    try:
        return metric_steps(out)
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or a line in flight
        return []


@pytest.mark.slow
@pytest.mark.usefixtures("tiny")
def test_kill_9_mid_epoch_then_resume_matches_an_uninterrupted_run(tmp_path: Path) -> None:
    out = tmp_path / "killed"
    child = start_child({"options": options(out, epochs=50), "step_sleep": 0.2})
    wait_for(lambda: max(logged_steps(out), default=0) >= 6, child)  # inside epoch 2
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)

    saved = load_checkpoint(out / "checkpoint_last.pt")["global_step"]
    assert saved >= 4 and saved % 4 == 0  # the last completed epoch, intact
    stop = saved + 6  # resume and stop mid-epoch; compare with a straight run to the same step
    train.run_pretrain(config(out, epochs=50, resume="auto", max_steps=stop))
    train.run_pretrain(config(tmp_path / "straight", epochs=50, max_steps=stop))
    assert_same_weights(
        weights(out / "checkpoint_last.pt"), weights(tmp_path / "straight" / "checkpoint_last.pt")
    )
    assert metric_steps(out) == list(range(1, stop + 1))  # steps logged before the kill dropped


@pytest.mark.slow
@pytest.mark.usefixtures("tiny")
def test_kill_9_mid_save_leaves_the_previous_checkpoint(tmp_path: Path) -> None:
    out, marker = tmp_path / "run", tmp_path / "saving"
    # Save 1 is epoch 1's checkpoint_last.pt; the child is killed inside save 2 (epoch 2).
    job = {"options": options(out, epochs=3, checkpoint_every=100), "hold_save_at": 2}
    child = start_child({**job, "marker": str(marker)})
    wait_for(marker.exists, child)
    child.send_signal(signal.SIGKILL)
    child.wait(timeout=60)

    assert load_checkpoint(out / "checkpoint_last.pt")["global_step"] == 4
    partial = list(out.glob(".checkpoint_last.pt.*.tmp"))
    assert len(partial) == 1  # the write was really cut short ...
    with pytest.raises(CheckpointError):
        load_checkpoint(partial[0])  # ... and would have been a corrupt checkpoint

    summary = train.run_pretrain(config(out, epochs=3, checkpoint_every=100, resume="auto"))
    assert summary["global_step"] == 12
    assert load_checkpoint(out / "checkpoint_last.pt")["global_step"] == 12


@pytest.mark.slow
def test_sigint_through_the_cli_exits_130_with_a_checkpoint(tmp_path: Path) -> None:
    out = tmp_path / "run"
    argv = ["pretrain", *cli_flags(options(out, epochs=50))]
    child = start_child({"cli": argv, "step_sleep": 0.2})
    wait_for(lambda: max(logged_steps(out), default=0) >= 2, child)
    child.send_signal(signal.SIGINT)
    _, stderr = child.communicate(timeout=120)

    assert child.returncode == 130, stderr
    assert f"--resume auto --out {out}" in stderr
    payload = load_checkpoint(out / "checkpoint_last.pt")
    # The step in flight was finished and logged, and the checkpoint holds exactly that step.
    assert payload["global_step"] == max(metric_steps(out)) >= 2
    assert (
        payload["optimizer"]["state"]
        and torch.isfinite(payload["state_dict"]["encoder.0.weight"]).all()
    )


@pytest.mark.slow
def test_sigterm_to_the_whole_process_group_stops_cleanly_with_workers(tmp_path: Path) -> None:
    """systemd, Slurm's scancel and ``kill -- -PGID`` signal the DataLoader workers too; the run
    must still finish its step, checkpoint and exit 130 with one line, no traceback."""
    out = tmp_path / "run"
    argv = ["pretrain", *cli_flags(options(out, epochs=50, workers=2))]
    child = start_child({"cli": argv, "step_sleep": 0.2}, new_session=True)
    wait_for(lambda: max(logged_steps(out), default=0) >= 2, child)
    os.killpg(child.pid, signal.SIGTERM)  # the launcher and both workers
    _, stderr = child.communicate(timeout=120)

    assert child.returncode == 130, stderr
    assert "Traceback" not in stderr and "stopped by SIGTERM" in stderr
    assert f"--resume auto --out {out}" in stderr
    assert load_checkpoint(out / "checkpoint_last.pt")["global_step"] == max(metric_steps(out))


@pytest.mark.slow
def test_two_processes_write_once_and_resume_with_one(tmp_path: Path) -> None:
    # Spawned workers import simclr_cli afresh, so this run trains the real ResNet-18.
    from simclr_cli.method.model import build_simclr

    cfg = config(tmp_path, limit=16, batch_size=8, max_steps=2, processes=2)  # 2 steps/epoch
    summary = train.run_pretrain(cfg)

    assert summary["global_step"] == 2  # rank 0's summary comes back to the caller
    names = sorted(p.name for p in tmp_path.iterdir())
    events = [n for n in names if n.startswith("events.out.tfevents")]
    assert [n for n in names if n not in events] == [
        "checkpoint_epoch_1.pt",
        "checkpoint_last.pt",
        "config.json",
        "images.txt",  # the --limit sample, written once
        "metrics.jsonl",
    ]
    assert len((tmp_path / "images.txt").read_text().splitlines()) == 16
    assert len(events) <= 1  # TensorBoard (when installed) writes on rank 0 only
    assert metric_steps(tmp_path) == [1, 2]  # one writer: no line twice
    payload = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert payload["config"]["resolved"]["world_size"] == 2
    assert payload["config"]["resolved"]["per_process_batch_size"] == 4
    single = build_simclr(payload["model"]).state_dict()
    assert list(payload["state_dict"]) == list(single)  # no "module." prefix, same layout

    resumed = train.run_pretrain(config(tmp_path, limit=16, batch_size=8, resume="auto"))
    assert resumed["global_step"] == 4
    assert load_checkpoint(tmp_path / "checkpoint_last.pt")["config"]["resolved"]["world_size"] == 1
    assert metric_steps(tmp_path) == [1, 2, 3, 4]
