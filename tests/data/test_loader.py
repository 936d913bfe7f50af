"""Where each rank's views come from: different images and views on every rank, the same views
after a resume, whatever ``--workers`` is.

The two-process tests run real ``simclr pretrain`` ranks (gloo, CPU) whose augmentations record
the crop boxes they draw, one file per rank.
"""

from __future__ import annotations

import json
import os
from pathlib import Path
from typing import Any

import pytest
import torch
from train_fixtures import (
    STEPS_PER_EPOCH,
    assert_same_weights,
    config,
    tiny_simclr,
    weights,
)

from simclr_cli.config import PretrainConfig
from simclr_cli.data.loader import EpochKeys, ResumableSampler, SeededViews
from simclr_cli.data.shapes import ShapesDataset
from simclr_cli.method.augment import SimCLRAugment, TwoViews
from simclr_cli.training import pretrain as train


def crops_file(cfg: PretrainConfig, rank: int) -> Path:
    return cfg.resolved_out.parent / f"crops-rank{rank}.jsonl"


def record(path: Path, kind: str, crops: list[list[int]]) -> None:
    """Append crop boxes, with the DataLoader worker's seed (None outside a worker)."""
    from torch.utils.data import get_worker_info

    worker = get_worker_info()
    line = {"kind": kind, "crops": crops, "worker_seed": worker.seed if worker else None}
    with open(path, "a", encoding="utf-8") as f:
        f.write(json.dumps(line) + "\n")


class RecordingAugment(SimCLRAugment):
    """The per-image views, recording each crop box in the file ``$CROPS_FILE`` names. It
    reaches the DataLoader workers pickled (and the variable inherited), whatever their start
    method."""

    def sample_params(self, height: int, width: int, generator: Any = None) -> dict[str, Any]:
        params = super().sample_params(height, width, generator)
        record(Path(os.environ["CROPS_FILE"]), "cpu", [list(params["crop"])])
        return params


def recording_worker(cfg: PretrainConfig) -> dict[str, Any]:
    """``train.pretrain_worker`` in a spawned rank: the tiny model, and both augmentations
    record the crop boxes they draw in this rank's file."""
    from simclr_cli import distributed
    from simclr_cli.data import loader
    from simclr_cli.method import augment

    path = crops_file(cfg, distributed.rank())
    batched = augment.BatchedSimCLRAugment.sample_params

    def batched_params(self: Any, batch: int, height: int, width: int, *args: Any) -> Any:
        params = batched(self, batch, height, width, *args)
        record(path, "device", params["crop"].tolist())
        return params

    # A spawned process of its own: nothing to restore afterwards.
    os.environ["CROPS_FILE"] = str(path)
    loader.SimCLRAugment = RecordingAugment  # type: ignore[misc]
    augment.BatchedSimCLRAugment.sample_params = batched_params  # type: ignore[method-assign]
    train.build_simclr = tiny_simclr  # type: ignore[assignment]
    return train.pretrain(cfg)


def recorded(cfg: PretrainConfig, rank: int) -> list[dict[str, Any]]:
    lines = crops_file(cfg, rank).read_text(encoding="utf-8").splitlines()
    return [json.loads(line) for line in lines]


@pytest.mark.slow
@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_two_ranks_draw_different_views(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, augment_on: str
) -> None:
    monkeypatch.setattr(train, "pretrain_worker", recording_worker)
    cfg = config(tmp_path / "run", processes=2, workers=1, augment_on=augment_on, max_steps=2)
    assert train.run_pretrain(cfg)["global_step"] == 2

    ranks = [recorded(cfg, rank) for rank in (0, 1)]
    views_per_step = 2 * cfg.per_process_batch_size
    # The first step's crop boxes (the workers may have drawn more batches ahead).
    first = [[box for r in records for box in r["crops"]][:views_per_step] for records in ranks]
    assert all(len(boxes) == views_per_step for boxes in first)
    assert all(r["kind"] == augment_on for records in ranks for r in records)
    assert first[0] != first[1]
    if augment_on == "cpu":  # drawn in DataLoader workers, whose seeds differ by rank too
        seeds = [{r["worker_seed"] for r in records} for records in ranks]
        assert None not in seeds[0] | seeds[1] and seeds[0].isdisjoint(seeds[1])


def test_host_views_depend_only_on_seed_epoch_and_index() -> None:
    views = SeededViews(ShapesDataset(size=4, image_size=16), TwoViews(SimCLRAugment(8)), seed=0)
    torch.manual_seed(1)  # the global stream (a worker's, a rank's) plays no part
    (a_i, a_j), label = views[(2, 0)]
    torch.manual_seed(2)
    (b_i, b_j), _ = views[(2, 0)]
    assert torch.equal(a_i, b_i) and torch.equal(a_j, b_j) and label == views.dataset[2][1]
    assert not torch.equal(a_i, a_j)  # two views, not one twice
    assert not torch.equal(a_i, views[(2, 1)][0][0])  # another epoch, other views
    assert not torch.equal(a_i, views[(3, 0)][0][0])  # another image, other views
    other_seed = SeededViews(views.dataset, views.views, seed=1)
    assert not torch.equal(a_i, other_seed[(2, 0)][0][0])


def test_epoch_keys_follow_the_sampler_and_its_skip() -> None:
    sampler = ResumableSampler(ShapesDataset(size=20), num_replicas=2, rank=1, seed=3)
    sampler.set_epoch(4, skip=3)
    assert list(EpochKeys(sampler)) == [(index, 4) for index in sampler]
    assert len(EpochKeys(sampler)) == len(sampler) == 7


@pytest.mark.usefixtures("tiny")
def test_host_views_resume_exactly_with_any_number_of_workers(tmp_path: Path) -> None:
    options = {"augment_on": "cpu"}
    train.run_pretrain(config(tmp_path / "a", workers=0, **options))
    # Stopped inside the second epoch with one worker, resumed with two.
    stop = STEPS_PER_EPOCH + 2
    train.run_pretrain(config(tmp_path / "b", workers=1, max_steps=stop, **options))
    summary = train.run_pretrain(config(tmp_path / "b", workers=2, resume="auto", **options))
    assert summary["global_step"] == 2 * STEPS_PER_EPOCH
    assert_same_weights(
        weights(tmp_path / "a" / "checkpoint_last.pt"),
        weights(tmp_path / "b" / "checkpoint_last.pt"),
    )
