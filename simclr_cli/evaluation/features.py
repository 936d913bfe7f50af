"""``simclr features``: embeddings of a dataset as ``.npy`` files, in dataset order.

Features are streamed batch by batch into a memory-mapped ``.npy`` file
(``numpy.lib.format.open_memmap``), so a dataset larger than RAM works. Every output is written
under a temporary name in the output folder and renamed only once it is complete, ``meta.json``
last; a failed run leaves the folder as it was.
"""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch.utils.data import ConcatDataset, Dataset, Subset

from simclr_cli import allocator
from simclr_cli.errors import DatasetError
from simclr_cli.evaluation.inference import (
    build_loader,
    checkpoint_image_size,
    checkpoint_transform,
    class_names,
    iter_features,
    load_frozen_model,
    report_skipped,
    resolve_device,
    skipped_count,
)
from simclr_cli.storage import fileio, runlock

FEATURES, LABELS, META, PATHS = "features.npy", "labels.npy", "meta.json", "paths.txt"
OUTPUTS = (FEATURES, LABELS, META, PATHS)
# Splits that "all" concatenates, in this order, per dataset kind.
ALL_SPLITS = {"stl10": ("train", "test", "unlabeled")}


def check_outputs(out: Path, overwrite: bool) -> None:
    """Refuse to replace earlier results unless ``--overwrite`` (checked before any work).

    Raises:
        OutputExistsError: one of :data:`OUTPUTS` exists in ``out`` and ``overwrite`` is off.
    """
    fileio.refuse_overwrite(out, OUTPUTS, overwrite)


def features_dataset(cfg: Any, transform: Any) -> tuple[Dataset, str, list[Path] | None]:
    """The dataset a FeaturesConfig names, with the split actually used and image paths.

    A folder is exported whole (its split is ``"all"``); ``--split all`` of a named dataset
    concatenates its splits (train, test; STL-10 also unlabeled) in that order. ``--limit`` keeps
    a class-stratified sample (seed 0), in that order.

    Returns:
        ``(dataset, split, paths)``; ``paths`` lists one file per row for image folders.
    """
    from simclr_cli.data.datasets import ImageFolderDataset, build_dataset, limit_dataset

    if cfg.dataset_kind == "folder":
        folder = ImageFolderDataset(Path(cfg.dataset).expanduser(), transform)
        paths = [p.resolve() for p in folder.paths]
        dataset: Dataset = folder
        split = "all"
    else:
        split = cfg.split
        splits = ALL_SPLITS.get(cfg.dataset_kind, ("train", "test")) if split == "all" else (split,)
        parts = [build_dataset(cfg.dataset, s, cfg.data_dir, transform) for s in splits]
        dataset = parts[0] if len(parts) == 1 else ConcatDataset(parts)
        paths = None
    dataset = limit_dataset(dataset, cfg.limit, seed=0)
    if paths is not None and isinstance(dataset, Subset):
        paths = [paths[i] for i in dataset.indices]
    return dataset, split, paths


def export_features(cfg: Any) -> dict[str, Any]:
    """Write ``features.npy``, ``labels.npy``, ``meta.json`` (and ``paths.txt`` for folders).

    Args:
        cfg: a :class:`simclr_cli.config.FeaturesConfig`.

    Returns:
        The files written, the row count and the feature width.

    Raises:
        OutputExistsError: outputs exist and ``cfg.overwrite`` is off (before any work).
        OutputBusyError: another process is writing features into ``cfg.out``.
        CheckpointError, DatasetError, UsageError: with one-line messages.
    """
    out = Path(cfg.out)
    # One writer of these files at a time (two would mix their files); the lock's folder is
    # removed again if nothing was written into it.
    with runlock.hold_output(out / FEATURES, "simclr features"):
        check_outputs(out, cfg.overwrite)
        return _export_features(cfg, out)


def _export_features(cfg: Any, out: Path) -> dict[str, Any]:
    """The body of :func:`export_features`, holding the lock of ``out``."""
    from simclr_cli.console import phase

    phase(f"loading the checkpoint {cfg.checkpoint}")
    model, payload, checkpoint_path = load_frozen_model(cfg.checkpoint, cfg.cache_dir)
    device = resolve_device(cfg.resolved_device)
    allocator.configure_for(device.type)
    transform = checkpoint_transform(payload, cfg.image_size, cfg.dataset_kind)
    phase(f"loading data ({cfg.dataset})")
    dataset, split, paths = features_dataset(cfg, transform)
    report_skipped(dataset)
    out.mkdir(parents=True, exist_ok=True)
    staged: dict[str, Path] = {}
    try:
        fileio.remove_dead_temps(out)  # of exports that were killed
        staged[FEATURES], labels = stream_features(model.to(device), dataset, cfg, device, out)
        staged[LABELS] = _stage_labels(out, labels)
        count, dim = np.load(staged[FEATURES], mmap_mode="r").shape
        if paths is not None:
            staged[PATHS] = _stage_text(out, PATHS, "".join(f"{p}\n" for p in paths))
        meta = build_meta(cfg, payload, checkpoint_path, split, count, dim, labels, paths, dataset)
        staged[META] = _stage_text(out, META, json.dumps(meta, indent=2))
        _commit(out, staged)
    finally:
        for tmp in staged.values():
            with contextlib.suppress(FileNotFoundError):
                tmp.unlink()
    written = {name.split(".")[0]: str(out / name) for name in OUTPUTS if name in staged}
    return {**written, "count": int(count), "dim": int(dim), "layer": cfg.layer}


