"""``simclr linear-eval``: linear and kNN accuracy of a frozen SimCLR encoder, and its output.

The features of the train and test splits are extracted once
(:mod:`simclr_cli.evaluation.inference`), a
linear probe is fitted on them (:mod:`simclr_cli.evaluation.probe`) and the kNN vote is taken
(:mod:`simclr_cli.evaluation.metrics`); optional baselines (a random encoder, raw pixels) go
through the same
probe and vote. The results are written as ``linear_eval.json`` and ``confusion_matrix.csv`` and
printed as a per-class table.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import Dataset

from simclr_cli import allocator
from simclr_cli.data.sampling import image_names
from simclr_cli.data.workers import worker_batches
from simclr_cli.errors import DatasetError, UsageError
from simclr_cli.evaluation.inference import (
    build_loader,
    checkpoint_image_size,
    checkpoint_transform,
    class_names,
    extract_features,
    load_frozen_model,
    report_skipped,
    resolve_device,
)
from simclr_cli.evaluation.metrics import (
    KNN_TEMPERATURE,
    classification_metrics,
    confusion_csv,
    knn_accuracy,
    knn_k_for,
    topk_accuracy,
)
from simclr_cli.evaluation.probe import augmented_transform, probe_augmented, probe_features
from simclr_cli.storage import fileio, runlock

# linear-eval warns below this many images per class in either split (``--limit 5``).
FEW_IMAGES_PER_CLASS = 10
# What linear-eval writes: replaced only with --overwrite (the rule `features` follows too).
LINEAR_EVAL_OUTPUTS = ("linear_eval.json", "confusion_matrix.csv")


# ----------------------------------------------------------------------------------------------
# the two protocols on a frozen model


def evaluate_frozen(
    model: nn.Module,
    train: Dataset,
    test: Dataset,
    num_classes: int,
    device: torch.device,
    protocol: str = "features",
    solver: str = "lbfgs",
    batch_size: int = 512,
    epochs: int = 100,
    train_views: Dataset | None = None,
    precision: str = "auto",
    workers: int = 0,
    seed: int = 0,
    knn_k: int | None = None,
    knn_temperature: float = KNN_TEMPERATURE,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Linear and kNN evaluation of a frozen model on a labelled train/test pair.

    The model's weights and buffers are not modified (eval mode, no gradient into it).

    Args:
        train, test: labelled datasets with the test-time transform (centre crop).
        protocol: ``"features"`` (logistic regression on extracted features) or ``"augment"``
            (the paper's SGD on re-augmented crops; needs ``train_views``).
        knn_k: neighbours of the kNN vote; ``None`` chooses it from the train labels
            (:func:`~simclr_cli.evaluation.metrics.knn_k_for`).

    Returns:
        Metrics over the WHOLE test split: top1, top5, per_class, confusion_matrix, knn_top1,
        plus protocol details and split sizes.
    """
    from simclr_cli.console import phase

    extract = {"device": device, "precision": precision, "workers": workers}
    train_h, train_y = extract_features(
        model, train, batch_size, **extract, description="extracting features (train)"
    )
    test_h, test_y = extract_features(
        model, test, batch_size, **extract, description="extracting features (test)"
    )
    phase(f"fitting the linear classifier ({protocol} protocol)")
    if protocol == "features":
        logits, details = probe_features(
            train_h.to(device), train_y.to(device), test_h, num_classes, seed,
            solver=solver, epochs=epochs,
        )  # fmt: skip
    elif protocol == "augment" and train_views is not None:
        logits, details = probe_augmented(
            model, train_views, train_h, test_h, num_classes, epochs, batch_size, device,
            precision, workers, seed,
        )  # fmt: skip
    else:
        raise UsageError("--protocol", protocol, "use features or augment")
    metrics = classification_metrics(logits, test_y, num_classes, class_names)
    knn_k = knn_k_for(train_y, knn_k)
    metrics["knn_top1"] = knn_accuracy(
        train_h.to(device), train_y, test_h, test_y, knn_k, knn_temperature, num_classes
    )
    return {
        **metrics,
        "protocol": protocol,
        **({"solver": solver} if protocol == "features" else {}),
        **details,
        "knn": {"k": knn_k, "temperature": knn_temperature},
        "train_images": int(train_h.shape[0]),
        "test_images": int(test_h.shape[0]),
        "feature_dim": int(train_h.shape[1]),
        "num_classes": num_classes,
    }


