"""End-to-end pretraining throughput: simclr-cli against the pipelines a user would pick instead.

Every pipeline trains the same network (ResNet-18, CIFAR stem, 2-layer projector) on the
embedded ``shapes`` dataset with the same batch and image size, on the same device, and is
timed over whole steps: data loading, augmentation, forward, loss, backward and the optimizer
step, with a host sync (``.item()``) after every timed step so no work is left queued. The
first ``--warmup`` steps are not timed (worker start-up, cuDNN autotuning, allocator warm-up).
Each pipeline runs in its own process, so its peak memory is its own and process-wide settings
(malloc's, thread pools, cuDNN's autotuner) do not carry over.

* ``spijkervet``: the training loop of Spijkervet/SimCLR, transcribed (:mod:`peers`).
* ``lightly``: lightly's published CIFAR-10 recipe, transcribed (:mod:`peers`): torchvision PIL
  views in ``--peer-workers`` DataLoader workers (8, as the recipe), two encoder passes per
  step, lightly's NT-Xent, SGD.
* ``ours-host``: :func:`simclr_cli.training.pretrain.run_pretrain` with ``--data-on host`` (a
DataLoader of
  ``--workers`` processes; views made ``--augment-on``), timed from the run's ``metrics.jsonl``.
* ``ours-device``: the same with ``--data-on device --augment-on device`` (the decoded set is
  one uint8 tensor on the device; no DataLoader).
* ``ours-device+compile`` (``--compile``) and ``spijkervet+keep`` (``--reference-keep-freed-
  memory``: the Spijkervet loop with simclr-cli's CPU malloc setting, :mod:`simclr_cli.allocator`).

For each pipeline and each of ``--precisions`` (bf16 and fp32 on CUDA; fp32 on the CPU) it
prints images/s, the ratios to the Spijkervet- and lightly-style pipelines, peak memory (GPU:
``torch.cuda.max_memory_allocated``; CPU: peak resident size) and the achieved TFLOP/s: the
convolution and matmul FLOPs of one training step (forward and backward of both views, counted
with ``torch.utils.flop_counter.FlopCounterMode``) times the steps per second.

Usage::

    python benchmarks/pretrain.py                                  # CPU: batch 256, 32 px
    python benchmarks/pretrain.py --device cuda                    # batch 512, bf16 and fp32
    python benchmarks/pretrain.py --batch-size 64 --steps 5 --pipelines ours-host,ours-device
"""

from __future__ import annotations

import argparse
import contextlib
import json
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch
from torch.utils.data import DataLoader
from torch.utils.flop_counter import FlopCounterMode

from simclr_cli import allocator
from simclr_cli.config import PretrainConfig
from simclr_cli.data.datasets import ShapesDataset
from simclr_cli.evaluation.inference import PRECISION_DTYPES, autocast_context
from simclr_cli.method.loss import nt_xent
from simclr_cli.method.model import build_simclr
from simclr_cli.training.pretrain import run_pretrain
from simclr_cli.training.recipe import build_spec

import peers
from procmem import peak_rss_gib, run_fresh

CIFAR_EPOCH = 50_000
PIPELINES = (
    "spijkervet",
    "spijkervet+keep",
    "lightly",
    "ours-host",
    "ours-device",
    "ours-device+compile",
)
LABELS = {
    "spijkervet": "Spijkervet-style",
    "spijkervet+keep": "Spijkervet-style + simclr-cli malloc",
    "lightly": "lightly-style",
    "ours-host": "simclr-cli --data-on host",
    "ours-device": "simclr-cli --data-on device",
    "ours-device+compile": "simclr-cli --data-on device --compile",
}


# ----------------------------------------------------------------------------------------------
# measuring


def autocast(device: torch.device, precision: str) -> contextlib.AbstractContextManager:
    """bf16/fp16 autocast for the peers' forward passes, or nothing for fp32 (as simclr-cli's)."""
    return autocast_context(device, PRECISION_DTYPES[precision])


