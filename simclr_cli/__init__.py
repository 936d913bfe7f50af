"""simclr-cli: SimCLR (Chen et al. 2020) from the command line."""

from __future__ import annotations

__version__ = "0.1.0"
