"""Reading a run folder for ``simclr report``: leniently, so that what is missing or unreadable
becomes a note on the page instead of a failure."""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from simclr_cli.errors import DatasetError
from simclr_cli.storage.registry import RUN_CHECKPOINT


@dataclass
class RunFiles:
    """What a run folder holds, read leniently (unreadable parts become notes)."""

    root: Path
    config: dict[str, Any] | None = None
    records: list[dict[str, Any]] = field(default_factory=list)
    linear_eval: dict[str, Any] | None = None
    finetune: dict[str, Any] | None = None  # finetune.json of a `simclr finetune` run
    checkpoint: Path | None = None
    notes: list[str] = field(default_factory=list)


def read_run(root: Path) -> RunFiles:
    """Read ``config.json``, ``metrics.jsonl``, ``linear_eval.json`` (or a fine-tuning run's
    ``finetune.json``) and find the checkpoint.

    Raises:
        DatasetError: the folder holds none of them (not a run folder).
    """
    run = RunFiles(root)
    run.config = read_json(root / "config.json", run.notes)
    run.records = read_metrics(root / "metrics.jsonl", run.notes)
    run.linear_eval = read_json(root / "linear_eval.json", run.notes, missing_note=False)
    run.finetune = read_json(root / "finetune.json", run.notes, missing_note=False)
    last = root / RUN_CHECKPOINT
    run.checkpoint = last if last.is_file() else None
    found = (run.config, run.linear_eval, run.finetune, run.checkpoint)
    if not run.records and all(part is None for part in found):
        raise DatasetError(
            f"{root} holds no config.json, metrics.jsonl, linear_eval.json, finetune.json or "
            "checkpoint_last.pt; give a run folder written by simclr pretrain or simclr finetune"
        )
    if is_finetune_run(run):
        return run  # no linear evaluation or pretraining checkpoint to miss
    if run.linear_eval is None:
        run.notes.append(
            "no linear_eval.json: run `simclr linear-eval --checkpoint "
            f"{root} --dataset ...` for the accuracy section"
        )
    if run.checkpoint is None:
        run.notes.append("no checkpoint_last.pt: no nearest neighbours or embedding map")
    return run


def is_finetune_run(run: RunFiles) -> bool:
    """A folder of ``simclr finetune``: its results, or records of its classifiers."""
    return run.finetune is not None or any("arm" in record for record in run.records)


def read_json(path: Path, notes: list[str], missing_note: bool = True) -> dict | None:
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


def finite(value: Any) -> bool:
    """Whether a record value is a finite number (a record may hold NaN, inf or nothing)."""
    return isinstance(value, (int, float)) and math.isfinite(value)
