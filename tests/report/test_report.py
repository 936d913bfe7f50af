"""Tests of ``simclr report``: the PNGs decode and show something, the neighbours shown are the
brute-force cosine ones, the page is self-contained, and degraded run folders still report."""

from __future__ import annotations

import base64
import io
import json
import re
import shutil
import sys
from pathlib import Path

import numpy as np
import pytest
from eval_fixtures import save_native_checkpoint, write_folder
from PIL import Image

from simclr_cli.cli import run
from simclr_cli.config import FeaturesConfig, ReportConfig
from simclr_cli.data.shapes import SHAPE_CLASSES
from simclr_cli.report import neighbours as rr
from simclr_cli.report import run_report

pytest.importorskip("matplotlib")  # the `plots` extra; CI installs it

PNGS = ["curves.png", "confusion.png", "per_class.png", "neighbours.png", "embedding.png"]


def metrics_lines(steps_per_epoch: int = 4, resume_at: int = 6) -> list[str]:
    records = []
    for step in range(1, 13):
        record = {"step": step, "epoch": round(step / steps_per_epoch, 4), "loss": 5 - 0.1 * step}
        record.update(lr=1e-3 * min(1, step / 4), images_per_s=100.0 + step, time=1000.0 + step)
        records.append(record)
        if step % steps_per_epoch == 0:
            records.append({"step": step, "epoch": step // steps_per_epoch,
                            "knn_accuracy": 0.1 + 0.02 * step, "time": 1000.0 + step})  # fmt: skip
        if step == resume_at:
            records.append({"step": step, "epoch": 1.5, "resumed_from": "ck.pt", "time": 2000.0})
    return [json.dumps(r) for r in records]


def linear_eval_result() -> dict:
    rng = np.random.default_rng(0)
    matrix = rng.integers(0, 9, (10, 10)) + np.diag(rng.integers(10, 30, 10))
    per_class = [
        {"class": name, "accuracy": float(matrix[i, i] / matrix[i].sum()),
         "support": int(matrix[i].sum())}
        for i, name in enumerate(SHAPE_CLASSES)
    ]  # fmt: skip
    top1 = float(np.trace(matrix) / matrix.sum())
    return {"dataset": "shapes", "top1": top1, "top5": 0.9, "knn_top1": 0.3,
            "test_images": int(matrix.sum()), "confusion_matrix": matrix.tolist(),
            "per_class": per_class}  # fmt: skip


def make_run(root: Path, checkpoint: Path, dataset: str = "shapes", labelled_eval: bool = True):
    """A run folder as simclr pretrain (and linear-eval) leave it, built directly."""
    root.mkdir(parents=True)
    shutil.copy(checkpoint, root / "checkpoint_last.pt")
    config = {"dataset": dataset, "epochs": 3, "batch_size": 16, "lr": None,
              "resolved": {"resolved_image_size": 32, "resolved_lr": 0.001}}  # fmt: skip
    (root / "config.json").write_text(json.dumps(config))
    (root / "metrics.jsonl").write_text("\n".join(metrics_lines()) + "\n")
    if labelled_eval:
        (root / "linear_eval.json").write_text(json.dumps(linear_eval_result()))
    return root


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory: pytest.TempPathFactory) -> Path:
    path = tmp_path_factory.mktemp("report-ck") / "ck.pt"
    save_native_checkpoint(path, stem="imagenet", seed=3)
    return path


def report_config(run_dir: Path, **options) -> ReportConfig:
    defaults = {"max_images": 60, "queries": 4, "device": "cpu", "batch_size": 32}
    return ReportConfig(run_dir=run_dir, **{**defaults, **options})


def assert_png_shows_something(path: Path) -> None:
    with Image.open(path) as image:
        image.load()
        pixels = np.asarray(image.convert("RGB"), dtype=np.float32)
    assert pixels.shape[0] > 150 and pixels.shape[1] > 150
    assert pixels.std() > 10, f"{path.name} is blank"
    assert (pixels < 128).mean() > 0.005, f"{path.name} has almost nothing drawn"


def assert_self_contained(page: str, names: list[str]) -> None:
    sources = re.findall(r"(?:src|href)\s*=\s*[\"']?([^\"' >]*)", page)
    assert sources and all(s.startswith("data:image/png;base64,") for s in sources)
    assert "://" not in page and "<link" not in page and "<script" not in page
    for name in names:
        assert name in page, f"the page does not name {name}"


