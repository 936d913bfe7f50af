"""The labelled subset of a fine-tune: class-balanced, fixed by the seed, nested across sizes,
and reproducible from the subset.txt it writes."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import pytest
from eval_fixtures import write_folder

from simclr_cli.data.datasets import ImageFolderDataset, train_test_split
from simclr_cli.data.shapes import ShapesDataset
from simclr_cli.errors import DatasetError, UsageError
from simclr_cli.evaluation import subset as subsets

# 4 classes of unequal size: 0 x 10, 1 x 7, 2 x 5, 3 x 12; unlabelled rows are never drawn
LABELS = [0] * 10 + [1] * 7 + [2] * 5 + [3] * 12 + [-1] * 3
CLASSES = ["ant", "bee", "cat", "dog"]


def counts(indices: list[int]) -> Counter:
    return Counter(LABELS[i] for i in indices)


def test_labels_per_class_is_balanced_seeded_and_nested() -> None:
    draw = subsets.draw_subset(LABELS, per_class=3, seed=7)
    assert counts(draw) == {0: 3, 1: 3, 2: 3, 3: 3}
    assert draw == sorted(draw) == subsets.draw_subset(LABELS, per_class=3, seed=7)
    assert draw != subsets.draw_subset(LABELS, per_class=3, seed=8)
    # the same seed: a smaller subset is part of a larger one
    assert set(draw) <= set(subsets.draw_subset(LABELS, per_class=5, seed=7))


def test_label_fraction_takes_the_same_share_of_every_class() -> None:
    draw = subsets.draw_subset(LABELS, fraction=0.5, seed=0)
    assert counts(draw) == {0: 5, 1: 4, 2: 2, 3: 6}  # round(0.5 * n), Python's rounding
    tiny = subsets.draw_subset(LABELS, fraction=0.01, seed=0)
    assert counts(tiny) == {0: 1, 1: 1, 2: 1, 3: 1}  # at least one of each class
    everything = subsets.draw_subset(LABELS, seed=0)
    assert everything == [i for i, label in enumerate(LABELS) if label >= 0]


@pytest.mark.parametrize("fraction", [0.0, -0.1, 1.5])
def test_a_fraction_outside_0_1_is_refused(fraction: float) -> None:
    with pytest.raises(UsageError, match=r"--label-fraction.*\(0, 1\]"):
        subsets.draw_subset(LABELS, fraction=fraction)


def test_more_labels_per_class_than_the_smallest_class_is_refused() -> None:
    with pytest.raises(UsageError) as error:
        subsets.draw_subset(LABELS, per_class=6, classes=CLASSES)
    assert "the smallest class (cat) has 5 training images; use at most 5" in str(error.value)
    assert error.value.exit_code == 2


def test_the_held_out_part_is_stratified_and_disjoint() -> None:
    draw = subsets.draw_subset(LABELS, per_class=5, seed=1)
    fit, val = subsets.hold_out(draw, LABELS, 0.2, seed=1)
    assert sorted(fit + val) == draw and not set(fit) & set(val)
    assert counts(val) == {0: 1, 1: 1, 2: 1, 3: 1}
    with pytest.raises(DatasetError, match="holds out no image"):
        subsets.hold_out(subsets.draw_subset(LABELS, per_class=1), LABELS, 0.5, seed=0)


def test_subset_txt_gives_back_the_same_images(tmp_path: Path) -> None:
    keys = [str(i) for i in range(len(LABELS))]
    draw = subsets.draw_subset(LABELS, per_class=4, seed=3)
    text = subsets.format_subset(draw, keys, LABELS, CLASSES, "a header\nof two lines")
    assert text.startswith("# a header\n# of two lines\n")
    path = tmp_path / "subset.txt"
    path.write_text(text + "\n# a comment\n" + text.splitlines()[-1] + "\n")  # repeated line
    assert subsets.read_subset(path, keys, LABELS, CLASSES, "data") == draw
    # a line without its class is accepted; the class is the dataset's
    path.write_text(f"{draw[0]}\n")
    assert subsets.read_subset(path, keys, LABELS, CLASSES, "data") == [draw[0]]


def test_a_subset_file_naming_other_images_is_refused(tmp_path: Path) -> None:
    keys = [str(i) for i in range(len(LABELS))]
    path = tmp_path / "subset.txt"
    path.write_text("0\tant\n999\tant\nnope.png\tbee\n")
    with pytest.raises(DatasetError) as error:
        subsets.read_subset(path, keys, LABELS, CLASSES, "shapes (train)")
    assert "names 2 images that are not in shapes (train) (first: 999)" in str(error.value)
    path.write_text("0\tbee\n")
    with pytest.raises(DatasetError, match="line 1: 0 is ant in data, the file says bee"):
        subsets.read_subset(path, keys, LABELS, CLASSES, "data")
    path.write_text("# only comments\n")
    with pytest.raises(DatasetError, match="names no image"):
        subsets.read_subset(path, keys, LABELS, CLASSES, "data")


def test_image_keys_are_folder_paths_or_split_indices(tmp_path: Path) -> None:
    write_folder(tmp_path / "data", ["a", "b"], 3)
    folder = ImageFolderDataset(tmp_path / "data")
    assert subsets.image_keys(folder)[:2] == ["a/img00.png", "a/img01.png"]
    train, _ = train_test_split(folder, 0.34, seed=0)  # the keys of a split follow its images
    assert subsets.image_keys(train) == [
        folder.paths[i].relative_to(folder.root).as_posix() for i in train.indices
    ]
    assert subsets.image_keys(ShapesDataset(split="test", image_size=8))[:3] == ["0", "1", "2"]
