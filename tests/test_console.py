"""Only rank 0 talks: other ranks get consoles and progress bars that print nothing."""

from __future__ import annotations

import pytest

from simclr_cli import console


@pytest.mark.parametrize("rank", ["0", "1"])
def test_only_rank_zero_prints(
    rank: str, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("RANK", rank)
    console.get_console().print("to stderr")
    console.stdout_console().print("to stdout")
    with console.make_progress("loss") as progress:
        task = progress.add_task("train", total=2, loss="-")
        progress.update(task, advance=2, loss="0.5")
    out, err = capsys.readouterr()
    if rank == "0":
        assert "to stdout" in out and "to stderr" in err
    else:
        assert out == "" and err == ""


def test_slurm_rank_counts_too(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SLURM_PROCID", "3")
    console.stdout_console().print("hidden")
    assert capsys.readouterr().out == ""


def test_human_bytes_uses_binary_units() -> None:
    assert [console.human_bytes(n) for n in (0, 1023, 1024, 1536, 5 * 1024**3)] == [
        "0 B",
        "1023 B",
        "1.0 KiB",
        "1.5 KiB",
        "5.0 GiB",
    ]


def test_terminal_progress_shows_the_epoch_and_a_smoothed_eta(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    import io

    from rich.console import Console

    screen = Console(file=io.StringIO(), force_terminal=True, width=200)
    monkeypatch.setattr(console, "get_console", lambda: screen)
    with console.StepProgress("pretrain", total=8, fields=("epoch", "loss")) as progress:
        progress.update(4, epoch="1.00/2", loss="3.1")
    shown = screen.file.getvalue()
    assert "epoch 1.00/2" in shown and "loss 3.1" in shown and "eta " in shown


def test_smoothed_rate_moves_part_of_the_way_to_a_new_rate(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    now = [0.0]
    monkeypatch.setattr(console.time, "perf_counter", lambda: now[0])
    rate = console.SmoothedRate()
    now[0] = 1.0
    assert rate.update(10) == 10.0
    now[0] = 2.0
    assert rate.update(40) == pytest.approx(10 + console.RATE_SMOOTHING * (30 - 10))


# ----------------------------------------------------------------------------------------------
# log files: one event, one line


def test_a_long_message_is_one_line_in_a_log(capsys: pytest.CaptureFixture[str]) -> None:
    message = "skipped 3 unreadable image files in " + "/data/" * 30 + " (a very long path)"
    console.get_console().print(f"[yellow]{message}")
    from simclr_cli.storage.fetch import say

    say(True, "connection failed: releases.example did not answer in time; " + "x" * 90)
    lines = capsys.readouterr().err.splitlines()
    assert lines == [message, "connection failed: releases.example did not answer in time; "
                     + "x" * 90]  # fmt: skip


def test_plain_progress_prints_one_line_per_count(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    monkeypatch.setenv("SIMCLR_PROGRESS_SECONDS", "0")
    with console.StepProgress("pretrain", total=8, unit="step", fields=("epoch",)) as progress:
        progress.update(4, epoch="1.00/2")
        progress.update(4, epoch="1.00/2")  # the same count again (an epoch's end)
        progress.update(8, epoch="2.00/2")
    lines = capsys.readouterr().err.splitlines()
    assert [line.split(" elapsed")[0] for line in lines] == [
        "pretrain step 4/8 (50%) epoch 1.00/2",
        "pretrain step 8/8 (100%) epoch 2.00/2",
    ]
