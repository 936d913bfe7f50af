"""NT-Xent, the normalised temperature-scaled cross-entropy loss of SimCLR.

One matmul scores every local anchor against every candidate, so memory grows as local rows x
global rows, never as N x N x D. Across processes, each process scores its own rows against the
gathered rows of all processes (``distributed.gather_with_grad``), with targets offset by its
rank; the loss is the mean over local anchors, and data-parallel gradient averaging turns that
into the mean over all 2N anchors.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020 (arXiv:2002.05709), section 2.1, eq. (1) and Algorithm 1.
"""

from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from simclr_cli.errors import UsageError


def check_temperature(temperature: float) -> float:
    """Return ``temperature`` as a float if it is finite and positive.

    Raises:
        UsageError: for zero, negative or non-finite values.
    """
    value = float(temperature)
    if not math.isfinite(value) or value <= 0:
        raise UsageError("--temperature", temperature, "use a positive number such as 0.5")
    return value


def _gathered(z: torch.Tensor) -> tuple[torch.Tensor, int]:
    """Return ``(columns, offset)``: all processes' rows and where this process's rows start.

    ``z: (2n, D)`` local rows; ``columns: (2n * world_size, D)`` is the concatenation over ranks
    of each rank's ``[z_i; z_j]``.
    """
    from simclr_cli import distributed as dist  # imported late: torch.distributed lives there

    world_size = dist.world_size()
    if world_size == 1:
        return z, 0
    return dist.gather_with_grad(z), dist.rank() * z.shape[0]


def nt_xent(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float = 0.5) -> torch.Tensor:
    """NT-Xent loss of a batch of positive pairs ``(z_i[k], z_j[k])``.

    Every other embedding in the (global) batch is a negative. Works for any batch size, so a
    smaller last batch needs nothing special. Logits are computed in float32 even under autocast.

    Args:
        z_i: ``(n, D)`` projections of the first views (this process's rows).
        z_j: ``(n, D)`` projections of the second views, row k paired with ``z_i[k]``.
        temperature: softmax temperature ``tau`` > 0.

    Returns:
        Scalar loss (float32, or float64 for float64 inputs): mean over the 2n local anchors.

    Raises:
        UsageError: for a temperature that is not positive.
        ValueError: when the two views differ in shape or are not 2-D.

    Reference: Chen et al. 2020 (arXiv:2002.05709), eq. (1) and Algorithm 1.
    """
    return _nt_xent(z_i, z_j, check_temperature(temperature))


def _nt_xent(z_i: torch.Tensor, z_j: torch.Tensor, tau: float) -> torch.Tensor:
    """:func:`nt_xent` for a temperature already checked (:class:`NTXentLoss` checks it once)."""
    if z_i.shape != z_j.shape or z_i.dim() != 2 or z_i.shape[0] == 0:
        raise ValueError(f"z_i, z_j must be equal non-empty (n, D); got {z_i.shape}, {z_j.shape}")
    n = z_i.shape[0]
    # Autocast off: half-precision logits of 1/tau-scaled cosines lose the loss's resolution.
    with torch.autocast(device_type=z_i.device.type, enabled=False):
        # float32 at least (float64 stays float64, for exact checks): (2n, D), unit rows
        z = torch.cat([z_i, z_j])
        z = F.normalize(z.to(torch.promote_types(z.dtype, torch.float32)), dim=1)
        columns, offset = _gathered(z)  # (2N, D) with N = n * world_size
        # Scale the small (2n, D) side, not the (2n, 2N) product: one fewer (2n, 2N) buffer.
        logits = (z / tau) @ columns.T  # (2n, 2N)
        # Mask self-similarity in place (mm keeps no copy of its output for backward) with a
        # finite large negative: exp() gives 0 and no inf - inf NaN can appear.
        logits[:, offset : offset + 2 * n].diagonal().fill_(-1e9)  # self-pairs: (2n,) view
        rows = torch.arange(2 * n, device=z.device)
        targets = (rows + n) % (2 * n) + offset  # row k's positive is its other view
        return F.cross_entropy(logits, targets)


class NTXentLoss(nn.Module):
    """Module form of :func:`nt_xent`; holds only the temperature (no batch size).

    Reference: Chen et al. 2020 (arXiv:2002.05709), eq. (1).
    """

    def __init__(self, temperature: float = 0.5) -> None:
        """Create the loss.

        Args:
            temperature: softmax temperature ``tau`` > 0 (paper: 0.5 CIFAR-10, 0.1 ImageNet).

        Raises:
            UsageError: for a temperature that is not positive.
        """
        super().__init__()
        self.temperature = check_temperature(temperature)

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        """Return the scalar loss for ``(n, D)`` views ``z_i`` and ``z_j``."""
        return _nt_xent(z_i, z_j, self.temperature)

    def extra_repr(self) -> str:
        """Show the temperature when printed."""
        return f"temperature={self.temperature}"
