"""The command-line surface: help, version, and one-line errors for bad input."""

from __future__ import annotations

import errno
import os
import re
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path

import pytest

from simclr_cli import __version__, allocator
from simclr_cli.cli import run

COMMANDS = (
    "pretrain",
    "linear-eval",
    "finetune",
    "predict",
    "features",
    "export",
    "report",
    "download",
    "info",
)


def _listing(root: Path) -> set[str]:
    return {str(p.relative_to(root)) for p in root.rglob("*")}


def test_version(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["--version"]) == 0
    assert capsys.readouterr().out.strip() == f"simclr-cli {__version__}"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_top_level_help_lists_every_command(flag: str, capsys: pytest.CaptureFixture[str]) -> None:
    assert run([flag]) == 0
    out = capsys.readouterr().out
    for command in COMMANDS:
        assert command in out
    listed = [line.split()[1] for line in out.splitlines() if line.startswith("│ ") and
              line.split()[1] in COMMANDS]  # fmt: skip
    assert listed == list(COMMANDS)  # finetune and predict after linear-eval


@pytest.mark.parametrize("command", COMMANDS)
def test_command_help_has_defaults_and_examples(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([command, "-h"]) == 0
    out = capsys.readouterr().out
    assert "Examples" in out
    assert f"$ simclr {command}" in out


@pytest.mark.parametrize("command", COMMANDS)
def test_help_shows_no_type_for_on_off_flags(
    command: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run([command, "--help"]) == 0
    out = capsys.readouterr().out
    assert "<bool>" not in out and "--help" in out


def test_pretrain_help_shows_model_defaults(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["pretrain", "--help"]) == 0
    # Rich wraps help text inside a box whose columns depend on the longest flag name: drop
    # the box lines so that a default wrapped onto the next line still reads as one phrase.
    out = " ".join(re.sub("[│╭╮╰╯─]", " ", capsys.readouterr().out).split())
    # Defaults come from PretrainConfig, so help and behaviour cannot drift apart.
    assert "[default: 0.5]" in out  # temperature
    assert "[default: lars]" in out


@pytest.fixture
def a_file(workdir: Path, tmp_path: Path) -> Path:
    path = tmp_path / "not_a_checkpoint.pt"
    path.write_bytes(b"hello")
    return path


# (argv, flag the message must name). FILE is replaced by an existing file outside the cwd.
BAD_INPUTS: list[tuple[list[str], str]] = [
    (["pretrain", "--batch-size", "0"], "--batch-size"),
    (["pretrain", "--batch-size", "-5"], "--batch-size"),
    (["pretrain", "--batch-size", "abc"], "--batch-size"),
    (["pretrain", "--arch", "resnet9"], "--arch"),
    (["pretrain", "--dataset", "no-such-dataset"], "--dataset"),
    (["pretrain", "--temperature", "0"], "--temperature"),
    (["pretrain", "--temperature", "-1"], "--temperature"),
    (["pretrain", "--temperature", "nan"], "--temperature"),
    (["pretrain", "--image-size", "4"], "--image-size"),
    (["pretrain", "--stem", "imagenet", "--image-size", "16"], "--image-size"),
    (["pretrain", "--optimizer", "rmsprop"], "--optimizer"),
    (["pretrain", "--epochs", "0"], "--epochs"),
    (["pretrain", "--epochs", "5", "--warmup-epochs", "5"], "--warmup-epochs"),
    (["pretrain", "--warmup-epochs", "-1"], "--warmup-epochs"),
    (["pretrain", "--precision", "fp8"], "--precision"),
    (["pretrain", "--device", "tpu"], "--device"),
    (["pretrain", "--head", "v3"], "--head"),
    (["pretrain", "--lr", "-0.1"], "--lr"),
    (["pretrain", "--workers", "-1"], "--workers"),
    (["pretrain", "--jitter-strength", "-1"], "--jitter-strength"),
    (["pretrain", "--augment-on", "tpu"], "--augment-on"),
    (["pretrain", "--data-on", "gpu"], "--data-on"),
    (["pretrain", "--augment-on", "cpu", "--data-on", "device"], "add --augment-on device"),
    (["pretrain", "--crop-scale", "0"], "--crop-scale"),
    (["pretrain", "--crop-scale", "0.5,0.2"], "--crop-scale"),
    (["pretrain", "--crop-scale", "big"], "--crop-scale"),
    (["pretrain", "--crop-scale", "0.2,0.5,1"], "--crop-scale"),
    (["pretrain", "--knn-k", "0"], "--knn-k"),
    (["pretrain", "--resume", "missing.pt"], "--resume"),
    (["pretrain", "--resume", "auto"], "--out names the run to continue"),
    (["pretrain", "--out", ""], "--out"),
    (["pretrain", "--out", "FILE"], "--out"),
    (["pretrain", "--epochs", "two"], "--epochs"),
    (["pretrain", "--device", "cpu", "--processes", "3", "--batch-size", "256"], "--batch-size"),
    (["pretrain", "--nodes", "2", "--node-rank", "2"], "--node-rank"),
    (["pretrain", "--gpus", "2", "--device", "cpu"], "--gpus"),
    (["pretrain", "--gpus", "4"], "drop --gpus"),  # no GPU here: the advice must work
    (["pretrain", "--no-such-flag"], "--no-such-flag"),
    (["linear-eval", "--checkpoint", "missing.pt", "--dataset", "shapes"], "--checkpoint"),
    (["linear-eval", "--checkpoint", "FILE"], "--dataset"),
    (["linear-eval", "--checkpoint", "FILE", "--dataset", "nope"], "--dataset"),
    (["linear-eval", "--checkpoint", "FILE", "--train-dir", "nope"], "--train-dir"),
    (
        ["linear-eval", "--checkpoint", "FILE", "--dataset", "shapes", "--val-split", "1.5"],
        "--val-split",
    ),
    (["linear-eval", "--dataset", "shapes"], "--checkpoint"),
    (
        ["linear-eval", "--checkpoint", "FILE", "--dataset", "shapes", "--baseline", "zero"],
        "--baseline",
    ),
    (["features", "--checkpoint", "missing.pt", "--out", "feats"], "--checkpoint"),
    (["features", "--checkpoint", "FILE", "--out", "feats", "--layer", "middle"], "--layer"),
    (["features", "--checkpoint", "FILE", "--out", "feats", "--split", "val"], "--split"),
    (["features", "--checkpoint", "FILE", "--out", "feats", "--batch-size", "0"], "--batch-size"),
    (["features", "--checkpoint", "FILE", "--out", ""], "--out"),
    (["features", "--checkpoint", "FILE", "--out", "FILE"], "--out"),
    (["linear-eval", "--checkpoint", "FILE", "--dataset", "shapes", "--out", "FILE"], "--out"),
    # evaluation runs in float32 on the CPU; only pretraining's fp16 runs there (with a scaler)
    (["features", "--checkpoint", "FILE", "--out", "f", "--precision", "fp16"], "fp16 needs a GPU"),
    (["download", "not-a-model"], "NAME"),
    (["download", "ftp://example.org/x.pt"], "NAME"),
    (["download", "resnet50-stl10", "--from-file", "missing.tar"], "--from-file"),
    (["download"], "--list"),
    (["info", "missing.pt"], "CHECKPOINT"),
    (["export", "--checkpoint", "missing.pt", "--out", "e.pt"], "--checkpoint"),
    (["export", "--checkpoint", "FILE", "--out", "e.pt", "--format", "tflite"], "--format"),
    (["export", "--checkpoint", "FILE", "--out", "e.pt", "--part", "neck"], "--part"),
    (["export", "--checkpoint", "FILE", "--out", "."], "--out"),
    (["finetune", "--dataset", "shapes"], "--checkpoint"),
    (["finetune", "--checkpoint", "FILE"], "--dataset"),
    (
        ["finetune", "--checkpoint", "FILE", "--dataset", "shapes", "--label-fraction", "2"],
        "--label-fraction",
    ),
    (
        ["finetune", "--checkpoint", "FILE", "--dataset", "shapes", "--labels-per-class", "0"],
        "--labels-per-class",
    ),
    (
        ["finetune", "--checkpoint", "FILE", "--dataset", "shapes", "--subset", "missing.txt"],
        "--subset",
    ),
    (
        ["finetune", "--checkpoint", "FILE", "--dataset", "shapes", "--val-split", "1"],
        "--val-split",
    ),
    (
        ["finetune", "--checkpoint", "FILE", "--dataset", "shapes", "--optimizer", "adam"],
        "--optimizer",
    ),
    (
        ["finetune", "--checkpoint", "FILE", "--dataset", "shapes", "--baseline", "random"],
        "--baseline",
    ),
    (
        ["finetune", "--checkpoint", "FILE", "--dataset", "shapes", "--test-split", "0.2"],
        "--test-split",
    ),
    (["finetune", "--resume", "auto"], "--out"),
    (["finetune", "--resume", "yes", "--out", "x"], "--resume"),
    (["predict", "--checkpoint", "FILE", "missing.png"], "IMAGES"),
    (["predict", "--checkpoint", "FILE", ".", "--top-k", "0"], "--top-k"),
    (["predict", "--checkpoint", "FILE", ".", "--out", "."], "--out"),
    (["predict", "--checkpoint", "missing.pt", "."], "--checkpoint"),
    (["report", "missing-run"], "RUN_DIR"),
    (["report", ".", "--queries", "0"], "--queries"),
    (["report", ".", "--features", "missing"], "--features"),
]


@pytest.mark.parametrize(("argv", "flag"), BAD_INPUTS, ids=[" ".join(a) for a, _ in BAD_INPUTS])
def test_bad_input_is_one_line_exit_2(
    argv: list[str],
    flag: str,
    a_file: Path,
    workdir: Path,
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = [str(a_file) if token == "FILE" else token for token in argv]
    before = _listing(workdir)
    code = run(argv)
    captured = capsys.readouterr()
    lines = captured.err.strip().splitlines()
    assert code == 2, captured.err
    assert len(lines) == 1, captured.err
    assert lines[0].startswith("error: ")
    assert flag in lines[0]
    assert "PosixPath" not in lines[0]  # paths are shown as the user typed them
    assert "Traceback" not in captured.err + captured.out
    assert _listing(workdir) == before  # nothing created
    assert not (workdir / "runs").exists()


def test_a_type_error_says_the_value_once(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["pretrain", "--epochs", "two"]) == 2
    err = capsys.readouterr().err
    assert err.lower().count("invalid value") == 1 and err.count("'two'") == 1
    assert err.startswith("error: --epochs: invalid value 'two'; ")


def test_resume_help_names_the_options_that_may_change(capsys: pytest.CaptureFixture[str]) -> None:
    from simclr_cli.config import RESUME_MAY_CHANGE, flag_name

    assert run(["pretrain", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    for name in RESUME_MAY_CHANGE:
        assert flag_name(name) in out


def test_bad_value_message_names_value_and_allowed(
    workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    assert run(["pretrain", "--arch", "resnet9"]) == 2
    err = capsys.readouterr().err
    assert "'resnet9'" in err and "resnet18" in err and "wide_resnet50_2" in err


def test_runtime_error_is_one_line_exit_1(
    a_file: Path, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    # A file that exists but is not a checkpoint is a runtime failure, not a usage error.
    code = run(["info", str(a_file)])
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 1
    assert len(err) == 1 and err[0].startswith("error: ")
    assert "Traceback" not in err[0]


@pytest.mark.parametrize("command", ["features", "pretrain"])
def test_an_unwritable_out_is_one_line_exit_1(
    command: str, workdir: Path, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from eval_fixtures import save_native_checkpoint

    # --out under a regular file: the folder cannot be created (the same as a read-only or
    # missing mount, without needing a non-root user).
    (workdir / "notes.txt").write_text("not a folder")
    out = workdir / "notes.txt" / "run"
    if command == "features":
        checkpoint = tmp_path / "ck.pt"
        save_native_checkpoint(checkpoint, projection_dim=16)
        argv = ["features", "--checkpoint", str(checkpoint), "--dataset", "shapes"]
        argv += ["--limit", "4", "--device", "cpu"]
    else:
        argv = ["pretrain", "--max-steps", "1", "--device", "cpu", "--workers", "0"]
    before = _listing(workdir)
    assert run([*argv, "--out", str(out)]) == 1
    lines = capsys.readouterr().err.splitlines()
    # What the command was doing (loading data...) may come first; the error is one line.
    assert lines[-1] == (
        f"error: Not a directory: {out}; a part of that path is a file, not a folder; "
        "choose another path"
    )
    assert all(line.endswith("...") for line in lines[:-1]), lines
    assert _listing(workdir) == before


def test_a_full_disk_is_one_line_exit_1(
    monkeypatch: pytest.MonkeyPatch, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simclr_cli.training import pretrain as train

    def full(cfg):  # noqa: ANN001 - stands in for a run that fills the disk while saving
        raise OSError(errno.ENOSPC, "No space left on device", "runs/x/checkpoint_last.pt.tmp")

    monkeypatch.setattr(train, "run_pretrain", full)
    assert run(["pretrain", "--device", "cpu"]) == 1
    assert capsys.readouterr().err == (
        "error: No space left on device: runs/x/checkpoint_last.pt.tmp; "
        "free some space, or write somewhere else\n"
    )


def test_os_error_lines() -> None:
    from simclr_cli.errors import os_error_line

    renamed = OSError(errno.EROFS, "Read-only file system")
    renamed.filename, renamed.filename2 = "a.tmp", "a.pt"
    assert os_error_line(renamed) == (
        "Read-only file system: a.tmp -> a.pt; that file system is read-only; choose another path"
    )
    denied = PermissionError(errno.EACCES, "Permission denied", "/data")
    assert (
        os_error_line(denied) == "Permission denied: /data; check its permissions, or choose "
        "another path"
    )
    quota = OSError(errno.EDQUOT, "Disk quota exceeded")  # no file name: still one clear line
    assert os_error_line(quota) == "Disk quota exceeded; free some space, or write somewhere else"
    assert os_error_line(OSError(errno.EXDEV, "Invalid cross-device link", "a")) is None
    assert os_error_line(OSError("no errno at all")) is None


def test_an_os_error_that_is_a_bug_keeps_its_traceback(
    monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    from simclr_cli.training import pretrain as train

    def bug(cfg):  # noqa: ANN001 - an OSError no user can fix (a bad argument to a call)
        raise OSError(errno.EINVAL, "Invalid argument")

    monkeypatch.setattr(train, "run_pretrain", bug)
    with pytest.raises(OSError, match="Invalid argument"):
        run(["pretrain", "--device", "cpu"])


def _simclr(*args: str, env: dict[str, str] | None = None, cwd: Path | None = None):
    return subprocess.run(
        [sys.executable, "-m", "simclr_cli", *args],
        capture_output=True,
        text=True,
        env={**os.environ, **(env or {})},
        cwd=cwd,
        timeout=120,
    )


def test_module_entry_point_exit_codes(workdir: Path) -> None:
    ok = _simclr("--version", cwd=workdir)
    assert ok.returncode == 0 and __version__ in ok.stdout
    bad = _simclr("pretrain", "--temperature", "0", cwd=workdir)
    assert bad.returncode == 2
    assert bad.stderr.count("\n") == 1 and "--temperature" in bad.stderr


def test_debug_env_shows_traceback(a_file: Path, workdir: Path) -> None:
    quiet = _simclr("info", str(a_file), cwd=workdir)
    loud = _simclr("info", str(a_file), cwd=workdir, env={"SIMCLR_DEBUG": "1"})
    assert quiet.returncode == loud.returncode == 1
    assert "Traceback" not in quiet.stderr
    assert "Traceback" in loud.stderr


def test_keyboard_interrupt_exits_130(
    monkeypatch: pytest.MonkeyPatch, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simclr_cli.cli import info

    def interrupted(cfg):  # noqa: ANN001 - stands in for a long-running command
        raise KeyboardInterrupt

    monkeypatch.setattr(info, "system_info", interrupted)
    assert run(["info"]) == 130
    assert "interrupted" in capsys.readouterr().err


def test_pretrain_receives_validated_config(
    monkeypatch: pytest.MonkeyPatch, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from simclr_cli.config import PretrainConfig
    from simclr_cli.training import pretrain as train

    seen: list[PretrainConfig] = []
    monkeypatch.setattr(train, "run_pretrain", lambda cfg: seen.append(cfg) or {"loss": 1.0})
    argv = ["pretrain", "--batch-size", "64", "--temperature", "0.2", "--optimizer", "adam"]
    assert run([*argv, "--device", "cpu", "--no-blur"]) == 0
    (cfg,) = seen
    assert isinstance(cfg, PretrainConfig)
    assert (cfg.batch_size, cfg.temperature, cfg.optimizer) == (64, 0.2, "adam")
    assert cfg.blur is False and cfg.resolved_blur is False
    assert cfg.dataset == "shapes" and cfg.resolved_image_size == 32
    assert cfg.resolved_stem == "cifar"
    assert str(cfg.out).startswith("runs")
    assert cfg.crop_scale == (0.08, 1.0) and cfg.flip is True  # the paper's views by default


def test_pretrain_view_options_reach_the_config(
    monkeypatch: pytest.MonkeyPatch, workdir: Path
) -> None:
    from simclr_cli.config import PretrainConfig
    from simclr_cli.method import augment
    from simclr_cli.training import pretrain as train

    seen: list = []
    monkeypatch.setattr(train, "run_pretrain", lambda cfg: seen.append(cfg) or {"loss": 1.0})
    assert run(["pretrain", "--crop-scale", "0.25", "--no-flip", "--knn-k", "20"]) == 0
    assert run(["pretrain", "--crop-scale", "0.3,0.9"]) == 0
    assert (seen[0].crop_scale, seen[0].flip, seen[0].knn_k) == ((0.25, 1.0), False, 20)
    assert seen[1].crop_scale == (0.3, 0.9) and seen[1].knn_k is None
    assert PretrainConfig().crop_scale == augment.CROP_SCALE  # one default, two modules


def test_linear_eval_baseline_flag_reaches_the_config(
    monkeypatch: pytest.MonkeyPatch, workdir: Path, a_file: Path
) -> None:
    from simclr_cli.evaluation import linear_eval

    seen: list = []
    monkeypatch.setattr(linear_eval, "run_linear_eval", lambda cfg: seen.append(cfg) or {"top1": 1})
    argv = ["linear-eval", "--checkpoint", str(a_file), "--dataset", "shapes"]
    assert run([*argv, "--baseline", "random", "--baseline", "pixels"]) == 0
    assert run(argv) == 0
    assert seen[0].baseline == ("random", "pixels") and seen[1].baseline == ()
    assert seen[1].knn_k is None  # chosen from the data


def test_finetune_flags_reach_the_config(
    monkeypatch: pytest.MonkeyPatch, workdir: Path, a_file: Path
) -> None:
    from simclr_cli.evaluation import finetune

    seen: list = []
    monkeypatch.setattr(finetune, "run_finetune", lambda cfg: seen.append(cfg) or {"top1": 1})
    argv = ["finetune", "--checkpoint", str(a_file), "--dataset", "shapes"]
    assert (
        run(
            [
                *argv,
                "--labels-per-class",
                "10",
                "--baseline",
                "scratch",
                "--baseline",
                "linear",
                "--from-head-layer",
                "1",
                "--crop-scale",
                "0.5",
                "--no-flip",
            ]
        )
        == 0
    )
    assert run([*argv, "--label-fraction", "0.1", "--optimizer", "lars"]) == 0  # fmt: skip
    assert seen[0].baseline == ("scratch", "linear") and seen[0].labels_per_class == 10
    assert seen[0].from_head_layer == 1 and seen[0].crop_scale == (0.5, 1.0) and not seen[0].flip
    assert seen[1].label_fraction == 0.1 and seen[1].optimizer == "lars" and seen[1].epochs is None
    assert seen[1].weight_decay == 0.0 and seen[1].out.parts[0] == "runs"  # the paper's default
    assert not (workdir / "runs").exists()  # the folder is made by the run, not the config


def test_info_describes_a_classifier(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    import json

    from eval_fixtures import save_classifier_checkpoint

    save_classifier_checkpoint(tmp_path / "classifier.pt", classes=("cat", "dog"))
    assert run(["info", str(tmp_path / "classifier.pt"), "--json"]) == 0
    data = json.loads(capsys.readouterr().out)
    assert data["kind"] == "classifier" and data["classes"] == "cat, dog"
    assert data["parameters"]["fc"] == 512 * 2 + 2 and not data["resumable"]


def test_info_json_reports_this_machine(workdir: Path) -> None:
    import json

    import torch

    result = _simclr("info", "--json", cwd=workdir)
    assert result.returncode == 0, result.stderr
    data = json.loads(result.stdout)
    assert data["versions"]["torch"] == torch.__version__
    assert data["versions"]["simclr-cli"] == __version__
    assert data["devices"]["cuda_available"] == torch.cuda.is_available()
    assert data["devices"]["cpu_count"] == os.cpu_count()
    assert data["devices"]["cpu_malloc"] == allocator.policy()
    assert "gloo" in data["distributed_backends"]
    assert data["folders"]["cache_dir"] == os.environ["SIMCLR_CACHE_DIR"]
    names = {row["name"] for row in data["checkpoints"]}
    assert {"resnet50-stl10", "resnet18-stl10", "resnet18-stl10-40ep"} <= names


def test_info_table(workdir: Path) -> None:
    result = _simclr("info", cwd=workdir)
    assert result.returncode == 0, result.stderr
    for word in ("torch", "torchvision", "gloo", "cache_dir", "resnet50-stl10"):
        assert word in result.stdout
    # Sizes read as sizes: "cache  0 B", not "cache_bytes  0 B" (the JSON keeps *_bytes).
    assert "_bytes" not in result.stdout
    assert re.search(r"cache\s+│ \d+(\.\d)? (B|KiB|MiB|GiB) ", result.stdout), result.stdout


def _info_loads_in_a_worker(
    monkeypatch: pytest.MonkeyPatch, get_item: Callable[[int], object]
) -> None:
    """Make ``simclr info`` stand in for a command that loads data: it iterates a 2-item
    dataset through one DataLoader worker, where ``get_item(index)`` runs."""
    from torch.utils.data import DataLoader, Dataset

    from simclr_cli.cli import info

    class InWorker(Dataset):
        def __len__(self) -> int:
            return 2

        def __getitem__(self, index: int):
            return get_item(index)

    def load_in_a_worker(cfg):  # noqa: ANN001
        for _ in DataLoader(InWorker(), num_workers=1):
            pass

    monkeypatch.setattr(info, "system_info", load_in_a_worker)


def test_worker_reraised_error_is_one_line(
    monkeypatch: pytest.MonkeyPatch, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A DatasetError raised inside a DataLoader worker still ends as one clean line."""
    import torch

    from simclr_cli.errors import DatasetError

    def broken(index: int):
        raise DatasetError("cannot read img.png: truncated file; remove it or fix the folder")

    _info_loads_in_a_worker(monkeypatch, broken)
    assert torch.utils.data.get_worker_info() is None
    assert run(["info"]) == 1
    err = capsys.readouterr().err
    assert err == "error: cannot read img.png: truncated file; remove it or fix the folder\n"


def test_a_killed_worker_is_one_line_naming_the_likely_cause(
    monkeypatch: pytest.MonkeyPatch, workdir: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """A worker killed from outside (as the out-of-memory killer does) ends as one line."""
    import signal

    def killed(index: int):
        os.kill(os.getpid(), signal.SIGKILL)  # runs in the worker process

    _info_loads_in_a_worker(monkeypatch, killed)
    assert run(["info"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("error: DataLoader worker")
    # torch words it either way, depending on which of its checks notices first
    assert ("killed by signal" in err or "exited unexpectedly" in err) and "Traceback" not in err
    assert "lower --workers or --batch-size" in err


def test_other_runtime_errors_keep_their_traceback(monkeypatch: pytest.MonkeyPatch) -> None:
    from simclr_cli.cli import info

    def bug(cfg):  # noqa: ANN001
        raise RuntimeError("shape mismatch in a matmul")

    monkeypatch.setattr(info, "system_info", bug)
    with pytest.raises(RuntimeError, match="shape mismatch"):
        run(["info"])


def test_derived_defaults_follow_the_paper() -> None:
    from simclr_cli.config import PretrainConfig

    small = PretrainConfig(dataset="shapes", device="cpu")
    assert (small.resolved_jitter_strength, small.resolved_blur) == (0.5, False)
    assert small.resolved_stem == "cifar"
    large = PretrainConfig(dataset="shapes", image_size=96, device="cpu")
    assert (large.resolved_jitter_strength, large.resolved_blur) == (1.0, True)
    assert large.resolved_stem == "imagenet"
    assert PretrainConfig(device="cpu", batch_size=512).resolved_lr == 0.3 * 512 / 256
    explicit = PretrainConfig(device="cpu", lr=0.1, jitter_strength=0.7, blur=True)
    assert (explicit.resolved_lr, explicit.resolved_jitter_strength, explicit.resolved_blur) == (
        0.1,
        0.7,
        True,
    )
    assert PretrainConfig(device="cpu", processes=4, batch_size=256).per_process_batch_size == 64


@pytest.mark.parametrize(
    ("size", "expected", "said"),
    [((8, 8), 32, "8 px"), ((64, 48), 48, "48 px"), ((400, 300), 224, "300 px"), (None, 24, "")],
)
def test_a_folder_default_image_size_follows_its_images(
    size, expected, said, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    from PIL import Image

    from simclr_cli.config import PretrainConfig

    for c in ("a", "b"):
        (tmp_path / "photos" / c).mkdir(parents=True)
        for i in range(3):
            Image.new("RGB", size or (30, 30)).save(tmp_path / "photos" / c / f"{i}.png")
    given = {} if size else {"image_size": 24}
    cfg = PretrainConfig(dataset=str(tmp_path / "photos"), device="cpu", **given)
    assert cfg.resolved_image_size == expected
    assert cfg.resolved_stem == ("cifar" if expected <= 64 else "imagenet")
    if size:
        assert cfg.image_size_reason == (
            f"auto: the images' median shorter side is {said}, kept within 32-224 px"
        )
    else:
        assert cfg.image_size_reason == "--image-size"
    assert run(["pretrain", "--help"]) == 0
    out = " ".join(re.sub("[│╭╮╰╯─]", " ", capsys.readouterr().out).split())
    assert "a folder's median image side, kept within 32-224" in out
    assert "native size" not in out


def test_lr_and_weight_decay_help_agree_with_the_defaults(
    capsys: pytest.CaptureFixture[str],
) -> None:
    from simclr_cli.method.schedule import BASE_LRS, DEFAULT_WEIGHT_DECAY

    assert run(["pretrain", "--help"]) == 0
    out = " ".join(capsys.readouterr().out.replace("│", " ").split())
    assert f"LARS {BASE_LRS['lars', 'linear']:g} / {BASE_LRS['lars', 'sqrt']:g}" in out
    assert f"SGD {BASE_LRS['sgd', 'linear']:g}" in out
    assert "Adam/AdamW 3e-4" in out and BASE_LRS["adam", "linear"] == 3e-4
    assert f"{DEFAULT_WEIGHT_DECAY['lars']:g} for LARS, Adam;" in out
    assert f"{DEFAULT_WEIGHT_DECAY['sgd']:g} for AdamW, SGD" in out
