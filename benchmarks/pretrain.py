"""End-to-end pretraining throughput: simclr-cli against a Spijkervet/SimCLR-style loop.

Both pipelines train the same network (ResNet-18, CIFAR stem) on the embedded ``shapes``
dataset with the same global batch, and both are timed over whole steps: data loading,
augmentation, forward, loss, backward and the optimizer step, with a host sync (``.item()``)
after every timed step so no work is left queued. The first ``--warmup`` steps are not timed
(worker start-up, allocator warm-up). Each pipeline runs in its own process, so that its peak
resident size is its own and process-wide settings (malloc's, thread pools) do not carry over.

* reference: the training loop of Spijkervet/SimCLR, transcribed: PIL/torchvision augmentation
  in DataLoader workers, channels-first fp32, the encoder called once per view, and the NT-Xent
  that builds an ``(2N, 2N, D)`` cosine-similarity tensor and gathers negatives with a mask.
* simclr-cli: :func:`simclr_cli.train.run_pretrain` with the chosen options (``--augment-on``,
  ``--channels-last``, ``--precision``), timed from the run's own ``metrics.jsonl``. On the
  CPU it keeps freed memory for reuse (:mod:`simclr_cli.allocator`);
  ``--reference-keep-freed-memory`` also times the reference with that setting, to show how
  much of the ratio it accounts for.

Usage::

    python benchmarks/pretrain.py                       # batch 256, 32 px, 3 timed steps
    python benchmarks/pretrain.py --compile              # also simclr-cli with --compile
    python benchmarks/pretrain.py --batch-size 64 --steps 5 --augment-on cpu
    python benchmarks/pretrain.py --steps 8 --reference-keep-freed-memory

Prints images/s and peak resident size of each, the ratio, and the seconds one epoch of 50,000
images would take.
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch
from torch import nn
from torch.utils.data import DataLoader
from torchvision import transforms

from simclr_cli import allocator
from simclr_cli.config import PretrainConfig
from simclr_cli.data import ShapesDataset
from simclr_cli.model import build_encoder
from simclr_cli.train import run_pretrain

from procmem import peak_rss_gib, run_fresh

CIFAR_EPOCH = 50_000
PIPELINES = ("reference", "reference+keep", "ours", "ours+compile")


# ----------------------------------------------------------------------------------------------
# reference: Spijkervet/SimCLR's pipeline, transcribed


class TransformsSimCLR:
    """Two independent views per image, torchvision PIL transforms (as in Spijkervet/SimCLR)."""

    def __init__(self, size: int, s: float = 0.5) -> None:
        color_jitter = transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)
        self.train_transform = transforms.Compose(
            [
                transforms.RandomResizedCrop(size=size),
                transforms.RandomHorizontalFlip(),
                transforms.RandomApply([color_jitter], p=0.8),
                transforms.RandomGrayscale(p=0.2),
                transforms.ToTensor(),
            ]
        )

    def __call__(self, x: object) -> tuple[torch.Tensor, torch.Tensor]:
        return self.train_transform(x), self.train_transform(x)


class ReferenceSimCLR(nn.Module):
    """Encoder called once per view; bias-free 2-layer projector."""

    def __init__(self, projection_dim: int = 128) -> None:
        super().__init__()
        self.encoder, n_features = build_encoder("resnet18", "cifar")
        self.projector = nn.Sequential(
            nn.Linear(n_features, n_features, bias=False),
            nn.ReLU(),
            nn.Linear(n_features, projection_dim, bias=False),
        )

    def forward(self, x_i: torch.Tensor, x_j: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h_i, h_j = self.encoder(x_i), self.encoder(x_j)
        return h_i, h_j, self.projector(h_i), self.projector(h_j)


class ReferenceNTXent(nn.Module):
    """NT-Xent with an (2N, 2N, D) cosine-similarity tensor and a boolean-mask gather."""

    def __init__(self, batch_size: int, temperature: float) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.temperature = temperature
        self.mask = self.mask_correlated_samples(batch_size)
        self.criterion = nn.CrossEntropyLoss(reduction="sum")
        self.similarity_f = nn.CosineSimilarity(dim=2)

    @staticmethod
    def mask_correlated_samples(batch_size: int) -> torch.Tensor:
        n = 2 * batch_size
        mask = torch.ones((n, n), dtype=torch.bool)
        mask = mask.fill_diagonal_(0)
        for i in range(batch_size):
            mask[i, batch_size + i] = 0
            mask[batch_size + i, i] = 0
        return mask

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        n = 2 * self.batch_size
        z = torch.cat((z_i, z_j), dim=0)
        sim = self.similarity_f(z.unsqueeze(1), z.unsqueeze(0)) / self.temperature  # (2N, 2N)
        sim_i_j = torch.diag(sim, self.batch_size)
        sim_j_i = torch.diag(sim, -self.batch_size)
        positive_samples = torch.cat((sim_i_j, sim_j_i), dim=0).reshape(n, 1)
        negative_samples = sim[self.mask].reshape(n, -1)
        labels = torch.zeros(n, dtype=torch.long, device=positive_samples.device)
        logits = torch.cat((positive_samples, negative_samples), dim=1)
        return self.criterion(logits, labels) / n


def reference_throughput(args: argparse.Namespace, device: torch.device) -> float:
    """Images/s of the reference loop over ``args.steps`` steps after ``args.warmup``."""
    torch.manual_seed(0)
    dataset = ShapesDataset(
        "train", size=args.batch_size * (args.warmup + args.steps), image_size=args.image_size,
        transform=TransformsSimCLR(args.image_size),
    )  # fmt: skip
    loader = DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.workers,
    )  # fmt: skip
    model = ReferenceSimCLR().to(device)
    criterion = ReferenceNTXent(args.batch_size, temperature=0.5)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)
    stamps = []
    for (x_i, x_j), _ in loader:
        optimizer.zero_grad()
        x_i, x_j = x_i.to(device, non_blocking=True), x_j.to(device, non_blocking=True)
        _, _, z_i, z_j = model(x_i, x_j)
        loss = criterion(z_i, z_j)
        loss.backward()
        optimizer.step()
        loss.item()  # the reference accumulates loss.item() every step
        stamps.append(time.perf_counter())
    timed = stamps[args.warmup - 1 :] if args.warmup else [stamps[0], *stamps]
    return args.batch_size * (len(timed) - 1) / (timed[-1] - timed[0])


# ----------------------------------------------------------------------------------------------
# simclr-cli


def ours_throughput(args: argparse.Namespace, device: torch.device, compile: bool) -> float:
    """Images/s of ``run_pretrain`` from its metrics (one line per step; compilation untimed)."""
    steps = args.warmup + args.steps
    with tempfile.TemporaryDirectory() as out:
        cfg = PretrainConfig(
            dataset="shapes",
            limit=args.batch_size * steps,
            image_size=args.image_size,
            stem="cifar",
            batch_size=args.batch_size,
            epochs=1,
            max_steps=steps,
            workers=args.workers,
            augment_on=args.augment_on,
            channels_last=args.channels_last,
            precision=args.precision,
            compile=compile,
            device=device.type,
            out=Path(out),
            log_every=1,
        )
        run_pretrain(cfg)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").open()]
    times = [r["time"] for r in records if "loss" in r]
    timed = times[args.warmup - 1 :] if args.warmup else times
    return args.batch_size * (len(timed) - 1) / (timed[-1] - timed[0])


def run_one(args: argparse.Namespace) -> None:
    """Time one pipeline in this process and print its result as a JSON line."""
    device = torch.device(args.device)
    if args.pipeline == "reference+keep":
        allocator.keep_freed_memory()
    if args.pipeline.startswith("reference"):
        rate = reference_throughput(args, device)
    else:
        rate = ours_throughput(args, device, compile=args.pipeline == "ours+compile")
    print(json.dumps({"images_per_s": rate, "peak_rss_gib": peak_rss_gib()}))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-size", type=int, default=256)
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, default=3, help="timed steps per pipeline")
    parser.add_argument("--warmup", type=int, default=1, help="untimed steps first")
    parser.add_argument("--workers", type=int, default=2)
    parser.add_argument("--augment-on", choices=("cpu", "device"), default="device")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--precision", default="auto")
    parser.add_argument("--compile", action="store_true", help="also time --compile")
    parser.add_argument(
        "--reference-keep-freed-memory",
        action="store_true",
        help="also time the reference with simclr-cli's malloc setting (simclr_cli.allocator)",
    )
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--pipeline", choices=PIPELINES, help=argparse.SUPPRESS)
    args = parser.parse_args()
    assert args.warmup >= 1, "time at least one step after a warm-up step"
    if args.pipeline:
        return run_one(args)
    print(
        f"ResNet-18 CIFAR stem, {args.image_size} px, batch {args.batch_size}, {args.steps} timed "
        f"steps after {args.warmup}, {args.workers} workers, device {args.device}, "
        f"{torch.get_num_threads()} threads; each pipeline in its own process"
    )
    pipelines = ["reference"]
    pipelines += ["reference+keep"] if args.reference_keep_freed_memory else []
    pipelines += ["ours"] + (["ours+compile"] if args.compile else [])
    options = (
        f"augment-on {args.augment_on}, channels-last {args.channels_last}, "
        f"precision {args.precision}"
    )
    labels = {
        "reference": "reference (Spijkervet-style)",
        "reference+keep": "reference + simclr-cli's malloc setting",
        "ours": f"simclr-cli ({options})",
        "ours+compile": f"simclr-cli ({options}, --compile)",
    }
    ref = None
    for name in pipelines:  # each line as soon as its pipeline is done
        result = run_fresh(__file__, "--pipeline", name)
        rate, peak = result["images_per_s"], result["peak_rss_gib"]
        ref = ref or rate
        print(f"{labels[name]}: {rate:8.1f} images/s, peak resident size {peak:.2f} GiB")
        if name != "reference":
            print(f"  ratio / reference: {rate / ref:.2f}x")
        print(f"  implied seconds per 50,000-image epoch: {CIFAR_EPOCH / rate:.0f} s", flush=True)


if __name__ == "__main__":
    main()
