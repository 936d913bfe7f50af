"""A new user's own folder of images, end to end: runs that work from any working directory,
``--limit`` samples that keep every class, the kNN monitor on a labelled folder, and the hints a
run gives after it."""

from __future__ import annotations

import json
from collections import Counter
from pathlib import Path

import pytest
from eval_fixtures import write_folder

from simclr_cli.cli import run
from simclr_cli.config import PretrainConfig
from simclr_cli.data.datasets import labels_of
from simclr_cli.training import monitor
from simclr_cli.training import pretrain as train

# A real ResNet-18 at 8 px: small enough for a CPU test, and loadable by `simclr report`.
SMALL = ["--stem", "cifar", "--image-size", "8", "--batch-size", "12", "--workers", "0",
         "--device", "cpu", "--precision", "fp32", "--log-every", "1"]  # fmt: skip


def test_a_run_on_a_relative_folder_works_from_any_directory(tmp_path, monkeypatch, capsys):
    write_folder(tmp_path / "digits", ["a", "b"], 12, size=8)
    start, elsewhere = tmp_path / "start", tmp_path / "elsewhere"
    start.mkdir()
    elsewhere.mkdir()
    monkeypatch.chdir(start)
    flags = ["--dataset", "../digits", "--data-dir", "data", "--out", "runs/d", "--epochs", "2"]
    assert run(["pretrain", *flags, *SMALL, "--max-steps", "1"]) == 0
    run_dir = (start / "runs" / "d").resolve()
    config = json.loads((run_dir / "config.json").read_text())
    assert config["dataset"] == str((tmp_path / "digits").resolve())
    assert config["data_dir"] == str((start / "data").resolve())

    monkeypatch.chdir(elsewhere)  # the same run, from another shell
    capsys.readouterr()
    assert run(["pretrain", "--resume", "auto", "--out", str(run_dir)]) == 0
    assert run(["report", str(run_dir), "--device", "cpu", "--queries", "2"]) == 0
    assert "no nearest neighbours" not in capsys.readouterr().err
    assert (run_dir / "neighbours.png").is_file()

    (tmp_path / "digits").rename(tmp_path / "moved")  # the folder is gone: say so, and where
    assert run(["pretrain", "--resume", "auto", "--out", str(run_dir), "--epochs", "3"]) == 1
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "Traceback" not in err
    assert f"{run_dir / 'checkpoint_last.pt'} names the dataset folder" in err
    assert str(tmp_path / "digits") in err and "no longer exists" in err
    assert run(["report", str(run_dir), "--device", "cpu", "--queries", "2"]) == 0
    err = capsys.readouterr().err
    assert f"{run_dir / 'config.json'} names the dataset folder" in err


def test_pretraining_records_the_images_of_its_limit_sample(tiny, tmp_path) -> None:
    write_folder(tmp_path / "photos", ["a", "b", "c"], 8, size=8)  # sorted: 8 a, 8 b, 8 c
    cfg = PretrainConfig(
        dataset=str(tmp_path / "photos"), limit=12, image_size=8, stem="cifar", batch_size=6,
        epochs=1, workers=0, device="cpu", precision="fp32", out=tmp_path / "run",
    )  # fmt: skip
    summary = train.run_pretrain(cfg)
    listed = (tmp_path / "run" / "images.txt").read_text().splitlines()
    assert Counter(Path(line).parent.name for line in listed) == {"a": 4, "b": 4, "c": 4}
    assert summary["images"].startswith("12 of 24: a class-stratified sample")


def test_the_knn_monitor_runs_on_a_labelled_folder(tiny, tmp_path) -> None:
    write_folder(tmp_path / "photos", ["a", "b", "c"], 10, size=8)
    cfg = PretrainConfig(
        dataset=str(tmp_path / "photos"), image_size=8, stem="cifar", batch_size=10, epochs=2,
        workers=0, device="cpu", precision="fp32", out=tmp_path / "run", knn_every=1,
    )  # fmt: skip
    summary = train.run_pretrain(cfg)
    records = [json.loads(line) for line in (tmp_path / "run" / "metrics.jsonl").open()]
    knn = [r for r in records if "knn_accuracy" in r]
    assert [r["epoch"] for r in knn] == [1, 2] and 0 <= summary["knn_accuracy"] <= 1
    assert "20% of each class held out of the bank as queries" in summary["knn_monitor"]
    bank, queries = monitor.knn_datasets(cfg, train.build_trainer(cfg).data.images)
    assert Counter(labels_of(queries)) == {0: 2, 1: 2, 2: 2}  # held out from every class
    assert Counter(labels_of(bank)) == {0: 8, 1: 8, 2: 8}
    assert set(bank.indices).isdisjoint(queries.indices)
    assert any("linear-eval" in line for line in summary["next_commands"])


@pytest.mark.parametrize("labelled", [False, True])
def test_knn_every_on_a_folder_without_classes_is_refused(labelled, tmp_path, capsys) -> None:
    write_folder(tmp_path / "photos", ["a", "b"] if labelled else None, 12, size=8)
    options = ["--dataset", str(tmp_path / "photos"), "--out", str(tmp_path / "run"), *SMALL]
    code = run(["pretrain", *options, "--knn-every", "1", "--max-steps", "1", "--epochs", "2"])
    err = capsys.readouterr().err.strip()
    if labelled:
        assert code == 0
        return
    assert code == 2 and len(err.splitlines()) == 1
    assert err.startswith("error: --knn-every 1: ") and "no class subfolders" in err
    assert not (tmp_path / "run").exists()


def test_a_resume_flag_that_disagrees_with_the_run_exits_2(tiny, tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    flags = ["--dataset", "shapes", "--limit", "24", "--epochs", "2", "--out", str(run_dir)]
    assert run(["pretrain", *flags, *SMALL, "--max-steps", "1"]) == 0
    before = sorted(p.name for p in run_dir.iterdir())
    capsys.readouterr()
    assert run(["pretrain", "--resume", "auto", "--out", str(run_dir), "--batch-size", "6"]) == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "--batch-size 12 (given: 6)" in err
    assert sorted(p.name for p in run_dir.iterdir()) == before
