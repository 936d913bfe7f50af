"""LARS against a float64 reference, parameter groups, lr scaling and the schedule."""

from __future__ import annotations

import io
import math

import pytest
import torch
from torch import nn

from simclr_cli.errors import UsageError
from simclr_cli.method.model import build_simclr, model_spec
from simclr_cli.method.optim import LARS, build_optimizer, param_groups
from simclr_cli.method.schedule import default_base_lr, scaled_lr, warmup_cosine, warmup_steps_for


def grad_fn(w: torch.Tensor, k: int) -> torch.Tensor:
    """A gradient that depends on the weights and the step, shared by LARS and the reference."""
    return torch.sin(3 * w + k) + 0.1 * w**3


def reference_lars(
    weights: list[torch.Tensor],
    excluded: list[bool],
    lrs: list[float],
    momentum: float,
    weight_decay: float,
    eta: float,
) -> list[list[float]]:
    """SGD + momentum with a per-tensor trust ratio, element by element in float64 Python."""
    ws = [[float(v) for v in w.flatten()] for w in weights]
    bufs: list[list[float] | None] = [None] * len(ws)
    for k, lr in enumerate(lrs):
        for t, w in enumerate(ws):
            g = grad_fn(torch.tensor(w, dtype=torch.float64), k).tolist()
            if excluded[t]:
                d = g
            else:
                d = [gi + weight_decay * wi for gi, wi in zip(g, w, strict=True)]
                w_norm = math.sqrt(math.fsum(v * v for v in w))
                d_norm = math.sqrt(math.fsum(v * v for v in d))
                ratio = eta * w_norm / d_norm if w_norm > 0 and d_norm > 0 else 1.0
                d = [ratio * v for v in d]
            old = bufs[t]
            buf = d if old is None else [momentum * b + v for b, v in zip(old, d, strict=True)]
            bufs[t] = buf
            ws[t] = [wi - lr * b for wi, b in zip(w, buf, strict=True)]
    return ws


def run_lars(
    params: list[nn.Parameter], optimizer: torch.optim.Optimizer, lrs: list[float]
) -> None:
    for k, lr in enumerate(lrs):
        for group in optimizer.param_groups:
            group["lr"] = lr
        for p in params:
            p.grad = grad_fn(p.detach(), k)
        optimizer.step()


def test_lars_matches_float64_reference() -> None:
    gen = torch.Generator().manual_seed(0)
    weights = [
        torch.randn(4, 3, generator=gen, dtype=torch.float64),  # adapted
        torch.zeros(2, 2, dtype=torch.float64),  # adapted, zero-initialised
        torch.randn(5, generator=gen, dtype=torch.float64),  # excluded (a bias)
    ]
    excluded = [False, False, True]
    params = [nn.Parameter(w.clone()) for w in weights]
    groups = [
        {"params": params[:2], "weight_decay": 0.05, "lars_exclude": False},
        {"params": params[2:], "weight_decay": 0.0, "lars_exclude": True},
    ]
    lrs = [0.5, 1.0, 2.0, 1.5, 0.25, 0.1]  # a changing lr, as under a schedule
    run_lars(params, LARS(groups, lr=0.0, momentum=0.9, eta=0.02), lrs)
    want = reference_lars(weights, excluded, lrs, momentum=0.9, weight_decay=0.05, eta=0.02)
    for p, w in zip(params, want, strict=True):
        torch.testing.assert_close(p.detach().flatten(), torch.tensor(w, dtype=torch.float64))


