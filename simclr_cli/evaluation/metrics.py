"""Accuracy of class scores: top-k, the confusion matrix, and the weighted kNN vote.

Pure tensor code over whole sets (no batching or averaging of per-batch accuracies). The kNN
defaults below are the package's one set: ``simclr linear-eval``, the training run's kNN monitor
and the config all read them from here.

torch is imported inside the functions: the config imports the kNN defaults, and
``simclr --help`` must not wait for torch to load.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import TYPE_CHECKING, Any

if TYPE_CHECKING:
    from torch import Tensor

# The kNN vote of Wu et al. 2018 as the SimCLR/MoCo monitors run it: k = 200, temperature 0.1.
# k is capped at a tenth of the smallest class of the bank (see knn_k_for).
KNN_K = 200
KNN_TEMPERATURE = 0.1
# Elements of one (chunk, N_train) similarity block in the kNN vote: ~64 MiB of float32.
KNN_BLOCK_ELEMENTS = 1 << 24


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
    import torch

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


def confusion_csv(names: Sequence[str], matrix: Sequence[Sequence[int]]) -> str:
    """A confusion matrix as CSV: a header of predicted classes, then one row per true class."""
    rows = [",".join(["true\\predicted", *names])]
    rows += [",".join([n, *map(str, r)]) for n, r in zip(names, matrix, strict=True)]
    return "\n".join(rows) + "\n"


# ----------------------------------------------------------------------------------------------
# kNN


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
    import torch
    import torch.nn.functional as F

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
    import torch

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
    k: int | None = None,
    temperature: float = KNN_TEMPERATURE,
    num_classes: int | None = None,
) -> float:
    """Top-1 accuracy of the weighted kNN vote (see :func:`knn_predict`) over the whole test set.

    Reference: Wu et al. 2018, section 3.4; temperature 0.1 as in the SimCLR/MoCo monitors.

    Rows with a negative label (unlabelled) are left out of the bank and of the test set.

    Args:
        train_features: (N, D) features of the bank; train_labels: (N,) their labels.
        test_features: (Q, D) features to classify; test_labels: (Q,) their labels.
        k: neighbours per query; None chooses it from the bank as ``simclr linear-eval`` does
            (:func:`knn_k_for`: 200, at most a tenth of the smallest class).
        temperature: the vote temperature.
        num_classes: C; by default one more than the largest label.

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
    k = knn_k_for(bank_labels, k)
    scores = knn_predict(bank, bank_labels, query, num_classes, k, temperature)
    return (scores.argmax(dim=1).cpu() == query_labels.cpu()).float().mean().item()
