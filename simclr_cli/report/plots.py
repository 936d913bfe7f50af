"""The figures of ``simclr report`` (matplotlib's object API: no pyplot, no global state)."""

from __future__ import annotations

import io
import math
from collections.abc import Sequence
from typing import Any

import numpy as np

from simclr_cli.report.neighbours import Neighbours, pca_2d
from simclr_cli.report.run import finite

RIGHT, WRONG, NEUTRAL = "#1a9850", "#d73027", "#999999"


TILE_TEXT = 16  # characters of a class name above a neighbour tile


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
        points = [(r["step"], scale * r[key]) for r in records if finite(r.get(key))]
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


def _mark_resumes(ax: Any, steps: Sequence[float], legend: bool) -> None:
    for i, step in enumerate(steps):
        ax.axvline(step, color="#7b3294", ls="--", lw=1, label="resumed" if i == 0 else None)
    if steps and legend:
        ax.legend(loc="best", fontsize=8)


def plot_finetune_curves(records: Sequence[dict[str, Any]]) -> Any:
    """A fine-tuning run's loss, training (and held-out) top-1 and lr against epoch, one line
    per classifier (fine-tuned, from scratch)."""
    runs = [r for r in records if "arm" in r]
    arms = list(dict.fromkeys(r["arm"] for r in runs))
    panels = [("loss", "cross-entropy loss"), ("train_top1", "top-1 on the augmented batches (%)")]
    if any("val_top1" in r for r in runs):
        panels.append(("val_top1", "held-out top-1 (%)"))
    panels.append(("lr", "learning rate"))
    rows = math.ceil(len(panels) / 2)
    fig = _figure(10, 3.2 * rows)
    axes = fig.subplots(rows, 2, squeeze=False).ravel()
    for ax, (key, title) in zip(axes, panels, strict=False):
        scale = 100.0 if key.endswith("top1") else 1.0
        for arm in arms:
            points = [(r["epoch"], scale * r[key]) for r in runs
                      if r["arm"] == arm and finite(r.get(key))]  # fmt: skip
            if points:
                xs, ys = zip(*points, strict=True)
                ax.plot(xs, ys, marker="o" if len(points) < 30 else None, ms=3, lw=1.4, label=arm)
        ax.set_title(title)
        ax.set_xlabel("epoch")
        ax.grid(alpha=0.3)
    if arms:
        axes[0].legend(loc="best", fontsize=8)
    for ax in axes[len(panels) :]:
        ax.set_visible(False)
    return fig


def plot_linear_eval(result: dict[str, Any], what: str = "linear probe") -> dict[str, Any]:
    """The confusion matrix (row-normalised colours, counts) and per-class accuracy of ``what``
    (the linear probe, or a fine-tuned classifier)."""
    names = [str(row["class"]) for row in result.get("per_class", [])]
    figures: dict[str, Any] = {}
    matrix = np.asarray(result.get("confusion_matrix") or [], dtype=float)
    if matrix.ndim == 2 and matrix.size and len(names) == len(matrix):
        figures["confusion.png"] = plot_confusion(matrix, names, what)
    if names:
        accuracy = [row.get("accuracy") for row in result["per_class"]]
        support = [row.get("support") for row in result["per_class"]]
        labelled = [n if k is None else f"{n} ({k})" for n, k in zip(names, support, strict=True)]
        figures["per_class.png"] = plot_per_class(labelled, accuracy, result.get("top1"), what)
    return figures


def plot_confusion(matrix: np.ndarray, names: Sequence[str], what: str = "linear probe") -> Any:
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
    ax.set_title(f"Confusion matrix ({what}, test split)")
    if n <= 20:
        for i in range(n):
            for j in range(n):
                colour = "white" if share[i, j] > 0.5 else "black"
                ax.text(j, i, f"{int(matrix[i, j])}", ha="center", va="center", fontsize=7,
                        color=colour)  # fmt: skip
    return fig


def plot_per_class(
    names: Sequence[str], accuracy: Sequence[Any], top1: Any, what: str = "linear probe"
) -> Any:
    """Horizontal bars of per-class accuracy, with the overall top-1 as a line."""
    n = len(names)
    fig = _figure(8, max(2.5, 0.3 * n + 1.2))
    ax = fig.add_subplot()
    values = [100 * a if finite(a) else 0.0 for a in accuracy]
    ax.barh(range(n), values, color="#4575b4")
    ax.set_yticks(range(n), names, fontsize=8 if n <= 40 else 5)
    ax.invert_yaxis()
    ax.set_xlim(0, 100)
    ax.set_xlabel("accuracy (%)")
    ax.set_title(f"Per-class accuracy ({what}; test images per class in brackets)")
    if finite(top1):
        # Named under the axis, not in a legend box, which would cover the last bars' labels.
        ax.axvline(100 * top1, color="black", ls="--", lw=1)
        ax.set_xlabel(f"accuracy (%); dashed line: top-1 {100 * top1:.1f}%")
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
