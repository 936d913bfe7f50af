"""SimCLR pretraining, as phases: data, model, loss, optimizer, schedule, resume, loop.

:func:`run_pretrain` is the library entry point: it launches one worker per process
(:func:`simclr_cli.distributed.launch`), and each worker runs :func:`pretrain`. Every process
builds the same model and optimizer and sees its own shard of each epoch; only rank 0 prints and
writes files. Nothing is lost: checkpoints are atomic and hold everything a resume needs, a
SIGINT/SIGTERM finishes the current step and writes one, and a non-finite loss stops the run
without overwriting the last good checkpoint.

Randomness is a pure function of the seed (:mod:`simclr_cli.data.seeding`): the sampler's order
depends on ``(seed, epoch)``, views made on the host on ``(seed, epoch, image)`` and views made
on the device on ``(seed, step, rank)``, so a run resumed at any step draws the same order and
augmentations as an uninterrupted one, with any ``--workers``.
``--data-on device`` (:mod:`simclr_cli.data.resident`) replaces the DataLoader by batches gathered
from the whole set held on the device, in the same order, so it trains the same weights.

Host syncs: the step itself never reads a device value; the loss is summed on the device and
read (and checked finite) once per ``--log-every`` window. fp16's GradScaler is the exception
(torch reads its inf check once per step); bf16 and fp32 need no scaler.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020 (arXiv:2002.05709), section 2 and appendix B.
"""

from __future__ import annotations

import contextlib
import os
from contextlib import AbstractContextManager
from typing import Any

import torch
from torch import nn

