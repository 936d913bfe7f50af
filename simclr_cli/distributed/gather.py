"""All-gather with exact gradients: the global batch of NT-Xent and of global batch norm."""

from __future__ import annotations

from typing import Any

import torch
import torch.distributed as dist
from torch import Tensor

from simclr_cli.distributed.ranks import world_size


class _GatherWithGrad(torch.autograd.Function):
    """All-gather along dim 0 whose backward sums every rank's gradient for this rank's rows."""

    @staticmethod
    def forward(ctx: Any, x: Tensor) -> Tensor:
        ctx.rows = x.shape[0]
        parts = [torch.empty_like(x) for _ in range(dist.get_world_size())]
        dist.all_gather(parts, x.contiguous())
        return torch.cat(parts, dim=0)  # (world * n, ...)

    @staticmethod
    def backward(ctx: Any, grad: Tensor) -> Tensor:
        # Every rank's loss used this rank's rows: d(sum_r L_r)/dx = sum_r dL_r/d(gathered)[slice].
        # Returning only the local slice (a common GatherLayer) drops the other ranks' terms.
        grad = grad.contiguous().clone()
        dist.all_reduce(grad, op=dist.ReduceOp.SUM)
        start = dist.get_rank() * ctx.rows
        return grad[start : start + ctx.rows]


def gather_with_grad(x: Tensor) -> Tensor:
    """Concatenate ``x`` from every rank along dim 0, keeping exact gradients.

    The backward pass all-reduces (sums) the incoming gradient and returns this rank's slice,
    so that with DDP (which averages parameter gradients) the gradients equal those of one
    process computing the mean loss over the global batch. Every rank must pass a tensor of
    the same shape.

    Args:
        x: local rows, shape (n, ...).

    Returns:
        Rows of all ranks in rank order, shape (world_size * n, ...); ``x`` itself in one process.
    """
    if world_size() == 1:
        return x
    return _GatherWithGrad.apply(x)
