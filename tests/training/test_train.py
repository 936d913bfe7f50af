"""Tests of the pretraining loop: resume equivalence, signals, non-finite loss, run folder.

Most tests swap the ResNet for a two-convolution encoder (``tiny_simclr``): the loop does not
depend on the encoder, and a ResNet-18 step costs about a second on a shared 2-core CPU. The
run-folder test uses the real ResNet-18, so the checkpoint format is checked end to end.
"""

from __future__ import annotations

import json
import math
import os
import signal
import sys
from functools import partial
from pathlib import Path
from typing import Any

import pytest
import torch
from torch import nn
from train_fixtures import (
    STEPS_PER_EPOCH,
    assert_same_weights,
    config,
    metric_steps,
    tiny_simclr,
    weights,
)

from simclr_cli import errors
from simclr_cli.config import PretrainConfig
from simclr_cli.data import loader
from simclr_cli.data.datasets import ShapesDataset
from simclr_cli.errors import CheckpointError, DatasetError, OutputExistsError, TrainingError
from simclr_cli.method.loss import NTXentLoss
from simclr_cli.method.model import SimCLR
from simclr_cli.storage.checkpoint import load_checkpoint, load_model
from simclr_cli.training import memory, monitor, recipe, resume, runlog
from simclr_cli.training import pretrain as train
from simclr_cli.training.trainer import Trainer


class LossThatMisbehaves(NTXentLoss):
    """NT-Xent that, on its ``at``-th call, sends this process SIGINT or returns NaN."""

    calls = 0
    at = 0
    action = "sigint"

    def forward(self, z_i: torch.Tensor, z_j: torch.Tensor) -> torch.Tensor:
        loss = super().forward(z_i, z_j)
        type(self).calls += 1
        if type(self).calls == self.at:
            if self.action == "sigint":
                os.kill(os.getpid(), signal.SIGINT)  # handled as a stop request, not an exception
            else:
                return loss * math.nan
        return loss


def misbehave(monkeypatch: pytest.MonkeyPatch, action: str, at: int) -> None:
    patched = type("Patched", (LossThatMisbehaves,), {"calls": 0, "at": at, "action": action})
    monkeypatch.setattr(train, "NTXentLoss", patched)


# ----------------------------------------------------------------------------------------------
# resume


@pytest.mark.parametrize("augment_on", ["cpu", "device"])
def test_resume_after_one_epoch_gives_the_same_weights(
    tiny: None, tmp_path: Path, augment_on: str
) -> None:
    straight = train.run_pretrain(config(tmp_path / "a", augment_on=augment_on))
    first = train.run_pretrain(
        config(tmp_path / "b", augment_on=augment_on, max_steps=STEPS_PER_EPOCH)
    )
    after_one = weights(tmp_path / "b" / "checkpoint_last.pt")
    second = train.run_pretrain(config(tmp_path / "b", augment_on=augment_on, resume="auto"))

    assert first["global_step"] == STEPS_PER_EPOCH
    assert second["global_step"] == straight["global_step"] == 2 * STEPS_PER_EPOCH
    assert second["resumed_from"] == str(tmp_path / "b" / "checkpoint_last.pt")
    final = weights(tmp_path / "a" / "checkpoint_last.pt")
    assert_same_weights(final, weights(tmp_path / "b" / "checkpoint_last.pt"))
    # The second epoch changed the weights, so equality above is not trivially true.
    assert not torch.equal(after_one["encoder.0.weight"], final["encoder.0.weight"])
    a_opt = load_checkpoint(tmp_path / "a" / "checkpoint_last.pt")["optimizer"]["state"]
    b_opt = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")["optimizer"]["state"]
    for index in a_opt:
        for name, value in a_opt[index].items():
            assert torch.equal(torch.as_tensor(value), torch.as_tensor(b_opt[index][name]))
    assert metric_steps(tmp_path / "b") == list(range(1, 2 * STEPS_PER_EPOCH + 1))


