"""Which images a ``--limit`` keeps: a seeded, class-stratified sample, the one rule of every
command.

The first N items of a folder in sorted path order are whole classes (``a/``, ``b/``, ...), so
``--limit`` never takes a prefix: each class keeps its share of the limit (at least one image
while the limit allows), drawn at random from a generator seeded by the command's ``--seed``.
Unlabelled items (label -1) form one stratum of their own, so a folder without classes gets a
seeded random subset. The kept items stay in dataset order; :func:`image_names` says which
they are, for the record a command writes.
:func:`~simclr_cli.data.datasets.limit_dataset` applies the rule to a dataset.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

import torch
from torch.utils.data import ConcatDataset, Dataset, Subset


def class_quotas(counts: Sequence[int], limit: int) -> list[int]:
    """How many items each class keeps of ``limit``: its share, rounded by largest remainder.

    While ``limit`` covers one item per class, a class whose share is below one keeps one, and
    the others share the rest. The quotas sum to ``min(limit, sum(counts))`` and never exceed a
    class's count.

    Args:
        counts: items per class (all positive).
        limit: items to keep in all.
    """
    limit = min(limit, sum(counts))
    small: set[int] = set()
    while limit >= len(counts):  # classes below one item of their share keep one
        rest = limit - len(small)
        pool = sum(c for i, c in enumerate(counts) if i not in small)
        below = {i for i, c in enumerate(counts) if i not in small and rest * c < pool}
        if not below:
            break
        small |= below
    others = [i for i in range(len(counts)) if i not in small]
    shares = _largest_remainder([counts[i] for i in others], limit - len(small))
    quotas = [1] * len(counts)
    for i, quota in zip(others, shares, strict=True):
        quotas[i] = quota
    return quotas


def _largest_remainder(counts: Sequence[int], limit: int) -> list[int]:
    """``limit`` split in proportion to ``counts``: the floors of the exact shares, and one
    more for the largest fractional parts (ties: the bigger class, then the first)."""
    total = sum(counts)
    exact = [limit * c / total if total else 0.0 for c in counts]
    quotas = [int(e) for e in exact]
    order = sorted(range(len(counts)), key=lambda i: (quotas[i] - exact[i], -counts[i], i))
    for i in order[: limit - sum(quotas)]:
        quotas[i] += 1
    return quotas


def stratified_sample(labels: Sequence[int], limit: int, seed: int) -> list[int]:
    """Indices of a seeded, class-stratified sample of ``limit`` items, in increasing order.

    Args:
        labels: the label of every item (-1: unlabelled, one stratum of its own).
        limit: items to keep; all of them when ``limit >= len(labels)``.
        seed: the same seed, labels and limit give the same sample.
    """
    y = torch.as_tensor(list(labels), dtype=torch.int64)
    if limit >= len(y):
        return list(range(len(y)))
    classes, counts = torch.unique(y, return_counts=True)
    generator = torch.Generator().manual_seed(seed)
    kept: list[int] = []
    for label, quota in zip(classes.tolist(), class_quotas(counts.tolist(), limit), strict=True):
        members = torch.nonzero(y == label).flatten()
        kept += members[torch.randperm(len(members), generator=generator)[:quota]].tolist()
    return sorted(kept)


def image_names(dataset: Dataset) -> list[str]:
    """What each item of ``dataset`` is, for a record of the images a command used: the file's
    path for images of a folder, else the item's index in its split."""
    if isinstance(dataset, Subset):
        inner = image_names(dataset.dataset)
        return [inner[i] for i in dataset.indices]
    if isinstance(dataset, ConcatDataset):
        return [name for part in dataset.datasets for name in image_names(part)]
    paths: list[Path] | None = getattr(dataset, "paths", None)
    if paths is not None:
        return [str(path) for path in paths]
    return [str(i) for i in range(len(dataset))]  # type: ignore[arg-type]
