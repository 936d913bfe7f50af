"""The pretraining stream of one process: the resumable sampler and the loader of two views.

A host DataLoader (views made in its workers, or uint8 crops for ``--augment-on device``) or,
with ``--data-on device``, the whole set decoded once onto the device
(:mod:`simclr_cli.data.resident`); both follow the sampler's order.

Views made on the host are a pure function of ``(seed, epoch, image index)``
(:class:`SeededViews`): each image's two views come from a generator of its own, so ranks draw
different views (they hold different images), and a resume draws the views of the
uninterrupted run whatever ``--workers`` and the number of processes are. The DataLoader's
worker seeds come from ``(seed, rank)`` (:func:`~simclr_cli.data.seeding.loader_seed`); torch seeds
each worker's ``random`` and NumPy from them too.
"""

from __future__ import annotations

import itertools
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, Sampler

from simclr_cli import distributed
from simclr_cli.config import PretrainConfig
from simclr_cli.console import get_console
from simclr_cli.data import resident, seeding
from simclr_cli.data.datasets import build_dataset, skipped_files
from simclr_cli.data.facts import normalization, pretrain_split
from simclr_cli.data.undecodable import SkipUndecodable
from simclr_cli.data.workers import ignore_stop_signals
from simclr_cli.errors import DatasetError, plural
from simclr_cli.method.augment import BatchedSimCLRAugment, SimCLRAugment, TwoViews
from simclr_cli.method.preprocess import to_uint8_transform


@dataclass
class PretrainData:
    """The training stream of this process.

    Attributes:
        loader: yields ``((x_i, x_j), labels)`` (CPU augmentation) or ``(uint8 images, labels)``
            (a DataLoader, or a :class:`~simclr_cli.data.resident.ResidentLoader` with ``--data-on
            device``, whose labels are None).
        sampler: this rank's shard of each epoch; ``set_epoch`` reshuffles.
        steps_per_epoch: optimizer steps per epoch (the same on every rank).
        device_augment: the batched augmentation for ``--augment-on device``, else None.
        placement: where the images live (``--data-on``) and why.
        images: the training images themselves (a ``--limit`` sample of the dataset), as the
            dataset yields them (PIL images, or uint8 crops for ``--augment-on device``); a
            resume checks that the run had as many.
        undecodable: the dataset as the loader reads it, with the images that failed to decode
            (:class:`~simclr_cli.data.undecodable.SkipUndecodable`).
    """

    loader: DataLoader | resident.ResidentLoader
    sampler: ResumableSampler
    steps_per_epoch: int
    device_augment: BatchedSimCLRAugment | None
    placement: resident.DataPlacement
    images: Dataset
    undecodable: SkipUndecodable


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

    @property
    def epoch(self) -> int:
        """The epoch whose permutation :meth:`__iter__` yields."""
        return int(self.inner.epoch)

    def set_epoch(self, epoch: int, skip: int = 0) -> None:
        """Select the permutation of ``epoch`` and skip its first ``skip`` indices on this rank."""
        self.inner.set_epoch(epoch)
        self.skip = skip

    def __iter__(self) -> Iterator[int]:
        return itertools.islice(iter(self.inner), self.skip, None)

    def __len__(self) -> int:
        return len(self.inner) - self.skip


class EpochKeys(Sampler[tuple[int, int]]):
    """The indices of a :class:`ResumableSampler` as ``(index, epoch)`` keys for
    :class:`SeededViews`, which draws each image's views from its key."""

    def __init__(self, sampler: ResumableSampler) -> None:
        self.sampler = sampler

    def __iter__(self) -> Iterator[tuple[int, int]]:
        epoch = self.sampler.epoch  # read once: DataLoader iterates the sampler ahead of use
        return ((index, epoch) for index in self.sampler)

    def __len__(self) -> int:
        return len(self.sampler)


class SeededViews(Dataset):
    """``dataset[index]``'s image as two views drawn from a generator of its own.

    The generator is seeded from ``(seed, epoch, index)``
    (:func:`~simclr_cli.data.seeding.view_seed`),
    so the views depend on nothing else: not on the worker that makes them, the worker's or
    the rank's random stream, nor on where a resumed run started.

    Args:
        dataset: yields ``(PIL image or tensor, label)``.
        views: both views of an image for one generator
            (:class:`~simclr_cli.method.augment.TwoViews`).
        seed: the run's ``--seed``.
    """

    def __init__(self, dataset: Dataset, views: TwoViews, seed: int) -> None:
        self.dataset, self.views, self.seed = dataset, views, seed

    def __getitem__(self, key: tuple[int, int]) -> tuple[tuple[Tensor, Tensor], Any]:
        index, epoch = key
        image, label = self.dataset[index]
        generator = torch.Generator().manual_seed(seeding.view_seed(self.seed, epoch, index))
        return self.views(image, generator), label

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]  # every dataset here is Sized


