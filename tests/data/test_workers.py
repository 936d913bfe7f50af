"""DataLoader workers: loops shut them down on an error, and the CLI's safety net finds any
that a path left running (they ignore SIGTERM, so Python's exit handler would wait forever)."""

from __future__ import annotations

import multiprocessing
import os

import pytest
import torch
from torch.utils.data import DataLoader, Dataset

from simclr_cli.data.workers import (
    ignore_stop_signals,
    shut_down,
    stop_leftover_workers,
    worker_batches,
)


class Failing(Dataset):
    """Item 5 fails, as an image that does not decode."""

    def __len__(self) -> int:
        return 16

    def __getitem__(self, index: int) -> torch.Tensor:
        if index == 5:
            raise ValueError("cannot decode image 5")
        return torch.zeros(2)


def _alive(pids: list[int]) -> list[int]:
    alive = []
    for pid in pids:
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            continue
        with open(f"/proc/{pid}/stat") as stat:  # a zombie is gone, only not yet reaped
            if stat.read().rsplit(")", 1)[1].split()[0] != "Z":
                alive.append(pid)
    return alive


@pytest.mark.parametrize("persistent", [False, True])
def test_a_pass_that_fails_shuts_its_workers_down(persistent: bool) -> None:
    loader = DataLoader(
        Failing(), batch_size=2, num_workers=2, persistent_workers=persistent,
        worker_init_fn=ignore_stop_signals,
    )  # fmt: skip
    pids: list[int] = []
    with pytest.raises(ValueError, match="cannot decode image 5"):
        with worker_batches(loader) as batches:
            pids = [w.pid for w in batches._workers]  # type: ignore[attr-defined]
            for _ in batches:
                pass
    assert len(pids) == 2 and not _alive(pids)
    shut_down(loader)  # a no-op now


def test_shut_down_stops_the_persistent_workers_of_a_loader() -> None:
    loader = DataLoader(
        range(8), batch_size=2, num_workers=2, persistent_workers=True,
        worker_init_fn=ignore_stop_signals,
    )  # fmt: skip
    assert sum(len(b) for b in loader) == 8
    pids = [w.pid for w in loader._iterator._workers]  # type: ignore[union-attr]
    assert _alive(pids)
    shut_down(loader)
    assert not _alive(pids) and loader._iterator is None
    assert sum(len(b) for b in loader) == 8  # new workers on the next pass
    shut_down(loader)


def _daemonic_children() -> list[int]:
    return [child.pid for child in multiprocessing.active_children() if child.daemon]


@pytest.mark.parametrize("persistent", [False, True])
def test_the_safety_net_ends_workers_an_error_left_running(persistent: bool) -> None:
    loader = DataLoader(
        Failing(), batch_size=2, num_workers=2, persistent_workers=persistent,
        worker_init_fn=ignore_stop_signals,
    )  # fmt: skip
    with pytest.raises(ValueError, match="cannot decode image 5") as failure:
        for _ in loader:
            pass
    # The traceback keeps the iterator, and so its workers, alive past the error.
    assert len(_daemonic_children()) >= 2 and failure.value is not None
    stop_leftover_workers()
    assert _daemonic_children() == []
    stop_leftover_workers()  # nothing left: a no-op