# ----------------------------------------------------------------------------------------------
# baselines: what a pretrained encoder has to beat

# The raw-pixel baseline pools images larger than this side down to it, so its logistic
# regression stays small (3 x 32 x 32 = 3,072 inputs) whatever the image size.
PIXEL_BASELINE_SIZE = 32


def random_encoder(spec: dict[str, Any], seed: int) -> nn.Module:
    """The random-encoder baseline: the checkpoint's architecture and stem with torchvision's
    default initialisation (never zero-initialised residual branches, which make every block
    an identity and, with the ImageNet stem at 32 px, ``h`` a function of one corner), frozen,
    seeded without touching the caller's random stream."""
    from simclr_cli.method.model import build_simclr

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_simclr(spec, zero_init_residual=False)
    return model.eval().requires_grad_(False)


def pixel_features(dataset: Dataset, batch_size: int, workers: int = 0) -> tuple[Tensor, Tensor]:
    """Raw-pixel features: the test-time uint8 crops in [0, 1], average-pooled to at most
    :data:`PIXEL_BASELINE_SIZE` px, flattened to (N, 3 * S * S) float32 (labels (N,) int64)."""
    loader = build_loader(dataset, batch_size, torch.device("cpu"), workers)
    features, labels = [], []
    with worker_batches(loader) as batches:
        for images, targets in batches:
            x = images.float().div_(255.0)  # (B, 3, S, S)
            if x.shape[-1] > PIXEL_BASELINE_SIZE:
                x = F.adaptive_avg_pool2d(x, PIXEL_BASELINE_SIZE)
            features.append(x.flatten(1))
            labels.append(torch.as_tensor(targets, dtype=torch.int64))
    return torch.cat(features), torch.cat(labels)


def pixel_baseline(
    train: Dataset,
    test: Dataset,
    num_classes: int,
    knn_k: int | None = None,
    batch_size: int = 512,
    workers: int = 0,
    solver: str = "lbfgs",
    seed: int = 0,
    knn_temperature: float = KNN_TEMPERATURE,
) -> dict[str, Any]:
    """Top-1, top-5 and kNN accuracy (and the probe's weight decay and k) of the linear probe
    and the kNN vote on raw pixels (:func:`pixel_features`)."""
    train_x, train_y = pixel_features(train, batch_size, workers)
    test_x, test_y = pixel_features(test, batch_size, workers)
    logits, details = probe_features(train_x, train_y, test_x, num_classes, seed, solver=solver)
    top = topk_accuracy(logits, test_y, ks=(1, 5))
    k = knn_k_for(train_y, knn_k)
    knn = knn_accuracy(train_x, train_y, test_x, test_y, k, knn_temperature, num_classes)
    return {
        "top1": top[1], "top5": top[5], "knn_top1": knn, "knn_k": k,
        "weight_decay": details["weight_decay"],
    }  # fmt: skip


def _best_random_baseline(
    spec: dict[str, Any],
    train: Dataset,
    test: Dataset,
    num_classes: int,
    device: torch.device,
    cfg: Any,
    knn_k: int,
) -> dict[str, Any]:
    """The random encoder scored on the checkpoint's normalised inputs and on plain [0, 1]
    inputs, keeping the better linear top-1: a frozen random network is sensitive to the input
    scale (on ``shapes`` at 32 px, 44% against 51%), and the baseline must not be weakened by
    the normalisation the checkpoint happened to be trained with."""
    inputs = {"checkpoint normalisation": spec}
    if spec.get("mean") is not None:
        inputs["[0, 1]"] = {**spec, "mean": None, "std": None}
    best: dict[str, Any] | None = None
    for name, variant in inputs.items():
        model = random_encoder(variant, cfg.seed).to(device, memory_format=torch.channels_last)
        metrics = evaluate_frozen(
            model, train, test, num_classes, device, "features", cfg.solver, cfg.batch_size,
            precision=cfg.resolved_precision, workers=cfg.workers, seed=cfg.seed, knn_k=knn_k,
            knn_temperature=cfg.knn_temperature,
        )  # fmt: skip
        scores = {k: metrics[k] for k in ("top1", "top5", "knn_top1", "weight_decay")}
        scores["inputs"] = name
        if best is None or scores["top1"] > best["top1"]:
            best = scores
    assert best is not None
    return best


