"""simclr-cli: SimCLR (Chen et al. 2020) from the command line, and as a small library.

The method lives in three short modules: :mod:`simclr_cli.method.model` (encoder and projection
head), :mod:`simclr_cli.method.loss` (NT-Xent) and :mod:`simclr_cli.method.augment` (the two views).
The names below are imported lazily so that ``simclr --help`` stays fast.
"""

from __future__ import annotations

from importlib import import_module
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "SimCLR": "simclr_cli.method.model",
    "ProjectionHead": "simclr_cli.method.model",
    "build_encoder": "simclr_cli.method.model",
    "NTXentLoss": "simclr_cli.method.loss",
    "nt_xent": "simclr_cli.method.loss",
    "LARS": "simclr_cli.method.optim",
    "SimCLRAugment": "simclr_cli.method.augment",
    "BatchedSimCLRAugment": "simclr_cli.method.augment",
    "TwoViews": "simclr_cli.method.augment",
    "ShapesDataset": "simclr_cli.data.shapes",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    if name in _PUBLIC:
        return getattr(import_module(_PUBLIC[name]), name)
    raise AttributeError(f"module 'simclr_cli' has no attribute {name!r}")
