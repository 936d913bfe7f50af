"""The SimCLR views: a per-image pipeline (DataLoader workers) and a batched one (any device).

Both draw the same random parameters from the same uniform numbers, laid out identically (see
``_U``), so with the same seed one image gets the same view parameters from either
implementation; ``tests/test_augment.py`` checks the parameters, the pixels and the rates.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, appendix A (data augmentation details).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from functools import partial
from typing import Any

import torch
import torch.nn.functional as nnf
import torchvision.transforms.functional as F
from PIL import Image
from torch import Tensor, nn
from torchvision import transforms

from simclr_cli.errors import UsageError

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10  # as torchvision's RandomResizedCrop before falling back to a centre crop
P_FLIP = 0.5
P_JITTER = 0.8
P_GRAYSCALE = 0.2
P_BLUR = 0.5
BLUR_SIGMA = (0.1, 2.0)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")

# Column layout of the uniform numbers each view consumes (shared by both implementations).
_U_SCALE = slice(0, CROP_ATTEMPTS)
_U_RATIO = slice(CROP_ATTEMPTS, 2 * CROP_ATTEMPTS)
_U_TOP, _U_LEFT, _U_FLIP, _U_JITTER = 20, 21, 22, 23
_U_FACTORS = slice(24, 28)  # brightness, contrast, saturation, hue
_U_ORDER = slice(28, 32)  # argsort -> a uniformly random order of the four jitter operations
_U_GRAY, _U_BLUR, _U_SIGMA = 32, 33, 34
_U = 35

_GRAY_WEIGHTS = (0.2989, 0.587, 0.114)  # ITU-R 601-2 luma, as torchvision


def blur_kernel_size(image_size: int) -> int:
    """Gaussian-blur kernel side: 10% of the image size, made odd, at least 3 (paper app. A)."""
    size = int(0.1 * image_size)
    return max(3, size if size % 2 == 1 else size + 1)


def jitter_ranges(strength: float) -> tuple[tuple[float, float], ...]:
    """Ranges of the brightness, contrast, saturation and hue factors for strength ``s``.

    Reference: SimCLR appendix A, ``ColorJitter(0.8s, 0.8s, 0.8s, 0.2s)``.
    """
    s = 0.8 * strength
    return (
        (max(0.0, 1 - s), 1 + s),
        (max(0.0, 1 - s), 1 + s),
        (max(0.0, 1 - s), 1 + s),
        (
            -0.2 * strength,
            0.2 * strength,
        ),
    )


def _check_options(
    image_size: int, jitter_strength: float, crop_scale: tuple[float, float] = CROP_SCALE
) -> tuple[float, float]:
    if image_size < 8:
        raise UsageError("--image-size", image_size, "use at least 8 pixels")
    if not 0.0 <= jitter_strength <= 2.5:
        raise UsageError("--jitter-strength", jitter_strength, "use a value between 0 and 2.5")
    low, high = (float(v) for v in crop_scale)
    if not 0.0 < low <= high <= 1.0:
        raise UsageError(
            "--crop-scale", f"{low:g},{high:g}", "use MIN,MAX with 0 < MIN <= MAX <= 1"
        )
    return low, high


def _fallback_crop(height: int, width: int) -> tuple[int, int]:
    """Crop (h, w) used when no attempt fits: the whole image clipped to the ratio range."""
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        return int(round(width / CROP_RATIO[0])), width
    if ratio > CROP_RATIO[1]:
        return height, int(round(height * CROP_RATIO[1]))
    return height, width


# --------------------------------------------------------------------------------------------
# per-image pipeline


class SimCLRAugment:
    """One random SimCLR view of one image (PIL image or (C, H, W) tensor).

    Random resized crop (area scale ``crop_scale``, default 0.08-1, ratio 3/4-4/3) to
    ``image_size``, horizontal flip (p=0.5, only when ``flip``), colour jitter (0.8s, 0.8s,
    0.8s, 0.2s) in random order (p=0.8), grayscale (p=0.2),
    Gaussian blur with sigma in [0.1, 2] (p=0.5, only when ``blur``), then a float tensor
    (3, image_size, image_size) in [0, 1], normalised when ``mean``/``std`` are given.

    Randomness comes from ``torch``'s generator (DataLoader seeds it per worker), or the
    ``generator`` passed to the call.

    Reference: SimCLR (Chen et al. 2020), appendix A.

    Args:
        image_size: Output side in pixels.
        jitter_strength: Colour-jitter strength ``s`` (paper: 0.5 CIFAR, 1.0 ImageNet).
        blur: Apply the random Gaussian blur.
        mean: Per-channel mean for normalisation, or None.
        std: Per-channel std for normalisation, or None.
        crop_scale: (min, max) fraction of the image area a crop covers.
        flip: Mirror half of the views horizontally (off for digits, text, some medical images).
    """

    def __init__(
        self,
        image_size: int,
        jitter_strength: float = 1.0,
        blur: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_scale: tuple[float, float] = CROP_SCALE,
        flip: bool = True,
    ) -> None:
        self.crop_scale = _check_options(image_size, jitter_strength, crop_scale)
        self.flip = flip
        self.image_size = image_size
        self.jitter_strength = jitter_strength
        self.blur = blur
        self.kernel_size = blur_kernel_size(image_size)
        self.ranges = jitter_ranges(jitter_strength)
        self.mean = None if mean is None else list(mean)
        self.std = None if std is None else list(std)

    def sample_params(
        self, height: int, width: int, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Draw the view parameters for an image of ``height`` x ``width`` pixels.

        Returns:
            ``crop`` (top, left, h, w), ``flip``, ``jitter`` (applied or not), ``factors``
            (brightness, contrast, saturation, hue), ``order`` (jitter operation indices),
            ``grayscale``, ``blur`` and ``sigma``.
        """
        u = torch.rand(_U, generator=generator).tolist()
        crop = self._sample_crop(height, width, u, self.crop_scale)
        factors = tuple(
            lo + (hi - lo) * v for (lo, hi), v in zip(self.ranges, u[_U_FACTORS], strict=True)
        )
        keys = u[_U_ORDER]
        return {
            "crop": crop,
            "flip": self.flip and u[_U_FLIP] < P_FLIP,
            "jitter": u[_U_JITTER] < P_JITTER,
            "factors": factors,
            "order": tuple(sorted(range(4), key=keys.__getitem__)),
            "grayscale": u[_U_GRAY] < P_GRAYSCALE,
            "blur": self.blur and u[_U_BLUR] < P_BLUR,
            "sigma": BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[_U_SIGMA],
        }

    @staticmethod
    def _sample_crop(
        height: int, width: int, u: list[float], scale: tuple[float, float]
    ) -> tuple[int, int, int, int]:
        """torchvision's RandomResizedCrop rule, driven by the given uniform numbers."""
        area = height * width
        log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
        for u_scale, u_ratio in zip(u[_U_SCALE], u[_U_RATIO], strict=True):
            target = area * (scale[0] + (scale[1] - scale[0]) * u_scale)
            aspect = math.exp(log_lo + (log_hi - log_lo) * u_ratio)
            w = int(round(math.sqrt(target * aspect)))
            h = int(round(math.sqrt(target / aspect)))
            if 0 < w <= width and 0 < h <= height:
                top = int(u[_U_TOP] * (height - h + 1))
                left = int(u[_U_LEFT] * (width - w + 1))
                return top, left, h, w
        h, w = _fallback_crop(height, width)
        return (height - h) // 2, (width - w) // 2, h, w

    def apply(self, image: Image.Image | Tensor, params: dict[str, Any]) -> Tensor:
        """Make the view described by ``params`` (from :meth:`sample_params`)."""
        image = _ToRGB()(image)
        top, left, h, w = params["crop"]
        size = [self.image_size, self.image_size]
        image = F.resized_crop(image, top, left, h, w, size, antialias=True)
        if params["flip"]:
            image = F.hflip(image)
        if params["jitter"]:
            for op in params["order"]:
                image = _JITTER_FUNCTIONS[op](image, params["factors"][op])
        if params["grayscale"]:
            image = F.rgb_to_grayscale(image, num_output_channels=3)
        if isinstance(image, Image.Image):
            image = F.pil_to_tensor(image)  # uint8 (3, S, S); faster than to_tensor
        tensor = F.convert_image_dtype(image, torch.float32)
        if params["blur"]:  # on the float tensor: PIL's blur is a box-filter approximation
            sigma = params["sigma"]
            tensor = F.gaussian_blur(tensor, [self.kernel_size] * 2, [sigma, sigma])
            tensor = tensor.clamp_(0.0, 1.0)  # kernel rounding can give 1 + 1e-7
        if self.mean is not None and self.std is not None:
            tensor = F.normalize(tensor, self.mean, self.std)
        return tensor

    def __call__(
        self, image: Image.Image | Tensor, generator: torch.Generator | None = None
    ) -> Tensor:
        if isinstance(image, Image.Image):
            width, height = image.size
        else:
            height, width = image.shape[-2:]
        return self.apply(image, self.sample_params(height, width, generator))