def evaluate_baselines(
    cfg: Any,
    spec: dict[str, Any],
    splits: tuple[Dataset, Dataset],
    num_classes: int,
    device: torch.device,
    knn_k: int,
) -> dict[str, dict[str, Any]]:
    """Top-1, top-5 and kNN accuracy of each baseline in ``cfg.baseline`` (``random``,
    ``pixels``), with the same splits, probe, seed and k as the checkpoint's own evaluation."""
    train, test = splits
    results: dict[str, dict[str, Any]] = {}
    if "random" in cfg.baseline:
        results["random"] = _best_random_baseline(
            spec, train, test, num_classes, device, cfg, knn_k
        )
    if "pixels" in cfg.baseline:
        results["pixels"] = pixel_baseline(
            train, test, num_classes, knn_k, cfg.batch_size, cfg.workers, cfg.solver, cfg.seed,
            cfg.knn_temperature,
        )  # fmt: skip
    return results


# ----------------------------------------------------------------------------------------------
# `simclr linear-eval`


def linear_eval_splits(cfg: Any, transform: Callable[[Any], Tensor]) -> tuple[Dataset, Dataset]:
    """The (train, test) datasets a LinearEvalConfig names, both with ``transform``.

    Folders: ``--train-dir``/``--test-dir``, a folder ``--dataset`` with ``--test-dir``, or one
    folder split by ``--val-split`` (stratified, fixed ``--seed``). ``--limit`` keeps a
    class-stratified sample of each split, seeded by ``--seed``.
    """
    from simclr_cli.data import datasets as data

    if cfg.dataset_kind != "folder":
        kw = {"transform": transform, "limit": cfg.limit, "seed": cfg.seed}
        return (
            data.build_dataset(cfg.dataset, "train", cfg.data_dir, **kw),
            data.build_dataset(cfg.dataset, "test", cfg.data_dir, **kw),
        )
    train = data.ImageFolderDataset(cfg.train_dir or cfg.dataset, transform)
    if cfg.test_dir is not None:
        test = data.ImageFolderDataset(cfg.test_dir, transform)
        if test.classes != train.classes:
            raise DatasetError(
                f"class subfolders of {cfg.test_dir} ({len(test.classes)}) differ from those of "
                f"the training folder ({len(train.classes)}); use the same class names in both"
            )
    else:
        _require_labels(train, str(cfg.train_dir or cfg.dataset))
        train, test = data.train_test_split(train, cfg.resolved_val_split, seed=cfg.seed)
    return data.limit_dataset(train, cfg.limit, cfg.seed), data.limit_dataset(
        test, cfg.limit, cfg.seed
    )


def _require_labels(dataset: Dataset, name: str) -> None:
    from simclr_cli.data.datasets import labels_of

    if any(label < 0 for label in labels_of(dataset)):
        raise DatasetError(
            f"{name} has unlabelled images; linear evaluation needs labels: put each class "
            "in its own subfolder (or use `simclr features` for unlabelled images)"
        )


def small_data_warning(train_images: int, test_images: int, num_classes: int) -> str | None:
    """A warning when accuracies on so few images (or top-5 of so few classes) mean little."""
    notes = []
    if min(train_images, test_images) < FEW_IMAGES_PER_CLASS * num_classes:
        notes.append(
            f"{train_images} train / {test_images} test images for {num_classes} classes are "
            "too few for top-1, top-5 or kNN accuracy to mean much (raise or drop --limit)"
        )
    if num_classes <= 5:
        notes.append(f"top-5 of {num_classes} classes is always 100%")
    return "; ".join(notes) or None


