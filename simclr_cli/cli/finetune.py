"""``simclr finetune`` and ``simclr predict``: their flags, declared with Typer (listed after
``linear-eval``).

The flags validate into a :class:`~simclr_cli.config.FinetuneConfig` or
:class:`~simclr_cli.config.PredictConfig`; each command calls one library function (imported
when it runs, so ``--help`` stays fast) and prints the summary it returns.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simclr_cli.cli.app import app, build, examples, flag, print_summary, shared_option
from simclr_cli.config import FINETUNE_MAY_CHANGE, FinetuneConfig, PredictConfig, flag_name

T = FinetuneConfig


@app.command(
    epilog=examples(
        "simclr finetune --checkpoint runs/quickstart --dataset shapes --labels-per-class 10 "
        "--baseline scratch --baseline linear",
        "simclr finetune --checkpoint resnet50-stl10 --dataset stl10 --label-fraction 0.1",
        "simclr finetune --checkpoint ck.pt --train-dir data/train --test-dir data/test "
        "--labels-per-class 20 --val-split 0.2",
        "simclr finetune --resume auto --out runs/shapes-finetune",
    )
)
def finetune(
    checkpoint: Annotated[
        str | None,
        typer.Option(help="Run folder, checkpoint file or release name to fine-tune."),
    ] = None,
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
    test_split: Annotated[
        float | None,
        typer.Option(help="Test share of a single folder (stratified, seed 0). \\[default: 0.2]"),
    ] = None,
    labels_per_class: Annotated[
        int | None, typer.Option(help="Labelled images per class (class-balanced, from --seed).")
    ] = None,
    label_fraction: Annotated[
        float | None,
        typer.Option(help="Share of each class's labels, in (0, 1]. \\[default: all labels]"),
    ] = None,
    subset: Annotated[
        Path | None, typer.Option(help="Use the labels a subset.txt lists (from an earlier run).")
    ] = None,
    val_split: Annotated[
        float | None,
        typer.Option(help="Hold out this share of the labels to pick the epoch. \\[default: none]"),
    ] = None,
    from_head_layer: Annotated[
        int | None,
        flag(T, "from_head_layer", "Projection-head layers to keep (SimCLRv2: 1); 0 = from h."),
    ] = None,
    epochs: Annotated[
        int | None, flag(T, "epochs", "Epochs; auto = 60 up to 5% of the labels, else 30.")
    ] = None,
    batch_size: Annotated[
        int | None,
        flag(T, "batch_size", "Images per step; auto = 256, at most 1/4 of the labelled images."),
    ] = None,
    optimizer: Annotated[
        str | None, flag(T, "optimizer", "sgd (Nesterov momentum) or lars.")
    ] = None,
    lr: Annotated[
        float | None, flag(T, "lr", "Peak lr; auto = 0.05 x B/256 (sgd), 0.005 x sqrt(B) (lars).")
    ] = None,
    momentum: Annotated[float | None, flag(T, "momentum", "Momentum.")] = None,
    weight_decay: Annotated[
        float | None, flag(T, "weight_decay", "Weight decay of the encoder (never the head).")
    ] = None,
    crop_scale: Annotated[
        str | None,
        typer.Option(
            metavar="MIN,MAX",
            help="Area share a random crop covers. \\[default: 0.08,1]",
        ),
    ] = None,
    flip: Annotated[
        bool | None,
        typer.Option("--flip/--no-flip", help="Random horizontal flip. \\[default: flip]"),
    ] = None,
    baseline: Annotated[
        list[str] | None,
        typer.Option(
            metavar="scratch|linear",
            help="Also train a baseline on the same labels and print it beside the classifier: "
            "scratch (the same network from its default init, same recipe) or linear (a "
            "linear probe on the frozen encoder); repeat for both.",
        ),
    ] = None,
    image_size: Annotated[int | None, shared_option(T, "image_size")] = None,
    data_dir: Annotated[Path | None, shared_option(T, "data_dir")] = None,
    cache_dir: Annotated[Path | None, shared_option(T, "cache_dir")] = None,
    seed: Annotated[
        int | None, flag(T, "seed", "Seed of the labels drawn and the training.")
    ] = None,
    device: Annotated[str | None, shared_option(T, "device")] = None,
    precision: Annotated[
        str | None, flag(T, "precision", "auto, fp32, bf16 or fp16 (fp16 with a grad scaler).")
    ] = None,
    workers: Annotated[int | None, shared_option(T, "workers")] = None,
    out: Annotated[
        str | None,
        typer.Option(
            metavar="PATH",
            help="Output folder. \\[default: runs/<dataset>-finetune-<timestamp>]",
        ),
    ] = None,
    checkpoint_every: Annotated[
        int | None, flag(T, "checkpoint_every", "Save the resumable state every N epochs.")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            metavar="auto",
            help="Continue the run in --out (its options come from its config.json; "
            f"{', '.join(map(flag_name, FINETUNE_MAY_CHANGE))} may change).",
        ),
    ] = None,
) -> None:
    """Fine-tune the encoder and a new linear head on a few labels; compare with baselines."""
    cfg = build(FinetuneConfig, **locals())
    from simclr_cli.evaluation.finetune import run_finetune

    print_summary("Fine-tuned", run_finetune(cfg))


R = PredictConfig


@app.command(
    epilog=examples(
        "simclr predict --checkpoint runs/shapes-finetune/classifier.pt photo.jpg",
        "simclr predict --checkpoint classifier.pt images/ --out predictions.csv",
    )
)
def predict(
    images: Annotated[
        list[Path], typer.Argument(help="Image files and folders (searched recursively).")
    ],
    checkpoint: Annotated[
        str, typer.Option(help="A classifier written by simclr finetune (classifier.pt).")
    ],
    out: Annotated[
        Path | None,
        typer.Option(help="CSV file: path, class, probability, top_k, error. \\[default: none]"),
    ] = None,
    top_k: Annotated[int | None, flag(R, "top_k", "Classes listed per image.")] = None,
    batch_size: Annotated[int | None, flag(R, "batch_size", "Images per forward pass.")] = None,
    cache_dir: Annotated[Path | None, shared_option(R, "cache_dir")] = None,
    device: Annotated[str | None, shared_option(R, "device")] = None,
    precision: Annotated[str | None, shared_option(R, "precision")] = None,
    workers: Annotated[int | None, shared_option(R, "workers")] = None,
    overwrite: Annotated[
        bool | None, flag(R, "overwrite", "Replace an existing --out file.")
    ] = None,
) -> None:
    """Classify images with a fine-tuned classifier: a table, and a CSV with --out."""
    cfg = build(PredictConfig, **locals())
    from simclr_cli.evaluation.predict import run_predict

    print_summary("Predicted", run_predict(cfg))
