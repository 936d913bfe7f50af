"""``simclr finetune``: a classifier that learns on a tiny labelled set, its outputs and
baselines, a resume that ends with the weights of an uninterrupted run, and every bad input as
one line with nothing written."""

from __future__ import annotations

import json
import signal
from pathlib import Path

import pytest
import torch
from eval_fixtures import save_native_checkpoint, write_folder

from simclr_cli.cli import run
from simclr_cli.evaluation.tuning import Tuner
from simclr_cli.storage.checkpoint import FORMAT, load_checkpoint
from simclr_cli.storage.classifier import load_classifier, load_classifier_payload

# 3 classes of 8 training and 4 test images, 8 px: ResNet-18 (CIFAR stem) steps take ~0.1 s
CLASSES = ["one", "two", "three"]


@pytest.fixture(scope="module")
def data(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("finetune-data")
    write_folder(root / "train", CLASSES, 8, size=8)
    write_folder(root / "test", CLASSES, 4, size=8)
    ck = root / "ck.pt"
    save_native_checkpoint(ck, stem="cifar", image_size=8, head="v2", hidden_dim=32,
                           projection_dim=8)  # fmt: skip
    return {"root": root, "ck": ck, "train": root / "train", "test": root / "test"}


def finetune(data: dict[str, Path], out: Path, *options: str) -> int:
    return run(["finetune", "--checkpoint", str(data["ck"]), "--train-dir", str(data["train"]),
                "--test-dir", str(data["test"]), "--out", str(out), "--workers", "0",
                "--device", "cpu", "--batch-size", "6", *options])  # fmt: skip


def records(out: Path, arm: str = "finetune") -> list[dict]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return [r for r in map(json.loads, lines) if r["arm"] == arm]


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def one_error(err: str) -> str:
    """The one ``error:`` line of a failed command (the phases it went through precede it)."""
    errors = [line for line in err.splitlines() if line.startswith("error: ")]
    assert len(errors) == 1 and "Traceback" not in err, err
    return errors[0]


# ----------------------------------------------------------------------------------------------
# it learns, and says what it did


def test_a_finetune_learns_on_a_tiny_set(data, tmp_path) -> None:
    out = tmp_path / "run"
    code = finetune(data, out, "--labels-per-class", "6", "--epochs", "8", "--lr", "0.02",
                    "--crop-scale", "0.5")  # fmt: skip
    assert code == 0
    losses = [r["loss"] for r in records(out)]
    assert len(losses) == 8 and sum(losses[-2:]) / 2 < 0.7 * losses[0]  # the loss falls
    result = json.loads((out / "finetune.json").read_text())
    assert result["top1"] > 1 / 3 + 0.25  # above chance (3 classes) on the 12 test images
    assert result["test_images"] == 12 and result["subset"]["per_class"] == dict.fromkeys(
        ["one", "three", "two"], 6
    )
    payload = load_classifier_payload(out / "classifier.pt")
    assert payload["kind"] == "classifier" and payload["classes"] == ["one", "three", "two"]
    assert payload["optimizer"] is None and payload["model"]["image_size"] == 8
    assert payload["metrics"]["top1"] == result["top1"]


@pytest.fixture(scope="module")
def uninterrupted(data, tmp_path_factory) -> Path:
    """One complete run with both baselines and a held-out part: the reference of the resumes."""
    out = tmp_path_factory.mktemp("uninterrupted") / "run"
    assert finetune(data, out, *RESUMED) == 0
    return out


RESUMED = ("--labels-per-class", "8", "--val-split", "0.25", "--epochs", "3", "--lr", "0.02",
           "--from-head-layer", "1", "--baseline", "scratch", "--baseline", "linear",
           "--seed", "3")  # fmt: skip


def test_outputs_hold_the_subset_recipe_and_baselines(uninterrupted, data, capsys) -> None:
    out = uninterrupted
    assert set(listing(out)) == {"config.json", "subset.txt", "metrics.jsonl", "classifier.pt",
                                 "finetune_last.pt", "scratch_last.pt", "finetune.json",
                                 "confusion_matrix.csv"}  # fmt: skip
    result = json.loads((out / "finetune.json").read_text())
    assert result["subset"]["images"] == 24 and result["subset"]["val_images"] == 6
    assert result["recipe"]["from_head_layer"] == 1 and result["recipe"]["steps_per_epoch"] == 3
    assert set(result["baselines"]) == {"scratch", "linear"}
    assert len(result["per_class"]) == 3 and "selected_epoch" in result
    for arm in ("scratch", "linear"):
        assert 0 <= result["baselines"][arm]["top1"] <= 1 and result["baselines"][arm]["cpu_s"] >= 0
    # each classifier's own wall time; the command's (data, three classifiers) is longer
    arms = [result, *result["baselines"].values()]
    assert sum(m["time_s"] for m in arms) <= result["run_time_s"] + 0.2  # each rounded to 0.1 s
    csv = (out / "confusion_matrix.csv").read_text().splitlines()
    assert csv[0] == "true\\predicted,one,three,two" and len(csv) == 4
    # the fine-tuned classifier kept the first layer of the v2 head: fc = Linear, BN, ReLU, Linear
    model = load_classifier(load_classifier_payload(out / "classifier.pt"))
    assert [type(m).__name__ for m in model.fc] == ["Linear", "BatchNorm1d", "ReLU", "Linear"]
    pretrained = load_checkpoint(data["ck"])["state_dict"]
    assert not torch.equal(model.state_dict()["fc.0.weight"], pretrained["projector.0.weight"])


def test_the_subset_file_repeats_the_run(uninterrupted, data, tmp_path) -> None:
    """subset.txt read back with --subset gives the same labelled images, and the same run."""
    text = (uninterrupted / "subset.txt").read_text()
    assert text.startswith("# simclr-cli label subset: 24 images") and text.count("\n") == 26
    again = tmp_path / "again"
    assert finetune(data, again, "--subset", str(uninterrupted / "subset.txt"), "--epochs", "1",
                    "--seed", "3") == 0  # fmt: skip
    lines = [line for line in (again / "subset.txt").read_text().splitlines() if line[0] != "#"]
    assert lines == [line for line in text.splitlines() if line[0] != "#"]


# ----------------------------------------------------------------------------------------------
# Ctrl-C and resume


@pytest.mark.parametrize("stop_at", [4, 11])  # mid-epoch of the fine-tune; inside the scratch run
def test_a_resumed_run_ends_with_the_uninterrupted_weights(
    uninterrupted, data, tmp_path, monkeypatch, capsys, stop_at
) -> None:
    real_step, calls = Tuner.step, []

    def step(self, images, labels):
        result = real_step(self, images, labels)
        calls.append(self.name)
        if len(calls) == stop_at:
            signal.raise_signal(signal.SIGINT)  # what Ctrl-C does: the handler asks to stop
        return result

    monkeypatch.setattr(Tuner, "step", step)
    out = tmp_path / "run"
    assert finetune(data, out, *RESUMED) == 130
    err = capsys.readouterr().err
    assert "stopped by SIGINT" in err and f"simclr finetune --resume auto --out {out}" in err
    assert "finetune.json" not in listing(out)
    monkeypatch.setattr(Tuner, "step", real_step)
    assert run(["finetune", "--resume", "auto", "--out", str(out), "--workers", "0"]) == 0
    for name in ("classifier.pt", "scratch_last.pt"):
        ours = load_checkpoint(out / name, kinds=("classifier",))["state_dict"]
        theirs = load_checkpoint(uninterrupted / name, kinds=("classifier",))["state_dict"]
        assert all(torch.equal(ours[k], theirs[k]) for k in theirs), name
    timing = ("time", "images_per_s")
    for arm in ("finetune", "scratch"):
        strip = [{k: v for k, v in r.items() if k not in timing} for r in records(out, arm)]
        assert strip == [{k: v for k, v in r.items() if k not in timing}
                         for r in records(uninterrupted, arm)]  # fmt: skip
    ours, theirs = (json.loads((d / "finetune.json").read_text()) for d in (out, uninterrupted))
    assert (ours["top1"], ours["baselines"]["scratch"]["top1"]) == (
        theirs["top1"], theirs["baselines"]["scratch"]["top1"])  # fmt: skip


def test_a_resume_refuses_other_options(uninterrupted, tmp_path, capsys) -> None:
    out = tmp_path / "copy"
    out.mkdir()
    (out / "config.json").write_text((uninterrupted / "config.json").read_text())
    code = run(["finetune", "--resume", "auto", "--out", str(out), "--labels-per-class", "2"])
    assert code == 1 and "--labels-per-class 8 (given: 2)" in one_error(capsys.readouterr().err)


def test_a_resume_names_a_training_folder_that_moved(uninterrupted, tmp_path, capsys) -> None:
    out = tmp_path / "copy"
    out.mkdir()
    config = json.loads((uninterrupted / "config.json").read_text())
    config["train_dir"] = str(tmp_path / "gone")  # recorded absolute, since deleted
    (out / "config.json").write_text(json.dumps(config))
    assert run(["finetune", "--resume", "auto", "--out", str(out)]) == 1
    line = one_error(capsys.readouterr().err)
    assert f"{out / 'config.json'} names the dataset folder {tmp_path / 'gone'}" in line
    assert "no longer exists" in line and listing(out) == ["config.json"]


def test_a_fresh_run_into_a_run_folder_is_refused(uninterrupted, data, capsys) -> None:
    before = listing(uninterrupted)
    assert finetune(data, uninterrupted, "--labels-per-class", "2") == 1
    assert "already holds a run" in one_error(capsys.readouterr().err)
    assert listing(uninterrupted) == before


# ----------------------------------------------------------------------------------------------
# bad input: one line, the fix, nothing written


def save_without_encoder(path: Path) -> None:
    state = {"projector.0.weight": torch.zeros(4, 4)}
    payload = {"format": FORMAT, "format_version": 1, "kind": "pretrain",
               "model": {"arch": "resnet18", "stem": "cifar", "head": "v1", "projection_dim": 4},
               "state_dict": state}  # fmt: skip
    torch.save(payload, path)


@pytest.mark.parametrize(
    ("options", "code", "expected"),
    [
        (["--label-fraction", "1.5"], 2, "--label-fraction: invalid value 1.5; give a fraction "
         "in (0, 1]"),
        (["--label-fraction", "0"], 2, "--label-fraction: invalid value 0.0"),
        (["--labels-per-class", "9"], 2, "the smallest class (one) has 8 training images; use "
         "at most 8"),
        (["--labels-per-class", "2", "--label-fraction", "0.5"], 2, "give one of"),
        (["--from-head-layer", "3"], 2, "the checkpoint's v2 head has 2 hidden layer(s)"),
        (["--baseline", "random"], 2, "--baseline"),
    ],
)  # fmt: skip
def test_bad_options_are_one_line_and_write_nothing(
    data, workdir, capsys, options, code, expected
) -> None:
    out = workdir / "out"
    assert finetune(data, out, *options) == code
    assert expected in one_error(capsys.readouterr().err)
    assert listing(workdir) == []


def test_a_checkpoint_without_an_encoder_is_one_line(data, workdir, capsys) -> None:
    native, bare = workdir.parent / "native.pt", workdir.parent / "bare.pt"
    save_without_encoder(native)
    torch.save({"projector.0.weight": torch.zeros(4, 4)}, bare)
    for path, expected in ((native, "holds no encoder weights"), (bare, "missing keys encoder")):
        code = run(["finetune", "--checkpoint", str(path), "--train-dir", str(data["train"]),
                    "--test-dir", str(data["test"]), "--out", str(workdir / "out")])  # fmt: skip
        assert code == 1 and expected in one_error(capsys.readouterr().err)
    assert listing(workdir) == []


def test_a_subset_file_of_other_images_is_one_line(data, workdir, capsys) -> None:
    bad = workdir.parent / "subset.txt"
    bad.write_text("one/img00.png\tone\nzebra/img00.png\tzebra\n")
    assert finetune(data, workdir / "out", "--subset", str(bad)) == 1
    err = one_error(capsys.readouterr().err)
    assert "names 1 image that is not in" in err and "zebra/img00.png" in err
    assert listing(workdir) == []


def test_a_classifier_given_to_pretrain_resume_is_one_line(uninterrupted, workdir, capsys):
    classifier = uninterrupted / "classifier.pt"
    code = run(["pretrain", "--resume", str(classifier), "--out", str(workdir / "run")])
    err = one_error(capsys.readouterr().err)
    assert code == 1 and "is a fine-tuned classifier" in err and "simclr pretrain" in err
    assert listing(workdir) == []


def test_report_shows_a_finetuning_run(uninterrupted, tmp_path) -> None:
    pytest.importorskip("matplotlib")
    page = tmp_path / "page"
    assert run(["report", str(uninterrupted), "--out", str(page)]) == 0
    assert listing(page) == ["confusion.png", "curves.png", "per_class.png", "report.html"]
    html = (page / "report.html").read_text()
    assert "<h2>Fine-tuning</h2>" in html and "from scratch" in html and "linear probe" in html
    assert "Fine-tuned classifier accuracy per class" in html and "Left out" not in html
    result = json.loads((uninterrupted / "finetune.json").read_text())
    assert f"{100 * result['top1']:.1f}%" in html
