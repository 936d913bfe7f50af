"""The HTML page of ``simclr report``: sections in reading order, inline style, images embedded
as base64, so it opens offline."""

from __future__ import annotations

import base64
import html
import json
from collections.abc import Sequence
from typing import Any

import numpy as np

from simclr_cli.report.neighbours import Neighbours
from simclr_cli.report.run import RunFiles, finite, is_finetune_run


def build_sections(run: RunFiles, pngs: dict[str, bytes], nb: Neighbours | None) -> list[str]:
    """The page's sections as HTML fragments, in reading order."""
    sections = []
    finetuned = is_finetune_run(run)
    if run.finetune is not None:
        sections.append(_finetune_header(run.finetune))
    elif run.linear_eval is not None:
        sections.append(_linear_eval_header(run.linear_eval))
    if "curves.png" in pngs:
        text = "Loss, learning rate and throughput per logged step; epochs on the top axis"
        if finetuned:
            text = "Per epoch and classifier: loss and top-1 on its augmented batches, held-out "
            text += "top-1 with --val-split, learning rate"
        if any("resumed_from" in r for r in run.records):
            text += "; dashed lines mark where the run was resumed"
        sections.append(_figure_section("Training", "curves.png", pngs, text + "."))
    what = "Fine-tuned classifier" if run.finetune is not None else "Linear probe"
    for name, title, text in (
        ("confusion.png", "Confusion matrix", "Rows: true class; columns: predicted class; "
         "numbers: test images; colour: share of the true class."),
        ("per_class.png", "Per-class accuracy", f"{what} accuracy per class; dashed: top-1."),
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
    summary = finetune_summary(run) if finetuned else run_summary(run)
    sections.append(_table_section("Summary", summary))
    if run.config is not None:
        sections.append(_list_section("Configuration", flatten(run.config)))
    return sections


def _linear_eval_header(result: dict[str, Any]) -> str:
    cells = []
    for key, label in (("top1", "linear top-1"), ("top5", "linear top-5"), ("knn_top1", "kNN")):
        value = result.get(key)
        shown = f"{100 * value:.1f}%" if isinstance(value, (int, float)) and finite(value) else "-"
        cells.append(f'<div class="stat"><b>{shown}</b><span>{label}</span></div>')
    where = f"{result.get('dataset', '')}, {result.get('test_images', '?')} test images"
    stats = f'<div class="stats">{"".join(cells)}</div>'
    return f"<section><h2>Linear evaluation</h2>{stats}<p>{html.escape(where)}</p></section>"


def _finetune_header(result: dict[str, Any]) -> str:
    """The fine-tuned classifier's top-1/top-5 and each baseline's top-1 with the gap."""
    cells = []
    rows = [("top1", "top-1", result), ("top5", "top-5", result)]
    names = {"scratch": "from scratch", "linear": "linear probe"}
    rows += [("top1", names.get(arm, arm), m) for arm, m in result.get("baselines", {}).items()]
    for key, label, metrics in rows:
        value = metrics.get(key)
        shown = f"{100 * value:.1f}%" if isinstance(value, (int, float)) and finite(value) else "-"
        cells.append(f'<div class="stat"><b>{shown}</b><span>{html.escape(label)}</span></div>')
    subset = result.get("subset") or {}
    where = (
        f"{result.get('dataset', '')}: fine-tuned on {subset.get('images', '?')} labelled images "
        f"({subset.get('train_images', '?')} trained on), {result.get('test_images', '?')} test "
        f"images; from {result.get('checkpoint', '?')}"
    )
    stats = f'<div class="stats">{"".join(cells)}</div>'
    return f"<section><h2>Fine-tuning</h2>{stats}<p>{html.escape(where)}</p></section>"


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


def finetune_summary(run: RunFiles) -> dict[str, Any]:
    """Per classifier: epochs, final loss and time; the labels and the recipe."""
    result = run.finetune or {}
    rows: dict[str, Any] = {"run folder": str(run.root)}
    for arm in dict.fromkeys(r["arm"] for r in run.records if "arm" in r):
        last = [r for r in run.records if r.get("arm") == arm and finite(r.get("loss"))]
        if last:
            rows[f"{arm}: epochs"] = last[-1].get("epoch")
            rows[f"{arm}: final loss"] = last[-1]["loss"]
    for arm, metrics in {"finetune": result, **(result.get("baselines") or {})}.items():
        if finite(metrics.get("cpu_s")):
            rows[f"{arm}: time (s, wall / CPU)"] = f"{metrics.get('time_s')} / {metrics['cpu_s']}"
    recipe = result.get("recipe") or {}
    for key in ("optimizer", "lr", "batch_size", "epochs", "from_head_layer"):
        if key in recipe:
            rows[f"recipe: {key}"] = recipe[key]
    return rows


def run_summary(run: RunFiles) -> dict[str, Any]:
    """Steps, epochs, loss, throughput, time and resumes, from the records."""
    losses = [r for r in run.records if finite(r.get("loss"))]
    times = [r["time"] for r in run.records if finite(r.get("time"))]
    rates = [r["images_per_s"] for r in losses if finite(r.get("images_per_s"))]
    knn = [r["knn_accuracy"] for r in run.records if finite(r.get("knn_accuracy"))]
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
