"""--limit: a seeded, class-stratified sample, the same rule for folders and named datasets."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest

from simclr_cli.data.datasets import build_dataset, labels_of
from simclr_cli.data.sampling import class_quotas, image_names, stratified_sample


def test_quotas_are_the_classes_shares_with_one_image_each() -> None:
    for counts, limit in (([50, 30, 20], 10), ([7, 1, 1, 91], 20), ([3, 3, 3], 9), ([5, 2], 3)):
        quotas = class_quotas(counts, limit)
        assert sum(quotas) == min(limit, sum(counts))
        assert all(1 <= q <= c for q, c in zip(quotas, counts, strict=True))
    assert class_quotas([50, 30, 20], 10) == [5, 3, 2]  # the exact shares
    assert class_quotas([51, 29, 20], 10) == [5, 3, 2]  # 5.1, 2.9, 2.0: the largest remainder
    assert class_quotas([7, 1, 1, 91], 20) == [1, 1, 1, 17]  # 1.4, 0.2, 0.2, 18.2
    assert class_quotas([5, 2], 3) == [2, 1]
    assert class_quotas([4, 4], 100) == [4, 4]  # all there is
    assert class_quotas([10, 10, 10], 2) == [1, 1, 0]  # fewer than one per class


def test_a_sample_of_class_grouped_labels_keeps_every_class() -> None:
    labels = [c for c in range(10) for _ in range(30)]  # sorted paths: class after class
    sample = stratified_sample(labels, 50, seed=0)
    assert sample == sorted(sample) and len(set(sample)) == 50
    assert Counter(labels[i] for i in sample) == dict.fromkeys(range(10), 5)
    assert stratified_sample(labels, 50, seed=0) == sample  # seeded
    assert stratified_sample(labels, 50, seed=1) != sample
    assert sample[:5] != list(range(5))  # drawn within each class, not its first files


def test_unlabelled_items_get_a_seeded_random_subset() -> None:
    sample = stratified_sample([-1] * 100, 10, seed=3)
    assert len(sample) == 10 and sample != list(range(10))
    assert sample == stratified_sample([-1] * 100, 10, seed=3)
    assert stratified_sample([-1] * 4, 10, seed=0) == [0, 1, 2, 3]  # no more to take


def test_limit_on_a_class_folder_in_sorted_order_keeps_every_class(tmp_path: Path) -> None:
    from PIL import Image

    root = tmp_path / "photos"
    for c, name in enumerate(("apple", "banana", "cherry")):
        (root / name).mkdir(parents=True)
        for i in range(6):
            Image.new("RGB", (8, 8), (80 * c, 10 * i, 0)).save(root / name / f"{i}.png")
    dataset = build_dataset(str(root), "train", tmp_path, limit=6, seed=0)
    assert Counter(labels_of(dataset)) == {0: 2, 1: 2, 2: 2}  # not the 6 apples of a prefix
    names = image_names(dataset)
    assert len(names) == 6 and all(Path(n).is_file() for n in names)
    assert {Path(n).parent.name for n in names} == {"apple", "banana", "cherry"}


def test_the_same_rule_for_a_named_dataset() -> None:
    dataset = build_dataset("shapes", "train", Path("."), limit=30, seed=0)
    assert Counter(labels_of(dataset)) == dict.fromkeys(range(10), 3)
    assert image_names(dataset) != [str(i) for i in range(30)]  # indices of the split
    assert image_names(dataset) == image_names(build_dataset("shapes", "train", ".", limit=30))


@pytest.mark.parametrize("limit", [0, -3])
def test_a_limit_below_one_is_refused(limit: int) -> None:
    from simclr_cli.errors import UsageError

    with pytest.raises(UsageError, match="--limit"):
        build_dataset("shapes", "train", Path("."), limit=limit)