_JITTER_FUNCTIONS: tuple[Callable[[Any, float], Any], ...] = (
    F.adjust_brightness,
    F.adjust_contrast,
    F.adjust_saturation,
    F.adjust_hue,
)


class TwoViews:
    """Apply a random transform twice to the same image: ``image -> (view_1, view_2)``."""

    def __init__(self, transform: Callable[[Any], Any]) -> None:
        self.transform = transform

    def __call__(self, image: Any) -> tuple[Any, Any]:
        return self.transform(image), self.transform(image)


# --------------------------------------------------------------------------------------------
# batched pipeline


def _grayscale(x: Tensor) -> Tensor:
    """Luma of (B, 3, H, W) -> (B, 1, H, W)."""
    r, g, b = x.unbind(1)
    return (_GRAY_WEIGHTS[0] * r + _GRAY_WEIGHTS[1] * g + _GRAY_WEIGHTS[2] * b).unsqueeze(1)


def _grayscale_rgb(x: Tensor) -> Tensor:
    """(B, 3, H, W) -> luma repeated on 3 channels."""
    return _grayscale(x).expand_as(x)


def _shift_hue(x: Tensor, shift: Tensor) -> Tensor:
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


def _color_jitter(x: Tensor, factors: Tensor, order: Tensor) -> Tensor:
    """Per-image colour jitter of (B, 3, H, W) in [0, 1], each image in its own op order.

    Brightness, contrast and saturation are blends ``lerp(ref, x, f)`` with a per-image
    reference (black, mean luma, luma image), so one blend per step serves all three; images
    whose op at this step is hue get ``f = 1`` (exactly ``x``) and then the HSV hue rotation.
    ``factors``: (B, 4); ``order``: (B, 4) op indices per step.
    """
    view = (-1, 1, 1, 1)
    for step in range(4):
        op = order[:, step]  # (B,)
        luma = _grayscale(x)  # (B, 1, H, W)
        mean = luma.mean(dim=(2, 3), keepdim=True)
        ref = luma * (op == 2).to(x.dtype).view(view) + mean * (op == 1).to(x.dtype).view(view)
        f = factors.gather(1, op.clamp(max=2).view(-1, 1)).view(view)
        f = torch.where(op.view(view) == 3, torch.ones_like(f), f)
        x = torch.lerp(ref.expand_as(x), x, f).clamp_(0.0, 1.0)
        x = _update_chosen(x, op == 3, _shift_hue, factors[:, 3])
    return x


