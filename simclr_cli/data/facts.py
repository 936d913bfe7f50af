"""Facts about the datasets, with no I/O beyond listing a folder and reading a few image
headers: names, the default image size, normalisation statistics and the pretraining split.

A leaf module: the config validates options with it, so it imports nothing of simclr-cli but
its errors (and neither torch nor torchvision).
"""

from __future__ import annotations

import difflib
import os
from pathlib import Path

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
# A folder's default image size follows its images: their median shorter side, kept within
# these bounds (smaller images are scaled up to the size a CIFAR-stem ResNet is built for,
# larger ones are cropped at the paper's ImageNet size). Headers of at most this many images,
# spread over the folder, are read to find it.
FOLDER_IMAGE_SIZES = (32, 224)
_SIZE_SAMPLE = 256

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


def find_images(root: Path) -> list[Path]:
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


def folder_has_classes(root: Path) -> bool:
    """Whether a folder's images are labelled: some are in first-level subfolders (classes)."""
    return any(len(p.relative_to(root).parts) > 1 for p in find_images(root))


def folder_image_side(root: Path) -> int | None:
    """The median shorter side of a folder's images (those of its class subfolders, when it
    has any), from the headers of at most 256 of them spread over the folder; None when none
    can be read."""
    from PIL import Image

    images = find_images(root)
    in_classes = [p for p in images if len(p.relative_to(root).parts) > 1]
    images = in_classes or images
    step = max(1, len(images) // _SIZE_SAMPLE)
    sides = []
    for path in images[::step][:_SIZE_SAMPLE]:
        try:
            with Image.open(path) as image:  # reads the header only
                sides.append(min(image.size))
        except Exception:  # PIL raises many types for bad files; the dataset skips them too
            continue
    return sorted(sides)[len(sides) // 2] if sides else None


def folder_image_size(side: int | None) -> int:
    """A folder's default image size: the images' median shorter side ``side`` kept within
    :data:`FOLDER_IMAGE_SIZES` (the largest when unknown)."""
    low, high = FOLDER_IMAGE_SIZES
    return high if side is None else min(max(side, low), high)


def recorded_dataset(name: str, source: Path) -> str:
    """A ``--dataset`` value read from a run's file, checked before it is used again.

    Raises:
        DatasetError: ``name`` is a folder that does not exist (any more), naming ``source``.
    """
    if name.lower() in DATASETS or Path(name).expanduser().is_dir():
        return name
    where = (
        "it was recorded relative to the folder the run started in, and is not found from here"
        if not Path(name).expanduser().is_absolute()
        else "it no longer exists"
    )
    raise DatasetError(
        f"{source} names the dataset folder {name}, but {where}; put the images back at that "
        "path (or run from the folder the run started in) to use this run's data"
    )


def normalization(kind: str) -> tuple[tuple[float, ...], tuple[float, ...]] | None:
    """Return the per-channel ``(mean, std)`` of a dataset kind, or ``None`` when unknown.

    Folders of arbitrary images have no fixed statistics and get ``None`` (no normalisation).
    """
    return _NORMALIZATION.get(kind)


def pretrain_split(kind: str) -> str:
    """Return the split pretraining uses: ``"train+unlabeled"`` for STL-10, else ``"train"``."""
    return _PRETRAIN_SPLIT.get(kind, "train")
