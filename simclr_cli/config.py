"""Validated options, one frozen model per command.

The CLI builds one of these from its flags; library entry points receive nothing else. Field
names are the flag names with ``_`` for ``-`` (``batch_size`` is ``--batch-size``), so a
validation error can name the flag. Defaults that depend on other options (image size, stem,
learning rate, ...) are ``resolved_*`` properties, never mutations.
"""

from __future__ import annotations

import os
import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import platformdirs
from pydantic import BaseModel, ConfigDict, Field, field_validator, model_validator

from simclr_cli.archs import ARCHS, IMAGENET_STEM_MIN_SIZE, auto_stem
from simclr_cli.metrics import KNN_TEMPERATURE

# Weight decay per optimiser: 1e-6 is the SimCLR paper's default with LARS ("Default setting").
DEFAULT_WEIGHT_DECAY = {"lars": 1e-6, "adam": 1e-6, "adamw": 1e-4, "sgd": 1e-4}
CPU_COUNT = os.cpu_count() or 1
# Options of `simclr pretrain --resume` that a command line may change: how long the run goes,
# how it is launched and monitored, none of the data, model, optimizer or augmentation. Every
# other option is taken from the run itself (its checkpoint, else its config.json).
RESUME_MAY_CHANGE = (
    "epochs",
    "max_steps",
    "workers",
    "data_dir",
    "device",
    "precision",
    "channels_last",
    "compile",
    "deterministic",
    "checkpoint_every",
    "knn_every",
    "knn_k",
    "log_every",
    "gpus",
    "processes",
    "nodes",
    "node_rank",
    "master_addr",
    "master_port",
    "sync_bn",
)
# Options that describe how this command is launched: given one, the others come from this
# command too (its flags or their defaults), never half from the run and half from here.
RESUME_LAUNCH_GROUP = (
    "device",
    "precision",
    "gpus",
    "processes",
    "nodes",
    "node_rank",
    "master_addr",
    "master_port",
    "sync_bn",
)


