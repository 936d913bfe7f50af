"""Conversion of Spijkervet/SimCLR release files into the parts of a simclr-cli checkpoint.

The release checkpoints of Spijkervet/SimCLR are bare ``state_dict`` s (``encoder.*`` of a
torchvision ResNet without ``fc``, ``projector.0/2.*``), sometimes with DDP ``module.`` prefixes
and written in torch's legacy serialization. :func:`convert` infers the architecture, stem and
head from key names and tensor shapes and returns the model spec, the weights and a record of
what was inferred; :func:`simclr_cli.storage.checkpoint.convert_release_state_dict` lays them out
as a
payload (this module knows nothing of the payload layout, so imports run checkpoint -> release).
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any, NamedTuple

import torch

from simclr_cli.errors import CheckpointError
from simclr_cli.method import archs
from simclr_cli.storage import registry

# Spijkervet/SimCLR release facts: STL-10 `unlabeled` at 96 px, no input normalisation.
RELEASE_SOURCE = "Spijkervet/SimCLR"
RELEASE_IMAGE_SIZE = 96
RELEASE_DATASET = "stl10"

# Width of layer1.0.conv1 separates ResNet-50 (64) from Wide ResNet-50-2 (128).
_WIDE_LAYER1_WIDTH = 128
# conv1 kernel size -> stem (simclr_cli.method.model: "cifar" is a 3x3 stride-1 conv without
# max-pool).
_STEMS = {7: "imagenet", 3: "cifar"}
_DDP_PREFIX = "module."


class Converted(NamedTuple):
    """What a release file holds, in simclr-cli's terms: keywords of
    :func:`simclr_cli.storage.checkpoint.build_payload`."""

    model: dict[str, Any]  # the spec for simclr_cli.method.model.build_simclr
    state_dict: dict[str, torch.Tensor]  # encoder.* and projector.*, prefixes stripped
    dataset: str  # the pretraining data (STL-10 unlabeled)
    epoch: int | None  # from the file name or the registry entry; None when unknown
    converted_from: dict[str, Any]  # the source and everything inferred


def convert(state_dict: Mapping[str, torch.Tensor], name: str = "checkpoint") -> Converted:
    """Read a Spijkervet/SimCLR ``state_dict``: model spec, weights and conversion record.

    Args:
        state_dict: ``encoder.*`` (torchvision ResNet without ``fc``) and ``projector.{0,2}.*``,
            optionally prefixed by ``module.`` (DDP).
        name: file name, used in messages and to read the epoch from ``checkpoint_<epoch>.tar``.

    Returns:
        The parts of a payload; ``converted_from`` records the source and everything inferred.

    Raises:
        CheckpointError: unknown architecture, or unexpected/missing keys (named in the message).
    """
    sd, stripped = _strip_ddp_prefix(state_dict)
    encoder = {k[len("encoder.") :]: v for k, v in sd.items() if k.startswith("encoder.")}
    projector = {k[len("projector.") :]: v for k, v in sd.items() if k.startswith("projector.")}
    others = sorted(k for k in sd if not k.startswith(("encoder.", "projector.")))
    if not encoder or not projector or others:
        raise CheckpointError(
            f"{name} is not a SimCLR state_dict: "
            f"{_key_problem(others, _absent_parts(encoder, projector))}; "
            "expected encoder.* and projector.* keys"
        )
    arch, feature_dim = _infer_arch(encoder, name)
    stem = _infer_stem(encoder, name)
    filled = _check_encoder_keys(encoder, arch, name)
    head = _infer_head(projector, feature_dim, name)
    spec = {
        "arch": arch,
        "stem": stem,
        "head": "v1",
        "feature_dim": feature_dim,
        **head,
        "image_size": RELEASE_IMAGE_SIZE,
        "mean": None,
        "std": None,
    }
    converted = {f"encoder.{k}": v for k, v in encoder.items()}
    converted.update({f"projector.{k}": v for k, v in projector.items()})
    epoch, release = _release_info(name, arch, head)
    record = {
        "source": RELEASE_SOURCE,
        "file": name,
        "arch": arch,
        "stem": stem,
        "head": f"v1 {feature_dim}-{head['hidden_dim']}-{head['projection_dim']}",
        "head_bias": head["head_bias"],
        "stripped_prefix": _DDP_PREFIX if stripped else None,
        "filled_buffers": filled,
        "epoch": epoch,
        "release": release,
    }
    return Converted(spec, converted, RELEASE_DATASET, epoch, record)


def _strip_ddp_prefix(sd: Mapping[str, torch.Tensor]) -> tuple[dict[str, torch.Tensor], bool]:
    """Remove DDP's ``module.`` prefix (at the front, or after ``encoder.``/``projector.``)."""
    out: dict[str, torch.Tensor] = {}
    stripped = False
    for key, value in sd.items():
        new = key.removeprefix(_DDP_PREFIX)
        for part in ("encoder.", "projector."):
            if new.startswith(part + _DDP_PREFIX):
                new = part + new[len(part + _DDP_PREFIX) :]
        stripped |= new != key
        out[new] = value
    return out, stripped


def _absent_parts(encoder: Mapping[str, Any], projector: Mapping[str, Any]) -> list[str]:
    return [name for name, part in (("encoder.*", encoder), ("projector.*", projector)) if not part]


def _key_problem(unexpected: list[str], missing: list[str]) -> str:
    """``unexpected keys a, b; missing keys c`` for a one-line error."""
    parts = []
    if unexpected:
        parts.append("unexpected keys " + _short_list(unexpected))
    if missing:
        parts.append("missing keys " + _short_list(missing))
    return "; ".join(parts)


