"""A run that never hangs, never shares its folder, and never resumes onto different data.

Each test reproduces a fault of issue 26: a late decode failure with DataLoader workers (the
command exited only after its wall time), two writers of one run folder or one set of results,
a resume after an image was removed, a truncated ``checkpoint_last.pt`` beside an intact epoch
checkpoint.
"""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
from eval_fixtures import save_native_checkpoint, write_broken_png, write_folder
from process_fixtures import cli_flags, options, start_child, wait_for
from train_fixtures import assert_same_weights, metric_steps, weights

from simclr_cli.cli import run
from simclr_cli.method.schedule import Schedule
from simclr_cli.storage.checkpoint import load_checkpoint
from simclr_cli.storage.runlock import FOLDER_LOCK

ROOT = Path(__file__).resolve().parents[1]
# A hang guard: far above the seconds these commands take on a busy 2-core machine.
HANG_GUARD_S = 600


def error_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if line.startswith("error:")]


def pretrain_argv(out: Path, **overrides: Any) -> list[str]:
    return ["pretrain", *cli_flags(options(out, **overrides))]


# ------------------------------------------------------------------------------ no hang


def group_alive(pgid: int) -> list[str]:
    """The processes of group ``pgid`` still running (zombies, already ended, left out)."""
    alive = []
    for entry in Path("/proc").iterdir():
        if not entry.name.isdigit():
            continue
        try:
            fields = (entry / "stat").read_text().rsplit(")", 1)[1].split()
        except OSError:  # ended meanwhile
            continue
        if int(fields[2]) == pgid and fields[0] != "Z":
            alive.append(f"{entry.name} ({(entry / 'cmdline').read_bytes()[:80]!r})")
    return alive


def run_command(argv: list[str], cwd: Path) -> tuple[int, str]:
    """``simclr ARGV`` in a process group of its own; fails the test if it hangs or if any
    process of the group (a DataLoader worker) outlives it."""
    env = {**os.environ, "PYTHONPATH": str(ROOT), "OMP_NUM_THREADS": "1"}
    child = subprocess.Popen(
        [sys.executable, "-m", "simclr_cli", *argv],
        cwd=cwd,
        env=env,
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
        text=True,
        start_new_session=True,  # its pid is the group's id; its workers join the group
    )
    try:
        _, stderr = child.communicate(timeout=HANG_GUARD_S)
    except subprocess.TimeoutExpired:
        os.killpg(child.pid, signal.SIGKILL)
        child.communicate()
        pytest.fail(f"simclr {' '.join(argv)} hung (killed after {HANG_GUARD_S} s)")
    left = group_alive(child.pid)
    if left:
        os.killpg(child.pid, signal.SIGKILL)
    assert not left, f"processes outlived the command: {left}"
    return child.returncode, stderr


@pytest.fixture
def broken_folder(tmp_path: Path) -> Path:
    """The issue's reproduction: 7 images and a PNG whose image data does not decode."""
    folder = tmp_path / "d"
    write_folder(folder, None, 7, size=40)
    write_broken_png(folder / "bad.png")
    return folder


PRETRAIN = ["pretrain", "--image-size", "32", "--stem", "imagenet", "--batch-size", "8"]
PRETRAIN += ["--epochs", "1", "--workers", "2", "--device", "cpu", "--log-every", "1"]


@pytest.mark.slow
def test_features_with_workers_ends_with_its_error_and_its_workers(
    tmp_path: Path, broken_folder: Path
) -> None:
    save_native_checkpoint(tmp_path / "ck.pt")
    argv = ["features", "--checkpoint", "ck.pt", "--dataset", "./d", "--out", "feats"]
    code, stderr = run_command([*argv, "--workers", "2", "--device", "cpu"], tmp_path)
    assert code == 1, stderr
    assert error_lines(stderr) == [
        f"error: cannot decode {broken_folder / 'bad.png'} (broken data stream when reading "
        "image file); remove or replace the file"
    ]
    assert "Traceback" not in stderr and not (tmp_path / "feats").exists()


