"""The labelled subset of a fine-tune: a class-balanced draw from the training split, fixed by a
seed, and the file that records it (``subset.txt``) so the run can be repeated, or another tool
can train on the same labels.

The draw takes, for every class in turn, the first ``n_c`` images of a random permutation of
that class (one generator, seeded by ``--seed``): ``n_c`` = ``--labels-per-class``, or
``round(fraction x images of the class)`` (at least one) for ``--label-fraction``. With the same
seed a smaller subset is part of a larger one (10 per class within 100 per class).

``subset.txt`` holds one image per line, ``KEY<TAB>CLASS``: the key is the image's path relative
to the training folder (forward slashes) for a folder, its index in the training split for a
named dataset (``shapes``, ``cifar10``...). Lines starting with ``#`` are comments.

Reference: Chen et al. 2020 (arXiv:2002.05709), section 6: "we sample 1% or 10% of the labeled
ILSVRC-12 training datasets in a class-balanced way".
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import Dataset, Subset

from simclr_cli.errors import DatasetError, UsageError, plural

SUBSET_FILE = "subset.txt"


def _by_class(labels: Sequence[int]) -> dict[int, list[int]]:
    """Indices of each labelled class (labels >= 0), classes in increasing order."""
    members: dict[int, list[int]] = {}
    for index, label in enumerate(labels):
        if label >= 0:
            members.setdefault(int(label), []).append(index)
    return dict(sorted(members.items()))


def _pick(
    labels: Sequence[int], count: Callable[[int], int], seed: int
) -> tuple[list[int], list[int]]:
    """``(picked, rest)``: ``count(n_c)`` indices of every class from a seeded permutation of
    its members; both sorted."""
    generator = torch.Generator().manual_seed(seed)
    picked: list[int] = []
    rest: list[int] = []
    for members in _by_class(labels).values():
        order = torch.randperm(len(members), generator=generator).tolist()
        k = count(len(members))
        picked += [members[i] for i in order[:k]]
        rest += [members[i] for i in order[k:]]
    return sorted(picked), sorted(rest)


def draw_subset(
    labels: Sequence[int],
    per_class: int | None = None,
    fraction: float | None = None,
    seed: int = 0,
    classes: Sequence[str] | None = None,
) -> list[int]:
    """A class-balanced subset of a labelled split: its indices, sorted.

    Args:
        labels: the label of every image of the split (-1: unlabelled, never drawn).
        per_class: images of every class (``--labels-per-class``).
        fraction: share of every class, ``round(fraction * n_c)`` and at least one
            (``--label-fraction``); with neither, every labelled image.
        seed: the seed of the draw (``--seed``).
        classes: class names, for messages.

    Raises:
        UsageError: ``fraction`` outside (0, 1], or ``per_class`` above the smallest class.
        DatasetError: the split has no labelled image.
    """
    by_class = _by_class(labels)
    if not by_class:
        raise DatasetError(
            "the training split has no labelled images; put each class in its own subfolder"
        )
    if fraction is not None and not 0.0 < fraction <= 1.0:
        raise UsageError(
            "--label-fraction", fraction, "give a fraction in (0, 1], e.g. 0.1 for 10%"
        )
    if per_class is not None:
        smallest, members = min(by_class.items(), key=lambda item: len(item[1]))
        if per_class > len(members):
            name = classes[smallest] if classes else str(smallest)
            raise UsageError(
                "--labels-per-class",
                per_class,
                f"the smallest class ({name}) has {plural(len(members), 'training image')}; "
                f"use at most {len(members)}, or --label-fraction",
            )
        return _pick(labels, lambda n: per_class, seed)[0]
    share = 1.0 if fraction is None else fraction
    return _pick(labels, lambda n: min(n, max(1, round(share * n))), seed)[0]


def hold_out(
    indices: Sequence[int], labels: Sequence[int], fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split a subset into (train, held-out) indices, stratified: ``round(fraction * n_c)`` of
    every class with at least two images is held out (at least one, never all).

    Raises:
        DatasetError: nothing would be held out (every class has a single image).
    """
    sub_labels = [labels[i] for i in indices]

    def count(n: int) -> int:
        return 0 if n < 2 else min(n - 1, max(1, round(fraction * n)))

    held, kept = _pick(sub_labels, count, seed + 1)  # not the draw's own permutation
    if not held:
        raise DatasetError(
            f"--val-split {fraction:g} holds out no image: every class of the subset has one "
            "image; use more labels (--labels-per-class 2 or more) or leave out --val-split"
        )
    return [indices[i] for i in kept], [indices[i] for i in held]