def _short_list(keys: list[str], limit: int = 6) -> str:
    more = f" (+{len(keys) - limit} more)" if len(keys) > limit else ""
    return ", ".join(keys[:limit]) + more


def _infer_arch(encoder: Mapping[str, torch.Tensor], name: str) -> tuple[str, int]:
    """Architecture and feature dim from block type, blocks per stage and layer1 width."""
    blocks = tuple(
        len({int(m.group(1)) for k in encoder if (m := re.match(rf"layer{i}\.(\d+)\.", k))})
        for i in range(1, 5)
    )
    # Only a Bottleneck block has a third conv; the feature width then comes from archs.
    block = "bottleneck" if "layer1.0.conv3.weight" in encoder else "basic"
    width = encoder.get("layer1.0.conv1.weight")
    wide = block == "bottleneck" and width is not None and width.shape[0] == _WIDE_LAYER1_WIDTH
    arch = archs.arch_of_blocks(block, blocks, wide)
    if arch is None:
        kind = "Bottleneck" if block == "bottleneck" else "BasicBlock"
        raise CheckpointError(
            f"{name}: unrecognised ResNet encoder ({kind}, blocks per stage {list(blocks)}); "
            "supported: resnet18/34/50/101/152 and wide_resnet50_2"
        )
    return arch, archs.FEATURE_DIMS[arch]


def _infer_stem(encoder: Mapping[str, torch.Tensor], name: str) -> str:
    conv1 = encoder.get("conv1.weight")
    stem = _STEMS.get(int(conv1.shape[-1])) if conv1 is not None and conv1.dim() == 4 else None
    if stem is None:
        shape = None if conv1 is None else list(conv1.shape)
        raise CheckpointError(
            f"{name}: encoder.conv1.weight has shape {shape}; expected a 7x7 (ImageNet) or "
            "3x3 (CIFAR) stem"
        )
    return stem


def _check_encoder_keys(encoder: dict[str, torch.Tensor], arch: str, name: str) -> list[str]:
    """Compare keys and shapes with torchvision's ``arch`` (no ``fc``); fill absent BN counters.

    Returns:
        The ``num_batches_tracked`` buffers that were absent (files from old torch versions) and
        were added as zeros so a strict load works.
    """
    import torchvision

    with torch.device("meta"):  # shapes only: no memory, no init cost
        reference = getattr(torchvision.models, arch)(weights=None).state_dict()
    expected = {k: v.shape for k, v in reference.items() if not k.startswith("fc.")}
    filled = [k for k in expected if k.endswith("num_batches_tracked") and k not in encoder]
    for key in filled:
        encoder[key] = torch.zeros((), dtype=torch.long)
    missing = [f"encoder.{k}" for k in expected if k not in encoder]
    unexpected = [f"encoder.{k}" for k in encoder if k not in expected]
    if missing or unexpected:
        raise CheckpointError(f"{name} ({arch}): {_key_problem(unexpected, missing)}")
    wrong = [
        f"encoder.{k} {list(encoder[k].shape)} != {list(s)}"
        for k, s in expected.items()
        if k != "conv1.weight" and encoder[k].shape != s
    ]
    if wrong:
        raise CheckpointError(f"{name} ({arch}): wrong shapes {_short_list(wrong, 3)}")
    return [f"encoder.{k}" for k in filled]


def _infer_head(projector: Mapping[str, torch.Tensor], feature_dim: int, name: str) -> dict:
    """Hidden/projection dims and bias of the v1 head Linear -> ReLU -> Linear."""
    with_bias = {"0.weight", "0.bias", "2.weight", "2.bias"}
    bias = "0.bias" in projector or "2.bias" in projector
    expected = with_bias if bias else {"0.weight", "2.weight"}
    keys = set(projector)
    if keys != expected:
        raise CheckpointError(
            f"{name}: projection head not recognised: "
            + _key_problem(
                sorted(f"projector.{k}" for k in keys - expected),
                sorted(f"projector.{k}" for k in expected - keys),
            )
        )
    w0, w2 = projector["0.weight"], projector["2.weight"]
    if w0.dim() != 2 or w2.dim() != 2 or w0.shape[1] != feature_dim or w2.shape[1] != w0.shape[0]:
        raise CheckpointError(
            f"{name}: projection head shapes {list(w0.shape)}, {list(w2.shape)} do not chain "
            f"from the encoder's {feature_dim} features"
        )
    return {
        "hidden_dim": int(w0.shape[0]),
        "projection_dim": int(w2.shape[0]),
        "head_bias": bias,
    }


def _release_info(
    name: str, arch: str, head: Mapping[str, Any]
) -> tuple[int | None, dict[str, Any] | None]:
    """Epoch and registry facts for a file name.

    Spijkervet names files ``checkpoint_<epoch>.tar``; the cache names them after the registry
    entry (``resnet50-stl10.tar``), whose epochs and published accuracy are then recorded, but
    only when the file holds that entry's model (a file stored under the wrong name must not
    carry another model's published accuracy).
    """
    entry = registry.REGISTRY.get(name.split(".")[0])
    if entry is not None and (arch, head["hidden_dim"], head["projection_dim"]) != (
        entry.arch,
        entry.hidden_dim,
        entry.projection_dim,
    ):
        entry = None
    # A URL download is cached as "<url hash>-checkpoint_<epoch>.tar".
    match = re.fullmatch(r"(?:[0-9a-f]{10}-)?checkpoint_(\d+)\.tar", name)
    epoch = int(match.group(1)) if match else (entry.epochs if entry is not None else None)
    if entry is None:
        return epoch, None
    return epoch, {
        "name": entry.name,
        "url": entry.url,
        "published_top1": entry.published.top1,
        "protocol": entry.published.protocol,
    }
