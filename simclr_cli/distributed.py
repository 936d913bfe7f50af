"""All that simclr-cli knows about ``torch.distributed``: rank helpers, gathers, global BN, launch.

This is the only module of the package that imports :mod:`torch.distributed`. The rest of the
code asks :func:`rank`, :func:`world_size` and :func:`is_main`, which also work when no process
group exists (then they describe a single process), and calls :func:`gather_with_grad`,
:func:`convert_sync_batchnorm` and :func:`wrap_ddp`, which are identities in a single process.

How a pretraining run uses it (the training module's side)::

    def pretrain(cfg):                      # module-level, runs in every process
        device = inference.process_device(cfg.resolved_device)
        model = build_simclr(...).to(device)
        if cfg.resolved_sync_bn:
            model = convert_sync_batchnorm(model, device)   # before DDP
        model = wrap_ddp(model, device)
        ...
        if is_main():
            save_checkpoint({"state_dict": unwrap(model).state_dict(), ...}, path)

    def run_pretrain(cfg):
        return launch(pretrain, cfg)         # rank 0's return value

Three ways to get several processes, chosen by :func:`plan_launch`:

* ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or an
  ``srun`` job step (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``,
  ``SLURM_NODELIST``, whose first host is the master): every process was started by the
  launcher; simclr-cli joins the group and does not spawn.
* ``--gpus N``: simclr-cli spawns N processes on this node, one per GPU, with NCCL.
* ``--device cpu --processes N``: simclr-cli spawns N CPU processes with gloo.

``--nodes``, ``--node-rank``, ``--master-addr`` and ``--master-port`` extend the last two to several
machines (the same command on every node, each with its own ``--node-rank``).

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020, Sec. 2.2 (large-batch training, global BN).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import re
import signal
import socket
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from datetime import timedelta
from pathlib import Path
from typing import Any, Literal, overload

import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import Tensor, nn
from torch.nn.modules.batchnorm import _BatchNorm
from torch.nn.parallel import DistributedDataParallel

from simclr_cli import signals
from simclr_cli.errors import DistributedError, SimCLRError, UsageError, os_error_line

__all__ = [
    "DEFAULT_TIMEOUT",
    "GlobalBatchNorm",
    "LaunchPlan",
    "all_reduce_mean",
    "all_reduce_sum",
    "barrier",
    "broadcast_object",
    "convert_sync_batchnorm",
    "detect_launcher",
    "find_free_port",
    "first_slurm_host",
    "gather_with_grad",
    "is_initialized",
    "is_main",
    "launch",
    "launcher_world_size",
    "local_rank",
    "plan_launch",
    "rank",
    "unwrap",
    "world_size",
    "wrap_ddp",
]

#: Exit status of a run stopped by SIGINT/SIGTERM (128 + SIGINT), kept through the launcher.
INTERRUPTED_EXIT_CODE = 130

#: How long a collective may wait for the other processes before the run fails instead of hanging.
#: Override with the environment variable ``SIMCLR_DIST_TIMEOUT`` (seconds).
DEFAULT_TIMEOUT = timedelta(minutes=30)

# ----------------------------------------------------------------------------------------------
# Rank helpers: all of them also work with no process group (one process, rank 0 of 1).
# ----------------------------------------------------------------------------------------------


def is_initialized() -> bool:
    """Return True when a default process group exists in this process."""
    return dist.is_available() and dist.is_initialized()


def rank() -> int:
    """Return this process's global rank (0 without a process group)."""
    return dist.get_rank() if is_initialized() else 0


def world_size() -> int:
    """Return the number of processes in the group (1 without a process group)."""
    return dist.get_world_size() if is_initialized() else 1


def local_rank() -> int:
    """Return this process's index on its node (0 without a process group).

    Read from ``LOCAL_RANK``, which torchrun sets and :func:`launch` sets for spawned and
    SLURM processes.
    """
    if not is_initialized():
        return 0
    return int(os.environ.get("LOCAL_RANK", os.environ.get("SLURM_LOCALID", "0")))


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


