"""The options of ``simclr finetune`` and ``simclr predict``, and what a resumed fine-tune may
change of them."""

from __future__ import annotations

import re
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal

from pydantic import AfterValidator, Field, field_validator, model_validator

from simclr_cli.config.fields import (
    AbsolutePath,
    CheckpointRef,
    CropScale,
    DatasetName,
    FrozenModel,
    OutFolder,
    check_cuda,
    check_device,
    dataset_kind,
    default_cache_dir,
    default_data_dir,
    default_workers,
    derived,
    resolve_device,
)
from simclr_cli.devices import resolve_precision

# Options of `simclr finetune --resume auto` that a command line may change: where and how it
# runs, none of the data, labels, model or recipe (those come from the run's config.json).
FINETUNE_MAY_CHANGE = (
    "device",
    "precision",
    "workers",
    "data_dir",
    "cache_dir",
    "checkpoint_every",
)


class FinetuneConfig(FrozenModel):
    """Options of ``simclr finetune``: the whole encoder and a new linear head trained on a
    class-balanced subset of the labels, with baselines on the same subset."""

    checkpoint: CheckpointRef | None = None
    # data
    dataset: DatasetName | None = None
    train_dir: Path | None = None
    test_dir: Path | None = None
    test_split: float | None = Field(default=None, gt=0, lt=1)
    data_dir: AbsolutePath = Field(default_factory=default_data_dir)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    image_size: int | None = Field(default=None, ge=8, le=1024)
    # the labels
    labels_per_class: int | None = Field(default=None, ge=1)
    label_fraction: float | None = None
    subset: Path | None = None
    val_split: float | None = Field(default=None, gt=0, lt=1)
    # model and recipe
    from_head_layer: int = Field(default=0, ge=0)
    epochs: int | None = Field(default=None, ge=1)
    batch_size: int | None = Field(default=None, ge=2)  # auto: see finetune_batch_size
    optimizer: Literal["sgd", "lars"] = "sgd"
    lr: float | None = Field(default=None, gt=0)
    momentum: float = Field(default=0.9, ge=0, lt=1)
    weight_decay: float = Field(default=0.0, ge=0)
    crop_scale: CropScale = (0.08, 1.0)
    flip: bool = True
    baseline: tuple[Literal["scratch", "linear"], ...] = ()
    # runtime
    seed: int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    workers: int = Field(default_factory=default_workers, ge=0)
    out: OutFolder | None = None
    checkpoint_every: int = Field(default=10, ge=1)
    resume: Literal["auto"] | None = None

    @field_validator("train_dir", "test_dir")
    @classmethod
    def _dirs(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_dir():
            raise ValueError("folder does not exist")
        return value

    @field_validator("label_fraction")
    @classmethod
    def _fraction(cls, value: float | None) -> float | None:
        if value is not None and not 0.0 < value <= 1.0:
            raise ValueError("give a fraction in (0, 1], e.g. 0.1 for 10% of the labels")
        return value

    @field_validator("subset")
    @classmethod
    def _subset(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_file():
            raise ValueError("no such file; give a subset.txt written by simclr finetune")
        return value

    @field_validator("baseline")
    @classmethod
    def _baselines(cls, value: tuple[str, ...]) -> tuple[str, ...]:
        return tuple(dict.fromkeys(value))  # each once, in the order given

    @model_validator(mode="before")
    @classmethod
    def _default_out(cls, data: Any) -> Any:
        """Pick the output folder once: ``runs/<dataset>-finetune-<timestamp>``."""
        if isinstance(data, dict) and data.get("out") is None and data.get("resume") is None:
            name = Path(str(data.get("dataset") or data.get("train_dir") or "data")).name
            name = re.sub(r"[^A-Za-z0-9_.-]+", "_", name) or "data"
            stamp = datetime.now().strftime("%Y%m%d-%H%M%S")
            data = {**data, "out": Path("runs") / f"{name}-finetune-{stamp}"}
        return data

    @model_validator(mode="after")
    def _cross_field(self) -> FinetuneConfig:
        if self.resume is None and self.checkpoint is None:
            raise ValueError("give --checkpoint (or --resume auto --out DIR to continue a run)")
        if self.resume is not None and self.out is None:
            raise ValueError("--resume auto needs --out: the folder of the run to continue")
        if self.resume is None:
            self._check_data()
        labels = [self.labels_per_class, self.label_fraction, self.subset]
        if sum(value is not None for value in labels) > 1:
            raise ValueError("give one of --labels-per-class, --label-fraction and --subset")
        check_cuda(self.device)  # fp16 trains on the CPU too, with GradScaler("cpu")
        return self

    def _check_data(self) -> None:
        if self.dataset is None and self.train_dir is None:
            raise ValueError("give --dataset, or --train-dir (with --test-dir or --test-split)")
        if self.dataset is not None and self.train_dir is not None:
            raise ValueError("give either --dataset or --train-dir, not both")
        if self.test_dir is not None and self.test_split is not None:
            raise ValueError("give either --test-dir or --test-split, not both")
        if self.dataset_kind != "folder" and (self.test_dir or self.test_split):
            raise ValueError(
                f"--test-dir and --test-split are for image folders; {self.dataset} has its own "
                "test split"
            )

    # -- derived values -------------------------------------------------------------------
    @derived
    def dataset_kind(self) -> str:
        return "folder" if self.dataset is None else dataset_kind(self.dataset)

    @derived
    def resolved_test_split(self) -> float | None:
        """A single folder without ``--test-dir`` is split 80/20 (stratified, seed 0: the test
        images do not change with ``--seed``)."""
        if self.dataset_kind != "folder" or self.test_dir is not None:
            return None
        return self.test_split if self.test_split is not None else 0.2

    @derived
    def resolved_device(self) -> str:
        return resolve_device(self.device)

    @derived
    def resolved_precision(self) -> str:
        return resolve_precision(self.precision, self.resolved_device)

    @property
    def resolved_out(self) -> Path:
        assert self.out is not None  # filled by _default_out, required by --resume
        return self.out


def _exists(value: Path) -> Path:
    if not value.expanduser().exists():
        raise ValueError("no such file or folder")
    return value


ExistingPath = Annotated[Path, AfterValidator(_exists)]


class PredictConfig(FrozenModel):
    """Options of ``simclr predict``: the classes of images from a classifier checkpoint."""

    checkpoint: CheckpointRef
    images: tuple[ExistingPath, ...]
    out: Path | None = None
    top_k: int = Field(default=5, ge=1)
    batch_size: int = Field(default=256, ge=1)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    workers: int = Field(default_factory=default_workers, ge=0)
    overwrite: bool = False

    @field_validator("images")
    @classmethod
    def _images(cls, value: tuple[Path, ...]) -> tuple[Path, ...]:
        if not value:
            raise ValueError("give image files or a folder of images")
        return value

    @field_validator("out")
    @classmethod
    def _out(cls, value: Path | None) -> Path | None:
        if value is not None and value.expanduser().is_dir():
            raise ValueError("that is a folder; give a file name such as predictions.csv")
        return value

    @model_validator(mode="after")
    def _device(self) -> PredictConfig:
        check_device(self.device, self.precision)
        return self

    @property
    def resolved_device(self) -> str:
        return resolve_device(self.device)
