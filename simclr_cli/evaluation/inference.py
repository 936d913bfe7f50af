"""Running a frozen SimCLR model: device, precision, the evaluation loader and ``h``.

One home for what every consumer of a trained encoder shares: linear evaluation
(:mod:`simclr_cli.evaluation.linear_eval`), the feature export
(:mod:`simclr_cli.evaluation.features`), the kNN monitor
of a training run, ``simclr export`` and ``simclr report``. Device and precision are resolved here
for the whole package, pretraining included (the config validates with the same rules).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from simclr_cli.data.workers import ignore_stop_signals, worker_batches
from simclr_cli.devices import resolve_device_name, resolve_precision
from simclr_cli.errors import DatasetError, UsageError
from simclr_cli.method.preprocess import normalize_uint8, to_uint8_transform

LAYERS = ("encoder", "projection")
# The autocast dtype of each resolved ``--precision`` (fp32: no autocast).
PRECISION_DTYPES: dict[str, torch.dtype | None] = {
    "fp32": None,
    "bf16": torch.bfloat16,
    "fp16": torch.float16,
}


# ----------------------------------------------------------------------------------------------
# device and precision


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is a usage error."""
    available = torch.cuda.is_available()
    resolved = torch.device(resolve_device_name(str(device), available))
    if resolved.type == "cuda" and not available:
        raise UsageError("--device", str(device), "no CUDA device is visible; use --device cpu")
    return resolved


