#!/usr/bin/env bash
# simclr-cli on one NVIDIA GPU: global batch norm, multi-process NCCL and bf16 pretraining.
#
#   bash benchmarks/gpu_check.sh            # from the repository root, any working directory
#
# 1. SyncBatchNorm in a world-size-1 NCCL group equals BatchNorm (forward, gradients, running stats).
# 2. Two NCCL processes on the same GPU run one SimCLR step and match one process (NT-Xent loss,
#    gradients, LARS step); NCCL usually refuses two ranks on one GPU, and then a 1-GPU DDP run
#    (SyncBatchNorm + DDP, world size 1) must complete and match instead.
# 3. `simclr pretrain` of ResNet-18 at 32 px, batch 512, bf16 for 10 and 50 steps: both exit 0,
#    the last checkpoint's weights are finite, and images/s = 40 * 512 / (t50 - t10), which
#    leaves out start-up (imports, CUDA context, data workers).
# 4. (figures, not a check) benchmarks/linear_eval.py on the GPU, 10,000 / 2,000 shapes images,
#    CIFAR stem, 4 loader workers: our linear evaluation against the Spijkervet-style protocol.
# Exit status 0 when every check passes. PYTHON overrides the interpreter; AUGMENT_ON=cpu moves
# augmentation to the data workers.
set -euo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
WORK="$(mktemp -d "${TMPDIR:-/tmp}/simclr-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT

# Spawned workers re-import the main module, so the checks live in a file, not on stdin.
cat > "$WORK/gpu_check.py" <<'PYEOF'
"""The checks of benchmarks/gpu_check.sh (written to a temporary file and run from there)."""

from __future__ import annotations

import copy
import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from simclr_cli import distributed
from simclr_cli.errors import DistributedError
from simclr_cli.loss import nt_xent
from simclr_cli.model import SimCLR, build_encoder
from simclr_cli.optim import LARS, param_groups

WORK = Path(sys.argv[1])
GLOBAL_PAIRS = 16  # images per view in the step check; each of 2 ranks takes 8
GPU_TOL = 1e-4  # GPU reductions change order between 1 and 2 processes; TF32 is off below


def exact_fp32() -> None:
    # TF32 convolutions/matmuls differ at 1e-3; the comparisons need plain float32.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


# ---------------------------------------------------------------------------------------------
# 1. SyncBatchNorm at world size 1 == BatchNorm
# ---------------------------------------------------------------------------------------------


def run_bn(module: nn.Module, x: torch.Tensor, probe: torch.Tensor) -> dict[str, torch.Tensor]:
    x = x.clone().requires_grad_(True)
    y = module(x)
    (y * probe).sum().backward()
    return {
        "y": y.detach(),
        "x_grad": x.grad,
        "weight_grad": module.weight.grad,
        "bias_grad": module.bias.grad,
        "running_mean": module.running_mean,
        "running_var": module.running_var,
    }


def sync_bn_worker(cfg: Any) -> float:
    device = distributed.process_device("cuda")
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 16, 8, 8, generator=g) * 3 + 1).to(device)
    probe = torch.randn(64, 16, 8, 8, generator=g).to(device)
    plain = nn.BatchNorm2d(16).to(device)
    sync = distributed.convert_sync_batchnorm(copy.deepcopy(plain), device)
    assert isinstance(sync, nn.SyncBatchNorm), type(sync)
    assert distributed.world_size() == 1 and distributed.is_initialized()
    return max_diff(run_bn(sync, x, probe), run_bn(plain, x, probe))


def group_plan(world: int) -> distributed.LaunchPlan:
    port = distributed.find_free_port()
    mode = "spawn" if world > 1 else "env"
    return distributed.LaunchPlan(mode, "nccl", world, world, 0, "127.0.0.1", port, "cli")


def check_sync_bn() -> None:
    plan = group_plan(1)
    diff = distributed._run_in_group(sync_bn_worker, None, plan, 0, 0, timedelta(minutes=2))
    print(f"[1] SyncBatchNorm (NCCL, world size 1) vs BatchNorm: max |diff| = {diff:.2e}")
    assert diff <= 1e-5, "SyncBatchNorm at world size 1 differs from BatchNorm"


# ---------------------------------------------------------------------------------------------
# 2. One SimCLR step: N NCCL processes (or a 1-GPU DDP run) vs one process without a group
# ---------------------------------------------------------------------------------------------


def small_simclr() -> nn.Module:
    torch.manual_seed(0)
    encoder, features = build_encoder("resnet18", "cifar")
    return SimCLR(encoder, features, projection_dim=32, head="v2", hidden_dim=64)


def views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = (GLOBAL_PAIRS, 3, 16, 16)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


