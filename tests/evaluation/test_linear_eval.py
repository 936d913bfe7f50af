"""Tests of simclr_cli.evaluation.linear_eval: the ``linear-eval`` command end to end (whole splits
counted,
weights untouched, folders, release checkpoints, output files and tables) and the baselines."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from eval_fixtures import save_native_checkpoint, write_folder

from simclr_cli.evaluation import linear_eval
from simclr_cli.evaluation.probe import WEIGHT_DECAY_GRID


def eval_config(checkpoint, **overrides):
    from simclr_cli.config import LinearEvalConfig

    options = {"dataset": "shapes", "limit": 61, "batch_size": 16, "device": "cpu", "workers": 0}
    return LinearEvalConfig(checkpoint=str(checkpoint), **{**options, **overrides})


def test_linear_eval_counts_the_whole_test_split_and_writes_results(tmp_path):
    import json

    ck = tmp_path / "run" / "checkpoint_last.pt"
    ck.parent.mkdir()
    save_native_checkpoint(ck)
    summary = linear_eval.run_linear_eval(eval_config(ck))
    result = json.loads((tmp_path / "run" / "linear_eval.json").read_text())
    # 61 = 3 batches of 16 + a partial batch of 13: every test image is counted once.
    assert result["test_images"] == 61 and result["train_images"] == 61
    cm = torch.tensor(result["confusion_matrix"])
    assert cm.shape == (10, 10) and cm.sum() == 61
    assert [row["support"] for row in result["per_class"]] == cm.sum(1).tolist()
    assert result["top1"] == pytest.approx(cm.diagonal().sum().item() / 61)
    assert 0 <= result["top1"] <= result["top5"] <= 1 and 0 <= result["knn_top1"] <= 1
    assert result["per_class"][0]["class"] == "circle"
    assert float(result["weight_decay"]) in WEIGHT_DECAY_GRID
    csv = (tmp_path / "run" / "confusion_matrix.csv").read_text().splitlines()
    assert len(csv) == 11 and csv[1].split(",")[1:] == [str(v) for v in cm[0].tolist()]
    assert summary["top1"] == result["top1"] and summary["results"].endswith("linear_eval.json")
    assert not [p for p in (tmp_path / "run").iterdir() if p.name.startswith(".")]  # no temp left


@pytest.mark.parametrize("protocol", ["features", "augment"])
def test_linear_eval_leaves_the_checkpoint_weights_unchanged(tmp_path, monkeypatch, protocol):
    ck = tmp_path / "ck.pt"
    original = {k: v.clone() for k, v in save_native_checkpoint(ck).state_dict().items()}
    loaded = []
    real_loader = linear_eval.load_frozen_model

    def spy(*args):
        model, payload, path = real_loader(*args)
        loaded.append(model)
        return model, payload, path

    monkeypatch.setattr(linear_eval, "load_frozen_model", spy)
    cfg = eval_config(ck, limit=24, out=tmp_path / "out", protocol=protocol, epochs=1)
    result = linear_eval.run_linear_eval(cfg)
    assert result["protocol"] == protocol and (tmp_path / "out" / "linear_eval.json").is_file()
    (model,) = loaded
    assert not model.training and not any(p.requires_grad for p in model.parameters())
    after = model.state_dict()  # parameters AND buffers (BN running statistics)
    assert after.keys() == original.keys()
    assert all(torch.equal(after[k], original[k]) for k in original)


def test_a_checkpoint_of_another_kind_is_refused(tmp_path):
    from simclr_cli.errors import CheckpointError

    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck, kind="distilled")
    with pytest.raises(CheckpointError, match="not a simclr-cli pretraining checkpoint"):
        linear_eval.run_linear_eval(eval_config(ck))
    save_native_checkpoint(ck, kind="classifier")  # says what it is, and where it goes
    with pytest.raises(CheckpointError, match="is a fine-tuned classifier .* `simclr predict`"):
        linear_eval.run_linear_eval(eval_config(ck))
    assert not (tmp_path / "linear_eval.json").exists()


def test_linear_eval_on_train_and_test_folders(tmp_path):
    write_folder(tmp_path / "train", ["cat", "dog", "owl"], 6)
    write_folder(tmp_path / "test", ["cat", "dog", "owl"], 2)
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    cfg = eval_config(ck, dataset=None, train_dir=tmp_path / "train", test_dir=tmp_path / "test")
    result = linear_eval.run_linear_eval(cfg)
    assert (result["train_images"], result["test_images"]) == (18, 6)
    import json

    saved = json.loads((tmp_path / "linear_eval.json").read_text())
    assert [row["class"] for row in saved["per_class"]] == ["cat", "dog", "owl"]


def test_linear_eval_splits_one_folder_with_a_fixed_seed(tmp_path):
    write_folder(tmp_path / "photos", ["a", "b"], 10)
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    cfg = eval_config(ck, dataset=str(tmp_path / "photos"), val_split=0.3, limit=None)
    train, test = linear_eval.linear_eval_splits(cfg, transform=None)
    again = linear_eval.linear_eval_splits(cfg, transform=None)[1]
    assert (len(train), len(test)) == (14, 6) and list(test.indices) == list(again.indices)
    assert not set(train.indices) & set(test.indices)
    result = linear_eval.run_linear_eval(cfg)
    assert (result["train_images"], result["test_images"]) == (14, 6)


def test_folders_without_labels_or_with_other_classes_are_refused(tmp_path):
    from simclr_cli.errors import DatasetError

    write_folder(tmp_path / "flat", None, 6)
    write_folder(tmp_path / "train", ["a", "b"], 3)
    write_folder(tmp_path / "test", ["a", "c"], 3)
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    with pytest.raises(DatasetError, match="unlabelled images; linear evaluation needs labels"):
        linear_eval.run_linear_eval(eval_config(ck, dataset=str(tmp_path / "flat")))
    with pytest.raises(DatasetError, match="differ"):
        linear_eval.run_linear_eval(
            eval_config(ck, dataset=None, train_dir=tmp_path / "train", test_dir=tmp_path / "test")
        )
    assert not list(tmp_path.glob("*.json"))


def test_a_folder_of_one_class_is_refused(tmp_path, capsys):
    from simclr_cli.cli import run

    write_folder(tmp_path / "photos", ["only"], 10)
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    options = ["--checkpoint", str(ck), "--dataset", str(tmp_path / "photos"), "--device", "cpu"]
    assert run(["linear-eval", *options, "--workers", "0"]) == 1
    err = capsys.readouterr().err.strip().splitlines()
    assert err[-1] == (
        f"error: {tmp_path / 'photos'} has one class (only); linear evaluation needs two "
        "or more: put each class in its own subfolder"
    )
    assert not list(tmp_path.glob("*.json")) and not list(tmp_path.glob("*.csv"))


def test_limit_on_a_class_folder_keeps_every_class_and_records_its_images(tmp_path):
    import json
    from collections import Counter

    write_folder(tmp_path / "photos", ["a", "b", "c", "d"], 10)  # sorted: 10 a, 10 b, ...
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    cfg = eval_config(ck, dataset=str(tmp_path / "photos"), limit=8, out=tmp_path / "out")
    linear_eval.run_linear_eval(cfg)
    saved = json.loads((tmp_path / "out" / "linear_eval.json").read_text())
    train, test = saved["images"]["train"], saved["images"]["test"]
    assert Counter(Path(p).parent.name for p in train) == dict.fromkeys("abcd", 2)
    assert Counter(Path(p).parent.name for p in test) == dict.fromkeys("abcd", 2)
    assert not set(train) & set(test) and all(Path(p).is_file() for p in train + test)


@pytest.mark.parametrize("layout", ["1.0", "ddp"])
def test_linear_eval_reads_release_layout_checkpoints(tmp_path, layout):
    from release_fixtures import make_release_checkpoint

    ck = tmp_path / "checkpoint_100.tar"
    make_release_checkpoint(ck, layout)
    result = linear_eval.run_linear_eval(eval_config(ck, limit=20, image_size=32))
    assert result["test_images"] == 20 and 0 <= result["top1"] <= 1
    assert (tmp_path / "linear_eval.json").is_file()


def test_results_of_cached_checkpoints_stay_out_of_the_cache(tmp_path) -> None:
    from simclr_cli.evaluation.linear_eval import linear_eval_dir

    cache = tmp_path / "cache"
    cache.mkdir()
    cached = cache / "resnet50-stl10.tar"
    run = tmp_path / "runs" / "a" / "checkpoint_last.pt"
    assert linear_eval_dir(None, cached, cache) == Path("linear_eval") / "resnet50-stl10"
    assert linear_eval_dir(None, run, cache) == run.parent
    assert linear_eval_dir(tmp_path / "o", cached, cache) == tmp_path / "o"


def test_linear_eval_records_the_k_it_chose(tmp_path):
    import json

    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    linear_eval.run_linear_eval(eval_config(ck, limit=200, out=tmp_path / "auto"))
    linear_eval.run_linear_eval(eval_config(ck, limit=200, knn_k=3, out=tmp_path / "given"))
    auto = json.loads((tmp_path / "auto" / "linear_eval.json").read_text())
    given = json.loads((tmp_path / "given" / "linear_eval.json").read_text())
    from simclr_cli.data.datasets import build_dataset, labels_of

    train_labels = labels_of(build_dataset("shapes", "train", tmp_path, limit=200))
    smallest = int(torch.bincount(torch.tensor(train_labels)).min())
    # 200 images over 10 classes: a tenth of the smallest class, not 200
    assert auto["knn"]["k"] == max(1, smallest // 10) < 200
    assert given["knn"]["k"] == 3


def test_random_baseline_is_default_initialised_and_seeded():
    from simclr_cli.method.model import build_simclr, model_spec

    spec = model_spec("resnet18", "imagenet", image_size=32)
    a, b, c = (
        linear_eval.random_encoder(spec, 0),
        linear_eval.random_encoder(spec, 0),
        linear_eval.random_encoder(spec, 1),
    )
    last_bn = a.encoder.layer1[0].bn2.weight
    # torchvision's default: batch-norm scales are 1; training starts from zero-initialised ones
    assert torch.equal(last_bn, torch.ones_like(last_bn))
    assert not build_simclr(spec, zero_init_residual=True).encoder.layer1[0].bn2.weight.any()
    assert torch.equal(a.encoder.conv1.weight, b.encoder.conv1.weight)
    assert not torch.equal(a.encoder.conv1.weight, c.encoder.conv1.weight)
    assert not a.training and not any(p.requires_grad for p in a.parameters())
    state = torch.random.get_rng_state()
    linear_eval.random_encoder(spec, 3)
    assert torch.equal(state, torch.random.get_rng_state())  # the caller's stream is untouched


def test_pixel_features_are_the_pooled_crops():
    images = torch.randint(0, 256, (5, 3, 64, 64), dtype=torch.uint8)
    dataset = torch.utils.data.TensorDataset(images, torch.arange(5))
    x, y = linear_eval.pixel_features(dataset, batch_size=2)
    expected = torch.nn.functional.avg_pool2d(images.double() / 255, 2).flatten(1)
    assert x.shape == (5, 3 * 32 * 32) and torch.equal(y, torch.arange(5))
    assert torch.allclose(x.double(), expected, atol=1e-6)


def test_linear_eval_reports_baselines_beside_the_checkpoint(tmp_path):
    import json

    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck, seed=1)  # not the seed-0 default init of the random baseline
    cfg = eval_config(ck, limit=100, baseline=("random", "pixels"), out=tmp_path / "eval")
    summary = linear_eval.run_linear_eval(cfg)
    result = json.loads((tmp_path / "eval" / "linear_eval.json").read_text())
    random, pixels = result["baselines"]["random"], result["baselines"]["pixels"]
    for metrics in (random, pixels):
        assert 0 <= metrics["top1"] <= metrics["top5"] <= 1 and 0 <= metrics["knn_top1"] <= 1
    # shapes checkpoints are normalised: the random encoder was also scored on [0, 1] inputs,
    # and the better of the two is the baseline
    assert random["inputs"] in ("checkpoint normalisation", "[0, 1]")
    assert summary["random_top1"] == random["top1"] and summary["pixels_top1"] == pixels["top1"]
    gap = 100 * (result["top1"] - random["top1"])
    assert f"random encoder (default init) {100 * random['top1']:.1f}%" in summary["verdict"]
    assert f"({gap:+.1f} / " in summary["verdict"]
    # the random baseline is not the checkpoint: a zero-init checkpoint's h is nearly constant
    assert random["top1"] != result["top1"] or random["knn_top1"] != result["knn_top1"]


def test_linear_eval_refuses_to_overwrite_earlier_results_without_overwrite(tmp_path):
    from simclr_cli.errors import OutputExistsError

    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    cfg = eval_config(ck, limit=12, out=tmp_path / "out")
    linear_eval.run_linear_eval(cfg)
    before = (tmp_path / "out" / "linear_eval.json").read_text()
    with pytest.raises(OutputExistsError, match="--overwrite"):
        linear_eval.run_linear_eval(cfg)
    assert (tmp_path / "out" / "linear_eval.json").read_text() == before
    linear_eval.run_linear_eval(eval_config(ck, limit=12, out=tmp_path / "out", overwrite=True))


def test_linear_eval_prints_table_and_summary_on_stdout(tmp_path, capsys, monkeypatch):
    import json

    from simclr_cli.cli import run
    from simclr_cli.data.shapes import SHAPE_CLASSES

    monkeypatch.setenv("SIMCLR_PROGRESS_SECONDS", "0")
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    argv = ["linear-eval", "--checkpoint", str(ck), "--dataset", "shapes", "--limit", "20"]
    assert run([*argv, "--device", "cpu", "--workers", "0", "--out", str(tmp_path / "o")]) == 0
    out, err = capsys.readouterr()
    # The per-class table and the summary both go to stdout: `> results.txt` keeps both.
    assert "circle" in out and "top-1" in out and "Linear evaluation" in out
    assert "circle" not in err
    # Phases and counted extraction batches on stderr (not a terminal here: plain lines).
    assert "loading data (shapes)..." in err and "fitting the linear classifier" in err
    assert "extracting features (train) batch 1/1 (100%)" in err
    assert "warning: 20 train / 20 test images for 10 classes are too few" in err
    saved = json.loads((tmp_path / "o" / "linear_eval.json").read_text())
    assert saved["classes"] == list(SHAPE_CLASSES) and saved["skipped_files"] == 0
    assert "too few" in saved["warning"]


def test_linear_eval_counts_unreadable_files(tmp_path, capsys):
    write_folder(tmp_path / "train", ["cat", "dog"], 4)
    write_folder(tmp_path / "test", ["cat", "dog"], 2)
    (tmp_path / "train" / "cat" / "broken.png").write_bytes(b"not a png")
    (tmp_path / "test" / "dog" / "broken.jpg").write_bytes(b"not a jpeg")
    ck = tmp_path / "ck.pt"
    save_native_checkpoint(ck)
    cfg = eval_config(ck, dataset=None, train_dir=tmp_path / "train", test_dir=tmp_path / "test")
    linear_eval.run_linear_eval(cfg)
    assert "skipped 2 unreadable image files" in capsys.readouterr().err
    import json

    assert json.loads((tmp_path / "linear_eval.json").read_text())["skipped_files"] == 2


def test_small_data_warning():
    assert linear_eval.small_data_warning(5000, 1000, 10) is None
    assert "top-5 of 4 classes" in linear_eval.small_data_warning(5000, 1000, 4)
    assert "5 train / 5 test images" in linear_eval.small_data_warning(5, 5, 10)


@pytest.mark.parametrize("better", ["checkpoint normalisation", "[0, 1]"])
def test_random_baseline_keeps_the_better_input_scaling(monkeypatch, better):
    from types import SimpleNamespace

    from simclr_cli.method.model import model_spec

    def fake_eval(model, *args, **kwargs):
        normalised = model.mean is not None
        top1 = 0.6 if normalised == (better == "checkpoint normalisation") else 0.3
        return {"top1": top1, "top5": 0.9, "knn_top1": top1 / 2, "weight_decay": 1e-4}

    monkeypatch.setattr(linear_eval, "evaluate_frozen", fake_eval)
    spec = model_spec("resnet18", "imagenet", image_size=32, mean=[0.5] * 3, std=[0.2] * 3)
    cfg = SimpleNamespace(seed=0, solver="lbfgs", batch_size=8, resolved_precision="fp32",
                          workers=0, knn_temperature=0.1)  # fmt: skip
    result = linear_eval._best_random_baseline(spec, None, None, 10, torch.device("cpu"), cfg, 5)
    assert result["inputs"] == better and result["top1"] == 0.6
