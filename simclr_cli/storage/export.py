"""``simclr export``: the encoder (or the projection head), or a fine-tuned classifier, as a
file other code loads alone.

Four formats:

- ``torchvision``: a plain ``state_dict`` that loads with ``strict=True`` into the torchvision
  ResNet built in a few lines (:func:`load_snippet`; the README shows them);
- ``safetensors``: the same tensors in the safetensors format;
- ``torchscript`` and ``onnx``: the encoder as a self-contained graph from normalised float images
  ``(B, 3, S, S)`` to ``h`` (a classifier's: to ``logits``) with a dynamic batch dimension. They
  record the input size and normalisation they expect, and a classifier's class names
  (TorchScript: an embedded ``meta.json``; ONNX: ``metadata_props``).

Every export also writes ``<out>.meta.json`` (what the file holds and how to load it). Nothing is
reported done before it is verified: the file is written under a temporary name, loaded back
the way a user would load it, run on a fixed batch and compared with the checkpoint's own ``h``
(and ``z``, or a classifier's logits); only then is it renamed into place. A failed verification
leaves no file. The plain modules and the loading lines are in
:mod:`~simclr_cli.storage.plain_modules`.
"""

from __future__ import annotations

import contextlib
import json
import os
import warnings
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch
from torch import Tensor, nn

from simclr_cli.errors import ExportError, OutputExistsError, UsageError, import_extra
from simclr_cli.storage import fileio, runlock
from simclr_cli.storage.plain_modules import (  # noqa: F401 - also this module's interface
    load_snippet,
    part_state_dict,
    plain_classifier,
    plain_encoder,
    plain_module,
    plain_projector,
)

# Images in the fixed verification batch; more than one, so the batch dimension is exercised.
VERIFY_BATCH = 4
# Largest allowed difference from the checkpoint's output, relative to max(1, max |h|).
TOLERANCE = 1e-4
INPUT_NAME = "images"
# The parts each kind of checkpoint exports, the first by default.
PARTS = {"pretrain": ("encoder", "projector", "both"), "classifier": ("classifier", "encoder")}


@dataclass(frozen=True)
class Reference:
    """The fixed batch and what the checkpoint's own model computes from it."""

    x: Tensor  # (B, 3, S, S) normalised float images
    h: Tensor  # (B, feature_dim)
    z: Tensor | None  # (B, projection_dim); None for a classifier
    logits: Tensor | None = None  # (B, num_classes) of a classifier


def output_name(part: str) -> str:
    """The graph's output: ``h`` of the encoder, ``logits`` of a classifier."""
    return "logits" if part == "classifier" else "h"


# -- the command -----------------------------------------------------------------------------


def run_export(cfg: Any) -> dict[str, Any]:
    """``simclr export``: write, verify, then rename the export and its ``meta.json``.

    Args:
        cfg: a :class:`simclr_cli.config.ExportConfig`.

    Returns:
        A summary: the file, its meta.json, format, part, input size and the verified error.

    Raises:
        OutputExistsError: ``--out`` (or its meta.json) exists and ``--overwrite`` is off.
        OutputBusyError: another process is exporting to ``--out``.
        MissingExtraError: the format needs the ``export`` extra.
        ExportError: the exported model did not reproduce the checkpoint (no file is left).
        CheckpointError: with one-line messages.
    """
    out = Path(cfg.out).expanduser()
    # One writer of the file and its meta.json at a time (two would mix them).
    with runlock.hold_output(out, "simclr export"):
        return _export(cfg, out)


def _export(cfg: Any, out: Path) -> dict[str, Any]:
    """The body of :func:`run_export`, holding the lock of ``out``."""
    meta_path = meta_path_for(out)
    _check_free(out, meta_path, cfg.overwrite)
    _require_packages(cfg.format)
    model, payload, path = load_export_model(cfg.checkpoint, cfg.cache_dir)
    part = export_part(cfg.part, payload, cfg.format)
    size = int(cfg.image_size or payload["model"].get("image_size") or 224)
    reference = make_reference(model, size)
    meta = build_meta(payload, cfg, path, size, part)
    error = write_verified(payload, cfg, out, meta, reference, part)
    return {
        "file": str(out),
        "meta": str(meta_path),
        "format": cfg.format,
        "part": part,
        "checkpoint": str(path),
        "input": f"(batch, 3, {size}, {size}) float32, {meta['input']['value_range']}",
        "verified_max_error": f"{error:.2e} (<= {TOLERANCE:g} x max(1, |{output_name(part)}|))",
    }


