"""Continuing a run: which checkpoint, whether it belongs to this run, and the options it runs with.

A resume takes the run's options from its checkpoint (or ``config.json`` before the first one);
only the options of :data:`~simclr_cli.config.RESUME_MAY_CHANGE` may differ, and every option
that may not is listed in one error.
"""

from __future__ import annotations

import contextlib
import json
from pathlib import Path
from typing import Any

from simclr_cli import distributed
from simclr_cli.config import RESUME_LAUNCH_GROUP, RESUME_MAY_CHANGE, PretrainConfig, flag_name
from simclr_cli.data.facts import recorded_dataset
from simclr_cli.errors import CheckpointError, DatasetError, DistributedError, ResumeConflictError
from simclr_cli.storage import checkpoint
from simclr_cli.storage.registry import RUN_CHECKPOINT


def resume_checkpoint_path(cfg: PretrainConfig) -> Path | None:
    """The checkpoint to resume from: ``--resume PATH``, the run's last one for ``auto``, or None.

    ``--resume auto`` with no checkpoint yet starts a fresh run (so one command both starts and
    continues a run).
    """
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        last = cfg.resolved_out / RUN_CHECKPOINT
        return last if last.exists() else None
    return Path(cfg.resume).expanduser()


def load_resume_checkpoint(path: Path, cfg: PretrainConfig) -> dict[str, Any]:
    """Load the checkpoint a resume continues from.

    Raises:
        CheckpointError: it cannot be loaded; where an intact ``checkpoint_epoch_N.pt`` lies
            beside it, the message names the newest one and the command that resumes from it
            (not a silent fall-back: the steps since are trained again, and a damaged file
            may say something about the disk).
    """
    try:
        return checkpoint.load_checkpoint(path)
    except CheckpointError as error:
        intact = intact_epoch_checkpoint(path)
        if intact is None:
            raise
        raise CheckpointError(
            f"{path}: {error.problem}; {path.parent} holds an intact {intact.name}: continue from "
            f"it with `simclr pretrain --resume {intact} --out {cfg.resolved_out}` (the steps "
            "after it are trained again)",
            problem=error.problem,
        ) from None


def intact_epoch_checkpoint(damaged: Path) -> Path | None:
    """The newest ``checkpoint_epoch_N.pt`` beside ``damaged`` that loads and resumes, or None."""

    def resumable(candidate: Path) -> None:
        check_resumable(checkpoint.load_checkpoint(candidate), candidate)

    return checkpoint.newest_intact_epoch_file(damaged, resumable)


def check_resume_compatible(payload: dict[str, Any], cfg: PretrainConfig, path: Path) -> None:
    """Raise unless ``payload`` continues the run ``cfg`` describes (same data, model, optimizer).

    Only the options of :data:`~simclr_cli.config.RESUME_MAY_CHANGE` may differ (the number of
    processes among them: the global batch may not, it fixes the schedule).

    Raises:
        CheckpointError: not a resumable checkpoint, or listing every differing option with
            both values, and the fix.
    """
    check_resumable(payload, path)
    refuse_differences(resume_differences(run_options(payload), cfg), path)


def check_resumable(payload: dict[str, Any], path: Path) -> None:
    """Raise unless ``payload`` is a pretraining checkpoint with an optimizer state.

    Raises:
        CheckpointError: a converted release file or an export without optimizer state.
    """
    if payload.get("kind") != "pretrain" or payload.get("optimizer") is None:
        raise CheckpointError(
            f"{path} is not a resumable pretraining checkpoint (no optimizer state); "
            "start a new run, or pass it to linear-eval instead"
        )


def refuse_differences(differences: list[tuple[str, str, str]], source: Path) -> None:
    """Raise one error listing every ``(flag, run's value, given value)`` of ``differences``.

    Raises:
        ResumeConflictError: when ``differences`` is not empty (exit code 2).
    """
    if not differences:
        return
    listed = "; ".join(f"{flag} {theirs} (given: {ours})" for flag, theirs, ours in differences)
    flags = " ".join(flag for flag, _, _ in differences)
    raise ResumeConflictError(
        f"{source} belongs to a run with {listed}; leave out {flags} to continue it as it was "
        "(`simclr pretrain --help` lists the options a resume may change), or start a new --out"
    )


