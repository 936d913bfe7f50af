#!/usr/bin/env bash
# simclr-cli on one NVIDIA GPU: every CUDA path, end to end, in one command (< 8 minutes).
#
#   bash benchmarks/gpu_check.sh OUTDIR        # from any working directory; OUTDIR is created
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh OUTDIR   # dry run of the script on a CPU
#
# Prints one summary line per check (PASS / FAIL / SKIP, then any TARGET and FIGURE lines), writes
# them to OUTDIR/summary.txt; OUTDIR/log.txt holds every check's full output,
# OUTDIR/pretrain_bench.json the benchmark's figures. Exit status 0 when no check failed. All
# checks together get GPU_CHECK_BUDGET seconds (default 450 on a GPU, 1500 on the CPU dry run):
# each has its own time limit, cut to what is left of the budget, and checks that find less than
# 20 s left are skipped, so the whole run stays under 8 minutes on a GPU. The checks that only a
# GPU can pass come first; the end-to-end runs and the benchmarks, which a CPU also runs, last.
# PYTHON overrides the interpreter.
#
# Dependencies. A GPU machine with PyTorch may lack pydantic, pydantic-core, annotated-types,
# typing-inspection, platformdirs and a typing-extensions new enough for pydantic-core (4.14 or
# later). Without pydantic and platformdirs, and without a wheels folder, the script stops at
# once with one line. Bring them as wheels (the device's Python is 3.12, x86-64):
#   here, in the repository root (the wheels then travel with the working tree, about 3 MiB):
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl pydantic==2.14.4 pydantic-core==2.50.5 \
#       annotated-types==0.8.0 typing-inspection==0.4.5 platformdirs==4.14.9 \
#       typing-extensions==4.16.0
#   there (the device tool: carry [".whl"]), as the command:
#     bash benchmarks/gpu_check.sh "$OUT"
#   (a .whl folder in the repository root, or $WHEELS, is installed into a temporary folder
#   first; typer, rich, numpy, pillow and torchvision are in the GPU image.)
#
# Checks, in this order (the later ones are skipped first when time runs out):
#   env             GPU, native bf16, torch, CUDA and dependency versions
#   gpus-1          --gpus 1 runs 5 steps (the defaults: --augment-on/--data-on auto);
#                   says where auto put the views and the data
#   sync-debug      steps 2.. of short runs under torch.cuda.set_sync_debug_mode("error"):
#                   device path bf16 and fp32 must not sync; the host path is reported
#   precision       bf16 and fp16 (GradScaler) steps of the real Trainer (ResNet-18, LARS):
#                   finite losses, weights moved, the gradient reaching z equal to float32's
#                   (backward outside autocast); what --precision auto picks here
#   two-procs       two processes on ONE device (gloo moves CUDA tensors; NCCL refuses two
#                   ranks per GPU): a SimCLR step with SyncBatchNorm and with simclr-cli's
#                   own all-reduce batch norm, gather_with_grad and its backward, DDP and
#                   LARS, each against one process on the whole batch (float32, no TF32)
#   bn-bench        SyncBatchNorm against the own all-reduce batch norm in 2 processes on
#                   the GPU (NCCL if it accepts them, else gloo): ms and host syncs per
#                   forward+backward of a ResNet-18, bf16; SyncBatchNorm stays the default
#   compile         --compile for 10 steps on the device path
#   pretrain-device simclr pretrain --dataset shapes --stem cifar --batch-size 512 --epochs 2
#                   --precision bf16 with the defaults (the dry run names --augment-on
#                   device --data-on device): exit 0, data and views on the device in
#                   config.json, finite weights; images/s from metrics.jsonl
#   resume          the same run stopped by --max-steps mid-epoch, then --resume auto: reaches
#                   the same step; max |weight diff| to the uninterrupted run (0 = exact)
#   pretrain-host   the same run with --data-on host --augment-on cpu (8 workers)
#   linear-eval     simclr linear-eval of that run
#   features        simclr features of that run
#   gpus-2          --gpus 2 on a one-GPU machine fails with exit 2 and ONE line naming --gpus
#   bench-pretrain  benchmarks/pretrain.py --device cuda --steps 15 --warmup 3: Spijkervet-style,
#                   lightly-style, simclr-cli host and device paths, bf16 and fp32 (TARGET lines)
#   bench-linear    benchmarks/linear_eval.py (target: >= 20x the Spijkervet protocol)
#
# The CPU dry run (GPU_CHECK_DEVICE=cpu) on the 2-core development machine, beside another
# engineer's benchmark: no check failed, 295 s in all. Seconds per check (SKIP: needs CUDA):
#   env 2, gpus-1 1 (SKIP), sync-debug 2 (SKIP), precision 16, two-procs 18, bn-bench 2 (SKIP),
#   compile 1 (SKIP), pretrain-device 11, resume 41, pretrain-host 27, linear-eval 18,
#   features 8, gpus-2 4, bench-pretrain 77, bench-linear 67.
set -uo pipefail
OUTDIR="${1:?usage: bash benchmarks/gpu_check.sh OUTDIR}"
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$ROOT"
mkdir -p "$OUTDIR"
OUTDIR="$(cd "$OUTDIR" && pwd)"
SUMMARY="$OUTDIR/summary.txt"
LOG="$OUTDIR/log.txt"
: > "$SUMMARY"
: > "$LOG"
PY="${PYTHON:-}"
if [ -z "$PY" ]; then
  if [ -x .venv/bin/python ]; then PY=.venv/bin/python; else PY=python3; fi
