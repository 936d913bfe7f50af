"""Encoders, stems, projection heads and the SimCLR module."""

from __future__ import annotations

import ast
import json
from pathlib import Path

import pytest
import torch
import torchvision
from torch import nn

import simclr_cli
from simclr_cli.errors import CheckpointError, UsageError
from simclr_cli.method.model import (
    ARCHS,
    FEATURE_DIMS,
    ProjectionHead,
    SimCLR,
    build_encoder,
    build_simclr,
    head_layers,
    model_spec,
    resolve_stem,
)


@pytest.mark.parametrize("arch", ARCHS)
def test_every_arch_builds_without_classifier(arch: str) -> None:
    with torch.device("meta"):  # shapes only: no memory, no init cost
        encoder, feature_dim = build_encoder(arch, "imagenet")
    assert feature_dim == FEATURE_DIMS[arch]
    assert isinstance(encoder.fc, nn.Identity)
    assert model_spec(arch, "imagenet")["feature_dim"] == feature_dim


def test_resnet18_cifar_forward_shapes() -> None:
    model = build_simclr(model_spec("resnet18", "auto", image_size=32, projection_dim=64))
    h, z = model(torch.randn(4, 3, 32, 32))
    assert h.shape == (4, 512) and z.shape == (4, 64)


@pytest.mark.parametrize(
    ("stem", "size", "want"),
    [("auto", 16, "cifar"), ("auto", 32, "cifar"), ("auto", 64, "cifar"), ("auto", 65, "imagenet")]
    + [("auto", 224, "imagenet"), ("cifar", 224, "cifar"), ("imagenet", 32, "imagenet")],
)
def test_resolve_stem(stem: str, size: int, want: str) -> None:
    assert resolve_stem(stem, size) == want


def _layer1_input_side(encoder: nn.Module, size: int) -> int:
    seen: list[int] = []
    encoder.layer1.register_forward_hook(lambda _m, inputs, _out: seen.append(inputs[0].shape[-1]))
    encoder.eval()
    with torch.no_grad():
        encoder(torch.randn(1, 3, size, size))
    return seen[0]


def test_cifar_stem_is_really_used() -> None:
    # Spijkervet/SimCLR defines this stem and never calls it; here the built encoder has it.
    encoder, _ = build_encoder("resnet18", resolve_stem("auto", 32))
    conv = encoder.conv1
    assert (conv.kernel_size, conv.stride, conv.padding) == ((3, 3), (1, 1), (1, 1))
    assert conv.bias is None and isinstance(encoder.maxpool, nn.Identity)
    assert _layer1_input_side(encoder, 32) == 32
    imagenet, _ = build_encoder("resnet18", "imagenet")
    assert imagenet.conv1.kernel_size == (7, 7) and _layer1_input_side(imagenet, 32) == 8


def test_residual_branches_start_at_zero_only_when_asked() -> None:
    encoder, _ = build_encoder("resnet18", "cifar", zero_init_residual=True)
    assert all(torch.all(block.bn2.weight == 0) for block in encoder.layer1)
    default, _ = build_encoder("resnet18", "cifar")  # torchvision's initialisation
    assert all(torch.all(block.bn2.weight == 1) for block in default.layer1)


@pytest.mark.parametrize(
    ("call", "option"),
    [
        (lambda: build_encoder("resnet9", "cifar"), "--arch"),
        (lambda: build_encoder("resnet18", "auto"), "--stem"),
        (lambda: resolve_stem("tiny", 32), "--stem"),
        (lambda: model_spec("resnet18", "auto"), "--stem"),
        (lambda: model_spec("vgg", "cifar"), "--arch"),
        (lambda: ProjectionHead(8, 8, 4, version="v3"), "--head"),
        (lambda: ProjectionHead(8, 8, 0), "--projection-dim"),
        (lambda: ProjectionHead(8, 0, 4), "--hidden-dim"),
    ],
)
def test_bad_options_raise_usage_errors(call: object, option: str) -> None:
    with pytest.raises(UsageError, match=option):
        call()  # type: ignore[operator]


def test_v1_head_layout_and_keys() -> None:
    head = ProjectionHead(16, 16, 4)
    assert list(head.state_dict()) == ["0.weight", "0.bias", "2.weight", "2.bias"]
    assert isinstance(head[1], nn.ReLU)
    assert list(ProjectionHead(16, 8, 4, bias=False).state_dict()) == ["0.weight", "2.weight"]


def test_v2_head_has_three_layers_with_batch_norm() -> None:
    head = ProjectionHead(16, 12, 4, version="v2")
    linears = [m for m in head if isinstance(m, nn.Linear)]
    norms = [m for m in head if isinstance(m, nn.BatchNorm1d)]
    assert [(m.in_features, m.out_features) for m in linears] == [(16, 12), (12, 12), (12, 4)]
    assert all(m.bias is None for m in linears) and len(norms) == 3
    assert not norms[-1].bias.requires_grad and torch.all(norms[-1].bias == 0)
    assert head(torch.randn(5, 16)).shape == (5, 4)


