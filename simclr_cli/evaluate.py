"""Linear evaluation and kNN accuracy of a frozen SimCLR encoder.

The standard protocol (Chen et al. 2020, section 4 / appendix B.6): freeze the encoder, train a
linear classifier on its representation ``h``, report test accuracy. Here the features of the
train and test splits are extracted once, then a multinomial logistic regression is fitted on the
in-memory, standardised features (weight decay chosen on a held-out part of the train split). The
paper's variant with augmented crops every epoch is available as ``protocol="augment"``.

Every function below the "metrics" line is pure tensor code and is what the tests pin down.
"""

from __future__ import annotations

import json
import math
import time
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from simclr_cli import allocator, fileio
from simclr_cli.augment import normalize_uint8, to_uint8_transform
from simclr_cli.data import ignore_stop_signals
from simclr_cli.errors import DatasetError, UsageError

LAYERS = ("encoder", "projection")
# Weight decays tried on the held-out part of the train split (standardised features, mean
# cross-entropy): from almost none to strong; the largest is first so fits can warm-start.
WEIGHT_DECAY_GRID = (1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
# The weight-decay search fits on at most this many train rows (a fixed random subset) with a
# capped L-BFGS budget per candidate; the final fit uses every row and a larger budget.
SELECTION_ROWS = 10_000
SELECTION_MAX_ITER = 30
FINAL_MAX_ITER = 100
# Elements of one (chunk, N_train) similarity block in the kNN vote: ~64 MiB of float32.
KNN_BLOCK_ELEMENTS = 1 << 24
# The kNN vote of Wu et al. 2018 as the SimCLR/MoCo monitors run it: k = 200, temperature 0.1.
# k is capped at a tenth of the smallest class of the bank (see knn_k_for).
KNN_K = 200
KNN_TEMPERATURE = 0.1
# linear-eval warns below this many images per class in either split (``--limit 5``).
FEW_IMAGES_PER_CLASS = 10
# What linear-eval writes: replaced only with --overwrite (the rule `features` follows too).
LINEAR_EVAL_OUTPUTS = ("linear_eval.json", "confusion_matrix.csv")


# ----------------------------------------------------------------------------------------------
# metrics


def topk_accuracy(logits: Tensor, targets: Tensor, ks: Sequence[int] = (1, 5)) -> dict[int, float]:
    """Fraction of rows whose target is among the ``k`` highest logits, for each ``k``.

    Args:
        logits: (N, C) class scores.
        targets: (N,) integer class indices.
        ks: the values of k; a k larger than C counts as C (every class is in the top C).

    Returns:
        ``{k: accuracy}`` with accuracies in [0, 1], over all N rows (no batching, no averaging of
        per-batch accuracies).
    """
    assert logits.ndim == 2 and targets.shape == logits.shape[:1], "logits (N, C), targets (N,)"
    if logits.shape[0] == 0:
        return {k: math.nan for k in ks}
    top = logits.topk(min(max(ks), logits.shape[1]), dim=1).indices  # (N, maxk)
    hits = top == targets.to(top.device).unsqueeze(1)  # (N, maxk)
    return {k: hits[:, : min(k, logits.shape[1])].any(dim=1).float().mean().item() for k in ks}


def confusion_matrix(preds: Tensor, targets: Tensor, num_classes: int) -> Tensor:
    """Counts of (true class, predicted class) pairs.

    Returns:
        (C, C) int64 tensor; row = true class, column = predicted class.
    """
    index = targets.long().cpu() * num_classes + preds.long().cpu()
    counts = torch.bincount(index, minlength=num_classes * num_classes)
    return counts.reshape(num_classes, num_classes)


def per_class_accuracy(confusion: Tensor) -> Tensor:
    """Recall of each class from a confusion matrix (rows = true class).

    Returns:
        (C,) float64 tensor; NaN for a class with no test example.
    """
    support = confusion.sum(dim=1).double()
    return confusion.diagonal().double() / support  # 0/0 -> NaN: class absent from the test set


def knn_predict(
    train_features: Tensor,
    train_labels: Tensor,
    query: Tensor,
    num_classes: int,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
) -> Tensor:
    """Class scores of a weighted k-nearest-neighbour vote with cosine similarity.

    Each query's k most similar training rows vote for their class with weight
    ``exp(similarity / temperature)``.

    Reference: Wu et al. 2018, "Unsupervised Feature Learning via Non-Parametric Instance
    Discrimination", section 3.4 (the kNN monitor used by SimCLR/MoCo codebases).

    Args:
        train_features: (N, D) features of the labelled reference set, L2-normalised or not.
        train_labels: (N,) class indices in [0, num_classes).
        query: (Q, D) features to classify.
        num_classes: C.
        k: neighbours per query (clipped to N).
        temperature: the vote temperature.

    Returns:
        (Q, C) float32 vote totals; the prediction is the argmax.
    """
    bank = F.normalize(train_features.float(), dim=1)  # (N, D)
    labels = train_labels.to(bank.device).long()
    k = min(k, bank.shape[0])
    # Bound the (chunk, N) similarity block so a large test set never materialises Q x N at once.
    chunk = max(1, KNN_BLOCK_ELEMENTS // max(1, bank.shape[0]))
    scores = []
    for start in range(0, query.shape[0], chunk):
        q = F.normalize(query[start : start + chunk].to(bank.device).float(), dim=1)  # (c, D)
        sim, idx = (q @ bank.T).topk(k, dim=1)  # (c, k) each
        weights = (sim / temperature).exp()  # (c, k)
        votes = torch.zeros(q.shape[0], num_classes, device=bank.device)
        scores.append(votes.scatter_add_(1, labels[idx], weights))  # (c, C)
    if not scores:
        return torch.zeros(0, num_classes, device=bank.device)
    return torch.cat(scores)


def knn_k_for(train_labels: Tensor, k: int | None = None) -> int:
    """The number of neighbours of the kNN vote: ``k`` when given, else chosen from the bank.

    The usual k = 200 was set for banks of thousands of images per class (ImageNet, CIFAR). On
    a bank with few images per class most of 200 neighbours are necessarily of other classes
    and the vote measures the class prior more than the features, so the automatic k is 200
    capped at a tenth of the smallest class (at least 1): 200 for CIFAR-10's 5,000 per class,
    20 for 200 per class, 14 for 140.

    Args:
        train_labels: (N,) labels of the bank; negative labels (unlabelled) are ignored.
        k: an explicit k (``--knn-k``), returned as is.
    """
    if k is not None:
        return k
    labels = train_labels[train_labels >= 0].long()
    if labels.numel() == 0:
        return 1
    counts = torch.bincount(labels)
    smallest = int(counts[counts > 0].min())
    return max(1, min(KNN_K, smallest // 10))


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = KNN_K,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy of the weighted kNN vote (see :func:`knn_predict`) over the whole test set.

    Reference: Wu et al. 2018, section 3.4; temperature 0.1 as in the SimCLR/MoCo monitors
    (choose k with :func:`knn_k_for`).

    Rows with a negative label (unlabelled) are left out of the bank and of the test set.

    Returns:
        Accuracy in [0, 1]; NaN when either set has no labelled row.
    """
    train_labels = train_labels.to(train_features.device)
    test_labels = test_labels.to(test_features.device)
    keep_train, keep_test = train_labels >= 0, test_labels >= 0
    if not keep_train.any() or not keep_test.any():
        return math.nan
    bank, bank_labels = train_features[keep_train], train_labels[keep_train]
    query, query_labels = test_features[keep_test], test_labels[keep_test]
    if num_classes is None:
        num_classes = int(max(bank_labels.max(), query_labels.max())) + 1
    scores = knn_predict(bank, bank_labels, query, num_classes, k, temperature)
    return (scores.argmax(dim=1).cpu() == query_labels.cpu()).float().mean().item()


def fit_standardization(features: Tensor, eps: float = 1e-6) -> tuple[Tensor, Tensor]:
    """Per-dimension mean and standard deviation of the training features.

    Returns:
        ``(mean, std)``, each (D,); std is clamped below at ``eps`` so constant dimensions
        (dead ReLUs) map to 0 instead of NaN.
    """
    mean = features.mean(dim=0)
    std = features.std(dim=0, unbiased=False).clamp_min(eps)
    return mean, std


def standardize(features: Tensor, mean: Tensor, std: Tensor) -> Tensor:
    """``(features - mean) / std`` with statistics from :func:`fit_standardization`."""
    return (features - mean) / std


# ----------------------------------------------------------------------------------------------
# logistic regression on in-memory features


def logistic_objective(head: nn.Linear, x: Tensor, y: Tensor, weight_decay: float) -> Tensor:
    """Mean multinomial cross-entropy plus ``weight_decay / 2 * ||W||^2`` (bias not decayed)."""
    return F.cross_entropy(head(x), y) + 0.5 * weight_decay * head.weight.square().sum()


def fit_logistic_regression(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    weight_decay: float,
    solver: str = "lbfgs",
    max_iter: int = 500,
    epochs: int = 100,
    batch_size: int = 512,
    lr: float = 1e-3,
    seed: int = 0,
    init: nn.Linear | None = None,
) -> nn.Linear:
    """Fit a multinomial logistic-regression head on feature tensors already in memory.

    Args:
        x: (N, D) standardised features (not inference tensors: they are saved for backward).
        y: (N,) class indices in [0, num_classes).
        num_classes: C.
        weight_decay: L2 penalty of :func:`logistic_objective`.
        solver: ``"lbfgs"`` (full batch, strong-Wolfe line search, up to ``max_iter`` steps) or
            ``"adam"`` (``epochs`` passes of shuffled mini-batches indexed straight from ``x``,
            cosine-decayed ``lr``; no DataLoader).
        init: a head to start from (warm start along a weight-decay path); copied, not modified.

    Returns:
        An ``nn.Linear(D, C)`` on ``x.device`` with ``requires_grad`` off.
    """
    head = nn.Linear(x.shape[1], num_classes).to(x.device)
    with torch.no_grad():
        if init is None:
            head.weight.zero_(), head.bias.zero_()  # the objective is convex: start at 0
        else:
            head.load_state_dict(init.state_dict())
    with torch.enable_grad():
        if solver == "lbfgs":
            _fit_lbfgs(head, x, y, weight_decay, max_iter)
        elif solver == "adam":
            _fit_adam(head, x, y, weight_decay, epochs, batch_size, lr, seed)
        else:
            raise UsageError("--solver", solver, "use one of: lbfgs, adam")
    return head.requires_grad_(False)


def _fit_lbfgs(head: nn.Linear, x: Tensor, y: Tensor, weight_decay: float, max_iter: int) -> None:
    optimizer = torch.optim.LBFGS(
        head.parameters(),
        lr=1.0,
        max_iter=max_iter,
        history_size=20,
        tolerance_grad=1e-6,
        tolerance_change=1e-10,
        line_search_fn="strong_wolfe",
    )

    def closure() -> Tensor:
        optimizer.zero_grad()
        loss = logistic_objective(head, x, y, weight_decay)
        loss.backward()
        return loss

    optimizer.step(closure)  # one call runs up to max_iter L-BFGS iterations


def _fit_adam(
    head: nn.Linear,
    x: Tensor,
    y: Tensor,
    weight_decay: float,
    epochs: int,
    batch_size: int,
    lr: float,
    seed: int,
) -> None:
    generator = torch.Generator().manual_seed(seed)
    steps_per_epoch = math.ceil(x.shape[0] / batch_size)
    optimizer = torch.optim.Adam(head.parameters(), lr=lr)
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * steps_per_epoch)
    for _ in range(epochs):
        order = torch.randperm(x.shape[0], generator=generator).to(x.device)
        for idx in order.split(batch_size):  # every row once per epoch, last batch kept
            optimizer.zero_grad(set_to_none=True)
            logistic_objective(head, x[idx], y[idx], weight_decay).backward()
            optimizer.step()
            schedule.step()


def holdout_split(n: int, fraction: float, seed: int) -> tuple[Tensor, Tensor]:
    """Random (fit, held-out) index split of ``range(n)``, fixed by ``seed``.

    Returns:
        ``(fit_idx, val_idx)``; the held-out part has ``max(1, round(fraction * n))`` rows and the
        fit part at least one.
    """
    assert n >= 2, "need at least two rows to hold one out"
    n_val = min(n - 1, max(1, round(fraction * n)))
    order = torch.randperm(n, generator=torch.Generator().manual_seed(seed))
    return order[n_val:], order[:n_val]


def select_weight_decay(
    x: Tensor,
    y: Tensor,
    num_classes: int,
    grid: Sequence[float] = WEIGHT_DECAY_GRID,
    val_fraction: float = 0.2,
    seed: int = 0,
    patience: int = 2,
    **fit_kwargs: Any,
) -> tuple[float, dict[float, float], nn.Linear]:
    """Choose the weight decay with the best accuracy on a held-out part of the train split.

    The grid is walked from the strongest decay to the weakest, each fit warm-started from the
    previous one; the walk stops once ``patience`` candidates in a row do not beat the best so
    far (or tie it). Ties in accuracy go to the stronger decay.

    Returns:
        ``(best_weight_decay, {weight_decay: held-out accuracy}, the head fitted with it)``.
    """
    fit_idx, val_idx = holdout_split(x.shape[0], val_fraction, seed)
    fit_idx, val_idx = fit_idx.to(x.device), val_idx.to(x.device)
    scores: dict[float, float] = {}
    heads: dict[float, nn.Linear] = {}
    head = None
    for wd in sorted(grid, reverse=True):
        head = fit_logistic_regression(
            x[fit_idx], y[fit_idx], num_classes, wd, seed=seed, init=head, **fit_kwargs
        )
        heads[wd] = head
        scores[wd] = topk_accuracy(head(x[val_idx]), y[val_idx], ks=(1,))[1]
        values = list(scores.values())
        if len(values) > patience and max(values[-patience:]) <= max(values[:-patience]):
            break  # weaker decay has stopped helping: the rest of the grid would overfit more
    best = max(scores, key=lambda wd: (scores[wd], wd))
    return best, scores, heads[best]


# ----------------------------------------------------------------------------------------------
# feature extraction


def resolve_device(device: str | torch.device) -> torch.device:
    """``"auto"`` -> CUDA when available, else CPU; ``"cuda"`` without a GPU is a usage error."""
    if str(device) == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    resolved = torch.device(device)
    if resolved.type == "cuda" and not torch.cuda.is_available():
        raise UsageError("--device", str(device), "no CUDA device is visible; use --device cpu")
    return resolved


def autocast_dtype(device: torch.device, precision: str = "auto") -> torch.dtype | None:
    """The autocast dtype for inference: bf16 (or fp16) on CUDA, none on CPU or with fp32."""
    if device.type != "cuda" or precision == "fp32":
        return None
    if precision == "fp16":
        return torch.float16
    if precision == "bf16" or torch.cuda.is_bf16_supported():
        return torch.bfloat16
    return torch.float16


def build_loader(
    dataset: Dataset, batch_size: int, device: torch.device, workers: int = 0
) -> DataLoader:
    """A loader over the WHOLE dataset in its own order: no shuffle, last partial batch kept."""
    return DataLoader(
        dataset,
        batch_size=batch_size,
        shuffle=False,
        drop_last=False,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_stop_signals,
    )


def iter_features(
    model: nn.Module,
    loader: DataLoader,
    device: torch.device,
    layer: str = "encoder",
    precision: str = "auto",
) -> Iterator[tuple[Tensor, Tensor]]:
    """Yield ``(features, labels)`` per batch, in loader order, from a frozen SimCLR model.

    The model is put in eval mode for the pass (and its previous mode restored afterwards, so a
    training loop can call this as a monitor). Inputs go channels-last (and under autocast on CUDA).

    Args:
        model: a SimCLR module with ``.encoder`` and ``.projector``.
        layer: ``"encoder"`` for the representation h (B, feature_dim), ``"projection"`` for
            z = g(h) (B, projection_dim).

    Yields:
        ``(features, labels)``: (B, D) float32 and (B,) int64 CPU tensors (-1 = unlabelled).
    """
    if layer not in LAYERS:
        raise UsageError("--layer", layer, "use one of: encoder, projection")
    dtype = autocast_dtype(device, precision)
    was_training = model.training
    model.eval()
    try:
        for x, y in loader:
            out = encode(model, x.to(device, non_blocking=True), layer, dtype).cpu()
            # clone outside inference mode: plain tensors that autograd may save later
            yield out.clone(), torch.as_tensor(y).long().clone()
    finally:
        model.train(was_training)


def encode(model: nn.Module, x: Tensor, layer: str, dtype: torch.dtype | None) -> Tensor:
    """h (or z = g(h)) of a batch already on the model's device, float32, inference mode.

    Args:
        x: (B, 3, H, W) images: uint8 (from :func:`~simclr_cli.augment.to_uint8_transform`;
            scaled and normalised here with the model's ``mean``/``std``) or float (already
            transformed); made channels-last (faster convolutions with cuDNN and oneDNN: 1.3-1.9x
            for a ResNet-18 at 32 px on a 2-core CPU).
        dtype: autocast dtype, or None for full precision.

    Returns:
        (B, D) float32 inference tensor on the same device.
    """
    if x.dtype == torch.uint8:
        x = normalize_uint8(x, model.mean, model.std)
    x = x.contiguous(memory_format=torch.channels_last)
    autocast = torch.autocast(x.device.type, dtype, enabled=dtype is not None)
    with torch.inference_mode(), autocast:
        h = model.encoder(x)  # (B, feature_dim)
        return (h if layer == "encoder" else model.projector(h)).float()


def extract_features(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: str | torch.device,
    layer: str = "encoder",
    workers: int = 0,
    precision: str = "auto",
    description: str | None = None,
) -> tuple[Tensor, Tensor]:
    """Features of every example of ``dataset``, rows in dataset order.

    With ``description``, the batches are counted on the progress display (a bar, or plain
    lines in a log); without, the extraction is silent (the kNN monitor of a training run).

    Returns:
        ``(features, labels)``: (N, D) float32 and (N,) int64 CPU tensors with N = len(dataset)
        (no dropped last batch); label -1 marks an unlabelled example.
    """
    device = resolve_device(device)
    loader = build_loader(dataset, batch_size, device, workers)
    batches = iter_features(model, loader, device, layer, precision)
    parts = list(batches) if description is None else _counted(batches, description, len(loader))
    if not parts:
        raise DatasetError(
            "the dataset is empty; point --dataset/--data-dir at a folder with images"
        )
    features, labels = (torch.cat(p) for p in zip(*parts, strict=True))
    return features, labels


def _counted(batches: Iterator[Any], description: str, total: int) -> list[Any]:
    """``list(batches)``, counting them on a :class:`~simclr_cli.console.StepProgress`."""
    from simclr_cli.console import StepProgress

    parts = []
    with StepProgress(description, total, unit="batch", transient=True) as progress:
        for part in batches:
            parts.append(part)
            progress.update(len(parts))
    return parts


# ----------------------------------------------------------------------------------------------
# the two protocols on a frozen model


def probe_features(
    train_h: Tensor,
    train_y: Tensor,
    test_h: Tensor,
    num_classes: int,
    solver: str = "lbfgs",
    seed: int = 0,
    **fit_kwargs: Any,
) -> tuple[Tensor, dict[str, Any]]:
    """Linear probe on extracted features: standardise, pick the weight decay, refit, predict.

    Reference: Chen et al. 2020 (SimCLR), section 4 "linear evaluation protocol"; the
    held-out weight-decay search and L-BFGS follow the logistic-regression evaluation of
    Kolesnikov et al. 2019 / Radford et al. 2021 (CLIP linear probes).

    Args:
        train_h: (N, D) train features; train_y: (N,) labels in [0, C).
        test_h: (M, D) test features.

    Returns:
        ``(test_logits (M, C) on CPU, details)``; details hold the chosen ``weight_decay`` and the
        held-out accuracy of every candidate (``weight_decay_scores``).
    """
    mean, std = fit_standardization(train_h)
    x, x_test = standardize(train_h, mean, std), standardize(test_h.to(train_h.device), mean, std)
    options = {"solver": solver, **fit_kwargs}
    if train_h.shape[0] >= 10:
        rows = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        rows = rows[:SELECTION_ROWS].to(x.device)  # (min(N, SELECTION_ROWS),)
        search = {"max_iter": SELECTION_MAX_ITER, **options}
        wd, scores, init = select_weight_decay(
            x[rows], train_y[rows], num_classes, seed=seed, **search
        )
    else:  # too few rows to hold any out: a middle-of-the-grid decay
        wd, scores, init = 1e-4, {}, None
    # Refit on every train row, warm-started from the held-out search's solution.
    final = {"max_iter": FINAL_MAX_ITER, **options}
    head = fit_logistic_regression(x, train_y, num_classes, wd, seed=seed, init=init, **final)
    details = {"weight_decay": wd, "weight_decay_scores": {str(k): v for k, v in scores.items()}}
    return head(x_test).cpu(), details


def augmented_transform(
    image_size: int, mean: Sequence[float] | None, std: Sequence[float] | None
) -> Callable[[Any], Tensor]:
    """Training views of the ``augment`` protocol: random resized crop + horizontal flip.

    Reference: Chen et al. 2020, appendix B.6 ("random cropping with resize and random flips").
    """
    from torchvision import transforms

    steps = [
        transforms.RandomResizedCrop(image_size),
        transforms.RandomHorizontalFlip(),
        transforms.ToTensor(),
    ]
    if mean is not None and std is not None:
        steps.append(transforms.Normalize(mean, std))
    return transforms.Compose(steps)


def probe_augmented(
    model: nn.Module,
    train_views: Dataset,
    train_h: Tensor,
    test_h: Tensor,
    num_classes: int,
    epochs: int,
    batch_size: int,
    device: torch.device,
    precision: str = "auto",
    workers: int = 0,
    seed: int = 0,
) -> tuple[Tensor, dict[str, Any]]:
    """The paper's linear evaluation: a linear head trained on freshly augmented crops.

    Each epoch re-augments every training image, encodes it with the frozen encoder and takes
    SGD steps (Nesterov momentum 0.9, lr 0.1 x batch/256, cosine decay, no weight decay) on
    the head alone. Features are standardised with the statistics of the clean train features
    (a fixed affine map, so the classifier stays linear in h). Test logits come from the
    centre-crop test features.

    Reference: Chen et al. 2020, appendix B.6 (linear evaluation protocol).

    Returns:
        ``(test_logits (M, C) on CPU, details)``.
    """
    mean, std = (t.to(device) for t in fit_standardization(train_h))
    head = nn.Linear(train_h.shape[1], num_classes).to(device)
    optimizer = torch.optim.SGD(
        head.parameters(), lr=0.1 * batch_size / 256, momentum=0.9, nesterov=True
    )
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        train_views,
        batch_size,
        shuffle=True,
        generator=generator,
        num_workers=workers,
        pin_memory=device.type == "cuda",
        worker_init_fn=ignore_stop_signals,
    )
    schedule = torch.optim.lr_scheduler.CosineAnnealingLR(optimizer, epochs * len(loader))
    dtype = autocast_dtype(device, precision)
    model.eval()  # BN running statistics stay frozen
    for _ in range(epochs):
        for x, y in loader:
            h = encode(model, x.to(device, non_blocking=True), "encoder", dtype).clone()
            loss = F.cross_entropy(head(standardize(h, mean, std)), y.to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            schedule.step()
    with torch.no_grad():
        logits = head(standardize(test_h.to(device), mean, std)).cpu()
    return logits, {"epochs": epochs, "lr": 0.1 * batch_size / 256, "final_loss": loss.item()}


def classification_metrics(
    logits: Tensor, targets: Tensor, num_classes: int, class_names: Sequence[str] | None = None
) -> dict[str, Any]:
    """Top-1/top-5, per-class accuracy and the confusion matrix of test logits (all rows)."""
    top = topk_accuracy(logits, targets, ks=(1, 5))
    confusion = confusion_matrix(logits.argmax(dim=1), targets, num_classes)
    per_class = per_class_accuracy(confusion)
    names = list(class_names) if class_names else [str(c) for c in range(num_classes)]
    return {
        "top1": top[1],
        "top5": top[5],
        "per_class": [
            {"class": names[c], "accuracy": None if math.isnan(a) else a, "support": int(n)}
            for c, (a, n) in enumerate(
                zip(per_class.tolist(), confusion.sum(1).tolist(), strict=True)
            )
        ],
        "confusion_matrix": confusion.tolist(),
    }


def evaluate_frozen(
    model: nn.Module,
    train: Dataset,
    test: Dataset,
    num_classes: int,
    device: torch.device,
    protocol: str = "features",
    solver: str = "lbfgs",
    batch_size: int = 512,
    epochs: int = 100,
    train_views: Dataset | None = None,
    precision: str = "auto",
    workers: int = 0,
    seed: int = 0,
    knn_k: int | None = None,
    knn_temperature: float = KNN_TEMPERATURE,
    class_names: Sequence[str] | None = None,
) -> dict[str, Any]:
    """Linear and kNN evaluation of a frozen model on a labelled train/test pair.

    The model's weights and buffers are not modified (eval mode, no gradient into it).

    Args:
        train, test: labelled datasets with the test-time transform (centre crop).
        protocol: ``"features"`` (logistic regression on extracted features) or ``"augment"``
            (the paper's SGD on re-augmented crops; needs ``train_views``).
        knn_k: neighbours of the kNN vote; ``None`` chooses it from the train labels
            (:func:`knn_k_for`).

    Returns:
        Metrics over the WHOLE test split: top1, top5, per_class, confusion_matrix, knn_top1,
        plus protocol details and split sizes.
    """
    from simclr_cli.console import phase

    extract = {"device": device, "precision": precision, "workers": workers}
    train_h, train_y = extract_features(
        model, train, batch_size, **extract, description="extracting features (train)"
    )
    test_h, test_y = extract_features(
        model, test, batch_size, **extract, description="extracting features (test)"
    )
    phase(f"fitting the linear classifier ({protocol} protocol)")
    if protocol == "features":
        logits, details = probe_features(
            train_h.to(device), train_y.to(device), test_h, num_classes, solver, seed,
            epochs=epochs,
        )  # fmt: skip
    elif protocol == "augment" and train_views is not None:
        logits, details = probe_augmented(
            model, train_views, train_h, test_h, num_classes, epochs, batch_size, device,
            precision, workers, seed,
        )  # fmt: skip
    else:
        raise UsageError("--protocol", protocol, "use features or augment")
    metrics = classification_metrics(logits, test_y, num_classes, class_names)
    knn_k = knn_k_for(train_y, knn_k)
    metrics["knn_top1"] = knn_accuracy(
        train_h.to(device), train_y, test_h, test_y, knn_k, knn_temperature, num_classes
    )
    return {
        **metrics,
        "protocol": protocol,
        **({"solver": solver} if protocol == "features" else {}),
        **details,
        "knn": {"k": knn_k, "temperature": knn_temperature},
        "train_images": int(train_h.shape[0]),
        "test_images": int(test_h.shape[0]),
        "feature_dim": int(train_h.shape[1]),
        "num_classes": num_classes,
    }


# ----------------------------------------------------------------------------------------------
# baselines: what a pretrained encoder has to beat

# The raw-pixel baseline pools images larger than this side down to it, so its logistic
# regression stays small (3 x 32 x 32 = 3,072 inputs) whatever the image size.
PIXEL_BASELINE_SIZE = 32


def random_encoder(spec: dict[str, Any], seed: int) -> nn.Module:
    """The random-encoder baseline: the checkpoint's architecture and stem with torchvision's
    default initialisation (never zero-initialised residual branches, which make every block
    an identity and, with the ImageNet stem at 32 px, ``h`` a function of one corner), frozen,
    seeded without touching the caller's random stream."""
    from simclr_cli.model import build_simclr

    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = build_simclr(spec, zero_init_residual=False)
    return model.eval().requires_grad_(False)


def pixel_features(dataset: Dataset, batch_size: int, workers: int = 0) -> tuple[Tensor, Tensor]:
    """Raw-pixel features: the test-time uint8 crops in [0, 1], average-pooled to at most
    :data:`PIXEL_BASELINE_SIZE` px, flattened to (N, 3 * S * S) float32 (labels (N,) int64)."""
    loader = build_loader(dataset, batch_size, torch.device("cpu"), workers)
    features, labels = [], []
    for images, targets in loader:
        x = images.float().div_(255.0)  # (B, 3, S, S)
        if x.shape[-1] > PIXEL_BASELINE_SIZE:
            x = F.adaptive_avg_pool2d(x, PIXEL_BASELINE_SIZE)
        features.append(x.flatten(1))
        labels.append(torch.as_tensor(targets, dtype=torch.int64))
    return torch.cat(features), torch.cat(labels)


def pixel_baseline(
    train: Dataset,
    test: Dataset,
    num_classes: int,
    knn_k: int | None = None,
    batch_size: int = 512,
    workers: int = 0,
    solver: str = "lbfgs",
    seed: int = 0,
    knn_temperature: float = KNN_TEMPERATURE,
) -> dict[str, Any]:
    """Top-1, top-5 and kNN accuracy (and the probe's weight decay and k) of the linear probe
    and the kNN vote on raw pixels (:func:`pixel_features`)."""
    train_x, train_y = pixel_features(train, batch_size, workers)
    test_x, test_y = pixel_features(test, batch_size, workers)
    logits, details = probe_features(train_x, train_y, test_x, num_classes, solver, seed)
    top = topk_accuracy(logits, test_y, ks=(1, 5))
    k = knn_k_for(train_y, knn_k)
    knn = knn_accuracy(train_x, train_y, test_x, test_y, k, knn_temperature, num_classes)
    return {
        "top1": top[1], "top5": top[5], "knn_top1": knn, "knn_k": k,
        "weight_decay": details["weight_decay"],
    }  # fmt: skip


def _best_random_baseline(
    spec: dict[str, Any],
    train: Dataset,
    test: Dataset,
    num_classes: int,
    device: torch.device,
    cfg: Any,
    knn_k: int,
) -> dict[str, Any]:
    """The random encoder scored on the checkpoint's normalised inputs and on plain [0, 1]
    inputs, keeping the better linear top-1: a frozen random network is sensitive to the input
    scale (on ``shapes`` at 32 px, 44% against 51%), and the baseline must not be weakened by
    the normalisation the checkpoint happened to be trained with."""
    inputs = {"checkpoint normalisation": spec}
    if spec.get("mean") is not None:
        inputs["[0, 1]"] = {**spec, "mean": None, "std": None}
    best: dict[str, Any] | None = None
    for name, variant in inputs.items():
        model = random_encoder(variant, cfg.seed).to(device, memory_format=torch.channels_last)
        metrics = evaluate_frozen(
            model, train, test, num_classes, device, "features", cfg.solver, cfg.batch_size,
            precision=cfg.resolved_precision, workers=cfg.workers, seed=cfg.seed, knn_k=knn_k,
            knn_temperature=cfg.knn_temperature,
        )  # fmt: skip
        scores = {k: metrics[k] for k in ("top1", "top5", "knn_top1", "weight_decay")}
        scores["inputs"] = name
        if best is None or scores["top1"] > best["top1"]:
            best = scores
    assert best is not None
    return best


def evaluate_baselines(
    kinds: Sequence[str],
    spec: dict[str, Any],
    train: Dataset,
    test: Dataset,
    num_classes: int,
    device: torch.device,
    cfg: Any,
    knn_k: int,
) -> dict[str, dict[str, Any]]:
    """Top-1, top-5 and kNN accuracy of each baseline in ``kinds`` (``random``, ``pixels``),
    with the same splits, probe, seed and k as the checkpoint's own evaluation."""
    results: dict[str, dict[str, Any]] = {}
    if "random" in kinds:
        results["random"] = _best_random_baseline(
            spec, train, test, num_classes, device, cfg, knn_k
        )
    if "pixels" in kinds:
        results["pixels"] = pixel_baseline(
            train, test, num_classes, knn_k, cfg.batch_size, cfg.workers, cfg.solver, cfg.seed,
            cfg.knn_temperature,
        )  # fmt: skip
    return results


# ----------------------------------------------------------------------------------------------
# `simclr linear-eval`


def load_frozen_model(checkpoint_ref: str, cache_dir: Path) -> tuple[nn.Module, dict, Path]:
    """Rebuild the SimCLR model from a checkpoint file or release name alone, frozen.

    Returns:
        ``(model in eval mode with requires_grad off, payload, checkpoint path)``.

    Raises:
        CheckpointError: missing, corrupt, unsafe or not a pretraining checkpoint.
    """
    from simclr_cli.checkpoint import load_checkpoint, load_model
    from simclr_cli.hub import resolve_checkpoint

    path = resolve_checkpoint(checkpoint_ref, cache_dir)
    payload = load_checkpoint(path)
    model = load_model(payload).eval().requires_grad_(False)
    return model, payload, path


def checkpoint_transform(
    payload: dict, image_size: int | None, kind: str, augment: bool = False
) -> Callable[[Any], Tensor]:
    """Test-time or ``augment``-protocol transform at the checkpoint's own image size.

    The test-time transform is resize + centre crop to uint8 tensors; :func:`encode` scales and
    normalises each batch with the model's ``mean``/``std`` (the checkpoint's normalisation,
    ``None``: none). The ``augment`` transform produces normalised float crops itself.
    """
    from simclr_cli.data import default_image_size

    spec = payload["model"]
    size = image_size or spec.get("image_size") or default_image_size(kind)
    mean, std = spec.get("mean"), spec.get("std")
    return augmented_transform(size, mean, std) if augment else to_uint8_transform(size)


def _limited(dataset: Dataset, limit: int | None) -> Dataset:
    from torch.utils.data import Subset

    if limit is None or limit >= len(dataset):  # type: ignore[arg-type]
        return dataset
    return Subset(dataset, range(limit))


def linear_eval_splits(cfg: Any, transform: Callable[[Any], Tensor]) -> tuple[Dataset, Dataset]:
    """The (train, test) datasets a LinearEvalConfig names, both with ``transform``.

    Folders: ``--train-dir``/``--test-dir``, a folder ``--dataset`` with ``--test-dir``, or one
    folder split by ``--val-split`` (stratified, fixed ``--seed``).
    """
    from simclr_cli import data

    if cfg.dataset_kind != "folder":
        kw = {"transform": transform, "limit": cfg.limit}
        return (
            data.build_dataset(cfg.dataset, "train", cfg.data_dir, **kw),
            data.build_dataset(cfg.dataset, "test", cfg.data_dir, **kw),
        )
    train = data.ImageFolderDataset(cfg.train_dir or cfg.dataset, transform)
    if cfg.test_dir is not None:
        test = data.ImageFolderDataset(cfg.test_dir, transform)
        if test.classes != train.classes:
            raise DatasetError(
                f"class subfolders of {cfg.test_dir} ({len(test.classes)}) differ from those of "
                f"the training folder ({len(train.classes)}); use the same class names in both"
            )
    else:
        _require_labels(train, str(cfg.train_dir or cfg.dataset))
        train, test = data.train_test_split(train, cfg.resolved_val_split, seed=cfg.seed)
    return _limited(train, cfg.limit), _limited(test, cfg.limit)


def _require_labels(dataset: Dataset, name: str) -> None:
    from simclr_cli.data import labels_of

    if any(label < 0 for label in labels_of(dataset)):
        raise DatasetError(
            f"{name} has unlabelled images; linear evaluation needs labels: put each class "
            "in its own subfolder (or use `simclr features` for unlabelled images)"
        )


def _parts(dataset: Dataset | None) -> list[Dataset]:
    """The datasets under ``Subset`` and ``ConcatDataset`` wrappers."""
    from torch.utils.data import ConcatDataset, Subset

    if dataset is None:
        return []
    if isinstance(dataset, Subset):
        return _parts(dataset.dataset)
    if isinstance(dataset, ConcatDataset):
        return [part for inner in dataset.datasets for part in _parts(inner)]
    return [dataset]


def class_names(dataset: Dataset | None) -> list[str] | None:
    """The class names a dataset knows (label ``i`` is ``names[i]``), or None."""
    for part in _parts(dataset):
        names = getattr(part, "classes", None)
        if names:
            return [str(n) for n in names]
    return None


def skipped_count(*datasets: Dataset | None) -> int:
    """Unreadable files skipped by the image folders under ``datasets``, each folder once."""
    from simclr_cli.data import skipped_files

    unique = {id(part): part for dataset in datasets for part in _parts(dataset)}
    return sum(skipped_files(part) for part in unique.values())


def report_skipped(*datasets: Dataset | None) -> int:
    """Say once how many unreadable image files were skipped (as ``pretrain`` does)."""
    from simclr_cli.console import get_console
    from simclr_cli.errors import plural

    count = skipped_count(*datasets)
    if count:
        get_console().print(f"[yellow]skipped {plural(count, 'unreadable image file')}")
    return count


def small_data_warning(train_images: int, test_images: int, num_classes: int) -> str | None:
    """A warning when accuracies on so few images (or top-5 of so few classes) mean little."""
    notes = []
    if min(train_images, test_images) < FEW_IMAGES_PER_CLASS * num_classes:
        notes.append(
            f"{train_images} train / {test_images} test images for {num_classes} classes are "
            "too few for top-1, top-5 or kNN accuracy to mean much (raise or drop --limit)"
        )
    if num_classes <= 5:
        notes.append(f"top-5 of {num_classes} classes is always 100%")
    return "; ".join(notes) or None


def run_linear_eval(cfg: Any) -> dict[str, Any]:
    """``simclr linear-eval``: frozen encoder, features once, linear probe, kNN, report.

    Args:
        cfg: a :class:`simclr_cli.config.LinearEvalConfig`.

    Returns:
        A summary (accuracies, split sizes, where the results were written).

    Raises:
        CheckpointError, DatasetError, UsageError: with one-line messages.
    """
    from simclr_cli.console import get_console, phase
    from simclr_cli.data import labels_of

    start = time.perf_counter()
    if cfg.out is not None:  # before the checkpoint is read (or downloaded)
        fileio.refuse_overwrite(cfg.out, LINEAR_EVAL_OUTPUTS, cfg.overwrite)
    phase(f"loading the checkpoint {cfg.checkpoint}")
    model, payload, path = load_frozen_model(cfg.checkpoint, cfg.cache_dir)
    out_dir = linear_eval_dir(cfg.out, path, cfg.cache_dir)
    fileio.refuse_overwrite(out_dir, LINEAR_EVAL_OUTPUTS, cfg.overwrite)
    device = resolve_device(cfg.resolved_device)
    allocator.configure_for(device.type)
    transform = checkpoint_transform(payload, cfg.image_size, cfg.dataset_kind)
    name = str(cfg.dataset or cfg.train_dir)
    phase(f"loading data ({name})")
    train, test = linear_eval_splits(cfg, transform)
    skipped = report_skipped(train, test)
    _require_labels(train, f"{name} (train)")
    _require_labels(test, f"{name} (test)")
    classes = class_names(train)
    num_classes = len(classes) if classes else max(labels_of(train) + labels_of(test)) + 1
    warning = small_data_warning(len(train), len(test), num_classes)  # type: ignore[arg-type]
    if warning:
        get_console().print(f"[yellow]warning: {warning}")
    views = None
    if cfg.protocol == "augment":
        views, _ = linear_eval_splits(
            cfg, checkpoint_transform(payload, cfg.image_size, cfg.dataset_kind, augment=True)
        )
    model = model.to(device, memory_format=torch.channels_last)
    result = evaluate_frozen(
        model, train, test, num_classes, device, cfg.protocol, cfg.solver,
        cfg.batch_size, cfg.resolved_epochs, views, cfg.resolved_precision, cfg.workers,
        cfg.seed, cfg.knn_k, cfg.knn_temperature, classes,
    )  # fmt: skip
    if cfg.baseline:
        phase(f"evaluating the baselines ({', '.join(cfg.baseline)})")
        result["baselines"] = evaluate_baselines(
            cfg.baseline, payload["model"], train, test, num_classes, device, cfg,
            result["knn"]["k"],
        )  # fmt: skip
    result = {"checkpoint": str(path), "dataset": name, **result, "classes": classes}
    result.update(skipped_files=skipped, **({"warning": warning} if warning else {}))
    result["time_s"] = round(time.perf_counter() - start, 3)
    files = write_linear_eval(result, out_dir)
    print_linear_eval(result)
    return linear_eval_summary(result, files)


def linear_eval_dir(out: Path | None, checkpoint_path: Path, cache_dir: Path) -> Path:
    """``--out``, else next to the checkpoint; never inside the checkpoint cache, where results
    of different releases would overwrite each other (``./linear_eval/<name>`` instead)."""
    if out is not None:
        return Path(out)
    cache = Path(cache_dir).expanduser().resolve()
    if checkpoint_path.resolve().is_relative_to(cache):
        return Path("linear_eval") / checkpoint_path.stem
    return checkpoint_path.parent


def linear_eval_summary(result: dict[str, Any], files: dict[str, Path]) -> dict[str, Any]:
    """The few numbers the CLI prints after the run; everything else is in the JSON."""
    keys = ("top1", "top5", "knn_top1", "protocol", "weight_decay", "train_images", "test_images")
    summary = {k: result[k] for k in keys if k in result}
    for kind, metrics in result.get("baselines", {}).items():
        summary[f"{kind}_top1"] = metrics["top1"]
        summary[f"{kind}_knn_top1"] = metrics["knn_top1"]
    if result.get("baselines"):
        summary["verdict"] = baseline_verdict(result)
    return {**summary, "time_s": result["time_s"], **{k: str(v) for k, v in files.items()}}


def write_linear_eval(result: dict[str, Any], out_dir: Path) -> dict[str, Path]:
    """Write ``linear_eval.json`` and ``confusion_matrix.csv`` (rows true, columns predicted)."""
    names = [row["class"] for row in result["per_class"]]
    rows = [",".join(["true\\predicted", *names])]
    rows += [
        ",".join([n, *map(str, r)]) for n, r in zip(names, result["confusion_matrix"], strict=True)
    ]
    return {
        "results": fileio.write_text_atomic(
            out_dir / "linear_eval.json", json.dumps(result, indent=2)
        ),
        "confusion": fileio.write_text_atomic(
            out_dir / "confusion_matrix.csv", "\n".join(rows) + "\n"
        ),
    }


def print_linear_eval(result: dict[str, Any]) -> None:
    """Per-class accuracy and the headline numbers as a rich table on stdout (rank 0)."""
    from rich.table import Table

    from simclr_cli.console import stdout_console

    table = Table(title=f"Linear evaluation ({result['protocol']}) of {result['checkpoint']}")
    table.add_column("class")
    table.add_column("accuracy", justify="right")
    table.add_column("test images", justify="right")
    for row in result["per_class"]:
        acc = "-" if row["accuracy"] is None else f"{100 * row['accuracy']:.2f}%"
        table.add_row(row["class"], acc, str(row["support"]))
    table.add_section()
    table.add_row("[bold]top-1", f"[bold]{100 * result['top1']:.2f}%", str(result["test_images"]))
    table.add_row("top-5", f"{100 * result['top5']:.2f}%", str(result["test_images"]))
    knn = result["knn"]
    table.add_row(
        f"kNN (k={knn['k']}, T={knn['temperature']})", f"{100 * result['knn_top1']:.2f}%", ""
    )
    stdout_console().print(table)  # with the summary, so `> results.txt` keeps both
    if result.get("baselines"):
        stdout_console().print(baseline_table(result))


BASELINE_NAMES = {"random": "random encoder (default init)", "pixels": "raw pixels"}


def baseline_verdict(result: dict[str, Any]) -> str:
    """One line: linear / kNN top-1 of the checkpoint, then of each baseline with the gap."""

    def pct(m: dict[str, Any]) -> str:
        return f"{100 * m['top1']:.1f}% / {100 * m['knn_top1']:.1f}%"

    parts = [f"this checkpoint {pct(result)} (linear / kNN top-1)"]
    for kind, m in result["baselines"].items():
        gap = [100 * (result[k] - m[k]) for k in ("top1", "knn_top1")]
        parts.append(f"{BASELINE_NAMES[kind]} {pct(m)} ({gap[0]:+.1f} / {gap[1]:+.1f} points)")
    return "; ".join(parts)


def baseline_table(result: dict[str, Any]) -> Any:
    """The checkpoint's accuracies beside those of the baselines, one row each."""
    from rich.table import Table

    table = Table(title="Against baselines (same splits, probe and kNN)")
    for column in ("encoder", "linear top-1", "top-5", f"kNN (k={result['knn']['k']})"):
        table.add_column(column, justify="left" if column == "encoder" else "right")
    rows = [
        ("this checkpoint", result),
        *((BASELINE_NAMES[k], v) for k, v in result["baselines"].items()),
    ]
    for name, m in rows:
        table.add_row(name, *(f"{100 * m[k]:.2f}%" for k in ("top1", "top5", "knn_top1")))
    return table
