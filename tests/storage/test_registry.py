"""The file names of a run folder (``storage.registry``)."""

from __future__ import annotations

from pathlib import Path

from simclr_cli.storage.registry import RUN_CHECKPOINT, epoch_checkpoint, epoch_checkpoints


def test_epoch_checkpoints_are_the_files_epoch_checkpoint_names_newest_first(
    tmp_path: Path,
) -> None:
    for epoch in (2, 10, 1):
        epoch_checkpoint(tmp_path, epoch).write_bytes(b"x")
    # Not epoch files: another name, no suffix, a non-ASCII digit, a folder, the last file.
    for name in ("checkpoint_epoch_7.pt.tmp", "checkpoint_epoch_5", "checkpoint_epoch_\u00b2.pt",
                 "checkpoint_epoch_x.pt", "checkpoint_epoch_.pt", RUN_CHECKPOINT):  # fmt: skip
        (tmp_path / name).write_bytes(b"x")
    (tmp_path / "checkpoint_epoch_99.pt").mkdir()
    assert [p.name for p in epoch_checkpoints(tmp_path)] == [
        "checkpoint_epoch_10.pt", "checkpoint_epoch_2.pt", "checkpoint_epoch_1.pt"
    ]  # fmt: skip
    assert epoch_checkpoints(tmp_path / "missing") == []