def test_v1_bn_head_is_the_tf_codes_two_layer_head() -> None:
    # google-research/simclr projection_head with 2 layers: Linear-BN-ReLU-Linear-BN, no
    # biases, the hidden BN with a shift and the last one without (center=False)
    head = ProjectionHead(16, 12, 4, version="v1-bn")
    kinds = [type(m) for m in head]
    assert kinds == [nn.Linear, nn.BatchNorm1d, nn.ReLU, nn.Linear, nn.BatchNorm1d]
    assert [(m.in_features, m.out_features, m.bias) for m in (head[0], head[3])] == [
        (16, 12, None),
        (12, 4, None),
    ]
    assert head[1].bias.requires_grad and not head[4].bias.requires_grad
    z = head.train()(torch.randn(6, 16))
    # the last BN without a shift: every z column has mean 0 over the batch
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-5)


@pytest.mark.parametrize("version", ["v1", "v1-bn", "v2"])
def test_head_layers_describe_the_module(version: str) -> None:
    layers = head_layers(16, 12, 4, version)
    head = ProjectionHead(16, 12, 4, version=version)
    assert len(head) == len(layers)
    kinds = {"linear": nn.Linear, "bn": nn.BatchNorm1d, "relu": nn.ReLU}
    assert [type(m) for m in head] == [kinds[layer[0]] for layer in layers]


def test_hidden_dim_defaults_to_feature_dim() -> None:
    encoder, dim = build_encoder("resnet18", "cifar")
    assert SimCLR(encoder, dim).projector[0].out_features == 512
    assert SimCLR(encoder, dim, hidden_dim=64).projector[0].out_features == 64


class SpijkervetSimCLR(nn.Module):
    """The module layout of Spijkervet/SimCLR's release checkpoints, written out here."""

    def __init__(self, projection_dim: int) -> None:
        super().__init__()
        self.encoder = torchvision.models.resnet18(weights=None)
        n_features = self.encoder.fc.in_features
        self.encoder.fc = nn.Identity()
        self.projector = nn.Sequential(
            nn.Linear(n_features, n_features, bias=False),
            nn.ReLU(),
            nn.Linear(n_features, projection_dim, bias=False),
        )


def test_spijkervet_state_dict_loads_by_key() -> None:
    theirs = SpijkervetSimCLR(projection_dim=64).eval()
    spec = model_spec("resnet18", "imagenet", projection_dim=64, head_bias=False)
    ours = build_simclr(spec).eval()
    ours.load_state_dict(theirs.state_dict(), strict=True)
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h, z = ours(x)
        torch.testing.assert_close(h, theirs.encoder(x))
        torch.testing.assert_close(z, theirs.projector(theirs.encoder(x)))


def test_spec_is_json_and_round_trips() -> None:
    spec = model_spec("resnet18", "auto", head="v2", hidden_dim=256, image_size=32, mean=[0.5] * 3)
    assert json.loads(json.dumps(spec)) == spec
    assert spec["stem"] == "cifar" and spec["hidden_dim"] == 256 and spec["std"] is None
    model = build_simclr(spec)
    assert isinstance(model.encoder.maxpool, nn.Identity)
    assert model.projector[0].out_features == 256 and model.projection_dim == 128
    assert set(model.state_dict()) == set(build_simclr(dict(spec)).state_dict())


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"arch": "resnet9"}, "arch='resnet9'"),
        ({"stem": "auto"}, "stem='auto'"),
        ({"head": "v9"}, "head='v9'"),
        ({"feature_dim": 2048}, "feature_dim=2048"),
    ],
)
def test_bad_spec_raises_checkpoint_error(change: dict, message: str) -> None:
    with pytest.raises(CheckpointError, match=message):
        build_simclr({**model_spec("resnet18", "cifar"), **change})


def test_incomplete_spec_raises_checkpoint_error() -> None:
    spec = model_spec("resnet18", "cifar")
    del spec["arch"], spec["head"]
    with pytest.raises(CheckpointError, match="lacks arch, head"):
        build_simclr(spec)


@pytest.mark.parametrize("module", ["model", "loss", "optim"])
def test_method_modules_do_not_import_torch_distributed_at_load(module: str) -> None:
    # distributed/ is the one place that knows torch.distributed; loss.py reaches it lazily.
    tree = ast.parse((Path(simclr_cli.__file__).parent / "method" / f"{module}.py").read_text())
    names = [a.name for node in tree.body if isinstance(node, ast.Import) for a in node.names]
    names += [
        f"{node.module}.{a.name}"
        for node in tree.body
        if isinstance(node, ast.ImportFrom)
        for a in node.names
    ]
    assert names and not [n for n in names if "distributed" in n]


def test_public_api_names_the_method_objects() -> None:
    from simclr_cli import LARS, BatchedSimCLRAugment, NTXentLoss, SimCLRAugment
    from simclr_cli import SimCLR as ExportedSimCLR
    from simclr_cli import (
        build_encoder as exported_build_encoder,
    )
    from simclr_cli.method import augment, loss, optim

    assert ExportedSimCLR is SimCLR and exported_build_encoder is build_encoder
    assert NTXentLoss is loss.NTXentLoss and LARS is optim.LARS
    assert SimCLRAugment is augment.SimCLRAugment
    assert BatchedSimCLRAugment is augment.BatchedSimCLRAugment
    assert set(simclr_cli.__all__) >= {"SimCLR", "NTXentLoss", "LARS", "build_encoder"}
    with pytest.raises(AttributeError, match="no_such_name"):
        _ = simclr_cli.no_such_name  # type: ignore[attr-defined]