def build_pretrain_data(cfg: PretrainConfig, device: torch.device) -> PretrainData:
    """The pretraining loader of this process (labels are loaded but not used by the loss).

    ``--augment-on cpu``: DataLoader workers produce the two views per image (PIL/tensor ops),
    each image's from its own ``(seed, epoch, index)`` generator (:class:`SeededViews`).
    ``--augment-on device``: workers only decode to fixed-size uint8 tensors; both views are
    made on the training device for the whole batch at once.
    """
    size = cfg.resolved_image_size
    device_augment = None
    on_device = cfg.resolved_augment_on == "device"
    if on_device:
        device_augment = BatchedSimCLRAugment(size, **view_options(cfg)).to(device)
    # Host views are made by SeededViews around the dataset, which yields PIL images.
    transform = to_uint8_transform(size) if on_device else None
    split = pretrain_split(cfg.dataset_kind)
    dataset = build_dataset(
        cfg.dataset, split, cfg.data_dir, transform, limit=cfg.limit, seed=cfg.seed
    )
    skipped = skipped_files(dataset)
    if skipped:  # reported once for the run, not per image
        get_console().print(
            f"[yellow]skipped {plural(skipped, 'unreadable image file')} in {cfg.dataset}"
        )
    size_of_dataset = len(dataset)  # type: ignore[arg-type]  # every dataset here is Sized
    if size_of_dataset < cfg.batch_size:
        raise DatasetError(
            f"{cfg.dataset} has {plural(size_of_dataset, 'training image')}, fewer than one "
            f"batch of {cfg.batch_size}; lower --batch-size or raise --limit"
        )
    images = dataset
    # An image that fails to decode later is replaced by the next one and counted (capped).
    dataset = undecodable = SkipUndecodable(dataset, cfg.dataset)
    sampler = ResumableSampler(dataset, distributed.world_size(), distributed.rank(), cfg.seed)
    nbytes = resident.decoded_bytes(size_of_dataset, size)
    placement = resident.choose_placement(cfg.data_on, cfg.resolved_augment_on, device, nbytes)
    loader: DataLoader | resident.ResidentLoader
    if placement.data_on == "device":
        if distributed.is_main():  # decoding the whole set takes a moment: say what happens
            get_console().print(f"decoding the training set once: {placement.reason}")
        loader = resident_loader(dataset, size_of_dataset, sampler, cfg, device)
    elif on_device:
        loader = host_loader(dataset, sampler, cfg, device)
    else:
        views = SeededViews(dataset, TwoViews(SimCLRAugment(size, **view_options(cfg))), cfg.seed)
        loader = host_loader(views, EpochKeys(sampler), cfg, device)
    steps = len(sampler.inner) // cfg.per_process_batch_size
    return PretrainData(loader, sampler, steps, device_augment, placement, images, undecodable)


def view_options(cfg: PretrainConfig) -> dict[str, Any]:
    """The options of both view pipelines (:class:`~simclr_cli.method.augment.ViewRecipe`,
    mean/std)."""
    stats = normalization(cfg.dataset_kind)
    mean, std = (list(stats[0]), list(stats[1])) if stats is not None else (None, None)
    return {
        "jitter_strength": cfg.resolved_jitter_strength,
        "blur": cfg.resolved_blur,
        "mean": mean,
        "std": std,
        "crop_scale": cfg.crop_scale,
        "flip": cfg.flip,
    }


def host_loader(
    dataset: Dataset, sampler: Sampler[Any], cfg: PretrainConfig, device: torch.device
) -> DataLoader:
    """A DataLoader of full batches in the sampler's order, its workers seeded per rank."""
    generator = torch.Generator().manual_seed(seeding.loader_seed(cfg.seed, distributed.rank()))
    return DataLoader(
        dataset,
        batch_size=cfg.per_process_batch_size,
        sampler=sampler,
        num_workers=cfg.workers,
        pin_memory=device.type == "cuda",
        drop_last=True,  # full batches only: NT-Xent's negatives and BN statistics comparable
        persistent_workers=cfg.workers > 0,
        worker_init_fn=ignore_stop_signals,
        # Worker seeds (torch, random, NumPy) come from this generator, not from the global one,
        # which is in the same state on every rank: otherwise all ranks' workers draw alike.
        generator=generator,
    )


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