fi
export GPU_CHECK_DEVICE="${GPU_CHECK_DEVICE:-cuda}"
BUDGET="${GPU_CHECK_BUDGET:-$([ "$GPU_CHECK_DEVICE" = cuda ] && echo 450 || echo 1500)}"
# A CPU dry run is slower than a GPU at everything: its time limits are scaled by this factor.
SLOW="${GPU_CHECK_SLOW:-$([ "$GPU_CHECK_DEVICE" = cuda ] && echo 1 || echo 6)}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/simclr-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

WHEELS="${WHEELS:-$ROOT/.whl}"
DEPS_IMPORT="import pydantic, platformdirs"
if ! "$PY" -c "$DEPS_IMPORT" 2>/dev/null && [ -d "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" --target "$WORK/site" \
    pydantic pydantic-core annotated-types typing-inspection typing-extensions platformdirs \
    >> "$LOG" 2>&1
  export PYTHONPATH="$WORK/site:$PYTHONPATH"  # before the image's older typing-extensions
fi
if ! "$PY" -c "$DEPS_IMPORT" 2>/dev/null; then
  # One line, at once: every check needs them, and nothing can be installed from the network.
  say_missing="gpu_check: $PY cannot import pydantic and platformdirs, and $WHEELS has no wheels for them; bring them as this script's header says (pip download ... -d .whl, then carry .whl) or pip install pydantic platformdirs"
  echo "$say_missing" | tee -a "$SUMMARY" >&2
  exit 2
fi

# Spawned workers re-import the main module, so the checks live in a file, not on stdin.
cat > "$WORK/gpu_check.py" <<'PYEOF'
"""The checks of benchmarks/gpu_check.sh: ``python gpu_check.py WORK CHECK`` runs one check and
prints ``RESULT <one line>`` (exit 0: pass; 77: skipped; anything else: fail)."""

from __future__ import annotations

import json
import math
import os
import statistics
import subprocess
import sys
import time
import warnings
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import torch
from torch import nn

WORK = Path(sys.argv[1])
DEVICE = os.environ.get("GPU_CHECK_DEVICE", "cuda")
CUDA = DEVICE == "cuda"
SKIP = 77
SLOW = int(os.environ.get("GPU_CHECK_SLOW", "1" if CUDA else "6"))  # CPU dry runs: longer limits
GLOBAL_PAIRS = 16  # images per view in the step check; each of 2 ranks takes 8
GPU_TOL = 1e-4  # GPU reductions change order between 1 and 2 processes; TF32 is off below
# The issue's run on CUDA; a CPU dry run checks the script with tiny sizes.
RUN = (
    ["--batch-size", "512", "--epochs", "2", "--precision", "bf16", "--workers", "8"]
    if CUDA
    else ["--batch-size", "8", "--epochs", "2", "--limit", "32", "--image-size", "16",
          "--precision", "fp32", "--workers", "0"]
)  # fmt: skip
RUN_STEPS = 2 * (10_000 // 512) if CUDA else 8  # shapes has 10,000 training images
# On CUDA the defaults (--augment-on auto, --data-on auto) must pick the device path by
# themselves; on the CPU auto keeps the DataLoader, so the dry run names the device path.
DEVICE_PATH = [] if CUDA else ["--augment-on", "device", "--data-on", "device"]


def result(text: str, code: int = 0) -> None:
    print(f"RESULT {text}", flush=True)
    raise SystemExit(code)


def simclr(*args: str, timeout: int = 300 * SLOW) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "simclr_cli", *args]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout)
    print(proc.stdout[-4000:], proc.stderr[-4000:], sep="\n", flush=True)
    return proc