@overload
def all_reduce_sum(value: Tensor) -> Tensor: ...
@overload
def all_reduce_sum(value: float) -> float: ...
def all_reduce_sum(value: Tensor | float) -> Tensor | float:
    """Sum a tensor or number over all processes, without autograd (for counts and metrics).

    Args:
        value: a tensor (any shape) or a Python number.

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


@overload
def all_reduce_mean(value: Tensor) -> Tensor: ...
@overload
def all_reduce_mean(value: float) -> float: ...
def all_reduce_mean(value: Tensor | float) -> Tensor | float:
    """Average a tensor or number over all processes, without autograd (for logging a loss).

    Args:
        value: a tensor (any shape) or a Python number.

    Returns:
        The mean over ranks, of the same kind as ``value``.
    """
    total = all_reduce_sum(value)
    return total / world_size()


def broadcast_object(obj: Any, src: int = 0) -> Any:
    """Send a picklable object from rank ``src`` to every process; returns it on every rank."""
    if not is_initialized():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=src, device=_collective_device())
    return box[0]


# ----------------------------------------------------------------------------------------------
# Gather with exact gradients
# ----------------------------------------------------------------------------------------------


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


# ----------------------------------------------------------------------------------------------
# Global batch norm for CPU processes (torch's SyncBatchNorm only accepts CUDA tensors)
# ----------------------------------------------------------------------------------------------


class GlobalBatchNorm(_BatchNorm):
    """Batch norm whose training statistics are taken over the batches of all processes.

    Drop-in for ``nn.BatchNorm1d/2d/3d`` (same parameters and buffers: ``weight``, ``bias``,
    ``running_mean``, ``running_var``, ``num_batches_tracked``, so state dicts are
    interchangeable). In training, each rank computes its per-channel mean, sum of squared
    deviations and count; these (3, C) statistics are gathered with :func:`gather_with_grad` and
    merged exactly (the parallel-variance formula, which avoids the cancellation of
    sum-of-squares minus squared mean), so gradients flow through the collective. With one
    process, or in eval mode, it is plain batch norm.

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

    Call it before :func:`wrap_ddp`. On CUDA this is ``nn.SyncBatchNorm.convert_sync_batchnorm``;
    on CPU every ``_BatchNorm`` becomes a :class:`GlobalBatchNorm` sharing the original
    parameters and buffers (so a state dict loads into either).

    Args:
        model: the model, modified in place where possible.
        device: where the model runs.

    Returns:
        The converted model (use the return value: a bare BN layer is replaced, not modified).
    """
    if torch.device(device).type == "cuda":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return _to_global_bn(model)


def _to_global_bn(module: nn.Module) -> nn.Module:
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
        module.add_module(name, _to_global_bn(child))
    return module


def wrap_ddp(model: nn.Module, device: torch.device | str) -> nn.Module:
    """Wrap ``model`` in DistributedDataParallel when there are several processes.

    Args:
        model: the model, already on ``device`` (and already converted to global BN if wanted).
        device: this process's device (see :func:`simclr_cli.inference.process_device`).

    Returns:
        ``DistributedDataParallel(model)``, or ``model`` itself in a single process.
    """
    if world_size() == 1:
        return model
    device = torch.device(device)
    if device.type == "cuda":
        index = device.index if device.index is not None else torch.cuda.current_device()
        return DistributedDataParallel(model, device_ids=[index], output_device=index)
    return DistributedDataParallel(model)


def unwrap(model: nn.Module) -> nn.Module:
    """Strip DDP and ``torch.compile`` wrappers, so state dict keys have no ``module.`` prefix."""
    while True:
        if isinstance(model, DistributedDataParallel):
            model = model.module
        elif hasattr(model, "_orig_mod") and isinstance(model._orig_mod, nn.Module):
            model = model._orig_mod  # torch.compile's OptimizedModule
        else:
            return model


# ----------------------------------------------------------------------------------------------
# Launch planning (pure: reads the config and an environment mapping)
# ----------------------------------------------------------------------------------------------

LaunchMode = Literal["single", "spawn", "env"]


@dataclass(frozen=True)
class LaunchPlan:
    """How this invocation becomes one or several processes.

    Attributes:
        mode: "single" (no process group), "spawn" (this process starts ``procs_per_node``
            workers) or "env" (a launcher such as torchrun or SLURM started this process).
        backend: "nccl" or "gloo" (None for "single").
        world_size: processes over all nodes.
        procs_per_node: workers on this node (spawn) or tasks per node (env).
        node_rank: index of this node.
        master_addr: address of the rendezvous host (global rank 0).
        master_port: its TCP port (None only for "single").
        source: "cli", "torchrun" or "slurm".
        rank: this process's global rank ("env" only; spawned workers get theirs at start).
        local_rank: this process's index on its node ("env" only).
    """

    mode: LaunchMode
    backend: Literal["nccl", "gloo"] | None
    world_size: int
    procs_per_node: int
    node_rank: int
    master_addr: str
    master_port: int | None
    source: Literal["cli", "torchrun", "slurm"]
    rank: int = 0
    local_rank: int = 0


def detect_launcher(env: Mapping[str, str] | None = None) -> Literal["torchrun", "slurm"] | None:
    """Name the launcher that started this process as one of several, or None.

    torchrun sets ``RANK`` and ``WORLD_SIZE``. A SLURM job step (``srun``) sets ``SLURM_PROCID``
    and ``SLURM_STEP_NUM_TASKS``; a batch script or ``salloc`` shell also has ``SLURM_PROCID``
    and ``SLURM_NTASKS`` but is one process, so those alone do not count. A step of one task is
    not a multi-process launch either (``--gpus``/``--processes`` still apply inside it).
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return "torchrun"
    if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return "slurm"
    return None


