"""The device-resident data path of ``simclr pretrain --data-on device``.

The training set is decoded ONCE (with the same dataset and ``to_uint8_transform`` as the
DataLoader path of ``--augment-on device``) into one uint8 tensor ``(N, 3, S, S)`` on the
training device. Each epoch, this rank's share of the sampler's ``(seed, epoch)`` permutation
crosses to the device once; each step then only slices it and gathers its rows
(``index_select``), so a step needs no DataLoader, no host-to-device copy and no host sync.
Both views are then made on the device by :class:`~simclr_cli.method.augment.BatchedSimCLRAugment`,
exactly as on the DataLoader path, so the two paths train the same weights.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, Sampler

from simclr_cli.data.workers import ignore_stop_signals, worker_batches
from simclr_cli.errors import DatasetError

# ``--data-on auto`` holds the set on a GPU when it takes at most this fraction of the memory
# that is free there before training starts (the model, activations and the augmentation's
# float copies of the batch need the rest: ResNet-18 at 32 px, batch 512 needs a few GiB).
DEVICE_MEMORY_FRACTION = 0.25
DECODE_BATCH = 256  # images per decoding batch (one DataLoader pass over the set)
MIB = 2**20


@dataclass(frozen=True)
class DataPlacement:
    """Where the training images live, and why.

    Attributes:
        data_on: ``"device"`` (one resident uint8 tensor) or ``"host"`` (a DataLoader).
        reason: one line for the run summary and ``config.json``.
        nbytes: bytes of the decoded set (uint8).
    """

    data_on: str
    reason: str
    nbytes: int


def decoded_bytes(num_images: int, image_size: int) -> int:
    """Bytes of ``num_images`` decoded RGB uint8 images of ``image_size`` x ``image_size``."""
    return num_images * 3 * image_size * image_size


def free_bytes(device: torch.device) -> int | None:
    """Free memory of a CUDA device (``torch.cuda.mem_get_info``); None for the CPU."""
    if device.type != "cuda":
        return None
    return int(torch.cuda.mem_get_info(device)[0])


def choose_placement(
    requested: str, augment_on: str, device: torch.device, nbytes: int
) -> DataPlacement:
    """Resolve ``--data-on auto|host|device`` for a set of ``nbytes`` decoded bytes.

    ``auto`` picks the device when the views are made there (``--augment-on device``), the
    device is a GPU and the set takes at most :data:`DEVICE_MEMORY_FRACTION` of its free
    memory. On the CPU ``auto`` keeps the DataLoader, whose workers decode in parallel with the
    step (``benchmarks/RESULTS.md`` has both paths' CPU figures).

    Raises:
        DatasetError: ``--data-on device`` on a GPU with less free memory than the set needs.
    """
    size = f"{nbytes / MIB:.3g} MiB"
    free = free_bytes(device)
    if requested == "host":
        return DataPlacement("host", "--data-on host", nbytes)
    if requested == "device":
        if free is not None and nbytes > free:
            raise DatasetError(
                f"--data-on device needs {size} on {device} but {free / MIB:.0f} MiB are free; "
                "use --data-on host, or lower --limit or --image-size"
            )
        return DataPlacement("device", f"--data-on device, {size} uint8 on {device}", nbytes)
    if augment_on != "device":
        return DataPlacement("host", "auto: --augment-on cpu makes the views in workers", nbytes)
    if free is None:
        return DataPlacement("host", "auto: on the CPU the DataLoader path is kept", nbytes)
    if nbytes > DEVICE_MEMORY_FRACTION * free:
        share = f"{DEVICE_MEMORY_FRACTION:.0%} of the {free / MIB:.0f} MiB free on {device}"
        return DataPlacement("host", f"auto: {size} is more than {share}", nbytes)
    share = f"{nbytes / free:.1%} of the {free / MIB:.0f} MiB free"
    return DataPlacement("device", f"auto: {size} uint8 on {device}, {share}", nbytes)


def decode_all(dataset: Dataset, num_images: int, image_size: int, workers: int) -> Tensor:
    """Every image of ``dataset`` (uint8 ``(3, S, S)`` items) stacked into one host tensor.

    Args:
        dataset: yields ``(image, label)`` with ``image`` a uint8 ``(3, S, S)`` tensor.
        num_images: ``len(dataset)``.
        image_size: ``S``.
        workers: DataLoader workers that decode in parallel (0: in this process).

    Returns:
        ``(N, 3, S, S)`` uint8 on the CPU, row ``i`` = ``dataset[i]``.
    """
    out = torch.empty((num_images, 3, image_size, image_size), dtype=torch.uint8)
    loader = DataLoader(
        dataset,
        batch_size=DECODE_BATCH,
        shuffle=False,
        num_workers=workers,
        worker_init_fn=ignore_stop_signals,
        # Its own generator: the workers' base seed must not consume the global stream, which
        # seeds the model's initial weights next (the DataLoader path draws nothing here).
        generator=torch.Generator().manual_seed(0),
    )
    start = 0
    with worker_batches(loader) as batches:
        for images, _ in batches:
            out[start : start + len(images)] = images
            start += len(images)
    if start != num_images:
        raise DatasetError(f"decoded {start} images but the dataset reported {num_images}")
    return out


def to_device_async(indices: Tensor, device: torch.device) -> Tensor:
    """Move a host index tensor to ``device`` without a host sync (pinned, non-blocking)."""
    if device.type != "cuda":
        return indices.to(device)
    return indices.pin_memory().to(device, non_blocking=True)


class ResidentLoader:
    """Batches ``(images, None)`` of one epoch, gathered from a device-resident uint8 tensor.

    A drop-in for the DataLoader of ``--augment-on device``: iterating it after
    ``sampler.set_epoch(epoch, skip)`` yields the same uint8 batches, in the same order.

    Args:
        images: ``(N, 3, S, S)`` uint8 on the training device.
        sampler: this rank's share of each epoch
            (:class:`~simclr_cli.data.loader.ResumableSampler`).
        batch_size: images per step on this process (full batches only, as ``drop_last``).
    """

    def __init__(self, images: Tensor, sampler: Sampler[int], batch_size: int) -> None:
        self.images = images
        self.sampler = sampler
        self.batch_size = batch_size

    def __iter__(self) -> Iterator[tuple[Tensor, None]]:
        order = torch.tensor(list(self.sampler), dtype=torch.long)  # host: once per epoch
        steps = len(order) // self.batch_size
        order = to_device_async(order[: steps * self.batch_size], self.images.device)
        for step in range(steps):
            rows = order[step * self.batch_size : (step + 1) * self.batch_size]  # a view
            yield self.images.index_select(0, rows), None

    def __len__(self) -> int:
        return len(self.sampler) // self.batch_size  # type: ignore[arg-type]
