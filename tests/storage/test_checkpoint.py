"""Checkpoint saving, safe loading and conversion of Spijkervet/SimCLR release layouts."""

from __future__ import annotations

import collections
import pathlib
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
import torchvision
from release_fixtures import make_release_checkpoint, release_state_dict
from torch import nn

from simclr_cli.errors import CheckpointError
from simclr_cli.method.model import build_simclr, model_spec
from simclr_cli.storage import checkpoint
from simclr_cli.storage.checkpoint import (
    FORMAT,
    FORMAT_VERSION,
    convert_release_state_dict,
    describe,
    load_checkpoint,
    load_model,
    save_checkpoint,
)


class _Marker:
    """Pickles to a call that creates a marker file: loading must never run it."""

    def __init__(self, marker: Path) -> None:
        self.marker = marker

    def __reduce__(self) -> tuple:
        return (pathlib.Path.touch, (self.marker,))


def _native_payload(**overrides: object) -> dict:
    spec = model_spec(
        "resnet18", "cifar", projection_dim=16, image_size=32, mean=[0.5] * 3, std=[0.25] * 3
    )
    torch.manual_seed(0)
    model = build_simclr(spec)
    payload = {
        "model": spec,
        "dataset": "shapes",
        "epoch": 3,
        "global_step": 30,
        "config": {"dataset": "shapes", "epochs": 3},
        "metrics": {"loss": 4.2, "knn_top1": 0.5},
        "state_dict": model.state_dict(),
        "optimizer": None,
        "scaler": None,
        "rng": {"torch": torch.get_rng_state()},
        "converted_from": None,
    }
    payload.update(overrides)
    return payload


@pytest.fixture(scope="module")
def native_file(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, dict]:
    payload = _native_payload()
    path = tmp_path_factory.mktemp("native") / "checkpoint_last.pt"
    save_checkpoint(payload, path)
    return path, payload


# ---------------------------------------------------------------------------- saving and loading


def test_roundtrip_fills_format_and_keeps_every_tensor(native_file: tuple[Path, dict]) -> None:
    path, payload = native_file
    loaded = load_checkpoint(path)
    assert loaded["format"] == FORMAT and loaded["format_version"] == FORMAT_VERSION
    assert loaded["kind"] == "pretrain"
    assert loaded["model"] == payload["model"] and loaded["metrics"] == payload["metrics"]
    assert loaded["state_dict"].keys() == payload["state_dict"].keys()
    for key, value in payload["state_dict"].items():
        assert torch.equal(loaded["state_dict"][key], value), key
    assert torch.equal(loaded["rng"]["torch"], payload["rng"]["torch"])
    # The file itself is readable by plain weights-only torch.load (no simclr-cli needed).
    assert torch.load(path, weights_only=True)["epoch"] == 3


def test_load_model_restores_weights_and_outputs(native_file: tuple[Path, dict]) -> None:
    path, payload = native_file
    model = load_model(load_checkpoint(path))
    assert not model.training
    reference = build_simclr(payload["model"])
    reference.load_state_dict(payload["state_dict"])
    reference.eval()
    x = torch.randn(2, 3, 32, 32)
    with torch.no_grad():
        h, z = model(x)
        h_ref, z_ref = reference(x)
    assert h.shape == (2, 512) and z.shape == (2, 16)
    assert torch.equal(h, h_ref) and torch.equal(z, z_ref)