def test_sigint_mid_epoch_checkpoints_and_resume_matches(
    tiny: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    train.run_pretrain(config(tmp_path / "a"))
    misbehave(monkeypatch, "sigint", at=STEPS_PER_EPOCH + 2)  # inside the second epoch

    # Not always default_int_handler: a shell starts background jobs with SIGINT ignored.
    handler_before = signal.getsignal(signal.SIGINT)
    with pytest.raises(errors.Interrupted) as caught:
        train.run_pretrain(config(tmp_path / "b"))
    assert caught.value.exit_code == 130
    # The whole command that continues the run: its options come from its checkpoint.
    assert str(caught.value).endswith(
        f"continue with: simclr pretrain --resume auto --out {tmp_path / 'b'}"
    )
    assert "\n" not in str(caught.value)
    payload = load_checkpoint(tmp_path / "b" / "checkpoint_last.pt")
    # The step in flight when the signal came was finished, then the run stopped.
    assert payload["global_step"] == STEPS_PER_EPOCH + 2 and payload["epoch"] == 1
    assert signal.getsignal(signal.SIGINT) is handler_before  # handlers restored

    monkeypatch.setattr(train, "NTXentLoss", NTXentLoss)
    train.run_pretrain(config(tmp_path / "b", resume="auto"))
    assert_same_weights(
        weights(tmp_path / "a" / "checkpoint_last.pt"),
        weights(tmp_path / "b" / "checkpoint_last.pt"),
    )
    assert metric_steps(tmp_path / "b") == list(range(1, 2 * STEPS_PER_EPOCH + 1))


# ----------------------------------------------------------------------------------------------
# the device-resident data path (--data-on device)


def test_device_resident_path_trains_the_same_weights_as_the_dataloader(
    tiny: None, tmp_path: Path
) -> None:
    host = train.run_pretrain(config(tmp_path / "host", augment_on="device", data_on="host"))
    dev = train.run_pretrain(config(tmp_path / "dev", augment_on="device", data_on="device"))
    assert host["data_on"].startswith("host") and dev["data_on"].startswith("device")
    assert_same_weights(
        weights(tmp_path / "host" / "checkpoint_last.pt"),
        weights(tmp_path / "dev" / "checkpoint_last.pt"),
    )
    resolved = json.loads((tmp_path / "dev" / "config.json").read_text())["resolved"]
    assert resolved["data_on"] == "device" and "uint8 on cpu" in resolved["data_on_reason"]
    saved = load_checkpoint(tmp_path / "dev" / "checkpoint_last.pt")["config"]["resolved"]
    assert saved["data_on"] == "device"


def test_device_resident_run_resumed_mid_epoch_ends_with_the_same_weights(
    tiny: None, tmp_path: Path
) -> None:
    options = {"augment_on": "device", "data_on": "device"}
    train.run_pretrain(config(tmp_path / "a", **options))
    first = train.run_pretrain(config(tmp_path / "b", max_steps=STEPS_PER_EPOCH + 2, **options))
    assert first["global_step"] == STEPS_PER_EPOCH + 2  # stopped inside the second epoch
    second = train.run_pretrain(config(tmp_path / "b", resume="auto", **options))
    assert second["global_step"] == 2 * STEPS_PER_EPOCH
    assert_same_weights(
        weights(tmp_path / "a" / "checkpoint_last.pt"),
        weights(tmp_path / "b" / "checkpoint_last.pt"),
    )
    assert metric_steps(tmp_path / "b") == list(range(1, 2 * STEPS_PER_EPOCH + 1))


def test_auto_keeps_the_dataloader_on_the_cpu(tiny: None, tmp_path: Path) -> None:
    summary = train.run_pretrain(config(tmp_path, augment_on="device", max_steps=1))
    assert summary["data_on"].startswith("host (auto:")


def test_device_path_step_reads_nothing_on_the_host(
    tiny: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """What a GPU run checks with torch.cuda.set_sync_debug_mode("error"), here on the CPU:
    the views and the step (forward, NT-Xent, backward, LARS) never read a value on the host."""
    from train_fixtures import host_reads_forbidden

    from simclr_cli.method import augment_ops

    # The accelerator branch of the augmentation (the CPU one indexes with nonzero by design).
    monkeypatch.setattr(
        augment_ops, "update_chosen", partial(augment_ops.update_chosen, masked=True)
    )
    calls = []

    def guarded(method: Any) -> Any:
        def run(self: Trainer, *args: Any) -> Any:
            calls.append(method.__name__)
            with host_reads_forbidden():
                return method(self, *args)

        return run

    for name in ("views", "step"):
        monkeypatch.setattr(Trainer, name, guarded(getattr(Trainer, name)))
    train.run_pretrain(config(tmp_path, augment_on="device", data_on="device", max_steps=3))
    assert calls == ["views", "step"] * 3


@pytest.mark.parametrize(("sync_bn", "broadcast"), [(True, False), (False, True)])
def test_ddp_broadcasts_buffers_only_without_global_batch_norm(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, sync_bn: bool, broadcast: bool
) -> None:
    """Global batch norm computes the same running statistics on every rank; plain batch norm
    needs rank 0's broadcast to keep them equal."""
    from simclr_cli import distributed

    handed: dict[str, Any] = {}

    def ddp(module: nn.Module, **kwargs: Any) -> nn.Module:
        handed.update(kwargs)
        return module

    monkeypatch.setattr(distributed.ranks, "DistributedDataParallel", ddp)
    monkeypatch.setattr(distributed.ranks, "world_size", lambda: 2)
    monkeypatch.setattr(distributed, "world_size", lambda: 2)
    cfg = config(tmp_path, sync_bn=sync_bn)
    train.prepare_model(tiny_simclr({}), cfg, torch.device("cpu"))
    assert handed["broadcast_buffers"] is broadcast


# ----------------------------------------------------------------------------------------------
# where the views are made (--augment-on)


def test_augment_on_auto_makes_the_views_on_the_device_on_cuda_only(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    from simclr_cli.config import fields

    cpu = PretrainConfig(device="cpu", out=Path("x"))
    assert cpu.augment_on == "auto" and cpu.resolved_augment_on == "cpu"
    assert cpu.augment_on_reason.startswith("auto: off CUDA")
    resident = PretrainConfig(device="cpu", data_on="device", out=Path("x"))
    assert resident.resolved_augment_on == "device"  # what --data-on device needs
    given = PretrainConfig(device="cpu", augment_on="device", out=Path("x"))
    assert (given.resolved_augment_on, given.augment_on_reason) == ("device", "--augment-on device")
    monkeypatch.setattr(fields, "cuda_available", lambda: True)
    gpu = PretrainConfig(device="cuda", out=Path("x"))
    assert gpu.resolved_augment_on == "device" and "GPU" in gpu.augment_on_reason
    assert (
        PretrainConfig(device="cuda", augment_on="cpu", out=Path("x")).resolved_augment_on == "cpu"
    )


def test_the_summary_and_config_json_say_where_the_views_are_made(
    tiny: None, tmp_path: Path
) -> None:
    summary = train.run_pretrain(config(tmp_path, max_steps=1))
    assert (
        summary["augment_on"]
        == "cpu (auto: off CUDA, per image in DataLoader workers beside the step)"
    )
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["augment_on"] == "auto" and saved["resolved"]["resolved_augment_on"] == "cpu"
    assert saved["resolved"]["augment_on_reason"].startswith("auto: off CUDA")


def forget_augment_on(checkpoint_path: Path) -> None:
    """Make a run look written by a version before ``--augment-on auto`` (default ``cpu``, no
    resolved value recorded)."""
    from simclr_cli.storage.checkpoint import save_checkpoint

    payload = load_checkpoint(checkpoint_path)
    payload["config"]["augment_on"] = "cpu"
    for key in ("resolved_augment_on", "augment_on_reason"):
        del payload["config"]["resolved"][key]
    save_checkpoint(payload, checkpoint_path)


@pytest.mark.parametrize("given", [{}, {"augment_on": "cpu"}])
def test_a_run_from_before_augment_on_auto_resumes_unchanged(
    tiny: None, tmp_path: Path, given: dict[str, str]
) -> None:
    train.run_pretrain(config(tmp_path, max_steps=1))
    forget_augment_on(tmp_path / "checkpoint_last.pt")
    summary = train.run_pretrain(PretrainConfig(out=tmp_path, resume="auto", max_steps=2, **given))
    assert summary["global_step"] == 2 and summary["augment_on"] == "cpu (--augment-on cpu)"


def test_a_resume_may_name_what_auto_resolved_to_but_nothing_else(
    tiny: None, tmp_path: Path
) -> None:
    train.run_pretrain(config(tmp_path, max_steps=1))  # auto: cpu here
    summary = train.run_pretrain(
        PretrainConfig(out=tmp_path, resume="auto", max_steps=2, augment_on="cpu")
    )
    assert summary["global_step"] == 2
    with pytest.raises(CheckpointError, match=r"--augment-on auto \(cpu\) \(given: device\)"):
        train.run_pretrain(PretrainConfig(out=tmp_path, resume="auto", augment_on="device"))


def test_resume_refuses_a_different_global_batch(tiny: None, tmp_path: Path) -> None:
    train.run_pretrain(config(tmp_path, max_steps=1))
    with pytest.raises(CheckpointError, match="--batch-size 12"):
        train.run_pretrain(config(tmp_path, batch_size=8, resume="auto"))


def test_resume_takes_the_runs_options_from_the_run(tiny: None, tmp_path: Path) -> None:
    train.run_pretrain(config(tmp_path, max_steps=2))
    # Only the folder, a longer run and how to run it: the rest comes from the run itself.
    resumed = PretrainConfig(out=tmp_path, resume="auto", epochs=3, log_every=2)
    summary = train.run_pretrain(resumed)
    assert summary["global_step"] == 3 * STEPS_PER_EPOCH
    saved = json.loads((tmp_path / "config.json").read_text())
    assert (saved["limit"], saved["batch_size"], saved["image_size"]) == (48, 12, 8)
    assert (saved["epochs"], saved["log_every"], saved["max_steps"]) == (3, 2, None)
    assert saved["device"] == "cpu" and saved["workers"] == 0


def test_resume_lists_every_disagreement_once(tiny: None, tmp_path: Path) -> None:
    train.run_pretrain(config(tmp_path, max_steps=1))
    given = {"limit": 24, "batch_size": 8, "head": "v2", "hidden_dim": 4, "temperature": 0.2}
    with pytest.raises(CheckpointError) as caught:
        train.run_pretrain(PretrainConfig(out=tmp_path, resume="auto", epochs=3, **given))
    message = str(caught.value)
    for part in (
        "--limit 48 (given: 24)",
        "--batch-size 12 (given: 8)",
        "--head v1 (given: v2)",
        "--hidden-dim auto (512) (given: 4)",  # unset in the run: what it resolved to
        "--temperature 0.5 (given: 0.2)",
    ):
        assert part in message
    assert "None" not in message and "--epochs" not in message and "\n" not in message


def test_a_given_value_equal_to_the_resolved_default_agrees() -> None:
    saved = {"stem": "auto", "lr": None, "resolved": {"resolved_stem": "cifar", "resolved_lr": 0.1}}
    cfg = PretrainConfig(stem="cifar", lr=0.1, device="cpu", out=Path("x"))
    assert resume.resume_differences(saved, cfg) == []
    cfg = PretrainConfig(stem="imagenet", lr=0.2, device="cpu", out=Path("x"))
    assert resume.resume_differences(saved, cfg) == [
        ("--stem", "auto (cifar)", "imagenet"),
        ("--lr", "auto (0.1)", "0.2"),
    ]


def test_resume_with_more_epochs_keeps_the_automatic_warmup(tiny: None, tmp_path: Path) -> None:
    train.run_pretrain(config(tmp_path, warmup_epochs=None, epochs=10, max_steps=1))
    before = json.loads((tmp_path / "config.json").read_text())["resolved"]["warmup_steps"]
    train.run_pretrain(PretrainConfig(out=tmp_path, resume="auto", epochs=20, max_steps=2))
    after = json.loads((tmp_path / "config.json").read_text())["resolved"]
    assert before == after["warmup_steps"] == 4  # 10% of the 40-step run, not of 80 steps
    assert after["total_steps"] == 20 * STEPS_PER_EPOCH


def test_resume_auto_before_the_first_checkpoint_reads_config_json(
    tiny: None, tmp_path: Path
) -> None:
    options = config(tmp_path).model_dump(mode="json")
    tmp_path.mkdir(exist_ok=True)
    (tmp_path / "config.json").write_text(json.dumps({**options, "limit": 24}))
    summary = train.run_pretrain(PretrainConfig(out=tmp_path, resume="auto", max_steps=1))
    assert summary["resumed_from"] is None  # nothing to restore: the run starts at step 0
    assert json.loads((tmp_path / "config.json").read_text())["limit"] == 24


def test_fresh_run_refuses_to_overwrite_an_existing_run(tiny: None, tmp_path: Path) -> None:
    train.run_pretrain(config(tmp_path, max_steps=1))
    before = (tmp_path / "checkpoint_last.pt").stat().st_mtime_ns
    with pytest.raises(OutputExistsError, match="--resume auto"):
        train.run_pretrain(config(tmp_path))
    assert (tmp_path / "checkpoint_last.pt").stat().st_mtime_ns == before


# ----------------------------------------------------------------------------------------------
# non-finite loss


@pytest.mark.parametrize("log_every", [1, 3])
def test_non_finite_loss_stops_and_keeps_the_last_good_checkpoint(
    tiny: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, log_every: int
) -> None:
    misbehave(monkeypatch, "nan", at=STEPS_PER_EPOCH + 1)
    with pytest.raises(TrainingError, match="non-finite"):
        train.run_pretrain(config(tmp_path, log_every=log_every))
    payload = load_checkpoint(tmp_path / "checkpoint_last.pt")
    assert payload["global_step"] == STEPS_PER_EPOCH  # the end of the first (good) epoch
    assert all(
        torch.isfinite(t).all() for t in payload["state_dict"].values() if t.is_floating_point()
    )
    assert not (tmp_path / "checkpoint_epoch_2.pt").exists()
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    assert all(math.isfinite(r["loss"]) for r in records)


# ----------------------------------------------------------------------------------------------
# run folder, checkpoint format (real ResNet-18)


def test_run_folder_and_checkpoint_format(tmp_path: Path) -> None:
    cfg = config(tmp_path, limit=16, batch_size=8, checkpoint_every=2, knn_every=1)
    summary = train.run_pretrain(cfg)

    assert sorted(p.name for p in tmp_path.iterdir() if not p.name.startswith(EVENTS)) == [
        "checkpoint_epoch_2.pt",
        "checkpoint_last.pt",
        "config.json",
        "images.txt",  # the --limit sample: indices of shapes' training split
        "metrics.jsonl",
    ]
    listed = [int(line) for line in (tmp_path / "images.txt").read_text().splitlines()]
    assert len(listed) == 16 and listed == sorted(set(listed)) and listed != list(range(16))
    saved = json.loads((tmp_path / "config.json").read_text())
    assert saved["batch_size"] == 8 and saved["resolved"]["resolved_stem"] == "cifar"
    assert saved["resolved"]["resolved_lr"] == pytest.approx(cfg.resolved_lr)
    assert saved["resolved"]["resolved_channels_last"] is True  # the default on every device
    # 16 images / batch 8 = 2 steps per epoch, 2 epochs; --warmup-epochs 1 as given: 2 steps
    assert saved["resolved"]["total_steps"] == 4 and saved["resolved"]["warmup_steps"] == 2
    records = [json.loads(line) for line in (tmp_path / "metrics.jsonl").read_text().splitlines()]
    losses = [r for r in records if "loss" in r]
    assert [r["step"] for r in losses] == [1, 2, 3, 4]
    assert all(r.keys() >= {"epoch", "loss", "lr", "images_per_s", "time"} for r in losses)
    knn = [r for r in records if "knn_accuracy" in r]
    assert [r["epoch"] for r in knn] == [1, 2] and all(0 <= r["knn_accuracy"] <= 1 for r in knn)

    raw = torch.load(tmp_path / "checkpoint_last.pt", map_location="cpu", weights_only=True)
    assert raw["format"] == "simclr-cli-checkpoint" and raw["kind"] == "pretrain"
    assert raw["epoch"] == 2 and raw["global_step"] == 4 and raw["dataset"] == "shapes"
    assert raw["model"]["arch"] == "resnet18" and raw["model"]["stem"] == "cifar"
    assert raw["model"]["image_size"] == 8 and len(raw["model"]["mean"]) == 3
    assert raw["config"]["resolved"]["world_size"] == 1
    assert raw["optimizer"]["state"] and raw["scaler"] is None
    assert raw["metrics"]["knn_accuracy"] == knn[-1]["knn_accuracy"]
    keys = list(raw["state_dict"])
    assert all(k.startswith(("encoder.", "projector.")) for k in keys)
    net = load_model(raw)  # strict load into a freshly built model
    assert_same_weights(net.state_dict(), raw["state_dict"])

    assert summary["checkpoint"] == str(tmp_path / "checkpoint_epoch_2.pt")
    assert summary["global_step"] == 4 and math.isfinite(summary["final_loss"])
    assert summary["next_commands"][0].startswith("simclr linear-eval --checkpoint ")
    assert summary["next_commands"][1].startswith("simclr export --checkpoint ")
    assert summary["images_per_s"] > 0


# ----------------------------------------------------------------------------------------------
# TensorBoard (the `tensorboard` extra; installed with the `test` extra)

EVENTS = "events.out.tfevents"


def tensorboard_scalars(out: Path, tag: str = "pretrain/loss") -> dict[int, float]:
    """{step: value} of a scalar as TensorBoard's own reader sees the run folder."""
    accumulator = pytest.importorskip("tensorboard.backend.event_processing.event_accumulator")
    events = accumulator.EventAccumulator(str(out), purge_orphaned_data=True)
    events.Reload()
    scalars = events.Scalars(tag)
    assert len({s.step for s in scalars}) == len(scalars), "a step was logged twice"
    return {s.step: s.value for s in scalars}


def logged_losses(out: Path) -> dict[int, float]:
    lines = (out / "metrics.jsonl").read_text().splitlines()
    return {r["step"]: r["loss"] for r in map(json.loads, lines) if "loss" in r}


def test_tensorboard_events_mirror_the_metrics(tiny: None, tmp_path: Path) -> None:
    train.run_pretrain(config(tmp_path, knn_every=1))
    losses = logged_losses(tmp_path)
    assert sorted(losses) == list(range(1, 9))
    assert tensorboard_scalars(tmp_path) == pytest.approx(losses, rel=1e-6)  # float32 events
    assert sorted(tensorboard_scalars(tmp_path, "pretrain/knn_accuracy")) == [4, 8]


def test_resumed_run_replaces_the_tensorboard_steps_after_its_checkpoint(
    tiny: None, tmp_path: Path
) -> None:
    pytest.importorskip("tensorboard")  # installed by the test extra
    from torch.utils.tensorboard import SummaryWriter

    train.run_pretrain(config(tmp_path))  # steps 1-8, checkpoint at step 8
    # What a run killed after that checkpoint leaves behind: events and metrics of steps 9-10.
    stale = SummaryWriter(log_dir=str(tmp_path))
    for step in (9, 10):
        stale.add_scalar("pretrain/loss", 123.0, step)
    stale.close()
    with open(tmp_path / "metrics.jsonl", "a") as f:
        f.writelines(json.dumps({"step": s, "loss": 123.0}) + "\n" for s in (9, 10))

    train.run_pretrain(config(tmp_path, epochs=3, resume="auto"))  # trains steps 9-12
    losses = logged_losses(tmp_path)
    assert sorted(losses) == list(range(1, 13)) and 123.0 not in losses.values()
    assert tensorboard_scalars(tmp_path) == pytest.approx(losses, rel=1e-6)


def test_runs_without_tensorboard_installed(
    tiny: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "torch.utils.tensorboard", None)  # import -> ImportError
    summary = train.run_pretrain(config(tmp_path))
    assert summary["global_step"] == 8 and sorted(logged_losses(tmp_path)) == list(range(1, 9))
    assert not [p for p in tmp_path.iterdir() if p.name.startswith(EVENTS)]


# ----------------------------------------------------------------------------------------------
# pure pieces


def test_resumable_sampler_skips_into_the_same_permutation() -> None:
    dataset = ShapesDataset(size=20)
    full = loader.ResumableSampler(dataset, num_replicas=1, rank=0, seed=3)
    full.set_epoch(1)
    order = list(full)
    skipped = loader.ResumableSampler(dataset, num_replicas=1, rank=0, seed=3)
    skipped.set_epoch(1, skip=6)
    assert list(skipped) == order[6:] and len(skipped) == 14
    full.set_epoch(2)
    assert list(full) != order and sorted(full) == list(range(20))
    shards = [loader.ResumableSampler(dataset, num_replicas=3, rank=r, seed=3) for r in range(3)]
    for shard in shards:
        shard.set_epoch(1)
    indices = [i for shard in shards for i in shard]
    assert len(indices) == len(set(indices)) == 18  # disjoint, tail dropped evenly


def test_max_steps_stops_early_without_changing_the_schedule() -> None:
    cfg = config(Path("unused"), epochs=10, max_steps=7, warmup_epochs=1)
    schedule = recipe.build_schedule(cfg, steps_per_epoch=5)
    assert schedule.total_steps == 50 and recipe.last_step(cfg, schedule) == 7
    assert schedule(4) == pytest.approx(cfg.resolved_lr)  # end of the 1-epoch warmup
    assert schedule(49) < schedule(25) < schedule(5)


def test_truncate_metrics_drops_steps_after_the_checkpoint(tmp_path: Path) -> None:
    path = tmp_path / "metrics.jsonl"
    lines = [json.dumps({"step": s, "loss": 1.0}) for s in (1, 2, 3, 4)]
    path.write_text("\n".join(lines) + '\n{"step": 5, "lo')  # last line cut by a kill
    runlog.truncate_metrics(path, 2)
    assert [json.loads(line)["step"] for line in path.read_text().splitlines()] == [1, 2]


# ----------------------------------------------------------------------------------------------
# quality


def small_convnet(spec: dict[str, Any], zero_init_residual: bool = False) -> SimCLR:
    """Three 3x3 convolutions (32-64-128 channels, batch norm): learns shapes in a CPU minute."""
    layers: list[nn.Module] = []
    for c_in, c_out, stride in ((3, 32, 1), (32, 64, 2), (64, 128, 2)):
        layers += [
            nn.Conv2d(c_in, c_out, 3, stride, 1, bias=False),
            nn.BatchNorm2d(c_out),
            nn.ReLU(),
        ]
    return SimCLR(nn.Sequential(*layers, nn.AdaptiveAvgPool2d(1), nn.Flatten()), 128, 64)


@pytest.mark.slow
@pytest.mark.timeout(3600)  # a hang guard: about 2 minutes idle, 15+ on a busy machine
def test_pretraining_on_shapes_beats_a_random_encoder(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(train, "build_simclr", small_convnet)
    cfg = config(
        tmp_path,
        limit=4096,  # also bounds the kNN monitor: 4096 bank and 2000 query images
        image_size=16,
        batch_size=64,  # 64 steps per epoch
        epochs=25,  # the schedule; --max-steps stops after 3 epochs, lr still near its peak
        max_steps=192,
        warmup_epochs=0,
        optimizer="adam",
        lr=3e-3,
        temperature=0.2,
        augment_on="device",
        log_every=32,
        knn_every=3,
        checkpoint_every=3,
    )
    summary = train.run_pretrain(cfg)

    losses = [
        r["loss"]
        for r in map(json.loads, (tmp_path / "metrics.jsonl").read_text().splitlines())
        if "loss" in r
    ]
    assert sum(losses[-3:]) / 3 < losses[0] - 0.2, losses
    torch.manual_seed(0)
    random_net = small_convnet({})
    chance, _ = monitor.knn_eval(random_net, *monitor.knn_datasets(cfg), cfg, torch.device("cpu"))
    trained = summary["knn_accuracy"]
    assert trained > chance + 0.12, (trained, chance)


# ----------------------------------------------------------------------------------------------
# other data sources


def test_pretraining_on_a_folder_of_images_skips_unreadable_files(
    tiny: None, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    images = tmp_path / "images"
    images.mkdir()
    shapes = ShapesDataset(size=24, image_size=12)
    for i in range(24):
        shapes[i][0].save(images / f"{i:02d}.png")
    (images / "broken.jpg").write_bytes(b"not an image")
    cfg = config(tmp_path / "run", dataset=str(images), image_size=8, max_steps=2)
    summary = train.run_pretrain(cfg)

    assert summary["global_step"] == 2 and summary["knn_accuracy"] is None
    assert not any("linear-eval" in line for line in summary["next_commands"])  # no labels
    assert "skipped 1 unreadable image" in capsys.readouterr().err
    payload = load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")
    assert payload["model"]["mean"] is None and payload["dataset"] == str(images)
    assert Image.open(images / "00.png").size == (12, 12)


def test_a_dataset_smaller_than_one_batch_is_a_dataset_error(tiny: None, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="fewer than one batch of 12"):
        train.run_pretrain(config(tmp_path, limit=10))
    assert not (tmp_path / "checkpoint_last.pt").exists()


# ----------------------------------------------------------------------------------------------
# progress


def progress_lines(err: str) -> list[str]:
    return [line for line in err.splitlines() if line.startswith("pretrain step ")]


def test_progress_off_a_terminal_is_plain_lines_every_log_step(
    tiny: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIMCLR_PROGRESS_SECONDS", "0")  # a line at every --log-every steps
    train.run_pretrain(config(tmp_path, log_every=2))
    err = capsys.readouterr().err
    lines = progress_lines(err)
    assert [line.split()[2] for line in lines] == ["2/8", "4/8", "6/8", "8/8"]
    for line in lines:
        for word in ("epoch", "loss", "lr", "img/s", "elapsed", "eta"):
            assert f" {word} " in line, line
    assert " epoch 1.00/2 " in lines[1] and "(100%)" in lines[-1]
    assert "\x1b" not in err and "━" not in err  # no bar, no terminal codes in a log
    phases = err.index("loading data"), err.index("building the model"), err.index("training 8")
    assert list(phases) == sorted(phases) and phases[-1] < err.index("pretrain step")


def test_progress_off_a_terminal_waits_between_lines(
    tiny: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIMCLR_PROGRESS_SECONDS", "3600")  # the run is shorter than that
    train.run_pretrain(config(tmp_path, log_every=1))
    lines = progress_lines(capsys.readouterr().err)
    assert [line.split()[2] for line in lines] == ["1/8", "8/8"]  # the first and the last


def test_error_message_counts_one_training_image(tiny: None, tmp_path: Path) -> None:
    with pytest.raises(DatasetError, match="has 1 training image, fewer"):
        train.run_pretrain(config(tmp_path, limit=1))


# ----------------------------------------------------------------------------------------------
# one copy of the final checkpoint


def test_the_epoch_checkpoint_is_a_link_to_the_last_one_not_a_copy(
    tiny: None, tmp_path: Path
) -> None:
    train.run_pretrain(config(tmp_path))
    last, second = tmp_path / "checkpoint_last.pt", tmp_path / "checkpoint_epoch_2.pt"
    assert last.stat().st_ino == second.stat().st_ino and last.stat().st_nlink == 2
    assert (tmp_path / "checkpoint_epoch_1.pt").stat().st_nlink == 1
    kept = second.read_bytes()
    # A longer run replaces checkpoint_last.pt by renaming: the epoch-2 file stays as it was.
    train.run_pretrain(PretrainConfig(out=tmp_path, resume="auto", epochs=3))
    assert second.read_bytes() == kept and second.stat().st_nlink == 1
    assert last.stat().st_ino == (tmp_path / "checkpoint_epoch_3.pt").stat().st_ino
    assert load_checkpoint(second)["global_step"] == 2 * STEPS_PER_EPOCH
    assert load_checkpoint(last)["global_step"] == 3 * STEPS_PER_EPOCH
    assert not [p for p in tmp_path.iterdir() if p.name.endswith(".tmp")]


def test_without_hard_links_the_epoch_checkpoint_is_a_copy(
    tiny: None, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    from simclr_cli.storage import fileio

    def no_links(*args: Any) -> None:
        raise OSError(1, "Operation not permitted")

    monkeypatch.setattr(fileio.os, "link", no_links)
    train.run_pretrain(config(tmp_path, epochs=1, warmup_epochs=0))
    last, first = tmp_path / "checkpoint_last.pt", tmp_path / "checkpoint_epoch_1.pt"
    assert last.stat().st_ino != first.stat().st_ino
    assert last.read_bytes() == first.read_bytes()


# ----------------------------------------------------------------------------------------------
# memory check


def test_a_step_that_cannot_fit_in_memory_is_refused_with_a_batch_that_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(memory, "available_memory", lambda: 4 * 2**30)
    cfg = PretrainConfig(stem="cifar", image_size=224, batch_size=256, device="cpu", out=tmp_path)
    with pytest.raises(TrainingError) as caught:
        train.run_pretrain(cfg)
    message = str(caught.value)
    assert "GiB of memory (batch 256 at 224 px, cifar stem)" in message
    fits = int(message.split("lower --batch-size to ")[1].split()[0])
    per_image, fixed = memory.step_memory(cfg)
    assert 2 <= fits < 256 and fixed + 2 * fits * per_image <= 4 * 2**30
    assert not any(tmp_path.iterdir())  # refused before anything was written
    monkeypatch.setenv("SIMCLR_SKIP_MEMORY_CHECK", "1")
    memory.check_memory(cfg)  # the escape hatch


def test_the_memory_estimate_grows_with_the_batch_and_the_image() -> None:
    small = PretrainConfig(stem="cifar", device="cpu", out=Path("x"))
    large = PretrainConfig(stem="cifar", image_size=64, device="cpu", out=Path("x"))
    assert memory.step_memory(large)[0] > 3 * memory.step_memory(small)[0]