def launcher_world_size(env: Mapping[str, str] | None = None) -> int | None:
    """Processes started by torchrun or a SLURM job step, or None when no launcher did."""
    env = os.environ if env is None else env
    launcher = detect_launcher(env)
    if launcher == "torchrun":
        return int(env["WORLD_SIZE"])
    if launcher == "slurm":
        return int(env["SLURM_STEP_NUM_TASKS"])
    return None


def plan_launch(
    cfg: Any,
    env: Mapping[str, str] | None = None,
    visible_gpus: int | None = None,
) -> LaunchPlan:
    """Decide how to start processes from the config and the launcher environment.

    A launcher environment (see :func:`detect_launcher`) wins over ``--gpus``/``--processes``.

    Args:
        cfg: a config with ``gpus``, ``processes``, ``nodes``, ``node_rank``, ``master_addr``,
            ``master_port`` and ``resolved_device`` (a ``PretrainConfig``).
        env: the environment to read (default ``os.environ``).
        visible_gpus: CUDA devices visible here (default ``torch.cuda.device_count()``).

    Returns:
        The plan; a single-node "spawn" without ``--master-port`` gets a free port.

    Raises:
        UsageError: conflicting or out-of-range options.
        DistributedError: the master port is already in use on this machine.
    """
    env = os.environ if env is None else env
    backend: Literal["nccl", "gloo"] = "nccl" if cfg.resolved_device == "cuda" else "gloo"
    launcher = detect_launcher(env)
    if launcher == "torchrun":
        _reject_spawn_options(cfg, "torchrun")
        return _plan_torchrun(cfg, env, backend)
    if launcher == "slurm":
        _reject_spawn_options(cfg, "SLURM")
        return _plan_slurm(cfg, env, backend)
    procs = _procs_per_node(cfg, visible_gpus)
    nodes = int(cfg.nodes)
    if nodes < 1:
        raise UsageError("--nodes", nodes, "use 1 or more")
    if not 0 <= int(cfg.node_rank) < nodes:
        raise UsageError("--node-rank", cfg.node_rank, f"use 0 to {nodes - 1} for --nodes {nodes}")
    if procs * nodes == 1:
        return LaunchPlan("single", None, 1, 1, 0, str(cfg.master_addr), None, "cli")
    port = _spawn_port(cfg, nodes)
    return LaunchPlan(
        "spawn",
        backend,
        procs * nodes,
        procs,
        int(cfg.node_rank),
        str(cfg.master_addr),
        port,
        "cli",
    )