class LoopLARS(torch.optim.Optimizer):
    """The previous LARS step: one Python iteration of small kernels per tensor (reference)."""

    def __init__(self, params: list[dict], lr: float, momentum: float, eta: float = 0.001) -> None:
        super().__init__(
            params, {"lr": lr, "momentum": momentum, "eta": eta, "lars_exclude": False}
        )

    @torch.no_grad()
    def step(self, closure: None = None) -> None:  # type: ignore[override]
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                d = p.grad
                if not group["lars_exclude"]:
                    if group["weight_decay"] != 0:
                        d = d.add(p, alpha=group["weight_decay"])
                    w_norm, d_norm = torch.linalg.vector_norm(p), torch.linalg.vector_norm(d)
                    ratio = torch.where(
                        (w_norm > 0) & (d_norm > 0),
                        group["eta"] * w_norm / d_norm.clamp_min(torch.finfo(d_norm.dtype).tiny),
                        torch.ones_like(w_norm),
                    )
                    d = d.mul(ratio)
                state = self.state[p]
                if "momentum_buffer" not in state:
                    state["momentum_buffer"] = d.detach().clone()
                else:
                    state["momentum_buffer"].mul_(group["momentum"]).add_(d)
                p.add_(state["momentum_buffer"], alpha=-group["lr"])


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
def test_foreach_lars_equals_the_per_tensor_loop_on_a_resnet(dtype: torch.dtype) -> None:
    spec = model_spec("resnet18", "cifar", "v2", projection_dim=16, hidden_dim=32)
    torch.manual_seed(3)
    model = build_simclr(spec).to(dtype)
    twin = build_simclr(spec).to(dtype)
    twin.load_state_dict(model.state_dict())
    ours = LARS(param_groups(model, 1e-4), lr=0.0, momentum=0.9, weight_decay=1e-4)
    loop = LoopLARS(param_groups(twin, 1e-4), lr=0.0, momentum=0.9)
    named = dict(twin.named_parameters())
    for k, lr in enumerate([0.5, 1.0, 0.3]):
        for opt in (ours, loop):
            for group in opt.param_groups:
                group["lr"] = lr
        for name, p in model.named_parameters():
            g = grad_fn(p.detach(), k)
            p.grad, named[name].grad = g, g.clone()
        ours.step()
        loop.step()
    tol = {"rtol": 1e-6, "atol": 1e-7} if dtype == torch.float32 else {"rtol": 1e-12, "atol": 0}
    for name, p in model.named_parameters():
        torch.testing.assert_close(p, named[name], **tol, msg=name)


def test_foreach_lars_leaves_the_gradients_unchanged() -> None:
    w = nn.Parameter(torch.randn(3, 3))
    g = torch.randn(3, 3)
    w.grad = g.clone()
    LARS([w], lr=0.1, weight_decay=0.0).step()
    assert torch.equal(w.grad, g)


def test_excluded_parameters_step_like_sgd_momentum() -> None:
    torch.manual_seed(1)
    model = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    twin = nn.Sequential(nn.Linear(6, 4), nn.BatchNorm1d(4), nn.Linear(4, 2))
    twin.load_state_dict(model.state_dict())
    excluded = [p for p in model.parameters() if p.ndim == 1]
    excluded_twin = [p for p in twin.parameters() if p.ndim == 1]
    assert len(excluded) == 4
    lrs = [0.3, 0.6, 0.2, 0.1]
    run_lars(list(model.parameters()), LARS(param_groups(model, 0.1), lr=0.0, momentum=0.9), lrs)
    run_lars(excluded_twin, torch.optim.SGD(excluded_twin, lr=0.0, momentum=0.9), lrs)
    for p, q in zip(excluded, excluded_twin, strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=1e-7)


def test_zero_initialised_weights_still_move() -> None:
    # Spijkervet/SimCLR tests ||w|| >= 0 (always true), so ratio = eta * 0 / ||g|| = 0 freezes them.
    w = nn.Parameter(torch.zeros(3, 3))
    opt = LARS([w], lr=0.1, weight_decay=1e-4)
    w.grad = torch.ones(3, 3)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.full((3, 3), -0.1))


def test_zero_gradient_gives_no_nan() -> None:
    w = nn.Parameter(torch.ones(2, 2))
    opt = LARS([w], lr=0.1)
    w.grad = torch.zeros(2, 2)
    opt.step()
    torch.testing.assert_close(w.detach(), torch.ones(2, 2))


def test_lars_makes_progress_on_rosenbrock() -> None:
    def rosenbrock(p: torch.Tensor) -> torch.Tensor:
        x, y = p[0, 0], p[0, 1]
        return (1 - x) ** 2 + 100 * (y - x**2) ** 2

    p = nn.Parameter(torch.tensor([[-1.5, 2.0]], dtype=torch.float64))
    opt = LARS([p], lr=0.5, momentum=0.9, eta=0.01)
    start = rosenbrock(p).item()
    for _ in range(1000):
        opt.zero_grad()
        rosenbrock(p).backward()
        opt.step()
    assert rosenbrock(p).item() < 1e-3 * start
    assert torch.dist(p.detach(), torch.ones(1, 2, dtype=torch.float64)) < 0.05


