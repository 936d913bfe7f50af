"""The pretraining loop: one :class:`Trainer` holds a run's built pieces and runs its epochs.

Randomness is a pure function of the seed (:mod:`simclr_cli.data.seeding`): the sampler's order
depends on ``(seed, epoch)``, host views on ``(seed, epoch, image)``, and the generators are
reseeded before every step from ``(seed, step, rank)`` (the device views), so a run resumed at
any step draws the same order and augmentations as an uninterrupted one.

Host syncs: the step itself never reads a device value; the loss is summed on the device and
read (and checked finite) once per ``--log-every`` window. fp16's GradScaler is the exception
(torch reads its inf check once per step); bf16 and fp32 need no scaler.
"""

from __future__ import annotations

import math
import shlex
import signal
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import Dataset, Subset

from simclr_cli import distributed, signals
from simclr_cli.config import PretrainConfig
from simclr_cli.console import StepProgress, get_console, phase
from simclr_cli.data import workers
from simclr_cli.data.datasets import labels_of
from simclr_cli.data.loader import PretrainData
from simclr_cli.data.sampling import image_names
from simclr_cli.data.seeding import seed_everything, step_seed
from simclr_cli.errors import Interrupted, TrainingError, plural
from simclr_cli.evaluation import inference
from simclr_cli.method.model import SimCLR
from simclr_cli.method.schedule import Schedule
from simclr_cli.storage import checkpoint, fileio
from simclr_cli.storage.registry import RUN_CHECKPOINT, epoch_checkpoint
from simclr_cli.training.monitor import knn_datasets, knn_eval, monitor_description
from simclr_cli.training.recipe import last_step
from simclr_cli.training.runlog import IMAGES_FILE, RunLog, resolved_config