def default_cache_dir() -> Path:
    """Where downloaded checkpoints live: ``$SIMCLR_CACHE_DIR`` or the user cache folder."""
    env = os.environ.get("SIMCLR_CACHE_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_cache_dir("simclr-cli"))


def default_data_dir() -> Path:
    """Where datasets are downloaded: ``$SIMCLR_DATA_DIR`` or the user data folder."""
    env = os.environ.get("SIMCLR_DATA_DIR")
    return Path(env).expanduser() if env else Path(platformdirs.user_data_dir("simclr-cli"))


def default_workers() -> int:
    """DataLoader workers: one per core, at most 8 (more rarely helps and costs memory)."""
    return min(8, CPU_COUNT)


def dataset_kind(dataset: str) -> str:
    """``cifar10``/``cifar100``/``stl10``/``shapes``, or ``folder`` (see :mod:`simclr_cli.data`).

    Raises:
        UsageError: naming ``--dataset`` (passed through pydantic unchanged).
    """
    from simclr_cli import data  # imported late: ``simclr --help`` needs no torchvision

    return data.dataset_kind(dataset)


def _canonical_dataset(dataset: str) -> str:
    """The dataset's canonical name (``CIFAR10`` -> ``cifar10``); folder paths as given."""
    kind = dataset_kind(dataset)
    return dataset if kind == "folder" else kind


def _cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def _resolve_device(device: str) -> str:
    from simclr_cli.inference import resolve_device_name  # imported late: it loads torch

    return resolve_device_name(device, _cuda_available())


def _resolve_precision(precision: str, device: str) -> str:
    from simclr_cli.inference import resolve_precision

    return resolve_precision(precision, device)


def _check_device(device: str, precision: str) -> None:
    if device == "cuda" and not _cuda_available():
        raise ValueError("CUDA was requested but no GPU is visible; use --device cpu or auto")
    if precision == "fp16" and _resolve_device(device) != "cuda":
        raise ValueError("fp16 needs a GPU; on the CPU use fp32 or bf16 (--precision)")


def _check_checkpoint(value: str) -> str:
    """A checkpoint is a file, a run folder, a release name or an http(s) URL."""
    from simclr_cli.registry import REGISTRY, checkpoint_kind

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


class _Frozen(BaseModel):
    model_config = ConfigDict(
        frozen=True, extra="forbid", allow_inf_nan=False, protected_namespaces=()
    )


class PretrainConfig(_Frozen):
    """Options of ``simclr pretrain``; ``batch_size`` is the global batch over all processes."""

    # data
    dataset: str = "shapes"
    data_dir: Path = Field(default_factory=default_data_dir)
    limit: int | None = Field(default=None, ge=1)
    image_size: int | None = Field(default=None, ge=8, le=1024)
    # model
    arch: Literal[ARCHS] = "resnet18"  # type: ignore[valid-type]
    stem: Literal["auto", "cifar", "imagenet"] = "auto"
    head: Literal["v1", "v2"] = "v1"
    projection_dim: int = Field(default=128, ge=1)
    hidden_dim: int | None = Field(default=None, ge=1)
    # Off: torchvision's initialisation, which trains faster in short runs (benchmarks/
    # quality.py); on: the last BN of each residual block starts at zero (the paper's TF code).
    zero_init_residual: bool = False
    # optimisation
    batch_size: int = Field(default=256, ge=2)
    epochs: int = Field(default=100, ge=1)
    max_steps: int | None = Field(default=None, ge=1)
    optimizer: Literal["lars", "adam", "adamw", "sgd"] = "lars"
    lr: float | None = Field(default=None, gt=0)
    lr_scaling: Literal["linear", "sqrt"] = "linear"
    weight_decay: float | None = Field(default=None, ge=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    warmup_epochs: float | None = Field(default=None, ge=0)
    temperature: float = Field(default=0.5, gt=0)
    # augmentation
    jitter_strength: float | None = Field(default=None, ge=0, le=2.5)  # hue 0.2s <= 0.5
    blur: bool | None = None
    crop_scale: tuple[float, float] = (0.08, 1.0)  # the paper's; = augment.CROP_SCALE
    flip: bool = True
    augment_on: Literal["cpu", "device"] = "cpu"
    data_on: Literal["auto", "host", "device"] = "auto"
    workers: int = Field(default_factory=default_workers, ge=0)
    # runtime
    seed: int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    channels_last: bool = True
    compile: bool = False
    deterministic: bool = False
    # outputs
    out: Path | None = None
    checkpoint_every: int = Field(default=10, ge=1)
    resume: str | None = None
    knn_every: int = Field(default=0, ge=0)
    knn_k: int | None = Field(default=None, ge=1)
    log_every: int = Field(default=10, ge=1)
    # distributed
    gpus: int = Field(default=0, ge=0)
    processes: int = Field(default=1, ge=1)
    nodes: int = Field(default=1, ge=1)
    node_rank: int = Field(default=0, ge=0)
    master_addr: str = "127.0.0.1"
    master_port: int | None = Field(default=None, ge=1, le=65535)
    sync_bn: bool | None = None

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        return _canonical_dataset(value)

    @field_validator("crop_scale", mode="before")
    @classmethod
    def _crop_scale(cls, value: Any) -> Any:
        return parse_crop_scale(value)

    @field_validator("resume")
    @classmethod
    def _resume(cls, value: str | None) -> str | None:
        if value is None or value == "auto" or Path(value).expanduser().is_file():
            return value
        raise ValueError("use 'auto' or the path of an existing checkpoint file")

    @field_validator("out", mode="before")
    @classmethod
    def _out(cls, value: Any) -> Any:
        return check_out_folder(value)

    @model_validator(mode="before")
    @classmethod
    def _default_out(cls, data: Any) -> Any:
        """Pick the run folder once, so every later use (and every process) agrees on it.

        ``--resume auto`` needs ``--out``: it names the run to continue, and guessing one (or
        starting a fresh run in a new folder) would do something the user did not ask for.
        """
        if isinstance(data, dict) and data.get("out") is None:
            if data.get("resume") == "auto":
                raise ValueError(resume_auto_needs_out())
            data = dict(data)
            data["out"] = default_run_dir(
                str(data.get("dataset", "shapes")), str(data.get("arch", "resnet18"))
            )
        return data

    @model_validator(mode="after")
    def _cross_field(self) -> PretrainConfig:
        if self.gpus and self.processes > 1:
            raise ValueError("give either --gpus (one process per GPU) or --processes, not both")
        if self.gpus and self.device == "cpu":
            raise ValueError("--gpus needs --device cuda or auto; on the CPU use --processes")
        if self.node_rank >= self.nodes:
            raise ValueError(f"--node-rank {self.node_rank} must be below --nodes {self.nodes}")
        if self.gpus and not _cuda_available():
            raise ValueError(
                f"--gpus {self.gpus} needs a CUDA device and none is visible; drop --gpus to "
                "train on the CPU (--processes N for several CPU processes)"
            )
        _check_device(self.device, self.precision)
        if self.data_on == "device" and self.augment_on != "device":
            raise ValueError(
                "--data-on device makes both views on the device: add --augment-on device, "
                "or use --data-on host"
            )
        if self.batch_size % self.world_size:
            raise ValueError(
                f"--batch-size {self.batch_size} is the global batch and must be divisible by "
                f"the number of processes ({self.world_size})"
            )
        if self.warmup_epochs is not None and self.warmup_epochs >= self.epochs:
            raise ValueError(
                f"--warmup-epochs {self.warmup_epochs:g} must be less than --epochs "
                f"{self.epochs} (the cosine decay follows the warmup); lower it or leave it out"
            )
        if self.per_process_batch_size < 2 and self.world_size == 1:
            raise ValueError("--batch-size must be at least 2 (NT-Xent needs negatives)")
        if self.resolved_stem == "imagenet" and self.resolved_image_size < IMAGENET_STEM_MIN_SIZE:
            raise ValueError(
                f"--image-size {self.resolved_image_size} is too small for the ImageNet stem "
                f"(needs >= {IMAGENET_STEM_MIN_SIZE}); use --stem cifar"
            )
        return self

    # -- derived values -------------------------------------------------------------------
    @property
    def dataset_kind(self) -> str:
        return dataset_kind(self.dataset)

    @property
    def resolved_image_size(self) -> int:
        from simclr_cli.data import default_image_size

        return self.image_size or default_image_size(self.dataset_kind)

    @property
    def resolved_stem(self) -> str:
        """CIFAR stem (3x3 conv, no max-pool; paper appendix B.9) for images of 64 px or less."""
        if self.stem != "auto":
            return self.stem
        return auto_stem(self.resolved_image_size)

    @property
    def resolved_jitter_strength(self) -> float:
        """Paper: 0.5 for CIFAR-size images, 1.0 for ImageNet-size ones."""
        if self.jitter_strength is not None:
            return self.jitter_strength
        return 0.5 if self.resolved_image_size <= 64 else 1.0

    @property
    def resolved_blur(self) -> bool:
        """Gaussian blur hurts on tiny images (paper appendix B.9), so on only from 96 px."""
        return self.blur if self.blur is not None else self.resolved_image_size >= 96

    @property
    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return DEFAULT_WEIGHT_DECAY[self.optimizer]

    @property
    def resolved_lr(self) -> float:
        """``--lr`` when given, otherwise the optimiser's base lr scaled by the GLOBAL batch."""
        if self.lr is not None:
            return self.lr
        from simclr_cli.optim import default_base_lr, scaled_lr

        base = default_base_lr(self.optimizer, self.lr_scaling)
        return scaled_lr(base, self.batch_size, self.lr_scaling)

    @property
    def resolved_device(self) -> str:
        return "cuda" if self.gpus else _resolve_device(self.device)

    @property
    def resolved_precision(self) -> str:
        return _resolve_precision(self.precision, self.resolved_device)

    @property
    def resolved_channels_last(self) -> bool:
        return self.channels_last

    @property
    def procs_per_node(self) -> int:
        return self.gpus or self.processes

    @property
    def world_size(self) -> int:
        """Processes over all nodes; a torchrun or SLURM launch sets it through the environment."""
        from simclr_cli.distributed import launcher_world_size

        launched = launcher_world_size()
        return launched if launched is not None else self.procs_per_node * self.nodes

    @property
    def per_process_batch_size(self) -> int:
        return self.batch_size // self.world_size

    @property
    def resolved_sync_bn(self) -> bool:
        """Global batch norm is the default as soon as there is more than one process."""
        return self.sync_bn if self.sync_bn is not None else self.world_size > 1

    @property
    def resolved_out(self) -> Path:
        assert self.out is not None  # filled by _default_out
        return self.out


def default_run_dir(dataset: str, arch: str) -> Path:
    """``runs/<dataset>-<arch>-<timestamp>``."""
    kind = dataset_kind(dataset)
    name = Path(dataset).name if kind == "folder" else kind
    name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "data"
    return Path("runs") / f"{name}-{arch}-{datetime.now().strftime('%Y%m%d-%H%M%S')}"


def resume_auto_needs_out() -> str:
    """The line for ``--resume auto`` without ``--out``, naming the newest run as an example."""
    runs = sorted(Path("runs").glob("*/checkpoint_last.pt"), key=lambda p: p.stat().st_mtime)
    example = runs[-1].parent if runs else Path("runs") / "<run folder>"
    return (
        f"--resume auto needs --out: --out names the run to continue "
        f"(e.g. --resume auto --out {example})"
    )


class _EvalCommon(_Frozen):
    checkpoint: str
    data_dir: Path = Field(default_factory=default_data_dir)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    image_size: int | None = Field(default=None, ge=8, le=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    workers: int = Field(default_factory=default_workers, ge=0)
    limit: int | None = Field(default=None, ge=1)

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, value: str) -> str:
        return _check_checkpoint(value)

    @model_validator(mode="after")
    def _device(self) -> _EvalCommon:
        _check_device(self.device, self.precision)
        return self

    @property
    def resolved_device(self) -> str:
        return _resolve_device(self.device)

    @property
    def resolved_precision(self) -> str:
        return _resolve_precision(self.precision, self.resolved_device)


class LinearEvalConfig(_EvalCommon):
    """Options of ``simclr linear-eval``: a linear classifier on frozen features."""

    dataset: str | None = None
    train_dir: Path | None = None
    test_dir: Path | None = None
    val_split: float | None = Field(default=None, gt=0, lt=1)
    protocol: Literal["features", "augment"] = "features"
    solver: Literal["lbfgs", "adam"] = "lbfgs"
    epochs: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=512, ge=1)
    seed: int = Field(default=0, ge=0)
    out: Path | None = None
    overwrite: bool = False
    knn_k: int | None = Field(default=None, ge=1)
    knn_temperature: float = Field(default=KNN_TEMPERATURE, gt=0)
    baseline: tuple[Literal["random", "pixels"], ...] = ()

    @field_validator("out", mode="before")
    @classmethod
    def _out(cls, value: Any) -> Any:
        return check_out_folder(value)

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str | None) -> str | None:
        return None if value is None else _canonical_dataset(value)

    @field_validator("train_dir", "test_dir")
    @classmethod
    def _dirs(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_dir():
            raise ValueError("folder does not exist")
        return value

    @model_validator(mode="after")
    def _which_data(self) -> LinearEvalConfig:
        if self.dataset is None and self.train_dir is None:
            raise ValueError("give --dataset, or --train-dir (with --test-dir or --val-split)")
        if self.dataset is not None and self.train_dir is not None:
            raise ValueError("give either --dataset or --train-dir, not both")
        if self.test_dir is not None and self.val_split is not None:
            raise ValueError("give either --test-dir or --val-split, not both")
        if self.dataset_kind != "folder" and self.val_split is not None:
            raise ValueError(f"--val-split is for image folders; {self.dataset} has a test split")
        return self

    @property
    def dataset_kind(self) -> str:
        return "folder" if self.dataset is None else dataset_kind(self.dataset)

    @property
    def resolved_epochs(self) -> int:
        """Epochs of the ``augment`` protocol (the paper trains the linear head for 100)."""
        return self.epochs or 100

    @property
    def resolved_val_split(self) -> float | None:
        """A single folder without ``--test-dir`` is split 80/20 with a fixed seed."""
        if self.dataset_kind != "folder" or self.test_dir is not None:
            return None
        return self.val_split if self.val_split is not None else 0.2


class FeaturesConfig(_EvalCommon):
    """Options of ``simclr features``: embeddings of a dataset as ``.npy`` files."""

    dataset: str = "shapes"
    split: Literal["train", "test", "unlabeled", "all"] = "test"
    layer: Literal["encoder", "projection"] = "encoder"
    batch_size: int = Field(default=256, ge=1)
    out: Path
    overwrite: bool = False

    @field_validator("dataset")
    @classmethod
    def _dataset(cls, value: str) -> str:
        return _canonical_dataset(value)

    @field_validator("out", mode="before")
    @classmethod
    def _out(cls, value: Any) -> Any:
        return check_out_folder(value)

    @model_validator(mode="after")
    def _split(self) -> FeaturesConfig:
        if self.split == "unlabeled" and self.dataset != "stl10":
            raise ValueError("--split unlabeled exists only for stl10")
        return self

    @property
    def dataset_kind(self) -> str:
        return dataset_kind(self.dataset)


class DownloadConfig(_Frozen):
    """Options of ``simclr download``."""

    name: str | None = None
    cache_dir: Path = Field(default_factory=default_cache_dir)
    force: bool = False
    from_file: Path | None = None
    list_only: bool = False
    sha256: str | None = None

    @field_validator("name")
    @classmethod
    def _name(cls, value: str | None) -> str | None:
        from simclr_cli.registry import REGISTRY

        if value is None or value in REGISTRY or re.match(r"^https?://\S+$", value):
            return value
        names = ", ".join(sorted(REGISTRY))
        raise ValueError(f"not a release checkpoint name ({names}) or an http(s) URL")

    @field_validator("sha256")
    @classmethod
    def _sha256(cls, value: str | None) -> str | None:
        if value is not None and not re.fullmatch(r"[0-9a-fA-F]{64}", value):
            raise ValueError("give the 64 hex digits of the file's sha256")
        return value.lower() if value else value

    @field_validator("from_file")
    @classmethod
    def _from_file(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_file():
            raise ValueError("file does not exist")
        return value

    @model_validator(mode="after")
    def _what(self) -> DownloadConfig:
        if self.name is None and not self.list_only:
            raise ValueError("give a checkpoint NAME or URL, or --list")
        return self


class InfoConfig(_Frozen):
    """Options of ``simclr info``; ``target`` is a checkpoint path or release name."""

    target: str | None = None
    as_json: bool = False
    cache_dir: Path = Field(default_factory=default_cache_dir)
    data_dir: Path = Field(default_factory=default_data_dir)

    @field_validator("target")
    @classmethod
    def _target(cls, value: str | None) -> str | None:
        return None if value is None else _check_checkpoint(value)


EXPORT_FORMATS = ("torchvision", "torchscript", "onnx", "safetensors")
# Formats that hold a graph (code) rather than tensors: the encoder only, input -> h.
GRAPH_FORMATS = ("torchscript", "onnx")


class ExportConfig(_Frozen):
    """Options of ``simclr export``: the encoder (or head) as a file other code can load."""

    checkpoint: str
    format: Literal[EXPORT_FORMATS] = "torchvision"  # type: ignore[valid-type]
    out: Path
    part: Literal["encoder", "projector", "both"] = "encoder"
    image_size: int | None = Field(default=None, ge=8, le=1024)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    overwrite: bool = False

    @field_validator("checkpoint")
    @classmethod
    def _checkpoint(cls, value: str) -> str:
        return _check_checkpoint(value)

    @field_validator("out")
    @classmethod
    def _out(cls, value: Path) -> Path:
        if value.expanduser().is_dir():
            raise ValueError("that is a folder; give a file name such as encoder.pt")
        return value

    @model_validator(mode="after")
    def _graph_part(self) -> ExportConfig:
        if self.format in GRAPH_FORMATS and self.part != "encoder":
            raise ValueError(
                f"--part {self.part}: --format {self.format} exports the encoder (images -> h); "
                "use --format torchvision or safetensors for the projection head"
            )
        return self


class ReportConfig(_Frozen):
    """Options of ``simclr report``: one HTML page (and its PNGs) about a run folder."""

    run_dir: Path
    out: Path | None = None
    features: Path | None = None
    max_images: int = Field(default=2000, ge=1)
    queries: int = Field(default=8, ge=1, le=64)
    batch_size: int = Field(default=256, ge=1)
    seed: int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data_dir: Path = Field(default_factory=default_data_dir)

    @field_validator("run_dir")
    @classmethod
    def _run_dir(cls, value: Path) -> Path:
        if not value.expanduser().is_dir():
            raise ValueError("no such folder; give a run folder written by simclr pretrain")
        return value

    @field_validator("features")
    @classmethod
    def _features(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_dir():
            raise ValueError("no such folder; give a folder written by simclr features")
        return value

    @field_validator("out")
    @classmethod
    def _report_out(cls, value: Path | None) -> Path | None:
        if value is not None and value.expanduser().is_file():
            raise ValueError("that is a file; give a folder for report.html and its images")
        return value

    @model_validator(mode="after")
    def _device(self) -> ReportConfig:
        _check_device(self.device, "auto")
        return self

    @property
    def resolved_device(self) -> str:
        return _resolve_device(self.device)

    @property
    def resolved_out(self) -> Path:
        """``--out``, else the run folder itself."""
        return self.out if self.out is not None else self.run_dir


# Fields whose flag is not simply the field name with dashes.
_FLAGS = {
    "name": "NAME",
    "target": "CHECKPOINT",
    "as_json": "--json",
    "list_only": "--list",
    "run_dir": "RUN_DIR",
}


def flag_name(field: str) -> str:
    """``batch_size`` -> ``--batch-size``; positional arguments keep their upper-case name."""
    return _FLAGS.get(field, "--" + field.replace("_", "-"))
