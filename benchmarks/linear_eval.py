"""Linear evaluation: simclr-cli's protocol vs the protocol of Spijkervet/SimCLR, same run.

Both protocols evaluate the SAME frozen encoder on the SAME images (``shapes``, the test-time
transform of the checkpoint):

- ours: ``h`` extracted once per split (encoder only, inference mode, channels-last, uint8 crops
  from the loader normalised per batch, whole splits), then a
  multinomial logistic regression on standardised in-memory features (full-batch L-BFGS, weight
  decay chosen on 20% of the train split from a 6-value grid, refit), plus the kNN monitor.
- reference (Spijkervet/SimCLR ``linear_evaluation.py``): features from ``model(x, x)`` (both
  branches, so the encoder runs twice) over loaders with ``drop_last=True`` (train shuffled),
  ``.numpy()`` arrays wrapped in a ``TensorDataset``/``DataLoader`` (batch 256, not shuffled),
  ``nn.Linear`` trained for 500 epochs of Adam (lr 3e-4) on raw features; test accuracy averaged
  over per-batch accuracies of the dropped-last-batch test loader.

Each protocol runs in its own process (seeded, so both see the same encoder). Ours keeps freed
memory for reuse on the CPU, as ``simclr linear-eval`` does (:mod:`simclr_cli.allocator`); the
reference leaves malloc as it is, and ``--reference-keep-freed-memory`` also times it with that
setting.

Printed: wall time of each phase and the whole protocol, the ratio, peak resident size, and test
accuracy (the reference's own number and its classifier's accuracy over the whole test split).

Usage: ``python benchmarks/linear_eval.py [--train 2000] [--test 1000] [--stem cifar]
[--checkpoint PATH] [--epochs 500] [--threads 2] [--device cuda] [--workers 8]
[--reference-keep-freed-memory]``
"""

from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torchvision import transforms

from simclr_cli import allocator
from simclr_cli.data.datasets import build_dataset
from simclr_cli.data.facts import normalization
from simclr_cli.evaluation import inference, metrics, probe
from simclr_cli.method.model import build_simclr, model_spec
from simclr_cli.method.preprocess import to_uint8_transform

from procmem import peak_rss_gib, run_fresh


class TwoBranch(nn.Module):
    """The reference's model interface: ``forward(x_i, x_j) -> (h_i, h_j, z_i, z_j)``."""

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.encoder, self.projector = model.encoder, model.projector

    def forward(self, x_i: torch.Tensor, x_j: torch.Tensor) -> tuple[torch.Tensor, ...]:
        h_i, h_j = self.encoder(x_i), self.encoder(x_j)
        return h_i, h_j, self.projector(h_i), self.projector(h_j)


def reference_features(
    model: TwoBranch, loader: DataLoader, device: torch.device
) -> tuple[np.ndarray, np.ndarray]:
    """Spijkervet's ``inference``: per batch ``model(x, x)``, h to numpy, labels to numpy."""
    feature_vector, labels_vector = [], []
    for x, y in loader:
        x = x.to(device)
        with torch.no_grad():
            h, _, z, _ = model(x, x)
        feature_vector.extend(h.detach().cpu().numpy())
        labels_vector.extend(y.numpy())
    return np.array(feature_vector), np.array(labels_vector)


def reference_protocol(
    model: nn.Module, train, test, epochs: int, seed: int, device: torch.device, workers: int
) -> dict:
    """Spijkervet/SimCLR's linear evaluation, transcribed (model in eval mode as there)."""
    torch.manual_seed(seed)
    two = TwoBranch(model).eval()
    start = time.perf_counter()
    loader = {"batch_size": 256, "drop_last": True, "num_workers": workers}
    train_loader = DataLoader(train, shuffle=True, **loader)
    test_loader = DataLoader(test, shuffle=False, **loader)
    x_train, y_train = reference_features(two, train_loader, device)
    x_test, y_test = reference_features(two, test_loader, device)
    extracted = time.perf_counter()
    arrays_train = TensorDataset(torch.from_numpy(x_train), torch.from_numpy(y_train))
    arrays_test = TensorDataset(torch.from_numpy(x_test), torch.from_numpy(y_test))
    arrays_train_loader = DataLoader(arrays_train, batch_size=256, shuffle=False)
    arrays_test_loader = DataLoader(arrays_test, batch_size=256, shuffle=False)
    head = nn.Linear(x_train.shape[1], 10).to(device)
    optimizer = torch.optim.Adam(head.parameters(), lr=3e-4)
    criterion = nn.CrossEntropyLoss()
    for _ in range(epochs):
        head.train()
        for x, y in arrays_train_loader:
            optimizer.zero_grad()
            x, y = x.to(device), y.to(device)
            output = head(x)
            loss = criterion(output, y)
            _ = (output.argmax(1) == y).sum().item() / y.size(0)  # per-step accuracy, as there
            loss.backward()
            optimizer.step()
    head.eval()
    accuracies = []
    for x, y in arrays_test_loader:
        x, y = x.to(device), y.to(device)
        with torch.no_grad():
            accuracies.append((head(x).argmax(1) == y).sum().item() / y.size(0))
    done = time.perf_counter()
    full_test = whole_split_accuracy(head, model, test, device)
    return {
        "extract_s": extracted - start,
        "classifier_s": done - extracted,
        "total_s": done - start,
        "reported_top1": float(np.mean(accuracies)),
        "test_images_counted": len(arrays_test),
        "whole_test_top1": full_test,
    }


