"""The checkpoint files simclr-cli writes, compared key by key with a recorded layout.

``tests/storage/checkpoint_layout.json`` was written by this test (``SIMCLR_WRITE_LAYOUT=1``) before
the package was reshaped into its current modules. A pretraining checkpoint and a converted
release file must still have the same keys, the same primitive values, tensors of the same
dtype and shape, and (for weights, whose values depend on float rounding of the CPU) the same
sums to within 1e-3 relative. Regenerate the file only for a deliberate format change, and
bump ``checkpoint.FORMAT_VERSION`` with it.
"""

from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from release_fixtures import make_release_checkpoint

from simclr_cli.config import PretrainConfig
from simclr_cli.storage.checkpoint import load_checkpoint
from simclr_cli.training import pretrain as train

LAYOUT = Path(__file__).parent / "checkpoint_layout.json"
# Values that differ from run to run by nature: compared by type only.
VOLATILE = ("/metrics/images_per_s", "/rng")


def flatten(obj: Any, root: Path, path: str = "") -> dict[str, Any]:
    """``{key path: description}``; paths under ``root`` are written relative to it."""
    out: dict[str, Any] = {}
    if isinstance(obj, dict):
        out[path or "/"] = ["dict", sorted(map(str, obj))]
        for key, value in obj.items():
            out.update(flatten(value, root, f"{path}/{key}"))
    elif isinstance(obj, (list, tuple)):
        out[path] = [type(obj).__name__, len(obj)]
        for i, value in enumerate(obj):
            out.update(flatten(value, root, f"{path}[{i}]"))
    elif isinstance(obj, torch.Tensor):
        total = obj.double().sum().item() if obj.is_floating_point() else obj.sum().item()
        out[path] = ["tensor", str(obj.dtype), list(obj.shape), total]
    elif isinstance(obj, str) and obj.startswith(str(root)):
        out[path] = ["str", "<tmp>" + obj[len(str(root)) :]]
    else:
        out[path] = [type(obj).__name__, obj]
    return out


def pretrain_checkpoint(tmp: Path) -> dict[str, Any]:
    """Two LARS steps of a ResNet-18 (CIFAR stem) on 24 ``shapes`` images of 8 px."""
    cfg = PretrainConfig(
        dataset="shapes", data_dir=tmp / "data", limit=24, image_size=8, stem="cifar",
        batch_size=12, epochs=1, warmup_epochs=0, workers=0, device="cpu", precision="fp32",
        out=tmp / "run", log_every=1, checkpoint_every=1, seed=0,
    )  # fmt: skip
    train.run_pretrain(cfg)
    return flatten(load_checkpoint(tmp / "run" / "checkpoint_last.pt"), tmp)


def release_checkpoint(tmp: Path) -> dict[str, Any]:
    """A Spijkervet release file (layout 1.1, ResNet-18) as ``load_checkpoint`` converts it."""
    path = tmp / "checkpoint_100.tar"
    make_release_checkpoint(path, layout="1.1", arch="resnet18", seed=0)
    return flatten(load_checkpoint(path), tmp)


def same(recorded: Any, now: Any, key: str) -> bool:
    if recorded[0] == "tensor" and now[0] == "tensor":
        if recorded[1:3] != now[1:3]:
            return False
        if key.startswith(VOLATILE) or "/optimizer/state" in key:
            return True
        return math.isclose(recorded[3], now[3], rel_tol=1e-3, abs_tol=1e-3)
    if key.startswith(VOLATILE) or key == "/metrics/loss":
        if key == "/metrics/loss":
            return math.isclose(recorded[1], now[1], rel_tol=1e-3)
        return recorded[0] == now[0]
    return recorded == now


@pytest.mark.parametrize("kind", ["pretrain", "release"])
def test_checkpoint_layout_is_unchanged(kind: str, tmp_path: Path) -> None:
    now = (pretrain_checkpoint if kind == "pretrain" else release_checkpoint)(tmp_path)
    now = json.loads(json.dumps(now))  # tuples to lists, as the recorded file has them
    if os.environ.get("SIMCLR_WRITE_LAYOUT") == "1":
        layouts = json.loads(LAYOUT.read_text()) if LAYOUT.exists() else {}
        layouts[kind] = now
        LAYOUT.write_text(json.dumps(layouts, indent=0, sort_keys=True) + "\n")
    recorded = json.loads(LAYOUT.read_text())[kind]
    assert sorted(now) == sorted(recorded), "keys differ"
    differing = [key for key in recorded if not same(recorded[key], now[key], key)]
    assert not differing, [(key, recorded[key], now[key]) for key in differing[:5]]
