"""Does pretraining learn? simclr-cli against a lightly-based reference and two baselines.

On the same data, image size, encoder (torchvision ResNet-18), batch and number of steps, this
trains

* **simclr-cli** through :func:`simclr_cli.train.run_pretrain`, the function behind
  ``simclr pretrain``, with the quickstart's options (``OURS`` and ``--crop-scale 0.5``), and
* **lightly**: a reference built from the published pieces of the ``lightly`` package
  (``pip install lightly``; the benchmark's own dependency, not simclr-cli's): its
  ``SimCLRTransform`` in DataLoader workers, its ``SimCLRProjectionHead`` and ``NTXentLoss``,
  two encoder passes per step, and the SGD recipe of its CIFAR-10 benchmark (lr 0.06 x B/128,
  momentum 0.9, weight decay 5e-4, cosine annealing per epoch, blur off at 32 px),

then evaluates every encoder the way ``simclr linear-eval`` does (frozen ``h``, the
standardised logistic regression with its weight-decay search, kNN with k chosen from the
data) on the same labelled train/test split, beside the baselines a reviewer would pick: a
ResNet-18 with torchvision's default initialisation (same seed, frozen) and raw pixels. Each
configuration runs over several seeds; the table gives the mean, the spread (min-max), the
wall time and the CPU time (user + system, loader workers included).

Usage::

    python benchmarks/quality.py                                 # shapes, seeds 0-2, 4/16 epochs
    python benchmarks/quality.py --epochs 4,16,48 --seeds 0,1,2
    python benchmarks/quality.py --dataset ./labelled_folder --image-size 64 --limit 0
    python benchmarks/quality.py --skip-reference --crop-scale 0.08   # ours with the paper's crop
    python benchmarks/quality.py --skip-ours --reference-min-scale 0.5 # lightly with our crop

A folder is pretrained on whole (labels unused) and evaluated on a fixed 80/20 split of it.
"""

from __future__ import annotations

import argparse
import json
import resource
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset

from simclr_cli import data
from simclr_cli.checkpoint import load_checkpoint, load_model
from simclr_cli.config import PretrainConfig
from simclr_cli.linear_eval import evaluate_frozen, pixel_baseline, random_encoder
from simclr_cli.model import SimCLR, build_encoder, model_spec
from simclr_cli.preprocess import to_uint8_transform
from simclr_cli.train import run_pretrain

# simclr-cli's side: the quickstart recipe (README), with the dataset, size, stem, batch,
# epochs and seed of the comparison filled in per run.
OURS: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 2e-3,
    "temperature": 0.2,
    "augment_on": "device",
    "workers": 0,
    "device": "cpu",
}
IMAGENET_NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}


# ----------------------------------------------------------------------------------------------
# evaluation: one protocol for every encoder


def eval_splits(args: argparse.Namespace) -> tuple[Dataset, Dataset, int]:
    """The labelled (train, test) pair every encoder is evaluated on, as uint8 test-time crops."""
    transform = to_uint8_transform(args.image_size)
    if data.dataset_kind(args.dataset) == "folder":
        folder = data.ImageFolderDataset(args.dataset, transform)
        train, test = data.train_test_split(folder, 0.2, seed=0)
        return train, test, len(folder.classes)
    limit = args.eval_limit or None
    train = data.build_dataset(args.dataset, "train", args.data_dir, transform, limit=limit)
    test = data.build_dataset(args.dataset, "test", args.data_dir, transform, limit=limit)
    return train, test, max(data.labels_of(train) + data.labels_of(test)) + 1


def probe(model: nn.Module, splits: tuple[Dataset, Dataset, int]) -> dict[str, float]:
    """Linear top-1 and kNN top-1 of a frozen model's ``h`` (the ``linear-eval`` protocol)."""
    train, test, num_classes = splits
    model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    result = evaluate_frozen(model, train, test, num_classes, torch.device("cpu"))
    return {"linear": result["top1"], "knn": result["knn_top1"], "knn_k": result["knn"]["k"]}


def probe_pixels(splits: tuple[Dataset, Dataset, int]) -> dict[str, float]:
    metrics = pixel_baseline(*splits)
    return {"linear": metrics["top1"], "knn": metrics["knn_top1"], "knn_k": metrics["knn_k"]}


# ----------------------------------------------------------------------------------------------
# the two trainers


def train_ours(args: argparse.Namespace, epochs: int, seed: int, root: Path) -> nn.Module:
    cfg = PretrainConfig(
        **OURS,
        dataset=args.dataset,
        data_dir=args.data_dir,
        limit=args.limit or None,
        image_size=args.image_size,
        stem=args.stem,
        batch_size=args.batch_size,
        epochs=epochs,
        seed=seed,
        crop_scale=args.crop_scale,
        out=root / f"ours-e{epochs}-s{seed}",
    )
    summary = run_pretrain(cfg)
    return load_model(load_checkpoint(summary["checkpoint"]))


