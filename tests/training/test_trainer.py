"""The training step itself: what runs under autocast, what it hands to torch, and the grad
scaler of fp16, through the real :class:`~simclr_cli.training.trainer.Trainer` on the CPU.

bf16 and fp16 autocast both run on the CPU (torch 2.14), with ``torch.amp.GradScaler("cpu")``
for fp16, so the mixed-precision logic of a GPU run is exercised here without one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from torch.optim.optimizer import register_optimizer_step_pre_hook
from train_fixtures import config, tiny_simclr

from simclr_cli.method.loss import NTXentLoss, nt_xent
from simclr_cli.training import pretrain as train


class RecordingLoss(NTXentLoss):
    """NT-Xent that keeps its inputs ``z_i``, ``z_j`` and, from the backward pass, the gradient
    reaching them and whether autocast was on while it was computed."""

    records: list[dict[str, Any]] = []

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        record: dict[str, Any] = {"z": (z_i.detach().clone(), z_j.detach().clone()), "grad": {}}
        for name, z in (("i", z_i), ("j", z_j)):
            z.register_hook(lambda grad, name=name: record["grad"].update({name: grad.clone()}))
            z.register_hook(lambda grad: record.update(autocast=torch.is_autocast_enabled("cpu")))
        type(self).records.append(record)
        return super().forward(z_i, z_j)


@pytest.fixture
def recording_loss(monkeypatch: pytest.MonkeyPatch) -> type[RecordingLoss]:
    monkeypatch.setattr(train, "build_simclr", tiny_simclr)
    loss = type("Recording", (RecordingLoss,), {"records": []})
    monkeypatch.setattr(train, "NTXentLoss", loss)
    return loss


def relative_error(got: torch.Tensor, want: torch.Tensor) -> float:
    return ((got.double() - want.double()).norm() / want.double().norm()).item()


def test_backward_and_optimizer_step_run_outside_autocast(
    recording_loss: type[RecordingLoss], tmp_path: Path
) -> None:
    """Through the real loop (``run_epoch`` -> ``step``) with bf16 autocast on the CPU."""
    optimizer_autocast: list[bool] = []

    def before_step(optimizer: Any, args: Any, kwargs: Any) -> None:
        optimizer_autocast.append(torch.is_autocast_enabled("cpu"))

    hook = register_optimizer_step_pre_hook(before_step)
    try:
        cfg = config(tmp_path, precision="bf16", max_steps=2)
        train.run_pretrain(cfg)
    finally:
        hook.remove()

    records = recording_loss.records
    assert len(records) == 2 and optimizer_autocast == [False, False]
    for record in records:
        assert record["autocast"] is False  # the backward pass ran without autocast
        z_i, z_j = record["z"]
        assert z_i.dtype == torch.bfloat16  # the forward pass did run under autocast
        # The float32 loss of these very projections, differentiated without autocast.
        z_i, z_j = z_i.clone().requires_grad_(True), z_j.clone().requires_grad_(True)
        nt_xent(z_i, z_j, cfg.temperature).backward()
        for name, want in (("i", z_i.grad), ("j", z_j.grad)):
            assert want is not None
            # Float32 round-off (the same float32 ops); a bf16 backward is off by ~1e-3.
            assert relative_error(record["grad"][name], want) <= 1e-6, name


class Recorded(torch.Tensor):
    """A tensor that notes the ``.to`` and ``torch.cat`` calls it takes part in."""

    calls: list[tuple[str, Any]] = []

    @classmethod
    def __torch_function__(
        cls, func: Any, types: Any, args: Any = (), kwargs: dict[str, Any] | None = None
    ) -> Any:
        kwargs = kwargs or {}
        if func is torch.Tensor.to:
            cls.calls.append(("to", kwargs.get("non_blocking")))
        elif func is torch.cat:
            cls.calls.append(("cat", len(args[0])))
        return super().__torch_function__(func, types, args, kwargs)


def test_each_view_crosses_to_the_device_before_they_are_joined(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train, "build_simclr", tiny_simclr)
    trainer = train.build_trainer(config(tmp_path, augment_on="cpu"))
    (x_i, x_j), labels = next(iter(trainer.data.loader))
    monkeypatch.setattr(Recorded, "calls", [])
    x = trainer.views(((x_i.as_subclass(Recorded), x_j.as_subclass(Recorded)), labels))

    # Not torch.cat on the host and one copy of the result: that is a new, unpinned tensor.
    assert Recorded.calls == [("to", True), ("to", True), ("cat", 2)]
    assert torch.equal(x.as_subclass(torch.Tensor), torch.cat([x_i, x_j]))


# ----------------------------------------------------------------------------------------------
# mixed precision: bf16, and fp16 with its grad scaler, on the CPU


def parameters(trainer: Any) -> dict[str, torch.Tensor]:
    return {k: p.detach().clone() for k, p in trainer.net.named_parameters()}


def first_views(trainer: Any) -> torch.Tensor:
    return trainer.views(next(trainer.batches()))


def step_or_skip(trainer: Any, views: torch.Tensor) -> torch.Tensor:
    """``trainer.step(views)``; a kernel this CPU or torch build lacks in the autocast dtype
    skips the case that needs it (and says which), not the others."""
    try:
        return trainer.step(views)
    except (RuntimeError, NotImplementedError) as error:
        if "not implemented for" in str(error):
            pytest.skip(f"{trainer.cfg.resolved_precision} on this CPU: {error}")
        raise


class InfGradientLoss(NTXentLoss):
    """NT-Xent whose backward sends an inf gradient into ``z_i``: the loss stays finite, as in
    an fp16 step whose backward overflows."""

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        return super().forward(InfGradient.apply(z_i), z_j)


class InfGradient(torch.autograd.Function):
    @staticmethod
    def forward(ctx: Any, z: torch.Tensor) -> torch.Tensor:
        return z.view_as(z)

    @staticmethod
    def backward(ctx: Any, grad: torch.Tensor) -> torch.Tensor:
        return grad + torch.inf


@pytest.mark.parametrize("optimizer", ["lars", "adam"])
@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_a_mixed_precision_step_trains_the_float32_weights(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, precision: str, optimizer: str
) -> None:
    monkeypatch.setattr(train, "build_simclr", tiny_simclr)
    trainer = train.build_trainer(config(tmp_path, precision=precision, optimizer=optimizer))
    if precision == "fp16":
        assert isinstance(trainer.scaler, torch.amp.GradScaler) and trainer.scaler.is_enabled()
    else:
        assert trainer.scaler is None  # bf16 has float32's range: nothing to scale
    before = parameters(trainer)
    loss = step_or_skip(trainer, first_views(trainer))

    assert loss.dtype == torch.float32 and torch.isfinite(loss)
    after = parameters(trainer)
    assert all(p.dtype == torch.float32 and torch.isfinite(p).all() for p in after.values())
    assert any(not torch.equal(before[k], after[k]) for k in before)  # the step was taken
    if trainer.scaler is not None:
        assert trainer.scaler.get_scale() == 2.0**16  # no overflow: the scale stays


@pytest.mark.parametrize("optimizer", ["lars", "adam"])
def test_the_scaler_skips_a_step_with_an_inf_gradient_and_halves_its_scale(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, optimizer: str
) -> None:
    monkeypatch.setattr(train, "build_simclr", tiny_simclr)
    trainer = train.build_trainer(config(tmp_path, precision="fp16", optimizer=optimizer))
    views = first_views(trainer)
    before, scale = parameters(trainer), trainer.scaler.get_scale()
    trainer.criterion = InfGradientLoss(trainer.cfg.temperature)
    loss = step_or_skip(trainer, views)

    assert torch.isfinite(loss)
    after = parameters(trainer)
    assert all(torch.equal(before[k], after[k]) for k in before)  # the step was skipped
    assert not trainer.optimizer.state  # and left no momentum or Adam moments behind
    assert trainer.scaler.get_scale() == scale / 2
    trainer.criterion = NTXentLoss(trainer.cfg.temperature)
    step_or_skip(trainer, views)  # the next finite step trains at the lower scale
    assert any(not torch.equal(before[k], p) for k, p in parameters(trainer).items())
    assert trainer.scaler.get_scale() == scale / 2


class InfGradientAt(NTXentLoss):
    """NT-Xent whose ``at``-th call (in this process) sends an inf gradient back."""

    calls = 0
    at = 0

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        type(self).calls += 1
        if type(self).calls == self.at:
            z_i = InfGradient.apply(z_i)
        return super().forward(z_i, z_j)


def test_a_resumed_fp16_run_continues_with_the_scalers_state(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from train_fixtures import STEPS_PER_EPOCH, assert_same_weights

    from simclr_cli.storage.checkpoint import load_checkpoint

    monkeypatch.setattr(train, "build_simclr", tiny_simclr)

    def inf_gradient_at(step: int) -> None:
        monkeypatch.setattr(train, "NTXentLoss", type("Inf", (InfGradientAt,), {"at": step}))

    options = {"precision": "fp16", "optimizer": "lars"}
    inf_gradient_at(2)
    train.run_pretrain(config(tmp_path / "a", **options))
    inf_gradient_at(2)
    stop = STEPS_PER_EPOCH + 2  # inside the second epoch
    train.run_pretrain(config(tmp_path / "b", max_steps=stop, **options))
    inf_gradient_at(0)  # the resumed part has none, as the uninterrupted run's last steps
    train.run_pretrain(config(tmp_path / "b", resume="auto", **options))

    a = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")
    b = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    assert a["global_step"] == b["global_step"] == 2 * STEPS_PER_EPOCH
    # The halved scale of step 2 came through the checkpoint (a fresh scaler starts at 2^16).
    assert a["scaler"] == b["scaler"] and b["scaler"]["scale"] == 2.0**15
    assert_same_weights(a["state_dict"], b["state_dict"])