@pytest.fixture(scope="module")
def full_report(checkpoint, tmp_path_factory) -> Path:
    root = make_run(tmp_path_factory.mktemp("report") / "run", checkpoint)
    run_report(report_config(root))
    return root


def test_every_png_decodes_and_is_not_blank(full_report) -> None:
    for name in PNGS:
        assert_png_shows_something(full_report / name)


def test_the_page_embeds_every_image_and_has_no_external_url(full_report) -> None:
    page = (full_report / "report.html").read_text()
    assert_self_contained(page, PNGS)
    embedded = re.findall(r'src="data:image/png;base64,([^"]+)"', page)
    assert sorted(base64.b64decode(e) for e in embedded) == sorted(
        (full_report / name).read_bytes() for name in PNGS
    )
    for text in ("linear top-1", "kNN", "Configuration", "resolved.lr", "resumes"):
        assert text in page.replace("<wbr>", "")  # break opportunities in long keys
    assert "resolved.resolved_" not in page  # a key does not repeat its group's name
    assert not list(full_report.glob(".report-*")), "the staging folder was left behind"


def brute_force_neighbours(queries: np.ndarray, gallery: np.ndarray, k: int, skip=None):
    """Cosine similarity by explicit loops, the slow obvious way."""
    result = []
    for qi, q in enumerate(queries):
        scores = []
        for gi, g in enumerate(gallery):
            if skip is not None and skip[qi] == gi:
                continue
            scores.append((float(q @ g / (np.linalg.norm(q) * np.linalg.norm(g))), gi))
        result.append([gi for _, gi in sorted(scores, key=lambda s: -s[0])[:k]])
    return result


def export_features(checkpoint: Path, out: Path, split: str | None, limit, dataset="shapes"):
    from simclr_cli.evaluation.features import export_features as export

    which = {} if split is None else {"split": split}  # a folder has no splits
    export(FeaturesConfig(checkpoint=str(checkpoint), out=out, dataset=dataset, limit=limit,
                          device="cpu", workers=0, batch_size=32, **which))  # fmt: skip


def test_neighbours_shown_are_the_brute_force_cosine_ones(full_report, checkpoint, tmp_path):
    feats = tmp_path / "feats"
    export_features(checkpoint, feats / "train", "train", 60)
    export_features(checkpoint, feats / "test", "test", 60)  # = --max-images of full_report
    run_dir = make_run(tmp_path / "run", checkpoint)
    run_report(report_config(run_dir, features=feats))
    shown = json.loads((run_dir / "neighbours.json").read_text())
    gallery = np.load(feats / "train" / "features.npy")
    test = np.load(feats / "test" / "features.npy")
    rows = [q["query"] for q in shown["queries"]]
    assert rows == rr.sample_queries(4, 60, seed=0) and len(set(rows)) == 4
    oracle = brute_force_neighbours(test[rows], gallery, 8)
    assert [[n["index"] for n in q["neighbours"]] for q in shown["queries"]] == oracle
    labels = np.load(feats / "train" / "labels.npy")
    for query in shown["queries"]:
        for n in query["neighbours"]:
            assert n["correct"] == (labels[n["index"]] == query["label"])
    # Computed from the checkpoint (no --features): the same images give the same neighbours.
    computed = json.loads((full_report / "neighbours.json").read_text())
    assert [q["query"] for q in computed["queries"]] == rows
    assert [[n["index"] for n in q["neighbours"]] for q in computed["queries"]] == oracle


def test_a_run_without_labels_reports_neighbours_without_verdicts(checkpoint, tmp_path, capsys):
    write_folder(tmp_path / "photos", None, 12, size=20)  # no class subfolders: unlabelled
    run_dir = make_run(tmp_path / "run", checkpoint, str(tmp_path / "photos"), labelled_eval=False)
    assert run(["report", str(run_dir), "--device", "cpu", "--queries", "3"]) == 0
    assert "note: no linear_eval.json" in capsys.readouterr().err
    shown = json.loads((run_dir / "neighbours.json").read_text())
    assert all(n["correct"] is None for q in shown["queries"] for n in q["neighbours"])
    assert all(q["query"] not in [n["index"] for n in q["neighbours"]] for q in shown["queries"])
    assert not (run_dir / "confusion.png").exists() and not (run_dir / "per_class.png").exists()
    for name in ("curves.png", "neighbours.png", "embedding.png"):
        assert_png_shows_something(run_dir / name)
    assert_self_contained((run_dir / "report.html").read_text(), ["neighbours.png"])
    # The same folder's features from simclr features: one set, queried against itself.
    feats = tmp_path / "feats"
    export_features(checkpoint, feats, None, None, dataset=str(tmp_path / "photos"))
    assert run(["report", str(run_dir), "--features", str(feats), "--queries", "3"]) == 0
    shown = json.loads((run_dir / "neighbours.json").read_text())
    rows = [q["query"] for q in shown["queries"]]
    x = np.load(feats / "features.npy")
    assert [[n["index"] for n in q["neighbours"]] for q in shown["queries"]] == (
        brute_force_neighbours(x[rows], x, 8, skip=rows)
    )
    assert_png_shows_something(run_dir / "neighbours.png")


