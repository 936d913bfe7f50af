"""Optimisers and parameter groups (the learning-rate rules are in :mod:`.schedule`).

LARS follows the SimCLR reference: SGD with momentum where each weight tensor's step is scaled
by a trust ratio ``eta * ||w|| / ||g + wd * w||``. Biases and batch-norm parameters are excluded
from both weight decay and adaptation; :func:`param_groups` marks them with ``lars_exclude`` and
the same groups serve every optimiser.

References:
    You, Gitman and Ginsburg, "Large Batch Training of Convolutional Networks", 2017
    (arXiv:1708.03888), algorithm 1.
    Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
    ICML 2020 (arXiv:2002.05709), sections 2.2-2.3 and appendix B.1.
    google-research/simclr ``lars_optimizer.py`` (which parameters skip decay and adaptation).
"""

from __future__ import annotations

import math
from collections.abc import Callable, Iterable
from typing import Any

import torch
from torch import nn

from simclr_cli.errors import UsageError
from simclr_cli.method.schedule import check_optimizer


class LARS(torch.optim.Optimizer):
    """Layer-wise Adaptive Rate Scaling on top of SGD with momentum.

    For each parameter ``w`` with gradient ``g`` in a group without ``lars_exclude``:
    ``d = g + wd * w``; ``d *= eta * ||w|| / ||d||`` (ratio 1 when either norm is 0);
    ``buf = momentum * buf + d``; ``w -= lr * buf``. Groups with ``lars_exclude=True`` skip the
    decay and the ratio, i.e. they step exactly like ``torch.optim.SGD(momentum=...)``.
    The trust ratio stays on the device (``torch.where``), so a step never waits on the host,
    and each group steps with a few ``torch._foreach_*`` kernels rather than a Python loop of
    small kernels per tensor (``tests/test_optim.py`` checks it against the per-tensor loop).

    Reference: You et al. 2017 (arXiv:1708.03888), algorithm 1; Chen et al. 2020, section 2.2.
    """

    def __init__(
        self,
        params: Iterable[Any],
        lr: float,
        momentum: float = 0.9,
        weight_decay: float = 0.0,
        eta: float = 0.001,
    ) -> None:
        """Create the optimiser.

        Args:
            params: parameters or parameter groups (e.g. from :func:`param_groups`).
            lr: learning rate.
            momentum: momentum factor (paper: 0.9).
            weight_decay: L2 penalty added to the gradient before adaptation.
            eta: trust coefficient (paper: 0.001).
        """
        for name, value in (("lr", lr), ("momentum", momentum), ("weight_decay", weight_decay)):
            if value < 0:
                raise ValueError(f"LARS {name} must be >= 0, got {value}")
        if eta <= 0:
            raise ValueError(f"LARS eta must be > 0, got {eta}")
        defaults = {
            "lr": lr,
            "momentum": momentum,
            "weight_decay": weight_decay,
            "eta": eta,
            "lars_exclude": False,
        }
        super().__init__(params, defaults)

    @torch.no_grad()
    def step(self, closure: Callable[[], float] | None = None) -> float | None:  # type: ignore[override]
        """Perform one step; ``closure`` re-evaluates the loss if given."""
        loss = None
        if closure is not None:
            with torch.enable_grad():
                loss = closure()
        for group in self.param_groups:
            params = [p for p in group["params"] if p.grad is not None]
            if params:
                self._group_step(params, group)
        return loss

    def _group_step(self, params: list[torch.Tensor], group: dict[str, Any]) -> None:
        """One update of a group's parameters with a handful of ``torch._foreach_*`` kernels.

        The parameters of a group share one dtype and device (as a model's do).
        """
        grads = [p.grad for p in params if p.grad is not None]
        steps = grads if group["lars_exclude"] else self._adapted(params, grads, group)
        bufs = self._momentum_buffers(params, steps, group["momentum"])
        torch._foreach_add_(params, bufs, alpha=-group["lr"])

    @staticmethod
    def _adapted(
        params: list[torch.Tensor], grads: list[torch.Tensor], group: dict[str, Any]
    ) -> list[torch.Tensor]:
        """``d = g + wd * w`` scaled by each tensor's trust ratio, as new tensors (grads kept)."""
        wd = group["weight_decay"]
        d = torch._foreach_add(grads, params, alpha=wd) if wd != 0 else grads
        w_norm = torch.stack(torch._foreach_norm(params))  # (T,): one norm per tensor
        d_norm = torch.stack(torch._foreach_norm(d))
        # Ratio 1 when either norm is 0 (strictly greater: zero-initialised weights must move).
        # torch.where keeps the ratio on the device: the step never waits on the host.
        tiny = torch.finfo(d_norm.dtype).tiny
        ratio = torch.where(
            (w_norm > 0) & (d_norm > 0),
            group["eta"] * w_norm / d_norm.clamp_min(tiny),
            torch.ones_like(w_norm),
        )
        return list(torch._foreach_mul(d, list(ratio.unbind())))

    def _momentum_buffers(
        self, params: list[torch.Tensor], steps: list[torch.Tensor], momentum: float
    ) -> list[torch.Tensor]:
        """``buf = momentum * buf + d`` for every parameter (first buffer = d, as torch SGD)."""
        bufs, adds = [], []
        for p, d in zip(params, steps, strict=True):  # bookkeeping only: no kernels after step 1
            state = self.state[p]
            if "momentum_buffer" not in state:
                state["momentum_buffer"] = d.detach().clone()
            else:
                bufs.append(state["momentum_buffer"])
                adds.append(d)
        if bufs:
            torch._foreach_mul_(bufs, momentum)
            torch._foreach_add_(bufs, adds)
        return [self.state[p]["momentum_buffer"] for p in params]


