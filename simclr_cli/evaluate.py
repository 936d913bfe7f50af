"""Linear evaluation and kNN accuracy of a frozen SimCLR encoder.

The standard protocol (Chen et al. 2020, section 4 / appendix B.6): freeze the encoder, train a
linear classifier on its representation ``h``, report test accuracy. Here the features of the
train and test splits are extracted once, then a multinomial logistic regression is fitted on the
in-memory, standardised features (weight decay chosen on a held-out part of the train split). The
paper's variant with augmented crops every epoch is available as ``protocol="augment"``.

Every function below the "metrics" line is pure tensor code and is what the tests pin down.
"""

from __future__ import annotations

import math
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from simclr_cli.errors import DatasetError, UsageError

LAYERS = ("encoder", "projection")
# Weight decays tried on the held-out part of the train split (standardised features, mean
# cross-entropy): from almost none to strong; the largest is first so fits can warm-start.
WEIGHT_DECAY_GRID = (1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
# Elements of one (chunk, N_train) similarity block in the kNN vote: ~64 MiB of float32.
KNN_BLOCK_ELEMENTS = 1 << 24


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
    k: int = 200,
    temperature: float = 0.1,
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


def knn_accuracy(
    train_features: Tensor,
    train_labels: Tensor,
    test_features: Tensor,
    test_labels: Tensor,
    k: int = 200,
    temperature: float = 0.1,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy of the weighted kNN vote (see :func:`knn_predict`) over the whole test set.

    Reference: Wu et al. 2018, section 3.4; k=200, temperature 0.1 as in the SimCLR/MoCo monitors.

    Rows with a negative label (unlabelled) are left out of the bank and of the test set.

    Returns:
        Accuracy in [0, 1]; NaN when either set has no labelled row.
    """
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
    **fit_kwargs: Any,
) -> tuple[float, dict[float, float]]:
    """Choose the weight decay with the best accuracy on a held-out part of the train split.

    The grid is walked from the strongest decay to the weakest, each fit warm-started from the
    previous one. Ties in accuracy go to the stronger decay.

    Returns:
        ``(best_weight_decay, {weight_decay: held-out accuracy})``.
    """
    fit_idx, val_idx = holdout_split(x.shape[0], val_fraction, seed)
    fit_idx, val_idx = fit_idx.to(x.device), val_idx.to(x.device)
    scores: dict[float, float] = {}
    head = None
    for wd in sorted(grid, reverse=True):
        head = fit_logistic_regression(
            x[fit_idx], y[fit_idx], num_classes, wd, seed=seed, init=head, **fit_kwargs
        )
        scores[wd] = topk_accuracy(head(x[val_idx]), y[val_idx], ks=(1,))[1]
    best = max(scores, key=lambda wd: (scores[wd], wd))
    return best, scores


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
    training loop can call this as a monitor). Inputs go channels-last on CUDA, under autocast.

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
    memory_format = torch.channels_last if device.type == "cuda" else torch.contiguous_format
    was_training = model.training
    model.eval()
    try:
        for x, y in loader:
            x = x.to(device, non_blocking=True, memory_format=memory_format)  # (B, 3, H, W)
            with (
                torch.inference_mode(),
                torch.autocast(device.type, dtype, enabled=dtype is not None),
            ):
                h = model.encoder(x)  # (B, feature_dim)
                out = h if layer == "encoder" else model.projector(h)
                out = out.float().cpu()  # a host sync per batch; the copy is what we need anyway
            yield (
                out.clone(),
                torch.as_tensor(y).long().clone(),
            )  # clone: plain, not inference, tensors
    finally:
        model.train(was_training)


def extract_features(
    model: nn.Module,
    dataset: Dataset,
    batch_size: int,
    device: str | torch.device,
    layer: str = "encoder",
    workers: int = 0,
    precision: str = "auto",
) -> tuple[Tensor, Tensor]:
    """Features of every example of ``dataset``, rows in dataset order.

    Returns:
        ``(features, labels)``: (N, D) float32 and (N,) int64 CPU tensors with N = len(dataset)
        (no dropped last batch); label -1 marks an unlabelled example.
    """
    device = resolve_device(device)
    loader = build_loader(dataset, batch_size, device, workers)
    parts = list(iter_features(model, loader, device, layer, precision))
    if not parts:
        raise DatasetError(
            "the dataset is empty; point --dataset/--data-dir at a folder with images"
        )
    features, labels = (torch.cat(p) for p in zip(*parts, strict=True))
    return features, labels
