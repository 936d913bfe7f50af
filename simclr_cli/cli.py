"""The ``simclr`` command line: Typer declares flags, a config model validates them.

Each command builds one frozen config from its flags, calls one library function and prints
a summary. Errors a user can fix become one line on stderr (exit 2 for a bad option value, 1
for a runtime failure, 130 for Ctrl-C); ``SIMCLR_DEBUG=1`` shows the traceback instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import signal
import sys
import traceback
from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel, ValidationError

from simclr_cli import __version__, signals
from simclr_cli.config import (
    DEFAULT_WEIGHT_DECAY,
    RESUME_MAY_CHANGE,
    DownloadConfig,
    ExportConfig,
    FeaturesConfig,
    InfoConfig,
    LinearEvalConfig,
    PretrainConfig,
    ReportConfig,
    flag_name,
)
from simclr_cli.errors import SimCLRError, invalid_value, os_error_line

try:  # typer >= 0.29 ships its own copy of click
    from typer._click import exceptions as click_exceptions
except ImportError:  # pragma: no cover - older typer depends on click
    from click import exceptions as click_exceptions


def _no_flag_type(show_type: Any) -> Any:
    """Typer 0.29 prints ``<bool>`` in the type column of every on/off flag (``--help``
    included); a flag takes no value, so its type column stays empty."""

    def display_type_rich(self: Any, ctx: Any) -> Any:
        return None if getattr(self, "is_flag", False) else show_type(self, ctx)

    return display_type_rich


if hasattr(typer.core, "TyperOption") and hasattr(typer.core.TyperOption, "display_type_rich"):
    typer.core.TyperOption.display_type_rich = _no_flag_type(  # type: ignore[method-assign]
        typer.core.TyperOption.display_type_rich
    )

_EXITS = tuple({typer.Exit, getattr(click_exceptions, "Exit", typer.Exit)})
_ABORTS = tuple({typer.Abort, getattr(click_exceptions, "Abort", typer.Abort), KeyboardInterrupt})

app = typer.Typer(
    name="simclr",
    help="SimCLR from the command line: pretrain, evaluate, export features, fetch checkpoints.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _default(model: type[BaseModel], field: str, none: str = "auto") -> str:
    info = model.model_fields[field]
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    return none if value is None else str(value)


def _help(model: type[BaseModel], field: str, text: str, none: str = "auto") -> str:
    """Help text with the model's default, so defaults are declared in one place."""
    return f"{text} \\[default: {_default(model, field, none)}]"


def _build(model: type[BaseModel], **flags: Any) -> Any:
    """Validate flags into a config; ``None`` means "use the model's default"."""
    return model(**{k: v for k, v in flags.items() if v is not None})


