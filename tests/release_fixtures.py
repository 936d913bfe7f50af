"""Files in the layouts of the Spijkervet/SimCLR release checkpoints, built locally for tests.

The releases are bare ``state_dict`` s of ``SimCLR(encoder=torchvision ResNet without fc,
projector=Linear-ReLU-Linear)`` written with torch's legacy (non-zip) serialization:

- ``"1.0"``: ResNet-18, 40 epochs, projector WITH biases;
- ``"1.1"`` / ``"1.2"``: projector without biases (1.2 is ResNet-50 upstream; pass ``arch``);
- ``"ddp"``: like ``"1.1"`` with every key prefixed by ``module.`` (saved from a DDP wrapper).

Weights are random (seeded), which is all conversion and loading need.
"""

from __future__ import annotations

from pathlib import Path

import torch
import torchvision
from torch import nn

LAYOUTS: dict[str, dict[str, object]] = {
    "1.0": {"bias": True, "prefix": ""},
    "1.1": {"bias": False, "prefix": ""},
    "1.2": {"bias": False, "prefix": ""},
    "ddp": {"bias": False, "prefix": "module."},
}


def release_state_dict(
    layout: str,
    arch: str = "resnet18",
    projection_dim: int = 64,
    stem: str = "imagenet",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """A state_dict in a release layout (keys as in the release files, ``module.`` included)."""
    options = LAYOUTS[layout]
    torch.manual_seed(seed)
    encoder = getattr(torchvision.models, arch)(weights=None)
    if stem == "cifar":
        encoder.conv1 = nn.Conv2d(3, 64, kernel_size=3, stride=1, padding=1, bias=False)
        encoder.maxpool = nn.Identity()
    feature_dim = encoder.fc.in_features
    encoder.fc = nn.Identity()
    bias = bool(options["bias"])
    projector = nn.Sequential(
        nn.Linear(feature_dim, feature_dim, bias=bias),
        nn.ReLU(),
        nn.Linear(feature_dim, projection_dim, bias=bias),
    )
    # BN running stats away from their defaults, so a loader that drops buffers is caught.
    for module in encoder.modules():
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.1, 0.1)
            module.running_var.uniform_(0.9, 1.1)
    state = {f"encoder.{k}": v for k, v in encoder.state_dict().items()}
    state.update({f"projector.{k}": v for k, v in projector.state_dict().items()})
    prefix = str(options["prefix"])
    return {f"{prefix}{k}": v.clone() for k, v in state.items()}


def make_release_checkpoint(
    path: str | Path,
    layout: str = "1.1",
    arch: str = "resnet18",
    projection_dim: int = 64,
    stem: str = "imagenet",
    seed: int = 0,
) -> dict[str, torch.Tensor]:
    """Write a release-layout checkpoint to ``path`` in legacy serialization.

    Args:
        path: destination file (e.g. ``tmp_path / "checkpoint_100.tar"``).
        layout: one of :data:`LAYOUTS`.
        arch: torchvision ResNet name.
        projection_dim: width of the projector output (64 in the releases).
        stem: ``"imagenet"`` (releases) or ``"cifar"``.
        seed: seed of the random weights.

    Returns:
        The state_dict written, with the file's keys.
    """
    state = release_state_dict(layout, arch, projection_dim, stem, seed)
    torch.save(state, Path(path), _use_new_zipfile_serialization=False)
    return state
