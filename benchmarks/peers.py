"""The pipelines a user would pick instead of simclr-cli, transcribed for the benchmarks.

* Spijkervet/SimCLR: PIL/torchvision views in DataLoader workers, the encoder called once per
  view, a bias-free projector, and the NT-Xent that builds a ``(2N, 2N, D)`` cosine-similarity
  tensor and gathers the negatives with a boolean mask; Adam.
* lightly's published CIFAR-10 recipe (``benchmarks/cifar10_benchmark.py`` of lightly-ai/lightly,
  SimCLR entry): ``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)`` with
  CIFAR-10 normalisation in DataLoader workers, ``SimCLRProjectionHead(512, 512, 128)`` (with batch
  norm), two encoder passes per step, lightly's ``NTXentLoss`` (four ``(N, N)`` logit blocks,
  the self-similarities removed with a boolean mask), SGD with lr ``0.06 * B / 128``, momentum
  0.9, weight decay 5e-4.

Both are written out here (the GPU machine need not have ``lightly``); ``tests/test_peers.py``
checks the lightly NT-Xent transcription against ``lightly.loss.NTXentLoss`` where lightly is
installed, and both against simclr-cli's :func:`~simclr_cli.method.loss.nt_xent`.
"""

from __future__ import annotations

import torch
from torch import nn
from torchvision import transforms

from simclr_cli.method.model import build_encoder

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


# ----------------------------------------------------------------------------------------------
# Spijkervet/SimCLR


class SpijkervetViews:
    """Two independent views per image, torchvision PIL transforms (as in Spijkervet/SimCLR)."""

    def __init__(self, size: int, s: float = 0.5) -> None:
        color_jitter = transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
        self.train_transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(size=size),
                transforms.RandomHorizontalFlip(),
                transforms.RandomApply([color_jitter], p=0.8),
                transforms.RandomGrayscale(p=0.2),
                transforms.ToTensor(),
            ]
        )

    def __call__(self, x: object) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_transform(x), self.train_transform(x)


class SpijkervetSimCLR(nn.Module):
    """Encoder called once per view; bias-free 2-layer projector."""

    def __init__(self, projection_dim: int = 128) -> None:
        super().__init__()
        self.encoder, n_features = build_encoder("resnet18", "cifar")
        self.projector = nn.Sequential(
            nn.Linear(n_features, n_features, bias=False),
            nn.ReLU(),
            nn.Linear(n_features, projection_dim, bias=False),
        )

    def forward(self, x_i: torch.Tensor, x_j: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h_i, h_j = self.encoder(x_i), self.encoder(x_j)
        return h_i, h_j, self.projector(h_i), self.projector(h_j)


class SpijkervetNTXent(nn.Module):
    """NT-Xent with an (2N, 2N, D) cosine-similarity tensor and a boolean-mask gather."""

    def __init__(self, batch_size: int, temperature: float) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.temperature = temperature
        self.mask = self.mask_correlated_samples(batch_size)
        self.criterion = nn.CrossEntropyLoss(reduction="sum")
        self.similarity_f = nn.CosineSimilarity(dim=2)

    @staticmethod
    def mask_correlated_samples(batch_size: int) -> torch.Tensor:
        n = 2 * batch_size
        mask = torch.ones((n, n), dtype=torch.bool)
        mask = mask.fill_diagonal_(0)
        for i in range(batch_size):
            mask[i, batch_size + i] = 0
            mask[batch_size + i, i] = 0
        return mask

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        n = 2 * self.batch_size
        z = torch.cat((z_i, z_j), dim=0)
        sim = self.similarity_f(z.unsqueeze(1), z.unsqueeze(0)) / self.temperature  # (2N, 2N)
        sim_i_j = torch.diag(sim, self.batch_size)
        sim_j_i = torch.diag(sim, -self.batch_size)
        positive_samples = torch.cat((sim_i_j, sim_j_i), dim=0).reshape(n, 1)
        negative_samples = sim[self.mask].reshape(n, -1)
        labels = torch.zeros(n, dtype=torch.long, device=positive_samples.device)
        logits = torch.cat((positive_samples, negative_samples), dim=1)
        return self.criterion(logits, labels) / n


# ----------------------------------------------------------------------------------------------
# lightly's CIFAR-10 recipe


class LightlyViews:
    """lightly's ``SimCLRTransform(input_size=32, cj_strength=0.5, gaussian_blur=0.0)``, CIFAR-10
    normalisation: two independent views per image, torchvision PIL transforms."""

    def __init__(self, size: int, s: float = 0.5) -> None:
        color_jitter = transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
        self.transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(size=size, scale=(0.08, 1.0)),
                transforms.RandomHorizontalFlip(p=0.5),
                transforms.RandomApply([color_jitter], p=0.8),
                transforms.RandomGrayscale(p=0.2),
                transforms.ToTensor(),
                transforms.Normalize(CIFAR10_MEAN, CIFAR10_STD),
            ]
        )

    def __call__(self, x: object) -> tuple[torch.Tensor, torch.Tensor]:
        return self.transform(x), self.transform(x)


class LightlySimCLR(nn.Module):
    """ResNet-18 (CIFAR stem) and lightly's ``SimCLRProjectionHead(512, 512, 128)``."""

    def __init__(self) -> None:
        super().__init__()
        self.backbone, n_features = build_encoder("resnet18", "cifar")
        self.projection_head = nn.Sequential(  # Linear -> BN -> ReLU -> Linear (2 layers)
            nn.Linear(n_features, 512, bias=False),
            nn.BatchNorm1d(512),
            nn.ReLU(),
            nn.Linear(512, 128, bias=True),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.projection_head(self.backbone(x).flatten(start_dim=1))


def lightly_nt_xent(
    out0: torch.Tensor, out1: torch.Tensor, temperature: float = 0.5
) -> torch.Tensor:
    """lightly's ``NTXentLoss`` forward for one process without a memory bank, transcribed."""
    batch_size = out0.shape[0]
    out0 = nn.functional.normalize(out0, dim=1)
    out1 = nn.functional.normalize(out1, dim=1)
    diag_mask = torch.eye(batch_size, device=out0.device, dtype=torch.bool)
    logits_00 = torch.einsum("nc,mc->nm", out0, out0) / temperature
    logits_01 = torch.einsum("nc,mc->nm", out0, out1) / temperature
    logits_10 = torch.einsum("nc,mc->nm", out1, out0) / temperature
    logits_11 = torch.einsum("nc,mc->nm", out1, out1) / temperature
    logits_00 = logits_00[~diag_mask].view(batch_size, -1)
    logits_11 = logits_11[~diag_mask].view(batch_size, -1)
    logits_0100 = torch.cat([logits_01, logits_00], dim=1)
    logits_1011 = torch.cat([logits_10, logits_11], dim=1)
    logits = torch.cat([logits_0100, logits_1011], dim=0)
    labels = torch.arange(batch_size, device=out0.device, dtype=torch.long).repeat(2)
    return nn.functional.cross_entropy(logits, labels)


def lightly_optimizer(model: nn.Module, batch_size: int) -> torch.optim.Optimizer:
    """SGD as lightly's CIFAR-10 benchmark: lr 0.06 * B / 128, momentum 0.9, decay 5e-4."""
    return torch.optim.SGD(
        model.parameters(), lr=6e-2 * batch_size / 128, momentum=0.9, weight_decay=5e-4
    )
