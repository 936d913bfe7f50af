"""Shared helpers of the pretraining tests: a tiny model and its fixture, a config, the weights and
metrics of a run, and a guard that no step reads from the host."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn

from simclr_cli.config import PretrainConfig
from simclr_cli.method.model import SimCLR
from simclr_cli.storage.checkpoint import load_checkpoint
from simclr_cli.training import pretrain as train

STEPS_PER_EPOCH = 4  # limit 48 / batch 12


def tiny_simclr(spec: dict[str, Any], zero_init_residual: bool = False) -> SimCLR:
    """A SimCLR module with a 2-conv encoder (with batch norm, like the real one)."""
    encoder = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return SimCLR(encoder, 16, projection_dim=8)


@pytest.fixture
def tiny(monkeypatch: pytest.MonkeyPatch) -> None:
    """Train the tiny model instead of the ResNet."""
    monkeypatch.setattr(train, "build_simclr", tiny_simclr)


def config(out: Path, **overrides: Any) -> PretrainConfig:
    """A small CPU run: 48 shapes images of 8 px, batch 12 (4 steps per epoch), 2 epochs."""
    options: dict[str, Any] = {
        "dataset": "shapes",
        "limit": 48,
        "image_size": 8,
        "stem": "cifar",
        "batch_size": 12,
        "epochs": 2,
        "warmup_epochs": 1,
        "workers": 0,
        "device": "cpu",
        "precision": "fp32",
        "out": out,
        "log_every": 1,
        "checkpoint_every": 1,
        "seed": 0,
    }
    options.update(overrides)
    return PretrainConfig(**options)


def weights(path: Path) -> dict[str, torch.Tensor]:
    """The model state dict of a checkpoint file."""
    return load_checkpoint(path)["state_dict"]


def assert_same_weights(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), key


def metric_steps(out: Path) -> list[int]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [json.loads(line)["step"] for line in lines if "loss" in json.loads(line)]


@contextlib.contextmanager
def host_reads_forbidden() -> Iterator[None]:
    """Make every way of reading a tensor's value on the host raise (a GPU would sync there)."""

    def sync(*_args: object, **_kwargs: object) -> None:
        raise AssertionError("the step read a tensor value on the host")

    with pytest.MonkeyPatch.context() as patch:
        for name in ("item", "tolist", "__bool__", "__float__", "__int__", "nonzero"):
            patch.setattr(torch.Tensor, name, sync)
        patch.setattr(torch, "nonzero", sync)
        yield
