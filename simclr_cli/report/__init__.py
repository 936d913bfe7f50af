"""``simclr report``: one self-contained HTML page about a run folder, and the PNGs it shows.

Sections, each present when its inputs are: training curves (``metrics.jsonl``), linear
evaluation (``linear_eval.json``: header numbers, confusion matrix, per-class accuracy) or, for
a ``simclr finetune`` folder, the fine-tuned classifier (``finetune.json``: its accuracy beside
the baselines, curves of each classifier, confusion matrix, per-class accuracy),
nearest neighbours and a 2-D PCA map of ``h`` (the run's checkpoint and its dataset, or features
exported by ``simclr features``), and the run's configuration and summary. A missing input
becomes a note on the page and on the terminal, not a failure. Images are embedded as base64,
so the page opens offline; the PNGs are written beside it. Everything is staged in a temporary
folder inside the output folder and renamed into place at the end, ``report.html`` last.

The parts: :mod:`~simclr_cli.report.run` reads the folder, :mod:`~simclr_cli.report.neighbours`
computes neighbours and the PCA map, :mod:`~simclr_cli.report.plots` draws the figures,
:mod:`~simclr_cli.report.page` writes the HTML; the command and the writing are here.
"""

from __future__ import annotations

import contextlib
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import Any

from simclr_cli.console import get_console
from simclr_cli.errors import import_extra
from simclr_cli.report.neighbours import find_neighbours, neighbours_json
from simclr_cli.report.page import build_sections, render_html
from simclr_cli.report.plots import (
    figure_png,
    plot_curves,
    plot_embedding,
    plot_finetune_curves,
    plot_linear_eval,
    plot_neighbours,
)
from simclr_cli.report.run import is_finetune_run, read_run
from simclr_cli.storage import fileio

REPORT = "report.html"


NEIGHBOURS_JSON = "neighbours.json"


def run_report(cfg: Any) -> dict[str, Any]:
    """``simclr report``: write ``report.html`` and its PNGs for a run folder.

    Args:
        cfg: a :class:`simclr_cli.config.ReportConfig`.

    Returns:
        A summary: the page, the images, and the notes on what was left out.

    Raises:
        MissingExtraError: matplotlib (the ``plots`` extra) is not installed.
        DatasetError, CheckpointError: the folder is not a run, the features do not fit.
        WriteError: the output folder cannot be written (checked first).
    """
    import_extra("matplotlib", "plots", "simclr report")
    fileio.check_writable(Path(cfg.resolved_out) / REPORT)  # before the work, not after it
    run = read_run(Path(cfg.run_dir))
    figures: dict[str, Any] = {}
    sections: list[str] = []
    finetuned = is_finetune_run(run)
    if run.records:
        figures["curves.png"] = (plot_finetune_curves if finetuned else plot_curves)(run.records)
    if run.finetune is not None:
        figures.update(plot_linear_eval(run.finetune, "fine-tuned classifier"))
    elif run.linear_eval is not None:
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
            fileio.commit(stage / name, out / name)  # fsync and rename: simclr_cli.storage.fileio
            written.append(out / name)
    return written


@contextlib.contextmanager
def _staging(out: Path) -> Iterator[Path]:
    stage = Path(tempfile.mkdtemp(dir=out, prefix=".report-"))
    try:
        yield stage
    finally:
        shutil.rmtree(stage, ignore_errors=True)