def param_groups(model: nn.Module, weight_decay: float) -> list[dict[str, Any]]:
    """Split trainable parameters into decayed weights and excluded biases/norm parameters.

    Every parameter with at most one dimension (biases, batch-norm scales and shifts) goes into
    a group with ``weight_decay=0`` and ``lars_exclude=True``; conv and linear weights get
    ``weight_decay`` and layer adaptation. Frozen parameters are left out. Empty groups are dropped.

    Reference: google-research/simclr ``lars_optimizer.py`` (excludes batch norm and bias).
    """
    decay: list[nn.Parameter] = []
    excluded: list[nn.Parameter] = []
    for p in model.parameters():
        if p.requires_grad:
            (excluded if p.ndim <= 1 else decay).append(p)
    groups = [
        {"params": decay, "weight_decay": weight_decay, "lars_exclude": False},
        {"params": excluded, "weight_decay": 0.0, "lars_exclude": True},
    ]
    return [g for g in groups if g["params"]]


def build_optimizer(
    model: nn.Module,
    optimizer: str,
    lr: float,
    weight_decay: float,
    momentum: float = 0.9,
) -> torch.optim.Optimizer:
    """Build ``lars``, ``adam``, ``adamw`` or ``sgd`` (Nesterov momentum) over :func:`param_groups`.

    Args:
        model: the module to optimise.
        optimizer: one of :data:`OPTIMIZERS`.
        lr: the (already scaled) peak learning rate.
        weight_decay: decay for weights; biases and norm parameters get none.
        momentum: momentum for LARS and SGD (ignored by Adam/AdamW).

    Raises:
        UsageError: for an unknown optimiser or negative lr/decay/momentum.
    """
    check_optimizer(optimizer)
    for option, value in (("--lr", lr), ("--weight-decay", weight_decay), ("--momentum", momentum)):
        if not math.isfinite(value) or value < 0:
            raise UsageError(option, value, "use a finite number >= 0")
    groups = param_groups(model, weight_decay)
    if optimizer == "lars":
        return LARS(groups, lr=lr, momentum=momentum, weight_decay=weight_decay)
    if optimizer == "sgd":
        return torch.optim.SGD(groups, lr=lr, momentum=momentum, nesterov=momentum > 0)
    if optimizer == "adam":
        return torch.optim.Adam(groups, lr=lr)
    return torch.optim.AdamW(groups, lr=lr)
