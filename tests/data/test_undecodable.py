"""Images that fail to decode after indexing: pretraining replaces them by the next image that
decodes, counts each once over all DataLoader workers, and stops past the cap."""

from __future__ import annotations

from pathlib import Path

import pytest
from eval_fixtures import write_broken_png, write_folder
from torch.utils.data import DataLoader, Subset

from simclr_cli.data.datasets import ImageFolderDataset, UndecodableImage
from simclr_cli.data.undecodable import SkipUndecodable, allowed_failures
from simclr_cli.data.workers import ignore_stop_signals, worker_batches
from simclr_cli.errors import DatasetError


def folder(root: Path, good: int, broken: list[str]) -> ImageFolderDataset:
    write_folder(root, None, good)  # img00.png ...
    for name in broken:
        write_broken_png(root / name)
    return ImageFolderDataset(root, transform=lambda image: image.getpixel((0, 0)))


def test_a_broken_png_passes_indexing_and_fails_to_decode(tmp_path: Path) -> None:
    dataset = folder(tmp_path, 2, ["img00b.png"])
    assert dataset.skipped == 0 and len(dataset) == 3
    with pytest.raises(UndecodableImage, match="cannot decode .*img00b.png") as error:
        dataset[1]  # sorted: img00, img00b, img01
    assert error.value.path == tmp_path / "img00b.png"


def test_an_undecodable_image_is_replaced_by_the_next_that_decodes(tmp_path: Path) -> None:
    dataset = folder(tmp_path, 3, ["img00b.png", "img00c.png"])  # img00, b, c, img01, img02
    skipping = SkipUndecodable(dataset, "photos")
    assert len(skipping) == 5
    assert skipping[1] == skipping[2] == skipping[3] == dataset[3]
    assert skipping[0] == dataset[0] and skipping[4] == dataset[4]
    assert skipping.failures.indices() == [1, 2]  # each broken image counted once
    assert skipping.paths(skipping.failures.indices()) == [
        str(tmp_path / "img00b.png"),
        str(tmp_path / "img00c.png"),
    ]


def test_the_last_image_is_replaced_by_the_first(tmp_path: Path) -> None:
    dataset = folder(tmp_path, 2, ["img99.png"])
    assert SkipUndecodable(dataset, "photos")[2] == dataset[0]


def test_failures_are_counted_over_every_worker(tmp_path: Path) -> None:
    dataset = folder(tmp_path, 6, ["img00b.png", "img02b.png", "img04b.png"])
    skipping = SkipUndecodable(Subset(dataset, range(9)), "photos")
    loader = DataLoader(
        skipping, batch_size=1, num_workers=2, collate_fn=lambda items: items,
        worker_init_fn=ignore_stop_signals,
    )  # fmt: skip
    with worker_batches(loader) as batches:
        assert len(list(batches)) == 9
    assert sorted(skipping.failures.indices()) == [1, 4, 7]
    assert sorted(Path(p).name for p in skipping.paths([1, 4, 7])) == [
        "img00b.png",
        "img02b.png",
        "img04b.png",
    ]


def test_a_run_stops_past_the_allowed_failures(tmp_path: Path) -> None:
    broken = [f"img00{chr(ord('a') + i)}.png" for i in range(allowed_failures(12))]
    skipping = SkipUndecodable(folder(tmp_path, 1, broken), "photos")  # 1 good, 10 broken
    assert skipping[1] == skipping[0]  # 10 broken images are still allowed
    write_broken_png(tmp_path / "img00z.png")
    skipping = SkipUndecodable(folder(tmp_path, 1, []), "photos")  # 1 good, 11 broken
    with pytest.raises(DatasetError, match=r"^11 images of photos failed to decode .* more than"):
        skipping[1]


def test_a_folder_where_nothing_decodes_fails(tmp_path: Path) -> None:
    for name in ("a.png", "b.png"):
        write_broken_png(tmp_path / name)
    skipping = SkipUndecodable(ImageFolderDataset(tmp_path), "photos")
    with pytest.raises(DatasetError, match="no image of photos decodes"):
        skipping[0]


def test_the_allowed_failures_are_one_percent_and_at_least_ten() -> None:
    assert [allowed_failures(n) for n in (8, 1_000, 1_099, 100_000)] == [10, 10, 10, 1_000]
