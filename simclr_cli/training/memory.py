"""Will the first training step fit? A shape-only (``meta`` device) estimate of its memory."""

from __future__ import annotations

import math
import os
from typing import Any

import torch
from torch import Tensor, nn

from simclr_cli.config import PretrainConfig
from simclr_cli.errors import TrainingError
from simclr_cli.method.model import build_simclr
from simclr_cli.training.recipe import build_spec


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
