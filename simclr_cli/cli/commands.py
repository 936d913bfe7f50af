"""The ``simclr`` commands after ``pretrain`` (:mod:`.pretrain`), in the order ``--help`` lists
them: flags declared with Typer.

Each command validates its flags into one frozen config (:mod:`simclr_cli.config`), calls one
library function (imported when the command runs, so ``--help`` stays fast) and prints the
summary it returns. Defaults are the config's: the help texts read them from there.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

# pretrain is registered first, so --help lists it first
from simclr_cli.cli import pretrain  # noqa: F401
from simclr_cli.cli.app import (
    CHECKPOINT_HELP,
    KNN_K_HELP,
    app,
    build,
    examples,
    flag,
    print_registry,
    print_summary,
    shared_option,
)
from simclr_cli.config import (
    DownloadConfig,
    ExportConfig,
    FeaturesConfig,
    InfoConfig,
    LinearEvalConfig,
    ReportConfig,
)

E = LinearEvalConfig


@app.command(
    "linear-eval",
    epilog=examples(
        "simclr linear-eval --checkpoint runs/quickstart --dataset shapes --baseline random",
        "simclr linear-eval --checkpoint resnet50-stl10 --dataset stl10",
        "simclr linear-eval --checkpoint ck.pt --train-dir data/train --test-dir data/test",
        "simclr linear-eval --checkpoint ck.pt --dataset cifar10 --protocol augment --epochs 100",
    ),
)
def linear_eval(
    checkpoint: Annotated[str, typer.Option(help=CHECKPOINT_HELP)],
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
        str | None, flag(E, "protocol", "features (frozen features, fast) or augment (paper's).")
    ] = None,
    solver: Annotated[str | None, flag(E, "solver", "lbfgs (full batch) or adam.")] = None,
    epochs: Annotated[
        int | None, typer.Option(help="Epochs of the augment protocol. \\[default: 100]")
    ] = None,
    batch_size: Annotated[
        int | None, flag(E, "batch_size", "Batch for feature extraction.")
    ] = None,
    image_size: Annotated[int | None, shared_option(E, "image_size")] = None,
    data_dir: Annotated[Path | None, shared_option(E, "data_dir")] = None,
    cache_dir: Annotated[Path | None, shared_option(E, "cache_dir")] = None,
    device: Annotated[str | None, shared_option(E, "device")] = None,
    precision: Annotated[str | None, shared_option(E, "precision")] = None,
    workers: Annotated[int | None, shared_option(E, "workers")] = None,
    seed: Annotated[int | None, flag(E, "seed", "Random seed.")] = None,
    limit: Annotated[
        int | None,
        flag(E, "limit", "Use N images per split: a class-stratified sample (--seed).", "all"),
    ] = None,
    knn_k: Annotated[
        int | None,
        flag(E, "knn_k", KNN_K_HELP),
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
        float | None, flag(E, "knn_temperature", "kNN vote temperature.")
    ] = None,
    out: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Folder for linear_eval.json. \\[default: next to the checkpoint]",
        ),
    ] = None,
    overwrite: Annotated[bool | None, shared_option(E, "overwrite")] = None,
) -> None:
    """Linear evaluation: a classifier on frozen encoder features (top-1/top-5, kNN)."""
    cfg = build(LinearEvalConfig, **locals())
    from simclr_cli.evaluation.linear_eval import run_linear_eval

    result = run_linear_eval(cfg)
    print_summary("Linear evaluation", result)


# finetune and predict are registered here, so --help lists them after linear-eval
from simclr_cli.cli import finetune  # noqa: E402, F401

F = FeaturesConfig


@app.command(
    epilog=examples(
        "simclr features --checkpoint ck.pt --dataset shapes --split test --out feats/",
        "simclr features --checkpoint resnet50-stl10 --dataset stl10 --split train --out stl/",
        "simclr features --checkpoint ck.pt --dataset ./photos --layer projection --out emb/",
    )
)
def features(
    checkpoint: Annotated[str, typer.Option(help=CHECKPOINT_HELP)],
    out: Annotated[
        str, typer.Option(metavar="PATH", help="Output folder for features.npy, labels.npy, ...")
    ],
    dataset: Annotated[
        str | None, flag(F, "dataset", "cifar10, cifar100, stl10, shapes or a folder.")
    ] = None,
    split: Annotated[
        str | None,
        flag(F, "split", "train, test, unlabeled (stl10), all; a folder is exported whole."),
    ] = None,
    layer: Annotated[
        str | None, flag(F, "layer", "encoder (h, representation) or projection (z).")
    ] = None,
    batch_size: Annotated[int | None, flag(F, "batch_size", "Images per forward pass.")] = None,
    image_size: Annotated[int | None, shared_option(F, "image_size")] = None,
    data_dir: Annotated[Path | None, shared_option(F, "data_dir")] = None,
    cache_dir: Annotated[Path | None, shared_option(F, "cache_dir")] = None,
    device: Annotated[str | None, shared_option(F, "device")] = None,
    precision: Annotated[str | None, shared_option(F, "precision")] = None,
    workers: Annotated[int | None, shared_option(F, "workers")] = None,
    limit: Annotated[
        int | None,
        flag(F, "limit", "Export N images: a class-stratified sample (seed 0).", "all"),
    ] = None,
    overwrite: Annotated[bool | None, shared_option(F, "overwrite")] = None,
) -> None:
    """Export embeddings (h or z) of a dataset as .npy files, in dataset order."""
    cfg = build(FeaturesConfig, **locals())
    from simclr_cli.evaluation.features import export_features

    result = export_features(cfg)
    print_summary("Features written", result)


X = ExportConfig


@app.command(
    epilog=examples(
        "simclr export --checkpoint runs/quickstart --format torchvision --out encoder.pt",
        "simclr export --checkpoint runs/quickstart --format onnx --out encoder.onnx",
        "simclr export --checkpoint resnet50-stl10 --format safetensors --out r50.safetensors",
        "simclr export --checkpoint ck.pt --format torchvision --part both --out simclr.pt",
        "simclr export --checkpoint runs/ft/classifier.pt --format onnx --out classifier.onnx",
    )
)
def export(
    checkpoint: Annotated[
        str,
        typer.Option(
            help="Run folder, checkpoint file or release name (simclr download --list), or a "
            "classifier.pt of simclr finetune."
        ),
    ],
    out: Annotated[Path, typer.Option(help="The file to write (a <file>.meta.json goes beside).")],
    format: Annotated[
        str | None,
        flag(X, "format", "torchvision, torchscript, onnx or safetensors.", name="--format"),
    ] = None,
    part: Annotated[
        str | None,
        flag(
            X,
            "part",
            "encoder, projector or both (torchvision/safetensors only); classifier or encoder "
            "of a classifier checkpoint; auto = encoder, or the whole classifier.",
        ),
    ] = None,
    image_size: Annotated[
        int | None, flag(X, "image_size", "Input size of the graph; auto = checkpoint's.")
    ] = None,
    cache_dir: Annotated[Path | None, shared_option(X, "cache_dir")] = None,
    overwrite: Annotated[
        bool | None, flag(X, "overwrite", "Replace an existing --out file.")
    ] = None,
) -> None:
    """Export the encoder (or a fine-tuned classifier) for other code: a torchvision
    state_dict, TorchScript, ONNX or safetensors, verified before it is written."""
    cfg = build(ExportConfig, **locals())
    from simclr_cli.storage.export import run_export

    print_summary("Exported", run_export(cfg))


R = ReportConfig


@app.command(
    epilog=examples(
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
        int | None, flag(R, "max_images", "Training images to encode for neighbours/PCA.")
    ] = None,
    queries: Annotated[int | None, flag(R, "queries", "Test images shown with neighbours.")] = None,
    batch_size: Annotated[int | None, flag(R, "batch_size", "Images per forward pass.")] = None,
    seed: Annotated[int | None, flag(R, "seed", "Seed of the queries.")] = None,
    device: Annotated[str | None, shared_option(R, "device")] = None,
    data_dir: Annotated[Path | None, shared_option(R, "data_dir")] = None,
) -> None:
    """One self-contained report.html of a run: curves, accuracy, neighbours, embedding map."""
    cfg = build(ReportConfig, **locals())
    from simclr_cli.report import run_report

    print_summary("Report written", run_report(cfg))


D = DownloadConfig


@app.command(
    epilog=examples(
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
    cache_dir: Annotated[Path | None, shared_option(D, "cache_dir")] = None,
    force: Annotated[bool | None, flag(D, "force", "Download again even if cached.")] = None,
    from_file: Annotated[
        Path | None, typer.Option(help="Import a file fetched by hand (offline machines) instead.")
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option(help="Expected sha256 of the file (hex); verified, for any name or URL."),
    ] = None,
) -> None:
    """Fetch a release checkpoint (or any checkpoint URL) into the cache, verified."""
    cfg = build(DownloadConfig, **locals())
    from simclr_cli.storage import hub

    if cfg.list_only and cfg.name is None:
        print_registry(cfg.cache_dir)
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
    epilog=examples("simclr info", "simclr info --json", "simclr info runs/x/checkpoint_last.pt")
)
def info(
    target: Annotated[
        str | None, typer.Argument(help="A checkpoint file or release name to describe.")
    ] = None,
    as_json: Annotated[
        bool | None, typer.Option("--json", help="Machine-readable output on stdout.")
    ] = None,
    cache_dir: Annotated[Path | None, shared_option(INFO, "cache_dir")] = None,
    data_dir: Annotated[Path | None, flag(INFO, "data_dir", "Dataset folder.")] = None,
) -> None:
    """What is installed, which devices, what is cached; or what a checkpoint holds."""
    cfg = build(InfoConfig, **locals())
    from simclr_cli.cli import info as facts

    data = facts.checkpoint_info(cfg) if cfg.target else facts.system_info(cfg)
    if cfg.as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        facts.render(data)