def stream_features(
    model: torch.nn.Module, dataset: Dataset, cfg: Any, device: torch.device, out: Path
) -> tuple[Path, np.ndarray]:
    """Encode ``dataset`` batch by batch into a memory-mapped temporary ``.npy`` in ``out``.

    Returns:
        ``(temporary features path (N, D) float32, labels (N,) int64)``.
    """

    loader = build_loader(dataset, cfg.batch_size, device, cfg.workers)
    n = len(dataset)  # type: ignore[arg-type]
    tmp = _temp_path(out, FEATURES)
    labels = np.empty(n, dtype=np.int64)
    try:
        batches = iter_features(model, loader, device, cfg.layer, cfg.resolved_precision)
        with fileio.write_errors_of(out / FEATURES), contextlib.closing(batches):
            rows = _fill(tmp, labels, batches, len(loader))
        if rows != n:
            raise DatasetError(f"the dataset yielded {rows} of {n} images; check the data folder")
    except BaseException:  # a failed or interrupted export leaves no temporary file behind
        tmp.unlink(missing_ok=True)
        raise
    return tmp, labels


def _fill(
    tmp: Path, labels: np.ndarray, batches: Iterator[tuple[torch.Tensor, torch.Tensor]], total: int
) -> int:
    """Write feature batches into a new (N, D) float32 ``.npy`` memory map; return rows written."""
    from simclr_cli.console import StepProgress

    array = None
    row = 0
    with StepProgress("extracting features", total, unit="batch", transient=True) as progress:
        for h, y in batches:
            if array is None:  # the width D is known after the first batch
                array = np.lib.format.open_memmap(tmp, "w+", np.float32, (len(labels), h.shape[1]))
            array[row : row + len(h)] = h.numpy()
            labels[row : row + len(h)] = y.numpy()
            row += len(h)
            progress.advance()
    if array is not None:
        array.flush()
        del array  # close the memory map before the file is synced and renamed
    return row


def build_meta(
    cfg: Any,
    payload: dict,
    checkpoint_path: Path,
    split: str,
    count: int,
    dim: int,
    labels: np.ndarray,
    paths: list[Path] | None,
    dataset: Dataset | None = None,
) -> dict[str, Any]:
    """What the exported rows are: model, layer, preprocessing, data, order, class names (label
    ``i`` is ``classes[i]``; None when the dataset has none) and unreadable files skipped."""
    spec = payload["model"]
    mean, std = spec.get("mean"), spec.get("std")
    image_size = checkpoint_image_size(payload, cfg.image_size, cfg.dataset_kind)
    sampled = isinstance(dataset, Subset) and cfg.limit is not None
    order = "dataset order: row i is item " + ("indices[i]" if sampled else "i") + " of the split"
    if split == "all" and paths is None:
        order += f" ({', '.join(ALL_SPLITS.get(cfg.dataset_kind, ('train', 'test')))} in turn)"
    if sampled:
        order += " (a class-stratified --limit sample, seed 0)"
    return {
        "checkpoint": str(checkpoint_path),
        "arch": spec.get("arch"),
        "stem": spec.get("stem"),
        "layer": cfg.layer,
        "representation": "h (encoder output)" if cfg.layer == "encoder" else "z = g(h)",
        "dim": dim,
        "image_size": image_size,
        "normalization": None if mean is None else {"mean": mean, "std": std},
        "count": count,
        "labelled": int((labels >= 0).sum()),
        "dataset": str(cfg.dataset),
        "split": split,
        "order": order + ("; paths.txt names the file of each row" if paths is not None else ""),
        "dtype": {"features": "float32", "labels": "int64 (-1 = unlabelled)"},
        "classes": class_names(dataset),
        "skipped_files": skipped_count(dataset),
        **({"indices": list(dataset.indices)} if sampled else {}),  # type: ignore[union-attr]
    }


def _temp_path(out: Path, name: str) -> Path:
    return fileio.temp_path(out / name)


def _stage_labels(out: Path, labels: np.ndarray) -> Path:
    tmp = _temp_path(out, LABELS)
    # A file object: np.save would append ".npy" to a name.
    with fileio.write_errors_of(out / LABELS), open(tmp, "wb") as handle:
        np.save(handle, labels)
    return tmp


def _stage_text(out: Path, name: str, text: str) -> Path:
    tmp = _temp_path(out, name)
    with fileio.write_errors_of(out / name):
        tmp.write_text(text, encoding="utf-8")
    return tmp


def _commit(out: Path, staged: dict[str, Path]) -> None:
    """Rename the complete temporary files into place (each fsync'ed), ``meta.json`` last; drop
    a stale ``paths.txt`` from an earlier export that this one does not replace."""
    if PATHS not in staged:
        (out / PATHS).unlink(missing_ok=True)
    for name in (FEATURES, LABELS, PATHS, META):
        if name in staged:
            fileio.commit(staged[name], out / name)
