"""Tests of simclr_cli.evaluation.features: the exported arrays, their order and metadata, and that
a
refused or failed export leaves nothing half-written."""

from __future__ import annotations

import json

import numpy as np
import pytest
import torch
from eval_fixtures import save_native_checkpoint, write_folder

from simclr_cli.config import FeaturesConfig
from simclr_cli.data.datasets import ImageFolderDataset, build_dataset
from simclr_cli.errors import OutputExistsError
from simclr_cli.evaluation import features as feat


def features_config(checkpoint, out, **overrides):
    options = {"dataset": "shapes", "split": "test", "limit": 23, "batch_size": 8}
    options.update(device="cpu", workers=0)
    if overrides.get("dataset", "shapes") != "shapes":
        del options["split"]  # a folder has no splits
    return FeaturesConfig(checkpoint=str(checkpoint), out=out, **{**options, **overrides})


def reference_transform(ck):
    """The per-image float test-time transform at the checkpoint's size and normalisation
    (the export crops to uint8 and normalises whole batches; it must give the same images)."""
    from transform_oracle import eval_transform

    from simclr_cli.storage.checkpoint import load_checkpoint

    spec = load_checkpoint(ck)["model"]
    return eval_transform(spec["image_size"], spec["mean"], spec["std"])


def direct_encoding(model, dataset, rows, layer="encoder"):
    """Encode a few items one by one, without the export machinery."""
    images = torch.stack([dataset[i][0] for i in rows])
    with torch.no_grad():
        h = model.eval().encoder(images)
        return (h if layer == "encoder" else model.projector(h)).numpy()


@pytest.mark.parametrize("layer", ["encoder", "projection"])
def test_shapes_export_round_trips_in_dataset_order(tmp_path, layer):
    ck = tmp_path / "ck.pt"
    model = save_native_checkpoint(ck, projection_dim=16)
    result = feat.export_features(features_config(ck, tmp_path / "out", layer=layer))
    x = np.load(tmp_path / "out" / "features.npy")
    y = np.load(tmp_path / "out" / "labels.npy")
    dim = 512 if layer == "encoder" else 16
    assert x.shape == (23, dim) and x.dtype == np.float32  # 23 = 2 batches of 8 + 7
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    items = meta["indices"]  # the --limit sample: row i is item items[i] of the split
    assert len(items) == 23 and items == sorted(items) and items != list(range(23))
    assert y.dtype == np.int64 and y.tolist() == [i % 10 for i in items]
    dataset = build_dataset("shapes", "test", tmp_path, reference_transform(ck))
    rows = [0, 9, 22]  # first, mid-batch, last row of the partial batch
    expected = direct_encoding(model, dataset, [items[r] for r in rows], layer)
    np.testing.assert_allclose(x[rows], expected, atol=1e-4)
    assert meta["count"] == 23 and meta["dim"] == dim and meta["layer"] == layer
    assert meta["arch"] == "resnet18" and meta["image_size"] == 32 and meta["split"] == "test"
    assert meta["normalization"]["mean"] == pytest.approx([0.4992, 0.4998, 0.5029])
    assert meta["checkpoint"] == str(ck) and meta["labelled"] == 23
    assert not (tmp_path / "out" / "paths.txt").exists()
    assert result["count"] == 23 and result["features"] == str(tmp_path / "out" / "features.npy")
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "features.npy", "labels.npy", "meta.json"
    ]  # fmt: skip


def test_folder_export_writes_paths_in_row_order(tmp_path):
    write_folder(tmp_path / "photos", ["b_dogs", "a_cats"], 3)
    ck = tmp_path / "ck.pt"
    model = save_native_checkpoint(ck)
    cfg = features_config(ck, tmp_path / "out", dataset=str(tmp_path / "photos"), limit=None)
    feat.export_features(cfg)
    paths = (tmp_path / "out" / "paths.txt").read_text().splitlines()
    folder = ImageFolderDataset(tmp_path / "photos")
    assert paths == [str(p.resolve()) for p in folder.paths] and len(paths) == 6
    labels = np.load(tmp_path / "out" / "labels.npy")
    assert labels.tolist() == [0, 0, 0, 1, 1, 1]  # a_cats, then b_dogs
    assert all(("a_cats" in p) == (label == 0) for p, label in zip(paths, labels, strict=True))
    folder.transform = reference_transform(ck)
    x = np.load(tmp_path / "out" / "features.npy")
    np.testing.assert_allclose(x[[0, 5]], direct_encoding(model, folder, [0, 5]), atol=1e-4)
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["split"] == "all"


