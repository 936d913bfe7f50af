"""Datasets: the torchvision ones, folders of images, and the embedded ``shapes`` dataset.

Every dataset yields ``(image, label)`` pairs; ``label`` is ``-1`` for unlabelled images.
Images are PIL RGB images unless a ``transform`` is given. Pretraining ignores labels; linear
evaluation and the kNN monitor use them through :func:`labels_of` and :func:`num_classes`.
"""

from __future__ import annotations

import difflib
import functools
import math
import os
import signal
import tarfile
import urllib.error
import warnings
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import numpy as np
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

from simclr_cli.errors import DatasetError, UsageError

DATASETS = ("cifar10", "cifar100", "stl10", "shapes")
"""Dataset names accepted by ``--dataset``; any existing folder of images is accepted as well."""

IMAGE_EXTENSIONS = (".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif", ".tif", ".tiff")

_DATASET_HELP = "use cifar10, cifar100, stl10, shapes or a folder of images"

# Per-channel mean/std of the training split, in [0, 1] units. CIFAR values are the exact
# statistics of the 50,000 training images (the often copied 0.2023/0.1994/0.2010 are not the
# per-channel pixel std). STL-10: the widely used train-split statistics. shapes:
# measured over 10,000 generated training images (tests/test_data.py re-measures them).
_NORMALIZATION: dict[str, tuple[tuple[float, float, float], tuple[float, float, float]]] = {
    "cifar10": ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616)),
    "cifar100": ((0.5071, 0.4865, 0.4409), (0.2673, 0.2564, 0.2762)),
    "stl10": ((0.4467, 0.4398, 0.4066), (0.2603, 0.2566, 0.2713)),
    "shapes": ((0.4992, 0.4998, 0.5029), (0.2897, 0.3159, 0.2828)),
}

_DEFAULT_IMAGE_SIZE = {"cifar10": 32, "cifar100": 32, "shapes": 32, "stl10": 96, "folder": 224}

# Which split pretraining reads: SimCLR pretrains STL-10 on its unlabelled + train images.
_PRETRAIN_SPLIT = {"stl10": "train+unlabeled"}


def dataset_kind(name: str) -> str:
    """Classify a ``--dataset`` value.

    Args:
        name: A dataset name (case-insensitive) or the path of a folder of images.

    Returns:
        One of ``DATASETS`` or ``"folder"``.

    Raises:
        UsageError: ``name`` is neither a known dataset nor an existing folder.
    """
    if name.lower() in DATASETS:
        return name.lower()
    path = Path(name).expanduser()
    if path.is_dir():
        return "folder"
    if path.exists():
        raise UsageError("--dataset", name, f"it is a file, not a folder; {_DATASET_HELP}")
    close = difflib.get_close_matches(name.lower(), DATASETS, n=1, cutoff=0.75)
    if close:
        raise UsageError("--dataset", name, f"did you mean {close[0]}? {_DATASET_HELP}")
    if os.sep in name or name.startswith((".", "~")):
        raise UsageError("--dataset", name, f"no such folder; {_DATASET_HELP}")
    raise UsageError("--dataset", name, _DATASET_HELP)


def default_image_size(kind: str) -> int:
    """Return the default training resolution for a dataset kind (32, 96 or 224 px)."""
    return _DEFAULT_IMAGE_SIZE[kind]