UNDECODABLE_SHOWN = 5  # files a warning names; it counts the rest


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
    """Holds a run's built pieces and runs its epochs (see
    :func:`simclr_cli.training.pretrain.pretrain`)."""

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
        self.metrics: dict[str, Any] = {}
        self.train_time = 0.0
        self.images_seen = 0
        self.resumed_from: str | None = None
        self.knn_sets: tuple[Dataset, Dataset] | None = None
        self.undecodable_reported = 0  # images that failed to decode, named so far
        self.log = RunLog(self.out, self.main)
        self.console = get_console()
        self.autocast_dtype = inference.PRECISION_DTYPES[cfg.resolved_precision]  # None: fp32

    # -- state ------------------------------------------------------------------------------
    @property
    def epoch(self) -> int:
        """Completed epochs (a run stopped part-way into an epoch is still in it)."""
        return self.global_step // self.data.steps_per_epoch

    @property
    def epoch_progress(self) -> float:
        """Epochs trained, fractional: the ``epoch`` of ``metrics.jsonl`` records."""
        return self.global_step / self.data.steps_per_epoch

    def epoch_complete(self) -> bool:
        """Whether the step count sits on an epoch boundary."""
        return self.global_step % self.data.steps_per_epoch == 0

    def restore(self, payload: dict[str, Any]) -> None:
        """Load weights, optimizer, scaler and position from a checkpoint payload."""
        self.net.load_state_dict(payload["state_dict"])
        self.optimizer.load_state_dict(payload["optimizer"])
        if self.scaler is not None and payload.get("scaler") is not None:
            self.scaler.load_state_dict(payload["scaler"])
        self.global_step = int(payload["global_step"])
        self.metrics = dict(payload.get("metrics") or {})

    def payload(self) -> dict[str, Any]:
        """Everything a resume or an evaluation needs, as primitives and tensors."""
        return checkpoint.build_payload(
            model=self.spec,
            dataset=self.cfg.dataset,
            epoch=self.epoch,
            global_step=self.global_step,
            config=self.run_config(),
            metrics=self.metrics,
            state_dict=self.net.state_dict(),  # the unwrapped module: no "module." prefix
            optimizer=self.optimizer.state_dict(),
            scaler=self.scaler.state_dict() if self.scaler is not None else None,
            rng=rng_state(),
        )

    def run_config(self) -> dict[str, Any]:
        """:func:`resolved_config` plus where the data lives (``--data-on`` resolved, and why)
        and why the views are made where they are."""
        config = resolved_config(self.cfg, self.schedule)
        placement = self.data.placement
        config["resolved"].update(data_on=placement.data_on, data_on_reason=placement.reason)
        config["resolved"]["augment_on_reason"] = self.cfg.augment_on_reason
        # What a resume checks the data against (training.resume.check_same_data).
        config["resolved"].update(
            train_images=len(self.data.images), steps_per_epoch=self.data.steps_per_epoch
        )
        config["resolved"]["image_size_reason"] = self.cfg.image_size_reason
        return config

    def save(self, final: bool = False) -> Path | None:
        """Write ``checkpoint_last.pt`` (and link ``checkpoint_epoch_N.pt`` to it when due);
        rank 0 only."""
        if not self.main:
            return None
        payload = self.payload()
        last = self.out / RUN_CHECKPOINT
        checkpoint.save_checkpoint(payload, last)
        due = self.epoch % self.cfg.checkpoint_every == 0 or final
        if self.epoch_complete() and self.epoch > 0 and due:
            # One copy on disk: the numbered file is a hard link to the complete last one. The
            # next save renames a new file over checkpoint_last.pt and leaves this one as it is.
            numbered = epoch_checkpoint(self.out, self.epoch)
            fileio.link_or_copy(last, numbered)
            return numbered
        return last

    # -- loop -------------------------------------------------------------------------------
    def fit(self) -> dict[str, Any]:
        """Train until ``--epochs`` (or ``--max-steps``) is reached; return the summary."""
        config = self.run_config()
        self.log.open(config, self.global_step if self.resumed_from else None)
        if self.cfg.limit is not None:  # which images the --limit sample kept
            self.log.write_images(image_names(self.data.images))
        if self.resumed_from:
            self.console.print(f"resuming from {self.resumed_from} at step {self.global_step}")
            # A record without a loss: `simclr report` marks where the run was continued.
            record = {"step": self.global_step, "resumed_from": self.resumed_from}
            record.update(epoch=round(self.epoch_progress, 4))
            self.log.log({**record, "time": time.time()})
        phase(
            f"training {last_step(self.cfg, self.schedule)} steps of {self.cfg.batch_size} images "
            f"({self.data.steps_per_epoch} per epoch); the first steps are the slowest"
        )
        checkpoint_path: Path | None = None
        try:
            # SIGINT/SIGTERM finish the step and save: the one mechanism, simclr_cli.signals
            with signals.stop_requests() as stop, self.progress() as progress:
                while not self.finished():
                    self.run_epoch(stop, progress)
                    if self.stopping(stop, force=True) and not self.finished():
                        self.save()
                        raise Interrupted(self.interrupt_message(stop))
                    checkpoint_path = self.end_of_epoch()
        finally:
            workers.shut_down(self.data.loader)  # now, also on an error: see data.workers
            self.log.close()
        return self.summary(checkpoint_path)

    def finished(self) -> bool:
        """Whether the run has reached its last step."""
        return self.global_step >= last_step(self.cfg, self.schedule)

    def run_epoch(self, stop: signals.StopRequest, progress: Any) -> None:
        """Train over this rank's shard of the current epoch (from where a resume left off)."""
        self.model.train()
        window = Window()
        start = time.perf_counter()
        for batch in self.batches():
            loss = self.step(self.views(batch))
            window.add(loss)
            self.global_step += 1
            self.images_seen += self.cfg.batch_size
            last_of_epoch = self.epoch_complete() or self.finished()
            if self.global_step % self.cfg.log_every == 0 or last_of_epoch:
                self.flush(window, progress)
                window = Window()
            if self.finished() or last_of_epoch or self.stopping(stop):
                break
        if window.steps:
            self.flush(window, progress)
        self.train_time += time.perf_counter() - start

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
            # Each (pinned) view crosses on its own and they are joined on the device: a host
            # torch.cat would make a new, unpinned tensor, copied again and uploaded blocking.
            views = [x.to(self.device, non_blocking=True) for x in (x_i, x_j)]
            x = torch.cat(views)
        else:
            images, _ = batch  # (n, C, S, S) uint8
            images = images.to(self.device, non_blocking=True)
            # Independent random parameters per row, so the two copies become two views.
            x = self.data.device_augment(torch.cat([images, images]))
        if self.cfg.resolved_channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        return x

    def step(self, views: Tensor) -> Tensor:
        """One optimizer step on ``views`` (2n, C, S, S); returns the detached loss (no sync).

        Only the forward pass and the loss run under autocast (PyTorch's AMP recipe): autograd
        would replay autocast in the backward pass, and the loss's float32 logits would get a
        half-precision backward.
        """
        lr = self.schedule(self.global_step)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with inference.autocast_context(self.device, self.autocast_dtype):
            loss = self.loss(views)
        if self.scaler is not None:
            self.scaler.scale(loss).backward()
            self.scaler.step(self.optimizer)
            self.scaler.update()
        else:
            loss.backward()
            self.optimizer.step()
        return loss.detach()

    def loss(self, views: Tensor) -> Tensor:
        """NT-Xent of the model's projections of ``views`` (2n, C, S, S)."""
        _, z = self.model(views)  # z: (2n, projection_dim), rows [z_i; z_j]
        z_i, z_j = z.chunk(2)
        return self.criterion(z_i, z_j)

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
        epoch = self.epoch_progress
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

    def stopping(self, stop: signals.StopRequest, force: bool = False) -> bool:
        """Whether every rank should stop now; ranks agree at log steps (a collective)."""
        if self.world_size == 1:
            return stop.requested
        if not force and self.global_step % self.cfg.log_every:
            return False
        flag = torch.tensor(float(stop.requested), device=self.device)
        return distributed.all_reduce_mean(flag).item() > 0

    def interrupt_message(self, stop: signals.StopRequest) -> str:
        """One line: what happened and the command that continues the run."""
        name = signal.Signals(stop.signum).name if stop.signum else "a signal"
        # The run's options come from its checkpoint: this is the whole command.
        return (
            f"stopped by {name} at step {self.global_step}; checkpoint saved in {self.out}; "
            f"continue with: simclr pretrain --resume auto --out {shlex.quote(str(self.out))}"
        )

    def end_of_epoch(self) -> Path | None:
        """kNN monitor when due, then the epoch checkpoint (after the loss was checked finite)."""
        self.report_undecodable()
        if self.epoch_complete() and self.knn_due():
            self.metrics["knn_accuracy"], self.metrics["knn_k"] = self.knn_monitor()
            self.metrics["knn_epoch"] = self.epoch
            record: dict[str, Any] = {"step": self.global_step, "epoch": self.epoch}
            record.update(knn_accuracy=self.metrics["knn_accuracy"], knn_k=self.metrics["knn_k"])
            record["time"] = time.time()
            self.log.log(record)
        return self.save(final=self.finished())

    def report_undecodable(self) -> None:
        """Name the images that failed to decode since the last report (this process's)."""
        skipping = self.data.undecodable
        failed = skipping.failures.indices()
        new = failed[self.undecodable_reported :]
        if not new:
            return
        self.undecodable_reported = len(failed)
        shown = skipping.paths(new[:UNDECODABLE_SHOWN])
        more = f" and {len(new) - len(shown)} more" if len(new) > len(shown) else ""
        self.console.print(
            f"[yellow]warning: skipped {plural(len(new), 'image')} that failed to decode, each "
            f"replaced by the next image: {', '.join(shown)}{more} ({len(failed)} in all; the "
            f"run stops past {skipping.failures.allowed})"
        )

    def knn_due(self) -> bool:
        """kNN every ``--knn-every`` epochs and at the end (the config refuses the flag where
        the images have no labels)."""
        every = self.cfg.knn_every
        if not every:
            return False
        return self.epoch % every == 0 or self.finished()

    def knn_monitor(self) -> tuple[float, int | None]:
        """kNN top-1 accuracy of ``h`` on labelled train/test subsets and its k (rank 0
        computes them; other ranks return NaN and None)."""
        accuracy, k = math.nan, None
        if self.main:
            phase(f"epoch {self.epoch}: kNN monitor")
            if self.knn_sets is None:
                self.knn_sets = knn_datasets(self.cfg, self.data.images)
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
        ckpt = checkpoint_path or self.out / RUN_CHECKPOINT
        summary = {
            "out": str(self.out),
            "checkpoint": str(ckpt),
            "images": self.images_line(),
            "image_size": f"{self.cfg.resolved_image_size} px ({self.cfg.image_size_reason})",
            "epochs": round(self.epoch_progress, 3),
            "global_step": self.global_step,
            "final_loss": round(self.metrics.get("loss", math.nan), 4),
            "time_s": round(self.train_time, 1),
            "images_per_s": round(images_per_s, 1),
            "seconds_per_epoch": round(epoch_images / images_per_s, 1)
            if images_per_s > 0
            else math.nan,
            "knn_accuracy": self.metrics.get("knn_accuracy"),
            "data_on": f"{self.data.placement.data_on} ({self.data.placement.reason})",
            "augment_on": f"{self.cfg.resolved_augment_on} ({self.cfg.augment_on_reason})",
            "resumed_from": self.resumed_from,
            "next_commands": self.next_commands(ckpt),
        }
        if self.knn_sets is not None:  # which images the kNN accuracy comes from
            summary["knn_monitor"] = monitor_description(self.cfg, *self.knn_sets)
        return summary

    def images_line(self) -> str:
        """How many images the run trains on; for a ``--limit`` sample, where they are listed."""
        images = self.data.images
        count = len(images)  # type: ignore[arg-type]  # every dataset here is Sized
        if self.cfg.limit is None:
            return str(count)
        whole = len(images.dataset) if isinstance(images, Subset) else count  # type: ignore[arg-type]
        return (
            f"{count} of {whole}: a class-stratified sample (--limit, seed {self.cfg.seed}), "
            f"listed in {self.out / IMAGES_FILE}"
        )

    def next_commands(self, ckpt: Path) -> list[str]:
        """What to run next: linear evaluation where the images have two classes or more."""
        classes = {label for label in labels_of(self.data.images) if label >= 0}
        commands = []
        if len(classes) >= 2:
            commands.append(f"simclr linear-eval --checkpoint {ckpt} --dataset {self.cfg.dataset}")
        commands += [
            f"simclr export --checkpoint {ckpt} --format torchvision "
            f"--out {self.out / 'encoder.pt'}",
            f"simclr report {self.out}",
        ]
        return commands


def rng_state() -> dict[str, Any]:
    """Generator states at save time (informational: the loop reseeds from (seed, step, rank))."""
    state: dict[str, Any] = {"torch": torch.get_rng_state()}
    if torch.cuda.is_available() and torch.cuda.is_initialized():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state