def step_flops(step: Callable[[], None]) -> int:
    """Convolution/matmul FLOPs of one call of ``step`` (forward and backward)."""
    counter = FlopCounterMode(display=False)
    with counter:
        step()
    return int(counter.get_total_flops())


def rate_from(stamps: list[float], warmup: int, batch_size: int) -> float:
    """Images/s between the end of the last warm-up step and the end of the last step."""
    timed = stamps[warmup - 1 :]
    return batch_size * (len(timed) - 1) / (timed[-1] - timed[0])


def synchronize(device: torch.device) -> None:
    """Wait for queued device work (a no-op on the CPU)."""
    if device.type == "cuda":
        torch.cuda.synchronize(device)


# ----------------------------------------------------------------------------------------------
# peers


def peer_loader(args: argparse.Namespace, views: Callable[[Any], Any]) -> DataLoader:
    """Shapes images through ``views`` in ``--peer-workers`` workers, shuffled, full batches."""
    dataset = ShapesDataset(
        "train", size=args.batch_size * (args.warmup + args.steps), image_size=args.image_size,
        transform=views,
    )  # fmt: skip
    return DataLoader(
        dataset, batch_size=args.batch_size, shuffle=True, drop_last=True,
        num_workers=args.peer_workers, pin_memory=args.device == "cuda",
        persistent_workers=False,
    )  # fmt: skip