def process_device(resolved_device: str) -> torch.device:
    """This process's device: ``cuda:<current device>`` on CUDA (a distributed worker has set
    its local rank's GPU as current), else the CPU."""
    if resolved_device == "cuda":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device(resolved_device)


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for inference: bf16 (or fp16) on CUDA, none on CPU or with fp32."""
    if device.type != "cuda":
        return None
    return PRECISION_DTYPES[resolve_precision(precision, "cuda")]


def autocast_context(device: torch.device, dtype: torch.dtype | None) -> torch.autocast:
    """Mixed precision for a forward pass: autocast to ``dtype``; None is full precision.

    With None, autocast is switched off rather than left alone, so full precision also holds
    inside a caller's own autocast region.
    """
    return torch.autocast(device_type=device.type, dtype=dtype, enabled=dtype is not None)


# ----------------------------------------------------------------------------------------------
# the frozen model and its input


def load_frozen_model(checkpoint_ref: str, cache_dir: Path) -> tuple[nn.Module, dict, Path]:
    """Rebuild the SimCLR model from a checkpoint file or release name alone, frozen.

    Returns:
        ``(model in eval mode with requires_grad off, payload, checkpoint path)``.

    Raises:
        CheckpointError: missing, corrupt, unsafe, without an encoder or not a pretraining
            checkpoint.
    """
    from simclr_cli.storage.checkpoint import check_encoder, load_checkpoint, load_model
    from simclr_cli.storage.hub import resolve_checkpoint

    path = resolve_checkpoint(checkpoint_ref, cache_dir)
    payload = load_checkpoint(path)
    check_encoder(payload, path)
    model = load_model(payload).eval().requires_grad_(False)
    return model, payload, path


def checkpoint_image_size(payload: dict, image_size: int | None, kind: str) -> int:
    """``--image-size``, else the checkpoint's own, else the dataset kind's default."""
    from simclr_cli.data.facts import default_image_size

    return image_size or payload["model"].get("image_size") or default_image_size(kind)


def checkpoint_transform(
    payload: dict, image_size: int | None, kind: str
) -> Callable[[Any], Tensor]:
    """Test-time transform at the checkpoint's own image size: resize + centre crop to uint8
    tensors; :func:`encode` scales and normalises each batch with the model's ``mean``/``std``
    (the checkpoint's normalisation, ``None``: none)."""
    return to_uint8_transform(checkpoint_image_size(payload, image_size, kind))


# ----------------------------------------------------------------------------------------------
# encoding


def build_loader(
    dataset: Dataset, batch_size: int, device: torch.device, workers: int = 0
) -> DataLoader:
    """A loader over the WHOLE dataset in its own order: no shuffle, last partial batch kept."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_stop_signals,
    )


def iter_features(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    layer: str = "encoder",
    precision: str = "auto",
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(features, labels)`` per batch, in loader order, from a frozen SimCLR model.

    The model is put in eval mode for the pass (and its previous mode restored afterwards, so a
    training loop can call this as a monitor). Inputs go channels-last (and under autocast on CUDA).

    Args:
        model: a SimCLR module with ``.encoder`` and ``.projector``.
        loader: batches of ``(images, labels)``.
        device: where the model is.
        layer: ``"encoder"`` for the representation h (B, feature_dim), ``"projection"`` for
            z = g(h) (B, projection_dim).
        precision: ``--precision`` (see :func:`autocast_dtype`).

    Yields:
        ``(features, labels)``: (B, D) float32 and (B,) int64 CPU tensors (-1 = unlabelled).
    """
    if layer not in LAYERS:
        raise UsageError("--layer", layer, "use one of: encoder, projection")
    dtype = autocast_dtype(device, precision)
    was_training = model.training
    model.eval()
    try:
        with worker_batches(loader) as batches:  # workers end with the pass, also on an error
            for x, y in batches:
                out = encode(model, x.to(device, non_blocking=True), layer, dtype).cpu()
                # clone outside inference mode: plain tensors that autograd may save later
                yield out.clone(), torch.as_tensor(y).long().clone()
    finally:
        model.train(was_training)


def encode(model: nn.Module, x: Tensor, layer: str, dtype: torch.dtype | None) -> Tensor:
    """h (or z = g(h)) of a batch already on the model's device, float32, inference mode.

    Args:
        model: a SimCLR module with ``.encoder``, ``.projector``, ``.mean`` and ``.std``.
        x: (B, 3, H, W) images: uint8 (from
            :func:`~simclr_cli.method.preprocess.to_uint8_transform`;
            scaled and normalised here with the model's ``mean``/``std``) or float (already
            transformed); made channels-last (faster convolutions with cuDNN and oneDNN: 1.3-1.9x
            for a ResNet-18 at 32 px on a 2-core CPU).
        layer: ``"encoder"`` (h) or ``"projection"`` (z).
        dtype: autocast dtype, or None for full precision.

    Returns:
        (B, D) float32 inference tensor on the same device.
    """
    if x.dtype == torch.uint8:
        x = normalize_uint8(x, model.mean, model.std)
    x = x.contiguous(memory_format=torch.channels_last)
    with torch.inference_mode(), autocast_context(x.device, dtype):
        h = model.encoder(x)  # (B, feature_dim)
        return (h if layer == "encoder" else model.projector(h)).float()


def extract_features(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: str | torch.device,
    layer: str = "encoder",
    workers: int = 0,
    precision: str = "auto",
    description: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Features of every example of ``dataset``, rows in dataset order.

    With ``description``, the batches are counted on the progress display (a bar, or plain
    lines in a log); without, the extraction is silent (the kNN monitor of a training run).

    Returns:
        ``(features, labels)``: (N, D) float32 and (N,) int64 CPU tensors with N = len(dataset)
        (no dropped last batch); label -1 marks an unlabelled example.
    """
    device = resolve_device(device)
    loader = build_loader(dataset, batch_size, device, workers)
    with contextlib.closing(iter_features(model, loader, device, layer, precision)) as batches:
        total = len(loader)
        parts = list(batches) if description is None else _counted(batches, description, total)
    if not parts:
        raise DatasetError(
            "the dataset is empty; point --dataset/--data-dir at a folder with images"
        )
    features, labels = (torch.cat(p) for p in zip(*parts, strict=True))
    return features, labels


def _counted(batches: Iterator[Any], description: str, total: int) -> list[Any]:
    """``list(batches)``, counting them on a :class:`~simclr_cli.console.StepProgress`."""
    from simclr_cli.console import StepProgress

    parts = []
    with StepProgress(description, total, unit="batch", transient=True) as progress:
        for part in batches:
            parts.append(part)
            progress.update(len(parts))
    return parts


# ----------------------------------------------------------------------------------------------
# what a dataset under evaluation says about itself


def _parts(dataset: Dataset | None) -> list[Dataset]:
    """The datasets under ``Subset`` and ``ConcatDataset`` wrappers."""
    from torch.utils.data import ConcatDataset, Subset

    if dataset is None:
        return []
    if isinstance(dataset, Subset):
        return _parts(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return [part for inner in dataset.datasets for part in _parts(inner)]
    return [dataset]


def class_names(dataset: Dataset | None) -> list[str] | None:
    """The class names a dataset knows (label ``i`` is ``names[i]``), or None."""
    for part in _parts(dataset):
        names = getattr(part, "classes", None)
        if names:
            return [str(n) for n in names]
    return None


def skipped_count(*datasets: Dataset | None) -> int:
    """Unreadable files skipped by the image folders under ``datasets``, each folder once."""
    from simclr_cli.data.datasets import skipped_files

    unique = {id(part): part for dataset in datasets for part in _parts(dataset)}
    return sum(skipped_files(part) for part in unique.values())


def report_skipped(*datasets: Dataset | None) -> int:
    """Say once how many unreadable image files were skipped (as ``pretrain`` does)."""
    from simclr_cli.console import get_console
    from simclr_cli.errors import plural

    count = skipped_count(*datasets)
    if count:
        get_console().print(f"[yellow]skipped {plural(count, 'unreadable image file')}")
    return count