def test_a_split_of_a_folder_is_refused_in_one_line(tmp_path, capsys):
    from simclr_cli.cli import run

    write_folder(tmp_path / "photos", ["a", "b"], 2)
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    options = ["--checkpoint", str(ck), "--dataset", str(tmp_path / "photos"), "--device", "cpu"]
    assert run(["features", *options, "--split", "test", "--out", str(tmp_path / "out")]) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: --split test: a folder has no splits and is exported whole")
    assert len(err.splitlines()) == 1 and not (tmp_path / "out").exists()
    assert run(["features", *options, "--split", "all", "--out", str(tmp_path / "out")]) == 0


def test_unlabelled_folder_exports_minus_one_labels(tmp_path):
    write_folder(tmp_path / "flat", None, 5)
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    feat.export_features(features_config(ck, tmp_path / "out", dataset=str(tmp_path / "flat")))
    assert np.load(tmp_path / "out" / "labels.npy").tolist() == [-1] * 5
    assert json.loads((tmp_path / "out" / "meta.json").read_text())["labelled"] == 0


def test_existing_outputs_are_refused_before_any_work(tmp_path):
    out = tmp_path / "out"
    out.mkdir()
    (out / "labels.npy").write_bytes(b"earlier results")
    bad = tmp_path / "ck.pt"
    save_native_checkpoint(bad, kind="classifier")  # would fail if it were ever loaded
    with pytest.raises(OutputExistsError, match="--overwrite"):
        feat.export_features(features_config(bad, out))
    assert (out / "labels.npy").read_bytes() == b"earlier results"
    assert sorted(p.name for p in out.iterdir()) == ["labels.npy"]


def test_overwrite_replaces_every_file_and_drops_a_stale_paths_list(tmp_path):
    out = tmp_path / "out"
    write_folder(tmp_path / "photos", ["a", "b"], 2)
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    feat.export_features(features_config(ck, out, dataset=str(tmp_path / "photos")))
    assert (out / "paths.txt").exists()
    feat.export_features(features_config(ck, out, limit=6, overwrite=True))
    assert np.load(out / "features.npy").shape == (6, 512)
    assert sorted(np.load(out / "labels.npy").tolist()) == list(range(6))  # one of 6 classes each
    assert not (out / "paths.txt").exists()  # it described rows that no longer exist


def test_a_failed_export_leaves_nothing_half_written(tmp_path, monkeypatch):
    out = tmp_path / "out"
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    feat.export_features(features_config(ck, out, limit=4))
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    real = feat.iter_features

    def failing(*args, **kwargs):
        for i, batch in enumerate(real(*args, **kwargs)):
            if i == 1:
                raise OSError("disk full")
            yield batch

    monkeypatch.setattr(feat, "iter_features", failing)
    with pytest.raises(OSError, match="disk full"):
        feat.export_features(features_config(ck, out, overwrite=True))
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before  # old set, no temp files
    with pytest.raises(OSError):
        feat.export_features(features_config(ck, tmp_path / "fresh"))
    assert not (tmp_path / "fresh").exists()  # not even the folder it would have made


def test_split_all_concatenates_the_splits_in_order(tmp_path):
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    cfg = features_config(ck, tmp_path / "out", split="all", limit=None)
    dataset, split, paths = feat.features_dataset(cfg, transform=None)
    assert split == "all" and paths is None and len(dataset) == 10_000 + 2_000
    train = build_dataset("shapes", "train", tmp_path)
    test = build_dataset("shapes", "test", tmp_path)
    assert np.array_equal(np.asarray(dataset[10_000][0]), np.asarray(test[0][0]))
    assert np.array_equal(np.asarray(dataset[3][0]), np.asarray(train[3][0]))


def test_release_layout_checkpoint_exports_features(tmp_path):
    from release_fixtures import make_release_checkpoint

    ck = tmp_path / "checkpoint_100.tar"
    make_release_checkpoint(ck, "1.1", projection_dim=64)
    cfg = features_config(ck, tmp_path / "out", layer="projection", limit=5, image_size=32)
    result = feat.export_features(cfg)
    assert np.load(tmp_path / "out" / "features.npy").shape == (5, 64)
    assert result["dim"] == 64


def test_meta_names_the_classes_and_counts_unreadable_files(tmp_path, capsys):
    write_folder(tmp_path / "photos", ["cat", "dog"], 3)
    (tmp_path / "photos" / "dog" / "broken.png").write_bytes(b"not a png")
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    cfg = features_config(ck, tmp_path / "out", dataset=str(tmp_path / "photos"), limit=None)
    feat.export_features(cfg)
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["classes"] == ["cat", "dog"] and meta["skipped_files"] == 1
    assert "skipped 1 unreadable image file" in capsys.readouterr().err


def test_shapes_meta_names_its_classes(tmp_path):
    from simclr_cli.data.shapes import SHAPE_CLASSES

    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    feat.export_features(features_config(ck, tmp_path / "out", limit=4))
    meta = json.loads((tmp_path / "out" / "meta.json").read_text())
    assert meta["classes"] == list(SHAPE_CLASSES) and meta["skipped_files"] == 0
