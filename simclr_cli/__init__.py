"""simclr-cli: SimCLR (Chen et al. 2020) from the command line, and as a small library.

The method is :mod:`simclr_cli.method` (encoder and projection head, NT-Xent, the two views,
LARS). The names below are imported lazily so that ``simclr --help`` stays fast.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
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


def lazy_exports(package: str, public: Mapping[str, str]) -> Callable[[str], Any]:
    """A module ``__getattr__`` that imports ``public`` names on first use.

    Args:
        package: the package's ``__name__``.
        public: name -> the module (absolute, or relative with a leading dot) that defines it.
    """
    namespace = import_module(package).__dict__

    def __getattr__(name: str) -> Any:
        if name not in public:
            raise AttributeError(f"module {package!r} has no attribute {name!r}")
        value = getattr(import_module(public[name], package), name)
        namespace[name] = value  # later lookups skip this function
        return value

    return __getattr__


__getattr__ = lazy_exports(__name__, _PUBLIC)
