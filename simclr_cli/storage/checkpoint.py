"""Checkpoints: the payload layout, atomic saving, safe loading and description.

A simclr-cli checkpoint is one ``dict`` of primitives and tensors, so ``torch.load(...,
weights_only=True)`` reads it without executing code from the file. It describes its own model
(``payload["model"]`` is the spec for :func:`simclr_cli.method.model.build_simclr`) and holds the
optimizer, grad-scaler and RNG state needed to resume.

Payload layout (``FORMAT_VERSION`` 1), written by :func:`build_payload` only::

    format, format_version, kind ("pretrain"), model (spec dict), dataset, epoch (completed),
    global_step, config (json-able dict), metrics (dict), state_dict (encoder.*, projector.*),
    optimizer (state_dict | None), scaler (state_dict | None), rng (dict),
    converted_from (None | dict)

A fine-tuned classifier (kind ``"classifier"``, :mod:`simclr_cli.storage.classifier`) shares the
header and the loading rules; a command accepts the kinds it names (``kinds``) and refuses the
other with a line that says what the file is and which command takes it.

:func:`load_checkpoint` also reads the release files of Spijkervet/SimCLR (bare ``state_dict`` s):
:mod:`simclr_cli.storage.release` infers their model and this module lays them out as above.
"""

from __future__ import annotations

import contextlib
import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Callable, Mapping
from functools import partial
from pathlib import Path
from types import MappingProxyType
from typing import TYPE_CHECKING, Any

import torch

from simclr_cli.errors import CheckpointError, UsageError
from simclr_cli.storage import fileio, release
from simclr_cli.storage.registry import RUN_CHECKPOINT, epoch_checkpoints

if TYPE_CHECKING:
    from simclr_cli.method.model import SimCLR

