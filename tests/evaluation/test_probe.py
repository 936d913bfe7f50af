"""Tests of simclr_cli.evaluation.probe: standardisation, the logistic-regression fit against its
optimality
condition and plain gradient descent, and the held-out weight-decay search."""

from __future__ import annotations

import pytest
import torch
from torch import nn

from simclr_cli.errors import UsageError
from simclr_cli.evaluation import probe


def test_standardization_uses_train_statistics():
    gen = torch.Generator().manual_seed(0)
    train = torch.randn(100, 5, generator=gen) * 3 + 7
    train[:, 2] = 4.0  # a dead (constant) dimension
    mean, std = probe.fit_standardization(train)
    z = probe.standardize(train, mean, std)
    assert torch.allclose(z.mean(0), torch.zeros(5), atol=1e-5)
    assert torch.allclose(z[:, [0, 1, 3, 4]].std(0, unbiased=False), torch.ones(4), atol=1e-5)
    assert torch.all(z[:, 2] == 0)
    test = torch.randn(10, 5, generator=gen)
    assert torch.allclose(probe.standardize(test, mean, std), (test - mean) / std)


def separable_problem(n=120, d=6, classes=3, seed=0, noise=1.0):
    gen = torch.Generator().manual_seed(seed)
    y = torch.arange(n) % classes
    x = torch.randn(classes, d, generator=gen)[y] * 2 + noise * torch.randn(n, d, generator=gen)
    return x, y


def objective64(weight, bias, x, y, wd):
    logits = x.double() @ weight.T + bias
    return nn.functional.cross_entropy(logits, y) + 0.5 * wd * weight.square().sum()


def newton_reference(x, y, classes, wd, steps=30):
    """Damped Newton's method in float64 on the same convex objective (21 parameters here)."""
    d = x.shape[1]

    def f(theta):
        return objective64(theta[: classes * d].view(classes, d), theta[classes * d :], x, y, wd)

    theta = torch.zeros(classes * (d + 1), dtype=torch.float64)
    for _ in range(steps):
        grad = torch.autograd.functional.jacobian(f, theta)
        if grad.abs().max() < 1e-12:
            break
        # pinv: the bias is shift-invariant, so the Hessian is singular along (1, ..., 1).
        step = torch.linalg.pinv(torch.autograd.functional.hessian(f, theta)) @ grad
        t = 1.0
        while f(theta - t * step) > f(theta) and t > 1e-8:
            t /= 2
        theta = theta - t * step
    return theta[: classes * d].view(classes, d), theta[classes * d :]


def test_lbfgs_reaches_the_regularised_optimum():
    x, y = separable_problem()
    wd = 1e-2
    head = probe.fit_logistic_regression(x, y, 3, wd, solver="lbfgs")
    w_ref, b_ref = newton_reference(x, y, 3, wd)
    # Softmax is shift-invariant in the bias: compare centred biases.
    assert torch.allclose(head.weight.double(), w_ref, atol=2e-3)
    assert torch.allclose(head.bias.double() - head.bias.mean(), b_ref - b_ref.mean(), atol=2e-3)
    w = head.weight.double().requires_grad_()
    b = head.bias.double().requires_grad_()
    grads = torch.autograd.grad(objective64(w, b, x, y, wd), (w, b))
    assert max(g.abs().max().item() for g in grads) < 1e-4  # stationary point of a convex loss
    assert not head.weight.requires_grad


def test_adam_solver_approaches_lbfgs_objective():
    x, y = separable_problem()
    wd = 1e-2
    lbfgs = probe.fit_logistic_regression(x, y, 3, wd, solver="lbfgs")
    adam = probe.fit_logistic_regression(
        x, y, 3, wd, solver="adam", epochs=200, batch_size=32, lr=0.05, seed=1
    )
    best = objective64(lbfgs.weight.double(), lbfgs.bias.double(), x, y, wd).item()
    got = objective64(adam.weight.double(), adam.bias.double(), x, y, wd).item()
    start = objective64(torch.zeros(3, 6).double(), torch.zeros(3).double(), x, y, wd).item()
    assert best <= got < best + 0.01 * (start - best)


def test_unknown_solver_is_a_usage_error():
    x, y = separable_problem(n=9)
    with pytest.raises(UsageError, match="--solver"):
        probe.fit_logistic_regression(x, y, 3, 0.0, solver="newton")


def test_holdout_split_is_a_fixed_partition():
    fit, val = probe.holdout_split(50, 0.2, seed=3)
    assert len(val) == 10 and len(fit) == 40
    assert sorted(torch.cat([fit, val]).tolist()) == list(range(50))
    assert torch.equal(probe.holdout_split(50, 0.2, seed=3)[1], val)
    assert len(probe.holdout_split(2, 0.01, seed=0)[1]) == 1


def test_weight_decay_selection_rejects_a_crippling_decay():
    x, y = separable_problem(n=150, noise=0.5)
    best, scores, head = probe.select_weight_decay(x, y, 3, grid=(1e3, 1e-3), seed=0)
    assert set(scores) == {1e3, 1e-3}
    assert scores[1e-3] > scores[1e3]
    assert best == 1e-3 and head.weight.abs().max() > 0


def test_weight_decay_search_stops_once_weaker_decay_stops_helping():
    x, y = separable_problem(n=150, noise=0.1)  # every candidate separates the held-out rows
    best, scores, head = probe.select_weight_decay(
        x, y, 3, grid=(1e-1, 1e-2, 1e-3, 1e-4, 1e-5), patience=2
    )
    assert list(scores) == [1e-1, 1e-2, 1e-3] and best == 1e-1
