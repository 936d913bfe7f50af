"""This process in its group: rank helpers, reductions, its device and the DDP wrapper.

Every helper also works with no process group: then it describes rank 0 of 1 and changes
nothing, so single-process code needs no branches.
"""

from __future__ import annotations

from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

# A reduction returns what it was given: a tensor for a tensor, a float for a number.
_Value = TypeVar("_Value", Tensor, float)


def is_initialized() -> bool:
    """Return True when a default process group exists in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Return this process's global rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Return the number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def is_main() -> bool:
    """Return True on global rank 0, the process that prints, logs and writes checkpoints."""
    return rank() == 0


def barrier() -> None:
    """Wait until every process reaches this point (no-op in a single process)."""
    if is_initialized():
        dist.barrier()


def _collective_device() -> torch.device:
    # NCCL only moves CUDA tensors; gloo moves CPU tensors.
    if is_initialized() and dist.get_backend() == "nccl":
        return torch.device("cuda", torch.cuda.current_device())
    return torch.device("cpu")


def all_reduce_sum(value: _Value) -> _Value:
    """Sum a tensor (any shape) or a number over all processes, without autograd (counts, metrics).

    Returns:
        The sum over ranks, of the same kind as ``value`` (a new detached tensor, or a float).
    """
    if isinstance(value, Tensor):
        out = value.detach().clone()
        if is_initialized():
            moved = out.to(_collective_device())
            dist.all_reduce(moved, op=dist.ReduceOp.SUM)
            out = moved.to(value.device)
        return out
    if not is_initialized():
        return float(value)
    total = torch.tensor([float(value)], dtype=torch.float64, device=_collective_device())
    dist.all_reduce(total, op=dist.ReduceOp.SUM)
    return float(total.item())


def all_reduce_mean(value: _Value) -> _Value:
    """Average a tensor or number over all processes, without autograd (for logging a loss)."""
    return all_reduce_sum(value) / world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every process; returns it on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


def wrap_ddp(
    model: nn.Module, device: torch.device | str, broadcast_buffers: bool = True
) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when there are several processes.

    Args:
        model: the model, already on ``device`` (and already converted to global BN if wanted).
        device: this process's device (see :func:`simclr_cli.evaluation.inference.process_device`).
        broadcast_buffers: send rank 0's buffers (batch-norm running statistics) to every rank
            before each forward, one collective per forward. Global batch norm computes the
            same statistics on every rank, so it needs none: pass False.

    Returns:
        ``DistributedDataParallel(model)``, or ``model`` itself in a single process.
    """
    if world_size() == 1:
        return model
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(
            model, device_ids=[index], output_device=index, broadcast_buffers=broadcast_buffers
        )
    return DistributedDataParallel(model, broadcast_buffers=broadcast_buffers)


def available_backends() -> list[str]:
    """Process-group backends this torch build offers (for ``simclr info``)."""
    checks = {"nccl": dist.is_nccl_available, "gloo": dist.is_gloo_available}
    checks["mpi"] = dist.is_mpi_available
    return [name for name, check in checks.items() if dist.is_available() and check()]