def load_export_model(ref: str, cache_dir: Path) -> tuple[nn.Module, dict[str, Any], Path]:
    """The model of a pretraining or classifier checkpoint (eval mode), its payload and path."""
    from simclr_cli.storage.checkpoint import (
        CLASSIFIER_KIND,
        PRETRAIN_KIND,
        check_encoder,
        load_checkpoint,
        load_model,
    )
    from simclr_cli.storage.classifier import check_classifier, load_classifier
    from simclr_cli.storage.hub import resolve_checkpoint

    path = resolve_checkpoint(ref, cache_dir)
    payload = load_checkpoint(path, kinds=(PRETRAIN_KIND, CLASSIFIER_KIND))
    check_encoder(payload, path)
    if payload["kind"] == CLASSIFIER_KIND:
        payload = check_classifier(payload, path)
        return load_classifier(payload).requires_grad_(False), payload, path
    return load_model(payload).requires_grad_(False), payload, path


def export_part(part: str | None, payload: Mapping[str, Any], fmt: str) -> str:
    """``--part`` for this checkpoint: by default the encoder, or a classifier's whole model.

    Raises:
        UsageError: a part the checkpoint does not hold, or a head part in a graph format.
    """
    kind = payload.get("kind", "pretrain")
    allowed = PARTS[kind]
    part = part or allowed[0]
    if part not in allowed:
        what = "a classifier" if kind == "classifier" else "a pretraining checkpoint"
        raise UsageError("--part", part, f"{what} exports {' or '.join(allowed)}")
    if fmt in ("torchscript", "onnx") and part not in ("encoder", "classifier"):
        raise UsageError("--part", part, f"--format {fmt} exports the encoder or a classifier")
    return part


def write_verified(
    payload: Mapping[str, Any],
    cfg: Any,
    out: Path,
    meta: dict[str, Any],
    reference: Reference,
    part: str,
) -> float:
    """Write the export and its meta.json under temporary names, verify, then rename both.

    Returns:
        The verified largest difference from the checkpoint's outputs.
    """
    meta_path = meta_path_for(out)
    with _new_folders(out.parent), _staged(out) as tmp, _staged(meta_path) as tmp_meta:
        WRITERS[cfg.format](payload, part, tmp, meta)
        error = verify(cfg.format, part, tmp, payload["model"], reference)
        meta["verified"] = {"batch": VERIFY_BATCH, "max_abs_error": error, "tolerance": TOLERANCE}
        tmp_meta.write_text(json.dumps(meta, indent=2) + "\n", encoding="utf-8")
        fileio.commit(tmp, out)  # fsync, rename, fsync the folder: simclr_cli.storage.fileio
        fileio.commit(tmp_meta, meta_path)
    return error


def meta_path_for(out: Path) -> Path:
    """``encoder.onnx`` -> ``encoder.onnx.meta.json`` (unique per export file)."""
    return out.with_name(out.name + ".meta.json")


def _check_free(out: Path, meta_path: Path, overwrite: bool) -> None:
    existing = [str(p) for p in (out, meta_path) if p.exists()]
    if existing and not overwrite:
        verb = "exist" if len(existing) > 1 else "exists"
        raise OutputExistsError(
            f"{' and '.join(existing)} already {verb}; pass --overwrite to replace, or choose "
            "another --out"
        )


def _require_packages(fmt: str) -> None:
    """Fail before any work when the format's optional packages are missing."""
    needs = {"onnx": ("onnx", "onnxscript", "onnxruntime"), "safetensors": ("safetensors",)}
    for module in needs.get(fmt, ()):
        import_extra(module, "export", f"--format {fmt}")