def test_step_never_syncs_with_the_host(monkeypatch: pytest.MonkeyPatch) -> None:
    def no_sync(*_args: object) -> None:
        raise AssertionError("LARS.step read a tensor value on the host")

    model = nn.Sequential(nn.Linear(4, 4), nn.BatchNorm1d(4))
    opt = LARS(param_groups(model, 1e-4), lr=0.1)
    model(torch.randn(3, 4)).sum().backward()
    for name in ("item", "tolist", "__bool__", "__float__", "__int__"):
        monkeypatch.setattr(torch.Tensor, name, no_sync)
    opt.step()
    opt.step()


def test_state_dict_round_trips_through_weights_only_load() -> None:
    torch.manual_seed(2)
    model = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3))
    x = torch.randn(6, 5)

    def steps(net: nn.Module, opt: torch.optim.Optimizer, n: int) -> None:
        for _ in range(n):
            opt.zero_grad()
            net(x).square().sum().backward()
            opt.step()

    opt = LARS(param_groups(model, 1e-3), lr=0.2)
    steps(model, opt, 3)
    buffer = io.BytesIO()
    torch.save({"model": model.state_dict(), "optimizer": opt.state_dict()}, buffer)
    buffer.seek(0)
    saved = torch.load(buffer, weights_only=True)
    resumed = nn.Sequential(nn.Linear(5, 3), nn.BatchNorm1d(3))
    resumed.load_state_dict(saved["model"])
    resumed_opt = LARS(param_groups(resumed, 1e-3), lr=0.2)
    resumed_opt.load_state_dict(saved["optimizer"])
    assert resumed_opt.param_groups[1]["lars_exclude"] is True
    steps(model, opt, 2)
    steps(resumed, resumed_opt, 2)
    for p, q in zip(model.parameters(), resumed.parameters(), strict=True):
        torch.testing.assert_close(p, q, rtol=0, atol=0)


def test_param_groups_exclude_biases_and_norms_everywhere() -> None:
    model = build_simclr(model_spec("resnet18", "cifar", head="v2", hidden_dim=32))
    decay, excluded = param_groups(model, weight_decay=1e-6)
    assert (decay["weight_decay"], decay["lars_exclude"]) == (1e-6, False)
    assert (excluded["weight_decay"], excluded["lars_exclude"]) == (0.0, True)
    norm_params = {
        id(p)
        for m in model.modules()
        if isinstance(m, nn.modules.batchnorm._BatchNorm)
        for p in m.parameters()
    }
    trainable = [p for p in model.parameters() if p.requires_grad]
    assert {id(p) for p in excluded["params"]} == {id(p) for p in trainable if id(p) in norm_params}
    assert all(p.ndim > 1 for p in decay["params"])
    assert len(decay["params"]) + len(excluded["params"]) == len(trainable)
    bias_model = nn.Sequential(nn.Linear(3, 3), nn.Linear(3, 3, bias=False))
    assert [len(g["params"]) for g in param_groups(bias_model, 0.1)] == [2, 1]


def test_scaled_lr_rules() -> None:
    assert scaled_lr(0.3, 4096, "linear") == pytest.approx(4.8)
    assert scaled_lr(0.075, 4096, "sqrt") == pytest.approx(4.8)
    assert scaled_lr(0.3, 256, "linear") == pytest.approx(0.3)
    assert scaled_lr(0.075, 256, "sqrt") == pytest.approx(1.2)
    assert default_base_lr("lars", "linear") == 0.3 and default_base_lr("lars", "sqrt") == 0.075
    for name in ("sgd", "adam", "adamw"):
        at_256 = [scaled_lr(default_base_lr(name, r), 256, r) for r in ("linear", "sqrt")]
        assert at_256[0] == pytest.approx(at_256[1])
    with pytest.raises(UsageError, match="--lr-scaling"):
        scaled_lr(0.3, 256, "log")
    with pytest.raises(UsageError, match="--batch-size"):
        scaled_lr(0.3, 0, "linear")
    with pytest.raises(UsageError, match="--optimizer"):
        default_base_lr("rmsprop", "linear")


