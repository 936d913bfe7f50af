"""The SimCLR views: a per-image pipeline (DataLoader workers) and a batched one (any device).

The recipe, in the paper's order: random resized crop -> horizontal flip -> colour jitter
(p=0.8) -> grayscale (p=0.2) -> Gaussian blur (optional). :func:`draw_view` and
:func:`draw_views` draw the uniform numbers that the steps consume, named by step
(:class:`ViewDraws`); each pipeline turns them into its parameters (Python numbers per image,
tensors per batch) and applies the steps. One generator thus gives one image the same view
from either pipeline; ``tests/test_augment.py`` checks the parameters, the pixels and the rates.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020, appendix A (data augmentation details).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from functools import partial
from typing import Any, Generic, TypeVar

import torch
import torchvision.transforms.functional as F
from PIL import Image
from torch import Tensor, nn

from simclr_cli.errors import UsageError
from simclr_cli.method import augment_ops as ops
from simclr_cli.method.preprocess import ToRGB

CROP_SCALE = (0.08, 1.0)
CROP_RATIO = (3.0 / 4.0, 4.0 / 3.0)
CROP_ATTEMPTS = 10  # as torchvision's RandomResizedCrop before falling back to a centre crop
P_FLIP = 0.5
P_JITTER = 0.8
P_GRAYSCALE = 0.2
P_BLUR = 0.5
BLUR_SIGMA = (0.1, 2.0)
JITTER_OPS = ("brightness", "contrast", "saturation", "hue")


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
        (-0.2 * strength, 0.2 * strength),
    )


@dataclass(frozen=True)
class ViewRecipe:
    """The options of a SimCLR view pipeline, checked once; both pipelines hold one.

    Args:
        image_size: Output side in pixels.
        jitter_strength: Colour-jitter strength ``s`` (paper: 0.5 CIFAR, 1.0 ImageNet).
        blur: Apply the random Gaussian blur.
        crop_scale: (min, max) fraction of the image area a crop covers.
        flip: Mirror half of the views horizontally (off for digits, text, some medical images).

    Raises:
        UsageError: An option out of range (named by its command-line flag).
    """

    image_size: int
    jitter_strength: float = 1.0
    blur: bool = False
    crop_scale: tuple[float, float] = CROP_SCALE
    flip: bool = True
    kernel_size: int = field(init=False)
    ranges: tuple[tuple[float, float], ...] = field(init=False)

    def __post_init__(self) -> None:
        if self.image_size < 8:
            raise UsageError("--image-size", self.image_size, "use at least 8 pixels")
        if not 0.0 <= self.jitter_strength <= 2.5:
            raise UsageError(
                "--jitter-strength", self.jitter_strength, "use a value between 0 and 2.5"
            )
        low, high = (float(v) for v in self.crop_scale)
        if not 0.0 < low <= high <= 1.0:
            raise UsageError(
                "--crop-scale", f"{low:g},{high:g}", "use MIN,MAX with 0 < MIN <= MAX <= 1"
            )
        # frozen: derived fields are set once, here
        object.__setattr__(self, "crop_scale", (low, high))
        object.__setattr__(self, "kernel_size", blur_kernel_size(self.image_size))
        object.__setattr__(self, "ranges", jitter_ranges(self.jitter_strength))


# --------------------------------------------------------------------------------------------
# the random draws, shared by both pipelines


Many = TypeVar("Many", list[float], Tensor)  # several numbers: a list, or (B, k) columns
One = TypeVar("One", float, Tensor)  # one number: a float, or a (B,) column


@dataclass(frozen=True)
class ViewDraws(Generic[Many, One]):
    """The uniform numbers in [0, 1) behind a view's random parameters, named by recipe step.

    Every view draws its numbers as one contiguous row, in the recipe's order, so B one-view
    draws (:func:`draw_view`, Python numbers) from a generator equal one B-view draw
    (:func:`draw_views`, tensors), row by row: that is what makes the per-image and the batched
    pipeline agree image by image for the same generator.
    """

    crop_scale: Many  # CROP_ATTEMPTS: area fraction of each crop attempt
    crop_ratio: Many  # CROP_ATTEMPTS: log aspect ratio of each crop attempt
    crop_top: One  # position of the crop box in the free rows
    crop_left: One  # position of the crop box in the free columns
    flip: One
    jitter: One  # whether colour jitter applies
    factors: Many  # 4: brightness, contrast, saturation, hue within their ranges
    order: Many  # 4: sort keys -> a uniformly random order of the four jitter ops
    grayscale: One
    blur: One  # whether the blur applies
    sigma: One  # blur sigma within BLUR_SIGMA


# crop: scale and ratio per attempt, top, left; flip; jitter: apply, 4 factors, 4 order keys;
# grayscale; blur: apply, sigma
UNIFORMS_PER_VIEW = 2 * CROP_ATTEMPTS + 15


def _in_recipe_order(cut: Callable[[int, int], Any]) -> ViewDraws[Any, Any]:
    """Name consecutive uniform numbers by the step that uses them; ``cut(start, width)``
    returns ``width`` numbers from ``start`` (width 0: the one number at ``start``)."""
    taken = 0

    def take(width: int = 0) -> Any:
        nonlocal taken
        start, taken = taken, taken + max(width, 1)
        return cut(start, width)

    # keyword arguments are evaluated in the order written: the recipe's order
    draws = ViewDraws(
        crop_scale=take(CROP_ATTEMPTS),
        crop_ratio=take(CROP_ATTEMPTS),
        crop_top=take(),
        crop_left=take(),
        flip=take(),
        jitter=take(),
        factors=take(4),
        order=take(4),
        grayscale=take(),
        blur=take(),
        sigma=take(),
    )
    assert taken == UNIFORMS_PER_VIEW, "UNIFORMS_PER_VIEW must count every draw"
    return draws


def draw_view(generator: torch.Generator | None = None) -> ViewDraws[list[float], float]:
    """Draw the uniform numbers of one view as Python floats (the per-image pipeline).

    Args:
        generator: Source of randomness; None for torch's global one.
    """
    u = torch.rand(UNIFORMS_PER_VIEW, generator=generator).tolist()
    return _in_recipe_order(lambda start, width: u[start : start + width] if width else u[start])


def draw_views(
    generator: torch.Generator | None, batch_size: int, device: torch.device | str | None = None
) -> ViewDraws[Tensor, Tensor]:
    """Draw the uniform numbers of ``batch_size`` views, one row per view (the batched pipeline).

    Args:
        generator: Source of randomness; None for torch's global one.
        batch_size: Number of views B.
        device: Where to draw (must be the generator's device when one is given).

    Returns:
        The named draws as float32 (B,) or (B, k) tensors.
    """
    u = torch.rand(batch_size, UNIFORMS_PER_VIEW, generator=generator, device=device)
    return _in_recipe_order(
        lambda start, width: u[:, start : start + width] if width else u[:, start]
    )


def _fallback_crop(height: int, width: int) -> tuple[int, int]:
    """Crop (h, w) used when no attempt fits: the whole image clipped to the ratio range."""
    ratio = width / height
    if ratio < CROP_RATIO[0]:
        return int(round(width / CROP_RATIO[0])), width
    if ratio > CROP_RATIO[1]:
        return height, int(round(height * CROP_RATIO[1]))
    return height, width


def _crop_box(
    height: int, width: int, scale: tuple[float, float], u: ViewDraws[list[float], float]
) -> tuple[int, int, int, int]:
    """torchvision's RandomResizedCrop rule for one image: (top, left, h, w) of the first
    attempt that fits, else the centre fallback."""
    area = height * width
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    for scale_draw, ratio_draw in zip(u.crop_scale, u.crop_ratio, strict=True):
        target = area * (scale[0] + (scale[1] - scale[0]) * scale_draw)
        aspect = math.exp(log_lo + (log_hi - log_lo) * ratio_draw)
        w = int(round(math.sqrt(target * aspect)))
        h = int(round(math.sqrt(target / aspect)))
        if 0 < w <= width and 0 < h <= height:
            return int(u.crop_top * (height - h + 1)), int(u.crop_left * (width - w + 1)), h, w
    h, w = _fallback_crop(height, width)
    return (height - h) // 2, (width - w) // 2, h, w


class _ViewPipeline:
    """What both pipelines are made of: a :class:`ViewRecipe`, and a final normalisation.

    Args:
        image_size, jitter_strength, blur, crop_scale, flip: See :class:`ViewRecipe`.
        mean: Per-channel mean for normalisation, or None.
        std: Per-channel std for normalisation, or None.
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
        super().__init__()  # cooperative: nn.Module's for the batched pipeline
        self.recipe = ViewRecipe(image_size, jitter_strength, blur, crop_scale, flip)
        self._keep_normalization(
            None if mean is None else list(mean), None if std is None else list(std)
        )

    def _keep_normalization(self, mean: list[float] | None, std: list[float] | None) -> None:
        self.mean, self.std = mean, std


# --------------------------------------------------------------------------------------------
# per-image pipeline


class SimCLRAugment(_ViewPipeline):
    """One random SimCLR view of one image (PIL image or (C, H, W) tensor).

    Random resized crop (area scale ``crop_scale``, default 0.08-1, ratio 3/4-4/3) to
    ``image_size``, horizontal flip (p=0.5, only when ``flip``), colour jitter (0.8s, 0.8s,
    0.8s, 0.2s) in random order (p=0.8), grayscale (p=0.2),
    Gaussian blur with sigma in [0.1, 2] (p=0.5, only when ``blur``), then a float tensor
    (3, image_size, image_size) in [0, 1], normalised when ``mean``/``std`` are given.

    Randomness comes from ``torch``'s generator (DataLoader seeds it per worker), or the
    ``generator`` passed to the call.

    Reference: SimCLR (Chen et al. 2020), appendix A. Options: see :class:`_ViewPipeline`.
    """

    def sample_params(
        self, height: int, width: int, generator: torch.Generator | None = None
    ) -> dict[str, Any]:
        """Draw the view parameters for an image of ``height`` x ``width`` pixels.

        Python numbers throughout: a tensor computation costs ~30x more for one image.

        Returns:
            ``crop`` (top, left, h, w), ``flip``, ``jitter`` (applied or not), ``factors``
            (brightness, contrast, saturation, hue), ``order`` (jitter operation indices),
            ``grayscale``, ``blur`` and ``sigma``.
        """
        recipe, u = self.recipe, draw_view(generator)
        crop = _crop_box(height, width, recipe.crop_scale, u)
        factors = tuple(
            lo + (hi - lo) * v for (lo, hi), v in zip(recipe.ranges, u.factors, strict=True)
        )
        keys = u.order  # argsort: a uniformly random order of the four jitter operations
        return {
            "crop": crop,
            "flip": recipe.flip and u.flip < P_FLIP,
            "jitter": u.jitter < P_JITTER,
            "factors": factors,
            "order": tuple(sorted(range(4), key=keys.__getitem__)),
            "grayscale": u.grayscale < P_GRAYSCALE,
            "blur": recipe.blur and u.blur < P_BLUR,
            "sigma": BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u.sigma,
        }

    def apply(self, image: Image.Image | Tensor, params: dict[str, Any]) -> Tensor:
        """Make the view described by ``params`` (from :meth:`sample_params`)."""
        image = ToRGB()(image)
        top, left, h, w = params["crop"]
        size = [self.recipe.image_size] * 2
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
            tensor = F.gaussian_blur(tensor, [self.recipe.kernel_size] * 2, [sigma, sigma])
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
    """Apply a random transform twice to the same image: ``image -> (view_1, view_2)``.

    With a ``generator``, both views are drawn from it, one after the other (the transform must
    then accept one, as :class:`SimCLRAugment` does); without, from torch's global generator.
    """

    def __init__(self, transform: Callable[..., Any]) -> None:
        self.transform = transform

    def __call__(self, image: Any, generator: torch.Generator | None = None) -> tuple[Any, Any]:
        if generator is None:
            return self.transform(image), self.transform(image)
        return self.transform(image, generator), self.transform(image, generator)


# --------------------------------------------------------------------------------------------
# batched pipeline


def _crop_boxes(
    height: int, width: int, scale: tuple[float, float], u: ViewDraws[Tensor, Tensor]
) -> Tensor:
    """:func:`_crop_box` for every view of ``u``: (B, 4) long (top, left, h, w)."""
    area = height * width
    log_lo, log_hi = math.log(CROP_RATIO[0]), math.log(CROP_RATIO[1])
    # float64, so rounding matches the per-image Python floats
    target = area * (scale[0] + (scale[1] - scale[0]) * u.crop_scale.double())
    aspect = torch.exp(log_lo + (log_hi - log_lo) * u.crop_ratio.double())  # (B, attempts)
    w = torch.round(torch.sqrt(target * aspect)).long()
    h = torch.round(torch.sqrt(target / aspect)).long()
    fits = (w > 0) & (w <= width) & (h > 0) & (h <= height)
    first = fits.int().argmax(dim=1, keepdim=True)  # first fitting attempt (0 if none)
    found = fits.any(dim=1)
    fb_h, fb_w = _fallback_crop(height, width)
    h = torch.where(found, h.gather(1, first).squeeze(1), fb_h)
    w = torch.where(found, w.gather(1, first).squeeze(1), fb_w)
    top = (u.crop_top.double() * (height - h + 1)).long()
    left = (u.crop_left.double() * (width - w + 1)).long()
    top = torch.where(found, top, (height - h) // 2)
    left = torch.where(found, left, (width - w) // 2)
    return torch.stack([top, left, h, w], dim=1)


class BatchedSimCLRAugment(_ViewPipeline, nn.Module):
    """SimCLR views of a whole batch on its own device, with independent parameters per image.

    Same distribution as :class:`SimCLRAugment` (and, for a given generator state, the same
    parameters image by image). Crop and flip are one ``grid_sample`` (bilinear, edge
    clamped), the other steps are per-image masks and factors, so nothing is drawn once for
    the whole batch. Inputs larger than ``image_size`` are resampled without antialiasing;
    feed images already at ``image_size`` (see
    :func:`~simclr_cli.method.preprocess.to_uint8_transform`).

    Reference: SimCLR (Chen et al. 2020), appendix A. Options: see :class:`_ViewPipeline`.
    """

    def _keep_normalization(self, mean: list[float] | None, std: list[float] | None) -> None:
        # Constants as buffers: a tensor built from Python floats inside the step would be a
        # blocking host-to-device copy on a GPU.
        self.normalize = mean is not None and std is not None
        self.register_buffer("mean", torch.tensor(mean or [0.0] * 3).view(1, 3, 1, 1), False)
        self.register_buffer("std", torch.tensor(std or [1.0] * 3).view(1, 3, 1, 1), False)
        ranges = self.recipe.ranges  # jitter factor ranges
        self.register_buffer("factor_lo", torch.tensor([r[0] for r in ranges]), False)
        self.register_buffer("factor_hi", torch.tensor([r[1] for r in ranges]), False)

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
        recipe, u = self.recipe, draw_views(generator, batch_size, device)
        lo, hi = self.factor_lo.to(u.factors.device), self.factor_hi.to(u.factors.device)
        flip, blur = u.flip < P_FLIP, u.blur < P_BLUR
        return {
            "crop": _crop_boxes(height, width, recipe.crop_scale, u),
            "flip": flip if recipe.flip else torch.zeros_like(flip),
            "jitter": u.jitter < P_JITTER,
            "factors": lo + (hi - lo) * u.factors,
            "order": torch.argsort(u.order, dim=1),
            "grayscale": u.grayscale < P_GRAYSCALE,
            "blur": blur if recipe.blur else torch.zeros_like(blur),
            "sigma": BLUR_SIGMA[0] + (BLUR_SIGMA[1] - BLUR_SIGMA[0]) * u.sigma,
        }

    def apply(self, x: Tensor, params: dict[str, Tensor]) -> Tensor:
        """Make the views described by ``params`` for a (B, C, H, W) uint8 or float batch."""
        assert x.dim() == 4 and x.shape[1] in (1, 3), f"expected (B, 1|3, H, W), got {x.shape}"
        x = x.float() / 255.0 if x.dtype == torch.uint8 else x.float()
        if x.shape[1] == 1:
            x = x.expand(-1, 3, -1, -1)
        params = {k: v.to(x.device, non_blocking=True) for k, v in params.items()}
        x = ops.crop_and_flip(x, params["crop"], params["flip"], self.recipe.image_size)
        jitter = (params["factors"], params["order"])
        x = ops.update_chosen(x, params["jitter"], ops.color_jitter, *jitter)
        x = ops.update_chosen(x, params["grayscale"], ops.grayscale_rgb)
        if self.recipe.blur:
            blur = partial(ops.gaussian_blur, kernel_size=self.recipe.kernel_size)
            x = ops.update_chosen(x, params["blur"], blur, params["sigma"])
        if self.normalize:
            x = (x - self.mean) / self.std
        return x

    def forward(self, x: Tensor, generator: torch.Generator | None = None) -> Tensor:
        """One random view per image: (B, 1|3, H, W) uint8 or [0, 1] float -> (B, 3, S, S)."""
        params = self.sample_params(x.shape[0], x.shape[2], x.shape[3], generator, x.device)
        return self.apply(x, params)
