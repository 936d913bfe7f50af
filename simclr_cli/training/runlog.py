"""The run folder's record: ``config.json``, ``metrics.jsonl`` and TensorBoard events."""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

from simclr_cli.config import PretrainConfig
from simclr_cli.method.schedule import Schedule
from simclr_cli.storage import fileio

# The images of a run limited by --limit: one line each, its file (folders) or its index.
IMAGES_FILE = "images.txt"
# metrics.jsonl keys that are not curves: the x axes, and the k a kNN accuracy was measured at.
NOT_SCALARS = ("step", "epoch", "time", "knn_k")


class RunLog:
    """``config.json``, ``metrics.jsonl`` and (when installed) TensorBoard events; rank 0 only."""

    def __init__(self, out: Path, enabled: bool) -> None:
        self.out = out
        self.enabled = enabled
        self.writer: Any = None

    def open(self, config: dict[str, Any], resume_step: int | None) -> None:
        """Create the folder, write ``config.json`` and drop metrics past a resumed step."""
        if not self.enabled:
            return
        self.out.mkdir(parents=True, exist_ok=True)
        fileio.remove_dead_temps(self.out)  # saves of earlier processes that were killed
        fileio.write_json_atomic(self.out / "config.json", config)
        # A fresh start drops what a run killed before its first checkpoint logged.
        truncate_metrics(self.out / "metrics.jsonl", resume_step or 0)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # the tensorboard extra is optional
            return
        # A resumed run trains again the steps logged after its checkpoint: TensorBoard drops
        # the earlier events from that step on, as truncate_metrics does for metrics.jsonl.
        purge = (resume_step or 0) + 1
        self.writer = SummaryWriter(log_dir=str(self.out), purge_step=purge)

    def write_images(self, names: list[str]) -> None:
        """Write :data:`IMAGES_FILE`: the file (or the index in its split) of each image."""
        if self.enabled:
            fileio.write_text_atomic(self.out / IMAGES_FILE, "".join(f"{n}\n" for n in names))

    def log(self, record: dict[str, Any]) -> None:
        """Append one ``metrics.jsonl`` line and mirror numbers to TensorBoard."""
        if not self.enabled:
            return
        fileio.append_line(self.out / "metrics.jsonl", json.dumps(record))
        if self.writer is not None:
            for key, value in record.items():
                if key not in NOT_SCALARS and isinstance(value, (int, float)):
                    self.writer.add_scalar(f"pretrain/{key}", value, record["step"])

    def close(self) -> None:
        """Flush TensorBoard events."""
        if self.writer is not None:
            self.writer.close()


def truncate_metrics(path: Path, step: int) -> None:
    """Keep only ``metrics.jsonl`` records up to ``step``, so a resumed log stays monotone.

    A run killed after its last checkpoint logged steps that the resumed run trains again; one
    killed before its first checkpoint logged steps that the fresh start (``step`` 0) trains again.
    """
    if not path.exists():
        return
    kept = []
    for line in path.read_text(encoding="utf-8").splitlines():
        try:
            record = json.loads(line)
        except json.JSONDecodeError:  # a line cut short by a kill
            continue
        if isinstance(record, dict) and record.get("step", math.inf) <= step:
            kept.append(line + "\n")
    fileio.write_text_atomic(path, "".join(kept))


def resolved_config(cfg: PretrainConfig, schedule: Schedule | None = None) -> dict[str, Any]:
    """The options as given plus every derived value, JSON-able (``config.json``, checkpoints).

    With ``schedule``, also the step counts it resolved to (``total_steps``, ``warmup_steps``).
    """
    resolved = cfg.derived_values()
    if schedule is not None:
        resolved.update(total_steps=schedule.total_steps, warmup_steps=schedule.warmup_steps)
    return {**cfg.model_dump(mode="json"), "resolved": resolved}