def _reject_spawn_options(cfg: Any, launcher: str) -> None:
    # The launcher already decided how many processes run; spawning more would nest groups.
    if int(cfg.gpus) > 1:
        raise UsageError("--gpus", cfg.gpus, f"omit it: {launcher} already started the processes")
    if int(cfg.processes) > 1:
        raise UsageError(
            "--processes", cfg.processes, f"omit it: {launcher} already started the processes"
        )


def _plan_torchrun(cfg: Any, env: Mapping[str, str], backend: Any) -> LaunchPlan:
    size = int(env["WORLD_SIZE"])
    if size == 1:
        return LaunchPlan(
            "single", None, 1, 1, 0, env.get("MASTER_ADDR", "127.0.0.1"), None, "torchrun"
        )
    if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        raise DistributedError(
            "RANK and WORLD_SIZE are set but MASTER_ADDR/MASTER_PORT are not; start the run with "
            "torchrun, or set all four variables"
        )
    local = int(env.get("LOCAL_RANK", "0"))
    per_node = int(env.get("LOCAL_WORLD_SIZE", str(size)))
    return LaunchPlan(
        mode="env",
        backend=backend,
        world_size=size,
        procs_per_node=per_node,
        node_rank=int(env.get("GROUP_RANK", env.get("NODE_RANK", "0"))),
        master_addr=env["MASTER_ADDR"],
        master_port=int(env["MASTER_PORT"]),
        source="torchrun",
        rank=int(env["RANK"]),
        local_rank=local,
    )


