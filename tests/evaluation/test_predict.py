"""``simclr predict``: the CSV holds what the classifier's own forward pass gives each image;
unreadable images are listed, not fatal; a path without images is one line."""

from __future__ import annotations

import csv
from pathlib import Path

import pytest
import torch
from eval_fixtures import save_classifier_checkpoint, write_folder
from PIL import Image

from simclr_cli.cli import run
from simclr_cli.method.preprocess import to_uint8_transform


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, torch.nn.Module]:
    path = tmp_path_factory.mktemp("predict") / "classifier.pt"
    return path, save_classifier_checkpoint(path, image_size=16, seed=2)


def expected_probabilities(model: torch.nn.Module, path: Path) -> torch.Tensor:
    """The classifier's forward pass on one image, written out: resize and centre crop, [0, 1],
    the checkpoint's normalisation, softmax."""
    with Image.open(path) as image:
        x = to_uint8_transform(16)(image.convert("RGB")).float().div(255)
    mean, std = torch.tensor(model.mean).view(3, 1, 1), torch.tensor(model.std).view(3, 1, 1)
    with torch.no_grad():
        return model.eval()(((x - mean) / std).unsqueeze(0)).softmax(1)[0]


def test_the_csv_is_the_classifiers_own_forward_pass(classifier, tmp_path, capsys) -> None:
    path, model = classifier
    write_folder(tmp_path / "images", ["a", "b"], 3, size=24)  # resized to 16 px on the way
    (tmp_path / "images" / "b" / "broken.png").write_bytes(b"not an image")
    out = tmp_path / "predictions.csv"
    code = run(["predict", "--checkpoint", str(path), str(tmp_path / "images"), "--out", str(out),
                "--top-k", "2", "--workers", "0"])  # fmt: skip
    assert code == 0
    rows = list(csv.DictReader(out.open()))
    assert list(rows[0]) == ["path", "class", "probability", "top_k", "error"]
    assert len(rows) == 7
    classes = ["cat", "dog", "owl"]
    for row in rows:
        if row["path"].endswith("broken.png"):
            assert row["class"] == "" and row["error"]  # listed, not fatal
            continue
        probabilities = expected_probabilities(model, Path(row["path"]))
        best = int(probabilities.argmax())
        assert row["class"] == classes[best] and row["error"] == ""
        assert float(row["probability"]) == pytest.approx(probabilities[best].item(), abs=1e-5)
        ranked = [item.split(":") for item in row["top_k"].split("|")]
        assert [name for name, _ in ranked] == [
            classes[i] for i in probabilities.argsort(descending=True)[:2]
        ]
    captured = capsys.readouterr()
    assert "unreadable" in captured.out and f"unreadable: {tmp_path}/images/b/broken.png" in (
        captured.err
    )


def test_a_path_without_images_is_one_line(classifier, tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    (tmp_path / "empty" / "notes.txt").write_text("no images here")
    code = run(["predict", "--checkpoint", str(classifier[0]), str(tmp_path / "empty")])
    err = capsys.readouterr().err
    assert code == 1 and "holds no images" in err and len(err.strip().splitlines()) == 1
    code = run(["predict", "--checkpoint", str(classifier[0]), str(tmp_path / "missing.png")])
    err = capsys.readouterr().err
    assert code == 2 and "IMAGES: invalid value" in err and "no such file or folder" in err


def test_a_pretraining_checkpoint_is_refused_with_the_fix(tmp_path, capsys) -> None:
    from eval_fixtures import save_native_checkpoint

    save_native_checkpoint(tmp_path / "ck.pt")
    write_folder(tmp_path / "images", None, 1)
    code = run(["predict", "--checkpoint", str(tmp_path / "ck.pt"), str(tmp_path / "images")])
    err = capsys.readouterr().err
    assert code == 1 and "is a pretraining checkpoint, not a classifier" in err
    assert "simclr finetune --checkpoint" in err


def test_an_existing_csv_is_kept_unless_overwrite(classifier, tmp_path, capsys) -> None:
    write_folder(tmp_path / "images", None, 1)
    out = tmp_path / "p.csv"
    out.write_text("precious")
    args = ["predict", "--checkpoint", str(classifier[0]), str(tmp_path / "images"),
            "--out", str(out), "--workers", "0"]  # fmt: skip
    assert run(args) == 1 and out.read_text() == "precious"
    assert run([*args, "--overwrite"]) == 0 and out.read_text().startswith("path,class")