def make_reference(model: nn.Module, size: int, seed: int = 0) -> Reference:
    """A fixed, seeded batch of normalised images and the checkpoint model's ``h`` and ``z``
    (a classifier's ``h`` and logits)."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randn(VERIFY_BATCH, 3, size, size, generator=generator)
    with torch.no_grad():
        if hasattr(model, "fc"):  # a classifier: encoder, then fc
            h = model.encoder(x)
            return Reference(x, h, None, model.fc(h))
        h, z = model(x)
    return Reference(x, h, z)


def build_meta(
    payload: Mapping[str, Any], cfg: Any, checkpoint: Path, size: int, part: str
) -> dict[str, Any]:
    """What the export holds and expects: JSON-able, also embedded where the format allows."""
    from simclr_cli import __version__

    spec = payload["model"]
    mean, std = spec.get("mean"), spec.get("std")
    meta: dict[str, Any] = {
        "format": cfg.format,
        "part": part,
        "checkpoint": str(checkpoint),
        "arch": spec["arch"],
        "stem": spec["stem"],
        "feature_dim": spec["feature_dim"],
        "projection_dim": spec["projection_dim"],
        "head": spec["head"],
        "input": {
            "shape": ["batch", 3, size, size],
            "dtype": "float32",
            "value_range": "images scaled to [0, 1], then normalised: (x - mean) / std",
            "mean": mean,
            "std": std,
        },
        "output": "h, (batch, feature_dim)" if part == "encoder" else part,
        "simclr_cli_version": __version__,
    }
    if part == "classifier":
        classes = list(payload["classes"])
        meta.update(classes=classes, num_classes=len(classes))
        meta["output"] = "logits, (batch, num_classes); softmax gives the probability of classes[i]"
    if mean is None:
        meta["input"]["value_range"] = "images scaled to [0, 1]; no normalisation"
    if cfg.format in ("torchvision", "safetensors"):
        meta["load"] = load_snippet(spec, part, Path(cfg.out).name, cfg.format)
    return meta


# -- writers ---------------------------------------------------------------------------------


def _write_state_dict(payload: Mapping[str, Any], part: str, tmp: Path, meta: dict) -> None:
    torch.save(part_state_dict(payload["state_dict"], part), tmp)


def _write_safetensors(payload: Mapping[str, Any], part: str, tmp: Path, meta: dict) -> None:
    from safetensors.torch import save

    strings = {k: v if isinstance(v, str) else json.dumps(v) for k, v in meta.items()}
    # The bytes into the package's temporary file: save_file() makes a new file of mode 0600,
    # where every other output gets the mode the umask allows.
    tmp.write_bytes(save(part_state_dict(payload["state_dict"], part), metadata=strings))


def _write_torchscript(payload: Mapping[str, Any], part: str, tmp: Path, meta: dict) -> None:
    with _no_jit_deprecation():
        scripted = torch.jit.script(standalone_module(payload, part))
        torch.jit.save(scripted, str(tmp), _extra_files={"meta.json": json.dumps(meta)})


def _write_onnx(payload: Mapping[str, Any], part: str, tmp: Path, meta: dict) -> None:
    import onnx

    size = meta["input"]["shape"][-1]
    example = torch.randn(2, 3, size, size)  # batch 2: a batch of 1 would be specialised
    with _quiet_stdout():
        program = torch.onnx.export(
            standalone_module(payload, part),
            (example,),
            input_names=[INPUT_NAME],
            output_names=[output_name(part)],
            dynamic_shapes=({0: torch.export.Dim("batch", min=1)},),
            dynamo=True,
            external_data=False,
            verbose=False,
        )
    assert program is not None  # the dynamo exporter returns its program
    proto = program.model_proto
    for key, value in meta.items():
        entry = proto.metadata_props.add()
        entry.key, entry.value = key, value if isinstance(value, str) else json.dumps(value)
    onnx.save_model(proto, str(tmp))


WRITERS: dict[str, Callable[[Mapping[str, Any], str, Path, dict], None]] = {
    "torchvision": _write_state_dict,
    "safetensors": _write_safetensors,
    "torchscript": _write_torchscript,
    "onnx": _write_onnx,
}


def standalone_module(payload: Mapping[str, Any], part: str) -> nn.Module:
    """The checkpoint's encoder (or classifier) as a plain torchvision module with its weights,
    in eval mode."""
    module = plain_module(payload["model"], part)
    module.load_state_dict(part_state_dict(payload["state_dict"], part), strict=True)
    return module.eval()


@contextlib.contextmanager
def _no_jit_deprecation() -> Iterator[None]:
    """torch >= 2.10 warns that TorchScript is deprecated; the format is still what many C++
    and mobile runtimes load, and the README says so once instead of every export."""
    with warnings.catch_warnings():
        warnings.filterwarnings("ignore", category=FutureWarning, message=".*deprecated.*")
        yield


@contextlib.contextmanager
def _quiet_stdout() -> Iterator[None]:
    """The ONNX exporter prints its progress on stdout; keep the command's output clean."""
    with open(os.devnull, "w") as sink, contextlib.redirect_stdout(sink):
        yield


# -- verification ----------------------------------------------------------------------------