def whole_split_accuracy(head: nn.Module, model: nn.Module, test, device: torch.device) -> float:
    """Accuracy of a head on raw h over EVERY test image (not timed)."""
    h, y = inference.extract_features(model, test, 512, device)
    with torch.no_grad():
        return (head(h.to(device)).argmax(1).cpu() == y).float().mean().item()


def our_protocol(
    model: nn.Module, train, test, seed: int, device: torch.device, workers: int
) -> dict:
    """simclr-cli's ``--protocol features`` path, phase by phase (what evaluate_frozen runs)."""
    start = time.perf_counter()
    train_h, train_y = inference.extract_features(model, train, 512, device, workers=workers)
    test_h, test_y = inference.extract_features(model, test, 512, device, workers=workers)
    extracted = time.perf_counter()
    train_h, train_y = train_h.to(device), train_y.to(device)
    logits, details = probe.probe_features(train_h, train_y, test_h, 10, seed, solver="lbfgs")
    top1 = metrics.topk_accuracy(logits, test_y, ks=(1,))[1]
    probed = time.perf_counter()
    knn = metrics.knn_accuracy(train_h, train_y, test_h, test_y, metrics.KNN_K, num_classes=10)
    if device.type == "cuda":
        torch.cuda.synchronize()
    done = time.perf_counter()
    return {
        "extract_s": extracted - start,
        "classifier_s": probed - extracted,
        "knn_s": done - probed,
        "total_s": done - start,
        "top1": top1,
        "knn_top1": knn,
        "test_images_counted": len(test_y),
        "weight_decay": details["weight_decay"],
    }


def reference_transform(size: int, mean: list | None, std: list | None) -> transforms.Compose:
    """The reference's per-image test-time transform: resize, centre crop, float, normalise."""
    steps = [transforms.Resize(size, antialias=True), transforms.CenterCrop(size)]
    steps.append(transforms.ToTensor())
    if mean is not None and std is not None:
        steps.append(transforms.Normalize(list(mean), list(std)))
    return transforms.Compose(steps)


def frozen_model(args: argparse.Namespace) -> tuple[nn.Module, int, list | None, list | None]:
    """The encoder both protocols share: a checkpoint, or a seeded random ResNet-18."""
    if args.checkpoint:
        model, payload, _ = inference.load_frozen_model(args.checkpoint, Path("."))
        spec = payload["model"]
        return model, spec.get("image_size") or args.image_size, spec["mean"], spec["std"]
    mean, std = normalization("shapes")
    spec = model_spec("resnet18", args.stem, image_size=args.image_size, mean=mean, std=std)
    torch.manual_seed(args.seed)
    return build_simclr(spec).eval().requires_grad_(False), args.image_size, mean, std


PROTOCOLS = ("ours", "reference", "reference+keep")


