"""Training a classifier on a labelled subset: the loop of ``simclr finetune``, for the model
fine-tuned from the checkpoint and for the baseline trained from scratch alike.

Every epoch is a permutation of the subset fixed by ``(seed, epoch)``; each step's crops and
flips are drawn on the device from a generator seeded by ``(seed, step)``
(:class:`~simclr_cli.method.classifier.CropFlip`), so a run resumed at any step draws what the
uninterrupted run would have drawn. Batch norm is in train mode, as the paper fine-tunes. Only
the forward pass and the loss run under autocast; fp16 gets a grad scaler (the rules of
``simclr pretrain``). The loss is summed on the device and read once per epoch.

Reference: Chen et al. 2020 (arXiv:2002.05709), appendix B.5.
"""

from __future__ import annotations

import contextlib
import copy
import math
import signal
import time
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from simclr_cli import signals
from simclr_cli.console import StepProgress
from simclr_cli.data.loader import ResumableSampler
from simclr_cli.data.seeding import loader_seed, step_seed
from simclr_cli.data.workers import ignore_stop_signals, shut_down, worker_batches
from simclr_cli.errors import Interrupted, TrainingError
from simclr_cli.evaluation.inference import (
    PRECISION_DTYPES,
    autocast_context,
    build_loader,
)
from simclr_cli.method.classifier import Classifier, CropFlip
from simclr_cli.method.optim import LARS
from simclr_cli.method.preprocess import normalize_uint8
from simclr_cli.method.schedule import Schedule
from simclr_cli.storage.classifier import build_classifier_payload, save_classifier


@dataclass(frozen=True)
class Recipe:
    """How a classifier is trained: the paper's fine-tuning recipe, resolved for this subset.

    ``weight_decay`` applies to the encoder's (and kept head layers') weights only: never to
    the new linear layer, biases or batch-norm parameters.
    """

    epochs: int
    batch_size: int
    steps_per_epoch: int
    optimizer: str
    lr: float
    momentum: float
    weight_decay: float
    crop_scale: tuple[float, float]
    flip: bool
    image_size: int
    precision: str
    seed: int

    @property
    def total_steps(self) -> int:
        return self.epochs * self.steps_per_epoch

    def as_dict(self) -> dict[str, Any]:
        """JSON-able, with what is fixed by the method (schedule, head decay, batch norm)."""
        return {
            **asdict(self),
            "crop_scale": list(self.crop_scale),
            "schedule": "cosine decay to 0 per step, no warmup",
            "head_weight_decay": 0.0,
            "batch_norm": "train mode (batch statistics)",
            "augmentation": "random resized crop and horizontal flip",
        }


def finetune_param_groups(model: Classifier, weight_decay: float) -> list[dict[str, Any]]:
    """Weights of the encoder and kept head layers (decayed, layer-adapted by LARS), the new
    linear layer's weight (adapted, never decayed) and every bias and batch-norm parameter
    (neither)."""
    fc = model.fc[-1] if isinstance(model.fc, nn.Sequential) else model.fc
    head = {id(fc.weight)}
    decay, head_weight, excluded = [], [], []
    for p in model.parameters():
        if not p.requires_grad:
            continue
        if id(p) in head:
            head_weight.append(p)
        elif p.ndim <= 1:
            excluded.append(p)
        else:
            decay.append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": head_weight, "weight_decay": 0.0, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


def build_finetune_optimizer(model: Classifier, recipe: Recipe) -> torch.optim.Optimizer:
    """Nesterov momentum SGD (SimCLR) or LARS (SimCLRv2) over :func:`finetune_param_groups`."""
    groups = finetune_param_groups(model, recipe.weight_decay)
    if recipe.optimizer == "lars":
        return LARS(groups, lr=recipe.lr, momentum=recipe.momentum)
    # torch's SGD applies each group's weight_decay to its parameters, as the groups say
    nesterov = recipe.momentum > 0
    return torch.optim.SGD(groups, lr=recipe.lr, momentum=recipe.momentum, nesterov=nesterov)


