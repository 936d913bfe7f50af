"""The release registry: which Spijkervet/SimCLR checkpoints exist and what model each holds.

Plain data, importing only the architecture facts (:mod:`simclr_cli.method.archs`, which imports
nothing), so that :mod:`simclr_cli.storage.hub` (downloads), :mod:`simclr_cli.storage.release`
(conversion of
release files) and config validation can all read it.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from types import MappingProxyType

from simclr_cli.method.archs import FEATURE_DIMS

# The file of a run folder that ``--checkpoint RUN_DIR`` and ``--resume auto`` mean.
RUN_CHECKPOINT = "checkpoint_last.pt"
# The epoch files ``--checkpoint-every`` keeps beside it (the last one a hard link to it).
_EPOCH_CHECKPOINT = re.compile(r"checkpoint_epoch_([0-9]+)\.pt")


def epoch_checkpoint(folder: Path, epoch: int) -> Path:
    """The file ``--checkpoint-every`` keeps for ``epoch`` in run folder ``folder``."""
    return folder / f"checkpoint_epoch_{epoch}.pt"


def epoch_checkpoints(folder: Path) -> list[Path]:
    """The epoch files of run folder ``folder`` (files named as :func:`epoch_checkpoint`
    names them), the newest first."""
    epochs = {p: _EPOCH_CHECKPOINT.fullmatch(p.name) for p in folder.glob("checkpoint_epoch_*.pt")}
    found = {p: int(m.group(1)) for p, m in epochs.items() if m and p.is_file()}
    return sorted(found, key=found.__getitem__, reverse=True)


@dataclass(frozen=True)
class Published:
    """An accuracy published with a release, and how it was measured."""

    dataset: str
    top1: float | None
    protocol: str
    source: str


@dataclass(frozen=True)
class RegistryEntry:
    """A release checkpoint: where it lives and what model it holds."""

    name: str
    url: str
    arch: str
    epochs: int
    hidden_dim: int
    projection_dim: int
    head_bias: bool
    batch_size: int
    optimizer: str
    published: Published
    sha256: str | None = None  # verified when set; otherwise recorded in the cache manifest
    dataset: str = "stl10 (unlabeled)"
    image_size: int = 96
    stem: str = "imagenet"  # torchvision's 7x7 stride-2 conv and max-pool, as upstream trained

    @property
    def filename(self) -> str:
        """File name in the cache."""
        return f"{self.name}.tar"

    @property
    def head(self) -> str:
        """Head dims, e.g. ``2048-2048-64 without bias``."""
        feature_dim = FEATURE_DIMS[self.arch]
        bias = "with bias" if self.head_bias else "without bias"
        return f"{feature_dim}-{self.hidden_dim}-{self.projection_dim} {bias}"


_RELEASES = "https://github.com/Spijkervet/SimCLR/releases/download"
_README = "Spijkervet/SimCLR README, 'Pre-trained models' table (commit 89af1a8)"
_PROTOCOL = (
    "logistic regression (Adam) trained on frozen encoder features h of the STL-10 train split "
    "at 96 px, top-1 on the STL-10 test split (upstream testing/logistic_regression.py)"
)


def _release(
    name: str, tag: str, arch: str, epochs: int, head_bias: bool, top1: float
) -> RegistryEntry:
    """An upstream release: trained alike (batch 256, Adam, a 64-d projection) and published
    as ``<tag>/checkpoint_<epochs>.tar``; its head's hidden layer is as wide as the features
    (upstream's ``Linear(n_features, n_features)``)."""
    return RegistryEntry(
        name=name,
        url=f"{_RELEASES}/{tag}/checkpoint_{epochs}.tar",
        arch=arch,
        epochs=epochs,
        hidden_dim=FEATURE_DIMS[arch],
        projection_dim=64,
        head_bias=head_bias,
        batch_size=256,
        optimizer="adam",
        published=Published("stl10", top1, _PROTOCOL, _README),
    )


REGISTRY: Mapping[str, RegistryEntry] = MappingProxyType(
    {
        e.name: e
        for e in (
            # An older README revision lists 0.791 for the same file.
            _release("resnet50-stl10", "1.2", "resnet50", 100, head_bias=False, top1=0.829),
            _release("resnet18-stl10", "1.1", "resnet18", 100, head_bias=False, top1=0.765),
            _release("resnet18-stl10-40ep", "1.0", "resnet18", 40, head_bias=True, top1=0.719),
        )
    }
)


__all__ = ["REGISTRY", "Published", "RegistryEntry"]


def checkpoint_kind(value: str) -> str:
    """What a ``--checkpoint`` value names, checked in this order: ``"file"`` (an existing
    file), ``"run"`` (a run folder holding ``checkpoint_last.pt``), ``"release"`` (a
    :data:`REGISTRY` name), ``"url"`` (http or https), ``"folder"`` (a folder without a
    checkpoint) or ``"missing"``. The one rule that config validation and
    :func:`simclr_cli.storage.hub.resolve_checkpoint` both apply."""
    path = Path(value).expanduser()
    if path.is_file():
        return "file"
    if path.is_dir() and (path / RUN_CHECKPOINT).is_file():
        return "run"
    if value in REGISTRY:
        return "release"
    if re.match(r"^https?://\S+$", value):
        return "url"
    return "folder" if path.is_dir() else "missing"