@pytest.mark.slow
def test_pretrain_skips_an_image_that_fails_to_decode_and_counts_it(
    tmp_path: Path, broken_folder: Path
) -> None:
    code, stderr = run_command([*PRETRAIN, "--dataset", "./d", "--out", "run"], tmp_path)
    assert code == 0, stderr
    said = " ".join(stderr.split())  # the console may wrap the line
    assert (
        "warning: skipped 1 image that failed to decode, each replaced by the next image: "
        f"{broken_folder / 'bad.png'} (1 in all; the run stops past 10)"
    ) in said, said
    assert load_checkpoint(tmp_path / "run" / "checkpoint_last.pt")["global_step"] == 1


@pytest.mark.slow
def test_pretrain_on_a_folder_of_broken_images_fails_and_ends_its_workers(tmp_path: Path) -> None:
    folder = tmp_path / "g"
    write_folder(folder, None, 1, size=40)  # img00.png decodes
    for i in range(1, 15):
        write_broken_png(folder / f"img{i:02d}.png")  # the 14 others do not
    code, stderr = run_command([*PRETRAIN, "--dataset", "./g", "--out", "run"], tmp_path)
    assert code == 1, stderr
    (line,) = error_lines(stderr)
    assert re.match(
        rf"error: 11 images of {re.escape(str(tmp_path / 'g'))} failed to decode \(e\.g\. "
        rf"{re.escape(str(tmp_path / 'g'))}/img\d\d\.png\), more than the 10 "
        r"a run of 15 images skips; replace or remove the broken files",
        line,
    ), line
    assert "Traceback" not in stderr


# ------------------------------------------------------------------------------ one writer


def lock_holder(child: subprocess.Popen, lock: Path) -> bool:
    """Whether ``child`` holds ``lock`` (it writes its pid into the file once it does)."""
    try:
        return lock.read_text().startswith(f"{child.pid} ")
    except OSError:
        return False


