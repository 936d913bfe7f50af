"""The options of every command but ``pretrain``: evaluation, features, export, report,
download and info."""

from __future__ import annotations

import re
from pathlib import Path
from typing import Literal

from pydantic import Field, field_validator, model_validator

from simclr_cli.config.fields import (
    AbsolutePath,
    CheckpointRef,
    DatasetName,
    FrozenModel,
    OutFolder,
    absolute_path,
    check_device,
    dataset_kind,
    default_cache_dir,
    default_data_dir,
    default_workers,
    resolve_device,
)
from simclr_cli.devices import resolve_precision
from simclr_cli.evaluation.metrics import KNN_TEMPERATURE
from simclr_cli.storage.registry import REGISTRY


class _EvalCommon(FrozenModel):
    checkpoint: CheckpointRef
    data_dir: AbsolutePath = Field(default_factory=default_data_dir)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    image_size: int | None = Field(default=None, ge=8, le=1024)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    precision: Literal["auto", "fp32", "bf16", "fp16"] = "auto"
    workers: int = Field(default_factory=default_workers, ge=0)
    limit: int | None = Field(default=None, ge=1)

    @model_validator(mode="after")
    def _device(self) -> _EvalCommon:
        check_device(self.device, self.precision)
        return self

    @property
    def resolved_device(self) -> str:
        return resolve_device(self.device)

    @property
    def resolved_precision(self) -> str:
        return resolve_precision(self.precision, self.resolved_device)


class LinearEvalConfig(_EvalCommon):
    """Options of ``simclr linear-eval``: a linear classifier on frozen features."""

    dataset: DatasetName | None = None
    train_dir: Path | None = None
    test_dir: Path | None = None
    val_split: float | None = Field(default=None, gt=0, lt=1)
    protocol: Literal["features", "augment"] = "features"
    solver: Literal["lbfgs", "adam"] = "lbfgs"
    epochs: int | None = Field(default=None, ge=1)
    batch_size: int = Field(default=512, ge=1)
    seed: int = Field(default=0, ge=0)
    out: OutFolder | None = None
    overwrite: bool = False
    knn_k: int | None = Field(default=None, ge=1)
    knn_temperature: float = Field(default=KNN_TEMPERATURE, gt=0)
    baseline: tuple[Literal["random", "pixels"], ...] = ()

    @field_validator("train_dir", "test_dir")
    @classmethod
    def _dirs(cls, value: Path | None) -> Path | None:
        if value is not None and not value.expanduser().is_dir():
            raise ValueError("folder does not exist")
        return None if value is None else absolute_path(value)  # linear_eval.json records it

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

    dataset: DatasetName = "shapes"
    split: Literal["train", "test", "unlabeled", "all"] = "test"
    layer: Literal["encoder", "projection"] = "encoder"
    batch_size: int = Field(default=256, ge=1)
    out: OutFolder
    overwrite: bool = False

    @model_validator(mode="after")
    def _split(self) -> FeaturesConfig:
        if self.dataset_kind == "folder" and "split" in self.model_fields_set:
            if self.split != "all":
                raise ValueError(
                    f"--split {self.split}: a folder has no splits and is exported whole (every "
                    "image, paths.txt names each row's file); leave out --split"
                )
        if self.split == "unlabeled" and self.dataset != "stl10":
            raise ValueError("--split unlabeled exists only for stl10")
        return self

    @property
    def dataset_kind(self) -> str:
        return dataset_kind(self.dataset)


class DownloadConfig(FrozenModel):
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


class InfoConfig(FrozenModel):
    """Options of ``simclr info``; ``target`` is a checkpoint path or release name."""

    target: CheckpointRef | None = None
    as_json: bool = False
    cache_dir: Path = Field(default_factory=default_cache_dir)
    data_dir: AbsolutePath = Field(default_factory=default_data_dir)


EXPORT_FORMATS = ("torchvision", "torchscript", "onnx", "safetensors")
# Formats that hold a graph (code) rather than tensors: the encoder only, input -> h.
GRAPH_FORMATS = ("torchscript", "onnx")


class ExportConfig(FrozenModel):
    """Options of ``simclr export``: the encoder (or head), or a fine-tuned classifier, as a file
    other code can load."""

    checkpoint: CheckpointRef
    format: Literal[EXPORT_FORMATS] = "torchvision"  # type: ignore[valid-type]
    out: Path
    # None: the encoder, or a classifier checkpoint's whole classifier (resolved when loaded)
    part: Literal["encoder", "projector", "both", "classifier"] | None = None
    image_size: int | None = Field(default=None, ge=8, le=1024)
    cache_dir: Path = Field(default_factory=default_cache_dir)
    overwrite: bool = False

    @field_validator("out")
    @classmethod
    def _out(cls, value: Path) -> Path:
        if value.expanduser().is_dir():
            raise ValueError("that is a folder; give a file name such as encoder.pt")
        return value

    @model_validator(mode="after")
    def _graph_part(self) -> ExportConfig:
        if self.format in GRAPH_FORMATS and self.part in ("projector", "both"):
            raise ValueError(
                f"--part {self.part}: --format {self.format} exports the encoder (images -> h) or "
                "a classifier; use --format torchvision or safetensors for the projection head"
            )
        return self


class ReportConfig(FrozenModel):
    """Options of ``simclr report``: one HTML page (and its PNGs) about a run folder."""

    run_dir: Path
    out: Path | None = None
    features: Path | None = None
    max_images: int = Field(default=2000, ge=1)
    queries: int = Field(default=8, ge=1, le=64)
    batch_size: int = Field(default=256, ge=1)
    seed: int = Field(default=0, ge=0)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    data_dir: AbsolutePath = Field(default_factory=default_data_dir)

    @field_validator("run_dir")
    @classmethod
    def _run_dir(cls, value: Path) -> Path:
        if value.expanduser().is_file():
            raise ValueError(
                f"that is a file; give the run folder that holds it: simclr report {value.parent}"
            )
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
        check_device(self.device, "auto")
        return self

    @property
    def resolved_device(self) -> str:
        return resolve_device(self.device)

    @property
    def resolved_out(self) -> Path:
        """``--out``, else the run folder itself."""
        return self.out if self.out is not None else self.run_dir