def resume_differences(saved: dict[str, Any], cfg: PretrainConfig) -> list[tuple[str, str, str]]:
    """``(flag, run's value, given value)`` for each option given in ``cfg`` that may not change.

    An option is given when it is in ``cfg.model_fields_set`` (the CLI passes only the flags on
    the command line). A given value equal to what the run resolved an unset option to (``--stem
    cifar`` for a run with ``stem`` auto at 32 px) agrees with it.

    Args:
        saved: the run's resolved config (a checkpoint's ``config``, or ``config.json``).
        cfg: the options of this command.
    """
    current = cfg.model_dump(mode="json")
    fixed = set(cfg.model_fields_set) - set(RESUME_MAY_CHANGE) - {"resume", "out"}
    differences = []
    for name in (option for option in PretrainConfig.model_fields if option in fixed):
        if name not in saved:  # an option that older versions did not record
            continue
        theirs, ours = saved[name], current[name]
        derived = _derived(saved, name)
        if ours == theirs or (derived is not None and ours == derived):
            continue
        differences.append((flag_name(name), _shown(theirs, derived), _shown(ours)))
    return differences


def _derived(saved: dict[str, Any], name: str) -> Any:
    """What the run resolved option ``name`` to (``resolved_stem``, ...; the warmup in epochs)."""
    resolved = saved.get("resolved") or {}
    if name == "warmup_epochs":
        total, warmup = resolved.get("total_steps"), resolved.get("warmup_steps")
        epochs = saved.get("epochs")
        return warmup / (total / epochs) if total and epochs and warmup is not None else None
    derived = resolved.get(f"resolved_{name}")
    return derived if derived is not None else (saved.get("spec") or {}).get(name)


def _shown(value: Any, derived: Any = None) -> str:
    """An option's value as a user would type it; an unset one as ``auto (what it resolved to)``."""
    if value is None or value == "auto":
        return "unset" if derived is None else f"auto ({_shown(derived)})"
    if isinstance(value, bool):
        return "on" if value else "off"
    if isinstance(value, (list, tuple)):
        return ",".join(_shown(v) for v in value)
    if isinstance(value, float):
        return f"{value:g}"
    return str(value)


def run_options(payload: dict[str, Any]) -> dict[str, Any]:
    """A checkpoint's resolved config, with its model spec (``spec``) for the shapes it built."""
    return {**(payload.get("config") or {}), "spec": dict(payload.get("model") or {})}


def saved_run_options(cfg: PretrainConfig) -> tuple[dict[str, Any], Path] | None:
    """The options of the run a resume continues and where they were read, or None.

    From the checkpoint to resume (its resolved config); for ``--resume auto`` in a run folder
    without a checkpoint yet, from its ``config.json``; None for a fresh run.

    Raises:
        CheckpointError: the checkpoint is unreadable or not resumable.
    """
    path = resume_checkpoint_path(cfg)
    if path is not None:
        payload = load_resume_checkpoint(path, cfg)
        check_resumable(payload, path)
        return run_options(payload), path
    config_json = cfg.resolved_out / "config.json"
    if cfg.resume == "auto" and config_json.is_file():
        with contextlib.suppress(OSError, ValueError):  # unreadable: nothing to continue
            saved = json.loads(config_json.read_text(encoding="utf-8"))
            if isinstance(saved, dict):
                return saved, config_json
    return None


def continue_run_config(cfg: PretrainConfig) -> PretrainConfig:
    """The options a resume runs with: the run's own, with what this command may change.

    Raises:
        CheckpointError: a given option that may not change differs from the run's (all are
            listed in one line), or the checkpoint is not resumable.
    """
    found = saved_run_options(cfg)
    if found is None:
        return cfg
    saved, source = found
    refuse_differences(resume_differences(saved, cfg), source)
    if "dataset" in saved:  # a folder that moved: say so, naming the file that records it
        recorded_dataset(str(saved["dataset"]), source)
    return PretrainConfig(**resume_options(saved, cfg))


