"""SimCLR pretraining, as phases: data, model, loss, optimizer, schedule, resume, loop.

:func:`run_pretrain` is the library entry point: it launches one worker per process
(:func:`simclr_cli.distributed.launch`), and each worker runs :func:`pretrain`. Every process
builds the same model and optimizer and sees its own shard of each epoch; only rank 0 prints and
writes files. Nothing is lost: checkpoints are atomic and hold everything a resume needs, a
SIGINT/SIGTERM finishes the current step and writes one, and a non-finite loss stops the run
without overwriting the last good checkpoint.

Randomness is a pure function of ``(seed, step, rank)``: the sampler's order depends on
``(seed, epoch)`` and the generators are reseeded before every step, so a run resumed at any
step draws the same order and augmentations as an uninterrupted one (exactly so with
``--workers 0`` or ``--augment-on device``; DataLoader worker processes keep their own streams).
``--data-on device`` (:mod:`simclr_cli.resident`) replaces the DataLoader by batches gathered
from the whole set held on the device, in the same order, so it trains the same weights.

Host syncs: the step itself never reads a device value; the loss is summed on the device and
read (and checked finite) once per ``--log-every`` window. fp16's GradScaler is the exception
(torch reads its inf check once per step); bf16 and fp32 need no scaler.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020 (arXiv:2002.05709), section 2 and appendix B.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import math
import os
import random
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from simclr_cli import (
    allocator,
    checkpoint,
    distributed,
    fileio,
    inference,
    metrics,
    optim,
    resident,
    signals,
)
from simclr_cli.augment import (
    BatchedSimCLRAugment,
    SimCLRAugment,
    TwoViews,
    to_uint8_transform,
)
from simclr_cli.config import RESUME_LAUNCH_GROUP, RESUME_MAY_CHANGE, PretrainConfig, flag_name
from simclr_cli.console import StepProgress, get_console, phase
from simclr_cli.data import (
    build_dataset,
    ignore_stop_signals,
    normalization,
    pretrain_split,
    skipped_files,
)
from simclr_cli.errors import (
    CheckpointError,
    DatasetError,
    DistributedError,
    OutputExistsError,
    SimCLRError,
    TrainingError,
    plural,
)
from simclr_cli.loss import NTXentLoss
from simclr_cli.model import SimCLR, build_simclr, model_spec

# Labelled subsets the kNN monitor embeds: a bank from the train split, queries from the test split.
KNN_BANK_IMAGES = 10_000
KNN_QUERY_IMAGES = 2_000
# Datasets with a labelled train and test split (image folders have no test split).
LABELLED_KINDS = ("cifar10", "cifar100", "stl10", "shapes")


class Interrupted(SimCLRError):
    """SIGINT/SIGTERM stopped the run after a checkpoint was written (exit code 130)."""

    exit_code = 130


# ----------------------------------------------------------------------------------------------
# entry points


def run_pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Pretrain a SimCLR model as ``cfg`` describes, on one or many processes.

    Args:
        cfg: the validated options of ``simclr pretrain``.

    Returns:
        The summary of rank 0 (see :func:`pretrain`).

    Raises:
        OutputExistsError: the run folder already holds a run and ``--resume`` was not given.
        Interrupted: SIGINT/SIGTERM; a checkpoint was written first.
        TrainingError: the loss became non-finite.
    """
    cfg = continue_run_config(cfg)  # a resume takes the run's options from the run
    check_run_dir(cfg)  # before any process starts: one clear error, not one per rank
    check_memory(cfg)
    return distributed.launch(pretrain_worker, cfg)


def available_memory() -> int | None:
    """Bytes of RAM the kernel can give without swapping (``MemAvailable``), None if unknown."""
    try:
        with open("/proc/meminfo", encoding="ascii") as meminfo:
            for line in meminfo:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        return None
    return None


def step_memory(cfg: PretrainConfig) -> tuple[int, int]:
    """Estimated bytes of one training step: ``(per image of the 2n views, fixed)``.

    The model runs once on the ``meta`` device (shapes only, no memory, no compute); the outputs
    of its layers (what backward keeps; in-place ReLUs reuse their input) give the activations
    of one image, fp32. The fixed part is the weights, their gradients and two optimizer states.
    """
    with torch.device("meta"):
        net = build_simclr(build_spec(cfg), zero_init_residual=cfg.zero_init_residual)
    saved = [0]

    def count(module: nn.Module, inputs: Any, output: Any) -> None:
        if isinstance(output, Tensor) and not getattr(module, "inplace", False):
            saved[0] += output.numel() * output.element_size()

    leaves = [m for m in net.modules() if not list(m.children())]
    hooks = [m.register_forward_hook(count) for m in leaves]
    size = cfg.resolved_image_size
    try:
        net(torch.empty(2, 3, size, size, device="meta"))
    finally:
        for hook in hooks:
            hook.remove()
    weights = sum(p.numel() * p.element_size() for p in net.parameters())
    return saved[0] // 2, 4 * weights


