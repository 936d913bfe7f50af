"""simclr-cli: SimCLR (Chen et al. 2020) from the command line, and as a small library.

The method lives in three short modules: :mod:`simclr_cli.model` (encoder and projection
head), :mod:`simclr_cli.loss` (NT-Xent) and :mod:`simclr_cli.augment` (the two views).
The names below are imported lazily so that ``simclr --help`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "SimCLR": "simclr_cli.model",
    "ProjectionHead": "simclr_cli.model",
    "build_encoder": "simclr_cli.model",
    "NTXentLoss": "simclr_cli.loss",
    "nt_xent": "simclr_cli.loss",
    "LARS": "simclr_cli.optim",
    "SimCLRAugment": "simclr_cli.augment",
    "BatchedSimCLRAugment": "simclr_cli.augment",
    "TwoViews": "simclr_cli.augment",
    "ShapesDataset": "simclr_cli.shapes",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'simclr_cli' has no attribute {name!r}")