def test_a_truncated_metrics_line_is_skipped_with_a_note(checkpoint, tmp_path, capsys) -> None:
    run_dir = make_run(tmp_path / "run", checkpoint)
    with open(run_dir / "metrics.jsonl", "a") as f:
        f.write('{"step": 13, "epoch": 3.25, "lo')  # what a kill mid-write leaves
    (run_dir / "checkpoint_last.pt").unlink()  # and no checkpoint: no neighbours
    assert run(["report", str(run_dir), "--out", str(tmp_path / "out")]) == 0
    notes = capsys.readouterr().err.splitlines()
    assert "note: metrics.jsonl: skipped 1 unreadable line(s) (line 17)" in notes
    assert any(n.startswith("note: no checkpoint_last.pt") for n in notes)
    page = (tmp_path / "out" / "report.html").read_text()
    assert "skipped 1 unreadable line(s)" in page
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "confusion.png", "curves.png", "per_class.png", "report.html"
    ]  # fmt: skip
    assert_png_shows_something(tmp_path / "out" / "curves.png")


def test_no_metrics_and_no_linear_eval_still_give_a_report(checkpoint, tmp_path, capsys):
    run_dir = make_run(tmp_path / "run", checkpoint, labelled_eval=False)
    (run_dir / "metrics.jsonl").unlink()
    assert run(["report", str(run_dir), "--device", "cpu", "--max-images", "30"]) == 0
    err = capsys.readouterr().err
    assert "note: no metrics.jsonl" in err and "note: no linear_eval.json" in err
    # Off a terminal: plain progress lines, and no blank line where a bar would be.
    assert "h of gallery batch 1/1 (100%)" in err and "" not in err.splitlines()
    assert not (run_dir / "curves.png").exists() and (run_dir / "neighbours.png").exists()
    page = (run_dir / "report.html").read_text()
    assert "no metrics.jsonl: no training curves" in page


def test_a_folder_that_is_not_a_run_is_one_line(tmp_path, capsys) -> None:
    (tmp_path / "empty").mkdir()
    assert run(["report", str(tmp_path / "empty")]) == 1
    err = capsys.readouterr().err
    assert "holds no config.json" in err and len(err.strip().splitlines()) == 1
    assert sorted(p.name for p in (tmp_path / "empty").iterdir()) == []
    assert run(["report", str(tmp_path / "missing")]) == 2
    assert "RUN_DIR" in capsys.readouterr().err


def test_a_run_file_or_an_unwritable_out_is_one_line_before_any_work(
    checkpoint, tmp_path, monkeypatch, capsys
) -> None:
    run_dir = make_run(tmp_path / "run", checkpoint)
    assert run(["report", str(run_dir / "checkpoint_last.pt")]) == 2
    err = capsys.readouterr().err.strip()
    assert err == (
        f"error: RUN_DIR: invalid value '{run_dir / 'checkpoint_last.pt'}'; that is a file; give "
        f"the run folder that holds it: simclr report {run_dir}"
    )
    blocker = tmp_path / "blocker"
    blocker.write_text("a file where the output folder would go")
    read = []
    monkeypatch.setattr("simclr_cli.report.read_run", lambda root: read.append(root))
    assert run(["report", str(run_dir), "--out", str(blocker / "report")]) == 1
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: cannot write {blocker / 'report' / 'report.html'}: ")
    assert read == [] and len(err.splitlines()) == 1  # refused before the run was read


