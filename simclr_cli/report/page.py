"""The HTML page of ``simclr report``: sections in reading order, inline style, images embedded
as base64, so it opens offline."""

from __future__ import annotations

import base64
import html
import json
import re
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
    sections.append(_table_section("Summary", summary, "" if finetuned else SUMMARY_NOTE))
    if run.config is not None:
        sections.append(_list_section("Configuration", flatten(run.config)))
    return sections


def _percent(value: Any) -> str:
    return f"{100 * value:.1f}%" if isinstance(value, (int, float)) and finite(value) else "-"


def _linear_eval_header(result: dict[str, Any]) -> str:
    cells = []
    for key, label in (("top1", "linear top-1"), ("top5", "linear top-5"), ("knn_top1", "kNN")):
        shown = _percent(result.get(key))
        cells.append(f'<div class="stat"><b>{shown}</b><span>{label}</span></div>')
    where = f"{result.get('dataset', '')}, {result.get('test_images', '?')} test images"
    stats = f'<div class="stats">{"".join(cells)}</div>'
    return (
        f"<section><h2>Linear evaluation</h2>{stats}<p>{html.escape(where)}</p>"
        f"{_baselines_table(result)}</section>"
    )


BASELINE_NAMES = {"random": "random encoder (default init)", "pixels": "raw pixels"}


def _baselines_table(result: dict[str, Any]) -> str:
    """The checkpoint beside the baselines of ``linear-eval --baseline`` (none: nothing)."""
    baselines = result.get("baselines") or {}
    if not baselines:
        return ""
    head = "".join(f"<th>{h}</th>" for h in ("encoder", "linear top-1", "top-5", "kNN", "gap"))
    rows = [("this checkpoint", result, "")]
    for kind, scores in baselines.items():
        gaps = [
            100 * (result[k] - scores[k])
            for k in ("top1", "knn_top1")
            if finite(result.get(k)) and finite(scores.get(k))
        ]
        gap = " / ".join(f"{g:+.1f}" for g in gaps) + " points" if len(gaps) == 2 else "-"
        rows.append((BASELINE_NAMES.get(kind, kind), scores, gap))
    body = "".join(
        f"<tr><th>{html.escape(name)}</th>"
        + "".join(f"<td>{_percent(m.get(k))}</td>" for k in ("top1", "top5", "knn_top1"))
        + f"<td>{html.escape(gap)}</td></tr>"
        for name, m, gap in rows
    )
    caption = "Baselines: the same splits, probe and k (gap: linear / kNN top-1 of the checkpoint)"
    return f'<table class="baselines"><caption>{caption}</caption><tr>{head}</tr>{body}</table>'


def _finetune_header(result: dict[str, Any]) -> str:
    """The fine-tuned classifier's top-1/top-5 and each baseline's top-1 with the gap."""
    cells = []
    rows = [("top1", "top-1", result), ("top5", "top-5", result)]
    names = {"scratch": "from scratch", "linear": "linear probe"}
    rows += [("top1", names.get(arm, arm), m) for arm, m in result.get("baselines", {}).items()]
    for key, label, metrics in rows:
        shown = _percent(metrics.get(key))
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


def _table_section(title: str, rows: dict[str, Any], note: str = "") -> str:
    body = "".join(
        f"<tr><th>{html.escape(str(k))}</th><td>{html.escape(_text(v))}</td></tr>"
        for k, v in rows.items()
    )
    note = f'<p class="note">{html.escape(note)}</p>' if note else ""
    return f"<section><h2>{html.escape(title)}</h2><table>{body}</table>{note}</section>"


def _list_section(title: str, rows: dict[str, Any]) -> str:
    """Many short key-value pairs, in columns (``config.json`` has ~50)."""
    items = "".join(
        f"<div><dt>{_breakable(str(k))}</dt><dd>{_breakable(_text(v))}</dd></div>"
        for k, v in rows.items()
    )
    return f'<section><h2>{html.escape(title)}</h2><dl class="pairs">{items}</dl></section>'