FORMAT = "simclr-cli-checkpoint"
FORMAT_VERSION = 1
PRETRAIN_KIND = "pretrain"
CLASSIFIER_KIND = "classifier"
# The keys that mark a file as ours; every payload starts with them.
_HEADER: Mapping[str, Any] = MappingProxyType(
    {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": PRETRAIN_KIND}
)

_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")


# --------------------------------------------------------------------------------------------
# The payload
# --------------------------------------------------------------------------------------------


def build_payload(
    *,
    model: Mapping[str, Any],
    state_dict: Mapping[str, torch.Tensor],
    dataset: str | None,
    epoch: int | None,
    global_step: int | None = None,
    config: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    optimizer: Mapping[str, Any] | None = None,
    scaler: Mapping[str, Any] | None = None,
    rng: Mapping[str, Any] | None = None,
    converted_from: Mapping[str, Any] | None = None,
) -> dict[str, Any]:
    """A checkpoint payload in the layout of this module (the one place that writes it).

    Args:
        model: the model spec (:func:`simclr_cli.method.model.model_spec`).
        state_dict: weights of the unwrapped model (``encoder.*``, ``projector.*``).
        dataset: the pretraining dataset's name.
        epoch: completed epochs (None when unknown, e.g. a release file named by hand).
        global_step: optimizer steps taken (None for converted files).
        config: the run's resolved configuration, json-able (empty when absent).
        metrics: the latest metrics (empty when absent).
        optimizer: the optimizer's ``state_dict``; None makes the checkpoint not resumable.
        scaler: the grad scaler's ``state_dict``, if one was used.
        rng: RNG states to resume from (empty when absent).
        converted_from: for a converted file, its source and what was inferred.

    Returns:
        The payload dict, keys in the documented order.
    """
    return {
        **_HEADER,
        "model": model,
        "dataset": dataset,
        "epoch": epoch,
        "global_step": global_step,
        "config": dict(config or {}),
        "metrics": dict(metrics or {}),
        "state_dict": state_dict,
        "optimizer": optimizer,
        "scaler": scaler,
        "rng": dict(rng or {}),
        "converted_from": None if converted_from is None else dict(converted_from),
    }


def convert_release_state_dict(
    state_dict: Mapping[str, torch.Tensor], name: str = "checkpoint"
) -> dict[str, Any]:
    """Convert a Spijkervet/SimCLR ``state_dict`` into a simclr-cli payload.

    Args:
        state_dict: ``encoder.*`` (torchvision ResNet without ``fc``) and ``projector.{0,2}.*``,
            optionally prefixed by ``module.`` (DDP).
        name: file name, used in messages and to read the epoch from ``checkpoint_<epoch>.tar``.

    Returns:
        A payload whose ``converted_from`` records the source and everything inferred (see
        :func:`simclr_cli.storage.release.convert`); not resumable.

    Raises:
        CheckpointError: unknown architecture, or unexpected/missing keys (named in the message).
    """
    # The converter's fields are build_payload's keywords; the rest keep their defaults.
    return build_payload(**release.convert(state_dict, name)._asdict())


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``payload`` to ``path`` atomically (see :mod:`simclr_cli.storage.fileio`).

    A crash at any moment leaves either the old file or the new one, never a mix; the temporary
    file is removed on any failure, and those of writers that were killed are removed first.

    Args:
        payload: the checkpoint dict, normally from :func:`build_payload`; its
            ``format``/``format_version``/``kind`` are filled in when absent (a partial dict
            still loads as a checkpoint). Only primitives, containers and tensors are allowed.
        path: destination file.

    Returns:
        The destination path.

    Raises:
        TypeError: ``payload`` holds an object ``torch.load(weights_only=True)`` would refuse.
        WriteError: the disk is full or the folder cannot be written (one line, naming it).
    """
    full = {**_HEADER, **payload}
    _check_weights_only_safe(full, "payload")
    path = Path(path)
    fileio.remove_dead_temps(path.parent)
    with fileio.atomic_write(path, "wb") as f:
        torch.save(full, f)
    return path


# Exact types: subclasses such as numpy.float64 (a float), namedtuples or defaultdicts pickle
# under their own class, which weights_only loading refuses.
_SAFE_PRIMITIVES = (str, int, float, bool, complex, bytes, type(None))
_SAFE_MAPPINGS = (dict, OrderedDict)
_SAFE_SEQUENCES = (list, tuple, set, torch.Size)
_SAFE_TORCH = (torch.Tensor, torch.dtype, torch.device)  # nn.Parameter included


def _check_weights_only_safe(obj: Any, where: str) -> None:
    """Raise TypeError naming the first object ``weights_only`` loading would refuse."""
    if type(obj) in _SAFE_MAPPINGS:
        for key, value in obj.items():
            _check_weights_only_safe(key, f"{where} key")
            _check_weights_only_safe(value, f"{where}[{key!r}]")
    elif type(obj) in _SAFE_SEQUENCES:
        for i, value in enumerate(obj):
            _check_weights_only_safe(value, f"{where}[{i}]")
    elif type(obj) not in _SAFE_PRIMITIVES and not isinstance(obj, _SAFE_TORCH):
        raise TypeError(
            f"{where} is a {type(obj).__name__}; checkpoints hold only primitives and tensors"
        )


# --------------------------------------------------------------------------------------------
# Loading
# --------------------------------------------------------------------------------------------


def load_checkpoint(
    path: str | os.PathLike[str],
    shown: str | None = None,
    kinds: tuple[str, ...] = (PRETRAIN_KIND,),
) -> dict[str, Any]:
    """Load a simclr-cli checkpoint or a Spijkervet/SimCLR release file, without running its code.

    A file in torch's zip format has its archive CRCs checked first: ``torch.load`` does not, so
    a flipped bit in the tensor data would otherwise load as different weights.

    Args:
        path: the checkpoint file.
        shown: how messages name the file (default: ``path``), e.g. the source of a download
            that is still in a temporary file.
        kinds: the kinds the caller accepts (``"pretrain"``, which release files are too, and
            ``"classifier"``).

    Returns:
        A payload in the layout of this module (release files are converted; what was inferred is
        in ``payload["converted_from"]``).

    Raises:
        CheckpointError: the file is missing, corrupt, needs arbitrary unpickling (refused),
            or is of a kind not in ``kinds``.
    """
    path = Path(path)
    shown = shown or str(path)
    try:
        obj = _torch_load(path, shown)
    except CheckpointError as error:  # of a run folder's last file: name the epoch file to give
        damaged = path.name == RUN_CHECKPOINT and path.is_file()
        intact = damaged and newest_intact_epoch_file(path, partial(load_checkpoint, kinds=kinds))
        if not intact:
            raise
        raise CheckpointError(
            f"{shown}: {error.problem}; {path.parent} holds an intact {intact.name} (an earlier "
            f"epoch of the run): give {intact} instead",
            problem=error.problem,  # a resume words its own advice with it
        ) from None
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _check_native(obj, shown, kinds)
    if _is_state_dict(obj):
        try:
            payload = convert_release_state_dict(obj, name=path.name)
        except CheckpointError as e:  # named after the file as the caller knows it
            problem = str(e).removeprefix(f"{path.name}: ").removeprefix(path.name).strip()
            raise CheckpointError(f"{shown}: {problem}", problem=problem) from None
        _check_kind(PRETRAIN_KIND, kinds, shown)
        return payload
    problem = f"it is not a simclr-cli pretraining checkpoint ({_summarize(obj)})"
    raise CheckpointError(
        f"{shown} is not a simclr-cli pretraining checkpoint ({_summarize(obj)}); "
        "give a file written by `simclr pretrain` or a Spijkervet/SimCLR release checkpoint",
        problem=problem,
    )


def newest_intact_epoch_file(damaged: Path, check: Callable[[Path], Any]) -> Path | None:
    """The newest epoch file beside ``damaged`` that ``check`` raises no CheckpointError for, or
    None (the last epoch's file, a hard link to ``checkpoint_last.pt``, is damaged with it)."""
    for candidate in epoch_checkpoints(damaged.parent):
        with contextlib.suppress(CheckpointError):
            if candidate != damaged:
                check(candidate)
                return candidate
    return None


# No torch checkpoint is this small (an empty dict saves to ~700 bytes in zip, ~300 legacy).
_MIN_CHECKPOINT_BYTES = 64


def _torch_load(path: Path, shown: str) -> Any:
    """``torch.load`` with ``weights_only=True``, mapping every failure to a CheckpointError."""
    if not path.is_file():
        raise CheckpointError(f"checkpoint {shown} does not exist; check the path")
    size = path.stat().st_size
    if size < _MIN_CHECKPOINT_BYTES:
        problem = f"it is only {size} bytes long (truncated, or not a checkpoint)"
        raise CheckpointError(f"{shown}: {problem}; download or copy it again", problem=problem)
    _check_zip_crcs(path, shown)
    try:
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")  # torch warns about pickle protocols it tolerates
            return torch.load(path, map_location="cpu", weights_only=True)
    except pickle.UnpicklingError as e:
        if _needs_code(str(e)):
            problem = (
                "it was refused for safety: loading it would run code from the file "
                f"({_refused_global(str(e))}); only weights-only checkpoints are accepted"
            )
            raise CheckpointError(f"{shown} {problem.removeprefix('it ')}", problem) from None
        raise _unreadable(path, shown, "is corrupt or not a torch checkpoint") from None
    except Exception as e:  # truncated zip, EOF, bad magic number, ...
        raise _unreadable(path, shown, f"is corrupt or truncated ({type(e).__name__})") from None


def _check_zip_crcs(path: Path, shown: str) -> None:
    """Compare each member of a torch zip checkpoint with its stored CRC-32."""
    if not zipfile.is_zipfile(path):
        return  # legacy serialization: no checksums to check
    try:
        with zipfile.ZipFile(path) as archive:
            bad = archive.testzip()
    except Exception as e:  # a damaged directory: BadZipFile, UnicodeDecodeError, EOFError...
        problem = f"it is damaged (its zip directory cannot be read: {type(e).__name__})"
        raise CheckpointError(f"{shown}: {problem}; download or copy it again", problem) from None
    if bad is not None:
        problem = f"it is damaged (CRC mismatch in {bad})"
        raise CheckpointError(
            f"{shown} is damaged (CRC mismatch in {bad}); download or copy it again", problem
        )


def _unreadable(path: Path, shown: str, problem: str) -> CheckpointError:
    """The error for a file torch cannot load: a text file (a run's ``config.json`` or
    ``metrics.jsonl`` given by mistake) gets its own fix; anything else is damaged."""
    with path.open("rb") as f:
        head = f.read(4096)
    try:
        text = head.decode("utf-8") if head and b"\0" not in head else None
    except UnicodeDecodeError:  # binary, or a multi-byte character cut at 4096 bytes
        text = None
    if text is not None:
        begins = " ".join(text.split())[:40]
        return CheckpointError(
            f"{shown} is a text file, not a torch checkpoint (it begins {begins!r}); give a "
            "checkpoint_*.pt file, a run folder or a release checkpoint name",
            problem=f"it is a text file, not a torch checkpoint (it begins {begins!r})",
        )
    return CheckpointError(f"{shown} {problem}; download or copy it again", f"it {problem}")


def _needs_code(message: str) -> bool:
    """Whether a weights_only failure is a refused global (code) rather than garbage bytes."""
    return re.search(r"global|Unsupported class", message, re.IGNORECASE) is not None


def _refused_global(message: str) -> str:
    """The refused global's name from torch's weights_only message, for the one-line error."""
    match = re.search(r"GLOBAL ([\w.]+)", message)
    return f"it references {match.group(1)}" if match else "it references a non-tensor object"


def _check_native(obj: Mapping[str, Any], path: str, kinds: tuple[str, ...]) -> dict[str, Any]:
    """Validate a payload that carries our FORMAT marker."""
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}, newer than this simclr-cli "
            f"understands ({FORMAT_VERSION}); upgrade simclr-cli"
        )
    _check_kind(obj.get("kind"), kinds, path)
    missing = [k for k in ("model", "state_dict") if not isinstance(obj.get(k), Mapping)]
    if missing:
        raise CheckpointError(f"{path} is incomplete (no {', '.join(missing)}); it cannot be used")
    return dict(obj)