def _update_chosen(
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


def _gaussian_blur(x: Tensor, sigma: Tensor, kernel_size: int) -> Tensor:
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


class BatchedSimCLRAugment(nn.Module):
    """SimCLR views of a whole batch on its own device, with independent parameters per image.

    Same distribution as :class:`SimCLRAugment` (and, for a given generator state, the same
    parameters image by image). Crop and flip are one ``grid_sample`` (bilinear, edge
    clamped), the other steps are per-image masks and factors, so nothing is drawn once for
    the whole batch. Inputs larger than ``image_size`` are resampled without antialiasing;
    feed images already at ``image_size`` (see :func:`to_uint8_transform`).

    Reference: SimCLR (Chen et al. 2020), appendix A.

    Args:
        image_size: Output side in pixels.
        jitter_strength: Colour-jitter strength ``s``.
        blur: Apply the random Gaussian blur.
        mean: Per-channel mean for normalisation, or None.
        std: Per-channel std for normalisation, or None.
        crop_scale: (min, max) fraction of the image area a crop covers.
        flip: Mirror half of the views horizontally.
    """

    def __init__(
        self,
        image_size: int,
        jitter_strength: float = 1.0,
        blur: bool = False,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
        crop_scale: tuple[float, float] = CROP_SCALE,
        flip: bool = True,
    ) -> None:
        super().__init__()
        self.crop_scale = _check_options(image_size, jitter_strength, crop_scale)
        self.flip = flip
        self.image_size = image_size
        self.jitter_strength = jitter_strength
        self.blur = blur
        self.kernel_size = blur_kernel_size(image_size)
        self.ranges = jitter_ranges(jitter_strength)
        self.normalize = mean is not None and std is not None
        self.register_buffer("mean", torch.tensor(mean or [0.0] * 3).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(std or [1.0] * 3).view(1, 3, 1, 1), False)
        # Jitter factor ranges as buffers: a tensor built from Python floats inside the step
        # would be a blocking host-to-device copy on a GPU.
        self.register_buffer("factor_lo", torch.tensor([r[0] for r in self.ranges]), False)
        self.register_buffer("factor_hi", torch.tensor([r[1] for r in self.ranges]), False)

    @torch.no_grad()
    def sample_params(
        self,
        batch_size: int,
        height: int,
        width: int,
        generator: torch.Generator | None = None,
        device: torch.device | str | None = None,
    ) -> dict[str, Tensor]:
        """Draw independent view parameters for ``batch_size`` images of ``height`` x ``width``.

        Args:
            generator: Source of randomness (its device is used); default the global one.
            device: Where to draw when no generator is given.

        Returns:
            ``crop`` (B, 4) long (top, left, h, w), ``flip``/``jitter``/``grayscale``/``blur``
            (B,) bool, ``factors`` (B, 4) float (brightness, contrast, saturation, hue),
            ``order`` (B, 4) long, ``sigma`` (B,) float.
        """
        if generator is not None:
            device = generator.device
        u = torch.rand(batch_size, _U, generator=generator, device=device)  # (B, 35)
        lo, hi = self.factor_lo.to(u.device), self.factor_hi.to(u.device)  # no-op on its device
        blur = u[:, _U_BLUR] < P_BLUR
        flip = u[:, _U_FLIP] < P_FLIP
        return {
            "crop": self._sample_crops(u, height, width, self.crop_scale),
            "flip": flip if self.flip else torch.zeros_like(flip),
            "jitter": u[:, _U_JITTER] < P_JITTER,
            "factors": lo + (hi - lo) * u[:, _U_FACTORS],
            "order": torch.argsort(u[:, _U_ORDER], dim=1),
            "grayscale": u[:, _U_GRAY] < P_GRAYSCALE,
            "blur": blur if self.blur else torch.zeros_like(blur),
            "sigma": BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u[:, _U_SIGMA],
        }

    @staticmethod
    def _sample_crops(u: Tensor, height: int, width: int, scale: tuple[float, float]) -> Tensor:
        """RandomResizedCrop for every row of ``u``: first fitting attempt of 10, else fallback."""
        u = u.double()  # float64, so rounding matches the per-image Python floats
        area = height * width
        log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
        target = area * (scale[0] + (scale[1] - scale[0]) * u[:, _U_SCALE])
        aspect = torch.exp(log_lo + (log_hi - log_lo) * u[:, _U_RATIO])  # (B, attempts)
        w = torch.round(torch.sqrt(target * aspect)).long()
        h = torch.round(torch.sqrt(target / aspect)).long()
        fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
        first = fits.int().argmax(dim=1, keepdim=True)  # first fitting attempt (0 if none)
        found = fits.any(dim=1)
        fb_h, fb_w = _fallback_crop(height, width)
        h = torch.where(found, h.gather(1, first).squeeze(1), fb_h)
        w = torch.where(found, w.gather(1, first).squeeze(1), fb_w)
        top = (u[:, _U_TOP] * (height - h + 1)).long()
        left = (u[:, _U_LEFT] * (width - w + 1)).long()
        top = torch.where(found, top, (height - h) // 2)
        left = torch.where(found, left, (width - w) // 2)
        return torch.stack([top, left, h, w], dim=1)

    def _crop_and_flip(self, x: Tensor, crop: Tensor, flip: Tensor) -> Tensor:
        """Resample each crop box of (B, C, H, W) to (B, C, S, S), mirrored where ``flip``.

        Sample positions are those of a bilinear resize of the cropped pixels (half-pixel
        centres, clamped to the crop's edge pixels), so this equals crop-then-resize.
        """
        b, _, height, width = x.shape
        top, left, h, w = crop.to(x.dtype).unbind(1)  # (B,) each
        steps = (torch.arange(self.image_size, device=x.device, dtype=x.dtype) + 0.5) / (
            self.image_size
        )  # (S,)
        xs = left[:, None] + steps * w[:, None] - 0.5  # (B, S) source pixel coordinates
        ys = top[:, None] + steps * h[:, None] - 0.5
        xs = torch.clamp(xs, left[:, None], (left + w - 1)[:, None])
        ys = torch.clamp(ys, top[:, None], (top + h - 1)[:, None])
        xs = torch.where(flip[:, None], xs.flip(1), xs)
        # pixel coordinates -> grid_sample's [-1, 1] (align_corners=False)
        gx = ((2.0 * xs + 1.0) / width - 1.0)[:, None, :].expand(b, self.image_size, -1)
        gy = ((2.0 * ys + 1.0) / height - 1.0)[:, :, None].expand(b, -1, self.image_size)
        grid = torch.stack([gx, gy], dim=-1)  # (B, S, S, 2)
        return nnf.grid_sample(x, grid, "bilinear", padding_mode="border", align_corners=False)

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Make the views described by ``params`` for a (B, C, H, W) uint8 or float batch."""
        assert x.dim() == 4 and x.shape[1] in (1, 3), f"expected (B, 1|3, H, W), got {x.shape}"
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        params = {k: v.to(x.device, non_blocking=True) for k, v in params.items()}
        x = self._crop_and_flip(x, params["crop"], params["flip"])  # (B, 3, S, S)
        x = _update_chosen(x, params["jitter"], _color_jitter, params["factors"], params["order"])
        x = _update_chosen(x, params["grayscale"], _grayscale_rgb)
        if self.blur:
            blur = partial(_gaussian_blur, kernel_size=self.kernel_size)
            x = _update_chosen(x, params["blur"], blur, params["sigma"])
        if self.normalize:
            x = (x - self.mean) / self.std
        return x

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One random view per image: (B, 1|3, H, W) uint8 or [0, 1] float -> (B, 3, S, S)."""
        params = self.sample_params(x.shape[0], x.shape[2], x.shape[3], generator, x.device)
        return self.apply(x, params)


# --------------------------------------------------------------------------------------------
# fixed transforms


class _ToRGB:
    """PIL image -> 8-bit RGB PIL image; (1, H, W) tensor -> (3, H, W); other tensors as given."""

    def __call__(self, image: Any) -> Any:
        if isinstance(image, Image.Image) and image.mode != "RGB":
            from simclr_cli.data import to_rgb  # 16-bit grayscale is rescaled, not clipped

            return to_rgb(image)
        if isinstance(image, Tensor) and image.dim() == 3 and image.shape[0] == 1:
            return image.expand(3, -1, -1)  # grayscale: the encoder takes 3 channels
        return image


class _ToFloat:
    """PIL image or tensor -> float (C, H, W) tensor in [0, 1]."""

    def __call__(self, image: Any) -> Tensor:
        if isinstance(image, Image.Image):
            image = F.pil_to_tensor(image)
        return F.convert_image_dtype(image, torch.float32)


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

    ``normalize_uint8(stack([to_uint8_transform(s)(im) ...]), mean, std)`` equals
    ``stack([eval_transform(s, mean, std)(im) ...])`` (the same float32 arithmetic), but the
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


def eval_transform(
    image_size: int,
    mean: Sequence[float] | None = None,
    std: Sequence[float] | None = None,
) -> Callable[[Any], Tensor]:
    """Test-time transform: resize the shorter side, centre crop, float tensor, normalise."""
    steps: list[Callable] = [
        _ToRGB(),
        transforms.Resize(image_size, antialias=True),
        transforms.CenterCrop(image_size),
        _ToFloat(),
    ]
    if mean is not None and std is not None:
        steps.append(transforms.Normalize(list(mean), list(std)))
    return transforms.Compose(steps)


def to_uint8_transform(image_size: int) -> Callable[[Any], Tensor]:
    """Fixed-size uint8 (3, S, S) tensors for :class:`BatchedSimCLRAugment` on the device.

    Resizes the shorter side to ``image_size`` and centre crops, so batches stack and the
    random crop happens later, per image, on the device.
    """
    return transforms.Compose(
        [
            _ToRGB(),
            transforms.Resize(image_size, antialias=True),
            transforms.CenterCrop(image_size),
            _ToUint8(),
        ]
    )
