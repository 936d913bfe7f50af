"""Checkpoints: atomic saving, safe loading, and conversion of Spijkervet/SimCLR release files.

A simclr-cli checkpoint is one ``dict`` of primitives and tensors, so ``torch.load(...,
weights_only=True)`` reads it without executing code from the file. It describes its own model
(``payload["model"]`` is the spec for :func:`simclr_cli.model.build_simclr`) and holds the
optimizer, grad-scaler and RNG state needed to resume.

Payload layout (``FORMAT_VERSION`` 1)::

    format, format_version, kind ("pretrain"), model (spec dict), dataset, epoch (completed),
    global_step, config (json-able dict), metrics (dict), state_dict (encoder.*, projector.*),
    optimizer (state_dict | None), scaler (state_dict | None), rng (dict),
    converted_from (None | dict)

The release checkpoints of Spijkervet/SimCLR are bare ``state_dict`` s (``encoder.*`` of a
torchvision ResNet without ``fc``, ``projector.0/2.*``), sometimes with DDP ``module.`` prefixes
and written in torch's legacy serialization. :func:`load_checkpoint` converts them into the layout
above, inferring the architecture, stem and head from key names and tensor shapes.
"""

from __future__ import annotations

import os
import pickle
import re
import warnings
import zipfile
from collections import OrderedDict
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

import torch

from simclr_cli import archs, fileio, registry
from simclr_cli.errors import CheckpointError, UsageError

if TYPE_CHECKING:
    from simclr_cli.model import SimCLR

FORMAT = "simclr-cli-checkpoint"
FORMAT_VERSION = 1
PRETRAIN_KIND = "pretrain"

# Spijkervet/SimCLR release facts: STL-10 `unlabeled` at 96 px, no input normalisation.
RELEASE_SOURCE = "Spijkervet/SimCLR"
RELEASE_IMAGE_SIZE = 96
RELEASE_DATASET = "stl10"

# Width of layer1.0.conv1 separates ResNet-50 (64) from Wide ResNet-50-2 (128).
_WIDE_LAYER1_WIDTH = 128
# conv1 kernel size -> stem (simclr_cli.model: "cifar" is a 3x3 stride-1 conv without max-pool).
_STEMS = {7: "imagenet", 3: "cifar"}
_BUFFER_SUFFIXES = ("running_mean", "running_var", "num_batches_tracked")
_DDP_PREFIX = "module."


# --------------------------------------------------------------------------------------------
# Saving
# --------------------------------------------------------------------------------------------


def save_checkpoint(payload: Mapping[str, Any], path: str | os.PathLike[str]) -> Path:
    """Write ``payload`` to ``path`` atomically (see :mod:`simclr_cli.fileio`).

    A crash at any moment leaves either the old file or the new one, never a mix; the temporary
    file is removed on any failure, and those of writers that were killed are removed first.

    Args:
        payload: the checkpoint dict; ``format``/``format_version``/``kind`` are filled in when
            absent. Only primitives, containers and tensors are allowed.
        path: destination file.

    Returns:
        The destination path.

    Raises:
        TypeError: ``payload`` holds an object ``torch.load(weights_only=True)`` would refuse.
        WriteError: the disk is full or the folder cannot be written (one line, naming it).
    """
    full = {"format": FORMAT, "format_version": FORMAT_VERSION, "kind": PRETRAIN_KIND, **payload}
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


def load_checkpoint(path: str | os.PathLike[str], shown: str | None = None) -> dict[str, Any]:
    """Load a simclr-cli checkpoint or a Spijkervet/SimCLR release file, without running its code.

    A file in torch's zip format has its archive CRCs checked first: ``torch.load`` does not, so
    a flipped bit in the tensor data would otherwise load as different weights.

    Args:
        path: the checkpoint file.
        shown: how messages name the file (default: ``path``), e.g. the source of a download
            that is still in a temporary file.

    Returns:
        A payload in the layout of this module (release files are converted; what was inferred is
        in ``payload["converted_from"]``).

    Raises:
        CheckpointError: the file is missing, corrupt, needs arbitrary unpickling (refused),
            or is not a pretraining checkpoint.
    """
    path = Path(path)
    shown = shown or str(path)
    obj = _torch_load(path, shown)
    if isinstance(obj, Mapping) and obj.get("format") == FORMAT:
        return _check_native(obj, shown)
    if _is_state_dict(obj):
        try:
            return convert_release_state_dict(obj, name=path.name)
        except CheckpointError as e:  # named after the file as the caller knows it
            problem = str(e).removeprefix(f"{path.name}: ").removeprefix(path.name)
            raise CheckpointError(f"{shown}: {problem}", problem=problem) from None
    problem = f"it is not a simclr-cli pretraining checkpoint ({_summarize(obj)})"
    raise CheckpointError(
        f"{shown} is not a simclr-cli pretraining checkpoint ({_summarize(obj)}); "
        "give a file written by `simclr pretrain` or a Spijkervet/SimCLR release checkpoint",
        problem=problem,
    )


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


def _check_native(obj: Mapping[str, Any], path: str) -> dict[str, Any]:
    """Validate a payload that carries our FORMAT marker."""
    version = obj.get("format_version")
    if not isinstance(version, int) or version > FORMAT_VERSION:
        raise CheckpointError(
            f"{path} has checkpoint format version {version!r}, newer than this simclr-cli "
            f"understands ({FORMAT_VERSION}); upgrade simclr-cli"
        )
    kind = obj.get("kind")
    if kind != PRETRAIN_KIND:
        raise CheckpointError(
            f"{path} is not a simclr-cli pretraining checkpoint (kind {kind!r}); "
            "give a checkpoint written by `simclr pretrain`"
        )
    missing = [k for k in ("model", "state_dict") if not isinstance(obj.get(k), Mapping)]
    if missing:
        raise CheckpointError(f"{path} is incomplete (no {', '.join(missing)}); it cannot be used")
    return dict(obj)


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
# Conversion of Spijkervet/SimCLR release files
# --------------------------------------------------------------------------------------------


def convert_release_state_dict(
    state_dict: Mapping[str, torch.Tensor], name: str = "checkpoint"
) -> dict[str, Any]:
    """Convert a Spijkervet/SimCLR ``state_dict`` into a simclr-cli payload.

    Args:
        state_dict: ``encoder.*`` (torchvision ResNet without ``fc``) and ``projector.{0,2}.*``,
            optionally prefixed by ``module.`` (DDP).
        name: file name, used in messages and to read the epoch from ``checkpoint_<epoch>.tar``.

    Returns:
        A payload whose ``converted_from`` records the source and everything inferred.

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
    return {
        "format": FORMAT,
        "format_version": FORMAT_VERSION,
        "kind": PRETRAIN_KIND,
        "model": spec,
        "dataset": RELEASE_DATASET,
        "epoch": epoch,
        "global_step": None,
        "config": {},
        "metrics": {},
        "state_dict": converted,
        "optimizer": None,
        "scaler": None,
        "rng": {},
        "converted_from": {
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
        },
    }


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
    from simclr_cli.model import build_simclr

    try:
        model = build_simclr(dict(payload["model"]))
    except (KeyError, ValueError, TypeError, UsageError) as e:
        raise CheckpointError(f"checkpoint model description is invalid ({e})") from None
    try:
        model.load_state_dict(payload["state_dict"], strict=True)
    except RuntimeError as e:
        first = str(e).splitlines()[1:2] or [str(e)]
        raise CheckpointError(
            f"checkpoint weights do not match its model description ({first[0].strip()})"
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