@pytest.mark.parametrize(
    ("name", "cls"),
    [
        ("lars", LARS),
        ("sgd", torch.optim.SGD),
        ("adam", torch.optim.Adam),
        ("adamw", torch.optim.AdamW),
    ],
)
def test_build_optimizer(name: str, cls: type) -> None:
    model = nn.Sequential(nn.Linear(4, 4), nn.Tanh(), nn.BatchNorm1d(4), nn.Linear(4, 1))
    opt = build_optimizer(model, name, lr=0.01, weight_decay=0.1, momentum=0.9)
    assert type(opt) is cls
    assert [g["weight_decay"] for g in opt.param_groups] == [0.1, 0.0]
    if name == "sgd":
        assert opt.param_groups[0]["nesterov"] and opt.param_groups[0]["momentum"] == 0.9
    before = [p.detach().clone() for p in model.parameters()]
    model(torch.randn(5, 4)).square().mean().backward()
    opt.step()
    assert all(not torch.equal(a, p) for a, p in zip(before, model.parameters(), strict=True))


@pytest.mark.parametrize(
    ("kwargs", "option"),
    [
        ({"optimizer": "rmsprop"}, "--optimizer"),
        ({"lr": -1.0}, "--lr"),
        ({"lr": float("nan")}, "--lr"),
        ({"weight_decay": -1e-6}, "--weight-decay"),
        ({"momentum": -0.9}, "--momentum"),
    ],
)
def test_build_optimizer_rejects_bad_values(kwargs: dict, option: str) -> None:
    args = {"optimizer": "lars", "lr": 0.1, "weight_decay": 0.0, "momentum": 0.9, **kwargs}
    with pytest.raises(UsageError, match=option):
        build_optimizer(nn.Linear(2, 2), **args)


def test_warmup_cosine_values() -> None:
    lr = [warmup_cosine(s, total_steps=110, warmup_steps=10, base_lr=2.0) for s in range(121)]
    assert lr[0] == pytest.approx(0.2)  # step 0 already learns
    assert lr[9] == pytest.approx(2.0) and lr[10] == pytest.approx(2.0)  # end of warmup
    assert lr[60] == pytest.approx(1.0)  # halfway through the cosine
    assert lr[110] == pytest.approx(0.0, abs=1e-12) and lr[120] == 0.0  # end, and past it
    assert all(a < b for a, b in zip(lr[:9], lr[1:10], strict=True))
    assert all(a >= b for a, b in zip(lr[10:-1], lr[11:], strict=True))
    assert warmup_cosine(0, total_steps=100, warmup_steps=0, base_lr=0.5) == pytest.approx(0.5)


@pytest.mark.parametrize(
    ("epochs", "per_epoch", "total", "want"),
    [
        (None, 50, 5000, 500),  # default: the paper's 10 epochs ...
        (None, 50, 1000, 100),  # ... but at most 10% of a short run
        (None, 50, 5, 0),
        (10, 50, 1000, 500),  # an explicit value is used as given
        (0.5, 10, 1000, 5),
        (0, 50, 100, 0),
        (3, 50, 100, 100),  # never longer than the run
    ],
)
def test_default_warmup_is_capped_for_short_runs_an_explicit_one_is_not(
    epochs: float | None, per_epoch: int, total: int, want: int
) -> None:
    assert warmup_steps_for(epochs, per_epoch, total) == want


def test_the_fine_tuning_recipe_follows_the_papers() -> None:
    from simclr_cli.method.schedule import finetune_batch_size, finetune_epochs, finetune_lr

    assert finetune_lr("sgd", 4096) == pytest.approx(0.8)  # SimCLR B.5: 0.05 x B/256
    assert finetune_lr("lars", 1024) == pytest.approx(0.16)  # SimCLRv2: 0.005 x sqrt(B)
    assert (finetune_epochs(0.01), finetune_epochs(0.1)) == (60, 30)  # 1% and 10% of labels
    assert finetune_batch_size(10_000) == 256  # big subsets: the batch of the rule
    assert finetune_batch_size(100) == 25  # small ones: four steps an epoch
    assert finetune_batch_size(5) == 2 and finetune_batch_size(100, 500) == 100
