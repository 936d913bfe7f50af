"""Shared test setup: keep every test away from the user's real cache and data folders."""

from __future__ import annotations

import os
from pathlib import Path

import pytest
import torch

# Fixtures shared across the test folders (`tiny`, `server`, `small_checkpoint`): modules that
# use them name them as arguments and import nothing.
pytest_plugins = ("train_fixtures", "hub_fixtures")

# CI has two CPU cores and runs one test at a time: every test gets the same two intra-op
# threads (set once here; test modules do not change it, so results do not depend on the
# order in which modules are collected). Spawned test processes set their own.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture(autouse=True)
def _isolated_dirs(tmp_path_factory: pytest.TempPathFactory, monkeypatch: pytest.MonkeyPatch):
    """Point SIMCLR_CACHE_DIR and SIMCLR_DATA_DIR at fresh folders for each test."""
    root = tmp_path_factory.mktemp("simclr-home")
    monkeypatch.setenv("SIMCLR_CACHE_DIR", str(root / "cache"))
    monkeypatch.setenv("SIMCLR_DATA_DIR", str(root / "data"))
    monkeypatch.delenv("SIMCLR_DEBUG", raising=False)
    for var in ("RANK", "WORLD_SIZE", "LOCAL_RANK", "SLURM_PROCID", "SLURM_NTASKS"):
        monkeypatch.delenv(var, raising=False)
    yield


@pytest.fixture
def workdir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """An empty current directory, to check that a command leaves nothing behind."""
    cwd = tmp_path / "cwd"
    cwd.mkdir()
    monkeypatch.chdir(cwd)
    return cwd