def verify(fmt: str, part: str, tmp: Path, spec: Mapping[str, Any], ref: Reference) -> float:
    """Load the written file as a user would and compare its output on the fixed batch.

    Returns:
        The largest absolute difference from the checkpoint's ``h`` (and ``z``).

    Raises:
        ExportError: the file does not load, or differs by more than :data:`TOLERANCE`
            relative to max(1, max |expected|).
    """
    try:
        pairs = LOADERS[fmt](tmp, spec, part, ref)
    except ExportError:
        raise
    except Exception as e:  # a file that does not load back is a failed export
        raise ExportError(
            f"the {fmt} export did not load back for verification ({type(e).__name__}: "
            f"{' '.join(str(e).split())[:200]}); nothing was written"
        ) from None
    worst = 0.0
    for name, got, expected in pairs:
        error = (got.float() - expected).abs().max().item() if got.shape == expected.shape else 1e9
        scale = max(1.0, expected.abs().max().item())
        if not error <= TOLERANCE * scale:
            raise ExportError(
                f"the {fmt} export does not reproduce the checkpoint: its {name} differs by "
                f"{error:.3g} (> {TOLERANCE:g} x {scale:.3g}) on the fixed batch; nothing was "
                "written (report this with SIMCLR_DEBUG=1 output)"
            )
        worst = max(worst, error)
    return worst


def _run_plain(state: Mapping[str, Tensor], spec: Mapping[str, Any], part: str, ref: Reference):
    """Load ``state`` strictly into the plain modules and run the parts it holds."""
    module = plain_module(spec, part).eval()
    module.load_state_dict(state, strict=True)
    with torch.no_grad():
        if part == "encoder":
            return [("h", module(ref.x), ref.h)]
        if part == "classifier":
            return [("logits", module(ref.x), ref.logits)]
        if part == "projector":
            return [("z", module(ref.h), ref.z)]
        assert isinstance(module, nn.ModuleDict)
        h = module["encoder"](ref.x)
        return [("h", h, ref.h), ("z", module["projector"](h), ref.z)]


def _load_state_dict(tmp: Path, spec: Mapping[str, Any], part: str, ref: Reference):
    return _run_plain(torch.load(tmp, map_location="cpu", weights_only=True), spec, part, ref)


def _load_safetensors(tmp: Path, spec: Mapping[str, Any], part: str, ref: Reference):
    from safetensors.torch import load_file

    return _run_plain(load_file(str(tmp)), spec, part, ref)


def _load_torchscript(tmp: Path, spec: Mapping[str, Any], part: str, ref: Reference):
    with _no_jit_deprecation():
        module = torch.jit.load(str(tmp), map_location="cpu")
    with torch.no_grad():
        return [_graph_output(part, module(ref.x), ref)]


def _load_onnx(tmp: Path, spec: Mapping[str, Any], part: str, ref: Reference):
    import onnxruntime

    session = onnxruntime.InferenceSession(str(tmp), providers=["CPUExecutionProvider"])
    (y,) = session.run([output_name(part)], {INPUT_NAME: ref.x.numpy()})
    return [_graph_output(part, torch.from_numpy(y), ref)]


def _graph_output(part: str, got: Tensor, ref: Reference) -> tuple[str, Tensor, Tensor]:
    """A graph's one output beside what the checkpoint computes: ``h`` or the logits."""
    expected = ref.logits if part == "classifier" else ref.h
    assert expected is not None
    return output_name(part), got, expected


LOADERS = {
    "torchvision": _load_state_dict,
    "safetensors": _load_safetensors,
    "torchscript": _load_torchscript,
    "onnx": _load_onnx,
}


# -- files -----------------------------------------------------------------------------------


@contextlib.contextmanager
def _new_folders(folder: Path) -> Iterator[None]:
    """Create ``folder`` (and missing parents); remove what was created if the body fails."""
    missing = [p for p in (folder, *folder.parents) if not p.exists()]
    folder.mkdir(parents=True, exist_ok=True)
    try:
        yield
    except BaseException:
        for created in missing:  # deepest first; only folders that are still empty
            with contextlib.suppress(OSError):
                created.rmdir()
        raise


@contextlib.contextmanager
def _staged(final: Path) -> Iterator[Path]:
    """A temporary path beside ``final``, removed on the way out unless renamed into place."""
    tmp = fileio.temp_path(final)  # the package's temporary name and the umask's mode
    try:
        yield tmp
    finally:
        with contextlib.suppress(FileNotFoundError):
            tmp.unlink()
