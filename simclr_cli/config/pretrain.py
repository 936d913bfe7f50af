"""The options of ``simclr pretrain`` and what a resume may change of them."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    Field,
    PrivateAttr,
    field_validator,
    model_validator,
)

from simclr_cli.config.fields import (
    AbsolutePath,
    CropScale,
    DatasetName,
    FrozenModel,
    OutFolder,
    check_cuda,
    cuda_available,
    dataset_kind,
    default_data_dir,
    default_workers,
    derived,
    resolve_device,
)
from simclr_cli.data.facts import (
    FOLDER_IMAGE_SIZES,
    default_image_size,
    folder_has_classes,
    folder_image_side,
    folder_image_size,
)
from simclr_cli.devices import resolve_precision
from simclr_cli.distributed.planning import launcher_world_size
from simclr_cli.method.archs import ARCHS, IMAGENET_STEM_MIN_SIZE, auto_stem
from simclr_cli.method.schedule import DEFAULT_WEIGHT_DECAY, default_base_lr, scaled_lr

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
    "accept_new_data",
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


class PretrainConfig(FrozenModel):
    """Options of ``simclr pretrain``; ``batch_size`` is the global batch over all processes."""

    # data
    dataset: DatasetName = "shapes"
    data_dir: AbsolutePath = Field(default_factory=default_data_dir)
    limit: int | None = Field(default=None, ge=1)
    image_size: int | None = Field(default=None, ge=8, le=1024)
    # model
    arch: Literal[ARCHS] = "resnet18"  # type: ignore[valid-type]
    stem: Literal["auto", "cifar", "imagenet"] = "auto"
    head: Literal["v1", "v1-bn", "v2"] = "v1"
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
    crop_scale: CropScale = (0.08, 1.0)  # the paper's; = augment.CROP_SCALE
    flip: bool = True
    augment_on: Literal["auto", "cpu", "device"] = "auto"
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
    out: OutFolder | None = None
    checkpoint_every: int = Field(default=10, ge=1)
    resume: str | None = None
    # A resume onto a dataset of another size than the run's: keep the run's schedule (steps).
    accept_new_data: bool = False
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
    # Processes a torchrun/SLURM launcher started (None: none did), read once at validation.
    _launched_world_size: int | None = PrivateAttr(default=None)
    # A folder's median image side, read once at validation when --image-size is not given.
    _folder_side: int | None = PrivateAttr(default=None)

    @field_validator("resume")
    @classmethod
    def _resume(cls, value: str | None) -> str | None:
        if value is None or value == "auto" or Path(value).expanduser().is_file():
            return value
        raise ValueError("use 'auto' or the path of an existing checkpoint file")

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
    def _read_launcher(self) -> PretrainConfig:
        # Before _cross_field (pydantic runs after-validators in order), which needs world_size.
        self._launched_world_size = launcher_world_size()
        return self

    @model_validator(mode="after")
    def _measure_folder(self) -> PretrainConfig:
        # Before _cross_field too: the stem check needs the resolved image size.
        if self.image_size is None and self.dataset_kind == "folder":
            self._folder_side = folder_image_side(Path(self.dataset))
        return self

    @model_validator(mode="after")
    def _cross_field(self) -> PretrainConfig:
        if self.accept_new_data and self.resume is None:
            raise ValueError("--accept-new-data continues a run: add --resume auto --out RUN")
        if self.gpus and self.processes > 1:
            raise ValueError("give either --gpus (one process per GPU) or --processes, not both")
        if self.gpus and self.device == "cpu":
            raise ValueError("--gpus needs --device cuda or auto; on the CPU use --processes")
        if self.node_rank >= self.nodes:
            raise ValueError(f"--node-rank {self.node_rank} must be below --nodes {self.nodes}")
        if self.gpus and not cuda_available():
            raise ValueError(
                f"--gpus {self.gpus} needs a CUDA device and none is visible; drop --gpus to "
                "train on the CPU (--processes N for several CPU processes)"
            )
        # Every precision trains on the CPU too: fp16 with GradScaler("cpu") is slower than
        # fp32 there, but runs a GPU's fp16 path (the scaler, its checkpoint state) anywhere.
        check_cuda(self.device)
        if self.data_on == "device" and self.resolved_augment_on != "device":
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
        if self.knn_every and self.dataset_kind == "folder":
            if not folder_has_classes(Path(self.dataset)):
                raise ValueError(
                    f"--knn-every {self.knn_every}: {self.dataset} has no class subfolders, so "
                    "there are no labels to monitor; put each class in its own subfolder, or "
                    "leave out --knn-every"
                )
        if self.resolved_stem == "imagenet" and self.resolved_image_size < IMAGENET_STEM_MIN_SIZE:
            raise ValueError(
                f"--image-size {self.resolved_image_size} is too small for the ImageNet stem "
                f"(needs >= {IMAGENET_STEM_MIN_SIZE}); use --stem cifar"
            )
        return self

    # -- derived values -------------------------------------------------------------------
    @derived
    def dataset_kind(self) -> str:
        return dataset_kind(self.dataset)

    @derived
    def resolved_image_size(self) -> int:
        """``--image-size``; else the dataset's native size, for a folder its images' median
        shorter side kept within 32-224 px (:func:`~simclr_cli.data.facts.folder_image_size`)."""
        if self.image_size is not None:
            return self.image_size
        if self.dataset_kind == "folder":
            return folder_image_size(self._folder_side)
        return default_image_size(self.dataset_kind)

    @property
    def image_size_reason(self) -> str:
        """Where :attr:`resolved_image_size` comes from (summary, config.json)."""
        if self.image_size is not None:
            return "--image-size"
        if self.dataset_kind != "folder":
            return f"auto: the native size of {self.dataset_kind}"
        if self._folder_side is None:
            return "auto: no image header could be read"
        low, high = FOLDER_IMAGE_SIZES
        return (
            f"auto: the images' median shorter side is {self._folder_side} px, kept within "
            f"{low}-{high} px"
        )

    @derived
    def resolved_stem(self) -> str:
        """CIFAR stem (3x3 conv, no max-pool; paper appendix B.9) for images of 64 px or less."""
        if self.stem != "auto":
            return self.stem
        return auto_stem(self.resolved_image_size)

    @derived
    def resolved_jitter_strength(self) -> float:
        """Paper: 0.5 for CIFAR-size images, 1.0 for ImageNet-size ones."""
        if self.jitter_strength is not None:
            return self.jitter_strength
        return 0.5 if self.resolved_image_size <= 64 else 1.0

    @derived
    def resolved_blur(self) -> bool:
        """Gaussian blur hurts on tiny images (paper appendix B.9), so on only from 96 px."""
        return self.blur if self.blur is not None else self.resolved_image_size >= 96

    @derived
    def resolved_weight_decay(self) -> float:
        if self.weight_decay is not None:
            return self.weight_decay
        return DEFAULT_WEIGHT_DECAY[self.optimizer]

    @derived
    def resolved_lr(self) -> float:
        """``--lr`` when given, otherwise the optimiser's base lr scaled by the GLOBAL batch."""
        if self.lr is not None:
            return self.lr
        base = default_base_lr(self.optimizer, self.lr_scaling)
        return scaled_lr(base, self.batch_size, self.lr_scaling)

    @derived
    def resolved_device(self) -> str:
        return "cuda" if self.gpus else resolve_device(self.device)

    @derived
    def resolved_precision(self) -> str:
        return resolve_precision(self.precision, self.resolved_device)

    @derived
    def resolved_channels_last(self) -> bool:
        return self.channels_last

    @derived
    def resolved_augment_on(self) -> str:
        """``auto``: batched on the device on CUDA (or with ``--data-on device``), else per
        image in DataLoader workers; see :func:`resolve_augment_on`."""
        return resolve_augment_on(self.augment_on, self.resolved_device, self.data_on)[0]

    @property
    def augment_on_reason(self) -> str:
        """Why the views are made where :attr:`resolved_augment_on` says (summary, config.json)."""
        return resolve_augment_on(self.augment_on, self.resolved_device, self.data_on)[1]

    @property
    def procs_per_node(self) -> int:
        return self.gpus or self.processes

    @derived
    def world_size(self) -> int:
        """Processes over all nodes: a torchrun or SLURM launcher's, else spawned ones."""
        launched = self._launched_world_size
        return launched if launched is not None else self.procs_per_node * self.nodes

    @derived
    def per_process_batch_size(self) -> int:
        return self.batch_size // self.world_size

    @derived
    def resolved_sync_bn(self) -> bool:
        """Global batch norm is the default as soon as there is more than one process."""
        return self.sync_bn if self.sync_bn is not None else self.world_size > 1

    @property
    def resolved_out(self) -> Path:
        assert self.out is not None  # filled by _default_out
        return self.out


def resolve_augment_on(requested: str, device: str, data_on: str) -> tuple[str, str]:
    """Where ``--augment-on`` makes the views (``"cpu"`` or ``"device"``), and why.

    ``auto`` makes them on a GPU with the batched pipeline: per-image PIL work in DataLoader
    workers would starve it, and with the views on the device, ``--data-on auto`` can hold the
    decoded set there too. Elsewhere the workers make them in parallel with the CPU step.

    Args:
        requested: ``auto``, ``cpu`` or ``device``.
        device: the resolved device, ``cuda`` or ``cpu``.
        data_on: ``--data-on`` (``device`` needs the views made on the device).
    """
    if requested != "auto":
        return requested, f"--augment-on {requested}"
    if device == "cuda":
        return "device", "auto: batched on the GPU (PIL in DataLoader workers would starve it)"
    if data_on == "device":
        return "device", "auto: --data-on device makes the views on the device"
    return "cpu", "auto: off CUDA, per image in DataLoader workers beside the step"


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
