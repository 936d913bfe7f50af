"""The linear probe: a linear classifier on frozen features (Chen et al. 2020, section 4).

The standard protocol (SimCLR section 4 / appendix B.6) freezes the encoder and trains a linear
classifier on its representation ``h``. :func:`probe_features` fits a multinomial logistic
regression on in-memory, standardised features (weight decay chosen on a held-out part of the
train split); :func:`probe_augmented` is the paper's variant with augmented crops every epoch.
"""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from typing import Any

import torch
import torch.nn.functional as F
from torch import Tensor, nn
from torch.utils.data import DataLoader, Dataset

from simclr_cli.data.workers import ignore_stop_signals, worker_batches
from simclr_cli.errors import UsageError
from simclr_cli.evaluation.inference import autocast_dtype, encode
from simclr_cli.evaluation.metrics import topk_accuracy

# Weight decays tried on the held-out part of the train split (standardised features, mean
# cross-entropy): from almost none to strong; the largest is first so fits can warm-start.
WEIGHT_DECAY_GRID = (1e0, 1e-1, 1e-2, 1e-3, 1e-4, 1e-5, 1e-6)
# The weight-decay search fits on at most this many train rows (a fixed random subset) with a
# capped L-BFGS budget per candidate; the final fit uses every row and a larger budget.
SELECTION_ROWS = 10_000
SELECTION_MAX_ITER = 30
FINAL_MAX_ITER = 100


# ----------------------------------------------------------------------------------------------
# standardisation


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
# the two protocols


def probe_features(
    train_h: Tensor,
    train_y: Tensor,
    test_h: Tensor,
    num_classes: int,
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
        num_classes: C.
        seed: fixes the rows of the search, its held-out split and the solver's shuffles.
        fit_kwargs: the solver and its options, by name (see :func:`fit_logistic_regression`).

    Returns:
        ``(test_logits (M, C) on CPU, details)``; details hold the chosen ``weight_decay`` and the
        held-out accuracy of every candidate (``weight_decay_scores``).
    """
    mean, std = fit_standardization(train_h)
    x, x_test = standardize(train_h, mean, std), standardize(test_h.to(train_h.device), mean, std)
    if train_h.shape[0] >= 10:
        rows = torch.randperm(x.shape[0], generator=torch.Generator().manual_seed(seed))
        rows = rows[:SELECTION_ROWS].to(x.device)  # (min(N, SELECTION_ROWS),)
        search = {"max_iter": SELECTION_MAX_ITER, **fit_kwargs}
        wd, scores, init = select_weight_decay(
            x[rows], train_y[rows], num_classes, seed=seed, **search
        )
    else:  # too few rows to hold any out: a middle-of-the-grid decay
        wd, scores, init = 1e-4, {}, None
    # Refit on every train row, warm-started from the held-out search's solution.
    final = {"max_iter": FINAL_MAX_ITER, **fit_kwargs}
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
        with worker_batches(loader) as batches:
            for x, y in batches:
                h = encode(model, x.to(device, non_blocking=True), "encoder", dtype).clone()
                loss = F.cross_entropy(head(standardize(h, mean, std)), y.to(device))
                optimizer.zero_grad(set_to_none=True)
                loss.backward()
                optimizer.step()
                schedule.step()
    with torch.no_grad():
        logits = head(standardize(test_h.to(device), mean, std)).cpu()
    return logits, {"epochs": epochs, "lr": 0.1 * batch_size / 256, "final_loss": loss.item()}