def _decay_defaults() -> str:
    """``1e-06 for LARS, Adam; 0.0001 for AdamW, SGD``: the defaults of the config, grouped."""
    names = {"lars": "LARS", "adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
    groups: dict[float, list[str]] = {}
    for optimizer, decay in DEFAULT_WEIGHT_DECAY.items():
        groups.setdefault(decay, []).append(names[optimizer])
    return "; ".join(f"{decay:g} for {', '.join(opts)}" for decay, opts in groups.items())


def _resume_flags() -> str:
    """The flags a resume may change, for ``--help`` (from the one list in the config)."""
    return ", ".join(flag_name(name) for name in RESUME_MAY_CHANGE)


def _examples(*lines: str) -> str:
    return "Examples:\n\n" + "\n\n".join(f"  $ {line}" for line in lines)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"simclr-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """SimCLR (Chen et al. 2020) from the command line."""


P = PretrainConfig


@app.command(
    epilog=_examples(
        "simclr pretrain --dataset shapes --epochs 20 --batch-size 256",
        "simclr pretrain --dataset cifar10 --epochs 500 --batch-size 1024 --gpus 4",
        "simclr pretrain --dataset ./my_images --image-size 224 --arch resnet50 --optimizer adam",
        "simclr pretrain --resume auto --out runs/quickstart --epochs 16",
    )
)
def pretrain(
    dataset: Annotated[
        str | None,
        typer.Option(
            help=_help(P, "dataset", "cifar10, cifar100, stl10, shapes (built in) or a folder.")
        ),
    ] = None,
    data_dir: Annotated[
        Path | None,
        typer.Option(help=_help(P, "data_dir", "Where datasets are downloaded/read.")),
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help=_help(P, "limit", "Use only the first N images.", "all"))
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(help=_help(P, "image_size", "Crop size; auto = dataset's native size.")),
    ] = None,
    arch: Annotated[
        str | None,
        typer.Option(help=_help(P, "arch", "Encoder: resnet18/34/50/101/152, wide_resnet50_2.")),
    ] = None,
    stem: Annotated[
        str | None,
        typer.Option(help=_help(P, "stem", "auto (cifar for <= 64 px), cifar or imagenet.")),
    ] = None,
    head: Annotated[
        str | None,
        typer.Option(help=_help(P, "head", "Projection head: v1 (2 layers) or v2 (3, with BN).")),
    ] = None,
    projection_dim: Annotated[
        int | None, typer.Option(help=_help(P, "projection_dim", "Output dim of the head z."))
    ] = None,
    hidden_dim: Annotated[
        int | None,
        typer.Option(help=_help(P, "hidden_dim", "Hidden dim of the head; auto = feature dim.")),
    ] = None,
    zero_init_residual: Annotated[
        bool | None,
        typer.Option(
            "--zero-init-residual",
            help="Start each residual block as the identity (its last batch norm at zero, as "
            "the paper's TF code) instead of torchvision's initialisation. \\[default: off]",
        ),
    ] = None,
    batch_size: Annotated[
        int | None,
        typer.Option(help=_help(P, "batch_size", "GLOBAL batch (images per step, all processes).")),
    ] = None,
    epochs: Annotated[int | None, typer.Option(help=_help(P, "epochs", "Epochs."))] = None,
    max_steps: Annotated[
        int | None,
        typer.Option(help=_help(P, "max_steps", "Stop after N steps (smoke runs).", "none")),
    ] = None,
    optimizer: Annotated[
        str | None, typer.Option(help=_help(P, "optimizer", "lars, adam, adamw or sgd."))
    ] = None,
    lr: Annotated[
        float | None,
        typer.Option(help=_help(P, "lr", "Peak learning rate; auto = scaled by --lr-scaling.")),
    ] = None,
    lr_scaling: Annotated[
        str | None,
        typer.Option(
            help=_help(
                P,
                "lr_scaling",
                "linear (base x B/256) or sqrt (base x sqrt(B)). Bases: LARS 0.3 / 0.075, "
                "SGD 0.06, Adam/AdamW 3e-4 (the sqrt bases equal the linear rule at B = 256).",
            )
        ),
    ] = None,
    weight_decay: Annotated[
        float | None,
        typer.Option(help=_help(P, "weight_decay", f"Weight decay; auto = {_decay_defaults()}.")),
    ] = None,
    momentum: Annotated[
        float | None, typer.Option(help=_help(P, "momentum", "Momentum (LARS, SGD)."))
    ] = None,
    warmup_epochs: Annotated[
        float | None,
        typer.Option(
            help=_help(
                P,
                "warmup_epochs",
                "Linear warmup epochs, then cosine decay; auto = 10, at most 10% of the run.",
            )
        ),
    ] = None,
    temperature: Annotated[
        float | None, typer.Option(help=_help(P, "temperature", "NT-Xent temperature (> 0)."))
    ] = None,
    jitter_strength: Annotated[
        float | None,
        typer.Option(help=_help(P, "jitter_strength", "Colour jitter s; auto = 0.5 small/1.0.")),
    ] = None,
    blur: Annotated[
        bool | None,
        typer.Option("--blur/--no-blur", help=_help(P, "blur", "Gaussian blur; auto: >= 96 px.")),
    ] = None,
    crop_scale: Annotated[
        str | None,
        typer.Option(
            metavar="MIN,MAX",
            help="Area fraction a random crop covers; raise MIN (0.2-0.5) for small or "
            "simple images. \\[default: 0.08,1]",
        ),
    ] = None,
    flip: Annotated[
        bool | None,
        typer.Option(
            "--flip/--no-flip",
            help="Random horizontal flip; off for digits, text or images with a handedness. "
            "\\[default: flip]",
        ),
    ] = None,
    augment_on: Annotated[
        str | None,
        typer.Option(help=_help(P, "augment_on", "cpu (DataLoader workers) or device (batched).")),
    ] = None,
    data_on: Annotated[
        str | None,
        typer.Option(
            help=_help(
                P,
                "data_on",
                "device: hold the decoded set as one uint8 tensor on the training device (no "
                "DataLoader; needs --augment-on device); host: a DataLoader; auto: device on a "
                "GPU when the set takes <= 25% of its free memory.",
            )
        ),
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help=_help(P, "workers", "DataLoader worker processes."))
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_help(P, "seed", "Random seed."))] = None,
    device: Annotated[
        str | None, typer.Option(help=_help(P, "device", "auto, cpu or cuda."))
    ] = None,
    precision: Annotated[
        str | None,
        typer.Option(help=_help(P, "precision", "auto (bf16/fp16 on GPU), fp32, bf16, fp16.")),
    ] = None,
    channels_last: Annotated[
        bool | None,
        typer.Option(
            "--channels-last/--no-channels-last",
            help=_help(
                P, "channels_last", "NHWC memory format (faster convolutions on GPUs and CPUs)."
            ),
        ),
    ] = None,
    compile: Annotated[
        bool | None, typer.Option(help=_help(P, "compile", "torch.compile the model."))
    ] = None,
    deterministic: Annotated[
        bool | None,
        typer.Option(help=_help(P, "deterministic", "Deterministic kernels (slower).")),
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Run folder (with --resume auto: the run to continue). "
            "\\[default: runs/<dataset>-<arch>-<timestamp>]",
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None,
        typer.Option(help=_help(P, "checkpoint_every", "Keep checkpoint_epoch_N every N epochs.")),
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Resume from a checkpoint path, or 'auto' (the last one of the run in --out). "
            "The run's own options are used; flags may change only "
            f"{_resume_flags()}; any other flag must agree with the run."
        ),
    ] = None,
    knn_every: Annotated[
        int | None,
        typer.Option(help=_help(P, "knn_every", "kNN accuracy every N epochs (0 = off).")),
    ] = None,
    knn_k: Annotated[
        int | None,
        typer.Option(
            help=_help(P, "knn_k", "kNN neighbours; auto: 200, at most 1/10 of the smallest class.")
        ),
    ] = None,
    log_every: Annotated[
        int | None, typer.Option(help=_help(P, "log_every", "Log metrics every N steps."))
    ] = None,
    gpus: Annotated[
        int | None,
        typer.Option(help=_help(P, "gpus", "Spawn one process per GPU on this node (NCCL).")),
    ] = None,
    processes: Annotated[
        int | None,
        typer.Option(help=_help(P, "processes", "CPU processes on this node (gloo).")),
    ] = None,
    nodes: Annotated[int | None, typer.Option(help=_help(P, "nodes", "Number of nodes."))] = None,
    node_rank: Annotated[
        int | None, typer.Option(help=_help(P, "node_rank", "This node's rank (0 = master)."))
    ] = None,
    master_addr: Annotated[
        str | None, typer.Option(help=_help(P, "master_addr", "Address of node 0."))
    ] = None,
    master_port: Annotated[
        int | None,
        typer.Option(help=_help(P, "master_port", "Port on node 0; auto = a free port.")),
    ] = None,
    sync_bn: Annotated[
        bool | None,
        typer.Option(
            "--sync-bn/--no-sync-bn",
            help=_help(P, "sync_bn", "Global batch norm; auto = on with > 1 process."),
        ),
    ] = None,
) -> None:
    """Pretrain a ResNet encoder with SimCLR (NT-Xent on two augmented views)."""
    cfg = _build(PretrainConfig, **locals())
    from simclr_cli.train import run_pretrain

    summary = run_pretrain(cfg)
    _print_summary("Pretraining finished", summary)


E = LinearEvalConfig


@app.command(
    "linear-eval",
    epilog=_examples(
        "simclr linear-eval --checkpoint runs/quickstart --dataset shapes --baseline random",
        "simclr linear-eval --checkpoint resnet50-stl10 --dataset stl10",
        "simclr linear-eval --checkpoint ck.pt --train-dir data/train --test-dir data/test",
        "simclr linear-eval --checkpoint ck.pt --dataset cifar10 --protocol augment --epochs 100",
    ),
)
def linear_eval(
    checkpoint: Annotated[
        str, typer.Option(help="Checkpoint file, or a release name (see simclr download --list).")
    ],
    dataset: Annotated[
        str | None,
        typer.Option(help="cifar10, cifar100, stl10, shapes, or a folder with class subfolders."),
    ] = None,
    train_dir: Annotated[
        Path | None, typer.Option(help="Folder of training images, one subfolder per class.")
    ] = None,
    test_dir: Annotated[
        Path | None, typer.Option(help="Folder of test images, one subfolder per class.")
    ] = None,
    val_split: Annotated[
        float | None,
        typer.Option(help="Test fraction of a single folder (fixed seed). \\[default: 0.2]"),
    ] = None,
    protocol: Annotated[
        str | None,
        typer.Option(
            help=_help(E, "protocol", "features (frozen features, fast) or augment (paper's).")
        ),
    ] = None,
    solver: Annotated[
        str | None, typer.Option(help=_help(E, "solver", "lbfgs (full batch) or adam."))
    ] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs of the augment protocol. \\[default: 100]")
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=_help(E, "batch_size", "Batch for feature extraction."))
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(help=_help(E, "image_size", "Input size; auto = the checkpoint's.")),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help=_help(E, "data_dir", "Where datasets live."))
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help=_help(E, "cache_dir", "Checkpoint cache."))
    ] = None,
    device: Annotated[
        str | None, typer.Option(help=_help(E, "device", "auto, cpu or cuda."))
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help=_help(E, "precision", "auto, fp32, bf16 or fp16."))
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help=_help(E, "workers", "DataLoader worker processes."))
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_help(E, "seed", "Random seed."))] = None,
    limit: Annotated[
        int | None,
        typer.Option(help=_help(E, "limit", "Use only the first N images per split.", "all")),
    ] = None,
    knn_k: Annotated[
        int | None,
        typer.Option(
            help=_help(E, "knn_k", "kNN neighbours; auto: 200, at most 1/10 of the smallest class.")
        ),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            metavar="random|pixels",
            help="Also evaluate a baseline on the same splits and print it beside the "
            "checkpoint: random (the same architecture, default init) or pixels (raw pixels); "
            "repeat for both.",
        ),
    ] = None,
    knn_temperature: Annotated[
        float | None, typer.Option(help=_help(E, "knn_temperature", "kNN vote temperature."))
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Folder for linear_eval.json. \\[default: next to the checkpoint]",
        ),
    ] = None,
    overwrite: Annotated[
        bool | None, typer.Option(help=_help(E, "overwrite", "Replace existing output files."))
    ] = None,
) -> None:
    """Linear evaluation: a classifier on frozen encoder features (top-1/top-5, kNN)."""
    cfg = _build(LinearEvalConfig, **locals())
    from simclr_cli.linear_eval import run_linear_eval

    result = run_linear_eval(cfg)
    _print_summary("Linear evaluation", result)


F = FeaturesConfig


@app.command(
    epilog=_examples(
        "simclr features --checkpoint ck.pt --dataset shapes --split test --out feats/",
        "simclr features --checkpoint resnet50-stl10 --dataset stl10 --split train --out stl/",
        "simclr features --checkpoint ck.pt --dataset ./photos --layer projection --out emb/",
    )
)
def features(
    checkpoint: Annotated[
        str, typer.Option(help="Checkpoint file, or a release name (see simclr download --list).")
    ],
    out: Annotated[
        str, typer.Option(metavar="PATH", help="Output folder for features.npy, labels.npy, ...")
    ],
    dataset: Annotated[
        str | None,
        typer.Option(help=_help(F, "dataset", "cifar10, cifar100, stl10, shapes or a folder.")),
    ] = None,
    split: Annotated[
        str | None, typer.Option(help=_help(F, "split", "train, test, unlabeled (stl10), all."))
    ] = None,
    layer: Annotated[
        str | None,
        typer.Option(help=_help(F, "layer", "encoder (h, representation) or projection (z).")),
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=_help(F, "batch_size", "Images per forward pass."))
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(help=_help(F, "image_size", "Input size; auto = the checkpoint's.")),
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help=_help(F, "data_dir", "Where datasets live."))
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help=_help(F, "cache_dir", "Checkpoint cache."))
    ] = None,
    device: Annotated[
        str | None, typer.Option(help=_help(F, "device", "auto, cpu or cuda."))
    ] = None,
    precision: Annotated[
        str | None, typer.Option(help=_help(F, "precision", "auto, fp32, bf16 or fp16."))
    ] = None,
    workers: Annotated[
        int | None, typer.Option(help=_help(F, "workers", "DataLoader worker processes."))
    ] = None,
    limit: Annotated[
        int | None, typer.Option(help=_help(F, "limit", "Export only the first N images.", "all"))
    ] = None,
    overwrite: Annotated[
        bool | None, typer.Option(help=_help(F, "overwrite", "Replace existing output files."))
    ] = None,
) -> None:
    """Export embeddings (h or z) of a dataset as .npy files, in dataset order."""
    cfg = _build(FeaturesConfig, **locals())
    from simclr_cli.features import export_features

    result = export_features(cfg)
    _print_summary("Features written", result)


X = ExportConfig


@app.command(
    epilog=_examples(
        "simclr export --checkpoint runs/quickstart --format torchvision --out encoder.pt",
        "simclr export --checkpoint runs/quickstart --format onnx --out encoder.onnx",
        "simclr export --checkpoint resnet50-stl10 --format safetensors --out r50.safetensors",
        "simclr export --checkpoint ck.pt --format torchvision --part both --out simclr.pt",
    )
)
def export(
    checkpoint: Annotated[
        str,
        typer.Option(help="Run folder, checkpoint file or release name (simclr download --list)."),
    ],
    out: Annotated[Path, typer.Option(help="The file to write (a <file>.meta.json goes beside).")],
    format: Annotated[
        str | None,
        typer.Option(
            "--format", help=_help(X, "format", "torchvision, torchscript, onnx or safetensors.")
        ),
    ] = None,
    part: Annotated[
        str | None,
        typer.Option(
            help=_help(X, "part", "encoder, projector or both (torchvision/safetensors only).")
        ),
    ] = None,
    image_size: Annotated[
        int | None,
        typer.Option(help=_help(X, "image_size", "Input size of the graph; auto = checkpoint's.")),
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help=_help(X, "cache_dir", "Checkpoint cache."))
    ] = None,
    overwrite: Annotated[
        bool | None, typer.Option(help=_help(X, "overwrite", "Replace an existing --out file."))
    ] = None,
) -> None:
    """Export the encoder for other code: a torchvision state_dict, TorchScript, ONNX or
    safetensors, verified against the checkpoint before it is written."""
    cfg = _build(ExportConfig, **locals())
    from simclr_cli.export import run_export

    _print_summary("Exported", run_export(cfg))


R = ReportConfig


@app.command(
    epilog=_examples(
        "simclr report runs/quickstart",
        "simclr report runs/quickstart --out report/ --max-images 5000",
        "simclr report runs/c10 --features feats/   # feats/train, feats/test: simclr features",
    )
)
def report(
    run_dir: Annotated[
        Path, typer.Argument(metavar="RUN_DIR", help="The run folder (from simclr pretrain).")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="Folder for report.html and its PNGs. \\[default: the run folder]"),
    ] = None,
    features: Annotated[
        Path | None,
        typer.Option(
            help="Features from simclr features: DIR (one set) or DIR/train + DIR/test. "
            "\\[default: computed]"
        ),
    ] = None,
    max_images: Annotated[
        int | None,
        typer.Option(help=_help(R, "max_images", "Training images to encode for neighbours/PCA.")),
    ] = None,
    queries: Annotated[
        int | None, typer.Option(help=_help(R, "queries", "Test images shown with neighbours."))
    ] = None,
    batch_size: Annotated[
        int | None, typer.Option(help=_help(R, "batch_size", "Images per forward pass."))
    ] = None,
    seed: Annotated[int | None, typer.Option(help=_help(R, "seed", "Seed of the queries."))] = None,
    device: Annotated[
        str | None, typer.Option(help=_help(R, "device", "auto, cpu or cuda."))
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help=_help(R, "data_dir", "Where datasets live."))
    ] = None,
) -> None:
    """One self-contained report.html of a run: curves, accuracy, neighbours, embedding map."""
    cfg = _build(ReportConfig, **locals())
    from simclr_cli.run_report import run_report

    _print_summary("Report written", run_report(cfg))


D = DownloadConfig


@app.command(
    epilog=_examples(
        "simclr download resnet50-stl10",
        "simclr download --list",
        "simclr download resnet18-stl10 --from-file ~/Downloads/checkpoint_100.tar",
    )
)
def download(
    name: Annotated[
        str | None, typer.Argument(help="Release checkpoint name (see --list) or an http(s) URL.")
    ] = None,
    list_only: Annotated[
        bool | None, typer.Option("--list", help="List release checkpoints and the cache.")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help=_help(D, "cache_dir", "Checkpoint cache."))
    ] = None,
    force: Annotated[
        bool | None, typer.Option(help=_help(D, "force", "Download again even if cached."))
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(help="Import a file fetched by hand (offline machines) instead."),
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option(help="Expected sha256 of the file (hex); verified, for any name or URL."),
    ] = None,
) -> None:
    """Fetch a release checkpoint (or any checkpoint URL) into the cache, verified."""
    cfg = _build(DownloadConfig, **locals())
    from simclr_cli import hub

    if cfg.list_only and cfg.name is None:
        _print_registry(cfg.cache_dir)
        return
    path = hub.download(
        cfg.name,
        cache_dir=cfg.cache_dir,
        force=cfg.force,
        from_file=cfg.from_file,
        sha256=cfg.sha256,
    )
    typer.echo(str(path))


INFO = InfoConfig


@app.command(
    epilog=_examples("simclr info", "simclr info --json", "simclr info runs/x/checkpoint_last.pt")
)
def info(
    target: Annotated[
        str | None, typer.Argument(help="A checkpoint file or release name to describe.")
    ] = None,
    as_json: Annotated[
        bool | None, typer.Option("--json", help="Machine-readable output on stdout.")
    ] = None,
    cache_dir: Annotated[
        Path | None, typer.Option(help=_help(INFO, "cache_dir", "Checkpoint cache."))
    ] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help=_help(INFO, "data_dir", "Dataset folder."))
    ] = None,
) -> None:
    """What is installed, which devices, what is cached; or what a checkpoint holds."""
    cfg = _build(InfoConfig, **locals())
    from simclr_cli import report

    data = report.checkpoint_info(cfg) if cfg.target else report.system_info(cfg)
    if cfg.as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        report.render(data)


# -- output helpers --------------------------------------------------------------------------


def _print_summary(title: str, summary: Any) -> None:
    from simclr_cli import report

    report.render_summary(title, summary)


def _print_registry(cache_dir: Path) -> None:
    from simclr_cli import report

    report.render_registry(cache_dir)


# -- error boundary --------------------------------------------------------------------------


def _validation_line(error: ValidationError) -> str:
    """The first problem of a config validation, as ``--flag: ...``."""
    first = error.errors()[0]
    msg = first["msg"].removeprefix("Value error, ")
    if not first["loc"]:
        return msg
    flag = flag_name(str(first["loc"][0]))
    value = first.get("input")
    allowed = msg[0].lower() + msg[1:] if msg else msg
    return invalid_value(flag, value, allowed)


def _usage_line(error: Exception, argv: list[str]) -> str:
    """Click's message, plus the offending value when a flag could not be parsed."""
    message = error.format_message().replace("\n", " ")  # type: ignore[attr-defined]
    param = getattr(error, "param", None)
    opts = getattr(param, "opts", None) or []
    for i, token in enumerate(argv):
        name, _, inline = token.partition("=")
        if name in opts:
            value = inline if inline else (argv[i + 1] if i + 1 < len(argv) else "")
            return invalid_value(opts[0], value, _without_flag_and_value(message, value))
    return message


def _without_flag_and_value(message: str, value: str) -> str:
    """Click's ``Invalid value for '--epochs': 'two' is not a valid integer.`` without the parts
    :func:`invalid_value` already says: ``not a valid integer``."""
    message = re.sub(r"^Invalid value for '[^']*':\s*", "", message).rstrip(".")
    message = message.removeprefix(f"{value!r} is ").removeprefix(f"{value} is ")
    return message[:1].lower() + message[1:]


def _error_line(error: BaseException) -> str:
    """One line for an error, also when a DataLoader worker re-raised it with its traceback."""
    text = str(error)
    if "Original Traceback" in text:  # torch's worker re-raise: "Caught X in DataLoader worker"
        last = [line for line in text.splitlines() if line.strip()][-1]
        text = last.split(": ", 1)[1] if last.startswith(type(error).__module__) else last
    return " ".join(text.split())


def _fail(message: str, code: int) -> int:
    sys.stderr.write(f"error: {message}\n")
    return code


def _fail_handled(debug: bool, message: str, code: int) -> int:
    """:func:`_fail` inside an ``except`` block: with ``SIMCLR_DEBUG`` set, the traceback first."""
    if debug:
        traceback.print_exc()
    return _fail(message, code)


def run(argv: list[str] | None = None) -> int:
    """Run the CLI and return its exit code (``main`` exits with it)."""
    debug = os.environ.get("SIMCLR_DEBUG", "") not in ("", "0")
    argv = list(sys.argv[1:] if argv is None else argv)
    previous = signal.getsignal(signal.SIGTERM)
    signals.terminated.clear()
    signals.terminate_as_interrupt()  # SIGTERM while starting up: exit 130 with a line
    try:
        return _run(argv, debug)
    finally:
        with contextlib.suppress(ValueError, TypeError):  # not the main thread, or not ours
            signal.signal(signal.SIGTERM, previous)


def _run(argv: list[str], debug: bool) -> int:
    """The error boundary of :func:`run`."""
    try:
        command = typer.main.get_command(app)
        result = command.main(args=argv, prog_name="simclr", standalone_mode=False)
        if result == 130:  # typer turns Ctrl-C into an exit code of 130
            return _fail(signals.interrupt_line(), 130)
        return result if isinstance(result, int) else 0
    except _EXITS as exit_:
        if exit_.exit_code == 130:  # typer turns Ctrl-C into Exit(130)
            return _fail(signals.interrupt_line(), 130)
        return exit_.exit_code
    except click_exceptions.UsageError as error:
        if type(error).__name__ == "NoArgsIsHelpError":
            sys.stdout.write(error.format_message() + "\n")
            return 0
        return _fail_handled(debug, _usage_line(error, argv), 2)
    except ValidationError as error:
        return _fail_handled(debug, _validation_line(error), 2)
    except SimCLRError as error:
        return _fail_handled(debug, _error_line(error), error.exit_code)
    except signals.Terminated:
        return _fail_handled(debug, "interrupted (SIGTERM)", 130)
    except _ABORTS:
        return _fail_handled(debug, "interrupted", 130)
    except OSError as error:
        line = os_error_line(error)
        if line is None:
            raise  # not a file-system problem the user can fix: keep the traceback
        return _fail_handled(debug, line, 1)
    except RuntimeError as error:
        if not _worker_died(error):
            raise  # a bug: the traceback is what a report needs
        return _fail_handled(
            debug,
            f"{' '.join(str(error).split())} (often the out-of-memory killer); "
            "lower --workers or --batch-size",
            1,
        )


def _worker_died(error: RuntimeError) -> bool:
    """Whether ``error`` is torch's report of a DataLoader worker that was killed or vanished."""
    text = str(error)
    return "DataLoader worker" in text and (
        "killed by signal" in text or "exited unexpectedly" in text
    )


def main() -> None:
    sys.exit(run())
