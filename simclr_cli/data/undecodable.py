"""Images that fail to decode part-way through pretraining: replaced, counted, and capped.

Indexing a folder checks every file (:class:`~simclr_cli.data.datasets.ImageFolderDataset`), but
some damage shows only when an image is decoded (a PNG whose chunks have valid checksums around
garbage data). Pretraining does not need every image, and a day-long run on a scraped folder
should not end on one: :class:`SkipUndecodable` gives the next image of the dataset that decodes
instead (so a batch keeps its size, and a resumed run draws what the uninterrupted run drew) and
records the failure where every DataLoader worker of the process sees it. More than
:func:`allowed_failures` broken images stop the run, so that a folder of broken files still
fails. Evaluation commands do not skip: their rows are per image, and they stop at the first.
"""

from __future__ import annotations

import multiprocessing
from typing import Any

from torch.utils.data import Dataset, Subset

from simclr_cli.data.datasets import UndecodableImage
from simclr_cli.errors import DatasetError, plural

ALLOWED_FRACTION = 0.01  # of the training images, at least ALLOWED_AT_LEAST
ALLOWED_AT_LEAST = 10


def allowed_failures(num_images: int) -> int:
    """How many images of a training set may fail to decode before the run stops."""
    return max(ALLOWED_AT_LEAST, int(num_images * ALLOWED_FRACTION))


class FailureRecord:
    """The distinct indices of the images that failed to decode, in shared memory.

    Created in the main process before the DataLoader starts its workers, which inherit it, so
    every worker of the process (and the main process, which reports them) sees every failure.

    Args:
        allowed: failures the run tolerates; one more is recorded, then the run stops.
    """

    def __init__(self, allowed: int) -> None:
        self.allowed = allowed
        self._indices = multiprocessing.Array("q", allowed + 1)  # with a lock
        self._count = multiprocessing.RawValue("i", 0)  # guarded by the lock of _indices

    def add(self, index: int) -> int:
        """Record that image ``index`` failed (once per image); return how many have failed."""
        with self._indices.get_lock():
            count = self._count.value
            if index not in self._indices[: min(count, len(self._indices))]:
                if count < len(self._indices):
                    self._indices[count] = index
                count += 1
                self._count.value = count
            return count

    def indices(self) -> list[int]:
        """The failed images' indices, in the order they failed."""
        with self._indices.get_lock():
            return list(self._indices[: min(self._count.value, len(self._indices))])


class SkipUndecodable(Dataset):
    """``dataset[index]``, or where that image fails to decode, the next one that does.

    Args:
        dataset: yields ``(image, label)``; a folder's images raise
            :class:`~simclr_cli.data.datasets.UndecodableImage`.
        name: the dataset as the user named it, for messages.

    Raises (from ``__getitem__``):
        DatasetError: more images failed than :func:`allowed_failures` of the dataset.
    """

    def __init__(self, dataset: Dataset, name: str) -> None:
        self.dataset, self.name = dataset, name
        self.size = len(dataset)  # type: ignore[arg-type]  # every dataset here is Sized
        self.failures = FailureRecord(allowed_failures(self.size))

    def __len__(self) -> int:
        return self.size

    def __getitem__(self, index: int) -> Any:
        for offset in range(self.size):
            candidate = (index + offset) % self.size
            try:
                return self.dataset[candidate]
            except UndecodableImage as error:
                failed = self.failures.add(candidate)
                if failed > self.failures.allowed:
                    raise DatasetError(self.too_many(failed, str(error.path))) from None
        raise DatasetError(f"no image of {self.name} decodes; check the folder")

    def too_many(self, failed: int, example: str) -> str:
        """The line that stops a run with more broken images than it may skip."""
        return (
            f"{plural(failed, 'image')} of {self.name} failed to decode (e.g. {example}), more "
            f"than the {self.failures.allowed} a run of {plural(self.size, 'image')} skips; "
            "replace or remove the broken files, then start again or continue with "
            "--resume auto --accept-new-data"
        )

    def paths(self, indices: list[int]) -> list[str]:
        """The files of images ``indices`` (their index where the dataset has no files)."""
        return [path_of(self.dataset, i) for i in indices]


def path_of(dataset: Dataset, index: int) -> str:
    """The file of item ``index`` of a folder dataset, also inside ``Subset`` s."""
    while isinstance(dataset, Subset):
        index, dataset = dataset.indices[index], dataset.dataset
    paths = getattr(dataset, "paths", None)
    return str(paths[index]) if paths is not None else f"image {index}"
