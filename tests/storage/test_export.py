"""Tests of ``simclr export``: every format reproduces the checkpoint's h, the README's lines
load the torchvision export strictly, and a refused or failed export leaves no file."""

from __future__ import annotations

import json
import re
import sys
from pathlib import Path

import pytest
import torch
from eval_fixtures import save_native_checkpoint
from release_fixtures import make_release_checkpoint

from simclr_cli.cli import run
from simclr_cli.config import ExportConfig
from simclr_cli.method.model import build_simclr, model_spec
from simclr_cli.storage import export as ex
from simclr_cli.storage.checkpoint import load_checkpoint, load_model

ROOT = Path(__file__).resolve().parents[2]
COMBINATIONS = [
    ("torchvision", "encoder"),
    ("torchvision", "projector"),
    ("torchvision", "both"),
    ("safetensors", "encoder"),
    ("safetensors", "both"),
    ("torchscript", "encoder"),
]  # onnx: test_onnx_export (one ONNX export per module, the slow one)


@pytest.fixture(scope="module")
def checkpoints(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Native checkpoints with the ImageNet stem (v1 head) and the CIFAR stem (v2 head)."""
    root = tmp_path_factory.mktemp("export-checkpoints")
    save_native_checkpoint(root / "imagenet.pt", stem="imagenet", seed=1)
    save_native_checkpoint(root / "cifar.pt", stem="cifar", seed=2, head="v2", projection_dim=16)
    return {"imagenet": root / "imagenet.pt", "cifar": root / "cifar.pt"}


def checkpoint_outputs(ck: Path, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """h and z of the checkpoint's own model (independent of the export code)."""
    with torch.no_grad():
        return load_model(load_checkpoint(ck))(x)


def images(n: int = 3, size: int = 32, seed: int = 7) -> torch.Tensor:
    """A batch of a different size and content than the one the export verifies with."""
    return torch.randn(n, 3, size, size, generator=torch.Generator().manual_seed(seed))


def export(ck: Path, out: Path, **options) -> dict:
    return ex.run_export(ExportConfig(checkpoint=str(ck), out=out, **options))


@pytest.mark.parametrize(("fmt", "part"), COMBINATIONS)
def test_every_format_is_verified_and_reproduces_h(
    checkpoints, tmp_path, monkeypatch, fmt, part
) -> None:
    ck = checkpoints["cifar"]
    out = tmp_path / "export.bin"
    summary = export(ck, out, format=fmt, part=part)
    meta = json.loads((tmp_path / "export.bin.meta.json").read_text())
    assert summary["file"] == str(out) and meta["format"] == fmt and meta["part"] == part
    assert meta["verified"]["max_abs_error"] <= 1e-4 and meta["input"]["shape"][1:] == [3, 32, 32]
    assert meta["input"]["mean"] == pytest.approx([0.4992, 0.4998, 0.5029])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["export.bin", "export.bin.meta.json"]
    x = images()
    h, z = checkpoint_outputs(ck, x)
    if fmt in ("torchvision", "safetensors"):
        monkeypatch.chdir(tmp_path)  # the recorded lines name the file without its folder
        scope: dict = {}
        exec(meta["load"], scope)  # noqa: S102 - the lines meta.json records, verbatim
        module = {"encoder": scope.get("model"), "projector": scope.get("head")}
        with torch.no_grad():
            if part in ("encoder", "both"):
                torch.testing.assert_close(module["encoder"].eval()(x), h, atol=1e-4, rtol=0)
            if part in ("projector", "both"):
                torch.testing.assert_close(module["projector"].eval()(h), z, atol=1e-4, rtol=0)


def test_torchvision_and_safetensors_hold_the_same_tensors(checkpoints, tmp_path) -> None:
    from safetensors.torch import load_file

    export(checkpoints["imagenet"], tmp_path / "a.pt", format="torchvision", part="both")
    export(checkpoints["imagenet"], tmp_path / "a.safetensors", format="safetensors", part="both")
    plain = torch.load(tmp_path / "a.pt", weights_only=True)
    safe = load_file(str(tmp_path / "a.safetensors"))
    assert list(plain) == list(load_checkpoint(checkpoints["imagenet"])["state_dict"])
    assert sorted(plain) == sorted(safe)
    assert all(torch.equal(plain[k], safe[k]) for k in plain)
    header = json.loads(safe_metadata(tmp_path / "a.safetensors")["input"])
    assert header["shape"] == ["batch", 3, 32, 32]


@pytest.mark.parametrize("umask", [0o022, 0o077])
def test_every_export_gets_the_umask_mode(checkpoints, tmp_path, umask) -> None:
    import os
    import stat

    previous = os.umask(umask)
    try:
        for name, fmt in (("e.pt", "torchvision"), ("e.safetensors", "safetensors")):
            export(checkpoints["imagenet"], tmp_path / name, format=fmt)
    finally:
        os.umask(previous)
    modes = {p.name: stat.S_IMODE(p.stat().st_mode) for p in tmp_path.iterdir()}
    assert set(modes.values()) == {0o666 & ~umask}, modes


def safe_metadata(path: Path) -> dict[str, str]:
    from safetensors import safe_open

    with safe_open(str(path), "pt") as handle:
        return handle.metadata()


def readme_loading_lines() -> list[str]:
    readme = (ROOT / "README.md").read_text()
    section = readme.split("## `simclr export`", 1)[1].split("\n## ", 1)[0]
    block = re.search(r"```python\n(.*?)```", section, re.S)
    assert block, "the export section shows how to load the torchvision export"
    return block.group(1).splitlines()


@pytest.mark.parametrize("stem", ["cifar", "imagenet"])
def test_readme_lines_load_the_torchvision_export_strictly(
    checkpoints, tmp_path, monkeypatch, stem
) -> None:
    export(checkpoints[stem], tmp_path / "encoder.pt", format="torchvision")
    lines = readme_loading_lines()
    assert any("strict=True" in line for line in lines)
    if stem == "imagenet":  # the README says: that line only for the CIFAR stem
        lines = [line for line in lines if "CIFAR stem only" not in line]
    monkeypatch.chdir(tmp_path)
    scope: dict = {}
    exec("\n".join(lines), scope)  # noqa: S102 - the README's own lines, verbatim
    x = images()
    with torch.no_grad():
        torch.testing.assert_close(
            scope["model"].eval()(x), checkpoint_outputs(checkpoints[stem], x)[0], atol=1e-4, rtol=0
        )


def test_torchscript_takes_any_batch_and_records_its_input(checkpoints, tmp_path) -> None:
    export(checkpoints["imagenet"], tmp_path / "e.ts", format="torchscript")
    files = {"meta.json": ""}
    module = torch.jit.load(str(tmp_path / "e.ts"), _extra_files=files)
    meta = json.loads(files["meta.json"])
    assert meta["input"]["shape"] == ["batch", 3, 32, 32] and meta["input"]["std"] is not None
    for n in (1, 5):
        x = images(n)
        with torch.no_grad():
            torch.testing.assert_close(
                module(x), checkpoint_outputs(checkpoints["imagenet"], x)[0], atol=1e-4, rtol=0
            )


@pytest.fixture(scope="module")
def onnx_export(checkpoints, tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("onnx") / "e.onnx"
    export(checkpoints["cifar"], out, format="onnx")
    return out


def test_onnx_export_is_verified_and_runs_in_onnxruntime_with_any_batch(
    checkpoints, onnx_export
) -> None:
    onnx = pytest.importorskip("onnx")
    import onnxruntime

    meta = json.loads(onnx_export.with_name("e.onnx.meta.json").read_text())
    assert meta["verified"]["max_abs_error"] <= 1e-4 and meta["format"] == "onnx"
    assert sorted(p.name for p in onnx_export.parent.iterdir()) == ["e.onnx", "e.onnx.meta.json"]
    model = onnx.load(str(onnx_export))
    props = {p.key: p.value for p in model.metadata_props}
    assert json.loads(props["input"])["shape"] == ["batch", 3, 32, 32]
    assert json.loads(props["input"])["mean"] == pytest.approx([0.4992, 0.4998, 0.5029])
    dims = model.graph.input[0].type.tensor_type.shape.dim
    assert dims[0].dim_param and [d.dim_value for d in dims[1:]] == [3, 32, 32]
    session = onnxruntime.InferenceSession(str(onnx_export))
    for n in (1, 5):
        x = images(n)
        (h,) = session.run(["h"], {"images": x.numpy()})
        expected = checkpoint_outputs(checkpoints["cifar"], x)[0]
        torch.testing.assert_close(torch.from_numpy(h), expected, atol=1e-4, rtol=0)


def test_a_spijkervet_release_file_exports(tmp_path) -> None:
    ck = tmp_path / "checkpoint_100.tar"
    make_release_checkpoint(ck, layout="ddp")
    meta = export(ck, tmp_path / "r.pt", format="torchvision")
    written = json.loads(Path(meta["meta"]).read_text())
    assert written["input"]["shape"] == ["batch", 3, 96, 96] and written["input"]["mean"] is None
    assert "no normalisation" in written["input"]["value_range"]


def test_a_cached_release_name_exports(tmp_path, capsys) -> None:
    from simclr_cli.config import default_cache_dir
    from simclr_cli.storage import hub

    source = tmp_path / "checkpoint_100.tar"
    make_release_checkpoint(source, layout="1.1")
    hub.download("resnet18-stl10", default_cache_dir(), from_file=source, progress=False)
    out = tmp_path / "r18.safetensors"
    code = run(["export", "--checkpoint", "resnet18-stl10", "--format", "safetensors",
                "--out", str(out)])  # fmt: skip
    assert code == 0, capsys.readouterr().err
    meta = json.loads((tmp_path / "r18.safetensors.meta.json").read_text())
    assert meta["checkpoint"].endswith("resnet18-stl10.tar") and meta["arch"] == "resnet18"


def test_a_run_folder_exports_its_last_checkpoint(checkpoints, tmp_path, capsys) -> None:
    run_dir = tmp_path / "run"
    run_dir.mkdir()
    (run_dir / "checkpoint_last.pt").write_bytes(checkpoints["imagenet"].read_bytes())
    code = run(["export", "--checkpoint", str(run_dir), "--out", str(tmp_path / "e.pt")])
    assert code == 0
    assert "verified_max_error" in capsys.readouterr().out
    assert json.loads((tmp_path / "e.pt.meta.json").read_text())["format"] == "torchvision"


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


@pytest.mark.parametrize("fmt", ["torchvision", "safetensors", "torchscript", "onnx"])
def test_failed_verification_leaves_no_file(checkpoints, tmp_path, monkeypatch, capsys, fmt):
    real = ex.make_reference

    def off_by_a_bit(model, size, seed=0):
        ref = real(model, size, seed)
        return ex.Reference(ref.x, ref.h + 1e-2, ref.z)

    monkeypatch.setattr(ex, "make_reference", off_by_a_bit)
    out = tmp_path / "out" / "e.bin"
    code = run(["export", "--checkpoint", str(checkpoints["imagenet"]), "--format", fmt,
                "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and "does not reproduce the checkpoint" in err and "nothing was written" in err
    assert len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert listing(tmp_path) == []  # no export, no meta.json, no temporary file, no "out/"


def test_an_existing_file_is_kept_unless_overwrite(checkpoints, tmp_path, capsys) -> None:
    out = tmp_path / "e.pt"
    out.write_text("precious")
    args = ["export", "--checkpoint", str(checkpoints["imagenet"]), "--out", str(out)]
    assert run(args) == 1
    assert "--overwrite" in capsys.readouterr().err and out.read_text() == "precious"
    assert run([*args, "--overwrite"]) == 0
    assert torch.load(out, weights_only=True)["conv1.weight"].shape == (64, 3, 7, 7)


@pytest.mark.parametrize(("fmt", "module"), [("onnx", "onnx"), ("onnx", "onnxruntime"),
                                             ("safetensors", "safetensors")])  # fmt: skip
def test_a_missing_extra_is_one_line_naming_it(
    checkpoints, tmp_path, monkeypatch, capsys, fmt, module
) -> None:
    monkeypatch.setitem(sys.modules, module, None)  # `import module` now raises ImportError
    out = tmp_path / "e.bin"
    code = run(["export", "--checkpoint", str(checkpoints["imagenet"]), "--format", fmt,
                "--out", str(out)])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 1 and len(err.strip().splitlines()) == 1 and "Traceback" not in err
    assert f"needs the {module} package" in err and "pip install 'simclr-cli[export]'" in err
    assert listing(tmp_path) == []


@pytest.mark.parametrize(
    ("args", "expected"),
    [
        (["--format", "onnx", "--part", "both"], "exports the encoder"),
        (["--format", "keras"], "--format"),
        (["--part", "head"], "--part"),
    ],
)
def test_bad_options_are_one_line_exit_2(checkpoints, tmp_path, capsys, args, expected) -> None:
    out = tmp_path / "e.bin"
    code = run(["export", "--checkpoint", str(checkpoints["imagenet"]), "--out", str(out), *args])
    err = capsys.readouterr().err
    assert code == 2 and expected in err and len(err.strip().splitlines()) == 1
    assert listing(tmp_path) == []


def test_out_that_is_a_folder_is_refused(checkpoints, tmp_path, capsys) -> None:
    code = run(["export", "--checkpoint", str(checkpoints["imagenet"]), "--out", str(tmp_path)])
    assert code == 2 and "give a file name" in capsys.readouterr().err


def test_snippet_of_a_v1_head_without_bias_matches_the_release_layout() -> None:
    spec = {"arch": "resnet50", "stem": "imagenet", "head": "v1", "feature_dim": 2048,
            "hidden_dim": 2048, "projection_dim": 64, "head_bias": False}  # fmt: skip
    snippet = ex.load_snippet(spec, "projector", "head.pt", "torchvision")
    assert "torch.nn.Linear(2048, 2048, bias=False)" in snippet
    assert "torch.nn.Linear(2048, 64, bias=False)" in snippet
    head = ex.plain_projector(spec)
    assert [k for k, _ in head.state_dict().items()] == ["0.weight", "2.weight"]


@pytest.mark.parametrize("head", ["v1", "v1-bn", "v2"])
def test_every_head_kind_loads_into_its_snippet_and_plain_module(head: str) -> None:
    spec = model_spec("resnet18", "cifar", head=head, hidden_dim=32, projection_dim=8)
    trained = build_simclr(spec).projector.state_dict()
    plain = ex.plain_projector(spec)
    plain.load_state_dict(trained, strict=True)
    namespace: dict = {}
    code = ex.load_snippet(spec, "projector", "head.pt", "torchvision").splitlines()
    exec("\n".join(line for line in code if "load" not in line), namespace)  # build only
    namespace["head"].load_state_dict(trained, strict=True)
    x = torch.randn(4, 512)
    build = build_simclr(spec).projector
    build.load_state_dict(trained)
    assert torch.allclose(plain.eval()(x), build.eval()(x), atol=1e-6)


# -- a fine-tuned classifier -----------------------------------------------------------------


@pytest.fixture(scope="module")
def classifiers(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """Classifier checkpoints: a linear head on h (CIFAR stem), and one that kept the first
    layer of a v2 projection head (ImageNet stem)."""
    from eval_fixtures import save_classifier_checkpoint

    root = tmp_path_factory.mktemp("export-classifiers")
    save_classifier_checkpoint(root / "linear.pt", stem="cifar", image_size=16, seed=3)
    save_classifier_checkpoint(root / "head1.pt", classes=("a", "b", "c", "d"), stem="imagenet",
                               image_size=32, from_head_layer=1, seed=4, head="v2",
                               hidden_dim=32, projection_dim=8)  # fmt: skip
    return {"linear": root / "linear.pt", "head1": root / "head1.pt"}


def classifier_logits(ck: Path, x: torch.Tensor) -> torch.Tensor:
    """The classifier checkpoint's own logits in PyTorch (independent of the export code)."""
    from simclr_cli.storage.classifier import load_classifier, load_classifier_payload

    with torch.no_grad():
        return load_classifier(load_classifier_payload(ck))(x)


@pytest.mark.parametrize(
    ("fmt", "which"),
    [(fmt, which) for fmt in ("torchvision", "safetensors", "torchscript")
     for which in ("linear", "head1")] + [("onnx", "head1")],  # one ONNX export: the slow one
)  # fmt: skip
def test_a_classifier_exports_its_logits_and_class_names(
    classifiers, tmp_path, monkeypatch, fmt, which
) -> None:
    ck, size = classifiers[which], 16 if which == "linear" else 32
    out = tmp_path / f"classifier.{fmt}"
    summary = export(ck, out, format=fmt)
    meta = json.loads(Path(summary["meta"]).read_text())
    classes = ["cat", "dog", "owl"] if which == "linear" else ["a", "b", "c", "d"]
    assert summary["part"] == meta["part"] == "classifier" and meta["classes"] == classes
    assert meta["output"].startswith("logits") and meta["verified"]["max_abs_error"] <= 1e-4
    x = images(3, size)
    expected = classifier_logits(ck, x)
    if fmt in ("torchvision", "safetensors"):
        monkeypatch.chdir(tmp_path)
        scope: dict = {}
        exec(meta["load"], scope)  # noqa: S102 - the recorded lines, verbatim
        model = scope["model"]
        assert isinstance(model, torchvision_resnet())
        with torch.no_grad():
            got = model.eval()(x)
    elif fmt == "torchscript":
        got = torch.jit.load(str(out))(x)
    else:
        onnx = pytest.importorskip("onnx")
        import onnxruntime

        props = {p.key: p.value for p in onnx.load(str(out)).metadata_props}
        assert json.loads(props["classes"]) == classes
        session = onnxruntime.InferenceSession(str(out))
        got = torch.from_numpy(session.run(["logits"], {"images": x.numpy()})[0])
    assert got.shape == (3, len(classes))
    torch.testing.assert_close(got, expected, atol=1e-4, rtol=0)


def torchvision_resnet() -> type:
    import torchvision

    return torchvision.models.ResNet


def test_the_encoder_of_a_classifier_exports_and_a_head_part_is_refused(
    classifiers, tmp_path, capsys
) -> None:
    from simclr_cli.storage.classifier import load_classifier, load_classifier_payload

    ck = classifiers["linear"]
    export(ck, tmp_path / "encoder.pt", part="encoder")
    encoder = ex.plain_encoder(load_classifier_payload(ck)["model"])
    encoder.load_state_dict(torch.load(tmp_path / "encoder.pt", weights_only=True), strict=True)
    x = images(2, 16)
    with torch.no_grad():
        expected = load_classifier(load_classifier_payload(ck)).encoder(x)
        torch.testing.assert_close(encoder.eval()(x), expected, atol=1e-5, rtol=0)
    code = run(["export", "--checkpoint", str(ck), "--part", "projector",
                "--out", str(tmp_path / "head.pt")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "a classifier exports classifier or encoder" in err
    assert not (tmp_path / "head.pt").exists()


def test_a_pretraining_checkpoint_has_no_classifier_part(checkpoints, tmp_path, capsys) -> None:
    code = run(["export", "--checkpoint", str(checkpoints["imagenet"]), "--part", "classifier",
                "--out", str(tmp_path / "x.pt")])  # fmt: skip
    err = capsys.readouterr().err
    assert code == 2 and "a pretraining checkpoint exports encoder or projector or both" in err
    assert listing(tmp_path) == []