def spijkervet_throughput(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images/s and step FLOPs of the Spijkervet-style loop."""
    torch.manual_seed(0)
    model = peers.SpijkervetSimCLR().to(device)
    criterion = peers.SpijkervetNTXent(args.batch_size, temperature=0.5).to(device)
    criterion.mask = criterion.mask.to(device)
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-4)

    def step(x_i: torch.Tensor, x_j: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad()
        with autocast(device, args.precision):
            _, _, z_i, z_j = model(x_i, x_j)
        loss = criterion(z_i.float(), z_j.float())
        loss.backward()
        optimizer.step()
        return loss

    return peer_run(args, device, peers.SpijkervetViews(args.image_size), step)


def lightly_throughput(args: argparse.Namespace, device: torch.device) -> dict[str, float]:
    """Images/s and step FLOPs of the lightly-style loop."""
    torch.manual_seed(0)
    model = peers.LightlySimCLR().to(device)
    optimizer = peers.lightly_optimizer(model, args.batch_size)

    def step(x0: torch.Tensor, x1: torch.Tensor) -> torch.Tensor:
        optimizer.zero_grad()
        with autocast(device, args.precision):
            z0, z1 = model(x0), model(x1)  # two encoder passes, as the recipe
        loss = peers.lightly_nt_xent(z0.float(), z1.float(), temperature=0.5)
        loss.backward()
        optimizer.step()
        return loss

    return peer_run(args, device, peers.LightlyViews(args.image_size), step)


def peer_run(
    args: argparse.Namespace,
    device: torch.device,
    views: Callable[[Any], Any],
    step: Callable[[torch.Tensor, torch.Tensor], torch.Tensor],
) -> dict[str, float]:
    """Time ``step`` over the loader's batches; count one step's FLOPs afterwards."""
    stamps = []
    x_i = x_j = torch.empty(0)
    for (x_i, x_j), _ in peer_loader(args, views):
        x_i, x_j = x_i.to(device, non_blocking=True), x_j.to(device, non_blocking=True)
        step(x_i, x_j).item()  # both peers log loss.item() every step
        stamps.append(time.perf_counter())

    def one_step() -> None:
        step(x_i, x_j)

    flops = step_flops(one_step)
    return {"images_per_s": rate_from(stamps, args.warmup, args.batch_size), "flops": flops}


# ----------------------------------------------------------------------------------------------
# simclr-cli


def ours_config(args: argparse.Namespace, out: Path, pipeline: str) -> PretrainConfig:
    """The run of one simclr-cli pipeline: one epoch of ``warmup + steps`` steps."""
    steps = args.warmup + args.steps
    on_device = pipeline.startswith("ours-device")
    return PretrainConfig(
        dataset="shapes",
        limit=args.batch_size * steps,
        image_size=args.image_size,
        stem="cifar",
        batch_size=args.batch_size,
        epochs=1,
        max_steps=steps,
        workers=args.workers,
        augment_on="device" if on_device else args.augment_on,
        data_on="device" if on_device else "host",
        channels_last=args.channels_last,
        precision=args.precision,
        compile=pipeline.endswith("+compile"),
        device=args.device,
        out=out,
        log_every=1,
    )


def ours_throughput(args: argparse.Namespace, pipeline: str) -> dict[str, float]:
    """Images/s of ``run_pretrain`` from its metrics (one line per step; compilation untimed)."""
    with tempfile.TemporaryDirectory() as out:
        cfg = ours_config(args, Path(out), pipeline)
        run_pretrain(cfg)
        records = [json.loads(line) for line in (Path(out) / "metrics.jsonl").open()]
    stamps = [r["time"] for r in records if "loss" in r]
    return {
        "images_per_s": rate_from(stamps, args.warmup, args.batch_size),
        "flops": ours_flops(cfg),
    }


def ours_flops(cfg: PretrainConfig) -> int:
    """FLOPs of one simclr-cli step: forward of ``[x_i; x_j]``, NT-Xent, backward."""
    device = torch.device(cfg.resolved_device)
    net = build_simclr(build_spec(cfg)).to(device, memory_format=torch.channels_last)
    x = torch.rand(2 * cfg.batch_size, 3, cfg.image_size, cfg.image_size, device=device)
    x = x.contiguous(memory_format=torch.channels_last)

    def step() -> None:
        with autocast(device, cfg.resolved_precision):
            _, z = net(x)
        nt_xent(*z.chunk(2), temperature=cfg.temperature).backward()

    return step_flops(step)


# ----------------------------------------------------------------------------------------------
# driver


def run_one(args: argparse.Namespace) -> None:
    """Time one pipeline in this process and print its result as a JSON line."""
    device = torch.device(args.device)
    if args.pipeline == "spijkervet+keep":
        allocator.keep_freed_memory()
    if args.pipeline.startswith("spijkervet"):
        result = spijkervet_throughput(args, device)
    elif args.pipeline == "lightly":
        result = lightly_throughput(args, device)
    else:
        result = ours_throughput(args, args.pipeline)
    result["peak_rss_gib"] = peak_rss_gib()
    if device.type == "cuda":
        result["peak_gpu_gib"] = torch.cuda.max_memory_allocated(device) / 2**30
    print(json.dumps(result))


def parse_args() -> argparse.Namespace:
    """Options; the defaults depend on ``--device`` (CUDA: batch 512, bf16 and fp32)."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--batch-size", type=int, help="default 512 on CUDA, 256 on the CPU")
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--steps", type=int, help="timed steps (default 20 CUDA, 3 CPU)")
    parser.add_argument("--warmup", type=int, help="untimed steps first (default 5 CUDA, 1 CPU)")
    parser.add_argument("--workers", type=int, help="simclr-cli workers (default 8 CUDA, 2 CPU)")
    parser.add_argument("--peer-workers", type=int, help="peers' workers (default 8 CUDA, 2 CPU)")
    parser.add_argument("--augment-on", choices=("cpu", "device"), default="device")
    parser.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=True)
    parser.add_argument("--precisions", help="comma list (default bf16,fp32 CUDA; fp32 CPU)")
    parser.add_argument(
        "--pipelines",
        default="spijkervet,lightly,ours-host,ours-device",
        help=f"comma list of {', '.join(PIPELINES)}",
    )
    parser.add_argument("--compile", action="store_true", help="also time ours-device+compile")
    parser.add_argument(
        "--reference-keep-freed-memory",
        action="store_true",
        help="also time spijkervet+keep (simclr-cli's malloc setting, simclr_cli.allocator)",
    )
    parser.add_argument("--json", type=Path, help="also write every result to this file")
    parser.add_argument("--pipeline", choices=PIPELINES, help=argparse.SUPPRESS)
    parser.add_argument("--precision", help=argparse.SUPPRESS)
    args = parser.parse_args()
    cuda = args.device == "cuda"
    args.batch_size = args.batch_size or (512 if cuda else 256)
    args.steps = args.steps or (20 if cuda else 3)
    args.warmup = args.warmup or (5 if cuda else 1)
    args.peer_workers = args.peer_workers if args.peer_workers is not None else (8 if cuda else 2)
    args.workers = args.workers if args.workers is not None else (8 if cuda else 2)
    args.precisions = args.precisions or ("bf16,fp32" if cuda else "fp32")
    return args


