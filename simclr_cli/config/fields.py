"""What every command's options share: defaults, field types that carry their check, the
device rules, and the frozen base model with its :class:`derived` values."""

from __future__ import annotations

import os
from pathlib import Path
from typing import Annotated, Any

import platformdirs
from pydantic import (
    AfterValidator,
    BaseModel,
    BeforeValidator,
    ConfigDict,
)

from simclr_cli.data.facts import dataset_kind
from simclr_cli.devices import cuda_available, resolve_device_name
from simclr_cli.storage.registry import REGISTRY, checkpoint_kind

CPU_COUNT = os.cpu_count() or 1


def default_cache_dir() -> Path:
    """Where downloaded checkpoints live: ``$SIMCLR_CACHE_DIR`` or the user cache folder."""
    env = os.environ.get("SIMCLR_CACHE_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("simclr-cli"))


def default_data_dir() -> Path:
    """Where datasets are downloaded: ``$SIMCLR_DATA_DIR`` or the user data folder (absolute)."""
    env = os.environ.get("SIMCLR_DATA_DIR")
    return absolute_path(Path(env) if env else Path(platformdirs.user_data_dir("simclr-cli")))


def absolute_path(path: Path) -> Path:
    """``path`` absolute and resolved (``~`` expanded): what a run records, so that its files
    mean the same folder from any working directory."""
    return path.expanduser().resolve()


def default_workers() -> int:
    """DataLoader workers: one per core, at most 8 (more rarely helps and costs memory)."""
    return min(8, CPU_COUNT)


def canonical_dataset(dataset: str) -> str:
    """The dataset's canonical name (``CIFAR10`` -> ``cifar10``); a folder's absolute path."""
    kind = dataset_kind(dataset)
    return str(absolute_path(Path(dataset))) if kind == "folder" else kind


def resolve_device(device: str) -> str:
    """``--device`` resolved on this machine (``auto`` -> ``cuda`` or ``cpu``)."""
    return resolve_device_name(device, cuda_available())


def check_cuda(device: str) -> None:
    """Refuse ``--device cuda`` without a visible GPU."""
    if device == "cuda" and not cuda_available():
        raise ValueError("CUDA was requested but no GPU is visible; use --device cpu or auto")


def check_device(device: str, precision: str) -> None:
    """:func:`check_cuda`, and fp16 only on a GPU (the evaluation commands: their CPU path runs
    in float32 whatever ``--precision`` says)."""
    check_cuda(device)
    if precision == "fp16" and resolve_device(device) != "cuda":
        raise ValueError("fp16 needs a GPU; on the CPU use fp32 or bf16 (--precision)")


def check_checkpoint(value: str) -> str:
    """A checkpoint is a file, a run folder, a release name or an http(s) URL."""
    kind = checkpoint_kind(value)
    if kind == "folder":
        raise ValueError("this folder has no checkpoint_last.pt; give a checkpoint file")
    if kind == "missing":
        names = ", ".join(sorted(REGISTRY))
        raise ValueError(f"no such file, and not a release checkpoint name ({names}) or URL")
    return value


def check_out_folder(value: Any) -> Any:
    """An ``--out`` folder: not empty (that would be the current folder) and not a file.

    Raises:
        ValueError: the value is empty or names an existing file.
    """
    if isinstance(value, str) and not value.strip():
        raise ValueError("give a folder name (an empty --out would write into the current folder)")
    if value is not None and Path(value).expanduser().is_file():
        raise ValueError("that is a file; give a folder (new or existing)")
    return value


def parse_crop_scale(value: Any) -> Any:
    """``"0.2"`` -> (0.2, 1.0), ``"0.2,0.9"`` -> (0.2, 0.9); checks 0 < MIN <= MAX <= 1."""
    if isinstance(value, str):
        parts = [p.strip() for p in value.split(",")]
        if len(parts) not in (1, 2) or not all(parts):
            raise ValueError("use MIN or MIN,MAX, e.g. 0.2 or 0.2,1")
        try:
            value = tuple(float(p) for p in parts)
        except ValueError:
            raise ValueError("use numbers: MIN or MIN,MAX, e.g. 0.2 or 0.2,1") from None
        if len(value) == 1:
            value = (value[0], 1.0)
    if isinstance(value, (tuple, list)) and len(value) == 2:
        low, high = (float(v) for v in value)
        if not 0.0 < low <= high <= 1.0:
            raise ValueError("needs 0 < MIN <= MAX <= 1 (fractions of the image area)")
        return (low, high)
    return value


# Field types that carry their check: a model declares the field and pydantic runs the one
# check, whichever command's model it is in.
DatasetName = Annotated[str, AfterValidator(canonical_dataset)]
CheckpointRef = Annotated[str, AfterValidator(check_checkpoint)]
CropScale = Annotated[tuple[float, float], BeforeValidator(parse_crop_scale)]
# The check also rejects '' (an empty --out would write into the current folder).
OutFolder = Annotated[Path, BeforeValidator(check_out_folder)]
# A folder a run or its results record (--data-dir, --train-dir): kept absolute.
AbsolutePath = Annotated[Path, AfterValidator(absolute_path)]


class derived(property):  # noqa: N801  (used as a decorator, like property)
    """A value the config resolves from its options (``resolved_lr``, ``world_size``, ...).

    Every one is recorded under ``resolved`` in ``config.json`` and in checkpoints
    (:func:`simclr_cli.training.runlog.resolved_config`), so a new derived value needs no list kept
    in
    sync: decorating it is enough.
    """


class FrozenModel(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, protected_namespaces=()
    )

    def derived_values(self) -> dict[str, Any]:
        """Every :class:`derived` value of this config, by name, in definition order."""
        names = [
            name
            for klass in reversed(type(self).__mro__)
            for name, attr in vars(klass).items()
            if isinstance(attr, derived)
        ]
        return {name: getattr(self, name) for name in dict.fromkeys(names)}


# Fields whose flag is not simply the field name with dashes.
_FLAGS = {
    "name": "NAME",
    "target": "CHECKPOINT",
    "as_json": "--json",
    "list_only": "--list",
    "run_dir": "RUN_DIR",
    "images": "IMAGES",
}


def flag_name(field: str) -> str:
    """``batch_size`` -> ``--batch-size``; positional arguments keep their upper-case name."""
    return _FLAGS.get(field, "--" + field.replace("_", "-"))
