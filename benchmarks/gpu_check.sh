#!/usr/bin/env bash
# simclr-cli on one NVIDIA GPU: every CUDA path, end to end, in one command (< 8 minutes).
#
#   bash benchmarks/gpu_check.sh OUTDIR        # from any working directory; OUTDIR is created
#   GPU_CHECK_DEVICE=cpu bash benchmarks/gpu_check.sh OUTDIR   # dry run of the script on a CPU
#
# Prints one summary line per check (PASS / FAIL / SKIP / INFO / TARGET) and writes them to
# OUTDIR/summary.txt; OUTDIR/log.txt holds every check's full output, OUTDIR/pretrain_bench.json
# the benchmark's figures. Exit status 0 when no check failed. All checks together get
# GPU_CHECK_BUDGET seconds (default 450): each has its own time limit, cut to what is left of
# the budget, and checks that find less than 20 s left are skipped, so the whole run stays under
# 8 minutes. PYTHON overrides the interpreter.
#
# Dependencies. A GPU machine with PyTorch may lack pydantic, pydantic-core, annotated-types,
# typing-inspection and platformdirs. Bring them as wheels (the device's Python is 3.12, x86-64):
#   here, in the repository root (the wheels then travel with the working tree, 2.8 MiB):
#     echo /.whl/ >> .git/info/exclude
#     python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 \
#       --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
#       --platform manylinux2014_x86_64 -d .whl pydantic==2.14.4 pydantic-core==2.50.5 \
#       annotated-types==0.8.0 typing-inspection==0.4.5 platformdirs==4.14.9
#   there (the device tool: carry [".whl"]), as the command:
#     python3 -m pip install -q --no-index --no-deps --find-links .whl --target /tmp/site \
#       pydantic pydantic-core annotated-types typing-inspection platformdirs \
#       && export PYTHONPATH=/tmp/site && bash benchmarks/gpu_check.sh "$OUT"
#   (typer, rich, numpy, pillow, torchvision and typing-extensions are in its image; if
#   pydantic is missing and a .whl folder (or $WHEELS) exists, this script installs from it.)
#
# Checks, in this order (the later ones are skipped first when time runs out):
#   env             GPU, torch, CUDA and dependency versions
#   pretrain-device simclr pretrain --dataset shapes --stem cifar --batch-size 512 --epochs 2
#                   --precision bf16 --augment-on device --data-on device: exit 0, data on the
#                   device in config.json, finite weights; images/s from metrics.jsonl
#   sync-debug      steps 2.. of short runs under torch.cuda.set_sync_debug_mode("error"):
#                   device path bf16 and fp32 must not sync; the host path is reported
#   bench-pretrain  benchmarks/pretrain.py --device cuda --steps 15 --warmup 3: Spijkervet-style,
#                   lightly-style, simclr-cli host and device paths, bf16 and fp32 (TARGET lines)
#   bench-linear    benchmarks/linear_eval.py on CUDA (target: >= 20x the Spijkervet protocol)
#   linear-eval     simclr linear-eval of that run on CUDA
#   features        simclr features of that run on CUDA
#   resume          the same run stopped by --max-steps mid-epoch, then --resume auto: reaches
#                   the same step; max |weight diff| to the uninterrupted run (0 = exact)
#   pretrain-host   the same run with --data-on host (DataLoader, --augment-on cpu, 8 workers)
#   gpus-2          --gpus 2 on a one-GPU machine fails with exit 2 and ONE line naming --gpus
#   gpus-1          --gpus 1 runs
#   sync-bn         SyncBatchNorm in a world-size-1 NCCL group equals BatchNorm
#   nccl-step       two NCCL processes on one GPU (or a 1-GPU DDP run) match one process
#   compile         --compile for 10 steps on the device path
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
BUDGET="${GPU_CHECK_BUDGET:-450}"
# A CPU dry run is slower than a GPU at everything: its time limits are scaled by this factor.
SLOW="${GPU_CHECK_SLOW:-$([ "$GPU_CHECK_DEVICE" = cuda ] && echo 1 || echo 6)}"
WORK="$(mktemp -d "${TMPDIR:-/tmp}/simclr-gpu-check.XXXXXX")"
trap 'rm -rf "$WORK"' EXIT
export PYTHONPATH="$ROOT${PYTHONPATH:+:$PYTHONPATH}"
export PYTHONUNBUFFERED=1

WHEELS="${WHEELS:-$ROOT/.whl}"
if ! "$PY" -c "import pydantic, platformdirs" 2>/dev/null && [ -d "$WHEELS" ]; then
  "$PY" -m pip install -q --no-index --no-deps --find-links "$WHEELS" --target "$WORK/site" \
    pydantic pydantic-core annotated-types typing-inspection platformdirs >> "$LOG" 2>&1
  export PYTHONPATH="$PYTHONPATH:$WORK/site"
fi

# Spawned workers re-import the main module, so the checks live in a file, not on stdin.
cat > "$WORK/gpu_check.py" <<'PYEOF'
"""The checks of benchmarks/gpu_check.sh: ``python gpu_check.py WORK CHECK`` runs one check and
prints ``RESULT <one line>`` (exit 0: pass; 77: skipped; anything else: fail)."""

