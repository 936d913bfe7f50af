"""What ``simclr report`` computes from ``h``: nearest neighbours of seeded test queries among
training images (from the run's checkpoint, or features exported by ``simclr features``), and
the 2-D PCA map of the gallery."""

from __future__ import annotations

import json
import math
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simclr_cli.errors import DatasetError
from simclr_cli.report.run import RunFiles, read_json

TOP_K = 8


@dataclass
class Neighbours:
    """Query rows, their top-k gallery rows by cosine similarity of h, and what to draw."""

    queries: list[int]  # row of each query in its own split
    indices: np.ndarray  # (Q, k) gallery rows
    similarities: np.ndarray  # (Q, k)
    query_labels: np.ndarray  # (Q,) -1 = unlabelled
    gallery_labels: np.ndarray  # (N,)
    query_images: list[np.ndarray]  # HWC uint8
    gallery_images: dict[int, np.ndarray]  # only the rows shown
    gallery_features: np.ndarray  # (N, D), for the PCA map
    classes: list[str] | None
    source: str
    query_split: str
    gallery_split: str


def top_k_cosine(
    queries: np.ndarray, gallery: np.ndarray, k: int, exclude: Sequence[int] | None = None
) -> tuple[np.ndarray, np.ndarray]:
    """Top-``k`` gallery rows of each query by cosine similarity, best first.

    Args:
        queries: (Q, D) features; gallery: (N, D).
        exclude: per query, a gallery row to leave out (the query itself when both are one set).

    Returns:
        ``(indices (Q, k) int64, similarities (Q, k) float32)``.
    """
    q = torch.nn.functional.normalize(torch.as_tensor(queries, dtype=torch.float32), dim=1)
    g = torch.nn.functional.normalize(torch.as_tensor(gallery, dtype=torch.float32), dim=1)
    sims = q @ g.T
    if exclude is not None:
        sims[torch.arange(len(q)), torch.as_tensor(list(exclude))] = -math.inf
    k = min(k, g.shape[0] - (1 if exclude is not None else 0))
    values, indices = sims.topk(k, dim=1)
    return indices.numpy(), values.numpy()


def sample_queries(count: int, n: int, seed: int) -> list[int]:
    """A fixed, seeded sample of ``count`` rows out of ``n``, in increasing order."""
    generator = torch.Generator().manual_seed(seed)
    return sorted(torch.randperm(n, generator=generator)[: min(count, n)].tolist())


@dataclass
class _Split:
    """A set of images with its features (or the model to compute them) and labels."""

    dataset: Any  # yields (uint8 CHW tensor, label)
    name: str
    features: np.ndarray | None = None
    labels: np.ndarray | None = None


def find_neighbours(cfg: Any, run: RunFiles) -> Neighbours | None:
    """Nearest neighbours of seeded test queries among training images, or None (with a note)
    when there is no checkpoint, or the features or images cannot be had."""
    if cfg.features is None and run.checkpoint is None:
        return None
    try:
        return _neighbours(cfg, run)
    except DatasetError as error:
        run.notes.append(f"no nearest neighbours or embedding map: {error}")
        return None


def _neighbours(cfg: Any, run: RunFiles) -> Neighbours:
    size = _image_size(run)
    if cfg.features is not None:
        gallery, queries, source = _from_features(Path(cfg.features), cfg, size)
    else:
        gallery, queries = _from_dataset(cfg, run, size)
        source = f"computed from {run.checkpoint}, {len(gallery.dataset)} images"
    same = queries is gallery  # one set: each query is left out of its own neighbours
    pool = len(queries.dataset)
    if queries.features is None:  # computed: queries among the first --max-images test images
        pool = min(pool, cfg.max_images)
    rows = sample_queries(cfg.queries, pool, cfg.seed)
    q_features, q_labels = _query_features(cfg, run, gallery, queries, rows)
    assert gallery.features is not None  # given, or computed by _query_features
    indices, sims = top_k_cosine(q_features, gallery.features, TOP_K, rows if same else None)
    shown = sorted({int(i) for i in indices.ravel()})
    return Neighbours(
        queries=rows, indices=indices, similarities=sims, query_labels=np.asarray(q_labels),
        gallery_labels=np.asarray(gallery.labels),
        query_images=[_hwc(queries.dataset[i][0]) for i in rows],
        gallery_images={i: _hwc(gallery.dataset[i][0]) for i in shown},
        gallery_features=np.asarray(gallery.features), classes=_classes(gallery.dataset, run),
        source=source, query_split=queries.name, gallery_split=gallery.name,
    )  # fmt: skip


