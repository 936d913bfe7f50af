"""Tests of simclr_cli.evaluation.metrics: top-k, the confusion matrix and the kNN vote against loop
transcriptions in float64, and the k chosen from the data."""

from __future__ import annotations

import math

import pytest
import torch

from simclr_cli.evaluation import metrics


def knn_reference(bank, bank_labels, query, num_classes, k, temperature):
    """Wu et al. 2018 weighted kNN vote, one query at a time, float64, plain Python."""
    preds = []
    for q in query.double():
        sims = []
        for row, label in zip(bank.double(), bank_labels.tolist(), strict=True):
            sims.append((float(q @ row / (q.norm() * row.norm())), label))
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * num_classes
        for sim, label in sims[:k]:
            votes[label] += math.exp(sim / temperature)
        preds.append(max(range(num_classes), key=lambda c: votes[c]))
    return torch.tensor(preds)


@pytest.mark.parametrize("k", [1, 5, 40, 500])
def test_knn_matches_loop_reference(k, monkeypatch):
    gen = torch.Generator().manual_seed(k)
    bank, query = torch.randn(60, 8, generator=gen), torch.randn(25, 8, generator=gen)
    bank_labels = torch.randint(0, 4, (60,), generator=gen)
    query_labels = torch.randint(0, 4, (25,), generator=gen)
    # A tiny similarity block forces many chunks over the query set.
    monkeypatch.setattr(metrics, "KNN_BLOCK_ELEMENTS", 7 * 60)
    expected = knn_reference(bank, bank_labels, query, 4, min(k, 60), 0.1)
    assert torch.equal(metrics.knn_predict(bank, bank_labels, query, 4, k, 0.1).argmax(1), expected)
    acc = metrics.knn_accuracy(bank, bank_labels, query, query_labels, k=k, temperature=0.1)
    assert acc == pytest.approx((expected == query_labels).double().mean().item())


def test_knn_ignores_unlabelled_rows_and_separates_clusters():
    gen = torch.Generator().manual_seed(0)
    centres = torch.eye(3) * 10
    labels = torch.arange(3).repeat_interleave(20)
    bank = centres[labels] + torch.randn(60, 3, generator=gen)
    query = centres[labels] + torch.randn(60, 3, generator=gen)
    bank_labels = labels.clone()
    bank_labels[:5] = -1  # unlabelled rows leave the bank
    assert metrics.knn_accuracy(bank, bank_labels, query, labels, k=10) == 1.0
    assert math.isnan(metrics.knn_accuracy(bank, torch.full((60,), -1), query, labels))


def test_topk_accuracy_counts_every_row():
    logits = torch.tensor([[0.1, 0.9, 0.0], [0.8, 0.05, 0.15], [0.2, 0.3, 0.5], [0.5, 0.4, 0.1]])
    targets = torch.tensor([1, 2, 0, 1])
    acc = metrics.topk_accuracy(logits, targets, ks=(1, 2, 5))
    assert acc[1] == pytest.approx(1 / 4)  # only row 0
    assert acc[2] == pytest.approx(3 / 4)  # row 1's target is last
    assert acc[5] == 1.0  # k > C counts as C


def test_confusion_matrix_and_per_class_accuracy():
    targets = torch.tensor([0, 0, 0, 1, 1, 2])
    preds = torch.tensor([0, 1, 0, 1, 1, 0])
    cm = metrics.confusion_matrix(preds, targets, 4)
    expected = torch.zeros(4, 4, dtype=torch.long)
    for t, p in zip(targets.tolist(), preds.tolist(), strict=True):
        expected[t, p] += 1
    assert torch.equal(cm, expected) and cm.dtype == torch.int64
    acc = metrics.per_class_accuracy(cm)
    assert acc[:3].tolist() == pytest.approx([2 / 3, 1.0, 0.0])
    assert math.isnan(acc[3])  # class 3 has no test example


def test_knn_k_is_200_capped_at_a_tenth_of_the_smallest_class():
    def labels(*counts):
        return torch.cat([torch.full((n,), c) for c, n in enumerate(counts)])

    assert metrics.knn_k_for(labels(5000, 5000)) == 200  # CIFAR-10-sized classes: the usual k
    assert metrics.knn_k_for(labels(200, 300, 250)) == 20  # the smallest class sets the cap
    assert metrics.knn_k_for(labels(140, 1000)) == 14
    assert metrics.knn_k_for(labels(3, 4)) == 1  # never below one neighbour
    assert (
        metrics.knn_k_for(torch.tensor([-1, -1, 0, 0] + [1] * 50)) == 1
    )  # unlabelled rows ignored
    assert metrics.knn_k_for(labels(5, 5), k=7) == 7  # --knn-k wins