def run_one(args: argparse.Namespace) -> None:
    """Run one protocol in this process and print its result as a JSON line."""
    torch.set_num_threads(args.threads)
    device = torch.device(args.device)
    if args.protocol == "ours":
        allocator.configure_for(device.type)  # what simclr linear-eval does
    elif args.protocol == "reference+keep":
        allocator.keep_freed_memory()
    model, size, mean, std = frozen_model(args)
    model = model.to(device)
    with torch.inference_mode():  # warm-up: neither protocol pays first-call costs
        warm = torch.rand(8, 3, size, size, device=device)
        model.encoder(warm)
    # The first optimizer step of a process imports torch._dynamo (1.5-3 s here); not timed.
    probe = nn.Parameter(torch.zeros(1))
    probe.grad = torch.ones(1)
    torch.optim.Adam([probe]).step()
    if args.protocol == "ours":
        # simclr-cli crops to uint8 in the loader and scales/normalises whole batches.
        crops = to_uint8_transform(size)
        train = build_dataset("shapes", "train", Path("."), crops, limit=args.train)
        test = build_dataset("shapes", "test", Path("."), crops, limit=args.test)
        result = our_protocol(model, train, test, args.seed, device, args.workers)
    else:
        # The reference transforms each image to a normalised float tensor in the loader.
        transform = reference_transform(size, mean, std)
        train = build_dataset("shapes", "train", Path("."), transform, limit=args.train)
        test = build_dataset("shapes", "test", Path("."), transform, limit=args.test)
        result = reference_protocol(
            model, train, test, args.epochs, args.seed, device, args.workers
        )
    result["peak_rss_gib"] = peak_rss_gib()
    print(json.dumps(result))


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--train", type=int, default=2000, help="train images of shapes")
    parser.add_argument("--test", type=int, default=1000, help="test images of shapes")
    parser.add_argument("--stem", default="cifar", choices=("cifar", "imagenet"))
    parser.add_argument("--image-size", type=int, default=32)
    parser.add_argument("--checkpoint", default=None, help="a pretrained checkpoint (else random)")
    parser.add_argument("--epochs", type=int, default=500, help="reference Adam epochs")
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    parser.add_argument("--workers", type=int, default=0, help="loader workers (both protocols)")
    parser.add_argument(
        "--reference-keep-freed-memory",
        action="store_true",
        help="also time the reference with simclr-cli's malloc setting (simclr_cli.allocator)",
    )
    parser.add_argument("--protocol", choices=PROTOCOLS, help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.protocol:
        return run_one(args)
    source = f"checkpoint {args.checkpoint}" if args.checkpoint else "random init"
    print(f"encoder: resnet18 {args.stem} stem, {args.image_size} px unless the checkpoint "
          f"says otherwise, {source}; shapes {args.train} train / {args.test} test; "
          f"{args.threads} threads, {args.workers} loader workers, device {args.device}; "
          "each protocol in its own process", flush=True)  # fmt: skip
    ours = run_fresh(__file__, "--protocol", "ours")
    ref = run_fresh(__file__, "--protocol", "reference")
    ref_keep = (
        run_fresh(__file__, "--protocol", "reference+keep")
        if args.reference_keep_freed_memory
        else None
    )
    report(ours, ref, args.epochs, ref_keep)


def report(ours: dict, ref: dict, epochs: int, ref_keep: dict | None = None) -> None:
    rows = [
        ("feature extraction", "extract_s"),
        ("classifier", "classifier_s"),
        ("whole protocol", "total_s"),
    ]
    extra = f"{'ref+malloc':>12}{'speed-up':>10}" if ref_keep else ""
    print(f"{'phase':<22}{'ours':>12}{'reference':>12}{'speed-up':>10}{extra}")
    for name, key in rows:
        a, b = ours[key], ref[key]
        line = f"{name:<22}{a:>11.2f}s{b:>11.2f}s{b / a:>9.1f}x"
        if ref_keep:
            line += f"{ref_keep[key]:>11.2f}s{ref_keep[key] / a:>9.1f}x"
        print(line)
    peaks = f"ours {ours['peak_rss_gib']:.2f} GiB, reference {ref['peak_rss_gib']:.2f} GiB"
    peaks += f", reference + malloc setting {ref_keep['peak_rss_gib']:.2f} GiB" if ref_keep else ""
    print(f"peak resident size: {peaks}")
    print(f"(ours includes the kNN monitor: {ours['knn_s']:.2f}s; weight decay "
          f"{ours['weight_decay']:g}; reference: {epochs} Adam epochs)")  # fmt: skip
    print(f"top-1 ours: {100 * ours['top1']:.2f}% over {ours['test_images_counted']} test images"
          f" (kNN {100 * ours['knn_top1']:.2f}%)")  # fmt: skip
    print(f"top-1 reference: {100 * ref['reported_top1']:.2f}% as it reports (mean of per-batch "
          f"accuracies over {ref['test_images_counted']} test images), "
          f"{100 * ref['whole_test_top1']:.2f}% over all test images")  # fmt: skip


if __name__ == "__main__":
    main()
