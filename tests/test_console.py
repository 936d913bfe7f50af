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
