"""``shapes``: a procedurally generated, labelled dataset of 10 shapes and textures.

Drawn on demand (nothing is stored or downloaded), the same in every process and worker, so
tests, the quickstart and the benchmarks run offline.
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable
from typing import Any

import numpy as np
from PIL import Image
from torch.utils.data import Dataset

from simclr_cli.errors import UsageError

SHAPE_CLASSES = (
    "circle",
    "square",
    "triangle",
    "cross",
    "ring",
    "horizontal stripes",
    "vertical stripes",
    "checkerboard",
    "diagonal line",
    "dots",
)

_SHAPES_SPLITS = {"train": 0, "test": 1}
_SHAPES_SIZES = {"train": 10_000, "test": 2_000}


def _triangle_wave(t: np.ndarray) -> np.ndarray:
    """Distance of ``t`` to the nearest integer, in [0, 0.5]."""
    return np.abs(t - np.floor(t) - 0.5)


def _rotate(x: np.ndarray, y: np.ndarray, angle: float) -> tuple[np.ndarray, np.ndarray]:
    c, s = math.cos(angle), math.sin(angle)
    return c * x + s * y, -s * x + c * y


def _box_sdf(x: np.ndarray, y: np.ndarray, half_w: float, half_h: float) -> np.ndarray:
    return np.maximum(np.abs(x) - half_w, np.abs(y) - half_h)


def _shape_sdf(label: int, x: np.ndarray, y: np.ndarray, rng: np.random.Generator) -> np.ndarray:
    """Signed distance (image-width units, negative inside) of one random instance of a class.

    ``x``/``y``: (S, S) pixel-centre coordinates in [0, 1]. Objects (classes 0-4) get a random
    centre, size and small rotation; textures (5-9) a random period and phase. Sizes are
    relative to the image, so every resolution shows the same content.
    """
    cx, cy = rng.uniform(0.3, 0.7, size=2)
    px, py = _rotate(x - cx, y - cy, rng.uniform(-0.26, 0.26))  # up to +-15 degrees
    if label == 0:  # circle
        return np.hypot(px, py) - rng.uniform(0.15, 0.3)
    if label == 1:  # square
        half = rng.uniform(0.13, 0.26)
        return _box_sdf(px, py, half, half)
    if label == 2:  # equilateral triangle pointing up; edge normals at 90, 210, 330 degrees
        inradius = rng.uniform(0.09, 0.16)
        edges = [py, 0.866 * px - 0.5 * py, -0.866 * px - 0.5 * py]
        return np.maximum.reduce(edges) - inradius
    if label == 3:  # plus-shaped cross
        arm, width = rng.uniform(0.17, 0.3), rng.uniform(0.05, 0.08)
        return np.minimum(_box_sdf(px, py, arm, width), _box_sdf(px, py, width, arm))
    if label == 4:  # ring
        radius = rng.uniform(0.16, 0.28)
        return np.abs(np.hypot(px, py) - radius) - rng.uniform(0.035, 0.07)
    period, phase = rng.uniform(0.14, 0.26), rng.uniform(0.0, 1.0)
    if label == 5:  # horizontal stripes; stripe where the triangle wave is below 1/4
        return (0.25 - _triangle_wave(y / period + phase)) * -period
    if label == 6:  # vertical stripes
        return (0.25 - _triangle_wave(x / period + phase)) * -period
    if label == 7:  # checkerboard: signed distances to the nearest row and column edges
        dx = (_triangle_wave(x / (2 * period) + phase) - 0.25) * 2 * period
        dy = (_triangle_wave(y / (2 * period) + phase) - 0.25) * 2 * period
        return -np.sign(dx * dy) * np.minimum(np.abs(dx), np.abs(dy))
    if label == 8:  # one thick line at about +-45 degrees through the centre
        angle = rng.choice([0.785, 2.356]) + rng.uniform(-0.17, 0.17)
        return np.abs(math.sin(angle) * (x - cx) - math.cos(angle) * (y - cy)) - rng.uniform(
            0.05, 0.09
        )
    # dots on a square lattice
    spacing = rng.uniform(0.2, 0.3)
    qx = (_triangle_wave((x - cx) / spacing)) * spacing
    qy = (_triangle_wave((y - cy) / spacing)) * spacing
    return np.hypot(qx, qy) - spacing * rng.uniform(0.2, 0.3)


_LUMA = np.array([0.299, 0.587, 0.114])


def _luminance(rgb: np.ndarray) -> float:
    return float(rgb @ _LUMA)


def _two_colours(rng: np.random.Generator) -> tuple[np.ndarray, np.ndarray]:
    """Random foreground/background colours whose luminance differs by at least 0.3.

    The contrast keeps the shape visible after grayscale and colour jitter; the hue carries
    no class information.
    """
    while True:
        fg, bg = rng.uniform(0.0, 1.0, size=(2, 3))
        if abs(_luminance(fg) - _luminance(bg)) >= 0.3:
            return fg, bg


@functools.lru_cache(maxsize=8)
def _pixel_grid(image_size: int) -> tuple[np.ndarray, np.ndarray]:
    """Pixel-centre coordinates in [0, 1], (S, S) each, read-only (shared by every image)."""
    coords = (np.arange(image_size, dtype=np.float64) + 0.5) / image_size
    x, y = np.meshgrid(coords, coords)
    x.flags.writeable = y.flags.writeable = False
    return x, y


def render_shape(label: int, image_size: int, rng: np.random.Generator) -> np.ndarray:
    """Draw one ``shapes`` image of class ``label``.

    Returns:
        uint8 array (image_size, image_size, 3).
    """
    x, y = _pixel_grid(image_size)  # (S, S) each, x along width
    sdf = _shape_sdf(label, x, y, rng)
    # One-pixel anti-aliased edge: coverage goes 1 -> 0 as the distance crosses 0.
    coverage = np.clip(0.5 - sdf * image_size, 0.0, 1.0)[..., None]  # (S, S, 1)
    fg, bg = _two_colours(rng)
    image = bg + (fg - bg) * coverage  # (S, S, 3)
    image += rng.normal(0.0, rng.uniform(0.0, 0.06), size=image.shape)
    return (np.clip(image, 0.0, 1.0) * 255.0 + 0.5).astype(np.uint8)


class ShapesDataset(Dataset):
    """The embedded ``shapes`` dataset: 10 classes of shapes and textures, drawn on demand.

    Item ``i`` of a split is drawn from a random generator seeded by ``(seed, split, i)``, so
    it is the same in every process and DataLoader worker and costs one small vectorised
    drawing; nothing is stored. Classes differ in shape or texture only: colours, size,
    position, rotation, background and noise are random nuisances. Labels are ``i % 10``, so
    every prefix of the dataset is class-balanced.

    Args:
        split: ``"train"`` or ``"test"`` (disjoint random streams).
        size: Number of images (default 10,000 train / 2,000 test).
        image_size: Side of the square images in pixels.
        seed: Dataset seed; different seeds give different images.
        transform: Applied to each PIL image.
    """

    classes = SHAPE_CLASSES

    def __init__(
        self,
        split: str = "train",
        size: int | None = None,
        image_size: int = 32,
        seed: int = 0,
        transform: Callable | None = None,
    ) -> None:
        if split not in _SHAPES_SPLITS:
            raise UsageError("--split", split, "shapes has splits train and test")
        if image_size < 8:
            raise UsageError("--image-size", image_size, "use at least 8 pixels")
        self.split = split
        self.size = _SHAPES_SIZES[split] if size is None else size
        self.image_size = image_size
        self.seed = seed
        self.transform = transform

    def __len__(self) -> int:
        return self.size

    def label(self, index: int) -> int:
        """Return the class of item ``index`` without drawing it."""
        return index % len(SHAPE_CLASSES)

    def __getitem__(self, index: int) -> tuple[Any, int]:
        if not 0 <= index < self.size:
            raise IndexError(index)
        rng = np.random.default_rng([self.seed, _SHAPES_SPLITS[self.split], index])
        label = self.label(index)
        image = Image.fromarray(render_shape(label, self.image_size, rng), mode="RGB")
        return (self.transform(image) if self.transform else image), label