class _Views(Dataset):
    """(image, label) -> (list of two lightly views, label)."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, label = self.dataset[i]
        return self.transform(image), label


def train_lightly(args: argparse.Namespace, epochs: int, seed: int) -> nn.Module:
    """lightly's SimCLR: its transform, head, loss and CIFAR-10 SGD recipe, two encoder passes."""
    from lightly.loss import NTXentLoss
    from lightly.models.modules import SimCLRProjectionHead
    from lightly.transforms import SimCLRTransform

    torch.manual_seed(seed)
    encoder, dim = build_encoder("resnet18", args.stem, zero_init_residual=False)
    head = SimCLRProjectionHead(dim, dim, 128)
    transform = SimCLRTransform(
        input_size=args.image_size,
        cj_strength=0.5,
        gaussian_blur=0.0,
        min_scale=args.reference_min_scale,
        normalize=IMAGENET_NORMALIZE,
    )
    kind = data.dataset_kind(args.dataset)
    images = data.build_dataset(
        args.dataset, data.pretrain_split(kind), args.data_dir, None, limit=args.limit or None
    )
    loader = DataLoader(
        _Views(images, transform),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    criterion = NTXentLoss()  # temperature 0.5, lightly's default and its benchmark's
    params = [*encoder.parameters(), *head.parameters()]
    lr = 6e-2 * args.batch_size / 128
    optimizer = torch.optim.SGD(params, lr=lr, momentum=0.9, weight_decay=5e-4)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs)
    encoder.train(), head.train()
    for _ in range(epochs):
        for (x0, x1), _ in loader:
            loss = criterion(head(encoder(x0)), head(encoder(x1)))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
        schedule.step()
    return SimCLR(encoder, dim, **IMAGENET_NORMALIZE)


# ----------------------------------------------------------------------------------------------
# the table


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children (loader workers)."""
    own, children = (
        resource.getrusage(resource.RUSAGE_SELF),
        resource.getrusage(resource.RUSAGE_CHILDREN),
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def summarise(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}%"
    return f"{100 * mean:.1f}% ({100 * min(values):.1f}-{100 * max(values):.1f})"


def print_table(rows: list[dict[str, Any]], steps_per_epoch: int) -> None:
    groups: dict[tuple[str, int], list[dict[str, Any]]] = {}
    for row in rows:
        groups.setdefault((row["method"], row["epochs"]), []).append(row)
    print(
        "\n| encoder | epochs (steps) | seeds | linear top-1 mean (min-max) | kNN top-1 | k "
        "| wall s per run | CPU s per run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (method, epochs), runs in groups.items():
        length = "-" if epochs == 0 else f"{epochs} ({epochs * steps_per_epoch})"
        wall = statistics.fmean(r["wall_s"] for r in runs)
        cpu = statistics.fmean(r.get("cpu_s", float("nan")) for r in runs)
        print(
            f"| {method} | {length} | {len(runs)} | {summarise([r['linear'] for r in runs])} "
            f"| {summarise([r['knn'] for r in runs])} | {runs[0]['knn_k']} | {wall:.0f} "
            f"| {cpu:.0f} |"
        )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dataset", default="shapes")
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "simclr")
    parser.add_argument("--limit", type=int, default=2048, help="pretraining images (0 = all)")
    parser.add_argument("--eval-limit", type=int, default=2000, help="images per eval split")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--stem", default="imagenet")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", default="4,16", help="training lengths, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--crop-scale", default="0.5,1", help="simclr-cli's --crop-scale")
    parser.add_argument("--reference-min-scale", type=float, default=0.08, help="lightly's")
    parser.add_argument("--workers", type=int, default=2, help="lightly's DataLoader workers")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-reference", action="store_true")
    parser.add_argument("--skip-ours", action="store_true")
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--json", type=Path, help="also write every run's figures here")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    epochs_list = [int(e) for e in args.epochs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    splits = eval_splits(args)
    spec = model_spec("resnet18", args.stem, image_size=args.image_size)
    pretrain_images = len(
        data.build_dataset(
            args.dataset, data.pretrain_split(data.dataset_kind(args.dataset)), args.data_dir,
            None, limit=args.limit or None,
        )
    )  # fmt: skip
    steps_per_epoch = pretrain_images // args.batch_size
    print(
        f"{args.dataset}: {pretrain_images} pretraining images, eval {len(splits[0])} train / "
        f"{len(splits[1])} test, {args.image_size} px, ResNet-18 {args.stem} stem, batch "
        f"{args.batch_size}, {torch.get_num_threads()} threads"
    )
    rows: list[dict[str, Any]] = []

    cpu_start = cpu_seconds()

    def record(method: str, epochs: int, seed: int, start: float, metrics: dict) -> None:
        nonlocal cpu_start
        cpu_now = cpu_seconds()
        rows.append({"method": method, "epochs": epochs, "seed": seed,
                     "wall_s": time.perf_counter() - start, "cpu_s": cpu_now - cpu_start,
                     **metrics})  # fmt: skip
        cpu_start = cpu_now
        print(json.dumps(rows[-1]), flush=True)

    reference = f"lightly reference (min_scale {args.reference_min_scale:g})"
    start = time.perf_counter()
    if not args.skip_baselines:
        record("raw pixels", 0, 0, start, probe_pixels(splits))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            start = time.perf_counter()
            if not args.skip_baselines:
                record("random (default init)", 0, seed, start,
                       probe(random_encoder(spec, seed), splits))  # fmt: skip
            for epochs in epochs_list:
                if not args.skip_ours:
                    start = time.perf_counter()
                    model = train_ours(args, epochs, seed, Path(tmp))
                    record(f"simclr-cli (crop {args.crop_scale})", epochs, seed, start,
                           probe(model, splits))  # fmt: skip
                if not args.skip_reference:
                    start = time.perf_counter()
                    model = train_lightly(args, epochs, seed)
                    record(reference, epochs, seed, start, probe(model, splits))
    print_table(rows, steps_per_epoch)
    if args.json:
        args.json.write_text(json.dumps(rows, indent=2))


if __name__ == "__main__":
    main()