def normalization(kind: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Return the per-channel ``(mean, std)`` of a dataset kind, or ``None`` when unknown.

    Folders of arbitrary images have no fixed statistics and get ``None`` (no normalisation).
    """
    return _NORMALIZATION.get(kind)


def pretrain_split(kind: str) -> str:
    """Return the split pretraining uses: ``"train+unlabeled"`` for STL-10, else ``"train"``."""
    return _PRETRAIN_SPLIT.get(kind, "train")


# --------------------------------------------------------------------------------------------
# torchvision datasets


def _torchvision_class(kind: str) -> type:
    from torchvision import datasets

    return {"cifar10": datasets.CIFAR10, "cifar100": datasets.CIFAR100, "stl10": datasets.STL10}[
        kind
    ]


_LABELS = {"cifar10": "CIFAR-10", "cifar100": "CIFAR-100", "stl10": "STL-10"}


def _check_split(kind: str, split: str) -> None:
    allowed = {"stl10": ("train", "test", "unlabeled", "train+unlabeled")}.get(
        kind, ("train", "test")
    )
    if split not in allowed:
        raise UsageError(
            "--split", split, f"{_LABELS.get(kind, kind)} has splits {', '.join(allowed)}"
        )


def _build_torchvision(
    kind: str, split: str, data_dir: Path, transform: Callable | None, download: bool
) -> Dataset:
    """Open (and when allowed, download) a torchvision dataset, with one-line errors."""
    cls = _torchvision_class(kind)
    archive = data_dir / cls.filename
    had_archive, had_dir = archive.exists(), data_dir.exists()
    split_kw = {"split": split} if kind == "stl10" else {"train": split == "train"}
    try:
        return cls(root=str(data_dir), download=download, transform=transform, **split_kw)
    except (urllib.error.URLError, OSError, RuntimeError, tarfile.TarError, EOFError) as error:
        # A failed download may leave a truncated archive; remove what this call created.
        if not had_archive and archive.exists():
            archive.unlink()
        if not had_dir and data_dir.is_dir() and not any(data_dir.iterdir()):
            data_dir.rmdir()
        name = _LABELS[kind]
        if not download:
            raise DatasetError(
                f"{name} not found in {data_dir}; allow downloading, or put {cls.filename} "
                f"(from {cls.url}) in that folder"
            ) from error
        reason = " ".join(str(getattr(error, "reason", error)).split())
        raise DatasetError(
            f"could not download {name} from {cls.url} ({reason}); download it where there is "
            f"network access and put {cls.filename} in {data_dir}"
        ) from error


def build_dataset(
    name: str,
    split: str,
    data_dir: Path | str,
    transform: Callable | None = None,
    download: bool = True,
    limit: int | None = None,
    image_size: int | None = None,
) -> Dataset:
    """Build a dataset yielding ``(image, label)``.

    Args:
        name: ``cifar10``, ``cifar100``, ``stl10``, ``shapes`` or a folder of images.
        split: ``train`` or ``test``; STL-10 also ``unlabeled`` and ``train+unlabeled``. A
            folder is one dataset whatever the split (see :func:`train_test_split`).
        data_dir: Where torchvision datasets live (downloaded there when missing).
        transform: Applied to each PIL image.
        download: Download missing torchvision datasets.
        limit: Keep only the first ``limit`` items.
        image_size: Resolution ``shapes`` is drawn at (default 32); other datasets ignore it.

    Raises:
        UsageError: Unknown dataset, split or a non-positive ``limit``.
        DatasetError: The dataset is missing and cannot be downloaded, or a folder is empty.
    """
    kind = dataset_kind(name)
    if limit is not None and limit < 1:
        raise UsageError("--limit", limit, "use a positive number of images")
    if kind == "shapes":
        _check_split(kind, split)
        dataset: Dataset = ShapesDataset(
            split=split, image_size=image_size or 32, transform=transform
        )
    elif kind == "folder":
        dataset = ImageFolderDataset(Path(name).expanduser(), transform=transform)
    else:
        _check_split(kind, split)
        dataset = _build_torchvision(kind, split, Path(data_dir).expanduser(), transform, download)
    if limit is not None and limit < len(dataset):  # type: ignore[arg-type]
        dataset = Subset(dataset, range(limit))
    return dataset


# --------------------------------------------------------------------------------------------
# shapes: a procedurally generated, labelled dataset

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


def ignore_stop_signals(worker_id: int) -> None:
    """``worker_init_fn`` of every loader: DataLoader workers leave SIGINT and SIGTERM to the
    main process.

    A Ctrl-C in a terminal, systemd, Slurm's ``scancel`` and ``kill -- -PGID`` signal every
    process of the group. A worker killed by it makes the main process fail with a RuntimeError
    instead of finishing its step, writing a checkpoint and exiting 130. Workers still end with
    the main process: the loader shuts them down, and they exit when their parent dies.
    """
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)


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


# --------------------------------------------------------------------------------------------
# folders of images


def _find_images(root: Path) -> list[Path]:
    """All image files under ``root`` (recursive, hidden entries skipped), sorted.

    Symlinked folders are followed (class folders are often links), each real folder once.
    """
    found = []
    seen: set[str] = set()
    for dirpath, dirnames, filenames in os.walk(root, followlinks=True):
        real = os.path.realpath(dirpath)
        if real in seen:  # a link cycle or a second link to the same folder
            dirnames[:] = []
            continue
        seen.add(real)
        dirnames[:] = [d for d in dirnames if not d.startswith(".")]
        for filename in filenames:
            if not filename.startswith(".") and filename.lower().endswith(IMAGE_EXTENSIONS):
                found.append(Path(dirpath) / filename)
    return sorted(found, key=lambda p: p.relative_to(root).parts)


def _is_readable(path: Path) -> bool:
    """Integrity check: PIL verifies what the format allows, then decodes non-PNG files.

    ``verify()`` checks every PNG chunk's CRC, but for JPEG and most other formats it reads
    only the header, so a truncated file would pass here and stop training when first loaded.
    JPEGs are decoded at 1/8 scale (``draft``): every byte is still read, at a fraction of
    the cost of a full decode.
    """
    try:
        with Image.open(path) as image:
            image.verify()
            if image.format == "PNG":
                return True
        with Image.open(path) as image:
            image.draft("RGB", (1, 1))  # JPEG only: smallest DCT scale; a no-op elsewhere
            image.load()
    except Exception:  # PIL raises many types (OSError, SyntaxError, ValueError...) for bad files
        return False
    return True


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


class ImageFolderDataset(Dataset):
    """Every image under a folder, searched recursively, in sorted path order.

    With first-level subfolders, each one is a class (sorted names -> labels 0..K-1) and images
    directly in ``root`` are ignored; without subfolders all images are unlabelled (``-1``).
    Files that PIL cannot open or verify are skipped and counted in ``skipped`` so the caller
    can report them once.

    Args:
        root: The folder.
        transform: Applied to each PIL RGB image.
        verify: Check every file when indexing (cheap header/CRC check).

    Raises:
        DatasetError: ``root`` is not a folder or holds no readable image.
    """

    def __init__(
        self, root: Path | str, transform: Callable | None = None, verify: bool = True
    ) -> None:
        self.root = Path(root)
        self.transform = transform
        if not self.root.is_dir():
            raise DatasetError(f"{self.root} is not a folder; pass a folder of images")
        candidates = _find_images(self.root)
        subfolders = sorted(
            {
                p.relative_to(self.root).parts[0]
                for p in candidates
                if len(p.relative_to(self.root).parts) > 1
            }
        )
        self.classes: list[str] = subfolders
        if subfolders:
            candidates = [p for p in candidates if len(p.relative_to(self.root).parts) > 1]
        if verify:  # threads overlap the file reads (PIL releases the GIL while decoding)
            # An image over PIL's MAX_IMAGE_PIXELS (a possible decompression bomb) is skipped and
            # counted like an unreadable one, instead of PIL's two-line warning in the middle of
            # the progress display. The filter is set here, around the pool, because
            # catch_warnings is not thread-safe.
            with warnings.catch_warnings(), ThreadPoolExecutor(max_workers=8) as pool:
                warnings.simplefilter("error", Image.DecompressionBombWarning)
                ok = list(pool.map(_is_readable, candidates))
            readable = [p for p, good in zip(candidates, ok, strict=True) if good]
        else:
            readable = candidates
        self.skipped_paths: list[Path] = sorted(set(candidates) - set(readable))
        self.skipped: int = len(self.skipped_paths)
        if not readable:
            raise DatasetError(
                f"no readable images in {self.root} ({self.skipped} unreadable); add "
                f"{'/'.join(e.lstrip('.') for e in IMAGE_EXTENSIONS)} files"
            )
        self.paths: list[Path] = readable
        index = {name: i for i, name in enumerate(subfolders)}
        self.labels: list[int] = [
            index[p.relative_to(self.root).parts[0]] if subfolders else -1 for p in readable
        ]

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, i: int) -> tuple[Any, int]:
        path = self.paths[i]
        try:
            with Image.open(path) as image:
                rgb = to_rgb(image)
        except Exception as error:  # a file can pass verify() and still fail to decode
            raise DatasetError(
                f"cannot decode {path} ({error}); remove or replace the file"
            ) from error
        return (self.transform(rgb) if self.transform else rgb), self.labels[i]


def train_test_split(
    dataset: Dataset, test_fraction: float, seed: int = 0
) -> tuple[Subset, Subset]:
    """Split a dataset into train and test subsets, stratified by label, with a fixed seed.

    Every class with at least two items gets at least one item on each side. Unlabelled items
    (label -1) form one stratum.

    Args:
        dataset: Any dataset :func:`labels_of` understands.
        test_fraction: Fraction of each class put in the test subset, in (0, 1).
        seed: Seed of the shuffle; the same seed gives the same split.

    Raises:
        UsageError: ``test_fraction`` is not in (0, 1).
        DatasetError: one side would be empty (too few images per class).
    """
    if not 0.0 < test_fraction < 1.0:
        raise UsageError("--val-split", test_fraction, "use a fraction between 0 and 1")
    labels = torch.as_tensor(labels_of(dataset))
    generator = torch.Generator().manual_seed(seed)
    train: list[int] = []
    test: list[int] = []
    for label in torch.unique(labels).tolist():
        members = torch.nonzero(labels == label).flatten()
        members = members[torch.randperm(len(members), generator=generator)].tolist()
        n_test = round(len(members) * test_fraction)
        if len(members) >= 2:
            n_test = min(max(n_test, 1), len(members) - 1)
        test += members[:n_test]
        train += members[n_test:]
    for side, indices in (("training", train), ("test", test)):
        if not indices:  # e.g. classes of one image each
            raise DatasetError(
                f"--val-split {test_fraction} of {len(labels)} images leaves no {side} images; "
                "add images (at least two per class) or change --val-split"
            )
    return Subset(dataset, sorted(train)), Subset(dataset, sorted(test))


# --------------------------------------------------------------------------------------------
# labels


def _unwrap(dataset: Dataset) -> Dataset:
    while isinstance(dataset, Subset):
        dataset = dataset.dataset
    return dataset


def skipped_files(dataset: Dataset) -> int:
    """Number of unreadable files an image folder (possibly inside ``Subset``s) skipped."""
    return int(getattr(_unwrap(dataset), "skipped", 0))


def labels_of(dataset: Dataset) -> list[int]:
    """Return the label of every item (``-1`` for unlabelled ones), without loading images.

    Understands the datasets of this module, torchvision CIFAR/STL-10, and ``Subset`` and
    ``ConcatDataset`` of those; any other dataset is read item by item.
    """
    if isinstance(dataset, Subset):
        inner = labels_of(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [label for part in dataset.datasets for label in labels_of(part)]
    if isinstance(dataset, ShapesDataset):
        return [dataset.label(i) for i in range(len(dataset))]
    for attribute in ("labels", "targets"):  # ImageFolderDataset/STL10, CIFAR
        values = getattr(dataset, attribute, None)
        if values is not None:
            return [int(v) for v in values]
    return [int(dataset[i][1]) for i in range(len(dataset))]  # type: ignore[arg-type]


def num_classes(dataset: Dataset) -> int | None:
    """Return the number of classes, or ``None`` for an unlabelled dataset."""
    dataset = _unwrap(dataset)
    if isinstance(dataset, ConcatDataset):
        counts = [num_classes(part) for part in dataset.datasets]
        known = [count for count in counts if count is not None]
        return max(known) if known else None
    if getattr(dataset, "split", None) == "unlabeled":  # STL-10 unlabelled split
        return None
    classes: Sequence | None = getattr(dataset, "classes", None)
    if classes:
        return len(classes)
    labels = [label for label in labels_of(dataset) if label >= 0]
    return max(labels) + 1 if labels else None
