"""NT-Xent speed and memory: simclr-cli vs a reference written the way Spijkervet/SimCLR's is.

The reference computes cosine similarity on a (2N, 1, D) x (1, 2N, D) broadcast, i.e. through a
(2N, 2N, D) intermediate, gathers the negatives with a boolean mask and sums cross-entropy / 2N.
Both run forward + backward on the same seeded inputs in the same invocation; each case runs in
its own process so that its peak memory is its own (CPU: growth of peak resident size,
VmHWM; CUDA: peak allocated).
The reference is skipped as "out of memory" when its estimated peak exceeds --ref-limit-gib.

Usage: python benchmarks/loss.py [--batch-sizes 256 1024 4096] [--dim 128] [--device cpu]
"""

from __future__ import annotations

import argparse
import functools
import json
import statistics
import subprocess
import sys
import time
from collections.abc import Callable

import torch
from torch import nn

from simclr_cli.method.loss import nt_xent

from procmem import proc_status

TEMPERATURE = 0.5
# Measured: the reference peaks at about 6 float32 (2N, 2N, D) tensors (forward + backward).
REFERENCE_PEAK_TENSORS = 6


class SpijkervetStyleNTXent(nn.Module):
    """NT-Xent as Spijkervet/SimCLR writes it (batch size fixed at construction, one process)."""

    def __init__(self, batch_size: int, temperature: float) -> None:
        super().__init__()
        self.batch_size = batch_size
        self.temperature = temperature
        n = 2 * batch_size
        mask = torch.ones(n, n, dtype=torch.bool)  # (2N, 2N): True for negatives
        mask.fill_diagonal_(False)
        idx = torch.arange(batch_size)
        mask[idx, batch_size + idx] = False
        mask[batch_size + idx, idx] = False
        self.register_buffer("mask", mask)
        self.criterion = nn.CrossEntropyLoss(reduction="sum")
        self.similarity_f = nn.CosineSimilarity(dim=2)

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        n = 2 * self.batch_size
        z = torch.cat((z_i, z_j), dim=0)
        sim = self.similarity_f(z.unsqueeze(1), z.unsqueeze(0)) / self.temperature  # via (2N,2N,D)
        positives = torch.cat(
            (torch.diag(sim, self.batch_size), torch.diag(sim, -self.batch_size))
        ).reshape(n, 1)
        negatives = sim[self.mask].reshape(n, -1)
        labels = torch.zeros(n, dtype=torch.long, device=z.device)
        logits = torch.cat((positives, negatives), dim=1)
        return self.criterion(logits, labels) / n


def inputs(batch_size: int, dim: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """The same (B, D) views for every implementation: seeded on the CPU, then moved."""
    gen = torch.Generator().manual_seed(batch_size)
    z_i, z_j = torch.randn(2, batch_size, dim, generator=gen).to(device)
    return z_i.requires_grad_(), z_j.requires_grad_()


def timed(fn: Callable[[], torch.Tensor], device: torch.device, budget_s: float) -> list[float]:
    """Seconds per forward+backward; at least 3 runs, more while within ``budget_s``."""
    times: list[float] = []
    while len(times) < 3 or (sum(times) < budget_s and len(times) < 50):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        fn().backward()
        if device.type == "cuda":
            torch.cuda.synchronize(device)  # wait for the kernels before reading the clock
        times.append(time.perf_counter() - start)
    return times


def run_case(impl: str, batch_size: int, dim: int, device: torch.device, budget_s: float) -> dict:
    """Run one implementation at one size in this process; return time, peak memory and loss."""
    z_i, z_j = inputs(batch_size, dim, device)
    loss_fn: Callable[[torch.Tensor, torch.Tensor], torch.Tensor]
    if impl == "ours":
        loss_fn = functools.partial(nt_xent, temperature=TEMPERATURE)
    else:
        loss_fn = SpijkervetStyleNTXent(batch_size, TEMPERATURE).to(device)
    small = inputs(8, dim, device)
    nt_xent(*small, TEMPERATURE).backward()  # load kernels before the memory baseline
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
        base = torch.cuda.memory_allocated(device)
    else:
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")  # reset this process's peak resident size (VmHWM) to the current one
        base = proc_status("VmRSS")
    loss = loss_fn(z_i, z_j)
    loss.backward()  # first run: the one whose peak is measured
    if device.type == "cuda":
        peak = torch.cuda.max_memory_allocated(device) - base
    else:
        peak = proc_status("VmHWM") - base
    times = timed(lambda: loss_fn(z_i, z_j), device, budget_s)
    return {"seconds": statistics.median(times), "peak": peak, "loss": loss.item()}


def spawn_case(impl: str, batch_size: int, args: argparse.Namespace) -> dict:
    """Run :func:`run_case` in a fresh process so each peak is measured alone."""
    cmd = [sys.executable, __file__, "--case", impl, "--batch-sizes", str(batch_size)]
    cmd += ["--dim", str(args.dim), "--device", args.device, "--threads", str(args.threads)]
    cmd += ["--budget-s", str(args.budget_s)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    if out.returncode != 0:
        return {"error": (out.stderr.strip().splitlines() or ["failed"])[-1]}
    return json.loads(out.stdout.strip().splitlines()[-1])


def mib(n: float) -> str:
    return f"{n / 2**20:.0f} MiB"


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch-sizes", type=int, nargs="+", default=[256, 1024, 4096])
    parser.add_argument("--dim", type=int, default=128)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--threads", type=int, default=1, help="CPU threads per case")
    parser.add_argument("--budget-s", type=float, default=2.0, help="timing budget per case")
    parser.add_argument("--ref-limit-gib", type=float, default=4.0, help="skip the reference above")
    parser.add_argument("--case", choices=["ours", "reference"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.case:
        print(json.dumps(run_case(args.case, args.batch_sizes[0], args.dim, device, args.budget_s)))
        return
    print(f"NT-Xent forward+backward, D={args.dim}, device={device}, threads={args.threads}")
    header = f"{'B':>5} {'ours':>10} {'reference':>12} {'speed-up':>9}"
    print(header + f" {'ours peak':>10} {'ref peak':>10} {'memory':>7} {'loss':>7} {'|dloss|':>8}")
    for b in args.batch_sizes:
        ours = spawn_case("ours", b, args)
        need = REFERENCE_PEAK_TENSORS * (2 * b) ** 2 * args.dim * 4
        if need > args.ref_limit_gib * 2**30:
            ref = {"error": f"out of memory (needs ~{need / 2**30:.0f} GiB)"}
        else:
            ref = spawn_case("reference", b, args)
        line = f"{b:>5} {ours['seconds'] * 1e3:>8.2f}ms"
        if "error" in ref:
            print(f"{line} {'skipped':>12} {'-':>9} {mib(ours['peak']):>10}  {ref['error']}")
            continue
        speed = ref["seconds"] / ours["seconds"]
        memory = ref["peak"] / max(ours["peak"], 1)
        diff = abs(ref["loss"] - ours["loss"])
        print(
            f"{line} {ref['seconds'] * 1e3:>10.2f}ms {speed:>8.0f}x {mib(ours['peak']):>10}"
            f" {mib(ref['peak']):>10} {memory:>6.0f}x {ours['loss']:>7.4f} {diff:>8.1e}"
        )


if __name__ == "__main__":
    main()