from __future__ import annotations

import copy
import json
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


# ---------------------------------------------------------------------------------------------
# end to end through the CLI


def check_env() -> None:
    import pydantic

    gpu = torch.cuda.get_device_name(0) if CUDA else "CPU dry run"
    if CUDA and not torch.cuda.is_available():
        result("no CUDA device visible", 1)
    count = torch.cuda.device_count() if CUDA else 0
    result(
        f"{gpu} x{count}, torch {torch.__version__}, CUDA {torch.version.cuda}, "
        f"pydantic {pydantic.__version__}, python {sys.version.split()[0]}"
    )


def check_pretrain(data_on: str) -> None:
    out = WORK / f"run-{data_on}"
    augment = ["--augment-on", "device"] if data_on == "device" else ["--augment-on", "cpu"]
    start = time.perf_counter()
    must(pretrain(out, *augment, "--data-on", data_on), f"pretrain --data-on {data_on}")
    wall = time.perf_counter() - start
    resolved = json.loads((out / "config.json").read_text())["resolved"]
    state, step = last_weights(out)
    if resolved["data_on"] != data_on:
        result(f"config.json says data_on {resolved['data_on']} ({resolved['data_on_reason']})", 1)
    if not finite(state) or step != RUN_STEPS:
        result(f"finite weights {finite(state)}, global_step {step} (want {RUN_STEPS})", 1)
    result(
        f"{step} steps in {wall:.0f} s wall, {images_per_s(out):.0f} images/s (median window), "
        f"data_on {resolved['data_on']}: {resolved['data_on_reason']}"
    )


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


def check_resume() -> None:
    straight = WORK / "run-device"
    out = WORK / "run-resume"
    stop = RUN_STEPS // 2 + 3  # inside the second epoch
    args = ("--augment-on", "device", "--data-on", "device")
    must(pretrain(out, *args, "--max-steps", str(stop)), "pretrain --max-steps")
    must(pretrain(out, *args, "--resume", "auto"), "pretrain --resume auto")
    a, step_a = last_weights(straight)
    b, step_b = last_weights(out)
    diff = max((a[k].float() - b[k].float()).abs().max().item() for k in a)
    if step_a != step_b or not finite(b):
        result(f"resumed run ended at step {step_b}, uninterrupted at {step_a}", 1)
    exact = (
        "exact" if diff == 0 else "not bitwise (cuDNN autotuning / atomics; not --deterministic)"
    )
    result(f"stopped at {stop}, resumed to {step_b}: max |weight diff| {diff:.2e} ({exact})")


def check_gpus(n: int) -> None:
    visible = torch.cuda.device_count() if CUDA else 0
    if not CUDA and n == 1:
        result("needs CUDA", SKIP)
    if n > 1 and visible >= n:
        result(f"{visible} GPUs visible: --gpus {n} would run", SKIP)
    proc = pretrain(WORK / f"run-gpus{n}", "--gpus", str(n), "--max-steps", "5",
                    "--augment-on", "device")  # fmt: skip
    if n == 1:
        must(proc, "--gpus 1")
        result("--gpus 1 ran 5 steps")
    err = [ln for ln in proc.stderr.strip().splitlines() if ln.strip()]
    if proc.returncode != 2 or len(err) != 1 or "--gpus" not in err[0]:
        result(f"exit {proc.returncode}, stderr {len(err)} lines: {err[-1:]}", 1)
    result(f"exit 2, one line: {err[0]}")


# ---------------------------------------------------------------------------------------------
# no host sync in the step


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


# ---------------------------------------------------------------------------------------------
# SyncBatchNorm and NCCL (the earlier checks)


def exact_fp32() -> None:
    # TF32 convolutions/matmuls differ at 1e-3; the comparisons need plain float32.
    torch.backends.cudnn.allow_tf32 = False
    torch.backends.cuda.matmul.allow_tf32 = False


