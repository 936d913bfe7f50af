"""From the options of ``simclr pretrain`` to the method's plain arguments: the model's
self-description, the learning-rate schedule and the step at which the run ends.

The method (:mod:`simclr_cli.method`) takes plain numbers and names; this is the one place
where a :class:`~simclr_cli.config.PretrainConfig` becomes them.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from simclr_cli.config import PretrainConfig
from simclr_cli.data.facts import normalization
from simclr_cli.method.model import model_spec
from simclr_cli.method.schedule import Schedule, warmup_steps_for


def build_spec(cfg: PretrainConfig) -> dict[str, Any]:
    """The self-description of the model that every checkpoint carries."""
    stats = normalization(cfg.dataset_kind)
    return model_spec(
        arch=cfg.arch,
        stem=cfg.resolved_stem,
        head=cfg.head,
        projection_dim=cfg.projection_dim,
        hidden_dim=cfg.hidden_dim,
        image_size=cfg.resolved_image_size,
        mean=list(stats[0]) if stats is not None else None,
        std=list(stats[1]) if stats is not None else None,
    )


def build_schedule(cfg: PretrainConfig, steps_per_epoch: int) -> Schedule:
    """The schedule spans ``--epochs``; ``--max-steps`` only stops the run early.

    So a run stopped by ``--max-steps`` and resumed without it follows the schedule of an
    uninterrupted run step for step.
    """
    total = cfg.epochs * steps_per_epoch
    warmup = warmup_steps_for(cfg.warmup_epochs, steps_per_epoch, total)
    return Schedule(cfg.resolved_lr, total, warmup)


def continued_schedule(
    cfg: PretrainConfig, steps_per_epoch: int, run: Mapping[str, Any]
) -> Schedule:
    """The schedule of a resumed run, from its resolved config ``run`` (a checkpoint's).

    On data of the run's size it is :func:`build_schedule`'s, also with another ``--epochs``.
    A run continued on data of another size (``--accept-new-data``, now or at an earlier
    resume) keeps its own total and warmup steps, so its learning rate goes on as it would have;
    another ``--epochs`` adds or removes epochs of the data as it is now.
    """
    schedule = build_schedule(cfg, steps_per_epoch)
    resolved = run.get("resolved") or {}
    total, warmup = resolved.get("total_steps"), resolved.get("warmup_steps")
    epochs = run.get("epochs")
    if total is None or warmup is None or not epochs or total == epochs * steps_per_epoch:
        return schedule
    total = max(1, total + (cfg.epochs - epochs) * steps_per_epoch)
    return Schedule(cfg.resolved_lr, total, min(warmup, total))


def last_step(cfg: PretrainConfig, schedule: Schedule) -> int:
    """The step count at which the run ends: ``--epochs`` or ``--max-steps``, the sooner."""
    if cfg.max_steps is None:
        return schedule.total_steps
    return min(schedule.total_steps, cfg.max_steps)
