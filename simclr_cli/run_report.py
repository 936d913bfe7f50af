"""``simclr report``: one self-contained HTML page about a run folder, and the PNGs it shows.

Sections, each present when its inputs are: training curves (``metrics.jsonl``), linear
evaluation (``linear_eval.json``: header numbers, confusion matrix, per-class accuracy),
nearest neighbours and a 2-D PCA map of ``h`` (the run's checkpoint and its dataset, or features
exported by ``simclr features``), and the run's configuration and summary. A missing input
becomes a note on the page and on the terminal, not a failure. Images are embedded as base64,
so the page opens offline; the PNGs are written beside it. Everything is staged in a temporary
folder inside the output folder and renamed into place at the end, ``report.html`` last.
"""

from __future__ import annotations

import base64
import contextlib
import html
import io
import json
import math
import os
import shutil
import tempfile
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch

from simclr_cli.console import get_console
from simclr_cli.errors import DatasetError, import_extra

REPORT = "report.html"
NEIGHBOURS_JSON = "neighbours.json"
TOP_K = 8
RIGHT, WRONG, NEUTRAL = "#1a9850", "#d73027", "#999999"
TILE_TEXT = 16  # characters of a class name above a neighbour tile


@dataclass
class RunFiles:
    """What a run folder holds, read leniently (unreadable parts become notes)."""

    root: Path
    config: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    linear_eval: dict[str, Any] | None = None
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)


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


# -- reading the run folder ------------------------------------------------------------------


def read_run(root: Path) -> RunFiles:
    """Read ``config.json``, ``metrics.jsonl``, ``linear_eval.json`` and find the checkpoint.

    Raises:
        DatasetError: the folder holds none of them (not a run folder).
    """
    run = RunFiles(root)
    run.config = _read_json(root / "config.json", run.notes)
    run.records = read_metrics(root / "metrics.jsonl", run.notes)
    run.linear_eval = _read_json(root / "linear_eval.json", run.notes, missing_note=False)
    last = root / "checkpoint_last.pt"
    run.checkpoint = last if last.is_file() else None
    if run.config is None and not run.records and run.linear_eval is None and not run.checkpoint:
        raise DatasetError(
            f"{root} holds no config.json, metrics.jsonl, linear_eval.json or checkpoint_last.pt; "
            "give a run folder written by simclr pretrain"
        )
    if run.linear_eval is None:
        run.notes.append(
            "no linear_eval.json: run `simclr linear-eval --checkpoint "
            f"{root} --dataset ...` for the accuracy section"
        )
    if run.checkpoint is None:
        run.notes.append("no checkpoint_last.pt: no nearest neighbours or embedding map")
    return run


def _read_json(path: Path, notes: list[str], missing_note: bool = True) -> dict | None:
    if not path.is_file():
        if missing_note:
            notes.append(f"no {path.name} in the run folder")
        return None
    try:
        value = json.loads(path.read_text(encoding="utf-8"))
    except (json.JSONDecodeError, UnicodeDecodeError):
        notes.append(f"{path.name} is not valid JSON (cut short?); its section is left out")
        return None
    return value if isinstance(value, dict) else None


def read_metrics(path: Path, notes: list[str]) -> list[dict[str, Any]]:
    """The readable records of ``metrics.jsonl``, in file order; bad lines become one note."""
    if not path.is_file():
        notes.append("no metrics.jsonl: no training curves")
        return []
    records, bad = [], []
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except json.JSONDecodeError:
            bad.append(number)
            continue
        if isinstance(record, dict) and isinstance(record.get("step"), (int, float)):
            records.append(record)
        else:
            bad.append(number)
    if bad:
        shown = ", ".join(map(str, bad[:5])) + (" ..." if len(bad) > 5 else "")
        notes.append(f"metrics.jsonl: skipped {len(bad)} unreadable line(s) (line {shown})")
    return records


# -- the command -----------------------------------------------------------------------------


