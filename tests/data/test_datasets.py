"""Datasets: names, the shapes dataset, image folders, splits, labels and download errors."""

from __future__ import annotations

import urllib.error
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image
from torch.utils.data import ConcatDataset, Subset

from simclr_cli.data.datasets import (
    ImageFolderDataset,
    ShapesDataset,
    build_dataset,
    labels_of,
    skipped_files,
    train_test_split,
)
from simclr_cli.data.facts import (
    DATASETS,
    IMAGE_EXTENSIONS,
    dataset_kind,
    default_image_size,
    normalization,
    pretrain_split,
)
from simclr_cli.errors import DatasetError, UsageError
from simclr_cli.method.preprocess import to_rgb


def pixels(image: Image.Image) -> np.ndarray:
    return np.asarray(image, dtype=np.uint8)


# -------------------------------------------------------------------------------------------
# names and defaults


def test_dataset_kind(tmp_path: Path) -> None:
    assert [dataset_kind(name) for name in DATASETS] == list(DATASETS)
    assert dataset_kind("CIFAR10") == "cifar10"
    assert dataset_kind(str(tmp_path)) == "folder"
    (tmp_path / "file.png").write_bytes(b"")
    cases = {
        "imagenet": "invalid value 'imagenet'; use cifar10",
        "cifar-10": "did you mean cifar10\\? use cifar10",
        "Shape": "did you mean shapes\\? use",
        str(tmp_path / "missing"): "no such folder; use cifar10",
        "./missing": "no such folder; use cifar10",
        str(tmp_path / "file.png"): "it is a file, not a folder; use cifar10",
    }
    for bad, message in cases.items():
        with pytest.raises(UsageError, match=f"--dataset.*{message}.*stl10, shapes") as caught:
            dataset_kind(bad)
        assert "\n" not in str(caught.value)


def test_defaults_per_kind() -> None:
    sizes = {kind: default_image_size(kind) for kind in (*DATASETS, "folder")}
    assert sizes == {"cifar10": 32, "cifar100": 32, "stl10": 96, "shapes": 32, "folder": 224}
    assert normalization("cifar10") == ((0.4914, 0.4822, 0.4465), (0.2470, 0.2435, 0.2616))
    assert normalization("folder") is None
    assert all(normalization(kind) is not None for kind in DATASETS)
    assert pretrain_split("stl10") == "train+unlabeled"
    assert (
        pretrain_split("cifar10") == pretrain_split("shapes") == pretrain_split("folder") == "train"
    )


# -------------------------------------------------------------------------------------------
# shapes


def test_shapes_items_are_deterministic() -> None:
    first, second = ShapesDataset(seed=7), ShapesDataset(seed=7)
    for i in (0, 1, 9999):
        (a, la), (b, lb) = first[i], second[i]
        assert la == lb and np.array_equal(pixels(a), pixels(b))
    # order of access does not matter (each item has its own random stream)
    assert np.array_equal(pixels(ShapesDataset(seed=7)[5][0]), pixels(first[5][0]))


def test_shapes_seeds_and_splits_differ() -> None:
    base = ShapesDataset(seed=0)
    other_seed = ShapesDataset(seed=1)
    test = ShapesDataset(split="test", seed=0)
    for i in range(10):
        assert not np.array_equal(pixels(base[i][0]), pixels(other_seed[i][0]))
        assert not np.array_equal(pixels(base[i][0]), pixels(test[i][0]))
    # within a split no two images repeat
    images = {pixels(base[i][0]).tobytes() for i in range(200)}
    assert len(images) == 200


def test_shapes_sizes_and_labels() -> None:
    assert (len(ShapesDataset()), len(ShapesDataset(split="test"))) == (10_000, 2_000)
    dataset = ShapesDataset(size=100, image_size=48)
    image, label = dataset[3]
    assert image.size == (48, 48) and image.mode == "RGB" and label == 3
    counts = np.bincount(labels_of(dataset), minlength=10)
    assert counts.tolist() == [10] * 10
    assert [dataset[i][1] for i in range(20)] == labels_of(dataset)[:20]
    assert len(dataset.classes) == 10
    with pytest.raises(IndexError):
        dataset[100]
    with pytest.raises(UsageError, match="--split"):
        ShapesDataset(split="unlabeled")


def test_shapes_transform_is_applied() -> None:
    dataset = ShapesDataset(size=10, image_size=16, transform=lambda image: pixels(image).mean())
    value, label = dataset[2]
    assert isinstance(value, float) and label == 2


