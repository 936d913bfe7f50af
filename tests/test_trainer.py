"""The training step itself: what runs under autocast, what it hands to torch, and the grad
scaler of fp16, through the real :class:`~simclr_cli.trainer.Trainer` on the CPU.

bf16 and fp16 autocast both run on the CPU (torch 2.14), with ``torch.amp.GradScaler("cpu")``
for fp16, so the mixed-precision logic of a GPU run is exercised here without one.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import torch
from test_train import config, tiny_simclr
from torch.optim.optimizer import register_optimizer_step_pre_hook

from simclr_cli import train
from simclr_cli.loss import NTXentLoss, nt_xent


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