def run_report(cfg: Any) -> dict[str, Any]:
    """``simclr report``: write ``report.html`` and its PNGs for a run folder.

    Args:
        cfg: a :class:`simclr_cli.config.ReportConfig`.

    Returns:
        A summary: the page, the images, and the notes on what was left out.

    Raises:
        MissingExtraError: matplotlib (the ``plots`` extra) is not installed.
        DatasetError, CheckpointError: the folder is not a run, the features do not fit.
    """
    import_extra("matplotlib", "plots", "simclr report")
    run = read_run(Path(cfg.run_dir))
    figures: dict[str, Any] = {}
    sections: list[str] = []
    if run.records:
        figures["curves.png"] = plot_curves(run.records)
    if run.linear_eval is not None:
        figures.update(plot_linear_eval(run.linear_eval))
    neighbours = find_neighbours(cfg, run)
    if neighbours is not None:
        figures["neighbours.png"] = plot_neighbours(neighbours)
        figures["embedding.png"] = plot_embedding(neighbours)
    pngs = {name: figure_png(fig) for name, fig in figures.items()}
    sections = build_sections(run, pngs, neighbours)
    page = render_html(run, sections)
    out = Path(cfg.resolved_out)
    extra = {NEIGHBOURS_JSON: neighbours_json(neighbours)} if neighbours is not None else {}
    written = write_outputs(out, pngs, extra, page)
    console = get_console()
    for note in run.notes:
        console.print(f"note: {note}", soft_wrap=True, markup=False)
    return {"report": str(out / REPORT), "images": ", ".join(pngs) or "none",
            "files": len(written), "notes": len(run.notes)}  # fmt: skip


# -- figures ---------------------------------------------------------------------------------


def _figure(width: float, height: float) -> Any:
    from matplotlib.figure import Figure

    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def figure_png(fig: Any) -> bytes:
    """The figure as PNG bytes (Agg canvas, no display, no global pyplot state)."""
    buffer = io.BytesIO()
    fig.savefig(buffer, format="png", facecolor="white")
    return buffer.getvalue()


def steps_per_epoch(records: Sequence[dict[str, Any]]) -> float | None:
    """Steps per epoch from the records' (step, epoch) pairs, for the epoch axis."""
    ratios = [r["step"] / r["epoch"] for r in records if (r.get("epoch") or 0) > 0]
    return float(np.median(ratios)) if ratios else None


def plot_curves(records: Sequence[dict[str, Any]]) -> Any:
    """Loss, lr, images/s and kNN accuracy against step; epochs on top; resumes dashed."""
    panels = [("loss", "NT-Xent loss"), ("lr", "learning rate"), ("images_per_s", "images/s")]
    if any("knn_accuracy" in r for r in records):
        panels.append(("knn_accuracy", "kNN top-1 accuracy (%)"))
    rows = math.ceil(len(panels) / 2)
    fig = _figure(10, 3.2 * rows)
    axes = fig.subplots(rows, 2, squeeze=False).ravel()
    per_epoch = steps_per_epoch(records)
    resumes = [r["step"] for r in records if "resumed_from" in r]
    for i, (ax, (key, title)) in enumerate(zip(axes, panels, strict=False)):
        scale = 100.0 if key == "knn_accuracy" else 1.0
        points = [(r["step"], scale * r[key]) for r in records if _finite(r.get(key))]
        if points:
            xs, ys = zip(*points, strict=True)
            ax.plot(xs, ys, marker="o" if len(points) < 30 else None, ms=3, lw=1.4)
        ax.set_title(title)
        ax.set_xlabel("step")
        ax.grid(alpha=0.3)
        _mark_resumes(ax, resumes, legend=i == 0)
        if per_epoch:
            top = ax.secondary_xaxis(
                "top", functions=(lambda s, p=per_epoch: s / p, lambda e, p=per_epoch: e * p)
            )
            top.set_xlabel("epoch")
    last = max(r["step"] for r in records)
    for ax in axes[: len(panels)]:  # one step range for all panels, so they line up
        ax.set_xlim(0, last * 1.02)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig


def _finite(value: Any) -> bool:
    return isinstance(value, (int, float)) and math.isfinite(value)


def _mark_resumes(ax: Any, steps: Sequence[float], legend: bool) -> None:
    for i, step in enumerate(steps):
        ax.axvline(step, color="#7b3294", ls="--", lw=1, label="resumed" if i == 0 else None)
    if steps and legend:
        ax.legend(loc="best", fontsize=8)