# ----------------------------------------------------------------------------------------------
# subset.txt


def image_keys(dataset: Dataset) -> list[str]:
    """The key of every image of a split: its path relative to its folder (image folders,
    under ``Subset`` wrappers) or its index in the split (named datasets)."""
    positions = list(range(len(dataset)))  # type: ignore[arg-type]
    inner = dataset
    while isinstance(inner, Subset):
        positions = [int(inner.indices[p]) for p in positions]
        inner = inner.dataset
    paths = getattr(inner, "paths", None)
    root = getattr(inner, "root", None)
    if paths is None or root is None:
        return [str(p) for p in range(len(positions))]
    return [Path(paths[p]).relative_to(root).as_posix() for p in positions]


def format_subset(
    indices: Sequence[int],
    keys: Sequence[str],
    labels: Sequence[int],
    classes: Sequence[str],
    header: str,
) -> str:
    """The text of ``subset.txt``: a comment header, then ``KEY<TAB>CLASS`` per image."""
    lines = [f"# {line}" for line in header.splitlines()]
    lines.append("# image<TAB>class (image: path relative to the training folder, or index)")
    lines += [f"{keys[i]}\t{classes[labels[i]]}" for i in indices]
    return "\n".join(lines) + "\n"


def read_subset(
    path: Path, keys: Sequence[str], labels: Sequence[int], classes: Sequence[str], name: str
) -> list[int]:
    """The indices a subset file names, sorted; a repeated line counts once.

    Raises:
        DatasetError: the file cannot be read, names images that are not in the split, gives
            another class than the dataset's, or names no image.
    """
    try:
        text = Path(path).read_text(encoding="utf-8")
    except (OSError, UnicodeDecodeError) as e:
        raise DatasetError(f"cannot read the subset file {path} ({e}); check the path") from None
    position = {key: i for i, key in enumerate(keys)}
    found: set[int] = set()
    missing: list[str] = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip() or line.startswith("#"):
            continue
        key, _, given = (part.strip() for part in line.partition("\t"))
        index = position.get(key)
        if index is None:
            missing.append(key)
            continue
        actual = classes[labels[index]] if labels[index] >= 0 else None
        if given and given != actual:
            raise DatasetError(
                f"{path} line {number}: {key} is {actual or 'unlabelled'} in {name}, the file says "
                f"{given}; use the subset file of this dataset or draw a new one"
            )
        found.add(index)
    if missing:
        verb = "is" if len(missing) == 1 else "are"
        raise DatasetError(
            f"{path} names {plural(len(missing), 'image')} that {verb} not in {name} "
            f"(first: {missing[0]}); use the subset file of this dataset, or draw a new subset "
            "with --labels-per-class or --label-fraction"
        )
    if not found:
        raise DatasetError(f"{path} names no image; give a subset.txt written by simclr finetune")
    return sorted(found)


def subset_summary(
    indices: Sequence[int], labels: Sequence[int], classes: Sequence[str]
) -> dict[str, Any]:
    """Images per class of a subset, by name, for ``finetune.json``."""
    counts: dict[str, int] = {name: 0 for name in classes}
    for i in indices:
        counts[classes[labels[i]]] += 1
    return counts
