"""Running ``simclr pretrain`` in a child process and stopping it: the resume and fault tests."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

import pytest
import torch
from train_fixtures import config

TESTS = Path(__file__).parent  # the tests folder: its fixture modules


CHILD = """
import io, json, os, sys, time
import torch
torch.set_num_threads({threads})  # as the test process: resumed runs must match bit for bit
sys.path.insert(0, {tests!r})  # the tests folder: its fixture modules
from train_fixtures import tiny_simclr
from simclr_cli.storage import checkpoint
from simclr_cli.training import pretrain as train
from simclr_cli.training.trainer import Trainer
from simclr_cli.config import PretrainConfig

job = json.loads(sys.argv[1])
train.build_simclr = tiny_simclr
step = Trainer.step

def slow_step(self, views):
    loss = step(self, views)
    time.sleep(job["step_sleep"])
    return loss

Trainer.step = slow_step
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


def options(out: Path, **overrides: Any) -> dict[str, Any]:
    return config(out, **overrides).model_dump(mode="json")


def cli_flags(values: dict[str, Any]) -> list[str]:
    """``--flag value`` pairs for the options that differ from the CLI defaults."""
    flags = []
    for name in ("dataset", "limit", "image_size", "stem", "batch_size", "epochs", "warmup_epochs"):
        flags += [f"--{name.replace('_', '-')}", str(values[name])]
    for name in ("workers", "device", "precision", "out", "log_every", "seed"):
        flags += [f"--{name.replace('_', '-')}", str(values[name])]
    return flags
