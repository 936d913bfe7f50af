"""The batched pipeline's image operations: (B, C, H, W) batches, each image with its own factor.

On CPU only the chosen images are computed; on accelerators a mask keeps every step free of
host synchronisation (:func:`update_chosen`). ``tests/test_augment.py`` checks them against
torchvision's per-image operations and Python's ``colorsys``.
"""

from __future__ import annotations

from collections.abc import Callable

import torch
import torch.nn.functional as nnf
from torch import Tensor

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision


def grayscale(x: Tensor) -> Tensor:
    """Luma of (B, 3, H, W) -> (B, 1, H, W)."""
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def grayscale_rgb(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> luma repeated on 3 channels."""
    return grayscale(x).expand_as(x)


def shift_hue(x: Tensor, shift: Tensor) -> Tensor:
    """Rotate the hue of (B, 3, H, W) images in [0, 1] by ``shift`` (B,) turns, as HSV does.

    Value (max) and chroma (max - min) are unchanged by a hue rotation, so RGB comes back as
    ``max - chroma * ramp(hue)`` without forming saturation explicitly.
    """
    r, g, b = x[:, 0:1], x[:, 1:2], x[:, 2:3]  # (B, 1, H, W) views
    maxc = x.amax(dim=1, keepdim=True)
    chroma = maxc - x.amin(dim=1, keepdim=True)
    # hue in sixths of a turn, from the sector of the largest channel (ties: red, then green)
    sector = torch.where(
        r == maxc, g - b, torch.where(g == maxc, b - r + 2.0 * chroma, r - g + 4.0 * chroma)
    )
    hue6 = torch.remainder(sector / chroma.clamp_min(1e-12) + 6.0 * shift.view(-1, 1, 1, 1), 6.0)
    # HSV -> RGB: channel n in (5, 3, 1) is v - v*s*clamp(min(k, 4-k), 0, 1), k = (n + 6h) mod 6
    # (5, 3, 1) made on the device: a tensor of Python floats would be a blocking copy on a GPU
    n = (5.0 - 2.0 * torch.arange(3, device=x.device, dtype=x.dtype)).view(1, 3, 1, 1)
    k = n + hue6  # (B, 3, H, W) in [1, 11)
    k = torch.where(k >= 6.0, k - 6.0, k)
    ramp = torch.minimum(k, 4.0 - k).clamp_(0.0, 1.0)
    return maxc - chroma * ramp


def color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Per-image colour jitter of (B, 3, H, W) in [0, 1], each image in its own op order.

    Brightness, contrast and saturation are blends ``lerp(ref, x, f)`` with a per-image
    reference (black, mean luma, luma image), so one blend per step serves all three; images
    whose op at this step is hue get ``f = 1`` (exactly ``x``) and then the HSV hue rotation.
    ``factors``: (B, 4); ``order``: (B, 4) op indices per step.
    """
    view = (-1, 1, 1, 1)
    for step in range(4):
        op = order[:, step]  # (B,)
        luma = grayscale(x)  # (B, 1, H, W)
        mean = luma.mean(dim=(2, 3), keepdim=True)
        ref = luma * (op == 2).to(x.dtype).view(view) + mean * (op == 1).to(x.dtype).view(view)
        f = factors.gather(1, op.clamp(max=2).view(-1, 1)).view(view)
        f = torch.where(op.view(view) == 3, torch.ones_like(f), f)
        x = torch.lerp(ref.expand_as(x), x, f).clamp_(0.0, 1.0)
        x = update_chosen(x, op == 3, shift_hue, factors[:, 3])
    return x


def update_chosen(
    x: Tensor,
    chosen: Tensor,
    fn: Callable[..., Tensor],
    *per_image: Tensor,
    masked: bool | None = None,
) -> Tensor:
    """Replace the ``chosen`` (B,) images of ``x`` by ``fn(x, *per_image)`` on those images.

    On CPU only the chosen images are computed (indexing costs nothing there); on accelerators
    a mask keeps the step free of host synchronisation (``nonzero`` would wait for the
    device). ``masked`` forces one path (tests compare them).
    """
    if masked is None:
        masked = x.device.type != "cpu"
    if masked:
        return torch.where(chosen.view(-1, 1, 1, 1), fn(x, *per_image), x)
    index = chosen.nonzero().flatten()
    if len(index) == 0:
        return x
    return x.index_copy(0, index, fn(x[index], *(p[index] for p in per_image)))


def gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
    """Blur each image of (B, C, H, W) with its own sigma (B,); reflect padding, separable."""
    b, c, h, w = x.shape
    half = kernel_size // 2
    t = torch.arange(kernel_size, device=x.device, dtype=x.dtype) - half  # (k,)
    kernel = torch.exp(-0.5 * (t / sigma.view(-1, 1)) ** 2)  # (B, k)
    kernel = (kernel / kernel.sum(dim=1, keepdim=True)).repeat_interleave(c, dim=0)  # (B*C, k)
    # One depthwise convolution: every (image, channel) plane is its own group.
    y = nnf.pad(x.reshape(1, b * c, h, w), [half] * 4, mode="reflect")
    y = nnf.conv2d(y, kernel.view(b * c, 1, 1, kernel_size), groups=b * c)
    y = nnf.conv2d(y, kernel.view(b * c, 1, kernel_size, 1), groups=b * c)
    return y.view(b, c, h, w).clamp_(0.0, 1.0)  # kernel rounding can give 1 + 1e-7


def crop_and_flip(x: Tensor, crop: Tensor, flip: Tensor, size: int) -> Tensor:
    """Resample each crop box (B, 4) of (B, C, H, W) to (B, C, S, S), mirrored where ``flip``.

    Sample positions are those of a bilinear resize of the cropped pixels (half-pixel
    centres, clamped to the crop's edge pixels), so this equals crop-then-resize.
    """
    b, _, height, width = x.shape
    top, left, h, w = crop.to(x.dtype).unbind(1)  # (B,) each
    steps = (torch.arange(size, device=x.device, dtype=x.dtype) + 0.5) / size  # (S,)
    xs = left[:, None] + steps * w[:, None] - 0.5  # (B, S) source pixel coordinates
    ys = top[:, None] + steps * h[:, None] - 0.5
    xs = torch.clamp(xs, left[:, None], (left + w - 1)[:, None])
    ys = torch.clamp(ys, top[:, None], (top + h - 1)[:, None])
    xs = torch.where(flip[:, None], xs.flip(1), xs)
    # pixel coordinates -> grid_sample's [-1, 1] (align_corners=False)
    gx = ((2.0 * xs + 1.0) / width - 1.0)[:, None, :].expand(b, size, -1)
    gy = ((2.0 * ys + 1.0) / height - 1.0)[:, :, None].expand(b, -1, size)
    grid = torch.stack([gx, gy], dim=-1)  # (B, S, S, 2)
    return nnf.grid_sample(x, grid, "bilinear", padding_mode="border", align_corners=False)
