"""Throughput of the SimCLR view pipelines, side by side, in one run.

Compares, on the same ``shapes`` images:
  reference   stock torchvision transforms per PIL image (the usual DataLoader-worker pipeline)
  per-image   simclr_cli.method.augment.SimCLRAugment per PIL image
  batched     simclr_cli.method.augment.BatchedSimCLRAugment on a uint8 batch (CPU, and CUDA if
  present)

Usage: python benchmarks/augment.py [--size 32] [--batch 256] [--repeats 3] [--threads 1]
Prints views/s for each and the ratio to the reference.
"""

from __future__ import annotations

import argparse
import time
from collections.abc import Callable

import numpy as np
import torch
from torchvision import transforms

from simclr_cli.data.datasets import ShapesDataset
from simclr_cli.method.augment import BatchedSimCLRAugment, SimCLRAugment, blur_kernel_size


def reference_pipeline(size: int, strength: float, blur: bool) -> transforms.Compose:
    """SimCLR appendix A with stock torchvision transforms."""
    s = strength
    steps = [
        transforms.RandomResizedCrop(size, scale=(0.08, 1.0)),
        transforms.RandomHorizontalFlip(),
        transforms.RandomApply([transforms.ColorJitter(0.8 * s, 0.8 * s, 0.8 * s, 0.2 * s)], 0.8),
        transforms.RandomGrayscale(0.2),
    ]
    if blur:
        steps.append(
            transforms.RandomApply(
                [transforms.GaussianBlur(blur_kernel_size(size), (0.1, 2.0))], 0.5
            )
        )
    return transforms.Compose([*steps, transforms.ToTensor()])


def best_seconds(run: Callable[[], object], repeats: int, sync: Callable[[], None]) -> float:
    """Fastest of ``repeats`` timed runs after one warm-up."""
    run()
    sync()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        run()
        sync()
        times.append(time.perf_counter() - start)
    return min(times)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--size", type=int, default=32)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--threads", type=int, default=1)
    parser.add_argument("--blur", action="store_true")
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    dataset = ShapesDataset(size=args.batch, image_size=args.size)
    images = [dataset[i][0] for i in range(args.batch)]
    batch = torch.stack([torch.from_numpy(np.array(im)).permute(2, 0, 1) for im in images])
    strength = 0.5

    def no_sync() -> None:
        return None

    reference = reference_pipeline(args.size, strength, args.blur)
    per_image = SimCLRAugment(args.size, strength, args.blur)
    batched = BatchedSimCLRAugment(args.size, strength, args.blur)
    rows = [
        ("reference (torchvision, per image)", lambda: [reference(im) for im in images], no_sync),
        ("per-image SimCLRAugment", lambda: [per_image(im) for im in images], no_sync),
        ("batched, cpu", lambda: batched(batch), no_sync),
    ]
    if torch.cuda.is_available():
        gpu_batch, gpu_aug = batch.cuda(), BatchedSimCLRAugment(args.size, strength, args.blur)
        gpu_aug = gpu_aug.cuda()
        rows.append(("batched, cuda", lambda: gpu_aug(gpu_batch), torch.cuda.synchronize))
    print(
        f"views of {args.batch} shapes images, {args.size} px, blur={args.blur}, "
        f"threads={args.threads}"
    )
    base = None
    for name, run, sync in rows:
        seconds = best_seconds(run, args.repeats, sync)
        rate = args.batch / seconds
        base = base or rate
        print(f"  {name:<36} {rate:>10.0f} views/s   x{rate / base:.2f}")


if __name__ == "__main__":
    main()