def test_save_failure_keeps_old_file_and_leaves_no_temp(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    path = tmp_path / "ckpt.pt"
    save_checkpoint({"model": {}, "state_dict": {"w": torch.ones(2)}}, path)
    before = path.read_bytes()

    def half_written_then_crash(obj: object, f: object) -> None:
        f.write(b"partial bytes")  # type: ignore[attr-defined]
        raise OSError("disk full")

    monkeypatch.setattr(checkpoint.torch, "save", half_written_then_crash)
    with pytest.raises(OSError, match="disk full"):
        save_checkpoint({"model": {}, "state_dict": {"w": torch.zeros(2)}}, path)
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["ckpt.pt"]


def test_save_rejects_objects_weights_only_cannot_load(tmp_path: Path) -> None:
    path = tmp_path / "ckpt.pt"
    with pytest.raises(TypeError, match=r"payload\['config'\]\['transform'\] is a object"):
        save_checkpoint({"config": {"transform": object()}}, path)
    assert list(tmp_path.iterdir()) == []
    # Subclasses of allowed types pickle under their own class: weights_only would refuse them.
    for value in (np.float64(0.5), collections.namedtuple("Pair", "a b")(1, 2)):
        where = rf"payload\['metrics'\]\['v'\] is a {type(value).__name__}"
        with pytest.raises(TypeError, match=where):
            save_checkpoint({"metrics": {"v": value}}, path)
    assert list(tmp_path.iterdir()) == []
    allowed = {"size": torch.Size([2]), "p": nn.Parameter(torch.ones(1)), "t": (1, 2.5, None)}
    minimal = {"model": {"arch": "resnet18"}, "state_dict": {"w": torch.zeros(1)}}
    loaded = load_checkpoint(save_checkpoint({**minimal, "metrics": allowed}, path))
    assert loaded["metrics"]["size"] == torch.Size([2]) and loaded["metrics"]["t"] == (1, 2.5, None)


def test_missing_file(tmp_path: Path) -> None:
    with pytest.raises(CheckpointError, match="does not exist"):
        load_checkpoint(tmp_path / "nope.pt")


@pytest.mark.parametrize("legacy", [False, True])
def test_truncated_file_is_corrupt(tmp_path: Path, legacy: bool) -> None:
    whole = tmp_path / "whole.pt"
    torch.save({"w": torch.ones(1000)}, whole, _use_new_zipfile_serialization=not legacy)
    cut = tmp_path / "cut.pt"
    cut.write_bytes(whole.read_bytes()[: whole.stat().st_size // 2])
    with pytest.raises(CheckpointError, match="corrupt"):
        load_checkpoint(cut)


def test_random_bytes_are_corrupt_not_refused(tmp_path: Path) -> None:
    path = tmp_path / "noise.pt"
    path.write_bytes(bytes(range(256)) * 8)
    with pytest.raises(CheckpointError, match="corrupt") as info:
        load_checkpoint(path)
    assert "refused" not in str(info.value)


@pytest.mark.parametrize("name", ["config.json", "metrics.jsonl"])
def test_a_text_file_is_named_as_such(tmp_path: Path, name: str) -> None:
    path = tmp_path / name
    path.write_text('{"step": 1, "loss": 4.2, "note": "caf\u00e9"}\n' * 3, encoding="utf-8")
    with pytest.raises(CheckpointError, match="is a text file, not a torch checkpoint") as info:
        load_checkpoint(path)
    assert "corrupt" not in str(info.value) and "run folder" in str(info.value)
    assert """(it begins '{"step": 1, "loss": 4.2, "note": "caf\u00e9"}')""" in str(info.value)


@pytest.mark.parametrize("writer", ["zip", "legacy", "pickle"])
def test_malicious_pickle_is_refused_and_never_runs(tmp_path: Path, writer: str) -> None:
    marker = tmp_path / "code_ran"
    path = tmp_path / "evil.pt"
    obj = {"state_dict": _Marker(marker)}
    if writer == "pickle":
        path.write_bytes(pickle.dumps(obj, protocol=2))
    else:
        torch.save(obj, path, _use_new_zipfile_serialization=writer == "zip")
    assert not marker.exists()
    with pytest.raises(CheckpointError, match="refused for safety"):
        load_checkpoint(path)
    assert not marker.exists()


@pytest.mark.parametrize(
    ("obj", "expected"),
    [
        ({"format": FORMAT, "format_version": 1, "kind": "linear", "state_dict": {}}, "kind"),
        ({"weights": [1, 2], "head": "linear"}, "a dict with keys weights, head"),
        ([torch.ones(2)], "a list"),
    ],
)
def test_other_payloads_are_not_pretraining_checkpoints(
    tmp_path: Path, obj: object, expected: str
) -> None:
    path = tmp_path / "other.pt"
    torch.save(obj, path)
    with pytest.raises(CheckpointError, match="not a simclr-cli pretraining checkpoint") as info:
        load_checkpoint(path)
    assert expected in str(info.value)


def test_newer_format_version_asks_for_upgrade(tmp_path: Path) -> None:
    path = tmp_path / "future.pt"
    torch.save({"format": FORMAT, "format_version": FORMAT_VERSION + 1, "kind": "pretrain"}, path)
    with pytest.raises(CheckpointError, match="upgrade simclr-cli"):
        load_checkpoint(path)


# ---------------------------------------------------------------------------- release conversion


@pytest.mark.parametrize(
    ("layout", "bias", "prefix"),
    [("1.0", True, False), ("1.1", False, False), ("ddp", False, True)],
)
def test_release_layouts_convert_and_load(
    tmp_path: Path, layout: str, bias: bool, prefix: bool
) -> None:
    path = tmp_path / "checkpoint_40.tar"
    source = make_release_checkpoint(path, layout)
    assert path.read_bytes()[:2] == b"\x80\x02"  # legacy serialization is a bare pickle, not a zip
    payload = load_checkpoint(path)
    assert payload["model"] == {
        "arch": "resnet18",
        "stem": "imagenet",
        "head": "v1",
        "feature_dim": 512,
        "hidden_dim": 512,
        "projection_dim": 64,
        "head_bias": bias,
        "image_size": 96,
        "mean": None,
        "std": None,
    }
    assert payload["dataset"] == "stl10" and payload["epoch"] == 40
    record = payload["converted_from"]
    assert record["source"] == "Spijkervet/SimCLR" and record["head_bias"] is bias
    assert record["stripped_prefix"] == ("module." if prefix else None)
    assert all(not k.startswith("module.") for k in payload["state_dict"])

    model = load_model(payload)
    # Independent reference: torchvision's ResNet-18 and the head computed by hand.
    plain = {k.removeprefix("module."): v for k, v in source.items()}
    resnet = torchvision.models.resnet18(weights=None)
    resnet.fc = nn.Identity()
    resnet.load_state_dict({k[8:]: v for k, v in plain.items() if k.startswith("encoder.")})
    resnet.eval()
    x = torch.randn(2, 3, 64, 64)
    with torch.no_grad():
        h, z = model(x)
        h_ref = resnet(x)
        hidden = h_ref @ plain["projector.0.weight"].T
        if bias:
            hidden = hidden + plain["projector.0.bias"]
        z_ref = hidden.relu() @ plain["projector.2.weight"].T
        if bias:
            z_ref = z_ref + plain["projector.2.bias"]
    torch.testing.assert_close(h, h_ref)
    torch.testing.assert_close(z, z_ref)


def _meta_release(arch: str, layout: str = "1.1", stem: str = "imagenet") -> dict:
    with torch.device("meta"):  # shapes only: big ResNets cost nothing
        return release_state_dict(layout, arch=arch, stem=stem)


@pytest.mark.parametrize(
    ("arch", "feature_dim"),
    [
        ("resnet18", 512),
        ("resnet34", 512),
        ("resnet50", 2048),
        ("resnet101", 2048),
        ("resnet152", 2048),
        ("wide_resnet50_2", 2048),
    ],
)
def test_arch_inferred_from_keys_and_shapes(arch: str, feature_dim: int) -> None:
    payload = convert_release_state_dict(_meta_release(arch), name="checkpoint_100.tar")
    spec = payload["model"]
    assert (spec["arch"], spec["feature_dim"], spec["hidden_dim"]) == (
        arch,
        feature_dim,
        feature_dim,
    )
    assert payload["epoch"] == 100


def test_cifar_stem_inferred_from_conv1() -> None:
    payload = convert_release_state_dict(_meta_release("resnet18", stem="cifar"))
    assert payload["model"]["stem"] == "cifar"


def test_old_files_without_bn_counters_are_filled() -> None:
    sd = {k: v for k, v in _meta_release("resnet18").items() if "num_batches_tracked" not in k}
    payload = convert_release_state_dict(sd)
    filled = payload["converted_from"]["filled_buffers"]
    assert "encoder.bn1.num_batches_tracked" in filled and len(filled) == 20
    assert "encoder.layer4.1.bn2.num_batches_tracked" in payload["state_dict"]


@pytest.mark.parametrize(
    ("edit", "message"),
    [
        (
            lambda sd: sd.update({"encoder.fc.weight": sd["projector.0.weight"]}),
            "unexpected keys encoder.fc.weight",
        ),
        (
            lambda sd: sd.pop("encoder.layer4.1.bn2.weight"),
            "missing keys encoder.layer4.1.bn2.weight",
        ),
        (
            lambda sd: sd.update({"projector.4.weight": sd["projector.2.weight"]}),
            "unexpected keys projector.4.weight",
        ),
        (
            lambda sd: sd.update({"classifier.weight": sd["projector.2.weight"]}),
            "unexpected keys classifier.weight",
        ),
        (
            lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("projector.")],
            "missing keys projector.*",
        ),
        (
            lambda sd: [sd.pop(k) for k in list(sd) if k.startswith("encoder.layer4.1.")],
            "blocks per stage [2, 2, 2, 1]",
        ),
    ],
)
def test_unrecognised_state_dicts_name_the_keys(edit: object, message: str) -> None:
    sd = _meta_release("resnet18")
    edit(sd)  # type: ignore[operator]
    with pytest.raises(CheckpointError) as info:
        convert_release_state_dict(sd, name="x.tar")
    assert message in str(info.value)
    assert "\n" not in str(info.value)


def test_load_model_reports_weights_that_do_not_match(native_file: tuple[Path, dict]) -> None:
    payload = load_checkpoint(native_file[0])
    payload["model"] = {**payload["model"], "projection_dim": 32}
    with pytest.raises(CheckpointError, match="do not match its model description"):
        load_model(payload)


# ---------------------------------------------------------------------------- describe


def test_describe_native(native_file: tuple[Path, dict]) -> None:
    info = describe(load_checkpoint(native_file[0]))
    model = build_simclr(native_file[1]["model"])
    assert info["parameters"]["total"] == sum(p.numel() for p in model.parameters())
    assert info["parameters"]["encoder"] == sum(p.numel() for p in model.encoder.parameters())
    assert info["arch"] == "resnet18" and info["stem"] == "cifar"
    assert info["head"] == "v1 512-512-16 with bias"
    assert info["epochs"] == 3 and info["global_step"] == 30 and info["dataset"] == "shapes"
    assert info["metrics"] == {"loss": 4.2, "knn_top1": 0.5}
    assert info["normalization"] == {"mean": [0.5] * 3, "std": [0.25] * 3}
    assert info["converted_from"] is None and info["format"].startswith("simclr-cli")


def test_describe_converted(tmp_path: Path) -> None:
    path = tmp_path / "checkpoint_100.tar"
    make_release_checkpoint(path, "1.1")
    info = describe(load_checkpoint(path))
    assert info["format"].startswith("Spijkervet/SimCLR (converted)")
    assert info["head"] == "v1 512-512-64 without bias"
    assert info["epochs"] == 100 and info["image_size"] == 96 and info["normalization"] is None
    assert info["parameters"]["projector"] == 512 * 512 + 512 * 64


@pytest.mark.parametrize(
    ("name", "epoch"),
    [("checkpoint_40.tar", 40), ("0123456789-checkpoint_100.tar", 100), ("weights.tar", None)],
)
def test_epoch_read_from_release_and_url_cache_names(name: str, epoch: int | None) -> None:
    # A release fetched by URL is cached as "<url hash>-<basename>" (see hub._url_filename).
    assert convert_release_state_dict(release_state_dict("1.1"), name=name)["epoch"] == epoch


# ---------------------------------------------------------------------------- durability

_WRITER = """
import sys
import torch
from simclr_cli.storage.checkpoint import save_checkpoint

i = 0
while True:  # saves as fast as it can until killed
    i += 1
    w = torch.full((512, 512), float(i))
    save_checkpoint({"model": {}, "epoch": i, "state_dict": {"w": w}}, sys.argv[1])
    print(i, flush=True)
"""


@pytest.mark.slow
def test_kill_9_mid_save_leaves_a_loadable_checkpoint(tmp_path: Path) -> None:
    import os
    import signal
    import subprocess
    import sys
    import time

    path = tmp_path / "checkpoint_last.pt"
    root = Path(__file__).resolve().parents[2]
    env = {**os.environ, "PYTHONPATH": str(root), "OMP_NUM_THREADS": "1"}
    for delay in (0.13,):
        child = subprocess.Popen(
            [sys.executable, "-c", _WRITER, str(path)], env=env, stdout=subprocess.PIPE, text=True
        )
        assert child.stdout is not None
        child.stdout.readline()  # at least one complete save happened
        time.sleep(delay)  # most of the loop is inside torch.save: likely killed mid-write
        child.send_signal(signal.SIGKILL)
        child.wait()
        payload = load_checkpoint(path)
        w = payload["state_dict"]["w"]
        assert payload["epoch"] >= 1 and torch.all(w == payload["epoch"])  # old or new, never mixed
    assert [p.name for p in tmp_path.iterdir() if not p.name.startswith(".")] == [path.name]


def test_save_fsyncs_file_and_folder_and_clears_stale_temps(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import os
    import time

    path = tmp_path / "ckpt.pt"
    stale = tmp_path / ".ckpt.pt.abc123.tmp"
    fresh = tmp_path / ".ckpt.pt.def456.tmp"  # may belong to a live writer: kept
    stale.write_bytes(b"left by a killed writer")
    fresh.write_bytes(b"in progress")
    old = time.time() - 3600
    os.utime(stale, (old, old))
    synced: list[int] = []
    real_fsync = os.fsync
    monkeypatch.setattr(checkpoint.os, "fsync", lambda fd: synced.append(fd) or real_fsync(fd))
    save_checkpoint({"model": {}, "state_dict": {}}, path)
    assert len(synced) == 2  # the file's bytes, then the folder entry of the rename
    assert not stale.exists() and fresh.exists()
