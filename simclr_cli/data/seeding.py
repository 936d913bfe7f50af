"""Where the randomness of a pretraining run comes from: pure functions of the run's seed.

Every random number of a run is drawn from a generator seeded here, from the run's ``--seed``
and the coordinates that must make it differ:

* the step's draws on the training device (``--augment-on device``), :func:`step_seed`:
  ``(seed, step, rank)``, reseeded before every step;
* the two views of one image made on the host (``--augment-on cpu``), :func:`view_seed`:
  ``(seed, epoch, image index)``, one generator per image, whichever process, worker or resume
  makes them;
* the DataLoader's worker seeds, :func:`loader_seed`: ``(seed, rank)``, so that whatever else
  a worker draws also differs between ranks.

Each kind of seed is its own stream of NumPy's ``SeedSequence`` (the step seeds as they have
always been, the others under a ``spawn_key`` of their own), so two kinds never share a seed by
accident.
"""

from __future__ import annotations

import random

import numpy as np
import torch

# The SeedSequence streams of the host views and of the loaders (SeedSequence pads short
# entropy with zeros: without a key of its own, [seed, rank] would equal step [seed, rank, 0]).
_VIEWS, _LOADER = 1, 2


def _mixed(stream: int, *words: int) -> int:
    """A well-mixed 63-bit seed of ``words`` in ``stream`` (fits ``torch.Generator``)."""
    sequence = np.random.SeedSequence([*words], spawn_key=(stream,))
    return int(sequence.generate_state(1, dtype=np.uint64)[0] >> np.uint64(1))


def seed_everything(seed: int) -> None:
    """Seed Python, NumPy and torch (CPU and every GPU) from one integer."""
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)  # also seeds every CUDA device


def step_seed(seed: int, step: int, rank: int) -> int:
    """The seed of one optimizer step's random draws on one rank (32 bits, as in earlier
    versions, so device-augmented runs keep their results)."""
    return int(np.random.SeedSequence([seed, step, rank]).generate_state(1)[0])


def view_seed(seed: int, epoch: int, index: int) -> int:
    """The seed of the two views of image ``index`` in ``epoch`` (host augmentation)."""
    return _mixed(_VIEWS, seed, epoch, index)


def loader_seed(seed: int, rank: int) -> int:
    """The seed of a rank's DataLoader generator, from which torch seeds its workers."""
    return _mixed(_LOADER, seed, rank)