def pipelines_of(args: argparse.Namespace) -> list[str]:
    """The pipelines to time, in order (peers first: the ratios need them)."""
    names = [n for n in args.pipelines.split(",") if n]
    names += ["spijkervet+keep"] if args.reference_keep_freed_memory else []
    names += ["ours-device+compile"] if args.compile else []
    unknown = sorted(set(names) - set(PIPELINES))
    if unknown:
        raise SystemExit(f"unknown pipelines {unknown}; choose from {', '.join(PIPELINES)}")
    return sorted(dict.fromkeys(names), key=PIPELINES.index)


def report(
    name: str, precision: str, r: dict[str, float], peers_: dict[str, float], batch: int
) -> str:
    """One line: images/s, ratios to the peers, peak memory, TFLOP/s, seconds per epoch."""
    rate = r["images_per_s"]
    ratios = ", ".join(f"{rate / v:.2f}x {LABELS[k]}" for k, v in peers_.items() if k != name)
    memory = (
        f"peak GPU {r['peak_gpu_gib']:.2f} GiB"
        if "peak_gpu_gib" in r
        else f"peak RSS {r['peak_rss_gib']:.2f} GiB"
    )
    tflops = r["flops"] * rate / batch / 1e12
    return (
        f"{precision} {LABELS[name]:40s} {rate:9.1f} images/s  {memory}  {tflops:7.3f} TFLOP/s  "
        f"{CIFAR_EPOCH / rate:7.1f} s/50k-epoch" + (f"  ({ratios})" if ratios else "")
    )


def main() -> None:
    args = parse_args()
    if args.pipeline:
        return run_one(args)
    busy = "" if args.device == "cuda" else "; the CPU may be shared with other work"
    device_name = torch.cuda.get_device_name(0) if args.device == "cuda" else "CPU"
    print(
        f"ResNet-18 CIFAR stem, {args.image_size} px, batch {args.batch_size}, {args.steps} timed "
        f"steps after {args.warmup}, simclr-cli {args.workers} workers (augment-on "
        f"{args.augment_on} on the host path), peers {args.peer_workers} workers, {device_name}, "
        f"torch {torch.__version__}, {torch.get_num_threads()} threads{busy}; each pipeline in "
        "its own process; TFLOP/s counts conv/matmul FLOPs of forward + backward",
        flush=True,
    )
    results: list[dict[str, Any]] = []
    for precision in args.precisions.split(","):
        peer_rates: dict[str, float] = {}
        for name in pipelines_of(args):  # each line as soon as its pipeline is done
            r = run_fresh(__file__, "--precision", precision, "--pipeline", name)
            if name in ("spijkervet", "lightly"):
                peer_rates[name] = r["images_per_s"]
            print(report(name, precision, r, peer_rates, args.batch_size), flush=True)
            results.append({"pipeline": name, "precision": precision, **r})
    if args.json:
        args.json.write_text(json.dumps(results, indent=1))


if __name__ == "__main__":
    main()
