"""Tests of simclr_cli.evaluation.inference: feature extraction over a whole dataset, channels-last
and the
uint8 input path against float references."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from torch.utils.data import Dataset

from simclr_cli.errors import UsageError
from simclr_cli.evaluation import inference


class TinySimCLR(nn.Module):
    """A stand-in with the SimCLR interface: .encoder (h) and .projector (z), with a BN buffer."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.encoder = nn.Sequential(nn.Flatten(), nn.Linear(12, 5), nn.BatchNorm1d(5))
        self.projector = nn.Linear(5, 3)


class IndexedImages(Dataset):
    """Item i is a (3, 2, 2) image filled from i, label i % 4 (or -1 when unlabelled)."""

    def __init__(self, n: int, labelled: bool = True) -> None:
        self.n, self.labelled = n, labelled

    def __len__(self) -> int:
        return self.n

    def __getitem__(self, i: int):
        return torch.arange(12.0).view(3, 2, 2) * 0.1 + i, i % 4 if self.labelled else -1


@pytest.mark.parametrize("layer", ["encoder", "projection"])
def test_extract_features_covers_the_whole_dataset_in_order(layer):
    model = TinySimCLR().train()
    data = IndexedImages(11)  # 11 = 2 full batches of 4 + a partial one, which must be kept
    feats, labels = inference.extract_features(model, data, batch_size=4, device="cpu", layer=layer)
    images = torch.stack([data[i][0] for i in range(11)])
    with torch.no_grad():
        model.eval()
        h = model.encoder(images)
        expected = h if layer == "encoder" else model.projector(h)
    assert feats.shape == (11, 5 if layer == "encoder" else 3) and feats.dtype == torch.float32
    assert torch.allclose(feats, expected, atol=1e-6)
    assert labels.dtype == torch.int64 and labels.tolist() == [i % 4 for i in range(11)]
    model.train()
    inference.extract_features(model, data, batch_size=4, device="cpu", layer=layer)
    assert model.training  # the kNN monitor calls this mid-training


def test_channels_last_extraction_matches_a_float64_reference():
    """encode() runs the convolutions channels-last; h must equal the NCHW float64 forward."""
    from simclr_cli.method.model import build_simclr, model_spec

    torch.manual_seed(0)
    spec = model_spec("resnet18", "cifar", image_size=16, mean=[0.5] * 3, std=[0.25] * 3)
    model = build_simclr(spec).eval()
    for module in model.modules():  # non-trivial running statistics, as after pretraining
        if isinstance(module, nn.BatchNorm2d):
            module.running_mean.uniform_(-0.2, 0.2), module.running_var.uniform_(0.5, 2.0)
    x = torch.randn(6, 3, 16, 16)
    h = inference.encode(model, x, "encoder", None)
    with torch.no_grad():
        reference = model.double().encoder(x.double())  # contiguous NCHW, float64
    assert h.dtype == torch.float32 and h.shape == (6, 512)
    assert torch.allclose(h.double(), reference, rtol=1e-4, atol=1e-4)


def test_uint8_loader_path_gives_the_features_of_the_float_transform():
    """checkpoint_transform crops to uint8 and encode() normalises with the model's mean/std;
    the features must be those of the per-image float transform."""
    from transform_oracle import eval_transform

    from simclr_cli.data.datasets import ShapesDataset
    from simclr_cli.method.model import build_simclr, model_spec

    mean, std = [0.4, 0.5, 0.6], [0.2, 0.25, 0.3]
    payload = {"model": model_spec("resnet18", "cifar", image_size=12, mean=mean, std=std)}
    torch.manual_seed(0)
    model = build_simclr(payload["model"]).eval()
    assert model.mean == tuple(mean) and model.std == tuple(std)
    crops = ShapesDataset("test", size=10, image_size=16)  # resized to 12 by both transforms
    crops.transform = inference.checkpoint_transform(payload, None, "shapes")
    floats = ShapesDataset("test", size=10, image_size=16, transform=eval_transform(12, mean, std))
    assert crops[0][0].dtype == torch.uint8
    h_u8, y_u8 = inference.extract_features(model, crops, batch_size=4, device="cpu")
    h_f, y_f = inference.extract_features(model, floats, batch_size=4, device="cpu")
    assert torch.equal(y_u8, y_f)
    torch.testing.assert_close(h_u8, h_f, atol=1e-5, rtol=1e-5)


def test_extract_features_rejects_an_unknown_layer():
    with pytest.raises(UsageError, match="--layer"):
        inference.extract_features(TinySimCLR(), IndexedImages(3), 2, "cpu", layer="fc")


# ----------------------------------------------------------------------------------------------
# device and precision: the rules config, training and evaluation share


def test_device_request_resolves_from_availability():
    assert inference.resolve_device_name("auto", cuda_available=True) == "cuda"
    assert inference.resolve_device_name("auto", cuda_available=False) == "cpu"
    assert inference.resolve_device_name("cpu", cuda_available=True) == "cpu"
    assert (
        inference.resolve_device_name("cuda", cuda_available=False) == "cuda"
    )  # config refuses it


def test_precision_resolves_per_device():
    assert inference.resolve_precision("auto", "cpu") == "fp32"
    assert inference.resolve_precision("bf16", "cpu") == "bf16"
    assert inference.resolve_precision("fp16", "cuda") == "fp16"
    assert inference.autocast_dtype(torch.device("cpu"), "bf16") is None  # inference: CUDA only
    assert inference.autocast_dtype(torch.device("cuda"), "fp32") is None
    assert inference.autocast_dtype(torch.device("cuda"), "fp16") is torch.float16


@pytest.mark.parametrize(
    ("native", "emulated", "want"), [(True, True, "bf16"), (False, True, "fp16")]
)
def test_auto_precision_takes_bf16_only_where_the_gpu_computes_it_natively(
    monkeypatch, native, emulated, want
):
    """An A100 has native bf16; a V100 or T4 only emulates it (is_bf16_supported() says True)."""

    def is_bf16_supported(including_emulation: bool = True) -> bool:
        return emulated if including_emulation else native

    monkeypatch.setattr(torch.cuda, "is_bf16_supported", is_bf16_supported)
    assert inference.resolve_precision("auto", "cuda") == want
    assert inference.autocast_dtype(torch.device("cuda")) is inference.PRECISION_DTYPES[want]
    assert inference.resolve_precision("auto", "cpu") == "fp32"


def test_autocast_context_is_off_for_full_precision():
    x = torch.randn(2, 3)
    with inference.autocast_context(torch.device("cpu"), torch.bfloat16):
        assert (x @ x.T).dtype == torch.bfloat16
        with inference.autocast_context(torch.device("cpu"), None):
            assert (x @ x.T).dtype == torch.float32  # None also switches a caller's autocast off


def test_cuda_without_a_gpu_is_a_usage_error(monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert inference.resolve_device("auto") == torch.device("cpu")
    assert inference.process_device("cpu") == torch.device("cpu")
    with pytest.raises(UsageError, match="no CUDA device is visible; use --device cpu"):
        inference.resolve_device("cuda")