def plot_linear_eval(result: dict[str, Any]) -> dict[str, Any]:
    """The confusion matrix (row-normalised colours, counts) and per-class accuracy."""
    names = [str(row["class"]) for row in result.get("per_class", [])]
    figures: dict[str, Any] = {}
    matrix = np.asarray(result.get("confusion_matrix") or [], dtype=float)
    if matrix.ndim == 2 and matrix.size and len(names) == len(matrix):
        figures["confusion.png"] = plot_confusion(matrix, names)
    if names:
        accuracy = [row.get("accuracy") for row in result["per_class"]]
        support = [row.get("support") for row in result["per_class"]]
        labelled = [n if k is None else f"{n} ({k})" for n, k in zip(names, support, strict=True)]
        figures["per_class.png"] = plot_per_class(labelled, accuracy, result.get("top1"))
    return figures


def plot_confusion(matrix: np.ndarray, names: Sequence[str]) -> Any:
    """Heatmap: true class rows, predicted columns, colour = share of the row."""
    n = len(names)
    side = min(12.0, max(5.0, 0.45 * n + 2.5))
    fig = _figure(side + 1.2, side)
    ax = fig.add_subplot()
    share = matrix / np.maximum(matrix.sum(1, keepdims=True), 1)
    image = ax.imshow(share, cmap="Blues", vmin=0, vmax=1)
    fig.colorbar(image, ax=ax, shrink=0.8, label="share of the true class")
    ticks = range(n) if n <= 40 else []
    ax.set_xticks(ticks, [names[i] for i in ticks], rotation=45, ha="right", fontsize=8)
    ax.set_yticks(ticks, [names[i] for i in ticks], fontsize=8)
    ax.set_xlabel("predicted")
    ax.set_ylabel("true")
    ax.set_title("Confusion matrix (linear probe, test split)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7,
                        color=colour)  # fmt: skip
    return fig


def plot_per_class(names: Sequence[str], accuracy: Sequence[Any], top1: Any) -> Any:
    """Horizontal bars of per-class accuracy, with the overall top-1 as a line."""
    n = len(names)
    fig = _figure(8, max(2.5, 0.3 * n + 1.2))
    ax = fig.add_subplot()
    values = [100 * a if _finite(a) else 0.0 for a in accuracy]
    ax.barh(range(n), values, color="#4575b4")
    ax.set_yticks(range(n), names, fontsize=8 if n <= 40 else 5)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)")
    ax.set_title("Per-class accuracy (linear probe; test images per class in brackets)")
    if _finite(top1):
        ax.axvline(100 * top1, color="black", ls="--", lw=1, label=f"top-1 {100 * top1:.1f}%")
        ax.legend(loc="lower right", fontsize=8)
    if n <= 40:
        for i, value in enumerate(values):
            ax.text(min(value + 1, 92), i, f"{value:.1f}", va="center", fontsize=7)
    ax.grid(axis="x", alpha=0.3)
    return fig


def plot_neighbours(nb: Neighbours) -> Any:
    """One row per query: the query, then its top-k neighbours with similarity and label,
    framed green (same label) or red (different) when the images are labelled."""
    rows, cols = len(nb.queries), 1 + nb.indices.shape[1]
    fig = _figure(1.25 * cols, 1.45 * rows + 0.4)
    axes = fig.subplots(rows, cols, squeeze=False)
    for r, query in enumerate(nb.queries):
        label = int(nb.query_labels[r])
        title = f"query {query}\n{_name(nb, label, TILE_TEXT)}"
        _tile(axes[r, 0], nb.query_images[r], title, "black", 3)
        for c, (index, sim) in enumerate(zip(nb.indices[r], nb.similarities[r], strict=True), 1):
            other = int(nb.gallery_labels[index])
            colour, mark = _verdict(label, other)
            text = f"#{index} {sim:.2f}\n{mark}{_name(nb, other, TILE_TEXT)}"
            _tile(axes[r, c], nb.gallery_images[int(index)], text, colour, 3)
    fig.suptitle(
        f"Nearest neighbours by cosine similarity of h: {nb.query_split} queries, "
        f"{len(nb.gallery_labels)} {nb.gallery_split} images",
        fontsize=10,
    )
    return fig


