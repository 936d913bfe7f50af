"""The device-resident data path: placement, decoding once, and batches equal to the loader's."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch
from torch.utils.data import DataLoader
from train_fixtures import host_reads_forbidden

from simclr_cli.data import resident
from simclr_cli.data.datasets import ShapesDataset
from simclr_cli.data.loader import ResumableSampler
from simclr_cli.errors import DatasetError
from simclr_cli.method.preprocess import to_uint8_transform

CPU = torch.device("cpu")
CUDA = torch.device("cuda", 0)
MIB = 2**20


def shapes(n: int = 40, size: int = 8) -> ShapesDataset:
    return ShapesDataset(size=n, transform=to_uint8_transform(size), image_size=size)


@pytest.fixture
def gpu_with_free(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    """Pretend cuda:0 has 1000 MiB free (placement reads free memory only through free_bytes)."""
    monkeypatch.setattr(resident, "free_bytes", lambda d: 1000 * MIB if d.type == "cuda" else None)
    yield


def test_decoded_bytes_of_cifar_is_150_mib() -> None:
    assert resident.decoded_bytes(50_000, 32) / MIB == pytest.approx(146.5, abs=0.1)


def test_auto_picks_the_gpu_when_the_set_fits_in_the_stated_fraction(gpu_with_free: None) -> None:
    limit = int(resident.DEVICE_MEMORY_FRACTION * 1000 * MIB)
    fits = resident.choose_placement("auto", "device", CUDA, limit)
    assert fits.data_on == "device" and fits.reason.startswith("auto:")
    too_big = resident.choose_placement("auto", "device", CUDA, limit + 1)
    assert too_big.data_on == "host" and "25% of the 1000 MiB free" in too_big.reason


def test_auto_keeps_the_loader_on_the_cpu_and_for_worker_augmentation(
    gpu_with_free: None,
) -> None:
    assert resident.choose_placement("auto", "device", CPU, 1).data_on == "host"
    assert resident.choose_placement("auto", "cpu", CUDA, 1).data_on == "host"
    assert resident.choose_placement("host", "device", CUDA, 1).data_on == "host"


def test_explicit_device_is_honoured_unless_the_set_cannot_fit(gpu_with_free: None) -> None:
    assert resident.choose_placement("device", "device", CPU, 10**12).data_on == "device"
    assert resident.choose_placement("device", "device", CUDA, 900 * MIB).data_on == "device"
    with pytest.raises(DatasetError, match="--data-on host"):
        resident.choose_placement("device", "device", CUDA, 2000 * MIB)


def test_the_cli_help_states_the_fraction_auto_uses() -> None:
    import inspect

    from simclr_cli.cli import pretrain as cli

    assert f"{resident.DEVICE_MEMORY_FRACTION:.0%} of its free memory" in inspect.getsource(cli)


def test_decode_all_stacks_every_item_in_order() -> None:
    dataset = shapes(n=300)  # more than one decoding batch
    images = resident.decode_all(dataset, len(dataset), 8, workers=0)
    assert images.shape == (300, 3, 8, 8) and images.dtype == torch.uint8
    for i in (0, 255, 256, 299):
        assert torch.equal(images[i], dataset[i][0])


def test_decode_all_refuses_a_dataset_shorter_than_reported() -> None:
    with pytest.raises(DatasetError, match="decoded 40"):
        resident.decode_all(shapes(n=40), 41, 8, workers=0)


@pytest.mark.parametrize(("world", "skip_steps"), [(1, 0), (1, 2), (2, 1)])
def test_resident_batches_equal_the_dataloaders(world: int, skip_steps: int) -> None:
    dataset = shapes(n=50)
    images = resident.decode_all(dataset, len(dataset), 8, workers=0)
    for rank in range(world):
        sampler = ResumableSampler(dataset, num_replicas=world, rank=rank, seed=5)
        loader = DataLoader(dataset, batch_size=4, sampler=sampler, drop_last=True)
        ours = resident.ResidentLoader(images, sampler, batch_size=4)
        sampler.set_epoch(3, skip=skip_steps * 4)
        want = [x for x, _ in loader]
        got = [x for x, _ in ours]
        assert len(got) == len(want) == len(ours) and len(want) > 0
        for a, b in zip(got, want, strict=True):
            assert torch.equal(a, b)


def test_resident_steps_after_the_epochs_first_read_nothing_on_the_host() -> None:
    dataset = shapes(n=50)
    images = resident.decode_all(dataset, len(dataset), 8, workers=0)
    sampler = ResumableSampler(dataset, num_replicas=1, rank=0, seed=0)
    sampler.set_epoch(0)
    batches = iter(resident.ResidentLoader(images, sampler, batch_size=4))
    next(batches)  # the epoch's order is read once, here
    with host_reads_forbidden():
        rest = list(batches)
    assert len(rest) == 11


def test_decode_all_leaves_the_global_random_stream_alone() -> None:
    """The model's initial weights are drawn after the data is built, on both paths."""
    torch.manual_seed(7)
    want = torch.rand(3)
    torch.manual_seed(7)
    dataset = shapes(n=10)
    resident.decode_all(dataset, len(dataset), 8, workers=0)
    assert torch.equal(torch.rand(3), want)
