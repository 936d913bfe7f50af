"""Datasets: the torchvision ones, folders of images, and the embedded ``shapes`` dataset.

Every dataset yields ``(image, label)`` pairs; ``label`` is ``-1`` for unlabelled images.
Images are PIL RGB images unless a ``transform`` is given. Pretraining ignores labels; linear
evaluation and the kNN monitor use them through :func:`labels_of`.
"""

from __future__ import annotations

import os
import signal
import tarfile
import urllib.error
import warnings
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Dataset, Subset

from simclr_cli.data.facts import IMAGE_EXTENSIONS, dataset_kind
from simclr_cli.data.shapes import ShapesDataset
from simclr_cli.errors import DatasetError, UsageError
from simclr_cli.method.preprocess import to_rgb

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


# --------------------------------------------------------------------------------------------
# folders of images


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
        candidates = find_images(self.root)
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

    Understands the datasets of this module and of :mod:`simclr_cli.data.shapes`, torchvision
    CIFAR/STL-10, and ``Subset`` and ``ConcatDataset`` of those; any other dataset is read item
    by item.
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