@pytest.mark.slow
@pytest.mark.usefixtures("tiny")
def test_a_second_writer_of_a_run_folder_is_refused_and_the_first_run_stays_whole(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    first = start_child({"cli": pretrain_argv(out, epochs=3), "step_sleep": 0.05})
    try:
        wait_for(lambda: lock_holder(first, out / FOLDER_LOCK), first)
        first.send_signal(signal.SIGSTOP)  # the first run holds the folder, at any moment
        for argv in (pretrain_argv(out, seed=1), pretrain_argv(out) + ["--resume", "auto"]):
            assert run(argv) == 1
            (line,) = error_lines(capsys.readouterr().err)
            assert line == (
                f"error: {out} is being written by another process (pid {first.pid}: simclr "
                "pretrain); wait for it to finish, or choose another --out"
            )
    finally:
        first.send_signal(signal.SIGCONT)
    _, stderr = first.communicate(timeout=HANG_GUARD_S)
    assert first.returncode == 0, stderr
    config = json.loads((out / "config.json").read_text())
    saved = load_checkpoint(out / "checkpoint_last.pt")
    assert config["seed"] == saved["config"]["seed"] == 0
    assert metric_steps(out) == list(range(1, 13))  # 3 epochs of 4 steps, each once
    assert not (out / FOLDER_LOCK).exists() and not list(out.glob(".*.tmp"))


HOLD = """
import sys
from pathlib import Path
from simclr_cli.storage import runlock
with runlock.hold_output(Path(sys.argv[1]), sys.argv[2]):
    print("held", flush=True)
    sys.stdin.read()
"""


@pytest.mark.parametrize(
    ("command", "target", "argv"),
    [
        ("features", "feats/features.npy", ["--dataset", "shapes", "--limit", "8", "--out"]),
        ("linear-eval", "le/linear_eval.json", ["--dataset", "shapes", "--limit", "8", "--out"]),
        ("export", "exp/encoder.pt", ["--out"]),
    ],
)
def test_a_second_writer_of_the_same_results_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str], command: str, target: str, argv: list[str]
) -> None:
    save_native_checkpoint(tmp_path / "ck.pt")
    locked = tmp_path / target
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(locked), f"simclr {command}"],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"  # type: ignore[union-attr]
        out = str(locked if command == "export" else locked.parent)
        code = run([command, "--checkpoint", str(tmp_path / "ck.pt"), *argv, out])
    finally:
        holder.communicate(timeout=HANG_GUARD_S)
    assert code == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {locked} is being written by another process (pid ")
    assert f"(pid {holder.pid}: simclr {command}); wait for it to finish" in line
    assert not locked.parent.exists()  # the holder's lock file and folder are gone


HOLD_FOLDER = """
import sys
from pathlib import Path
from simclr_cli.storage import runlock
with runlock.hold_folder(Path(sys.argv[1]), "simclr finetune"):
    print("held", flush=True)
    sys.stdin.read()
"""


def test_a_second_finetune_into_one_folder_is_refused(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    save_native_checkpoint(tmp_path / "ck.pt")
    out = tmp_path / "ft"
    holder = subprocess.Popen(
        [sys.executable, "-c", HOLD_FOLDER, str(out)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    try:
        assert holder.stdout.readline() == "held\n"  # type: ignore[union-attr]
        argv = ["finetune", "--checkpoint", str(tmp_path / "ck.pt"), "--dataset", "shapes"]
        code = run([*argv, "--labels-per-class", "2", "--out", str(out)])
    finally:
        holder.communicate(timeout=HANG_GUARD_S)
    assert code == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line == (
        f"error: {out} is being written by another process (pid {holder.pid}: simclr "
        "finetune); wait for it to finish, or choose another --out"
    )
    assert not out.exists()  # the holder's lock file and folder are gone


# ------------------------------------------------------------------------------ changed data


def snapshot(folder: Path) -> dict[str, tuple[int, int]]:
    """Every file of ``folder``: size and modification time."""
    return {p.name: (p.stat().st_size, p.stat().st_mtime_ns) for p in folder.iterdir()}


@pytest.mark.usefixtures("tiny")
def test_a_resume_onto_a_changed_dataset_is_refused_and_writes_nothing(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    images, out = tmp_path / "images", tmp_path / "run"
    write_folder(images, None, 12, size=8)
    argv = ["pretrain", "--dataset", str(images), "--image-size", "8", "--stem", "cifar"]
    argv += ["--batch-size", "4", "--epochs", "2", "--warmup-epochs", "1", "--workers", "0"]
    argv += ["--device", "cpu", "--precision", "fp32", "--log-every", "1", "--out", str(out)]
    assert run([*argv, "--max-steps", "3"]) == 0  # one epoch of 3 steps
    (images / "img05.png").unlink()  # as a decode error used to advise
    before = snapshot(out)
    capsys.readouterr()
    assert run(["pretrain", "--resume", "auto", "--out", str(out)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line == (
        f"error: {images} is not the data {out / 'checkpoint_last.pt'} was trained on (12 "
        "images then, 11 now; 3 steps per epoch then, 2 now); restore it, or continue on the "
        "data as it is now with --accept-new-data, which keeps the run's schedule (6 steps)"
    )
    assert snapshot(out) == before
    # Accepted: the run's schedule goes on (6 steps, the same lr for every step).
    assert run(["pretrain", "--resume", "auto", "--out", str(out), "--accept-new-data"]) == 0
    saved = load_checkpoint(out / "checkpoint_last.pt")
    resolved = saved["config"]["resolved"]
    assert (saved["global_step"], resolved["total_steps"], resolved["warmup_steps"]) == (6, 6, 3)
    assert (resolved["train_images"], resolved["steps_per_epoch"]) == (11, 2)
    records = [json.loads(line) for line in (out / "metrics.jsonl").read_text().splitlines()]
    schedule = Schedule(resolved["resolved_lr"], total_steps=6, warmup_steps=3)
    assert metric_steps(out) == [1, 2, 3, 4, 5, 6]
    assert [r["lr"] for r in records if "lr" in r] == [schedule(step) for step in range(6)]
    # And the next resume without the flag: the data is the run's again.
    assert run(["pretrain", "--resume", "auto", "--out", str(out), "--epochs", "3"]) == 0
    assert load_checkpoint(out / "checkpoint_last.pt")["global_step"] == 8


def test_accept_new_data_needs_a_resume(capsys: pytest.CaptureFixture[str]) -> None:
    assert run(["pretrain", "--accept-new-data", "--out", "never"]) == 2
    (line,) = error_lines(capsys.readouterr().err)
    assert "--accept-new-data continues a run: add --resume auto --out RUN" in line


# ------------------------------------------------------------------------------ damaged last


@pytest.mark.usefixtures("tiny")
def test_a_truncated_last_checkpoint_names_the_intact_epoch_checkpoint_and_its_command(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    # checkpoint_epoch_1.pt and checkpoint_epoch_2.pt (a hard link to checkpoint_last.pt)
    assert run([*pretrain_argv(out, epochs=2), "--checkpoint-every", "1"]) == 0
    finished = weights(out / "checkpoint_last.pt")
    last = out / "checkpoint_last.pt"
    with open(last, "r+b") as f:  # cut short in place: the hard-linked epoch 2 file too
        f.truncate(last.stat().st_size // 2)
    capsys.readouterr()
    assert run(["pretrain", "--resume", "auto", "--out", str(out)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    intact = out / "checkpoint_epoch_1.pt"
    command = f"simclr pretrain --resume {intact} --out {out}"
    assert line.startswith(f"error: {last}: it is corrupt or truncated"), line
    assert line.endswith(
        f"{out} holds an intact checkpoint_epoch_1.pt: continue from it with `{command}` "
        "(the steps after it are trained again)"
    )
    # A command that reads the run's checkpoint (info, linear-eval, export...) names it too.
    assert run(["info", str(out)]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert line.startswith(f"error: {last}: it is corrupt or truncated"), line
    assert line.endswith(
        f"{out} holds an intact checkpoint_epoch_1.pt (an earlier epoch of the run): "
        f"give {intact} instead"
    )
    assert run(["info", str(intact)]) == 0
    assert run(shlex.split(command)[1:]) == 0  # the command it names: epoch 2 again
    assert_same_weights(weights(last), finished)


@pytest.mark.usefixtures("tiny")
def test_epoch_files_without_a_last_checkpoint_are_not_trained_over(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "run"
    argv = [*pretrain_argv(out, epochs=3), "--checkpoint-every", "1"]
    assert run([*argv, "--max-steps", "8"]) == 0  # two of three epochs (4 steps each)
    (out / "checkpoint_last.pt").unlink()  # checkpoint_epoch_2.pt, its hard link, stays
    newest = out / "checkpoint_epoch_2.pt"
    assert load_checkpoint(newest)["global_step"] == 8
    command = f"simclr pretrain --resume {newest} --out {out}"
    for extra in ([], ["--resume", "auto"]):  # a fresh run, and auto (which found no last)
        before = snapshot(out)
        capsys.readouterr()
        assert run([*argv, *extra]) == 1
        (line,) = error_lines(capsys.readouterr().err)
        assert line == (
            f"error: {out} holds a run's checkpoint_epoch_2.pt but no checkpoint_last.pt; "
            f"continue from it with `{command}`, or choose another --out"
        )
        assert snapshot(out) == before
    assert run(shlex.split(command)[1:]) == 0  # the command it names: the third epoch
    last = out / "checkpoint_last.pt"
    assert load_checkpoint(last)["global_step"] == 12
    # A last file deleted because it was damaged: its hard link, epoch 3, is damaged too.
    with open(last, "r+b") as f:
        f.truncate(last.stat().st_size // 2)
    last.unlink()
    capsys.readouterr()
    assert run([*argv, "--resume", "auto"]) == 1
    (line,) = error_lines(capsys.readouterr().err)
    assert "holds a run's checkpoint_epoch_2.pt but no checkpoint_last.pt" in line, line
