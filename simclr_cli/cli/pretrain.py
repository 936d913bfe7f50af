"""``simclr pretrain``: its flags, declared with Typer (the first command ``--help`` lists).

The flags validate into one :class:`~simclr_cli.config.PretrainConfig`; the command calls
:func:`simclr_cli.training.pretrain.run_pretrain` (imported when it runs, so ``--help`` stays
fast) and prints the summary it returns. Defaults are the config's: the help texts read them
from there.
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer

from simclr_cli.cli.app import (
    KNN_K_HELP,
    app,
    build,
    decay_defaults,
    examples,
    flag,
    print_summary,
    resume_flags,
    shared_option,
)
from simclr_cli.config import (
    PretrainConfig,
)

P = PretrainConfig


@app.command(
    epilog=examples(
        "simclr pretrain --dataset shapes --epochs 20 --batch-size 256",
        "simclr pretrain --dataset cifar10 --epochs 500 --batch-size 1024 --gpus 4",
        "simclr pretrain --dataset ./my_images --image-size 224 --arch resnet50 --optimizer adam",
        "simclr pretrain --resume auto --out runs/quickstart --epochs 16",
    )
)
def pretrain(
    dataset: Annotated[
        str | None, flag(P, "dataset", "cifar10, cifar100, stl10, shapes (built in) or a folder.")
    ] = None,
    data_dir: Annotated[
        Path | None, flag(P, "data_dir", "Where datasets are downloaded/read.")
    ] = None,
    limit: Annotated[
        int | None,
        flag(P, "limit", "Use N images: a class-stratified sample, seeded by --seed.", "all"),
    ] = None,
    image_size: Annotated[
        int | None,
        flag(
            P,
            "image_size",
            "Crop size; auto: 32 CIFAR/shapes, 96 STL-10; a folder's median image side, kept "
            "within 32-224.",
        ),
    ] = None,
    arch: Annotated[
        str | None, flag(P, "arch", "Encoder: resnet18/34/50/101/152, wide_resnet50_2.")
    ] = None,
    stem: Annotated[
        str | None, flag(P, "stem", "auto (cifar for <= 64 px), cifar or imagenet.")
    ] = None,
    head: Annotated[
        str | None,
        flag(
            P, "head", "Projection head: v1 (Linear-ReLU-Linear), v1-bn (2 layers with BN), v2 (3)."
        ),
    ] = None,
    projection_dim: Annotated[
        int | None, flag(P, "projection_dim", "Output dim of the head z.")
    ] = None,
    hidden_dim: Annotated[
        int | None, flag(P, "hidden_dim", "Hidden dim of the head; auto = feature dim.")
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
        int | None, flag(P, "batch_size", "GLOBAL batch (images per step, all processes).")
    ] = None,
    epochs: Annotated[int | None, flag(P, "epochs", "Epochs.")] = None,
    max_steps: Annotated[
        int | None, flag(P, "max_steps", "Stop after N steps (smoke runs).", "none")
    ] = None,
    optimizer: Annotated[str | None, flag(P, "optimizer", "lars, adam, adamw or sgd.")] = None,
    lr: Annotated[
        float | None, flag(P, "lr", "Peak learning rate; auto = scaled by --lr-scaling.")
    ] = None,
    lr_scaling: Annotated[
        str | None,
        flag(
            P,
            "lr_scaling",
            "linear (base x B/256) or sqrt (base x sqrt(B)). Bases: LARS 0.3 / 0.075, "
            "SGD 0.06, Adam/AdamW 3e-4 (the sqrt bases equal the linear rule at B = 256).",
        ),
    ] = None,
    weight_decay: Annotated[
        float | None, flag(P, "weight_decay", f"Weight decay; auto = {decay_defaults()}.")
    ] = None,
    momentum: Annotated[float | None, flag(P, "momentum", "Momentum (LARS, SGD).")] = None,
    warmup_epochs: Annotated[
        float | None,
        flag(
            P,
            "warmup_epochs",
            "Linear warmup epochs, then cosine decay; auto = 10, at most 10% of the run.",
        ),
    ] = None,
    temperature: Annotated[
        float | None, flag(P, "temperature", "NT-Xent temperature (> 0).")
    ] = None,
    jitter_strength: Annotated[
        float | None, flag(P, "jitter_strength", "Colour jitter s; auto = 0.5 small/1.0.")
    ] = None,
    blur: Annotated[
        bool | None,
        flag(P, "blur", "Gaussian blur; auto: >= 96 px.", name="--blur/--no-blur"),
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
        flag(
            P,
            "augment_on",
            "cpu: per image in DataLoader workers; device: batched on the training device; "
            "auto: device on CUDA (or with --data-on device), else cpu.",
        ),
    ] = None,
    data_on: Annotated[
        str | None,
        flag(
            P,
            "data_on",
            "device: hold the decoded set as one uint8 tensor on the training device (no "
            "DataLoader; views made on the device); host: a DataLoader; auto: device on a "
            "GPU when the set takes <= 25% of its free memory.",
        ),
    ] = None,
    workers: Annotated[int | None, shared_option(P, "workers")] = None,
    seed: Annotated[int | None, flag(P, "seed", "Random seed.")] = None,
    device: Annotated[str | None, shared_option(P, "device")] = None,
    precision: Annotated[
        str | None,
        flag(
            P,
            "precision",
            "auto (bf16 on GPUs with native bf16, else fp16; fp32 on CPU), fp32, bf16, fp16.",
        ),
    ] = None,
    channels_last: Annotated[
        bool | None,
        flag(
            P,
            "channels_last",
            "NHWC memory format (faster convolutions on GPUs and CPUs).",
            name="--channels-last/--no-channels-last",
        ),
    ] = None,
    compile: Annotated[bool | None, flag(P, "compile", "torch.compile the model.")] = None,
    deterministic: Annotated[
        bool | None, flag(P, "deterministic", "Deterministic kernels (slower).")
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
        int | None, flag(P, "checkpoint_every", "Keep checkpoint_epoch_N every N epochs.")
    ] = None,
    resume: Annotated[
        str | None,
        typer.Option(
            help="Resume from a checkpoint path, or 'auto' (the last one of the run in --out). "
            "The run's own options are used; flags may change only "
            f"{resume_flags()}; any other flag must agree with the run."
        ),
    ] = None,
    accept_new_data: Annotated[
        bool | None,
        flag(
            P,
            "accept_new_data",
            "Resume onto a dataset of another size than the run's (images added or removed), "
            "keeping the run's schedule: its total and warmup steps.",
            name="--accept-new-data",
        ),
    ] = None,
    knn_every: Annotated[
        int | None, flag(P, "knn_every", "kNN accuracy every N epochs (0 = off).")
    ] = None,
    knn_k: Annotated[
        int | None,
        flag(P, "knn_k", KNN_K_HELP),
    ] = None,
    log_every: Annotated[int | None, flag(P, "log_every", "Log metrics every N steps.")] = None,
    gpus: Annotated[
        int | None, flag(P, "gpus", "Spawn one process per GPU on this node (NCCL).")
    ] = None,
    processes: Annotated[
        int | None, flag(P, "processes", "CPU processes on this node (gloo).")
    ] = None,
    nodes: Annotated[int | None, flag(P, "nodes", "Number of nodes.")] = None,
    node_rank: Annotated[int | None, flag(P, "node_rank", "This node's rank (0 = master).")] = None,
    master_addr: Annotated[str | None, flag(P, "master_addr", "Address of node 0.")] = None,
    master_port: Annotated[
        int | None, flag(P, "master_port", "Port on node 0; auto = a free port.")
    ] = None,
    sync_bn: Annotated[
        bool | None,
        flag(
            P,
            "sync_bn",
            "Global batch norm; auto = on with > 1 process.",
            name="--sync-bn/--no-sync-bn",
        ),
    ] = None,
) -> None:
    """Pretrain a ResNet encoder with SimCLR (NT-Xent on two augmented views)."""
    cfg = build(PretrainConfig, **locals())
    from simclr_cli.training.pretrain import run_pretrain

    summary = run_pretrain(cfg)
    print_summary("Pretraining finished", summary)