def _plan_slurm(cfg: Any, env: Mapping[str, str], backend: Any) -> LaunchPlan:
    size = int(env["SLURM_STEP_NUM_TASKS"])
    addr = env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_NODELIST", ""))
    if not addr:
        addr = str(cfg.master_addr)
    if "MASTER_PORT" in env:
        port = int(env["MASTER_PORT"])
    elif cfg.master_port is not None:
        port = int(cfg.master_port)
    elif "SLURM_JOB_ID" in env:
        # Every task of the job derives the same port; spreads concurrent jobs over 10000-29999.
        port = 10000 + int(env["SLURM_JOB_ID"]) % 20000
    else:
        raise UsageError("--master-port", None, "set it (the same on every task) under SLURM")
    nodes = max(1, int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1"))))
    return LaunchPlan(
        mode="env",
        backend=backend,
        world_size=size,
        procs_per_node=max(1, size // nodes),
        node_rank=int(env.get("SLURM_NODEID", "0")),
        master_addr=addr,
        master_port=port,
        source="slurm",
        rank=int(env["SLURM_PROCID"]),
        local_rank=int(env.get("SLURM_LOCALID", "0")),
    )


def first_slurm_host(nodelist: str) -> str:
    """Return the first host of a SLURM node list ("gpu[003-005,9],cpu1" -> "gpu003")."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\]([^,\[]*))?", nodelist.strip())
    if match is None:
        return ""
    prefix, ranges, suffix = match.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0] + (suffix or "")


def _procs_per_node(cfg: Any, visible_gpus: int | None) -> int:
    gpus, procs = int(cfg.gpus), int(cfg.processes)
    if gpus < 0:
        raise UsageError("--gpus", gpus, "use 0 (no spawning) or a positive number of GPUs")
    if procs < 1:
        raise UsageError("--processes", procs, "use 1 or more")
    if gpus > 0:
        if procs > 1:
            raise UsageError("--processes", procs, "omit it with --gpus (one process per GPU)")
        if cfg.resolved_device != "cuda":
            raise UsageError(
                "--gpus", gpus, "needs a CUDA device; for CPU use --device cpu --processes N"
            )
        visible = torch.cuda.device_count() if visible_gpus is None else visible_gpus
        if gpus > visible:
            raise UsageError(
                "--gpus",
                gpus,
                f"this machine has {visible} visible CUDA device(s); use at most "
                f"{visible} (check CUDA_VISIBLE_DEVICES)",
            )
        return gpus
    if procs > 1 and cfg.resolved_device == "cuda":
        raise UsageError("--processes", procs, "on CUDA use --gpus N, or add --device cpu")
    return procs


def _spawn_port(cfg: Any, nodes: int) -> int:
    if cfg.master_port is None:
        if nodes > 1:
            raise UsageError(
                "--master-port", None, "set the same port on every node when --nodes > 1"
            )
        return find_free_port()
    port = int(cfg.master_port)
    if not 0 < port < 65536:
        raise UsageError("--master-port", port, "use a TCP port between 1 and 65535")
    if int(cfg.node_rank) == 0 and not _port_is_free(port):
        raise DistributedError(
            f"port {port} is already in use on this machine; pass another --master-port or omit "
            "it (single node) to pick a free one"
        )
    return port


def find_free_port() -> int:
    """Return a TCP port that is free on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    # SO_REUSEADDR like torch's TCPStore, so a port in TIME_WAIT counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


# ----------------------------------------------------------------------------------------------
# Launching
# ----------------------------------------------------------------------------------------------


def launch(
    worker_fn: Callable[[Any], Any],
    cfg: Any,
    timeout: timedelta | None = None,
) -> Any:
    """Run ``worker_fn(cfg)`` in every process of the run and return rank 0's result.

    In "single" mode this is just ``worker_fn(cfg)``. In "env" mode (torchrun/SLURM) this process
    joins the group, runs the worker and leaves the group. In "spawn" mode ``procs_per_node``
    processes are started with ``torch.multiprocessing`` (start method "spawn", so ``worker_fn``
    must be a module-level function and ``cfg`` picklable); if any of them fails, the others are
    stopped and one :class:`DistributedError` names the failed rank.

    Args:
        worker_fn: module-level function run in every process with a process group initialized.
        cfg: the run's config (see :func:`plan_launch` for the fields read).
        timeout: how long a collective may wait for other processes (default
            ``$SIMCLR_DIST_TIMEOUT`` seconds or :data:`DEFAULT_TIMEOUT`).

    Returns:
        ``worker_fn``'s return value on global rank 0 (in spawn mode on nodes other than 0, the
        value of this node's first worker; in env mode, this process's own value).

    Raises:
        DistributedError: a worker failed ("worker rank R failed: <message>"), or the group could
            not be formed.
    """
    plan = plan_launch(cfg)
    timeout = timeout or _default_timeout()
    if plan.mode == "single":
        return worker_fn(cfg)
    if plan.mode == "env":
        return _run_in_group(worker_fn, cfg, plan, plan.rank, plan.local_rank, timeout)
    return _spawn(worker_fn, cfg, plan, timeout)


def _default_timeout() -> timedelta:
    seconds = os.environ.get("SIMCLR_DIST_TIMEOUT")
    if not seconds:
        return DEFAULT_TIMEOUT
    try:
        return timedelta(seconds=float(seconds))
    except ValueError:
        raise UsageError("SIMCLR_DIST_TIMEOUT", seconds, "use a number of seconds") from None


_GROUP_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _run_in_group(
    worker_fn: Callable[[Any], Any],
    cfg: Any,
    plan: LaunchPlan,
    global_rank: int,
    local: int,
    timeout: timedelta,
) -> Any:
    """Join the process group as ``global_rank``, run the worker, always leave the group."""
    # env:// and other libraries (and local_rank()) read these; torchrun sets them, spawn and
    # SLURM do not. Restored afterwards, so later launches in this process plan afresh.
    saved = {name: os.environ.get(name) for name in _GROUP_ENV}
    os.environ.update(
        RANK=str(global_rank),
        WORLD_SIZE=str(plan.world_size),
        LOCAL_RANK=str(local),
        LOCAL_WORLD_SIZE=str(plan.procs_per_node),
        MASTER_ADDR=plan.master_addr,
        MASTER_PORT=str(plan.master_port),
    )
    try:
        return _init_and_run(worker_fn, cfg, plan, global_rank, local, timeout)
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _init_and_run(
    worker_fn: Callable[[Any], Any],
    cfg: Any,
    plan: LaunchPlan,
    global_rank: int,
    local: int,
    timeout: timedelta,
) -> Any:
    """Initialize the default process group, run the worker, destroy the group."""
    if plan.backend == "nccl":
        torch.cuda.set_device(local % max(1, torch.cuda.device_count()))
    try:
        dist.init_process_group(
            backend=plan.backend,
            # env:// reads MASTER_ADDR/PORT set above; under torchrun it joins the agent's store.
            init_method="env://",
            rank=global_rank,
            world_size=plan.world_size,
            timeout=timeout,
        )
    except (RuntimeError, ValueError) as err:
        raise DistributedError(
            f"could not join the process group at {plan.master_addr}:{plan.master_port} as rank "
            f"{global_rank}: {_one_line(err)}; check --master-addr/--master-port and that the "
            "port is free"
        ) from err
    try:
        return worker_fn(cfg)
    finally:
        dist.destroy_process_group()


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _spawn(worker_fn: Callable[[Any], Any], cfg: Any, plan: LaunchPlan, timeout: timedelta) -> Any:
    """Start the node's workers, wait for all, return local worker 0's result or raise once."""
    results = mp.get_context("spawn").SimpleQueue()
    box: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="simclr-dist-") as err_dir:
        procs = mp.start_processes(
            _spawn_entry,
            args=(worker_fn, cfg, plan, timeout, results, err_dir),
            nprocs=plan.procs_per_node,
            join=False,
            start_method="spawn",
        )
        spawn_log = logging.getLogger("torch.multiprocessing.spawn")
        level = spawn_log.level
        spawn_log.setLevel(logging.ERROR)  # its "Terminating process" lines would repeat the error
        try:
            with _patient_signals():
                # Drain while waiting: a large result would otherwise block its writer on the pipe.
                while not procs.join(timeout=0.5):
                    _drain(results, box)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            exit_codes = [process.exitcode for process in procs.processes]
            raise _worker_failure(Path(err_dir), plan, exc, exit_codes) from None
        finally:
            spawn_log.setLevel(level)
            for process in procs.processes:  # only after a second Ctrl-C or an internal error
                if process.is_alive():
                    process.kill()
                    process.join()
        _drain(results, box)
    return box[0] if box else None


def _patient_signals() -> contextlib.AbstractContextManager[Any]:
    """While workers run, the first SIGINT/SIGTERM here waits for them; a second one aborts.

    Ctrl-C and ``scancel`` signal the whole process group, workers included, and the workers
    stop cleanly on their own (the training loop checkpoints first). Forwarding the signal
    would deliver it twice. A second signal raises KeyboardInterrupt, and ``_spawn`` kills them.
    """
    return signals.stop_requests()


def _drain(results: Any, box: list[Any]) -> None:
    while not results.empty():
        box.append(results.get())


def _spawn_entry(
    local: int,
    worker_fn: Callable[[Any], Any],
    cfg: Any,
    plan: LaunchPlan,
    timeout: timedelta,
    results: Any,
    err_dir: str,
) -> None:
    """Body of one spawned worker: record any failure to ``err_dir`` and exit non-zero."""
    global_rank = plan.node_rank * plan.procs_per_node + local
    if plan.backend == "gloo" and "OMP_NUM_THREADS" not in os.environ:
        # N CPU workers share the cores; the default (all cores each) oversubscribes them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // plan.procs_per_node))
    try:
        result = _run_in_group(worker_fn, cfg, plan, global_rank, local, timeout)
        if local == 0:
            results.put(result)
    except BaseException as err:  # noqa: BLE001 - every failure must reach the parent
        os_line = os_error_line(err) if isinstance(err, OSError) else None  # full disk, ...
        record = {
            "rank": global_rank,
            "time": time.time(),
            "type": type(err).__name__,
            "simclr": isinstance(err, SimCLRError) or os_line is not None,
            "exit_code": getattr(err, "exit_code", 1),
            "message": os_line or _one_line(err),
            "traceback": traceback.format_exc(),
        }
        (Path(err_dir) / f"rank{global_rank}.json").write_text(json.dumps(record))
        # SystemExit (not Exception) keeps torch from pickling the traceback a second time.
        sys.exit(1)


def _worker_failure(
    err_dir: Path, plan: LaunchPlan, exc: Exception, exit_codes: Sequence[int | None] = ()
) -> DistributedError:
    """Build the one error for a failed spawn: a worker killed by a signal, else the earliest
    recorded worker failure.

    A worker killed by a signal (kill -9, the out-of-memory killer, a crash) writes no record,
    and its peers then fail on the broken connection and record that: the signal is the cause.
    SIGTERM is left out: torch sends it to the survivors after the first failure.
    """
    records = []
    for path in err_dir.glob("rank*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a worker killed while writing; others tell the story
    killed = _killed_by_signal(plan, exit_codes, {record["rank"] for record in records})
    if killed is not None:
        return killed
    if not records:
        # Killed without a Python exception (signal, out of memory).
        failed = plan.node_rank * plan.procs_per_node + getattr(exc, "error_index", 0)
        error = DistributedError(f"worker rank {failed} failed: {_one_line(exc)}")
        error.worker_rank = failed  # type: ignore[attr-defined]
        return error
    # The first failure is the cause; later ones are peers losing their connection to it.
    first = min(records, key=lambda record: record["time"])
    message = first["message"] if first["simclr"] else f"{first['type']}: {first['message']}"
    exit_code = int(first.get("exit_code", 1))
    # A signal stops every worker (exit 130); that is no worker's failure, so no rank is named.
    prefix = "" if exit_code == INTERRUPTED_EXIT_CODE else f"worker rank {first['rank']} failed: "
    error = DistributedError(prefix + message)
    error.exit_code = exit_code  # keep the worker's exit status (2 for a usage error)
    error.worker_rank = first["rank"]  # type: ignore[attr-defined]
    error.worker_traceback = first["traceback"]  # type: ignore[attr-defined]
    return error


def _killed_by_signal(
    plan: LaunchPlan, exit_codes: Sequence[int | None], recorded: set[int]
) -> DistributedError | None:
    """The error for the first worker (in rank order) that a signal other than SIGTERM ended."""
    for local, code in enumerate(exit_codes):
        rank = plan.node_rank * plan.procs_per_node + local
        if code is None or code >= 0 or rank in recorded or -code == signal.SIGTERM:
            continue
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        error = DistributedError(
            f"worker rank {rank} was killed by signal {-code} ({name}) (often the out-of-memory "
            "killer); the other ranks stopped because it died; lower --batch-size or --workers"
        )
        error.worker_rank = rank  # type: ignore[attr-defined]
        return error
    return None


def available_backends() -> list[str]:
    """Process-group backends this torch build offers (for ``simclr info``)."""
    checks = {"nccl": dist.is_nccl_available, "gloo": dist.is_gloo_available}
    checks["mpi"] = dist.is_mpi_available
    return [name for name, check in checks.items() if dist.is_available() and check()]
