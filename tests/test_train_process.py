"""Pretraining runs in separate processes: kill -9 mid-epoch and mid-save, SIGINT via the CLI.

The child process trains the tiny model of ``test_train.py`` and can be slowed down (a sleep
after each step) or held inside a checkpoint write (the bytes half written, then a sleep), so
that the test can kill it at a known moment.
"""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from test_train import (  # noqa: F401 (tiny is a fixture: resumes train the child's model)
    assert_same_weights,
    config,
    metric_steps,
    tiny,
    weights,
)

from simclr_cli.errors import CheckpointError
from simclr_cli.storage.checkpoint import load_checkpoint
from simclr_cli.training import pretrain as train

TESTS = Path(__file__).parent
CHILD = """
import io, json, os, sys, time
import torch
torch.set_num_threads({threads})  # as the test process: resumed runs must match bit for bit
sys.path.insert(0, {tests!r})
from test_train import tiny_simclr
from simclr_cli.storage import checkpoint
from simclr_cli.training import pretrain as train
from simclr_cli.config import PretrainConfig

job = json.loads(sys.argv[1])
train.build_simclr = tiny_simclr
step = train.Trainer.step

def slow_step(self, views):
    loss = step(self, views)
    time.sleep(job["step_sleep"])
    return loss

train.Trainer.step = slow_step
real_save = torch.save
calls = [0]

class HeldWrite:
    # A file whose third write (inside torch's zip writer) stops until the process is signalled.
    def __init__(self, f):
        self.f, self.writes = f, 0

    def write(self, data):
        self.writes += 1
        if self.writes == 3:
            open(job["marker"], "w").close()
            time.sleep(600)
        return self.f.write(data)

    def __getattr__(self, name):
        return getattr(self.f, name)

def held_save(obj, f, *args, **kwargs):
    calls[0] += 1
    if calls[0] != job["hold_save_at"]:
        return real_save(obj, f, *args, **kwargs)
    if job.get("hold_in_write"):
        return real_save(obj, HeldWrite(f), *args, **kwargs)
    buffer = io.BytesIO()
    real_save(obj, buffer)
    f.write(buffer.getvalue()[: len(buffer.getvalue()) // 2])  # half of the bytes on disk
    f.flush()
    open(job["marker"], "w").close()
    time.sleep(600)

checkpoint.torch.save = held_save
if job.get("mark_start"):  # stop while starting up: before the data and model are built
    build_data = train.build_pretrain_data

    def held_data(*args, **kwargs):
        open(job["marker"], "w").close()
        time.sleep(600)
        return build_data(*args, **kwargs)

    train.build_pretrain_data = held_data
if job["cli"]:
    from simclr_cli.cli import run
    sys.exit(run(job["cli"]))
train.run_pretrain(PretrainConfig(**job["options"]))
"""


def start_child(job: dict[str, Any], new_session: bool = False) -> subprocess.Popen:
    job = {"step_sleep": 0.0, "hold_save_at": 0, "marker": "", "cli": None, **job}
    code = CHILD.format(tests=str(TESTS), threads=torch.get_num_threads())
    env = {"OMP_NUM_THREADS": "1", "PATH": "/usr/bin:/bin"}
    return subprocess.Popen(
        [sys.executable, "-c", code, json.dumps(job, default=str)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=new_session,  # its own process group, to signal it whole
    )


def wait_for(condition: Any, child: subprocess.Popen, timeout: float = 180.0) -> None:
    """Poll ``condition()`` until true; fail if the child exits first or time runs out."""
    deadline = time.monotonic() + timeout
    while not condition():
        if child.poll() is not None:
            pytest.fail(f"child exited early ({child.returncode}): {child.stderr.read()[-2000:]}")
        if time.monotonic() > deadline:
            child.kill()
            pytest.fail("child did not reach the expected point in time")
        time.sleep(0.05)


def logged_steps(out: Path) -> list[int]:
    try:
        return metric_steps(out)
    except (FileNotFoundError, json.JSONDecodeError):  # not written yet, or a line in flight
        return []


def options(out: Path, **overrides: Any) -> dict[str, Any]:
    return config(out, **overrides).model_dump(mode="json")


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


def cli_flags(values: dict[str, Any]) -> list[str]:
    """``--flag value`` pairs for the options that differ from the CLI defaults."""
    flags = []
    for name in ("dataset", "limit", "image_size", "stem", "batch_size", "epochs", "warmup_epochs"):
        flags += [f"--{name.replace('_', '-')}", str(values[name])]
    for name in ("workers", "device", "precision", "out", "log_every", "seed"):
        flags += [f"--{name.replace('_', '-')}", str(values[name])]
    return flags


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
        "metrics.jsonl",
    ]
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
