"""The test-time transform written per image with torchvision: the oracle that the loaders'
uint8 crops, normalised per batch on the device
(:func:`simclr_cli.method.preprocess.normalize_uint8`),
must reproduce."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torch import Tensor
from torchvision import transforms

from simclr_cli.method.preprocess import ToRGB


class _ToFloat:
    """PIL image or tensor -> float (C, H, W) tensor in [0, 1]."""

    def __call__(self, image: Any) -> Tensor:
        if isinstance(image, Image.Image):
            image = F.pil_to_tensor(image)
        return F.convert_image_dtype(image, torch.float32)


def eval_transform(
    image_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Callable[[Any], Tensor]:
    """Test-time transform: resize the shorter side, centre crop, float tensor, normalise."""
    steps: list[Callable] = [
        ToRGB(),
        transforms.Resize(image_size, antialias=True),
        transforms.CenterCrop(image_size),
        _ToFloat(),
    ]
    if mean is not None and std is not None:
        steps.append(transforms.Normalize(list(mean), list(std)))
    return transforms.Compose(steps)