def simclr_step(model: nn.Module, bare: nn.Module, rows: slice) -> dict[str, Any]:
    device = next(bare.parameters()).device
    x_i, x_j = (v[rows].to(device) for v in views())
    optimizer = LARS(param_groups(bare, 1e-6), lr=1.0, weight_decay=1e-6)
    _, z = model(torch.cat([x_i, x_j]))
    loss = nt_xent(*z.chunk(2), temperature=0.5)
    loss.backward()
    grads = {k: p.grad.detach().cpu() for k, p in bare.named_parameters() if p.grad is not None}
    optimizer.step()
    weights = {k: v.detach().cpu() for k, v in bare.state_dict().items()}
    return {"loss": distributed.all_reduce_mean(loss.detach()).cpu(), "grads": grads, "w": weights}


def step_worker(cfg: Any) -> None:
    exact_fp32()
    device = distributed.process_device("cuda")
    model = distributed.convert_sync_batchnorm(small_simclr().to(device), device)
    # DDP even at world size 1 (wrap_ddp would skip it): this is the 1-GPU DDP run.
    ddp = DistributedDataParallel(model, device_ids=[device.index])
    n = GLOBAL_PAIRS // distributed.world_size()
    rows = slice(distributed.rank() * n, (distributed.rank() + 1) * n)
    result = simclr_step(ddp, distributed.unwrap(ddp), rows)
    assert not any(k.startswith("module.") for k in result["w"])
    torch.save(result, Path(cfg.out) / f"step_rank{distributed.rank()}.pt")


def compare_step(world: int, reference: dict[str, Any]) -> None:
    got = torch.load(WORK / "step_rank0.pt", weights_only=True)
    loss_diff = (got["loss"] - reference["loss"]).abs().item()
    grad_diff = max_diff(got["grads"], reference["grads"])
    weight_diff = max_diff(got["w"], reference["w"])
    print(
        f"    world size {world} vs 1 process: |loss diff| = {loss_diff:.2e}, "
        f"max |grad diff| = {grad_diff:.2e}, max |weight diff after LARS| = {weight_diff:.2e}"
    )
    assert max(loss_diff, grad_diff, weight_diff) <= GPU_TOL, "distributed step differs"


def check_step() -> None:
    exact_fp32()
    model = small_simclr().cuda()
    reference = simclr_step(model, model, slice(None))
    cfg = SimpleNamespace(out=str(WORK))
    try:
        distributed._spawn(step_worker, cfg, group_plan(2), timedelta(seconds=90))
        print("[2] 2 NCCL processes on one GPU completed a SimCLR step")
        compare_step(2, reference)
        return
    except DistributedError as err:
        print(f"[2] 2 NCCL processes on one GPU refused ({err}); running 1-GPU DDP instead")
    distributed._run_in_group(step_worker, cfg, group_plan(1), 0, 0, timedelta(minutes=2))
    print("[2] 1-GPU DDP run (SyncBatchNorm + DDP, NCCL world size 1) completed a SimCLR step")
    compare_step(1, reference)


# ---------------------------------------------------------------------------------------------
# 3. bf16 pretraining through the CLI
# ---------------------------------------------------------------------------------------------


def pretrain(steps: int) -> float:
    out = WORK / f"pretrain{steps}"
    cmd = [
        sys.executable, "-m", "simclr_cli", "pretrain",
        "--dataset", "shapes", "--arch", "resnet18", "--image-size", "32",
        "--batch-size", "512", "--max-steps", str(steps), "--precision", "bf16",
        "--device", "cuda", "--augment-on", os.environ.get("AUGMENT_ON", "device"),
        "--log-every", "10", "--out", str(out),
    ]  # fmt: skip
    start = time.perf_counter()
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    elapsed = time.perf_counter() - start
    if proc.returncode != 0:
        print(proc.stdout[-3000:], proc.stderr[-3000:], sep="\n")
        raise SystemExit(f"[3] simclr pretrain --max-steps {steps} exited {proc.returncode}")
    payload = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    state = payload["state_dict"]
    bad = [k for k, v in state.items() if v.is_floating_point() and not v.isfinite().all()]
    assert not bad, f"non-finite weights after {steps} bf16 steps: {bad[:5]}"
    if payload["global_step"] != steps:
        print(f"    note: checkpoint global_step {payload['global_step']} != --max-steps {steps}")
    print(f"    {steps} steps: {elapsed:.1f} s wall, weights finite, metrics {payload['metrics']}")
    return elapsed


def check_pretrain() -> None:
    print("[3] bf16 pretraining, ResNet-18, 32 px, batch 512 (shapes)")
    short, full = pretrain(10), pretrain(50)
    rate = 40 * 512 / max(full - short, 1e-9)
    print(f"[3] bf16 ResNet-18 32 px batch 512: {rate:.0f} images/s (steps 11-50, no start-up)")


if __name__ == "__main__":
    assert torch.cuda.is_available(), "no CUDA device visible"
    print(f"GPU: {torch.cuda.get_device_name(0)}, torch {torch.__version__}")
    check_sync_bn()
    check_step()
    check_pretrain()
    print("gpu_check: all checks passed")
PYEOF

PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" "$WORK/gpu_check.py" "$WORK"
echo "[4] linear evaluation vs the Spijkervet-style protocol on the GPU (figures only)"
PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}" "$PY" benchmarks/linear_eval.py \
  --train 10000 --test 2000 --stem cifar --workers 4 --threads 4 --device cuda