from simclr_cli import allocator, distributed
from simclr_cli.config import PretrainConfig
from simclr_cli.console import phase
from simclr_cli.data.loader import build_pretrain_data
from simclr_cli.data.seeding import seed_everything
from simclr_cli.errors import OutputExistsError
from simclr_cli.evaluation import inference
from simclr_cli.method import optim
from simclr_cli.method.loss import NTXentLoss
from simclr_cli.method.model import SimCLR, build_simclr
from simclr_cli.storage import checkpoint, runlock
from simclr_cli.storage.registry import RUN_CHECKPOINT, epoch_checkpoints
from simclr_cli.training.memory import check_memory
from simclr_cli.training.recipe import build_schedule, build_spec, continued_schedule
from simclr_cli.training.resume import (
    check_resume_compatible,
    check_same_data,
    check_same_start,
    continue_run_config,
    intact_epoch_checkpoint,
    resume_checkpoint_path,
)
from simclr_cli.training.trainer import Trainer

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
        OutputBusyError: another process is writing the run folder.
        Interrupted: SIGINT/SIGTERM; a checkpoint was written first.
        TrainingError: the loss became non-finite.
    """
    with hold_run_folder(cfg):  # one writer per run folder, before its state is read
        cfg = continue_run_config(cfg)  # a resume takes the run's options from the run
        check_run_dir(cfg)  # before any process starts: one clear error, not one per rank
        check_memory(cfg)
        return distributed.launch(pretrain_worker, cfg)


def hold_run_folder(cfg: PretrainConfig) -> AbstractContextManager[None]:
    """The lock of the run folder, taken by the process that is or spawns rank 0 (other nodes
    and the other ranks of a launcher such as torchrun write nothing, and hold nothing)."""
    if not distributed.starts_rank_zero(cfg):
        return contextlib.nullcontext()
    return runlock.hold_folder(cfg.resolved_out, "simclr pretrain")


def pretrain_worker(cfg: PretrainConfig) -> dict[str, Any]:
    """The per-process function :func:`run_pretrain` launches (picklable, module level)."""
    return pretrain(cfg)


def check_run_dir(cfg: PretrainConfig) -> None:
    """Refuse to start a fresh run on top of an existing one (its checkpoints would be replaced).

    Raises:
        OutputExistsError: the run folder has ``checkpoint_last.pt`` and ``--resume`` is unset;
            or it has no ``checkpoint_last.pt`` but epoch files, and ``--resume`` is unset or
            ``auto`` (which would start afresh over them): the message names the newest.
    """
    last = cfg.resolved_out / RUN_CHECKPOINT
    if cfg.resume is None and last.exists():
        raise OutputExistsError(
            f"{cfg.resolved_out} already holds a run ({last.name}); continue it with "
            f"--resume auto --out {cfg.resolved_out}, or choose another --out"
        )
    epochs = [] if last.exists() else epoch_checkpoints(cfg.resolved_out)
    if epochs and cfg.resume in (None, "auto"):
        newest = intact_epoch_checkpoint(last) or epochs[0]  # a deleted last may have been damaged
        raise OutputExistsError(
            f"{cfg.resolved_out} holds a run's {newest.name} but no {last.name}; continue "
            f"from it with `simclr pretrain --resume {newest} --out {cfg.resolved_out}`, or "
            "choose another --out"
        )


def pretrain(cfg: PretrainConfig) -> dict[str, Any]:
    """Run pretraining in this process (one rank of the launch).

    Returns:
        A summary dict: ``out``, ``checkpoint``, ``epochs``, ``global_step``, ``final_loss``,
        ``time_s``, ``images_per_s``, ``seconds_per_epoch``, ``knn_accuracy``, ``data_on``,
        ``augment_on``, ``next_commands`` (linear evaluation, export, report), ``resumed_from``.
    """
    return build_trainer(cfg).fit()


def build_trainer(cfg: PretrainConfig) -> Trainer:
    """Everything this process trains with, restored from the run's checkpoint on a resume.

    Phases: device, resume checkpoint, data, model, loss, optimizer, schedule, restore.
    """
    device = select_device(cfg)
    allocator.configure_for(device.type)  # in each process: spawned ranks are fresh interpreters
    resume_path = resume_checkpoint_path(cfg)
    payload = checkpoint.load_checkpoint(resume_path) if resume_path else None
    if payload is not None and resume_path is not None:
        check_resume_compatible(payload, cfg, resume_path)
    check_same_start(payload, resume_path)
    seed_everything(cfg.seed)  # same initial weights on every rank (DDP also broadcasts them)
    sample = f", a class-stratified sample of {cfg.limit} images" if cfg.limit else ""
    phase(f"loading data ({cfg.dataset}{sample})")
    data = build_pretrain_data(cfg, device)
    if payload is not None and resume_path is not None:  # before anything is written
        check_same_data(payload, cfg, len(data.images), data.steps_per_epoch, resume_path)
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
    if payload is None:
        schedule = build_schedule(cfg, data.steps_per_epoch)
    else:
        schedule = continued_schedule(cfg, data.steps_per_epoch, payload.get("config") or {})
    trainer = Trainer(cfg, device, spec, net, model, criterion, optimizer, scaler, schedule, data)
    if payload is not None:
        trainer.restore(payload)
    trainer.resumed_from = str(resume_path) if resume_path else None
    return trainer


# ----------------------------------------------------------------------------------------------
# phases


def select_device(cfg: PretrainConfig) -> torch.device:
    """The device of this process (``cuda:<local rank>`` or the CPU), with determinism settings."""
    if cfg.deterministic:
        os.environ.setdefault("CUBLAS_WORKSPACE_CONFIG", ":4096:8")  # deterministic cuBLAS
        torch.use_deterministic_algorithms(True, warn_only=True)
    torch.backends.cudnn.benchmark = not cfg.deterministic  # fixed shapes: autotune once
    return inference.process_device(cfg.resolved_device)


def prepare_model(net: SimCLR, cfg: PretrainConfig, device: torch.device) -> nn.Module:
    """Move ``net`` to the device and wrap it for training; ``net`` stays the unwrapped module.

    Order matters: global batch norm replaces modules, so it comes before DDP (which registers
    the parameters it all-reduces), and compilation wraps the finished module.
    """
    net.to(device)
    if cfg.resolved_channels_last:
        net.to(memory_format=torch.channels_last)  # NHWC convolutions: faster on GPUs and oneDNN
    model: nn.Module = net
    global_bn = cfg.resolved_sync_bn and distributed.world_size() > 1
    if global_bn:
        model = distributed.convert_sync_batchnorm(model, device)  # apply global BN before DDP
        assert model is net, "conversion replaces BN children in place, sharing parameters"
    if distributed.world_size() > 1:
        # Global BN keeps the running statistics equal on every rank: no broadcast per forward.
        model = distributed.wrap_ddp(model, device, broadcast_buffers=not global_bn)
    if cfg.compile:
        model = torch.compile(model)  # type: ignore[assignment]  # an nn.Module at run time
    return model


def build_scaler(cfg: PretrainConfig, device: torch.device) -> torch.amp.GradScaler | None:
    """A gradient scaler for fp16 (its narrow range underflows small gradients), on any device
    (``GradScaler("cpu")`` too); None for bf16 and fp32, whose range needs none."""
    if cfg.resolved_precision == "fp16":
        return torch.amp.GradScaler(device.type)
    return None
