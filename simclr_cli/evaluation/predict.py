"""``simclr predict``: the class of each image from a classifier checkpoint (``simclr finetune``).

Images are read as the classifier was evaluated: resized and centre-cropped to its input size
(uint8), scaled and normalised with its statistics on the device, the logits turned into
probabilities with a softmax. An image that cannot be read is listed with the reason; the
others are still classified.
"""

from __future__ import annotations

import csv
import io
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import Dataset

from simclr_cli.config import PredictConfig
from simclr_cli.console import get_console, phase
from simclr_cli.data.facts import IMAGE_EXTENSIONS, find_images
from simclr_cli.data.workers import worker_batches
from simclr_cli.errors import DatasetError, OutputExistsError, plural
from simclr_cli.evaluation.inference import autocast_dtype, build_loader, resolve_device
from simclr_cli.evaluation.tuning import predict_logits
from simclr_cli.method.preprocess import to_rgb, to_uint8_transform
from simclr_cli.storage import fileio
from simclr_cli.storage.classifier import load_classifier, load_classifier_payload

CSV_COLUMNS = ("path", "class", "probability", "top_k", "error")
# Rows the terminal table shows when the CSV holds them all.
TABLE_ROWS = 20


def collect_images(paths: Sequence[Path]) -> list[Path]:
    """Every image the arguments name: files as given, folders searched recursively.

    Raises:
        DatasetError: a folder holds no image file.
    """
    found: list[Path] = []
    for path in (Path(p).expanduser() for p in paths):
        if not path.is_dir():
            found.append(path)
            continue
        images = find_images(path)
        if not images:
            kinds = "/".join(e.lstrip(".") for e in IMAGE_EXTENSIONS)
            raise DatasetError(
                f"{path} holds no images ({kinds}); give image files or a folder of images"
            )
        found += images
    return list(dict.fromkeys(found))  # a file named twice is classified once


class ImagePaths(Dataset):
    """``(uint8 (3, S, S) crop, error)`` of each path; an unreadable file gives zeros and the
    reason instead of stopping the loader."""

    def __init__(self, paths: Sequence[Path], image_size: int) -> None:
        self.paths, self.size = list(paths), image_size
        self.transform = to_uint8_transform(image_size)

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[Tensor, str]:
        from PIL import Image

        try:
            with Image.open(self.paths[index]) as image:
                return self.transform(to_rgb(image)), ""
        except Exception as error:  # PIL raises many types for files it cannot read
            reason = " ".join(str(error).split()) or type(error).__name__
            return torch.zeros(3, self.size, self.size, dtype=torch.uint8), reason


def top_k(probabilities: Tensor, classes: Sequence[str], k: int) -> list[list[tuple[str, float]]]:
    """The ``k`` most probable classes of each row, best first: ``[(name, probability), ...]``."""
    values, indices = probabilities.topk(min(k, probabilities.shape[1]), dim=1)
    return [
        [(classes[i], p) for i, p in zip(row_i, row_p, strict=True)]
        for row_i, row_p in zip(indices.tolist(), values.tolist(), strict=True)
    ]


def run_predict(cfg: PredictConfig) -> dict[str, Any]:
    """``simclr predict``: classify images, print a table, write the CSV with ``--out``.

    Returns:
        A summary: images, how many were classified and unreadable, the CSV.

    Raises:
        OutputExistsError, DatasetError, CheckpointError: before any output is written.
    """
    from simclr_cli.storage.hub import resolve_checkpoint

    out = None if cfg.out is None else Path(cfg.out).expanduser()
    if out is not None and out.exists() and not cfg.overwrite:
        raise OutputExistsError(f"{out} already exists; pass --overwrite or choose another --out")
    paths = collect_images(cfg.images)
    path = resolve_checkpoint(cfg.checkpoint, cfg.cache_dir)
    payload = load_classifier_payload(path)
    model = load_classifier(payload)
    device = resolve_device(cfg.resolved_device)
    model = model.to(device, memory_format=torch.channels_last)
    size = int(payload["model"].get("image_size") or 224)
    phase(f"classifying {plural(len(paths), 'image')} ({size} px, {device.type})")
    rows = classify(model, ImagePaths(paths, size), payload["classes"], cfg, device)
    if out is not None:
        fileio.write_text_atomic(out, predictions_csv(rows))
    print_predictions(rows, out)
    bad = [row for row in rows if row["error"]]
    for row in bad:
        line = f"unreadable: {row['path']} ({row['error']})"
        get_console().print(line, markup=False, highlight=False, soft_wrap=True)
    return {
        "images": len(rows),
        "classified": len(rows) - len(bad),
        "unreadable": len(bad),
        "checkpoint": str(path),
        **({"csv": str(out)} if out is not None else {}),
    }


def classify(
    model: Any, images: ImagePaths, classes: Sequence[str], cfg: PredictConfig, device: Any
) -> list[dict[str, Any]]:
    """One row per image: its path, class, probability and top-k (or the read error)."""
    dtype = autocast_dtype(device, cfg.precision)
    loader = build_loader(images, cfg.batch_size, device, cfg.workers)
    rows: list[dict[str, Any]] = []
    with worker_batches(loader) as batches:  # workers end with the pass, also on an error
        for batch, errors in batches:
            probabilities = predict_logits(
                model, batch.to(device, non_blocking=True), dtype
            ).softmax(1)
            for best, error in zip(top_k(probabilities, classes, cfg.top_k), errors, strict=True):
                path = str(images.paths[len(rows)])
                if error:
                    rows.append({"path": path, "class": "", "probability": None, "top_k": [],
                                 "error": error})  # fmt: skip
                else:
                    rows.append({"path": path, "class": best[0][0], "probability": best[0][1],
                                 "top_k": best, "error": ""})  # fmt: skip
    return rows


def predictions_csv(rows: Sequence[dict[str, Any]]) -> str:
    """``path,class,probability,top_k,error``; top-k as ``name:probability`` joined by ``|``."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(CSV_COLUMNS)
    for row in rows:
        probability = "" if row["probability"] is None else f"{row['probability']:.6f}"
        ranked = "|".join(f"{name}:{p:.6f}" for name, p in row["top_k"])
        writer.writerow([row["path"], row["class"], probability, ranked, row["error"]])
    return buffer.getvalue()


def print_predictions(rows: Sequence[dict[str, Any]], out: Path | None) -> None:
    """The predictions as a table on stdout (the first :data:`TABLE_ROWS` when the CSV has
    them all)."""
    from rich.table import Table

    from simclr_cli.console import stdout_console

    shown = rows if out is None else rows[:TABLE_ROWS]
    table = Table(title=f"Predictions ({plural(len(rows), 'image')})")
    for column in ("image", "class", "probability", "next most probable"):
        justify = "right" if column == "probability" else "left"
        table.add_column(column, justify=justify, overflow="fold")  # paths are never cut
    for row in shown:
        if row["error"]:
            table.add_row(row["path"], "[red]unreadable", "", row["error"])
            continue
        ranked = ", ".join(f"{name} {100 * p:.1f}%" for name, p in row["top_k"][1:])
        table.add_row(row["path"], row["class"], f"{100 * row['probability']:.1f}%", ranked)
    console = stdout_console()
    console.print(table)
    if len(shown) < len(rows):
        console.print(f"... and {len(rows) - len(shown)} more in {out}")