def _query_features(
    cfg: Any, run: RunFiles, gallery: _Split, queries: _Split, rows: list[int]
) -> tuple[np.ndarray, np.ndarray]:
    """h and labels of the query rows; encodes the gallery (and the queries) when no features
    were given, loading the checkpoint once."""
    model = None
    if gallery.features is None:
        model = _model(run)
        gallery.features, gallery.labels = encode_dataset(model, gallery.dataset, cfg, "gallery")
    if queries.features is not None:
        assert queries.labels is not None
        return queries.features[rows], queries.labels[rows]
    picked = torch.utils.data.Subset(queries.dataset, rows)
    return encode_dataset(model or _model(run), picked, cfg, "queries")


def _image_size(run: RunFiles) -> int:
    """The checkpoint's image size, from config.json (else 32)."""
    resolved = (run.config or {}).get("resolved") or {}
    return int(resolved.get("resolved_image_size") or (run.config or {}).get("image_size") or 32)


def _model(run: RunFiles) -> Any:
    from simclr_cli.storage.checkpoint import load_checkpoint, load_model

    assert run.checkpoint is not None
    return load_model(load_checkpoint(run.checkpoint)).eval().requires_grad_(False)


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def _from_dataset(cfg: Any, run: RunFiles, size: int) -> tuple[_Split, _Split]:
    """Gallery and queries: ``--max-images`` training and test images (the ``--limit`` sample of
    every command: class-stratified, seed 0). A folder has no test split: its queries come from
    the gallery itself (leaving each one out)."""
    from simclr_cli.data.datasets import build_dataset
    from simclr_cli.data.facts import dataset_kind, recorded_dataset
    from simclr_cli.method.preprocess import to_uint8_transform

    name = str((run.config or {}).get("dataset") or "")
    if not name:
        raise DatasetError("config.json does not name the dataset; pass --features DIR")
    recorded_dataset(name, run.root / "config.json")
    transform = to_uint8_transform(size)
    data_dir = Path(cfg.data_dir)
    gallery = build_dataset(
        name, "train", data_dir, transform, download=False, limit=cfg.max_images
    )
    if dataset_kind(name) == "folder":
        split = _Split(gallery, Path(name).name or "folder")
        return split, split
    queries = build_dataset(name, "test", data_dir, transform, download=False, limit=cfg.max_images)
    return _Split(gallery, f"{name} train"), _Split(queries, f"{name} test")


def _from_features(root: Path, cfg: Any, size: int) -> tuple[_Split, _Split, str]:
    """Features exported by ``simclr features``: ``DIR`` itself (queries from the same rows)
    or ``DIR/train`` (gallery) with ``DIR/test`` (queries)."""
    data_dir = Path(cfg.data_dir)
    if (root / "features.npy").is_file():
        split = _feature_split(root, size, data_dir)
        return split, split, f"features in {root}"
    if (root / "train" / "features.npy").is_file() and (root / "test" / "features.npy").is_file():
        gallery = _feature_split(root / "train", size, data_dir)
        queries = _feature_split(root / "test", size, data_dir)
        return gallery, queries, f"features in {root}/train and {root}/test"
    raise DatasetError(
        f"{root} holds no features.npy (nor train/ and test/ folders with one); write them with "
        "simclr features --out DIR"
    )


def _feature_split(folder: Path, size: int, data_dir: Path) -> _Split:
    """One ``simclr features`` folder: its arrays and the images its rows came from."""
    from simclr_cli.data.datasets import build_dataset
    from simclr_cli.data.facts import dataset_kind
    from simclr_cli.evaluation.features import ALL_SPLITS
    from simclr_cli.method.preprocess import to_uint8_transform

    meta = read_json(folder / "meta.json", []) or {}
    if meta.get("layer") not in (None, "encoder"):
        raise DatasetError(f"{folder} holds z (--layer projection); export h with --layer encoder")
    features = np.load(folder / "features.npy")
    labels = np.load(folder / "labels.npy")
    transform = to_uint8_transform(int(meta.get("image_size") or size))
    if (folder / "paths.txt").is_file():
        paths = (folder / "paths.txt").read_text(encoding="utf-8").splitlines()
        dataset: Any = _PathImages(paths, transform)
    else:
        name, split = str(meta.get("dataset")), str(meta.get("split"))
        kind = dataset_kind(name)
        splits = ALL_SPLITS.get(kind, ("train", "test")) if split == "all" else (split,)
        parts = [build_dataset(name, s, data_dir, transform, download=False) for s in splits]
        dataset = parts[0] if len(parts) == 1 else torch.utils.data.ConcatDataset(parts)
    rows = range(len(features))  # paths.txt: one file per row
    if not isinstance(dataset, _PathImages) and meta.get("indices"):
        rows = meta["indices"]  # a --limit sample: row i is item indices[i] of the split
    if len(rows) != len(features) or max(rows, default=-1) >= len(dataset):
        raise DatasetError(f"{folder}: {len(features)} feature rows but {len(dataset)} images")
    dataset = torch.utils.data.Subset(dataset, list(rows))
    return _Split(dataset, str(meta.get("split", folder.name)), features, labels)


