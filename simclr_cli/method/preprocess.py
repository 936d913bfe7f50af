"""The fixed (not random) image transforms: RGB, a uint8 crop of fixed size, normalisation.

Evaluation, features, the kNN monitor and ``--augment-on device`` decode images to uint8
``(3, S, S)`` crops in the loader (:func:`to_uint8_transform`) and normalise whole batches on the
device (:func:`normalize_uint8`); the per-image SimCLR views start from :class:`ToRGB`.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch import Tensor
from torchvision import transforms
from torchvision.transforms import functional as F


def to_rgb(image: Image.Image) -> Image.Image:
    """Convert any PIL image to 8-bit RGB.

    16-bit grayscale (PNG/TIFF modes ``I;16*``, and ``I`` with values above 255) is rescaled
    from 0..65535 to 0..255 first: PIL's own conversion clips those values at 255, turning
    most of the image white.
    """
    if image.mode == "I" or image.mode.startswith("I;16"):
        values = np.asarray(image, dtype=np.float64)  # (H, W)
        if image.mode != "I" or values.max() > 255:  # 0..65535, not 8-bit data in an int image
            values = values / 257.0
        scaled = np.clip(values + 0.5, 0.0, 255.0).astype(np.uint8)
        image = Image.fromarray(scaled)  # mode "L"
    return image.convert("RGB")  # a loaded copy, also for RGB (the file may be closed next)


class ToRGB:
    """PIL image -> 8-bit RGB PIL image; (1, H, W) tensor -> (3, H, W); other tensors as given."""

    def __call__(self, image: Any) -> Any:
        if isinstance(image, Image.Image) and image.mode != "RGB":
            return to_rgb(image)  # 16-bit grayscale is rescaled, not clipped
        if isinstance(image, Tensor) and image.dim() == 3 and image.shape[0] == 1:
            return image.expand(3, -1, -1)  # grayscale: the encoder takes 3 channels
        return image


class _ToUint8:
    """PIL image or tensor -> uint8 (C, H, W) tensor."""

    def __call__(self, image: Any) -> Tensor:
        if isinstance(image, Image.Image):
            return F.pil_to_tensor(image)
        return F.convert_image_dtype(image, torch.uint8)


def normalize_uint8(
    images: Tensor, mean: Sequence[float] | None = None, std: Sequence[float] | None = None
) -> Tensor:
    """The batched second half of the test-time transform: uint8 -> float in [0, 1], normalised.

    ``normalize_uint8(stack([to_uint8_transform(s)(im) ...]), mean, std)`` equals resizing,
    centre cropping and normalising each image as float32 (``tests/transform_oracle.py``), but the
    per-image work in the loader is only the uint8 crop, and the batch crosses to the GPU as
    uint8 (a quarter of the bytes).

    Args:
        images: (B, 3, S, S) uint8.
        mean, std: per-channel normalisation, or None for [0, 1] floats.

    Returns:
        (B, 3, S, S) float32 on the device of ``images``.
    """
    x = images.float().div_(255.0)
    if mean is not None and std is not None:
        view = (1, -1, 1, 1)
        x.sub_(torch.tensor(mean, device=x.device).view(view))
        x.div_(torch.tensor(std, device=x.device).view(view))
    return x


def to_uint8_transform(image_size: int) -> Callable[[Any], Tensor]:
    """Fixed-size uint8 (3, S, S) tensors for the batched augmentation on the device.

    Resizes the shorter side to ``image_size`` and centre crops, so batches stack and the
    random crop happens later, per image, on the device
    (:class:`~simclr_cli.method.augment.BatchedSimCLRAugment`).
    """
    return transforms.Compose(
        [
            ToRGB(),
            transforms.Resize(image_size, antialias=True),
            transforms.CenterCrop(image_size),
            _ToUint8(),
        ]
    )