def check_encoder(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> None:
    """Refuse a payload without encoder weights before a model is built from it.

    Raises:
        CheckpointError: no ``encoder.*`` tensor in its state dict.
    """
    if not any(str(key).startswith("encoder.") for key in payload["state_dict"]):
        raise CheckpointError(
            f"{path} holds no encoder weights (no encoder.* tensors); give a checkpoint written "
            "by `simclr pretrain`, a run folder or a release name (simclr download --list)"
        )


def _check_kind(kind: Any, kinds: tuple[str, ...], path: str) -> None:
    """Refuse a checkpoint of a kind the caller does not take, saying what it is instead."""
    if kind in kinds:
        return
    if kind == CLASSIFIER_KIND:
        raise CheckpointError(
            f"{path} is a fine-tuned classifier (written by `simclr finetune`), not a pretraining "
            "checkpoint; use it with `simclr predict` or `simclr export`, or give a checkpoint "
            "written by `simclr pretrain`"
        )
    if kind == PRETRAIN_KIND:
        raise CheckpointError(
            f"{path} is a pretraining checkpoint, not a classifier; fine-tune one first: "
            f"simclr finetune --checkpoint {path} --dataset ... --labels-per-class N"
        )
    raise CheckpointError(
        f"{path} is not a simclr-cli pretraining checkpoint (kind {kind!r}); "
        "give a checkpoint written by `simclr pretrain`"
    )


def _is_state_dict(obj: Any) -> bool:
    return (
        isinstance(obj, Mapping)
        and len(obj) > 0
        and all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in obj.items())
    )