def _verdict(query_label: int, label: int) -> tuple[str, str]:
    if query_label < 0 or label < 0:
        return NEUTRAL, ""
    return (RIGHT, "\u2713 ") if label == query_label else (WRONG, "\u2717 ")


def _name(nb: Neighbours, label: int, width: int = 0) -> str:
    """The class name of ``label``; cut to ``width`` characters (with an ellipsis) when > 0."""
    if label < 0:
        return "unlabelled"
    name = nb.classes[label] if nb.classes and label < len(nb.classes) else f"class {label}"
    return name if not width or len(name) <= width else name[: width - 1] + "\u2026"


def _tile(ax: Any, image: np.ndarray, title: str, colour: str, width: float) -> None:
    ax.imshow(image, interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_edgecolor(colour)
        spine.set_linewidth(width)
    ax.set_title(title, fontsize=7, color=colour if colour != NEUTRAL else "black")


def plot_embedding(nb: Neighbours) -> Any:
    """The gallery's h projected on its two first principal components, coloured by class."""
    points, explained = pca_2d(nb.gallery_features)
    fig = _figure(7.5, 6)
    ax = fig.add_subplot()
    labels = nb.gallery_labels
    known = sorted({int(v) for v in labels if v >= 0})
    if not known:
        ax.scatter(points[:, 0], points[:, 1], s=6, color="#4575b4", alpha=0.6)
    cmap = _class_colours(len(known))
    for i, label in enumerate(known):
        mask = labels == label
        ax.scatter(points[mask, 0], points[mask, 1], s=6, alpha=0.7, color=cmap(i),
                   label=_name(nb, label))  # fmt: skip
    if known and len(known) <= 20:
        ax.legend(fontsize=7, markerscale=2.5, loc="center left", bbox_to_anchor=(1.0, 0.5))
    ax.set_xlabel(f"PC 1 ({100 * explained[0]:.1f}% of variance)")
    ax.set_ylabel(f"PC 2 ({100 * explained[1]:.1f}% of variance)")
    ax.set_title(f"PCA of h: {len(labels)} {nb.gallery_split} images")
    ax.grid(alpha=0.3)
    return fig


def _class_colours(n: int) -> Any:
    from matplotlib import colormaps

    return colormaps["tab10" if n <= 10 else "tab20"].resampled(max(n, 1))


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


# -- nearest neighbours ----------------------------------------------------------------------


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
        source = f"computed from {run.checkpoint}, first {len(gallery.dataset)} images"
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
    from simclr_cli.checkpoint import load_checkpoint, load_model

    assert run.checkpoint is not None
    return load_model(load_checkpoint(run.checkpoint)).eval().requires_grad_(False)


def _hwc(image: torch.Tensor) -> np.ndarray:
    return image.permute(1, 2, 0).numpy()


def _from_dataset(cfg: Any, run: RunFiles, size: int) -> tuple[_Split, _Split]:
    """Gallery: the first ``--max-images`` training images; queries: the test split. A folder
    has no test split: its queries come from the gallery itself (leaving each one out)."""
    from simclr_cli.augment import to_uint8_transform
    from simclr_cli.data import build_dataset, dataset_kind

    name = str((run.config or {}).get("dataset") or "")
    if not name:
        raise DatasetError("config.json does not name the dataset; pass --features DIR")
    transform = to_uint8_transform(size)
    data_dir = Path(cfg.data_dir)
    gallery = build_dataset(
        name, "train", data_dir, transform, download=False, limit=cfg.max_images
    )
    if dataset_kind(name) == "folder":
        split = _Split(gallery, Path(name).name or "folder")
        return split, split
    queries = build_dataset(name, "test", data_dir, transform, download=False)
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
    from simclr_cli.augment import to_uint8_transform
    from simclr_cli.data import build_dataset, dataset_kind
    from simclr_cli.features import ALL_SPLITS

    meta = _read_json(folder / "meta.json", []) or {}
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
    if len(dataset) < len(features):
        raise DatasetError(f"{folder}: {len(features)} feature rows but {len(dataset)} images")
    dataset = torch.utils.data.Subset(dataset, range(len(features)))
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
    """h and labels of every item, with a progress bar."""
    from simclr_cli.console import make_progress
    from simclr_cli.inference import build_loader, iter_features, resolve_device

    device = resolve_device(cfg.resolved_device)
    loader = build_loader(dataset, cfg.batch_size, device)
    features, labels = [], []
    with make_progress(transient=True) as progress:
        task = progress.add_task(f"h of {what}", total=len(loader))
        for h, y in iter_features(model.to(device), loader, device, "encoder", "fp32"):
            features.append(h.numpy())
            labels.append(y.numpy())
            progress.advance(task)
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


# -- the page --------------------------------------------------------------------------------


def build_sections(run: RunFiles, pngs: dict[str, bytes], nb: Neighbours | None) -> list[str]:
    """The page's sections as HTML fragments, in reading order."""
    sections = []
    if run.linear_eval is not None:
        sections.append(_linear_eval_header(run.linear_eval))
    if "curves.png" in pngs:
        text = "Loss, learning rate and throughput per logged step; epochs on the top axis"
        if any("resumed_from" in r for r in run.records):
            text += "; dashed lines mark where the run was resumed"
        sections.append(_figure_section("Training", "curves.png", pngs, text + "."))
    for name, title, text in (
        ("confusion.png", "Confusion matrix", "Rows: true class; columns: predicted class; "
         "numbers: test images; colour: share of the true class."),
        ("per_class.png", "Per-class accuracy", "Linear probe accuracy per class; dashed: top-1."),
    ):  # fmt: skip
        if name in pngs:
            sections.append(_figure_section(title, name, pngs, text, narrow=True))
    if nb is not None:
        text = (
            f"{len(nb.queries)} {nb.query_split} images (seeded sample) and their "
            f"{nb.indices.shape[1]} "
            f"nearest {nb.gallery_split} images by cosine similarity of h ({nb.source}); "
            "#row and similarity above each."
        )
        if (nb.query_labels >= 0).any():
            text += " Green: same label as the query; red: a different one."
        sections.append(_figure_section("Nearest neighbours", "neighbours.png", pngs, text))
        text = "The gallery's h on its first two principal components (exact SVD), by class."
        sections.append(_figure_section("Embedding", "embedding.png", pngs, text, narrow=True))
    sections.append(_table_section("Summary", run_summary(run)))
    if run.config is not None:
        sections.append(_list_section("Configuration", flatten(run.config)))
    return sections


def _linear_eval_header(result: dict[str, Any]) -> str:
    cells = []
    for key, label in (("top1", "linear top-1"), ("top5", "linear top-5"), ("knn_top1", "kNN")):
        value = result.get(key)
        shown = f"{100 * value:.1f}%" if isinstance(value, (int, float)) and _finite(value) else "-"
        cells.append(f'<div class="stat"><b>{shown}</b><span>{label}</span></div>')
    where = f"{result.get('dataset', '')}, {result.get('test_images', '?')} test images"
    stats = f'<div class="stats">{"".join(cells)}</div>'
    return f"<section><h2>Linear evaluation</h2>{stats}<p>{html.escape(where)}</p></section>"


def _figure_section(
    title: str, name: str, pngs: dict[str, bytes], text: str, narrow: bool = False
) -> str:
    """A heading, the PNG embedded as base64 and a caption naming its file."""
    data = base64.b64encode(pngs[name]).decode("ascii")
    caption = f"{html.escape(text)} <code>{html.escape(name)}</code>"
    size = ' class="narrow"' if narrow else ""
    return (
        f"<section><h2>{html.escape(title)}</h2><figure>"
        f'<img{size} src="data:image/png;base64,{data}" alt="{html.escape(name)}">'
        f"<figcaption>{caption}</figcaption></figure></section>"
    )


def _table_section(title: str, rows: dict[str, Any]) -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_text(v))}</td></tr>"
        for k, v in rows.items()
    )
    return f"<section><h2>{html.escape(title)}</h2><table>{body}</table></section>"