def test_shapes_classes_differ_in_shape_not_colour() -> None:
    """Class-mean colours are all close to the overall mean, while class-mean *edge* images
    differ: colour carries no label information, shape does."""
    dataset = ShapesDataset(size=1000, image_size=16, seed=1)
    arrays = np.stack([pixels(dataset[i][0]) for i in range(len(dataset))]) / 255.0
    labels = np.array(labels_of(dataset))
    colour = arrays.mean(axis=(1, 2))  # (N, 3)
    for k in range(10):
        assert np.abs(colour[labels == k].mean(0) - colour.mean(0)).max() < 0.06
    # horizontal vs vertical edge energy separates e.g. the two stripe classes perfectly
    gray = arrays.mean(-1)
    dx = np.abs(np.diff(gray, axis=2)).mean((1, 2))
    dy = np.abs(np.diff(gray, axis=1)).mean((1, 2))
    horizontal, vertical = labels == 5, labels == 6
    assert (dy[horizontal] > dx[horizontal]).all() and (dx[vertical] > dy[vertical]).all()


def test_shapes_normalisation_constants_match_the_data() -> None:
    dataset = ShapesDataset(size=1000, image_size=16, seed=123)
    arrays = np.stack([pixels(dataset[i][0]) for i in range(len(dataset))]) / 255.0
    mean, std = normalization("shapes")
    np.testing.assert_allclose(arrays.mean((0, 1, 2)), mean, atol=0.02)
    np.testing.assert_allclose(arrays.std((0, 1, 2)), std, atol=0.02)


def test_shapes_work_in_dataloader_workers() -> None:
    from torch.utils.data import DataLoader

    from simclr_cli.method.preprocess import to_uint8_transform

    dataset = ShapesDataset(size=8, image_size=16, transform=to_uint8_transform(16))
    loader = DataLoader(dataset, batch_size=4, num_workers=2)
    batches = [x for x, _ in loader]
    assert torch.equal(torch.cat(batches), torch.stack([dataset[i][0] for i in range(8)]))


# -------------------------------------------------------------------------------------------
# image folders


def write_image(path: Path, colour: tuple[int, int, int], size: tuple[int, int] = (6, 5)) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, colour).save(path)


@pytest.fixture
def labelled_folder(tmp_path: Path) -> Path:
    root = tmp_path / "images"
    write_image(root / "cat" / "b.png", (255, 0, 0))
    write_image(root / "cat" / "nested" / "deeper" / "a.jpg", (250, 0, 0))
    write_image(root / "dog" / "c.webp", (0, 0, 255))
    write_image(root / "dog" / "d.bmp", (0, 0, 250))
    Image.new("L", (4, 4), 7).save(root / "dog" / "gray.tiff")
    write_image(root / "loose.png", (1, 2, 3))  # ignored: root files when classes exist
    (root / "dog" / "notes.txt").write_text("not an image")
    write_image(root / "dog" / ".hidden.png", (0, 255, 0))
    (root / "cat" / "corrupt.png").write_bytes(b"\x89PNG\r\n\x1a\n" + b"garbage" * 20)
    truncated = root / "cat" / "truncated.png"
    write_image(truncated, (9, 9, 9), size=(64, 64))
    truncated.write_bytes(truncated.read_bytes()[:60])
    return root


def test_folder_labels_by_first_level_subfolder(labelled_folder: Path) -> None:
    dataset = ImageFolderDataset(labelled_folder)
    names = [p.relative_to(labelled_folder).as_posix() for p in dataset.paths]
    assert names == [
        "cat/b.png",
        "cat/nested/deeper/a.jpg",
        "dog/c.webp",
        "dog/d.bmp",
        "dog/gray.tiff",
    ]
    assert dataset.classes == ["cat", "dog"]
    assert labels_of(dataset) == [0, 0, 1, 1, 1]
    assert dataset.skipped == 2
    assert {p.name for p in dataset.skipped_paths} == {"corrupt.png", "truncated.png"}
    image, label = dataset[4]
    assert image.mode == "RGB" and image.size == (4, 4) and label == 1


