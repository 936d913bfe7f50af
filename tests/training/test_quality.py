"""SimCLR really learns: a short CPU pretraining on `shapes` beats the baselines a reviewer picks.

A smaller cousin of the README quickstart, through the entry points the CLI calls
(``run_pretrain``, then ``run_linear_eval`` with ``--baseline random --baseline pixels``):
ResNet-18 with the ImageNet stem at 32 px, 128 steps of batch 64, Adam, crops of at least a
quarter of the image. The baselines are a ResNet-18 with torchvision's default initialisation
(the same architecture and seed, frozen; not a zero-initialised one, whose blocks are all
identities) and a logistic regression on raw pixels. The margins asserted are set from the
figures measured over seeds (quoted at each assertion), far outside the seed-to-seed spread;
the slow, many-seed version of this comparison is ``benchmarks/quality.py``.
"""

from __future__ import annotations

import json
import os
from typing import Any

import pytest
import torch

from simclr_cli.config import LinearEvalConfig, PretrainConfig
from simclr_cli.evaluation.linear_eval import run_linear_eval
from simclr_cli.training.pretrain import run_pretrain

# About a minute on two idle cores; the hang guard is far above that (pyproject's 900 s was hit
# once on a 2-core machine shared with two other jobs), so a busy machine does not fail it.
pytestmark = [pytest.mark.slow, pytest.mark.timeout(3600)]

CHANCE = 0.1  # shapes has 10 balanced classes
# Measured with this recipe (seeds 0, 1, 2 of pretraining and of the random encoder, 2 threads):
# pretrained 63.6-68.8% linear / 55.5-58.4% kNN, random encoder 51.0-53.5% / 41.6-44.5%, so the
# gap is 10-18 points (linear) and 11-17 (kNN), with a seed-to-seed spread of 2-4 points for
# either encoder. With the old zero-initialised start the same recipe gave 48.5% / 38.6%, below
# the random encoder: the margins below catch that.
MARGIN_LINEAR = 0.05
MARGIN_KNN = 0.05
RECIPE: dict[str, Any] = dict(
    dataset="shapes",
    arch="resnet18",
    stem="imagenet",
    limit=2048,
    batch_size=64,
    epochs=4,  # 32 steps per epoch: 128 steps
    optimizer="adam",
    lr=2e-3,
    temperature=0.2,
    crop_scale=(0.5, 1.0),
    augment_on="device",
    workers=0,
    device="cpu",
)


@pytest.fixture(scope="module")
def results(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Any]:
    # Other test modules pin torch to two threads; the figures below were measured with two.
    threads = torch.get_num_threads()
    torch.set_num_threads(min(2, os.cpu_count() or 1))
    try:
        root = tmp_path_factory.mktemp("quality")
        trained = run_pretrain(PretrainConfig(**RECIPE, out=root / "run"))
        cfg = LinearEvalConfig(
            checkpoint=trained["checkpoint"], dataset="shapes", limit=2000, workers=0,
            device="cpu", baseline=("random", "pixels"), out=root / "eval",
        )  # fmt: skip
        run_linear_eval(cfg)
        metrics = (root / "run" / "metrics.jsonl").read_text().splitlines()
        return {
            "eval": json.loads((root / "eval" / "linear_eval.json").read_text()),
            "metrics": [json.loads(line) for line in metrics],
        }
    finally:
        torch.set_num_threads(threads)


def test_loss_goes_down(results: dict[str, Any]) -> None:
    losses = [r["loss"] for r in results["metrics"] if "loss" in r]
    assert len(losses) >= 10
    # log(2N - 1) = 4.85 at the start (N = 64); measured 4.5 at step 10 and about 2.9 at the end.
    assert losses[-1] < losses[0] - 0.3


def test_evaluation_uses_every_test_image_and_a_k_for_200_per_class(
    results: dict[str, Any],
) -> None:
    result = results["eval"]
    assert result["test_images"] == result["train_images"] == 2000
    assert result["knn"]["k"] == 20  # 2,000 train images: ~200 per class, k capped at a tenth


def test_pretrained_linear_accuracy_beats_the_random_encoder_and_pixels(
    results: dict[str, Any],
) -> None:
    result = results["eval"]
    random, pixels = result["baselines"]["random"], result["baselines"]["pixels"]
    assert result["top1"] > random["top1"] + MARGIN_LINEAR
    assert result["top1"] > pixels["top1"] + MARGIN_LINEAR
    assert random["top1"] > CHANCE + 0.2  # the baseline is a real one, not a crippled encoder


def test_pretrained_knn_accuracy_beats_the_random_encoder(results: dict[str, Any]) -> None:
    result = results["eval"]
    assert result["knn_top1"] > result["baselines"]["random"]["knn_top1"] + MARGIN_KNN