def test_missing_matplotlib_is_one_line_naming_the_extra(checkpoint, tmp_path, monkeypatch, capsys):
    run_dir = make_run(tmp_path / "run", checkpoint)
    before = sorted(p.name for p in run_dir.iterdir())
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    assert run(["report", str(run_dir)]) == 1
    err = capsys.readouterr().err
    assert "pip install 'simclr-cli[plots]'" in err and len(err.strip().splitlines()) == 1
    assert "Traceback" not in err and sorted(p.name for p in run_dir.iterdir()) == before


def test_the_page_shows_the_baselines_of_linear_eval_json() -> None:
    from simclr_cli.report.page import _linear_eval_header

    result = {**linear_eval_result(), "top1": 0.725, "knn_top1": 0.624}
    result["baselines"] = {"random": {"top1": 0.51, "top5": 0.9, "knn_top1": 0.445}}
    header = _linear_eval_header(result)
    assert "random encoder (default init)" in header and "51.0%" in header
    assert "+21.5 / +17.9 points" in header
    assert "random encoder" not in _linear_eval_header(linear_eval_result())  # none recorded


def test_the_summary_counts_time_as_the_command_does() -> None:
    from simclr_cli.report.page import run_summary, training_windows
    from simclr_cli.report.run import RunFiles

    # Windows of 2, 3 and (after a resume at step 5) 1 steps of 16 images, at known rates.
    records = [
        {"step": 2, "loss": 4.0, "images_per_s": 32.0, "time": 100.0},  # 1 s
        {"step": 5, "loss": 3.9, "images_per_s": 48.0, "time": 101.0},  # 1 s
        {"step": 5, "epoch": 1, "knn_accuracy": 0.2, "time": 140.0},  # monitor: not training
        {"step": 5, "resumed_from": "ck.pt", "time": 900.0},
        {"step": 6, "loss": 3.8, "images_per_s": 8.0, "time": 902.0},  # 2 s
    ]
    assert training_windows(records, 16) == (96, 4.0)
    summary = run_summary(RunFiles(Path("run"), config={"batch_size": 16}, records=records))
    assert summary["training time (s)"] == 4.0
    assert summary["images/s (over the training time)"] == 24.0  # 96 images in 4 s
    assert summary["images/s (median of the logged windows)"] == 32.0
    assert summary["wall time (s, first step to last record)"] == 803.0  # 902 - (100 - 1)


def test_the_top1_line_has_no_legend_over_the_bars() -> None:
    from simclr_cli.report.plots import plot_per_class

    figure = plot_per_class([f"class {i}" for i in range(10)], [0.9] * 10, 0.9)
    (ax,) = figure.axes
    assert ax.get_legend() is None and "top-1 90.0%" in ax.get_xlabel()


def test_pca_is_the_svd_projection() -> None:
    rng = np.random.default_rng(0)
    x = rng.normal(size=(50, 6)) * np.array([5, 2, 1, 0.1, 0.1, 0.1])
    points, (first, second) = rr.pca_2d(x)
    centred = x - x.mean(0)
    _, s, vt = np.linalg.svd(centred, full_matrices=False)
    np.testing.assert_allclose(np.abs(points), np.abs(centred @ vt[:2].T), atol=1e-8)
    assert first == pytest.approx(s[0] ** 2 / (s**2).sum()) and first > second > 0


@pytest.mark.slow
def test_report_of_a_real_resumed_run(workdir, capsys) -> None:
    common = ["--dataset", "shapes", "--limit", "64", "--batch-size", "16", "--stem", "imagenet",
              "--image-size", "32", "--workers", "0", "--device", "cpu", "--log-every", "1",
              "--out", "run"]  # fmt: skip
    assert run(["pretrain", *common, "--max-steps", "2"]) == 0
    assert "next: simclr export --checkpoint" in capsys.readouterr().out
    assert run(["pretrain", *common, "--max-steps", "4", "--resume", "auto"]) == 0
    assert run(["report", "run", "--max-images", "40", "--queries", "2", "--device", "cpu"]) == 0
    records = [json.loads(line) for line in Path("run/metrics.jsonl").read_text().splitlines()]
    assert [r["step"] for r in records if "resumed_from" in r] == [2]
    page = Path("run/report.html").read_text()
    assert "dashed lines mark where the run was resumed" in page
    assert_self_contained(page, ["curves.png", "neighbours.png", "embedding.png"])
    assert ", 40 images)" in page  # bounded work: 40 gallery images, not the whole split
    with Image.open(io.BytesIO(Path("run/curves.png").read_bytes())) as image:
        assert image.size[0] >= 800