def pretrain(out: Path, *extra: str) -> subprocess.CompletedProcess:
    base = ["pretrain", "--dataset", "shapes", "--stem", "cifar", "--device", DEVICE]
    return simclr(*base, *RUN, "--log-every", "5", "--out", str(out), *extra)


def must(proc: subprocess.CompletedProcess, what: str) -> None:
    if proc.returncode != 0:
        last = (proc.stderr.strip() or proc.stdout.strip() or "no output").splitlines()[-1]
        result(f"{what} exited {proc.returncode}: {last}", 1)


def last_weights(out: Path) -> tuple[dict[str, torch.Tensor], int]:
    payload = torch.load(out / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    return payload["state_dict"], int(payload["global_step"])


def finite(state: dict[str, torch.Tensor]) -> bool:
    return all(v.isfinite().all() for v in state.values() if v.is_floating_point())


def images_per_s(out: Path) -> float:
    """Median images/s of the logged windows after the first (start-up left out)."""
    lines = (out / "metrics.jsonl").read_text().splitlines()
    rates = sorted(r["images_per_s"] for r in map(json.loads, lines) if "images_per_s" in r)[1:]
    return rates[len(rates) // 2] if rates else float("nan")


def exact_fp32() -> None:
    # TF32 convolutions/matmuls differ at 1e-3; the comparisons need plain float32.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


def check_env() -> None:
    import pydantic

    gpu = torch.cuda.get_device_name(0) if CUDA else "CPU dry run"
    if CUDA and not torch.cuda.is_available():
        result("no CUDA device visible", 1)
    count = torch.cuda.device_count() if CUDA else 0
    native = torch.cuda.is_bf16_supported(including_emulation=False) if CUDA else False
    result(
        f"{gpu} x{count}, native bf16 {native}, torch {torch.__version__}, CUDA "
        f"{torch.version.cuda}, pydantic {pydantic.__version__}, python {sys.version.split()[0]}"
    )


# ---------------------------------------------------------------------------------------------
# what only a GPU can show: --gpus 1, no host sync, bf16/fp16 steps, two processes, --compile


def check_gpus(n: int) -> None:
    visible = torch.cuda.device_count() if CUDA else 0
    if not CUDA and n == 1:
        result("needs CUDA", SKIP)
    if n > 1 and visible >= n:
        result(f"{visible} GPUs visible: --gpus {n} would run", SKIP)
    proc = pretrain(WORK / f"run-gpus{n}", "--gpus", str(n), "--max-steps", "5")
    if n == 1:
        must(proc, "--gpus 1")
        config = json.loads((WORK / "run-gpus1" / "config.json").read_text())["resolved"]
        result(
            f"--gpus 1 ran 5 steps; auto chose views on {config['resolved_augment_on']} "
            f"({config['augment_on_reason']}), data on {config['data_on']}"
        )
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    if proc.returncode != 2 or len(err) != 1 or "--gpus" not in err[0]:
        result(f"exit {proc.returncode}, stderr {len(err)} lines: {err[-1:]}", 1)
    result(f"exit 2, one line: {err[0]}")


def sync_debug_run(data_on: str, precision: str) -> str | None:
    """A short library run with sync debug mode "error" from the second step's batch to the
    last step's end (a log step's .item() is allowed); returns the error or None."""
    from simclr_cli import train
    from simclr_cli.config import PretrainConfig

    calls = {"steps": 0}
    step, flush = train.Trainer.step, train.Trainer.flush

    def armed_step(self: Any, views: torch.Tensor) -> torch.Tensor:
        loss = step(self, views)
        calls["steps"] += 1
        if calls["steps"] == 1:
            torch.cuda.synchronize()
            torch.cuda.set_sync_debug_mode("error")
        return loss

    def disarmed_flush(self: Any, *args: Any) -> None:
        torch.cuda.set_sync_debug_mode(0)
        flush(self, *args)

    cfg = PretrainConfig(
        dataset="shapes", limit=4096, stem="cifar", batch_size=512, epochs=1, max_steps=6,
        augment_on="device", data_on=data_on, precision=precision, device="cuda", workers=4,
        log_every=1000, out=WORK / f"sync-{data_on}-{precision}",
    )  # fmt: skip
    train.Trainer.step, train.Trainer.flush = armed_step, disarmed_flush  # type: ignore[method-assign]
    try:
        train.run_pretrain(cfg)
    except RuntimeError as err:
        return str(err).splitlines()[0]
    finally:
        torch.cuda.set_sync_debug_mode(0)
        train.Trainer.step, train.Trainer.flush = step, flush  # type: ignore[method-assign]
    return None


def check_sync_debug() -> None:
    if not CUDA:
        result("needs CUDA (tests/test_train.py checks the same on the CPU)", SKIP)
    lines, failed = [], False
    for data_on, precision in (("device", "bf16"), ("device", "fp32"), ("host", "bf16")):
        error = sync_debug_run(data_on, precision)
        lines.append(f"{data_on}/{precision}: {'no sync' if error is None else error}")
        failed |= error is not None and data_on == "device"
    result("; ".join(lines), 1 if failed else 0)


def precision_steps(precision: str, steps: int) -> str:
    """``steps`` real Trainer steps (ResNet-18, LARS) in ``precision``; one line, or raises."""
    from simclr_cli import train
    from simclr_cli.config import PretrainConfig
    from simclr_cli.method.loss import NTXentLoss, nt_xent

    sizes = {"limit": 2048, "batch_size": 256} if CUDA else {"limit": 32, "batch_size": 8}
    cfg = PretrainConfig(
        dataset="shapes", stem="cifar", image_size=32 if CUDA else 16, epochs=1, device=DEVICE,
        precision=precision, augment_on="device", data_on="device", workers=0, log_every=1000,
        out=WORK / f"precision-{precision}", **sizes,
    )  # fmt: skip
    trainer = train.build_trainer(cfg)
    seen: dict[str, Any] = {}

    class GradAtZ(NTXentLoss):
        def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
            seen["z"] = (z_i.detach().clone(), z_j.detach().clone())
            seen["scale"] = trainer.scaler.get_scale() if trainer.scaler is not None else 1.0
            z_i.register_hook(lambda grad: seen.update(grad_i=grad.clone()))
            return super().forward(z_i, z_j)

    trainer.criterion = GradAtZ(cfg.temperature)
    batches = trainer.batches()
    before = trainer.net.encoder.conv1.weight.detach().clone()
    times, losses = [], []
    for _ in range(steps):
        views = trainer.views(next(batches))
        start = time.perf_counter()
        losses.append(trainer.step(views).item())  # a host sync: the step is done
        times.append(time.perf_counter() - start)
        trainer.global_step += 1
    moved = not torch.equal(before, trainer.net.encoder.conv1.weight)
    # The gradient reaching z against float32's (of the loss times fp16's scale, as the step
    # differentiates it): the backward pass must run outside autocast.
    z_i, z_j = (z.clone().requires_grad_(True) for z in seen["z"])
    (nt_xent(z_i, z_j, cfg.temperature) * seen["scale"]).backward()
    got, want = seen["grad_i"].double(), z_i.grad.double()
    error = ((got - want).norm() / want.norm()).item()
    scale = f", scale {trainer.scaler.get_scale():g}" if trainer.scaler is not None else ""
    text = (
        f"{precision}: z {seen['z'][0].dtype}, losses {losses[0]:.3f}..{losses[-1]:.3f}"
        f"{scale}, |grad z - fp32| {error:.1e}, {statistics.median(times) * 1e3:.0f} ms/step"
    )
    if not all(math.isfinite(loss) for loss in losses) or not moved or error > 1e-5:
        raise AssertionError(f"{text} (weights moved: {moved})")
    return text


def check_precision() -> None:
    from simclr_cli.evaluation.inference import resolve_precision

    exact_fp32()  # the z-gradient comparison is in float32
    lines = []
    for precision in ("bf16", "fp16"):
        try:
            lines.append(precision_steps(precision, 6 if CUDA else 2))
        except AssertionError as err:
            result(f"{'; '.join(lines)}; FAILED {err}", 1)
    auto = resolve_precision("auto", DEVICE)
    result(f"{'; '.join(lines)}; --precision auto here: {auto}")


# Two processes on ONE device: NCCL refuses two ranks per GPU, gloo moves CUDA tensors (through
# the host), so gather_with_grad, its backward and global batch norm really cross processes.


def group_plan(world: int, backend: str) -> Any:
    from simclr_cli import distributed

    port = distributed.find_free_port()
    mode = "spawn" if world > 1 else "env"
    return distributed.LaunchPlan(mode, backend, world, world, 0, "127.0.0.1", port, "cli")


def small_simclr() -> nn.Module:
    from simclr_cli.method.model import SimCLR, build_encoder

    torch.manual_seed(0)
    encoder, features = build_encoder("resnet18", "cifar")
    return SimCLR(encoder, features, projection_dim=32, head="v2", hidden_dim=64)


def global_bn(model: nn.Module, kind: str) -> nn.Module:
    """torch's SyncBatchNorm (``torch``, the CUDA default) or simclr-cli's own (``own``)."""
    from simclr_cli import distributed

    if kind == "torch":
        return nn.SyncBatchNorm.convert_sync_batchnorm(model)
    return distributed.to_global_batchnorm(model)


def views(rows: slice, device: torch.device, size: int = 16) -> torch.Tensor:
    g = torch.Generator().manual_seed(1)
    shape = (GLOBAL_PAIRS, 3, size, size)
    x_i, x_j = torch.rand(shape, generator=g), torch.rand(shape, generator=g)
    return torch.cat([x_i[rows], x_j[rows]]).to(device)


def simclr_step(model: nn.Module, bare: nn.Module, rows: slice) -> dict[str, Any]:
    from simclr_cli import distributed
    from simclr_cli.method.loss import nt_xent
    from simclr_cli.method.optim import LARS, param_groups

    device = next(bare.parameters()).device
    optimizer = LARS(param_groups(bare, 1e-6), lr=1.0, weight_decay=1e-6)
    _, z = model(views(rows, device))
    loss = nt_xent(*z.chunk(2), temperature=0.5)
    loss.backward()
    grads = {k: p.grad.detach().cpu() for k, p in bare.named_parameters() if p.grad is not None}
    optimizer.step()
    weights = {k: v.detach().cpu() for k, v in bare.state_dict().items()}
    return {"loss": distributed.all_reduce_mean(loss.detach()).cpu(), "grads": grads, "w": weights}


def step_worker(cfg: Any) -> None:
    from simclr_cli import distributed, inference

    exact_fp32()
    device = inference.process_device(DEVICE)
    model = global_bn(small_simclr().to(device), cfg.bn)
    ddp = distributed.wrap_ddp(model, device, broadcast_buffers=False)
    n = GLOBAL_PAIRS // distributed.world_size()
    rows = slice(distributed.rank() * n, (distributed.rank() + 1) * n)
    out = simclr_step(ddp, model, rows)
    assert not any(k.startswith("module.") for k in out["w"])
    torch.save(out, WORK / f"step-{cfg.bn}-rank{distributed.rank()}.pt")


def check_two_procs() -> None:
    from simclr_cli.distributed import launching

    exact_fp32()
    device = torch.device(DEVICE)
    model = small_simclr().to(device)
    reference = simclr_step(model, model, slice(None))  # one process, plain BN, whole batch
    kinds = ("torch", "own") if CUDA else ("own",)  # SyncBatchNorm refuses CPU tensors
    lines, worst = [], 0.0
    for kind in kinds:
        cfg = SimpleNamespace(bn=kind)
        launching._spawn(step_worker, cfg, group_plan(2, "gloo"), timedelta(seconds=120 * SLOW))
        got = torch.load(WORK / f"step-{kind}-rank0.pt", weights_only=True)
        diffs = (
            (got["loss"] - reference["loss"]).abs().item(),
            max_diff(got["grads"], reference["grads"]),
            max_diff(got["w"], reference["w"]),
        )
        worst = max(worst, *diffs)
        name = "SyncBatchNorm" if kind == "torch" else "own all-reduce BN"
        lines.append(
            f"{name}: |loss|/grad/weight diff {diffs[0]:.1e}/{diffs[1]:.1e}/{diffs[2]:.1e}"
        )
    how = "2 gloo processes on one GPU" if CUDA else "2 gloo processes (SyncBatchNorm: CUDA only)"
    result(f"{how} vs 1 process, whole batch: {'; '.join(lines)}", 0 if worst <= GPU_TOL else 1)


def count_syncs(step: Any) -> int:
    """Host syncs of one call of ``step`` (torch's sync debug mode, as warnings)."""
    torch.cuda.synchronize()
    with warnings.catch_warnings(record=True) as caught:
        warnings.simplefilter("always")
        torch.cuda.set_sync_debug_mode("warn")
        try:
            step()
        finally:
            torch.cuda.set_sync_debug_mode(0)
    return sum("synchroniz" in str(w.message) for w in caught)


def bn_bench_worker(cfg: Any) -> None:
    """Forward, NT-Xent and backward of a ResNet-18 (bf16 autocast, 128 images per rank and
    view at 32 px) with one global-BN implementation: ms per step and host syncs per step.
    No DDP: its gradient all-reduce through gloo would hide the batch norm's cost."""
    from simclr_cli import distributed, inference
    from simclr_cli.method.loss import nt_xent

    device = inference.process_device("cuda")
    model = global_bn(small_simclr().to(device), cfg.bn).to(memory_format=torch.channels_last)
    x = torch.rand(256, 3, 32, 32, device=device).contiguous(memory_format=torch.channels_last)

    def step() -> None:
        model.zero_grad(set_to_none=True)
        with torch.autocast("cuda", dtype=torch.bfloat16):
            _, z = model(x)
            loss = nt_xent(*z.chunk(2), temperature=0.5)
        loss.backward()

    for _ in range(3):
        step()
    syncs = count_syncs(step)
    torch.cuda.synchronize()
    times = []
    for _ in range(10):
        start = time.perf_counter()
        step()
        torch.cuda.synchronize()
        times.append(time.perf_counter() - start)
    if distributed.rank() == 0:
        out = {"ms": statistics.median(times) * 1e3, "syncs": syncs, "backend": cfg.backend}
        (WORK / f"bn-bench-{cfg.bn}.json").write_text(json.dumps(out))


def check_bn_bench() -> None:
    from simclr_cli.distributed import launching
    from simclr_cli.errors import DistributedError

    if not CUDA:
        result("needs CUDA (SyncBatchNorm refuses CPU tensors)", SKIP)
    figures = {}
    for kind in ("torch", "own"):
        for backend in ("nccl", "gloo"):  # NCCL where it accepts two ranks on one GPU
            cfg = SimpleNamespace(bn=kind, backend=backend)
            try:
                launching._spawn(
                    bn_bench_worker, cfg, group_plan(2, backend), timedelta(seconds=60)
                )
                break
            except DistributedError as err:
                print(f"{backend} refused ({err}); trying the next backend", flush=True)
        figures[kind] = json.loads((WORK / f"bn-bench-{kind}.json").read_text())
    sync, own = figures["torch"], figures["own"]
    print(f"FIGURE SyncBatchNorm {sync['ms']:.1f} ms/step, {sync['syncs']} host syncs "
          f"({sync['backend']}); own all-reduce BN {own['ms']:.1f} ms/step, {own['syncs']} "
          f"host syncs ({own['backend']})")  # fmt: skip
    result(
        f"2 processes on one GPU ({sync['backend']}): SyncBatchNorm {sync['ms']:.1f} ms, "
        f"{sync['syncs']} syncs; own BN {own['ms']:.1f} ms, {own['syncs']} syncs per step "
        "(numerics: two-procs)"
    )


def check_compile() -> None:
    if not CUDA:
        result("skipped on the CPU dry run (inductor needs minutes there)", SKIP)
    out = WORK / "run-compile"
    proc = pretrain(out, "--compile", "--max-steps", "10", *DEVICE_PATH)
    must(proc, "pretrain --compile")
    state, step = last_weights(out)
    result(f"{step} compiled steps, weights finite {finite(state)}", 0 if finite(state) else 1)


# ---------------------------------------------------------------------------------------------
# end to end through the CLI, and the benchmarks


def check_pretrain(data_on: str) -> None:
    out = WORK / f"run-{data_on}"
    paths = DEVICE_PATH if data_on == "device" else ["--augment-on", "cpu", "--data-on", "host"]
    start = time.perf_counter()
    must(pretrain(out, *paths), f"pretrain --data-on {data_on}")
    wall = time.perf_counter() - start
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    state, step = last_weights(out)
    if resolved["data_on"] != data_on:
        result(f"config.json says data_on {resolved['data_on']} ({resolved['data_on_reason']})", 1)
    if not finite(state) or step != RUN_STEPS:
        result(f"finite weights {finite(state)}, global_step {step} (want {RUN_STEPS})", 1)
    result(
        f"{step} steps in {wall:.0f} s wall, {images_per_s(out):.0f} images/s (median window), "
        f"data_on {resolved['data_on']}: {resolved['data_on_reason']}; views on "
        f"{resolved['resolved_augment_on']}: {resolved['augment_on_reason']}"
    )


def check_resume() -> None:
    straight = WORK / "run-device"
    out = WORK / "run-resume"
    stop = RUN_STEPS // 2 + 3  # inside the second epoch
    must(pretrain(out, *DEVICE_PATH, "--max-steps", str(stop)), "pretrain --max-steps")
    must(pretrain(out, *DEVICE_PATH, "--resume", "auto"), "pretrain --resume auto")
    a, step_a = last_weights(straight)
    b, step_b = last_weights(out)
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    if step_a != step_b or not finite(b):
        result(f"resumed run ended at step {step_b}, uninterrupted at {step_a}", 1)
    exact = (
        "exact" if diff == 0 else "not bitwise (cuDNN autotuning / atomics; not --deterministic)"
    )
    result(f"stopped at {stop}, resumed to {step_b}: max |weight diff| {diff:.2e} ({exact})")


def check_linear_eval() -> None:
    run = WORK / "run-device"
    if not (run / "checkpoint_last.pt").exists():
        result("no run-device checkpoint (pretrain-device failed)", 1)
    proc = simclr("linear-eval", "--checkpoint", str(run), "--dataset", "shapes",
                  "--device", DEVICE, *([] if CUDA else ["--limit", "200"]))  # fmt: skip
    must(proc, "linear-eval")
    lines = [ln for ln in proc.stdout.splitlines() if "accuracy" in ln.lower() or "top" in ln]
    cells = [" ".join(ln.replace("│", " ").split()) for ln in lines[:3]]
    result("; ".join(cells) or "exit 0")


def check_features() -> None:
    run = WORK / "run-device"
    target = WORK / "features"
    proc = simclr("features", "--checkpoint", str(run), "--dataset", "shapes", "--device",
                  DEVICE, "--out", str(target), *([] if CUDA else ["--limit", "64"]))  # fmt: skip
    must(proc, "features")
    files = sorted(p.name for p in target.rglob("*") if p.is_file()) if target.is_dir() else []
    result(f"wrote {', '.join(files) or target}")


def check_bench_pretrain(out_json: str) -> None:
    cmd = [sys.executable, "benchmarks/pretrain.py", "--device", DEVICE, "--json", out_json]
    if CUDA:
        cmd += ["--steps", "15", "--warmup", "3"]
    else:
        cmd += ["--batch-size", "8", "--image-size", "16", "--steps", "2", "--workers", "0",
                "--peer-workers", "0"]  # fmt: skip
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=290 * SLOW)
    print(proc.stdout, proc.stderr[-3000:], sep="\n", flush=True)
    must(proc, "benchmarks/pretrain.py")
    rows = {(r["precision"], r["pipeline"]): r for r in json.loads(Path(out_json).read_text())}
    for (precision, name), r in sorted(rows.items()):
        print(f"FIGURE {precision} {name}: {r['images_per_s']:.0f} images/s")
    ours = rows.get(("bf16", "ours-device"))
    if ours:
        rate = ours["images_per_s"]
        light = rows[("bf16", "lightly")]["images_per_s"]
        spijk = rows[("bf16", "spijkervet")]["images_per_s"]
        print(f"TARGET bf16 device path {rate:.0f} images/s (>= 25,000: {rate >= 25_000}); "
              f"{rate / light:.1f}x lightly-style (>= 3: {rate >= 3 * light}); "
              f"{rate / spijk:.1f}x Spijkervet-style (>= 10: {rate >= 10 * spijk})")  # fmt: skip
    lines = [ln for ln in proc.stdout.splitlines() if "images/s" in ln]
    result(f"{len(lines)} pipeline rows (see FIGURE/TARGET lines and log.txt)")


def check_bench_linear() -> None:
    cmd = [sys.executable, "benchmarks/linear_eval.py", "--stem", "cifar", "--device", DEVICE]
    if CUDA:
        cmd += ["--train", "10000", "--test", "2000", "--workers", "4", "--threads", "4"]
    else:
        # the Spijkervet protocol drops last batches of 256: at least one batch per split
        cmd += ["--train", "512", "--test", "256", "--epochs", "5", "--workers", "0"]
    print("$", " ".join(cmd), flush=True)
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=230 * SLOW)
    print(proc.stdout, proc.stderr[-3000:], sep="\n", flush=True)
    must(proc, "benchmarks/linear_eval.py")
    whole = [ln for ln in proc.stdout.splitlines() if ln.startswith("whole protocol")]
    top1 = [ln for ln in proc.stdout.splitlines() if ln.startswith("top-1")]
    speed = whole[0].split()[-1] if whole else "?"
    if whole:
        print(f"TARGET linear evaluation {speed} the Spijkervet protocol (>= 20x)")
    result(f"whole protocol {speed}; " + "; ".join(" ".join(t.split()[:4]) for t in top1))