def resume_options(saved: dict[str, Any], cfg: PretrainConfig) -> dict[str, Any]:
    """The run's options updated with the changeable ones this command gives.

    ``--max-steps`` stops one command and ``--accept-new-data`` accepts the data of one
    resume: neither is taken from the run. Given one option of how
    the command is launched (device, processes, ...), all of them come from this command. A
    longer ``--epochs`` keeps the run's warmup steps when its warmup was automatic (it would
    otherwise grow with the run and raise the learning rate part-way through).
    """
    given = set(cfg.model_fields_set)
    options = {k: v for k, v in saved.items() if k in PretrainConfig.model_fields}
    here = {"resume", "out", "max_steps", "accept_new_data"}
    here |= given & set(RESUME_MAY_CHANGE)
    if given & set(RESUME_LAUNCH_GROUP):
        here |= set(RESUME_LAUNCH_GROUP)
    options.update({name: getattr(cfg, name) for name in here})
    warmup = _pinned_warmup_epochs(saved, cfg.epochs)
    if "epochs" in given and options.get("warmup_epochs") is None and warmup is not None:
        options["warmup_epochs"] = warmup
    return options


def _pinned_warmup_epochs(saved: dict[str, Any], epochs: int) -> float | None:
    """The run's automatic warmup in epochs, when ``epochs`` changes and it stays shorter."""
    pinned = _derived(saved, "warmup_epochs")
    if pinned is None or epochs == saved.get("epochs"):
        return None
    return pinned if pinned < epochs else None


def check_same_data(
    payload: dict[str, Any], cfg: PretrainConfig, images: int, steps_per_epoch: int, path: Path
) -> None:
    """Raise unless the data has as many images as the run was trained on.

    A dataset of another size (images added or removed since) would continue with another
    number of steps per epoch and another learning-rate schedule than the run's; with
    ``--accept-new-data`` it continues on the new data with the run's schedule
    (:func:`~simclr_cli.training.recipe.continued_schedule`). Checkpoints of earlier versions
    recorded no image count: their steps per epoch are compared.

    Raises:
        DatasetError: the data changed, saying how, and the two ways on.
    """
    run = payload.get("config") or {}
    resolved = run.get("resolved") or {}
    images_then, total = resolved.get("train_images"), resolved.get("total_steps")
    steps_then = resolved.get("steps_per_epoch")
    if steps_then is None and total and run.get("epochs"):
        steps_then = total // run["epochs"]
    if images_then is None:  # a checkpoint of an earlier version: compare the steps per epoch
        same = steps_then in (None, steps_per_epoch)
    else:
        same = images_then == images
    if same or cfg.accept_new_data:
        return
    changed = f"{images_then} images then, {images} now; " if images_then is not None else ""
    raise DatasetError(
        f"{cfg.dataset} is not the data {path} was trained on ({changed}{steps_then} steps per "
        f"epoch then, {steps_per_epoch} now); restore it, or continue on the data as it is now "
        f"with --accept-new-data, which keeps the run's schedule ({total} steps)"
    )


def check_same_start(payload: dict[str, Any] | None, path: Path | None) -> None:
    """Raise unless every rank resumes from the same step as rank 0 (e.g. no shared folder).

    Raises:
        DistributedError: this rank found another checkpoint, or none, than rank 0.
    """
    if distributed.world_size() == 1:
        return
    mine = None if payload is None else int(payload["global_step"])
    expected = distributed.broadcast_object(mine)
    if mine != expected:
        raise DistributedError(
            f"rank {distributed.rank()} would start at step {mine} but rank 0 at step {expected} "
            f"({path or 'no checkpoint'}); put --out on a folder every node shares"
        )