def max_diff(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> float:
    assert a.keys() == b.keys(), (sorted(a), sorted(b))
    return max((a[k].float() - b[k].float()).abs().max().item() for k in a)


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
    from simclr_cli import distributed, inference

    device = inference.process_device("cuda")
    g = torch.Generator().manual_seed(0)
    x = (torch.randn(64, 16, 8, 8, generator=g) * 3 + 1).to(device)
    probe = torch.randn(64, 16, 8, 8, generator=g).to(device)
    plain = nn.BatchNorm2d(16).to(device)
    sync = distributed.convert_sync_batchnorm(copy.deepcopy(plain), device)
    assert isinstance(sync, nn.SyncBatchNorm), type(sync)
    assert distributed.world_size() == 1 and distributed.is_initialized()
    return max_diff(run_bn(sync, x, probe), run_bn(plain, x, probe))


def group_plan(world: int) -> Any:
    from simclr_cli import distributed

    port = distributed.find_free_port()
    mode = "spawn" if world > 1 else "env"
    return distributed.LaunchPlan(mode, "nccl", world, world, 0, "127.0.0.1", port, "cli")


def check_sync_bn() -> None:
    from simclr_cli.distributed import launching

    if not CUDA:
        result("needs CUDA and NCCL", SKIP)
    diff = launching._run_in_group(
        sync_bn_worker, None, group_plan(1), 0, 0, timedelta(minutes=2)
    )
    text = f"SyncBatchNorm (NCCL, world size 1) vs BatchNorm: max |diff| = {diff:.2e}"
    result(text, 0 if diff <= 1e-5 else 1)


def small_simclr() -> nn.Module:
    from simclr_cli.model import SimCLR, build_encoder

    torch.manual_seed(0)
    encoder, features = build_encoder("resnet18", "cifar")
    return SimCLR(encoder, features, projection_dim=32, head="v2", hidden_dim=64)


def views() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(1)
    shape = (GLOBAL_PAIRS, 3, 16, 16)
    return torch.rand(shape, generator=g), torch.rand(shape, generator=g)


def simclr_step(model: nn.Module, bare: nn.Module, rows: slice) -> dict[str, Any]:
    from simclr_cli import distributed
    from simclr_cli.loss import nt_xent
    from simclr_cli.optim import LARS, param_groups

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
    from torch.nn.parallel import DistributedDataParallel

    from simclr_cli import distributed, inference

    exact_fp32()
    device = inference.process_device("cuda")
    model = distributed.convert_sync_batchnorm(small_simclr().to(device), device)
    # DDP even at world size 1 (wrap_ddp would skip it): this is the 1-GPU DDP run.
    ddp = DistributedDataParallel(model, device_ids=[device.index])
    n = GLOBAL_PAIRS // distributed.world_size()
    rows = slice(distributed.rank() * n, (distributed.rank() + 1) * n)
    out = simclr_step(ddp, ddp.module, rows)
    assert not any(k.startswith("module.") for k in out["w"])
    torch.save(out, Path(cfg.out) / f"step_rank{distributed.rank()}.pt")


def compare_step(world: int, reference: dict[str, Any], how: str) -> None:
    got = torch.load(WORK / "step_rank0.pt", weights_only=True)
    loss_diff = (got["loss"] - reference["loss"]).abs().item()
    grad_diff = max_diff(got["grads"], reference["grads"])
    weight_diff = max_diff(got["w"], reference["w"])
    worst = max(loss_diff, grad_diff, weight_diff)
    text = f"{how} vs 1 process: |loss diff| {loss_diff:.2e}, max |grad diff| {grad_diff:.2e}, "
    text += f"max |weight diff after LARS| {weight_diff:.2e}"
    result(text, 0 if worst <= GPU_TOL else 1)


def check_nccl_step() -> None:
    from simclr_cli.distributed import launching
    from simclr_cli.errors import DistributedError

    if not CUDA:
        result("needs CUDA and NCCL", SKIP)
    exact_fp32()
    model = small_simclr().cuda()
    reference = simclr_step(model, model, slice(None))
    cfg = SimpleNamespace(out=str(WORK))
    try:
        launching._spawn(step_worker, cfg, group_plan(2), timedelta(seconds=90))
        compare_step(2, reference, "2 NCCL processes on one GPU")
    except DistributedError as err:
        print(f"2 NCCL processes on one GPU refused ({err}); running 1-GPU DDP instead")
    launching._run_in_group(step_worker, cfg, group_plan(1), 0, 0, timedelta(minutes=2))
    compare_step(1, reference, "1-GPU DDP (2 NCCL ranks on one GPU refused)")


# ---------------------------------------------------------------------------------------------
# benchmarks and --compile


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


def check_compile() -> None:
    if not CUDA:
        result("skipped on the CPU dry run (inductor needs minutes there)", SKIP)
    out = WORK / "run-compile"
    proc = pretrain(out, "--compile", "--max-steps", "10", "--augment-on", "device",
                    "--data-on", "device")  # fmt: skip
    must(proc, "pretrain --compile")
    state, step = last_weights(out)
    result(f"{step} compiled steps, weights finite {finite(state)}", 0 if finite(state) else 1)


CHECKS = {
    "env": check_env,
    "pretrain-device": lambda: check_pretrain("device"),
    "linear-eval": check_linear_eval,
    "features": check_features,
    "resume": check_resume,
    "pretrain-host": lambda: check_pretrain("host"),
    "sync-debug": check_sync_debug,
    "gpus-2": lambda: check_gpus(2),
    "gpus-1": lambda: check_gpus(1),
    "sync-bn": check_sync_bn,
    "nccl-step": check_nccl_step,
    "bench-pretrain": lambda: check_bench_pretrain(sys.argv[3]),
    "bench-linear": check_bench_linear,
    "compile": check_compile,
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
  check env 60
  check pretrain-device 150
  check sync-debug 150
  check bench-pretrain 300
  check bench-linear 240
  check linear-eval 120
  check features 90
  check resume 200
  check pretrain-host 150
  check gpus-2 60
  check gpus-1 90
  check sync-bn 90
  check nccl-step 150
  check compile 240
  say "gpu_check: $([ $FAILED = 0 ] && echo 'no check failed' || echo 'some checks FAILED') in $((SECONDS - START)) s"
  return $FAILED
}

run_all; exit $?