def _summarize(obj: Any) -> str:
    if isinstance(obj, Mapping):
        keys = ", ".join(str(k) for k in list(obj)[:5])
        more = ", ..." if len(obj) > 5 else ""
        kind = f"kind {obj['kind']!r}, " if "kind" in obj else ""
        return f"{kind}a dict with keys {keys}{more}"
    return f"a {type(obj).__name__}"


# --------------------------------------------------------------------------------------------
# Model and description
# --------------------------------------------------------------------------------------------


def load_model(payload: Mapping[str, Any]) -> SimCLR:
    """Build the model a payload describes and load its weights strictly.

    Args:
        payload: a payload from :func:`load_checkpoint`.

    Returns:
        The SimCLR module in eval mode, on CPU.

    Raises:
        CheckpointError: the weights do not match the model description.
    """
    from simclr_cli.method.model import build_simclr

    return build_and_load(build_simclr, payload, "checkpoint")


def build_and_load(
    build: Callable[[dict[str, Any]], torch.nn.Module], payload: Mapping[str, Any], what: str
) -> Any:
    """``build(payload["model"])`` with the payload's weights loaded strictly, in eval mode.

    Args:
        build: the model factory of the payload's kind (SimCLR, classifier).
        payload: a loaded payload.
        what: the kind's name for the messages (``"checkpoint"``, ``"classifier"``).

    Raises:
        CheckpointError: the description is invalid or the weights do not match it.
    """
    try:
        model = build(dict(payload["model"]))
    except (KeyError, ValueError, TypeError, UsageError) as e:
        raise CheckpointError(f"{what} model description is invalid ({e})") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:2] or [str(e)]
        raise CheckpointError(
            f"{what} weights do not match its model description ({first[0].strip()[:200]})"
        ) from None
    return model.eval()


