"""The classifier checkpoint of ``simclr finetune``: the pretraining checkpoint's format
(:mod:`simclr_cli.storage.checkpoint`: one dict of primitives and tensors, saved atomically,
loaded weights-only) with ``kind`` ``"classifier"``.

Payload layout (written by :func:`build_classifier_payload` only)::

    format, format_version, kind ("classifier"), model (the pretraining spec plus num_classes
    and from_head_layer), classes (list of names, label i = classes[i]), dataset, epoch
    (completed), global_step, config (json-able), metrics (dict), state_dict (encoder.*, fc.*),
    optimizer (state_dict | None), scaler (state_dict | None), source (the pretraining
    checkpoint it started from; None for a baseline trained from scratch), selection (None, or
    the epoch, held-out top-1 and weights of the best epoch so far with ``--val-split``)

``classifier.pt`` holds the weights that were kept and no optimizer; the state a fine-tune
resumes from (``finetune_last.pt``) is the same layout with the optimizer.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

from simclr_cli.errors import CheckpointError
from simclr_cli.method.classifier import Classifier, build_classifier
from simclr_cli.storage import checkpoint
from simclr_cli.storage.checkpoint import CLASSIFIER_KIND, FORMAT, FORMAT_VERSION


def build_classifier_payload(
    *,
    model: Mapping[str, Any],
    classes: list[str],
    state_dict: Mapping[str, torch.Tensor],
    dataset: str | None,
    epoch: int,
    global_step: int,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    optimizer: Mapping[str, Any] | None = None,
    scaler: Mapping[str, Any] | None = None,
    source: str | None = None,
    selection: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A classifier payload in the layout of this module (the one place that writes it).

    Args:
        model: the classifier spec (:func:`simclr_cli.method.classifier.classifier_spec`).
        classes: the class names, one per logit.
        state_dict: the classifier's weights (``encoder.*``, ``fc.*``).
        optimizer, scaler: the training state; None in the final ``classifier.pt``.
        selection: ``{"epoch", "val_top1", "state_dict"}`` of the best held-out epoch so far.
    """
    assert len(classes) == model["num_classes"], "one class name per logit"
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": CLASSIFIER_KIND,
        "model": dict(model),
        "classes": [str(name) for name in classes],
        "dataset": dataset,
        "epoch": int(epoch),
        "global_step": int(global_step),
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
        "state_dict": state_dict,
        "optimizer": optimizer,
        "scaler": scaler,
        "source": source,
        "selection": None if selection is None else dict(selection),
    }


def save_classifier(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write a classifier payload atomically (:func:`.checkpoint.save_checkpoint`)."""
    return checkpoint.save_checkpoint(payload, path)


def load_classifier_payload(path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load a classifier checkpoint weights-only and check its description.

    Raises:
        CheckpointError: missing, corrupt, a pretraining checkpoint (the line says to fine-tune
            it first), or a classifier whose classes do not match its logits.
    """
    return check_classifier(checkpoint.load_checkpoint(path, kinds=(CLASSIFIER_KIND,)), path)


def check_classifier(payload: dict[str, Any], path: str | os.PathLike[str]) -> dict[str, Any]:
    """``payload`` (of kind classifier), once its class names are checked against its logits.

    Raises:
        CheckpointError: the class names do not match the logits.
    """
    spec, classes = payload["model"], payload.get("classes")
    if (
        not isinstance(classes, list)
        or not all(isinstance(c, str) for c in classes)
        or len(classes) != spec.get("num_classes")
    ):
        raise CheckpointError(
            f"{path} is incomplete (its class names do not match its {spec.get('num_classes')} "
            "outputs); write it again with simclr finetune"
        )
    return payload


def load_classifier(payload: Mapping[str, Any]) -> Classifier:
    """Build the classifier a payload describes and load its weights strictly (eval mode, CPU).

    Raises:
        CheckpointError: the description is invalid or the weights do not match it.
    """
    return checkpoint.build_and_load(build_classifier, payload, "classifier")


def describe_classifier(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What a classifier checkpoint holds, for ``simclr info``."""
    spec, sd = payload["model"], payload["state_dict"]
    classes = list(payload.get("classes") or [])
    shown = ", ".join(classes[:10]) + (f", ... ({len(classes)})" if len(classes) > 10 else "")
    return {
        "format": f"simclr-cli, format version {payload.get('format_version')}",
        "kind": payload.get("kind"),
        "arch": spec.get("arch"),
        "stem": spec.get("stem"),
        "head": f"{spec.get('from_head_layer')} layer(s) of the {spec.get('head')} projection "
        f"head, then a linear layer to {spec.get('num_classes')} classes",
        "classes": shown,
        "image_size": spec.get("image_size"),
        "normalization": None
        if spec.get("mean") is None
        else {"mean": spec.get("mean"), "std": spec.get("std")},
        "epochs": payload.get("epoch"),
        "global_step": payload.get("global_step"),
        "dataset": payload.get("dataset"),
        "source": payload.get("source"),
        "metrics": dict(payload.get("metrics") or {}),
        "parameters": {
            "encoder": checkpoint.count_parameters(sd, "encoder."),
            "fc": checkpoint.count_parameters(sd, "fc."),
            "total": checkpoint.count_parameters(sd),
        },
        "resumable": payload.get("optimizer") is not None,
    }