def run_linear_eval(cfg: Any) -> dict[str, Any]:
    """``simclr linear-eval``: frozen encoder, features once, linear probe, kNN, report.

    Args:
        cfg: a :class:`simclr_cli.config.LinearEvalConfig`.

    Returns:
        A summary (accuracies, split sizes, where the results were written).

    Raises:
        CheckpointError, DatasetError, UsageError: with one-line messages.
        OutputBusyError: another process is writing results into the same folder.
    """
    from simclr_cli.console import get_console, phase
    from simclr_cli.data.datasets import labels_of

    start = time.perf_counter()
    if cfg.out is not None:  # before the checkpoint is read (or downloaded)
        fileio.refuse_overwrite(cfg.out, LINEAR_EVAL_OUTPUTS, cfg.overwrite)
    phase(f"loading the checkpoint {cfg.checkpoint}")
    model, payload, path = load_frozen_model(cfg.checkpoint, cfg.cache_dir)
    out_dir = linear_eval_dir(cfg.out, path, cfg.cache_dir)
    # One writer of these results at a time (two would mix their files), checked again inside.
    with runlock.hold_output(out_dir / "linear_eval.json", "simclr linear-eval"):
        fileio.refuse_overwrite(out_dir, LINEAR_EVAL_OUTPUTS, cfg.overwrite)
        device = resolve_device(cfg.resolved_device)
        allocator.configure_for(device.type)
        transform = checkpoint_transform(payload, cfg.image_size, cfg.dataset_kind)
        name = str(cfg.dataset or cfg.train_dir)
        phase(f"loading data ({name})")
        train, test = linear_eval_splits(cfg, transform)
        skipped = report_skipped(train, test)
        _require_labels(train, f"{name} (train)")
        _require_labels(test, f"{name} (test)")
        classes = class_names(train)
        num_classes = len(classes) if classes else max(labels_of(train) + labels_of(test)) + 1
        if num_classes < 2:
            raise DatasetError(
                f"{name} has one class ({classes[0] if classes else 0}); linear evaluation needs "
                "two or more: put each class in its own subfolder"
            )
        warning = small_data_warning(len(train), len(test), num_classes)  # type: ignore[arg-type]
        if warning:
            get_console().print(f"[yellow]warning: {warning}")
        views = None
        if cfg.protocol == "augment":
            spec = payload["model"]
            size = checkpoint_image_size(payload, cfg.image_size, cfg.dataset_kind)
            views, _ = linear_eval_splits(
                cfg, augmented_transform(size, spec.get("mean"), spec.get("std"))
            )
        model = model.to(device, memory_format=torch.channels_last)
        result = evaluate_frozen(
            model, train, test, num_classes, device, cfg.protocol, cfg.solver,
            cfg.batch_size, cfg.resolved_epochs, views, cfg.resolved_precision, cfg.workers,
            cfg.seed, cfg.knn_k, cfg.knn_temperature, classes,
        )  # fmt: skip
        if cfg.baseline:
            phase(f"evaluating the baselines ({', '.join(cfg.baseline)})")
            result["baselines"] = evaluate_baselines(
                cfg, payload["model"], (train, test), num_classes, device, result["knn"]["k"]
            )
        result = {"checkpoint": str(path), "dataset": name, **result, "classes": classes}
        result.update(skipped_files=skipped, **({"warning": warning} if warning else {}))
        if cfg.limit is not None:  # which images the --limit samples kept
            result["images"] = {"train": image_names(train), "test": image_names(test)}
        result["time_s"] = round(time.perf_counter() - start, 3)
        files = write_linear_eval(result, out_dir)
        print_linear_eval(result)
        return linear_eval_summary(result, files)


def linear_eval_dir(out: Path | None, checkpoint_path: Path, cache_dir: Path) -> Path:
    """``--out``, else next to the checkpoint; never inside the checkpoint cache, where results
    of different releases would overwrite each other (``./linear_eval/<name>`` instead)."""
    if out is not None:
        return Path(out)
    cache = Path(cache_dir).expanduser().resolve()
    if checkpoint_path.resolve().is_relative_to(cache):
        return Path("linear_eval") / checkpoint_path.stem
    return checkpoint_path.parent