class _PathImages(torch.utils.data.Dataset):
    """Images listed in ``paths.txt``, for drawing (labels come from ``labels.npy``)."""

    def __init__(self, paths: Sequence[str], transform: Any) -> None:
        self.paths, self.transform = list(paths), transform

    def __len__(self) -> int:
        return len(self.paths)

    def __getitem__(self, index: int) -> tuple[torch.Tensor, int]:
        from PIL import Image

        with Image.open(self.paths[index]) as image:
            return self.transform(image.convert("RGB")), -1


def encode_dataset(model: Any, dataset: Any, cfg: Any, what: str) -> tuple[np.ndarray, np.ndarray]:
    """h and labels of every item, with a progress bar (plain lines in a log)."""
    from simclr_cli.console import StepProgress
    from simclr_cli.evaluation.inference import build_loader, iter_features, resolve_device

    device = resolve_device(cfg.resolved_device)
    loader = build_loader(dataset, cfg.batch_size, device)
    features, labels = [], []
    with StepProgress(f"h of {what}", len(loader), unit="batch", transient=True) as progress:
        for h, y in iter_features(model.to(device), loader, device, "encoder", "fp32"):
            features.append(h.numpy())
            labels.append(y.numpy())
            progress.advance()
    return np.concatenate(features), np.concatenate(labels)


def _classes(dataset: Any, run: RunFiles) -> list[str] | None:
    while hasattr(dataset, "dataset") or hasattr(dataset, "datasets"):
        dataset = dataset.dataset if hasattr(dataset, "dataset") else dataset.datasets[0]
    names = getattr(dataset, "classes", None)
    if names:
        return [str(n) for n in names]
    if run.linear_eval and run.linear_eval.get("per_class"):
        return [str(row["class"]) for row in run.linear_eval["per_class"]]
    return None


def neighbours_json(nb: Neighbours) -> str:
    """What the neighbours figure shows, as JSON (rows of the query and gallery splits)."""
    rows = []
    for r, query in enumerate(nb.queries):
        label = int(nb.query_labels[r])
        shown = []
        for index, sim in zip(nb.indices[r], nb.similarities[r], strict=True):
            other = int(nb.gallery_labels[index])
            right = None if label < 0 or other < 0 else other == label
            shown.append({"index": int(index), "similarity": round(float(sim), 6),
                          "label": other, "correct": right})  # fmt: skip
        rows.append({"query": query, "label": label, "neighbours": shown})
    meta: dict[str, Any] = {"query_split": nb.query_split, "gallery_split": nb.gallery_split}
    meta.update(gallery_size=len(nb.gallery_labels), source=nb.source, k=TOP_K)
    return json.dumps({**meta, "queries": rows}, indent=2) + "\n"


def pca_2d(features: np.ndarray) -> tuple[np.ndarray, tuple[float, float]]:
    """Rows projected on the first two principal components (exact SVD, signs fixed) and the
    share of the variance each explains."""
    x = torch.as_tensor(features, dtype=torch.float64)
    x = x - x.mean(0, keepdim=True)
    if x.shape[0] < 2:
        return np.zeros((x.shape[0], 2)), (0.0, 0.0)
    u, s, _ = torch.linalg.svd(x, full_matrices=False)
    k = min(2, s.numel())
    points = u[:, :k] * s[:k]
    signs = torch.sign(points[points.abs().argmax(0), torch.arange(k)])  # deterministic signs
    points = points * torch.where(signs == 0, 1.0, signs)
    if k < 2:
        points = torch.cat([points, torch.zeros(len(points), 2 - k, dtype=points.dtype)], 1)
    variance = (s**2) / max(float((s**2).sum()), 1e-12)
    share = [float(v) for v in variance[:2]] + [0.0] * (2 - k)
    return points.numpy(), (share[0], share[1])
