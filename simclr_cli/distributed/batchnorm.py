"""Global batch norm: batch statistics over the batches of all processes (SimCLR's "global BN").

On CUDA this is torch's ``SyncBatchNorm``; torch's version only accepts CUDA tensors, so CPU
processes (gloo) get :class:`GlobalBatchNorm`, which gathers the statistics itself (and runs on
CUDA too: ``benchmarks/gpu_check.sh`` measures it against ``SyncBatchNorm`` there, whose
backward syncs the host in every layer).

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020, Sec. 2.2 (global BN).
"""

from __future__ import annotations

import torch
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm

from simclr_cli.distributed.gather import gather_with_grad
from simclr_cli.distributed.ranks import world_size


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are taken over the batches of all processes.

    Drop-in for ``nn.BatchNorm1d/2d/3d`` (same parameters and buffers: ``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``, so state dicts are
    interchangeable). In training, each rank computes its per-channel mean, sum of squared
    deviations and count; these (3, C) statistics are gathered with
    :func:`~simclr_cli.distributed.gather.gather_with_grad` and merged exactly (the
    parallel-variance formula, which avoids the cancellation of sum-of-squares minus squared
    mean), so gradients flow through the collective. With one process, or in eval mode, it is
    plain batch norm.

    Reference: Chen et al., SimCLR (ICML 2020), Sec. 2.2 "Global BN"; Chan, Golub & LeVeque,
    "Updating formulae and a pairwise algorithm for computing sample variances" (1979).
    """

    def _check_input_dim(self, input: Tensor) -> None:
        if input.dim() < 2:
            raise ValueError(f"expected at least 2D input (got {input.dim()}D input)")

    def forward(self, input: Tensor) -> Tensor:
        """Normalize ``input`` of shape (N, C, *) with global batch statistics in training."""
        self._check_input_dim(input)
        use_batch_stats = self.training or self.running_mean is None
        if not use_batch_stats or world_size() == 1:
            return super().forward(input)
        factor = self._average_factor()
        mean, var, count = _global_moments(input)  # (C,), (C,) biased, scalar
        running = (self.running_mean, self.running_var)
        if self.training and running[0] is not None and running[1] is not None:
            with torch.no_grad():
                unbiased = var * (count / (count - 1).clamp(min=1))
                running[0].lerp_(mean.to(running[0].dtype), factor)
                running[1].lerp_(unbiased.to(running[1].dtype), factor)
        shape = (1, -1) + (1,) * (input.dim() - 2)
        out = (input.to(mean.dtype) - mean.view(shape)) * torch.rsqrt(var.view(shape) + self.eps)
        if self.affine:
            out = out * self.weight.view(shape) + self.bias.view(shape)
        return out.to(input.dtype)

    def _average_factor(self) -> float:
        # Same bookkeeping as _BatchNorm.forward: momentum None means a cumulative average.
        if not (self.training and self.track_running_stats) or self.num_batches_tracked is None:
            return 0.0
        self.num_batches_tracked.add_(1)
        if self.momentum is None:
            return 1.0 / float(self.num_batches_tracked)
        return float(self.momentum)


def _global_moments(x: Tensor) -> tuple[Tensor, Tensor, Tensor]:
    """Per-channel mean and biased variance of ``x`` (N, C, *) over every rank's batch.

    Returns:
        mean (C,), var (C,) and the global element count per channel (0-dim tensor), in float32
        or wider.
    """
    dims = [0, *range(2, x.dim())]
    shape = (1, -1) + (1,) * (x.dim() - 2)
    # float32 at least (bf16/fp16 statistics are too coarse); float64 stays float64.
    xf = x.to(torch.promote_types(x.dtype, torch.float32))
    local_mean = xf.mean(dims)  # (C,)
    local_m2 = (xf - local_mean.view(shape)).square().sum(dims)  # (C,)
    local_count = torch.full_like(local_mean, x.numel() // x.shape[1])  # (C,), no grad
    stats = gather_with_grad(torch.stack([local_mean, local_m2, local_count]).unsqueeze(0))
    means, m2s, counts = stats.unbind(1)  # each (world, C)
    count = counts.sum(0)  # (C,), equal across channels
    mean = (counts * means).sum(0) / count
    m2 = (m2s + counts * (means - mean).square()).sum(0)
    return mean, m2 / count, count[0]


def convert_sync_batchnorm(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Replace every batch-norm layer with one that uses global batch statistics.

    Call it before :func:`~simclr_cli.distributed.ranks.wrap_ddp`. On CUDA this is
    ``nn.SyncBatchNorm.convert_sync_batchnorm``; on CPU every ``_BatchNorm`` becomes a
    :class:`GlobalBatchNorm` sharing the original parameters and buffers (so a state dict loads
    into either).

    Args:
        model: the model, modified in place where possible.
        device: where the model runs.

    Returns:
        The converted model (use the return value: a bare BN layer is replaced, not modified).
    """
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return to_global_batchnorm(model)


def to_global_batchnorm(module: nn.Module) -> nn.Module:
    """Replace every batch-norm layer of ``module`` with a :class:`GlobalBatchNorm` sharing its
    parameters and buffers, on any device (:func:`convert_sync_batchnorm` picks it on the CPU).

    Returns:
        The converted module (a bare BN layer is replaced, not modified).
    """
    if isinstance(module, _BatchNorm) and not isinstance(module, GlobalBatchNorm):
        converted = GlobalBatchNorm(
            module.num_features,
            eps=module.eps,
            momentum=module.momentum,
            affine=module.affine,
            track_running_stats=module.track_running_stats,
        )
        if module.affine:
            converted.weight = module.weight
            converted.bias = module.bias
        converted.running_mean = module.running_mean
        converted.running_var = module.running_var
        converted.num_batches_tracked = module.num_batches_tracked
        converted.train(module.training)
        return converted
    for name, child in module.named_children():
        module.add_module(name, to_global_batchnorm(child))
    return module