def subset_loader(
    dataset: Dataset, recipe: Recipe, workers: int, device: torch.device
) -> tuple[DataLoader, ResumableSampler]:
    """Full batches of uint8 crops in the order of each epoch's ``(seed, epoch)`` permutation."""
    sampler = ResumableSampler(dataset, num_replicas=1, rank=0, seed=recipe.seed)
    loader = DataLoader(
        dataset,
        batch_size=recipe.batch_size,
        sampler=sampler,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        drop_last=True,  # batch norm in train mode: no batch of one image
        persistent_workers=workers > 0,
        worker_init_fn=ignore_stop_signals,
        generator=torch.Generator().manual_seed(loader_seed(recipe.seed, 0)),
    )
    return loader, sampler


class Tuner:
    """One classifier and its training state; :meth:`fit` runs the epochs left.

    Args:
        name: ``"finetune"`` or ``"scratch"`` (metrics records and the state file are named
            after it).
        model: the classifier to train (on the device).
        payload_fields: what its checkpoints record besides the training state (spec,
            classes, dataset, config, source).
        state_path: the resumable state, written every ``checkpoint_every`` epochs, at the
            end and when stopped.
    """

    def __init__(
        self,
        name: str,
        model: Classifier,
        recipe: Recipe,
        train: Dataset,
        val: Dataset | None,
        device: torch.device,
        payload_fields: dict[str, Any],
        state_path: Path,
        log: Any,  # RunRecords: .log(record) appends one metrics.jsonl line
        checkpoint_every: int = 10,
        workers: int = 0,
    ) -> None:
        self.name, self.model, self.recipe, self.device = name, model, recipe, device
        self.val, self.workers = val, workers
        # where it writes: its state (resumable), metrics records
        self.payload_fields, self.state_path = payload_fields, state_path
        self.log, self.checkpoint_every = log, checkpoint_every
        self.loader, self.sampler = subset_loader(train, recipe, workers, device)
        self.optimizer = build_finetune_optimizer(model, recipe)
        fp16 = recipe.precision == "fp16"
        self.scaler = torch.amp.GradScaler(device.type) if fp16 else None
        self.autocast_dtype = PRECISION_DTYPES[recipe.precision]
        self.schedule = Schedule(recipe.lr, recipe.total_steps, 0)
        self.views = CropFlip(recipe.image_size, recipe.crop_scale, recipe.flip,
                              model.mean, model.std).to(device)  # fmt: skip
        self.generator = torch.Generator(device=device)
        self.global_step = 0
        self.selection: dict[str, Any] | None = None  # best held-out epoch so far
        self.train_time = 0.0
        self.last: dict[str, Any] = {}
        # per-step losses and correct predictions of the epoch so far (saved when stopped)
        self.partial: dict[str, Any] = {"losses": [], "correct": 0}

    # -- state ------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """Completed epochs."""
        return self.global_step // self.recipe.steps_per_epoch

    def finished(self) -> bool:
        return self.global_step >= self.recipe.total_steps

    def restore(self, payload: dict[str, Any]) -> None:
        """Weights, optimizer, scaler, position and the held-out selection of a saved state."""
        self.model.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload.get("scaler") is not None:
            self.scaler.load_state_dict(payload["scaler"])
        self.global_step = int(payload["global_step"])
        self.selection = payload.get("selection")
        self.last = dict(payload.get("metrics") or {})
        self.partial = self.last.pop("partial_epoch", None) or {"losses": [], "correct": 0}

    def payload(self, final: bool = False) -> dict[str, Any]:
        """The resumable state, or with ``final`` the kept weights without the optimizer."""
        state = self.model.state_dict()
        epoch = self.epoch
        if final and self.selection is not None:
            state, epoch = self.selection["state_dict"], self.selection["epoch"]
        metrics = dict(self.last)
        if not final and self.partial["losses"]:
            metrics["partial_epoch"] = self.partial  # the steps of a stopped epoch, for a resume
        return build_classifier_payload(
            **self.payload_fields,
            state_dict={k: v.detach().cpu() for k, v in state.items()},
            epoch=epoch,
            global_step=self.global_step,
            metrics=metrics,
            optimizer=None if final else self.optimizer.state_dict(),
            scaler=None if final or self.scaler is None else self.scaler.state_dict(),
            selection=None if final else self.selection,
        )

    def save(self) -> None:
        save_classifier(self.payload(), self.state_path)

    # -- loop -------------------------------------------------------------------------------
    def fit(self, stop: signals.StopRequest, progress: StepProgress) -> None:
        """Train the epochs left; save the state when stopped (and raise Interrupted). The
        loader's workers are shut down at the end, also on an error (see data.workers)."""
        try:
            while not self.finished():
                if stop.requested:
                    self.save()
                    raise Interrupted(self.interrupt_message(stop))
                self.run_epoch(stop, progress)
                if self.global_step % self.recipe.steps_per_epoch == 0:
                    self.end_of_epoch()
        finally:
            shut_down(self.loader)

    def run_epoch(self, stop: signals.StopRequest, progress: StepProgress) -> None:
        """The current epoch's remaining steps; the loss is read once, at its end."""
        self.model.train()  # batch norm in train mode, as the paper fine-tunes
        start, done = time.perf_counter(), self.global_step % self.recipe.steps_per_epoch
        self.sampler.set_epoch(self.epoch, skip=done * self.recipe.batch_size)
        losses: list[Tensor] = []
        hits: list[Tensor] = []
        for images, labels in self.loader:
            loss, correct = self.step(images, labels)
            losses.append(loss)
            hits.append(correct)
            self.global_step += 1
            progress.update(self.global_step, **self.shown())
            if stop.requested or self.global_step % self.recipe.steps_per_epoch == 0:
                break
        seconds = time.perf_counter() - start
        self.train_time += seconds
        if not losses:
            return
        # the epoch's one host sync; a stopped epoch keeps its steps for the resumed one
        self.partial["losses"] += torch.stack(losses).double().cpu().tolist()
        self.partial["correct"] += int(torch.stack(hits).sum().item())
        if self.global_step % self.recipe.steps_per_epoch == 0:
            self.record(len(losses), seconds)

    def step(self, images: Tensor, labels: Tensor) -> tuple[Tensor, Tensor]:
        """One optimizer step; returns the detached loss and the count of correct predictions
        of the batch (no host sync)."""
        lr = self.schedule(self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.generator.manual_seed(step_seed(self.recipe.seed, self.global_step, 0))
        x = self.views(images.to(self.device, non_blocking=True), self.generator)
        x = x.contiguous(memory_format=torch.channels_last)
        y = labels.to(self.device, non_blocking=True)
        self.optimizer.zero_grad(set_to_none=True)
        with autocast_context(self.device, self.autocast_dtype):
            logits = self.model(x)  # (B, C)
            loss = F.cross_entropy(logits.float(), y)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach(), (logits.detach().argmax(1) == y).sum()

    def record(self, steps: int, seconds: float) -> None:
        """Check the completed epoch's mean loss and keep it for the log and the progress line
        (``steps`` of them in ``seconds`` by this command)."""
        losses, correct = self.partial["losses"], self.partial["correct"]
        self.partial = {"losses": [], "correct": 0}
        loss = sum(losses) / len(losses)  # in step order: a resumed epoch sums the same values
        train_top1 = correct / (len(losses) * self.recipe.batch_size)
        if not math.isfinite(loss):
            raise TrainingError(
                f"the {self.name} loss became non-finite ({loss}) by step {self.global_step}; "
                "lower --lr or use --precision fp32"
            )
        images_per_s = steps * self.recipe.batch_size / max(seconds, 1e-9)
        lr = self.schedule(self.global_step - 1)
        self.last = {"loss": loss, "train_top1": train_top1, "lr": lr, "images_per_s": images_per_s}

    def shown(self) -> dict[str, str]:
        fields = {"epoch": f"{self.global_step / self.recipe.steps_per_epoch:.1f}"}
        if "loss" in self.last:
            fields["loss"] = f"{self.last['loss']:.4f}"
        return fields

    def end_of_epoch(self) -> None:
        """Held-out accuracy (with ``--val-split``), the metrics record, the state when due."""
        record: dict[str, Any] = {"arm": self.name, "step": self.global_step, "epoch": self.epoch}
        record.update({k: round(v, 6) for k, v in self.last.items()})
        if self.val is not None:
            logits, labels = classifier_logits(
                self.model, self.val, self.recipe.batch_size, self.device, self.recipe.precision,
                self.workers,
            )  # fmt: skip
            val_top1 = (logits.argmax(1) == labels).float().mean().item()
            record["val_top1"] = val_top1
            if self.selection is None or val_top1 >= self.selection["val_top1"]:  # ties: later
                state = {k: v.detach().cpu().clone() for k, v in self.model.state_dict().items()}
                self.selection = {"epoch": self.epoch, "val_top1": val_top1, "state_dict": state}
        if self.finished() or self.epoch % self.checkpoint_every == 0:
            self.save()
        self.log.log({**record, "time": time.time()})

    def interrupt_message(self, stop: signals.StopRequest) -> str:
        name = signal.Signals(stop.signum).name if stop.signum else "a signal"
        out = self.state_path.parent
        return (
            f"stopped by {name} at step {self.global_step} of the {self.name} classifier; its "
            f"state is saved in {self.state_path}; continue with: simclr finetune --resume auto "
            f"--out {out}"
        )

    def kept(self) -> Classifier:
        """The classifier to evaluate and keep: the best held-out epoch's weights, else the
        last; a copy when they differ from the training weights."""
        if self.selection is None:
            return self.model
        model = copy.deepcopy(self.model)
        model.load_state_dict(self.selection["state_dict"])
        return model


# ----------------------------------------------------------------------------------------------
# evaluation


def classifier_logits(
    model: Classifier,
    dataset: Dataset,
    batch_size: int,
    device: torch.device,
    precision: str = "fp32",
    workers: int = 0,
    description: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Logits of every image of ``dataset`` (uint8 crops), rows in dataset order, in eval mode.

    Returns:
        ``(logits (N, C) float32, labels (N,) int64)``, on the CPU.
    """
    loader = build_loader(dataset, batch_size, device, workers)
    dtype = PRECISION_DTYPES[precision] if device.type == "cuda" else None
    was_training = model.training
    model.eval()
    logits, labels = [], []
    try:
        with _counted(description, len(loader)) as count, worker_batches(loader) as batches:
            for images, targets in batches:
                logits.append(predict_logits(model, images.to(device, non_blocking=True), dtype))
                labels.append(torch.as_tensor(targets, dtype=torch.int64))
                count()
    finally:
        model.train(was_training)
    return torch.cat(logits), torch.cat(labels)


def predict_logits(model: Classifier, images: Tensor, dtype: torch.dtype | None) -> Tensor:
    """Logits of a uint8 batch on the model's device: scaled and normalised with the model's
    mean/std, channels-last, inference mode; (B, C) float32 on the CPU."""
    x = normalize_uint8(images, model.mean, model.std).contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_context(x.device, dtype):
        return model(x).float().cpu()


@contextlib.contextmanager
def _counted(description: str | None, total: int) -> Iterator[Callable[[], None]]:
    """A function that counts one batch, on a transient progress display when ``description``
    is given (silent otherwise)."""
    if description is None:
        yield lambda: None
        return
    done = [0]
    with StepProgress(description, total, unit="batch", transient=True) as progress:

        def count() -> None:
            done[0] += 1
            progress.update(done[0])

        yield count
