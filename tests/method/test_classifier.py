"""The fine-tuned classifier: which head layers it keeps (SimCLRv2's --from-head-layer), that it
starts from the SimCLR model's own modules, and its crop-and-flip views."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simclr_cli.errors import UsageError
from simclr_cli.method.augment import BatchedSimCLRAugment
from simclr_cli.method.classifier import (
    CropFlip,
    build_classifier,
    classifier_from_simclr,
    classifier_spec,
    kept_head_layers,
)
from simclr_cli.method.model import build_simclr, model_spec


@pytest.mark.parametrize(
    ("head", "layer", "rows"),
    [
        ("v1", 1, [("linear", 512, 64, True), ("relu",)]),
        ("v1-bn", 1, [("linear", 512, 64, False), ("bn", 64, True), ("relu",)]),
        ("v2", 1, [("linear", 512, 64, False), ("bn", 64, True), ("relu",)]),
        ("v2", 2, [("linear", 512, 64, False), ("bn", 64, True), ("relu",),
                   ("linear", 64, 64, False), ("bn", 64, True), ("relu",)]),
        ("v1", 0, []),
    ],
)  # fmt: skip
def test_kept_layers_are_linear_bn_relu_of_the_head(head: str, layer: int, rows: list) -> None:
    spec = model_spec("resnet18", "cifar", head=head, hidden_dim=64, projection_dim=16)
    assert kept_head_layers(spec, layer) == rows


@pytest.mark.parametrize(("head", "layers"), [("v1", 1), ("v1-bn", 1), ("v2", 2)])
def test_more_layers_than_the_head_has_is_refused(head: str, layers: int) -> None:
    spec = model_spec("resnet18", "cifar", head=head)
    with pytest.raises(UsageError, match=f"{head} head has {layers} hidden layer"):
        kept_head_layers(spec, layers + 1)


@pytest.mark.parametrize("from_head_layer", [0, 1])
def test_the_classifier_starts_from_the_models_own_modules(from_head_layer: int) -> None:
    spec = model_spec("resnet18", "cifar", head="v2", hidden_dim=32, projection_dim=8)
    torch.manual_seed(0)
    simclr = build_simclr(spec).eval()
    model = classifier_from_simclr(simclr, spec, 5, from_head_layer).eval()
    x = torch.randn(3, 3, 16, 16)
    with torch.no_grad():
        h = simclr.encoder(x)
        linear_bn_relu = list(simclr.projector.children())[:3]
        first = nn.Sequential(*linear_bn_relu)(h) if from_head_layer else h
        linear = model.fc[-1] if from_head_layer else model.fc
        expected = first @ linear.weight.T + linear.bias  # independent of Classifier.forward
        torch.testing.assert_close(model(x), expected)
    assert model.encoder is simclr.encoder
    assert linear.weight.shape == (5, 32 if from_head_layer else 512)
    assert linear.weight.std().item() == pytest.approx(0.01, rel=0.2) and not linear.bias.any()
    # the keys of a checkpoint: encoder.*, fc.* (kept layers at their indices in the head)
    keys = set(model.state_dict())
    assert {k.split(".")[0] for k in keys} == {"encoder", "fc"}
    if from_head_layer:
        assert {"fc.0.weight", "fc.1.running_mean", "fc.3.weight"} <= keys


def test_a_classifier_spec_builds_a_model_its_weights_load_into() -> None:
    spec = model_spec("resnet18", "imagenet", head="v1-bn", hidden_dim=32, projection_dim=8)
    cspec = classifier_spec(spec, num_classes=4, from_head_layer=1)
    torch.manual_seed(1)
    trained = classifier_from_simclr(build_simclr(spec), spec, 4, 1)
    fresh = build_classifier(cspec)
    fresh.load_state_dict(trained.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        torch.testing.assert_close(fresh.eval()(x), trained.eval()(x))


def test_crop_flip_views_are_the_first_two_steps_of_the_simclr_views() -> None:
    images = torch.randint(0, 256, (6, 3, 20, 20), dtype=torch.uint8)
    mean, std = [0.5, 0.4, 0.3], [0.2, 0.25, 0.3]
    views = CropFlip(12, (0.3, 1.0), True, mean, std)(images, torch.Generator().manual_seed(4))
    # BatchedSimCLRAugment without colour: the same draws give the same crops and flips
    simclr = BatchedSimCLRAugment(12, 0.0, False, mean, std, (0.3, 1.0), True)
    params = simclr.sample_params(6, 20, 20, torch.Generator().manual_seed(4))
    params["jitter"] = params["grayscale"] = torch.zeros(6, dtype=torch.bool)
    torch.testing.assert_close(views, simclr.apply(images, params))
    assert views.shape == (6, 3, 12, 12) and views.dtype == torch.float32


def test_crop_flip_with_the_whole_image_and_no_flip_only_normalises() -> None:
    images = torch.randint(0, 256, (4, 3, 10, 10), dtype=torch.uint8)
    views = CropFlip(10, (1.0, 1.0), False)(images, torch.Generator().manual_seed(0))
    # no attempt of a full-area crop fits a square unless its ratio is 1: the fallback is the
    # whole image, resampled at its own pixel centres
    torch.testing.assert_close(views, images.float() / 255)
    flips = CropFlip(10, (1.0, 1.0), True)(images.repeat(50, 1, 1, 1), torch.Generator())
    mirrored = [torch.equal(v, torch.flip(views[i % 4], dims=[2])) for i, v in enumerate(flips)]
    assert 0.3 < sum(mirrored) / len(mirrored) < 0.7  # p = 0.5