CHECKS = {
    "env": check_env,
    "gpus-1": lambda: check_gpus(1),
    "sync-debug": check_sync_debug,
    "precision": check_precision,
    "two-procs": check_two_procs,
    "bn-bench": check_bn_bench,
    "compile": check_compile,
    "pretrain-device": lambda: check_pretrain("device"),
    "resume": check_resume,
    "pretrain-host": lambda: check_pretrain("host"),
    "linear-eval": check_linear_eval,
    "features": check_features,
    "gpus-2": lambda: check_gpus(2),
    "bench-pretrain": lambda: check_bench_pretrain(sys.argv[3]),
    "bench-linear": check_bench_linear,
}

if __name__ == "__main__":
    CHECKS[sys.argv[2]]()
PYEOF

START=$SECONDS
FAILED=0
say() { echo "$*" | tee -a "$SUMMARY"; }

# check NAME LIMIT_S: run one check of gpu_check.py; one summary line, its output into log.txt.
check() {
  local name=$1 limit=$(($2 * SLOW)) t0=$SECONDS rc status detail left
  left=$((BUDGET - (SECONDS - START)))
  if (( left < 20 )); then
    say "SKIP   $name: the ${BUDGET} s budget is spent"
    return
  fi
  (( limit > left )) && limit=$left  # the whole run stays within the budget
  timeout --kill-after=10 "$limit" "$PY" "$WORK/gpu_check.py" "$WORK" "$name" \
    "$OUTDIR/pretrain_bench.json" > "$WORK/$name.log" 2>&1
  rc=$?
  { echo "===== $name (exit $rc)"; cat "$WORK/$name.log"; } >> "$LOG"
  detail="$(grep '^RESULT ' "$WORK/$name.log" | tail -1 | cut -c8-)"
  case $rc in
    0) status=PASS ;;
    77) status=SKIP ;;
    124|137) status=FAIL; detail="timed out after ${limit} s. ${detail}" ;;
    *) status=FAIL ;;
  esac
  [ -n "$detail" ] || detail="$(grep -v '^\s*$' "$WORK/$name.log" | tail -1)"
  [ "$status" = FAIL ] && FAILED=1
  say "$(printf '%-6s %-15s %4d s  %s' "$status" "$name" $((SECONDS - t0)) "$detail")"
  grep -h '^TARGET \|^FIGURE ' "$WORK/$name.log" | tee -a "$SUMMARY"
}

# All checks in one function, called on the script's last line: bash has read the whole file
# before the first check starts, so editing the script during a run cannot derail it.
run_all() {
  say "gpu_check on $GPU_CHECK_DEVICE, $(date -u +%Y-%m-%dT%H:%M:%SZ), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
  # What only a GPU can show comes first; each of these skips at once on the CPU dry run.
  check env 60
  check gpus-1 90
  check sync-debug 150
  check precision 120
  check two-procs 150
  check bn-bench 150
  check compile 240
  # End to end through the CLI, then the benchmarks.
  check pretrain-device 150
  check resume 200
  check pretrain-host 150
  check linear-eval 120
  check features 90
  check gpus-2 60
  check bench-pretrain 300
  check bench-linear 240
  say "gpu_check: $([ $FAILED = 0 ] && echo 'no check failed' || echo 'some checks FAILED') in $((SECONDS - START)) s"
  return $FAILED
}

run_all; exit $?