def _breakable(text: str) -> str:
    """``text`` escaped, with line-break opportunities after ``.``, ``_``, ``/`` and ``,``: a
    long key or path wraps between its parts instead of in the middle of a word."""
    return re.sub(r"([._/,])", r"\1<wbr>", html.escape(text))


def _text(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.6g}"
    if isinstance(value, (list, dict)):
        return json.dumps(value)
    return "-" if value is None else str(value)


def flatten(obj: dict[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"resolved": {"lr": 1}}`` -> ``{"resolved.lr": 1}``; a key that repeats its group's
    name drops it (``{"resolved": {"resolved_lr": 1}}`` -> ``{"resolved.lr": 1}``)."""
    flat: dict[str, Any] = {}
    group = prefix.rstrip(".").rsplit(".", 1)[-1]
    for key, value in obj.items():
        if group and key.startswith(f"{group}_") and key != f"{group}_":
            key = key[len(group) + 1 :]
        if isinstance(value, dict) and value:
            flat.update(flatten(value, f"{prefix}{key}."))
        else:
            flat[f"{prefix}{key}"] = value
    return flat


SUMMARY_NOTE = (
    "Training time and images/s count the logged training steps, as the summary of simclr "
    "pretrain does (time_s, images_per_s), here over every command of the run; the wall time "
    "runs from the first step to the last record of metrics.jsonl and also holds checkpoints, "
    "the kNN monitor and any pause between a stop and its resume."
)


def training_windows(records: Sequence[dict[str, Any]], batch_size: Any) -> tuple[int, float]:
    """Images and seconds of the logged training steps: each loss record's window of steps
    since the record before it, at the window's own rate (``images_per_s``)."""
    if not isinstance(batch_size, int) or batch_size < 1:
        return 0, 0.0
    images, seconds, previous = 0, 0.0, 0
    for record in records:
        step, rate = record["step"], record.get("images_per_s")
        if finite(record.get("loss")) and finite(rate) and rate > 0 and step > previous:
            images += (step - previous) * batch_size
            seconds += (step - previous) * batch_size / rate
        previous = step
    return images, seconds


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
    batch = (run.config or {}).get("batch_size")
    images, seconds = training_windows(run.records, batch)
    wall = None
    if losses and finite(losses[0].get("time")) and len(times) > 1:
        # From the first step: the first record comes one logged window after it.
        wall = times[-1] - losses[0]["time"] + training_windows(losses[:1], batch)[1]
    return {
        "run folder": str(run.root),
        "checkpoint": str(run.checkpoint) if run.checkpoint else None,
        "last step": losses[-1]["step"] if losses else None,
        "epochs": losses[-1].get("epoch") if losses else None,
        "first loss": losses[0]["loss"] if losses else None,
        "final loss": losses[-1]["loss"] if losses else None,
        "training time (s)": round(seconds, 1) if seconds else None,
        "images/s (over the training time)": round(images / seconds, 1) if seconds else None,
        "images/s (median of the logged windows)": float(np.median(rates)) if rates else None,
        "wall time (s, first step to last record)": round(wall, 1) if wall else None,
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
td{overflow-wrap:anywhere}.stats{display:flex;gap:1rem}.stat{border:1px solid #ddd;
border-radius:6px;padding:.6rem 1rem;text-align:center}.stat b{display:block;font-size:1.6rem}
.stat span{color:#555;font-size:.85rem}.baselines td{text-align:right}
caption{text-align:left;color:#555;font-size:.85rem;padding-bottom:.3rem}
.note{color:#555;font-size:.85rem;max-width:60rem}
.pairs{display:grid;grid-template-columns:repeat(auto-fill,minmax(330px,1fr));gap:0 1.5rem;
font-size:.85rem;margin:0}
.pairs div{display:grid;grid-template-columns:minmax(8rem,45%) 1fr;gap:.5rem;
border-bottom:1px solid #eee;padding:.15rem 0}
.pairs dt{font-weight:600;overflow-wrap:anywhere}.pairs dd{margin:0;overflow-wrap:anywhere}
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
