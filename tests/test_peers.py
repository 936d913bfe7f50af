"""The peers of benchmarks/pretrain.py: their NT-Xent transcriptions against independent code."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest
import torch

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "benchmarks"))

from simclr_cli.method.loss import nt_xent  # noqa: E402

import peers  # noqa: E402  (a sibling script folder, not a package)


def projections(n: int = 6, d: int = 5) -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(0)
    return torch.randn(n, d, generator=g, dtype=torch.float64), torch.randn(
        n, d, generator=g, dtype=torch.float64
    )


def test_lightly_transcription_equals_lightly_itself() -> None:
    lightly_loss = pytest.importorskip("lightly.loss")
    z0, z1 = projections()
    want = lightly_loss.NTXentLoss(temperature=0.5)(z0, z1)
    torch.testing.assert_close(peers.lightly_nt_xent(z0, z1, 0.5), want)


@pytest.mark.parametrize("temperature", [0.1, 0.5])
def test_both_peer_losses_equal_simclr_clis_nt_xent(temperature: float) -> None:
    z0, z1 = projections()
    ours = nt_xent(z0, z1, temperature)
    torch.testing.assert_close(peers.lightly_nt_xent(z0, z1, temperature), ours)
    spijkervet = peers.SpijkervetNTXent(batch_size=6, temperature=temperature)
    torch.testing.assert_close(spijkervet(z0, z1), ours)


def test_lightly_views_are_two_normalised_views_of_the_size_asked() -> None:
    from PIL import Image

    image = Image.new("RGB", (40, 40), (200, 30, 90))
    a, b = peers.LightlyViews(32)(image)
    assert a.shape == b.shape == (3, 32, 32) and a.dtype == torch.float32
