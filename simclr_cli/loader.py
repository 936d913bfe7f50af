"""The pretraining stream of one process: the resumable sampler and the loader of two views.

A host DataLoader (views made in its workers, or uint8 crops for ``--augment-on device``) or,
with ``--data-on device``, the whole set decoded once onto the device
(:mod:`simclr_cli.resident`); both follow the sampler's order.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from simclr_cli import distributed, resident
from simclr_cli.augment import BatchedSimCLRAugment, SimCLRAugment, TwoViews
from simclr_cli.config import PretrainConfig
from simclr_cli.console import get_console
from simclr_cli.data import (
    build_dataset,
    ignore_stop_signals,
    normalization,
    pretrain_split,
    skipped_files,
)
from simclr_cli.errors import DatasetError, plural
from simclr_cli.preprocess import to_uint8_transform


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