def linear_eval_summary(result: dict[str, Any], files: dict[str, Path]) -> dict[str, Any]:
    """The few numbers the CLI prints after the run; everything else is in the JSON."""
    keys = ("top1", "top5", "knn_top1", "protocol", "weight_decay", "train_images", "test_images")
    summary = {k: result[k] for k in keys if k in result}
    for kind, metrics in result.get("baselines", {}).items():
        summary[f"{kind}_top1"] = metrics["top1"]
        summary[f"{kind}_knn_top1"] = metrics["knn_top1"]
    if result.get("baselines"):
        summary["verdict"] = baseline_verdict(result)
    return {**summary, "time_s": result["time_s"], **{k: str(v) for k, v in files.items()}}


def write_linear_eval(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``linear_eval.json`` and ``confusion_matrix.csv`` (rows true, columns predicted)."""
    names = [row["class"] for row in result["per_class"]]
    return {
        "results": fileio.write_text_atomic(
            out_dir / "linear_eval.json", json.dumps(result, indent=2)
        ),
        "confusion": fileio.write_text_atomic(
            out_dir / "confusion_matrix.csv", confusion_csv(names, result["confusion_matrix"])
        ),
    }


def print_linear_eval(result: dict[str, Any]) -> None:
    """Per-class accuracy and the headline numbers as a rich table on stdout (rank 0)."""
    from rich.table import Table

    from simclr_cli.console import stdout_console

    table = Table(title=f"Linear evaluation ({result['protocol']}) of {result['checkpoint']}")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("test images", justify="right")
    add_per_class_rows(table, result)
    knn = result["knn"]
    table.add_row(
        f"kNN (k={knn['k']}, T={knn['temperature']})", f"{100 * result['knn_top1']:.2f}%", ""
    )
    stdout_console().print(table)  # with the summary, so `> results.txt` keeps both
    if result.get("baselines"):
        stdout_console().print(baseline_table(result))


BASELINE_NAMES = {"random": "random encoder (default init)", "pixels": "raw pixels"}


def baseline_verdict(result: dict[str, Any]) -> str:
    """One line: linear / kNN top-1 of the checkpoint, then of each baseline with the gap."""

    def pct(m: dict[str, Any]) -> str:
        return f"{100 * m['top1']:.1f}% / {100 * m['knn_top1']:.1f}%"

    parts = [f"this checkpoint {pct(result)} (linear / kNN top-1)"]
    for kind, m in result["baselines"].items():
        gap = [100 * (result[k] - m[k]) for k in ("top1", "knn_top1")]
        parts.append(f"{BASELINE_NAMES[kind]} {pct(m)} ({gap[0]:+.1f} / {gap[1]:+.1f} points)")
    return "; ".join(parts)


def baseline_table(result: dict[str, Any]) -> Any:
    """The checkpoint's accuracies beside those of the baselines, one row each."""
    from rich.table import Table

    table = Table(title="Against baselines (same splits, probe and kNN)")
    for column in ("encoder", "linear top-1", "top-5", f"kNN (k={result['knn']['k']})"):
        table.add_column(column, justify="left" if column == "encoder" else "right")
    rows = [
        ("this checkpoint", result),
        *((BASELINE_NAMES[k], v) for k, v in result["baselines"].items()),
    ]
    for name, m in rows:
        table.add_row(name, *(f"{100 * m[k]:.2f}%" for k in ("top1", "top5", "knn_top1")))
    return table


def add_per_class_rows(table: Any, result: dict[str, Any]) -> None:
    """Rows of a (class, accuracy, test images) table: each class, then top-1 and top-5."""
    for row in result["per_class"]:
        acc = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f}%"
        table.add_row(row["class"], acc, str(row["support"]))
    table.add_section()
    table.add_row("[bold]top-1", f"[bold]{100 * result['top1']:.2f}%", str(result["test_images"]))
    table.add_row("top-5", f"{100 * result['top5']:.2f}%", str(result["test_images"]))
