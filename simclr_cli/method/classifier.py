"""The fine-tuned classifier: a SimCLR encoder, optionally the first layers of its projection
head, and a new linear layer to the classes; and the fine-tuning views (crop and flip only).

``logits = fc(f(x))``: ``fc`` is one ``nn.Linear`` (``from_head_layer`` 0, SimCLR's protocol) or
the head's first ``from_head_layer`` layers (Linear, its batch norm if the head has one, ReLU)
followed by the new linear layer (SimCLRv2's "fine-tuning from a middle layer of the projection
head"). The keys are those of a torchvision ResNet with its ``fc`` replaced: ``encoder.*``
(the ResNet without ``fc``) and ``fc.*``, the kept layers at the indices they had in the head.

References:
    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    ICML 2020 (arXiv:2002.05709), section 6 and appendix B.5 (fine-tuning on few labels).
    Chen et al., "Big Self-Supervised Models are Strong Semi-Supervised Learners", NeurIPS 2020
    (arXiv:2006.10029), section 2 (fine-tuning from the first layer of the projection head).
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
from torch import Tensor, nn

from simclr_cli.errors import UsageError
from simclr_cli.method import augment_ops as ops
from simclr_cli.method.augment import CROP_SCALE, P_FLIP, ViewRecipe, _crop_boxes, draw_views
from simclr_cli.method.model import HeadLayer, SimCLR, build_simclr, head_layers

# The new linear layer starts small, as the SimCLR TF code's supervised head (normal, std 0.01).
FC_INIT_STD = 0.01


def kept_head_layers(spec: dict[str, Any], from_head_layer: int) -> list[HeadLayer]:
    """The rows of the checkpoint's projection head (:func:`head_layers`) a classifier keeps:
    everything up to the ``from_head_layer``-th ReLU (Linear, batch norm if any, ReLU).

    Raises:
        UsageError: the head has fewer hidden layers than ``from_head_layer``.
    """
    feature = int(spec["feature_dim"])
    rows = head_layers(
        feature,
        int(spec.get("hidden_dim") or feature),
        int(spec["projection_dim"]),
        spec["head"],
        bool(spec.get("head_bias", True)),
    )
    relus = [i for i, row in enumerate(rows) if row[0] == "relu"]
    if not 0 <= from_head_layer <= len(relus):
        raise UsageError(
            "--from-head-layer",
            from_head_layer,
            f"the checkpoint's {spec['head']} head has {len(relus)} hidden layer(s); "
            f"use 0 (the encoder's h) to {len(relus)}",
        )
    return rows[: relus[from_head_layer - 1] + 1] if from_head_layer else []


def input_dim(spec: dict[str, Any], kept: Sequence[HeadLayer]) -> int:
    """Width of what the new linear layer reads: h, or the last kept linear layer's output."""
    linears = [row for row in kept if row[0] == "linear"]
    return int(linears[-1][2]) if linears else int(spec["feature_dim"])


class Classifier(nn.Module):
    """Encoder ``f``, then ``fc``: the kept head layers (if any) and a new linear layer.

    Args:
        encoder: maps ``(B, 3, H, W)`` to ``(B, feature_dim)``.
        fc: maps ``h`` to ``(B, num_classes)`` logits.
        mean, std: the per-channel input normalisation (None: inputs in [0, 1]); prediction
            and evaluation apply it to uint8 batches.
    """

    def __init__(
        self,
        encoder: nn.Module,
        fc: nn.Module,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.encoder = encoder
        self.fc = fc

    def forward(self, x: Tensor) -> Tensor:
        """``(B, 3, H, W)`` normalised images -> ``(B, num_classes)`` logits."""
        return self.fc(self.encoder(x))


def new_fc(kept: Sequence[nn.Module], in_dim: int, num_classes: int) -> nn.Module:
    """``fc``: the kept head modules followed by a new ``Linear(in_dim, num_classes)`` (normal
    weights, std :data:`FC_INIT_STD`, zero bias); the linear layer alone without kept layers."""
    linear = nn.Linear(in_dim, num_classes)
    with torch.no_grad():
        linear.weight.normal_(0.0, FC_INIT_STD)
        linear.bias.zero_()
    return nn.Sequential(*kept, linear) if kept else linear


def classifier_from_simclr(
    model: SimCLR, spec: dict[str, Any], num_classes: int, from_head_layer: int = 0
) -> Classifier:
    """A classifier that starts from a SimCLR model: its encoder and the first
    ``from_head_layer`` layers of its head (shared modules, not copies) plus a new linear layer.

    The new layer draws its weights from torch's global generator: seed it first.
    """
    kept = kept_head_layers(spec, from_head_layer)
    modules = list(model.projector.children())[: len(kept)]
    fc = new_fc(modules, input_dim(spec, kept), num_classes)
    return Classifier(model.encoder, fc, model.mean, model.std)


def classifier_spec(spec: dict[str, Any], num_classes: int, from_head_layer: int) -> dict[str, Any]:
    """The model description of a classifier: the pretraining spec plus its classes' count and
    how much of the head it kept (primitives only, for checkpoints)."""
    return {**spec, "num_classes": int(num_classes), "from_head_layer": int(from_head_layer)}


def build_classifier(spec: dict[str, Any], zero_init_residual: bool = False) -> Classifier:
    """A randomly initialised classifier of a :func:`classifier_spec` (torchvision's default
    initialisation: what a baseline from scratch is, and what a checkpoint's weights load into).
    """
    model = build_simclr(spec, zero_init_residual=zero_init_residual)
    return classifier_from_simclr(model, spec, spec["num_classes"], spec["from_head_layer"])


class CropFlip(nn.Module):
    """The fine-tuning views of a batch on its own device: a random resized crop (area scale
    ``crop_scale``, ratio 3/4-4/3) and a horizontal flip (p = 0.5, when ``flip``), independent
    per image, then scaled to [0, 1] and normalised. No colour distortion.

    The same crop boxes and flips as the first two steps of
    :class:`~simclr_cli.method.augment.BatchedSimCLRAugment` for the same generator.

    Reference: Chen et al. 2020, appendix B.5 ("only random cropping (with random left-to-right
    flipping and resizing ...) is used for preprocessing").
    """

    def __init__(
        self,
        image_size: int,
        crop_scale: tuple[float, float] = CROP_SCALE,
        flip: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        super().__init__()
        self.recipe = ViewRecipe(image_size, 0.0, False, crop_scale, flip)
        self.normalize = mean is not None and std is not None
        self.register_buffer("mean", torch.tensor(mean or [0.0] * 3).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(std or [1.0] * 3).view(1, 3, 1, 1), False)

    @torch.no_grad()
    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """(B, 3, H, W) uint8 -> (B, 3, S, S) float32 views (draws from ``generator``, which
        must be on the images' device)."""
        u = draw_views(generator, x.shape[0], x.device)
        crop = _crop_boxes(x.shape[2], x.shape[3], self.recipe.crop_scale, u)
        flip = (u.flip < P_FLIP) & self.recipe.flip
        x = ops.crop_and_flip(x.float().div_(255.0), crop, flip, self.recipe.image_size)
        return (x - self.mean) / self.std if self.normalize else x