def check_memory(cfg: PretrainConfig) -> None:
    """Refuse a CPU run whose first step would not fit in RAM, naming a batch that would.

    ``SIMCLR_SKIP_MEMORY_CHECK=1`` skips the check (the estimate is of the activations kept
    for backward at fp32; the real peak depends on the allocator).

    Raises:
        TrainingError: the estimate exceeds the available memory.
    """
    if cfg.resolved_device != "cpu" or os.environ.get("SIMCLR_SKIP_MEMORY_CHECK", "") not in (
        "",
        "0",
    ):
        return
    available = available_memory()
    if available is None:
        return
    per_image, fixed = step_memory(cfg)
    processes = cfg.procs_per_node
    need = processes * (fixed + 2 * cfg.per_process_batch_size * per_image)
    if need <= available:
        return
    images = max(0, available // processes - fixed) // (2 * per_image)  # per process
    fits = 2 ** int(math.log2(images * cfg.world_size)) if images * cfg.world_size >= 2 else 0
    advice = f"lower --batch-size to {fits}" if fits >= 2 else "use a smaller --image-size"
    raise TrainingError(
        f"the first step needs about {need / 2**30:.1f} GiB of memory (batch "
        f"{cfg.batch_size} at {cfg.resolved_image_size} px, {cfg.resolved_stem} stem) but "
        f"{available / 2**30:.1f} GiB are available; {advice} or a smaller --image-size "
        "(SIMCLR_SKIP_MEMORY_CHECK=1 trains anyway)"
    )


def pretrain_worker(cfg: PretrainConfig) -> dict[str, Any]:
    """The per-process function :func:`run_pretrain` launches (picklable, module level)."""
    return pretrain(cfg)


def check_run_dir(cfg: PretrainConfig) -> None:
    """Refuse to start a fresh run on top of an existing one (its checkpoints would be replaced).

    Raises:
        OutputExistsError: the run folder has ``checkpoint_last.pt`` and ``--resume`` is unset.
    """
    last = cfg.resolved_out / "checkpoint_last.pt"
    if cfg.resume is None and last.exists():
        raise OutputExistsError(
            f"{cfg.resolved_out} already holds a run ({last.name}); continue it with "
            f"--resume auto --out {cfg.resolved_out}, or choose another --out"
        )


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run pretraining in this process (one rank of the launch).

    Phases: device, resume checkpoint, data, model, loss, optimizer, schedule, restore, loop.

    Returns:
        A summary dict: ``out``, ``checkpoint``, ``epochs``, ``global_step``, ``final_loss``,
        ``time_s``, ``images_per_s``, ``seconds_per_epoch``, ``knn_accuracy``,
        ``next_commands`` (linear evaluation, export, report), ``resumed_from``.
    """
    device = select_device(cfg)
    allocator.configure_for(device.type)  # in each process: spawned ranks are fresh interpreters
    resume_path = resume_checkpoint_path(cfg)
    payload = checkpoint.load_checkpoint(resume_path) if resume_path else None
    if payload is not None and resume_path is not None:
        check_resume_compatible(payload, cfg, resume_path)
    check_same_start(payload, resume_path)
    seed_everything(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    phase(f"loading data ({cfg.dataset}{f', first {cfg.limit} images' if cfg.limit else ''})")
    data = build_pretrain_data(cfg, device)
    spec = build_spec(cfg)
    phase(f"building the model ({cfg.arch}, {spec['stem']} stem, {device.type})")
    net = build_simclr(spec, zero_init_residual=cfg.zero_init_residual)
    model = prepare_model(net, cfg, device)
    criterion = NTXentLoss(cfg.temperature)
    optimizer = optim.build_optimizer(
        net,
        optimizer=cfg.optimizer,
        lr=cfg.resolved_lr,
        weight_decay=cfg.resolved_weight_decay,
        momentum=cfg.momentum,
    )
    scaler = build_scaler(cfg, device)
    schedule = build_schedule(cfg, data.steps_per_epoch)
    trainer = Trainer(cfg, device, spec, net, model, criterion, optimizer, scaler, schedule, data)
    if payload is not None:
        trainer.restore(payload)
    trainer.resumed_from = str(resume_path) if resume_path else None
    return trainer.fit()


# ----------------------------------------------------------------------------------------------
# phases


def select_device(cfg: PretrainConfig) -> torch.device:
    """The device of this process (``cuda:<local rank>`` or the CPU), with determinism settings."""
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic  # fixed shapes: autotune once
    return inference.process_device(cfg.resolved_device)


def resume_checkpoint_path(cfg: PretrainConfig) -> Path | None:
    """The checkpoint to resume from: ``--resume PATH``, the run's last one for ``auto``, or None.

    ``--resume auto`` with no checkpoint yet starts a fresh run (so one command both starts and
    continues a run).
    """
    if cfg.resume is None:
        return None
    if cfg.resume == "auto":
        last = cfg.resolved_out / "checkpoint_last.pt"
        return last if last.exists() else None
    return Path(cfg.resume).expanduser()


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
        CheckpointError: when ``differences`` is not empty.
    """
    if not differences:
        return
    listed = "; ".join(f"{flag} {theirs} (given: {ours})" for flag, theirs, ours in differences)
    flags = " ".join(flag for flag, _, _ in differences)
    raise CheckpointError(
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
        payload = checkpoint.load_checkpoint(path)
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
    return PretrainConfig(**resume_options(saved, cfg))


def resume_options(saved: dict[str, Any], cfg: PretrainConfig) -> dict[str, Any]:
    """The run's options updated with the changeable ones this command gives.

    ``--max-steps`` stops one command and is never taken from the run. Given one option of how
    the command is launched (device, processes, ...), all of them come from this command. A
    longer ``--epochs`` keeps the run's warmup steps when its warmup was automatic (it would
    otherwise grow with the run and raise the learning rate part-way through).
    """
    given = set(cfg.model_fields_set)
    options = {k: v for k, v in saved.items() if k in PretrainConfig.model_fields}
    here = {"resume", "out", "max_steps", *(given & set(RESUME_MAY_CHANGE))}
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


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def step_seed(seed: int, step: int, rank: int) -> int:
    """A well-mixed seed for the randomness of one optimizer step on one rank."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


@dataclass
class PretrainData:
    """The training stream of this process.

    Attributes:
        loader: yields ``((x_i, x_j), labels)`` (CPU augmentation) or ``(uint8 images, labels)``
            (a DataLoader, or a :class:`~simclr_cli.resident.ResidentLoader` with ``--data-on
            device``, whose labels are None).
        sampler: this rank's shard of each epoch; ``set_epoch`` reshuffles.
        steps_per_epoch: optimizer steps per epoch (the same on every rank).
        device_augment: the batched augmentation for ``--augment-on device``, else None.
        placement: where the images live (``--data-on``) and why.
    """

    loader: DataLoader | resident.ResidentLoader
    sampler: ResumableSampler
    steps_per_epoch: int
    device_augment: BatchedSimCLRAugment | None
    placement: resident.DataPlacement


class ResumableSampler(Sampler[int]):
    """:class:`DistributedSampler` order that can start part-way into an epoch.

    Each epoch is a fixed permutation of ``(seed, epoch)``, split across ranks, with the tail
    dropped so every rank gets the same number of indices; ``skip`` leaves out the indices of
    batches already trained on before an interruption.
    """

    def __init__(self, dataset: Dataset, num_replicas: int, rank: int, seed: int) -> None:
        self.inner: DistributedSampler = DistributedSampler(
            dataset, num_replicas=num_replicas, rank=rank, shuffle=True, seed=seed, drop_last=True
        )
        self.skip = 0

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the permutation of ``epoch`` and skip its first ``skip`` indices on this rank."""
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip


def build_pretrain_data(cfg: PretrainConfig, device: torch.device) -> PretrainData:
    """The pretraining loader of this process (labels are loaded but not used by the loss).

    ``--augment-on cpu``: DataLoader workers produce the two views per image (PIL/tensor ops).
    ``--augment-on device``: workers only decode to fixed-size uint8 tensors; both views are
    made on the training device for the whole batch at once.
    """
    size = cfg.resolved_image_size
    stats = normalization(cfg.dataset_kind)
    mean, std = (list(stats[0]), list(stats[1])) if stats is not None else (None, None)
    views = {
        "jitter_strength": cfg.resolved_jitter_strength,
        "blur": cfg.resolved_blur,
        "mean": mean,
        "std": std,
        "crop_scale": cfg.crop_scale,
        "flip": cfg.flip,
    }
    device_augment = None
    transform: Callable[[Any], Any]
    if cfg.augment_on == "device":
        transform = to_uint8_transform(size)
        device_augment = BatchedSimCLRAugment(size, **views).to(device)
    else:
        transform = TwoViews(SimCLRAugment(size, **views))
    dataset = build_dataset(
        cfg.dataset, pretrain_split(cfg.dataset_kind), cfg.data_dir, transform, limit=cfg.limit
    )
    skipped = skipped_files(dataset)
    if skipped:  # reported once for the run, not per image
        get_console().print(
            f"[yellow]skipped {plural(skipped, 'unreadable image file')} in {cfg.dataset}"
        )
    per_process = cfg.per_process_batch_size
    size_of_dataset = len(dataset)  # type: ignore[arg-type]  # every dataset here is Sized
    if size_of_dataset < cfg.batch_size:
        raise DatasetError(
            f"{cfg.dataset} has {plural(size_of_dataset, 'training image')}, fewer than one "
            f"batch of {cfg.batch_size}; lower --batch-size or raise --limit"
        )
    sampler = ResumableSampler(dataset, distributed.world_size(), distributed.rank(), cfg.seed)
    nbytes = resident.decoded_bytes(size_of_dataset, size)
    placement = resident.choose_placement(cfg.data_on, cfg.augment_on, device, nbytes)
    loader: DataLoader | resident.ResidentLoader
    if placement.data_on == "device":
        if distributed.is_main():  # decoding the whole set takes a moment: say what happens
            get_console().print(f"decoding the training set once: {placement.reason}")
        loader = resident_loader(dataset, size_of_dataset, sampler, cfg, device)
    else:
        loader = DataLoader(
            dataset,
            batch_size=per_process,
            sampler=sampler,
            num_workers=cfg.workers,
            pin_memory=device.type == "cuda",
            drop_last=True,  # full batches only: NT-Xent's negatives and BN statistics comparable
            persistent_workers=cfg.workers > 0,
            worker_init_fn=ignore_stop_signals,
        )
    steps = len(sampler.inner) // per_process
    return PretrainData(loader, sampler, steps, device_augment, placement)


def resident_loader(
    dataset: Dataset,
    num_images: int,
    sampler: ResumableSampler,
    cfg: PretrainConfig,
    device: torch.device,
) -> resident.ResidentLoader:
    """Decode the training set once and hold it on ``device`` (``--data-on device``)."""
    images = resident.decode_all(dataset, num_images, cfg.resolved_image_size, cfg.workers)
    return resident.ResidentLoader(images.to(device), sampler, cfg.per_process_batch_size)


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


def prepare_model(net: SimCLR, cfg: PretrainConfig, device: torch.device) -> nn.Module:
    """Move ``net`` to the device and wrap it for training; ``net`` stays the unwrapped module.

    Order matters: global batch norm replaces modules, so it comes before DDP (which registers
    the parameters it all-reduces), and compilation wraps the finished module.
    """
    net.to(device)
    if cfg.resolved_channels_last:
        net.to(memory_format=torch.channels_last)  # NHWC convolutions: faster on GPUs and oneDNN
    model: nn.Module = net
    if cfg.resolved_sync_bn and distributed.world_size() > 1:
        model = distributed.convert_sync_batchnorm(model, device)  # apply global BN before DDP
        assert model is net, "conversion replaces BN children in place, sharing parameters"
    if distributed.world_size() > 1:
        model = distributed.wrap_ddp(model, device)
    if cfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]  # an nn.Module at run time
    return model


def build_scaler(cfg: PretrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (its narrow range underflows small gradients); None otherwise."""
    if cfg.resolved_precision == "fp16" and device.type == "cuda":
        return torch.amp.GradScaler("cuda")
    return None


@dataclass(frozen=True)
class Schedule:
    """Per-step learning rate: linear warmup, then cosine decay to zero (paper appendix B.6)."""

    base_lr: float
    total_steps: int
    warmup_steps: int

    def __call__(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        return optim.warmup_cosine(step, self.total_steps, self.warmup_steps, self.base_lr)


def build_schedule(cfg: PretrainConfig, steps_per_epoch: int) -> Schedule:
    """The schedule spans ``--epochs``; ``--max-steps`` only stops the run early.

    So a run stopped by ``--max-steps`` and resumed without it follows the schedule of an
    uninterrupted run step for step.
    """
    total = cfg.epochs * steps_per_epoch
    warmup = optim.warmup_steps_for(cfg.warmup_epochs, steps_per_epoch, total)
    return Schedule(cfg.resolved_lr, total, warmup)


def last_step(cfg: PretrainConfig, schedule: Schedule) -> int:
    """The step count at which the run ends: ``--epochs`` or ``--max-steps``, the sooner."""
    if cfg.max_steps is None:
        return schedule.total_steps
    return min(schedule.total_steps, cfg.max_steps)


# ----------------------------------------------------------------------------------------------
# stopping on signals (one mechanism for the package: simclr_cli.signals)

StopRequest = signals.StopRequest
stop_on_signals = signals.stop_requests


# ----------------------------------------------------------------------------------------------
# run folder: config, metrics, TensorBoard


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
        write_json_atomic(self.out / "config.json", config)
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


def write_json_atomic(path: Path, obj: Any) -> None:
    """Write JSON atomically (never a half-written file); see :mod:`simclr_cli.fileio`."""
    fileio.write_json_atomic(path, obj)


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
    resolved = {
        name: getattr(cfg, name)
        for name in (
            "resolved_image_size",
            "resolved_stem",
            "resolved_jitter_strength",
            "resolved_blur",
            "resolved_weight_decay",
            "resolved_lr",
            "resolved_device",
            "resolved_precision",
            "resolved_channels_last",
            "resolved_sync_bn",
            "world_size",
            "per_process_batch_size",
            "dataset_kind",
        )
    }
    if schedule is not None:
        resolved.update(total_steps=schedule.total_steps, warmup_steps=schedule.warmup_steps)
    return {**cfg.model_dump(mode="json"), "resolved": resolved}


# ----------------------------------------------------------------------------------------------
# the loop


@dataclass
class Window:
    """Loss and throughput since the last log line; the loss sum stays on the device."""

    loss_sum: Tensor | None = None
    steps: int = 0
    start: float = field(default_factory=time.perf_counter)

    def add(self, loss: Tensor) -> None:
        """Accumulate without a host sync."""
        self.loss_sum = loss if self.loss_sum is None else self.loss_sum + loss
        self.steps += 1


class Trainer:
    """Holds the built pieces of a run and runs its epochs (see :func:`pretrain`)."""

    def __init__(
        self,
        cfg: PretrainConfig,
        device: torch.device,
        spec: dict[str, Any],
        net: SimCLR,
        model: nn.Module,
        criterion: nn.Module,
        optimizer: torch.optim.Optimizer,
        scaler: torch.amp.GradScaler | None,
        schedule: Schedule,
        data: PretrainData,
    ) -> None:
        self.cfg, self.device, self.spec = cfg, device, spec
        self.net, self.model, self.criterion = net, model, criterion
        self.optimizer, self.scaler, self.schedule, self.data = optimizer, scaler, schedule, data
        self.out = cfg.resolved_out
        self.main = distributed.is_main()
        self.rank, self.world_size = distributed.rank(), distributed.world_size()
        self.global_step = 0
        self.epoch = 0  # completed epochs
        self.metrics: dict[str, Any] = {}
        self.train_time = 0.0
        self.images_seen = 0
        self.resumed_from: str | None = None
        self.knn_sets: tuple[Dataset, Dataset] | None = None
        self.log = RunLog(self.out, self.main)
        self.console = get_console()

    # -- state ------------------------------------------------------------------------------
    def restore(self, payload: dict[str, Any]) -> None:
        """Load weights, optimizer, scaler and position from a checkpoint payload."""
        self.net.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload.get("scaler") is not None:
            self.scaler.load_state_dict(payload["scaler"])
        self.global_step = int(payload["global_step"])
        self.epoch = self.global_step // self.data.steps_per_epoch
        self.metrics = dict(payload.get("metrics") or {})

    def payload(self) -> dict[str, Any]:
        """Everything a resume or an evaluation needs, as primitives and tensors."""
        return {
            "format": checkpoint.FORMAT,
            "format_version": checkpoint.FORMAT_VERSION,
            "kind": "pretrain",
            "model": self.spec,
            "dataset": self.cfg.dataset,
            "epoch": self.epoch,
            "global_step": self.global_step,
            "config": self.run_config(),
            "metrics": dict(self.metrics),
            "state_dict": self.net.state_dict(),  # the unwrapped module: no "module." prefix
            "optimizer": self.optimizer.state_dict(),
            "scaler": self.scaler.state_dict() if self.scaler is not None else None,
            "rng": rng_state(),
            "converted_from": None,
        }

    def run_config(self) -> dict[str, Any]:
        """:func:`resolved_config` plus where the data lives (``--data-on`` resolved, and why)."""
        config = resolved_config(self.cfg, self.schedule)
        placement = self.data.placement
        config["resolved"].update(data_on=placement.data_on, data_on_reason=placement.reason)
        return config

    def save(self, final: bool = False) -> Path | None:
        """Write ``checkpoint_last.pt`` (and link ``checkpoint_epoch_N.pt`` to it when due);
        rank 0 only."""
        if not self.main:
            return None
        payload = self.payload()
        last = self.out / "checkpoint_last.pt"
        checkpoint.save_checkpoint(payload, last)
        at_epoch_end = self.global_step % self.data.steps_per_epoch == 0
        due = self.epoch % self.cfg.checkpoint_every == 0 or final
        if at_epoch_end and self.epoch > 0 and due:
            # One copy on disk: the numbered file is a hard link to the complete last one. The
            # next save renames a new file over checkpoint_last.pt and leaves this one as it is.
            numbered = self.out / f"checkpoint_epoch_{self.epoch}.pt"
            fileio.link_or_copy(last, numbered)
            return numbered
        return last

    # -- loop -------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until ``--epochs`` (or ``--max-steps``) is reached; return the summary."""
        config = self.run_config()
        self.log.open(config, self.global_step if self.resumed_from else None)
        if self.resumed_from:
            self.console.print(f"resuming from {self.resumed_from} at step {self.global_step}")
            # A record without a loss: `simclr report` marks where the run was continued.
            record = {"step": self.global_step, "resumed_from": self.resumed_from}
            record.update(epoch=round(self.global_step / self.data.steps_per_epoch, 4))
            self.log.log({**record, "time": time.time()})
        phase(
            f"training {last_step(self.cfg, self.schedule)} steps of {self.cfg.batch_size} images "
            f"({self.data.steps_per_epoch} per epoch); the first steps are the slowest"
        )
        checkpoint_path: Path | None = None
        try:
            with stop_on_signals() as stop, self.progress() as progress:
                while not self.finished():
                    self.run_epoch(stop, progress)
                    if self.stopping(stop, force=True) and not self.finished():
                        self.save()
                        raise Interrupted(self.interrupt_message(stop))
                    checkpoint_path = self.end_of_epoch()
        finally:
            self.log.close()
        return self.summary(checkpoint_path)

    def finished(self) -> bool:
        """Whether the run has reached its last step."""
        return self.global_step >= last_step(self.cfg, self.schedule)

    def run_epoch(self, stop: StopRequest, progress: Any) -> None:
        """Train over this rank's shard of the current epoch (from where a resume left off)."""
        self.model.train()
        window = Window()
        start = time.perf_counter()
        dtype = inference.PRECISION_DTYPES[self.cfg.resolved_precision]
        autocast = inference.autocast_context(self.device, dtype)
        for batch in self.batches():
            views = self.views(batch)
            with autocast:
                loss = self.step(views)
            window.add(loss)
            self.global_step += 1
            self.images_seen += self.cfg.batch_size
            last_of_epoch = (self.global_step % self.data.steps_per_epoch == 0) or self.finished()
            if self.global_step % self.cfg.log_every == 0 or last_of_epoch:
                self.flush(window, progress)
                window = Window()
            if self.finished() or last_of_epoch or self.stopping(stop):
                break
        if window.steps:
            self.flush(window, progress)
        self.train_time += time.perf_counter() - start
        if self.global_step % self.data.steps_per_epoch == 0:
            self.epoch = self.global_step // self.data.steps_per_epoch

    def batches(self) -> Iterator[Any]:
        """The epoch's remaining batches; the generators are reseeded before each is drawn."""
        done = self.global_step - self.epoch * self.data.steps_per_epoch  # steps already taken
        self.data.sampler.set_epoch(self.epoch, skip=done * self.cfg.per_process_batch_size)
        iterator = iter(self.data.loader)
        while True:
            # Step t's randomness is a function of (seed, t, rank) alone, so a run resumed at
            # any step draws what the uninterrupted run would have drawn.
            seed_everything(step_seed(self.cfg.seed, self.global_step, self.rank))
            batch = next(iterator, None)
            if batch is None:
                return
            yield batch

    def views(self, batch: Any) -> Tensor:
        """Both views of the batch as ONE tensor ``[x_i; x_j]``: (2n, C, S, S) on the device."""
        if self.data.device_augment is None:
            (x_i, x_j), _ = batch
            x = torch.cat([x_i, x_j]).to(self.device, non_blocking=True)
        else:
            images, _ = batch  # (n, C, S, S) uint8
            images = images.to(self.device, non_blocking=True)
            # Independent random parameters per row, so the two copies become two views.
            x = self.data.device_augment(torch.cat([images, images]))
        if self.cfg.resolved_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def step(self, views: Tensor) -> Tensor:
        """One optimizer step on ``views`` (2n, C, S, S); returns the detached loss (no sync)."""
        lr = self.schedule(self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        _, z = self.model(views)  # z: (2n, projection_dim), rows [z_i; z_j]
        z_i, z_j = z.chunk(2)
        loss = self.criterion(z_i, z_j)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach()

    def flush(self, window: Window, progress: Any) -> None:
        """Log the window: the one host sync of the loop; stops the run on a non-finite loss."""
        assert window.loss_sum is not None
        loss = distributed.all_reduce_mean(window.loss_sum / window.steps).item()  # host sync
        if not math.isfinite(loss):
            raise TrainingError(
                f"the loss became non-finite ({loss}) by step {self.global_step}; the last good "
                f"checkpoint in {self.out} was kept; lower --lr or use --precision fp32"
            )
        elapsed = max(time.perf_counter() - window.start, 1e-9)
        images_per_s = window.steps * self.cfg.batch_size / elapsed
        lr = self.schedule(self.global_step - 1)
        epoch = self.global_step / self.data.steps_per_epoch
        self.metrics.update(loss=loss, lr=lr, images_per_s=images_per_s)
        record = {"step": self.global_step, "epoch": round(epoch, 4), "loss": loss, "lr": lr}
        record.update(images_per_s=round(images_per_s, 2), time=time.time())
        self.log.log(record)
        progress.update(
            self.global_step,
            epoch=f"{epoch:.2f}/{self.cfg.epochs}",
            loss=f"{loss:.4f}",
            lr=f"{lr:.3g}",
            **{"img/s": f"{images_per_s:.0f}"},
        )

    def stopping(self, stop: StopRequest, force: bool = False) -> bool:
        """Whether every rank should stop now; ranks agree at log steps (a collective)."""
        if self.world_size == 1:
            return stop.requested
        if not force and self.global_step % self.cfg.log_every:
            return False
        flag = torch.tensor(float(stop.requested), device=self.device)
        return distributed.all_reduce_mean(flag).item() > 0

    def interrupt_message(self, stop: StopRequest) -> str:
        """One line: what happened and the command that continues the run."""
        name = signal.Signals(stop.signum).name if stop.signum else "a signal"
        return (
            f"stopped by {name} at step {self.global_step}; checkpoint saved in {self.out}; "
            f"continue with: simclr pretrain ... --resume auto --out {self.out}"
        )

    def end_of_epoch(self) -> Path | None:
        """kNN monitor when due, then the epoch checkpoint (after the loss was checked finite)."""
        if self.epoch_complete() and self.knn_due():
            self.metrics["knn_accuracy"], self.metrics["knn_k"] = self.knn_monitor()
            self.metrics["knn_epoch"] = self.epoch
            record: dict[str, Any] = {"step": self.global_step, "epoch": self.epoch}
            record.update(knn_accuracy=self.metrics["knn_accuracy"], knn_k=self.metrics["knn_k"])
            record["time"] = time.time()
            self.log.log(record)
        return self.save(final=self.finished())

    def epoch_complete(self) -> bool:
        """Whether the step count sits on an epoch boundary."""
        return self.global_step % self.data.steps_per_epoch == 0

    def knn_due(self) -> bool:
        """kNN every ``--knn-every`` epochs and at the end, for labelled datasets."""
        every = self.cfg.knn_every
        if not every or self.cfg.dataset_kind not in LABELLED_KINDS:
            return False
        return self.epoch % every == 0 or self.finished()

    def knn_monitor(self) -> tuple[float, int | None]:
        """kNN top-1 accuracy of ``h`` on labelled train/test subsets and its k (rank 0
        computes them; other ranks return NaN and None)."""
        accuracy, k = math.nan, None
        if self.main:
            phase(f"epoch {self.epoch}: kNN monitor")
            if self.knn_sets is None:
                self.knn_sets = knn_datasets(self.cfg)
            accuracy, k = knn_eval(self.net, *self.knn_sets, self.cfg, self.device)
            self.console.print(f"epoch {self.epoch}: kNN accuracy {accuracy:.2%} (k={k})")
        distributed.barrier()
        return accuracy, k

    def progress(self) -> StepProgress:
        """Progress over all steps: a bar on a terminal, plain lines in a log (silent off rank 0).

        Updated at every ``--log-every`` steps (:meth:`flush`); a log gets a line at most every
        ``SIMCLR_PROGRESS_SECONDS`` (30) of those.
        """
        return StepProgress(
            "pretrain",
            total=last_step(self.cfg, self.schedule),
            completed=self.global_step,
            unit="step",
            fields=("epoch", "loss", "lr", "img/s"),
        )

    def summary(self, checkpoint_path: Path | None) -> dict[str, Any]:
        """The one-screen result of the run, and the command to run next."""
        images_per_s = self.images_seen / self.train_time if self.train_time else math.nan
        epoch_images = self.data.steps_per_epoch * self.cfg.batch_size
        ckpt = checkpoint_path or self.out / "checkpoint_last.pt"
        return {
            "out": str(self.out),
            "checkpoint": str(ckpt),
            "epochs": round(self.global_step / self.data.steps_per_epoch, 3),
            "global_step": self.global_step,
            "final_loss": round(self.metrics.get("loss", math.nan), 4),
            "time_s": round(self.train_time, 1),
            "images_per_s": round(images_per_s, 1),
            "seconds_per_epoch": round(epoch_images / images_per_s, 1)
            if images_per_s > 0
            else math.nan,
            "knn_accuracy": self.metrics.get("knn_accuracy"),
            "data_on": f"{self.data.placement.data_on} ({self.data.placement.reason})",
            "resumed_from": self.resumed_from,
            "next_commands": [
                f"simclr linear-eval --checkpoint {ckpt} --dataset {self.cfg.dataset}",
                f"simclr export --checkpoint {ckpt} --format torchvision "
                f"--out {self.out / 'encoder.pt'}",
                f"simclr report {self.out}",
            ],
        }


def rng_state() -> dict[str, Any]:
    """Generator states at save time (informational: the loop reseeds from (seed, step, rank))."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


# ----------------------------------------------------------------------------------------------
# kNN monitor


def knn_datasets(cfg: PretrainConfig) -> tuple[Dataset, Dataset]:
    """Labelled bank (train split) and queries (test split) for the kNN monitor, as uint8 crops
    (the model normalises them in :func:`~simclr_cli.inference.encode`)."""
    transform = to_uint8_transform(cfg.resolved_image_size)
    # A run limited to N training images gets a monitor of at most N bank and N query images.
    bank_size = min(KNN_BANK_IMAGES, cfg.limit or KNN_BANK_IMAGES)
    query_size = min(KNN_QUERY_IMAGES, bank_size)
    bank = build_dataset(cfg.dataset, "train", cfg.data_dir, transform, limit=bank_size)
    queries = build_dataset(cfg.dataset, "test", cfg.data_dir, transform, limit=query_size)
    return bank, queries


def knn_eval(
    net: SimCLR, bank: Dataset, queries: Dataset, cfg: PretrainConfig, device: torch.device
) -> tuple[float, int]:
    """Weighted kNN top-1 accuracy of the encoder's ``h`` and the k it used (``--knn-k``, else
    chosen from the bank by :func:`~simclr_cli.metrics.knn_k_for`; temperature 0.1).

    Reference: Wu et al. 2018 (arXiv:1805.01978), section 3.4, as the SimCLR/MoCo monitors.
    """
    was_training = net.training
    net.eval()
    try:
        options = (cfg.batch_size, device, "encoder", cfg.workers, cfg.resolved_precision)
        bank_h, bank_y = inference.extract_features(net, bank, *options)
        query_h, query_y = inference.extract_features(net, queries, *options)
    finally:
        net.train(was_training)
    k = metrics.knn_k_for(bank_y, cfg.knn_k)
    accuracy = metrics.knn_accuracy(bank_h, bank_y, query_h, query_y, k, metrics.KNN_TEMPERATURE)
    return accuracy, k