def count_parameters(state_dict: Mapping[str, torch.Tensor], prefix: str = "") -> int:
    """Number of learnable values (buffers such as BN running stats excluded)."""
    return sum(
        v.numel()
        for k, v in state_dict.items()
        if k.startswith(prefix) and not k.endswith(_BUFFER_SUFFIXES)
    )


def describe(payload: Mapping[str, Any]) -> dict[str, Any]:
    """What a checkpoint holds, for ``simclr info``.

    Args:
        payload: a payload from :func:`load_checkpoint`.

    Returns:
        A json-able dict: format, arch, stem, head, image size, normalisation, epochs, step,
        dataset, metrics, conversion record and parameter counts.
    """
    spec = payload["model"]
    sd = payload["state_dict"]
    converted = payload.get("converted_from")
    source = f"{converted['source']} (converted)" if converted else "simclr-cli"
    hidden = spec.get("hidden_dim") or spec.get("feature_dim")
    bias = "with bias" if spec.get("head_bias", True) else "without bias"
    return {
        "format": f"{source}, format version {payload.get('format_version')}",
        "kind": payload.get("kind"),
        "arch": spec.get("arch"),
        "stem": spec.get("stem"),
        "head": f"{spec.get('head')} {spec.get('feature_dim')}-{hidden}-"
        f"{spec.get('projection_dim')} {bias}",
        "image_size": spec.get("image_size"),
        "normalization": None
        if spec.get("mean") is None
        else {"mean": spec.get("mean"), "std": spec.get("std")},
        "epochs": payload.get("epoch"),
        "global_step": payload.get("global_step"),
        "dataset": payload.get("dataset"),
        "metrics": dict(payload.get("metrics") or {}),
        "converted_from": dict(converted) if converted else None,
        "parameters": {
            "encoder": count_parameters(sd, "encoder."),
            "projector": count_parameters(sd, "projector."),
            "total": count_parameters(sd),
        },
        "resumable": payload.get("optimizer") is not None,
    }
