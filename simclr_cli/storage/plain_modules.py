"""What ``simclr export`` writes for code without simclr-cli: the plain torchvision modules an
export loads into strictly, the Python lines that build them, and the tensors of each part.

Parts: ``encoder`` (the ResNet without ``fc``: h), ``projector`` (the head as a
``torch.nn.Sequential``: z), ``both``, and for a classifier checkpoint ``classifier``: the
torchvision ResNet with ``num_classes`` outputs, whose ``fc`` is the classifier's (a
``Sequential`` of the kept head layers and the linear layer when the classifier kept some).
"""

from __future__ import annotations

from collections import OrderedDict
from collections.abc import Mapping
from typing import Any

import torchvision
from torch import Tensor, nn

from simclr_cli.method.classifier import input_dim, kept_head_layers
from simclr_cli.method.model import HeadLayer, build_layer, head_layers


def plain_encoder(spec: Mapping[str, Any], num_classes: int | None = None) -> nn.Module:
    """The torchvision ResNet whose ``state_dict`` the encoder export loads into, strictly.

    Exactly the README's lines: the torchvision model, ``fc`` replaced by the identity (h is
    the pooled feature) and, for the CIFAR stem, a 3x3/1 ``conv1`` and no max-pool. With
    ``num_classes``, torchvision's own ``fc`` to that many classes stays.
    """
    arch = getattr(torchvision.models, spec["arch"])
    model = arch() if num_classes is None else arch(num_classes=num_classes)
    if num_classes is None:
        model.fc = nn.Identity()
    if spec["stem"] == "cifar":
        model.conv1, model.maxpool = nn.Conv2d(3, 64, 3, 1, 1, bias=False), nn.Identity()
    return model


def _plain_layers(rows: list[HeadLayer]) -> list[nn.Module]:
    """Modules of head rows as the load snippet writes them (plain ``ReLU()``)."""
    return [nn.ReLU() if row[0] == "relu" else build_layer(row) for row in rows]


def plain_projector(spec: Mapping[str, Any]) -> nn.Sequential:
    """The projection head as a plain ``torch.nn.Sequential`` (same keys as the checkpoint's)."""
    return nn.Sequential(*_plain_layers(_head_layers(spec)))


def plain_classifier(spec: Mapping[str, Any]) -> nn.Module:
    """The classifier as a torchvision ResNet: ``fc`` a ``Linear`` to the classes, or the kept
    head layers and that ``Linear`` in a ``Sequential``."""
    model = plain_encoder(spec, int(spec["num_classes"]))
    kept = kept_head_layers(dict(spec), int(spec.get("from_head_layer") or 0))
    if kept:
        linear = nn.Linear(input_dim(dict(spec), kept), int(spec["num_classes"]))
        model.fc = nn.Sequential(*_plain_layers(kept), linear)
    return model


def plain_module(spec: Mapping[str, Any], part: str) -> nn.Module:
    """What a ``part`` export loads into: the encoder, the head, both in a ``ModuleDict``, or
    the classifier."""
    if part == "encoder":
        return plain_encoder(spec)
    if part == "projector":
        return plain_projector(spec)
    if part == "classifier":
        return plain_classifier(spec)
    return nn.ModuleDict({"encoder": plain_encoder(spec), "projector": plain_projector(spec)})


def _head_layers(spec: Mapping[str, Any]) -> list[HeadLayer]:
    feature = int(spec["feature_dim"])
    hidden, out = int(spec.get("hidden_dim") or feature), int(spec["projection_dim"])
    return head_layers(feature, hidden, out, spec["head"], bool(spec.get("head_bias", True)))


def load_snippet(spec: Mapping[str, Any], part: str, filename: str, fmt: str) -> str:
    """Python lines that rebuild the plain module and load a ``torchvision``/``safetensors``
    export of ``part`` strictly (recorded in ``meta.json``; the README shows the encoder's)."""
    lines = ["import torch, torchvision"]
    arch = spec["arch"]
    if part == "classifier":
        lines.append(f"model = torchvision.models.{arch}(num_classes={spec['num_classes']})")
    elif part in ("encoder", "both"):
        lines += [f"model = torchvision.models.{arch}()", "model.fc = torch.nn.Identity()"]
    if part in ("encoder", "both", "classifier") and spec["stem"] == "cifar":
        lines.append(
            "model.conv1, model.maxpool = "
            "torch.nn.Conv2d(3, 64, 3, 1, 1, bias=False), torch.nn.Identity()"
        )
    if part == "classifier" and spec.get("from_head_layer"):
        kept = kept_head_layers(dict(spec), int(spec["from_head_layer"]))
        linear = f"torch.nn.Linear({input_dim(dict(spec), kept)}, {spec['num_classes']})"
        lines.append(f"model.fc = torch.nn.Sequential({_layers_code(kept)}, {linear})")
    if part in ("projector", "both"):
        lines.append(f"head = torch.nn.Sequential({_layers_code(_head_layers(spec))})")
    target = {"encoder": "model", "classifier": "model", "projector": "head"}.get(
        part, 'torch.nn.ModuleDict({"encoder": model, "projector": head})'
    )
    if fmt == "safetensors":
        lines += ["from safetensors.torch import load_file", f"state = load_file({filename!r})"]
    else:
        lines.append(f"state = torch.load({filename!r}, weights_only=True)")
    lines.append(f"{target}.load_state_dict(state, strict=True)")
    return "\n".join(lines)


def _layers_code(rows: list[HeadLayer]) -> str:
    """Source of head rows (a last batch norm without a shift loads as a plain one: the shift
    is a stored zero)."""
    code = {
        "linear": lambda a, b, bias: f"torch.nn.Linear({a}, {b}, bias={bias})",
        "bn": lambda dim, shift: f"torch.nn.BatchNorm1d({dim})",
        "relu": lambda: "torch.nn.ReLU()",
    }
    return ", ".join(code[row[0]](*row[1:]) for row in rows)


def part_state_dict(state_dict: Mapping[str, Tensor], part: str) -> OrderedDict[str, Tensor]:
    """The checkpoint's tensors of ``part``: ``encoder.``/``projector.`` stripped for one part,
    kept for ``both``; a classifier's ``encoder.`` stripped and ``fc.*`` kept (torchvision's
    names); contiguous CPU copies (safetensors refuses shared or strided storage)."""
    out: OrderedDict[str, Tensor] = OrderedDict()
    for key, value in state_dict.items():
        if part == "both":
            keep, name = key.startswith(("encoder.", "projector.")), key
        elif part == "classifier":
            keep, name = key.startswith(("encoder.", "fc.")), key.removeprefix("encoder.")
        else:
            keep, name = key.startswith(f"{part}."), key.removeprefix(f"{part}.")
        if keep:
            out[name] = value.detach().cpu().contiguous().clone()
    return out