def _list_section(title: str, rows: dict[str, Any]) -> str:
    """Many short key-value pairs, in columns (``config.json`` has ~50)."""
    items = "".join(
        f"<div><dt>{html.escape(str(k))}</dt><dd>{html.escape(_text(v))}</dd></div>"
        for k, v in rows.items()
    )
    return f'<section><h2>{html.escape(title)}</h2><dl class="pairs">{items}</dl></section>'


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "-" if value is None else str(value)


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"resolved": {"lr": 1}}`` -> ``{"resolved.lr": 1}``."""
    flat: dict[str, Any] = {}
    for key, value in obj.items():
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


def run_summary(run: RunFiles) -> dict[str, Any]:
    """Steps, epochs, loss, throughput, time and resumes, from the records."""
    losses = [r for r in run.records if _finite(r.get("loss"))]
    times = [r["time"] for r in run.records if _finite(r.get("time"))]
    rates = [r["images_per_s"] for r in losses if _finite(r.get("images_per_s"))]
    knn = [r["knn_accuracy"] for r in run.records if _finite(r.get("knn_accuracy"))]
    return {
        "run folder": str(run.root),
        "checkpoint": str(run.checkpoint) if run.checkpoint else None,
        "last step": losses[-1]["step"] if losses else None,
        "epochs": losses[-1].get("epoch") if losses else None,
        "first loss": losses[0]["loss"] if losses else None,
        "final loss": losses[-1]["loss"] if losses else None,
        "images/s (median)": float(np.median(rates)) if rates else None,
        "wall time (s)": round(times[-1] - times[0], 1) if len(times) > 1 else None,
        "resumes": sum("resumed_from" in r for r in run.records),
        "last kNN accuracy": f"{100 * knn[-1]:.1f}%" if knn else None,
    }


STYLE = """
body{font-family:system-ui,-apple-system,Segoe UI,Roboto,sans-serif;margin:2rem auto;
max-width:1100px;padding:0 1rem;color:#222}
h1{font-size:1.5rem}h2{font-size:1.15rem;border-bottom:1px solid #ddd;padding-bottom:.2rem}
img{max-width:100%;height:auto}figure{margin:0}figcaption{color:#555;font-size:.9rem}
table{border-collapse:collapse;font-size:.85rem}th,td{border:1px solid #e3e3e3;
padding:.2rem .5rem;text-align:left;vertical-align:top}th{background:#f6f6f6;font-weight:600}
td{word-break:break-all}.stats{display:flex;gap:1rem}.stat{border:1px solid #ddd;
border-radius:6px;padding:.6rem 1rem;text-align:center}.stat b{display:block;font-size:1.6rem}
.stat span{color:#555;font-size:.85rem}.pairs{columns:3 260px;font-size:.85rem;margin:0}
.pairs div{break-inside:avoid;display:flex;gap:.5rem;border-bottom:1px solid #eee;padding:.1rem 0}
.pairs dt{font-weight:600;min-width:45%}.pairs dd{margin:0;word-break:break-all}
img.narrow{max-width:760px}.notes{background:#fff7e0;border:1px solid #f0d890;
padding:.5rem 1rem;border-radius:6px}
"""


def render_html(run: RunFiles, sections: Sequence[str]) -> str:
    """The whole page: inline style, embedded images, no external resource."""
    title = f"simclr report: {run.root.name or run.root}"
    notes = ""
    if run.notes:
        items = "".join(f"<li>{html.escape(n)}</li>" for n in run.notes)
        notes = f'<div class="notes"><b>Left out</b><ul>{items}</ul></div>'
    return (
        '<!DOCTYPE html>\n<html lang="en"><head><meta charset="utf-8">'
        f"<title>{html.escape(title)}</title><style>{STYLE}</style></head><body>"
        f"<h1>{html.escape(title)}</h1>{notes}{''.join(sections)}</body></html>\n"
    )


# -- writing ---------------------------------------------------------------------------------


def write_outputs(
    out: Path, pngs: dict[str, bytes], extra: dict[str, str], page: str
) -> list[Path]:
    """Stage every file in a temporary folder in ``out``, then rename them in, the page last."""
    out.mkdir(parents=True, exist_ok=True)
    written = []
    with _staging(out) as stage:
        for name, data in pngs.items():
            (stage / name).write_bytes(data)
        for name, text in extra.items():
            (stage / name).write_text(text, encoding="utf-8")
        (stage / REPORT).write_text(page, encoding="utf-8")
        for name in [*pngs, *extra, REPORT]:
            os.replace(stage / name, out / name)
            written.append(out / name)
    return written


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".report-"))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