def test_truncated_jpeg_is_skipped_at_indexing(tmp_path: Path) -> None:
    # JPEG verify() reads only the header: without a decode this file would pass and then
    # stop training with an error when a batch first loads it.
    noise = np.random.default_rng(0).integers(0, 256, size=(64, 64, 3), dtype=np.uint8)
    Image.fromarray(noise).save(tmp_path / "good.jpg", quality=90)
    data_bytes = (tmp_path / "good.jpg").read_bytes()
    (tmp_path / "cut.jpg").write_bytes(data_bytes[: len(data_bytes) // 2])
    dataset = ImageFolderDataset(tmp_path)
    assert [p.name for p in dataset.paths] == ["good.jpg"]
    assert [p.name for p in dataset.skipped_paths] == ["cut.jpg"]
    assert dataset[0][0].size == (64, 64)


def test_sixteen_bit_and_other_modes_become_8_bit_rgb(tmp_path: Path) -> None:
    ramp = np.linspace(0, 65535, 16 * 16).reshape(16, 16).astype(np.uint16)
    Image.fromarray(ramp).save(tmp_path / "a_gray16.png")  # mode I;16
    Image.fromarray(ramp).save(tmp_path / "b_gray16.tif")
    Image.new("CMYK", (8, 8), (0, 255, 255, 0)).save(tmp_path / "c_cmyk.jpg")
    Image.new("RGBA", (8, 8), (10, 20, 30, 128)).save(tmp_path / "d_rgba.png")
    Image.new("LA", (8, 8), (77, 255)).save(tmp_path / "e_la.png")
    dataset = ImageFolderDataset(tmp_path)
    assert dataset.skipped == 0 and len(dataset) == 5
    images = [dataset[i][0] for i in range(5)]
    assert all(image.mode == "RGB" for image in images)
    want = np.round(ramp / 257.0).astype(np.int64)  # 0..255, not clipped to white
    for image in images[:2]:
        got = pixels(image).astype(np.int64)
        assert np.abs(got[..., 0] - want).max() <= 1 and (got[..., 0] == got[..., 2]).all()
    assert np.abs(pixels(images[2])[0, 0].astype(int) - [255, 0, 0]).max() <= 2
    assert pixels(images[3])[0, 0].tolist() == [10, 20, 30]
    assert pixels(images[4])[0, 0].tolist() == [77, 77, 77]
    as_int = Image.fromarray(ramp.astype(np.int32))  # mode I, as older PIL opened 16-bit PNGs
    assert np.abs(pixels(to_rgb(as_int))[..., 1].astype(np.int64) - want).max() <= 1
    eight_bit = Image.fromarray(np.arange(256, dtype=np.int32).reshape(16, 16))  # mode I, 0..255
    assert pixels(to_rgb(eight_bit))[..., 0].flatten().tolist() == list(range(256))


def test_folder_follows_symlinked_class_folders(tmp_path: Path) -> None:
    storage = tmp_path / "storage" / "bird"
    write_image(storage / "x.png", (5, 5, 5))
    root = tmp_path / "linked"
    root.mkdir()
    (root / "bird").symlink_to(storage, target_is_directory=True)
    (storage / "loop").symlink_to(storage, target_is_directory=True)  # a cycle
    dataset = ImageFolderDataset(root)
    assert [p.relative_to(root).as_posix() for p in dataset.paths] == ["bird/x.png"]
    assert dataset.classes == ["bird"]


def test_folder_without_subfolders_is_unlabelled(tmp_path: Path) -> None:
    for i in range(3):
        write_image(tmp_path / f"{i}.jpeg", (i, i, i))
    dataset = ImageFolderDataset(tmp_path, transform=lambda image: image.size)
    assert labels_of(dataset) == [-1, -1, -1] and dataset.classes == []
    assert dataset[0] == ((6, 5), -1)


def test_empty_or_unreadable_folder_is_an_error(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="no readable images"):
        ImageFolderDataset(tmp_path)
    (tmp_path / "x.png").write_bytes(b"not a png")
    with pytest.raises(DatasetError, match=r"no readable images .*\(1 unreadable\)"):
        ImageFolderDataset(tmp_path)
    with pytest.raises(DatasetError, match="not a folder"):
        ImageFolderDataset(tmp_path / "x.png")


def test_build_dataset_accepts_a_folder(labelled_folder: Path, tmp_path: Path) -> None:
    dataset = build_dataset(str(labelled_folder), "train", tmp_path, limit=3)
    assert isinstance(dataset, Subset) and len(dataset) == 3
    assert labels_of(dataset) == [0, 1, 1]  # the classes' shares of 2 cat and 3 dog images


# -------------------------------------------------------------------------------------------
# splits, subsets and labels


def test_train_test_split_is_stratified_and_reproducible() -> None:
    dataset = ShapesDataset(size=200)
    train, test = train_test_split(dataset, 0.25, seed=3)
    assert len(train) == 150 and len(test) == 50
    assert sorted(train.indices + test.indices) == list(range(200))
    assert np.bincount(labels_of(test)).tolist() == [5] * 10
    again, _ = train_test_split(dataset, 0.25, seed=3)
    other, _ = train_test_split(dataset, 0.25, seed=4)
    assert again.indices == train.indices and other.indices != train.indices
    # every class of two or more items is on both sides, even with a tiny fraction
    small_train, small_test = train_test_split(ShapesDataset(size=20), 0.01)
    assert sorted(set(labels_of(small_test))) == list(range(10))
    assert sorted(set(labels_of(small_train))) == list(range(10))
    for bad in (0.0, 1.0, -0.5):
        with pytest.raises(UsageError, match="--val-split"):
            train_test_split(dataset, bad)
    one_per_class = [(torch.zeros(1), 0), (torch.zeros(1), 1)]
    for fraction, side in ((0.5, "test"), (0.6, "training")):
        with pytest.raises(DatasetError, match=f"leaves no {side} images.*at least two per class"):
            train_test_split(one_per_class, fraction)  # type: ignore[arg-type]


def test_labels_through_nested_subsets() -> None:
    dataset = ShapesDataset(size=50)
    inner = Subset(dataset, [3, 4, 5, 6, 17])
    outer = Subset(inner, [4, 0])
    assert labels_of(outer) == [7, 3]


def test_labels_through_concatenation_and_skipped_count(labelled_folder: Path) -> None:
    folder = ImageFolderDataset(labelled_folder)
    both = ConcatDataset([ShapesDataset(size=12), Subset(folder, [4, 0])])
    assert labels_of(both) == [i % 10 for i in range(12)] + [1, 0]
    assert skipped_files(Subset(Subset(folder, [1]), [0])) == 2
    assert skipped_files(ShapesDataset(size=3)) == 0


def test_labels_of_a_generic_dataset() -> None:
    pairs = [(torch.zeros(1), 2), (torch.zeros(1), 0)]
    assert labels_of(pairs) == [2, 0]  # type: ignore[arg-type]


def test_build_dataset_shapes_and_limits(tmp_path: Path) -> None:
    train = build_dataset("shapes", "train", tmp_path)
    assert isinstance(train, ShapesDataset) and len(train) == 10_000
    assert len(build_dataset("shapes", "test", tmp_path, limit=5000)) == 2_000  # all there is
    limited = build_dataset("shapes", "test", tmp_path, limit=30)
    assert len(limited) == 30 and sorted(labels_of(limited)) == sorted(i % 10 for i in range(30))
    assert limited[0][0].size == (32, 32)
    assert build_dataset("shapes", "test", tmp_path, image_size=20)[0][0].size == (20, 20)
    with pytest.raises(UsageError, match="--limit"):
        build_dataset("shapes", "train", tmp_path, limit=0)
    with pytest.raises(UsageError, match="--split"):
        build_dataset("cifar10", "unlabeled", tmp_path)
    with pytest.raises(UsageError, match="--dataset"):
        build_dataset("mnist", "train", tmp_path)


# -------------------------------------------------------------------------------------------
# torchvision datasets without a network


def test_failed_download_names_the_url_and_the_folder(tmp_path: Path, monkeypatch) -> None:
    """A refused connection (nothing listens on port 9 of this machine) fails fast."""
    from torchvision.datasets import CIFAR10

    url = "http://127.0.0.1:9/cifar-10-python.tar.gz"
    monkeypatch.setattr(CIFAR10, "url", url)
    with pytest.raises(DatasetError) as raised:
        build_dataset("cifar10", "train", tmp_path)
    message = str(raised.value)
    assert url in message and str(tmp_path) in message and "cifar-10-python.tar.gz" in message
    assert "\n" not in message
    assert not (tmp_path / "cifar-10-python.tar.gz").exists()
    # a data folder created only for the failed attempt is removed again
    with pytest.raises(DatasetError):
        build_dataset("cifar10", "train", tmp_path / "new")
    assert not (tmp_path / "new").exists()


def test_partial_download_is_removed(tmp_path: Path, monkeypatch) -> None:
    from torchvision.datasets import STL10

    def interrupted(url: str, download_root: str, **kwargs: object) -> None:
        (Path(download_root) / STL10.filename).write_bytes(b"first bytes only")
        raise urllib.error.URLError("Connection reset by peer")

    monkeypatch.setattr("torchvision.datasets.stl10.download_and_extract_archive", interrupted)
    with pytest.raises(DatasetError, match=r"STL-10 from http.*stl10_binary\.tar\.gz.*reset"):
        build_dataset("stl10", "unlabeled", tmp_path)
    assert list(tmp_path.iterdir()) == []


def test_missing_dataset_without_download(tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match=r"CIFAR-100 not found in .*cifar-100-python\.tar\.gz"):
        build_dataset("cifar100", "test", tmp_path, download=False)


def test_existing_archive_is_kept_on_failure(tmp_path: Path, monkeypatch) -> None:
    """A user-supplied (here: corrupt) archive is never deleted by a failed attempt."""
    from torchvision.datasets import CIFAR10

    monkeypatch.setattr(CIFAR10, "url", "http://127.0.0.1:9/cifar-10-python.tar.gz")
    archive = tmp_path / "cifar-10-python.tar.gz"
    archive.write_bytes(b"user's file")
    with pytest.raises(DatasetError):
        build_dataset("cifar10", "test", tmp_path)
    assert archive.read_bytes() == b"user's file"


def test_module_lists_every_supported_extension() -> None:
    assert set(IMAGE_EXTENSIONS) >= {".jpg", ".jpeg", ".png", ".webp", ".bmp", ".gif"}
