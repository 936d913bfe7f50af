"""The one-writer lock of run folders and result files: refused in one line naming the holder,
released however the holder ends (kill -9 too), never kept by forked children."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from simclr_cli.errors import OutputBusyError
from simclr_cli.storage import runlock

ROOT = Path(__file__).resolve().parents[2]
GUARD_S = 600  # a hang guard, far beyond a busy machine

HOLD = """
import sys
from pathlib import Path
from simclr_cli.storage import runlock
with runlock.hold_folder(Path(sys.argv[1]), "simclr pretrain"):
    print("held", flush=True)
    sys.stdin.read()
"""


def holder(folder: Path) -> subprocess.Popen:
    child = subprocess.Popen(
        [sys.executable, "-c", HOLD, str(folder)],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert child.stdout is not None and child.stdout.readline() == "held\n"
    return child


def test_a_second_holder_is_refused_naming_the_first(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = holder(run)
    try:
        with pytest.raises(OutputBusyError) as refused, runlock.hold_folder(run, "simclr x"):
            pass
    finally:
        first.communicate(timeout=GUARD_S)
    assert str(refused.value) == (
        f"{run} is being written by another process (pid {first.pid}: simclr pretrain); wait "
        "for it to finish, or choose another --out"
    )


def test_kill_9_leaves_no_stale_lock(tmp_path: Path) -> None:
    run = tmp_path / "run"
    first = holder(run)
    first.send_signal(signal.SIGKILL)
    first.communicate(timeout=GUARD_S)
    assert (run / runlock.FOLDER_LOCK).exists()  # left behind, but no longer locked
    with runlock.hold_folder(run, "simclr pretrain"):
        assert (run / runlock.FOLDER_LOCK).read_text() == f"{os.getpid()} simclr pretrain\n"
    assert list(run.iterdir()) == []  # the lock file is removed on release


def test_one_process_holds_a_folder_once(tmp_path: Path) -> None:
    with runlock.hold_folder(tmp_path, "simclr pretrain"):
        with pytest.raises(OutputBusyError, match=f"pid {os.getpid()}: simclr pretrain"):
            with runlock.hold_folder(tmp_path, "simclr pretrain"):
                pass
        (tmp_path / "metrics.jsonl").write_text("")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["metrics.jsonl"]  # kept, lock gone


def test_an_output_lock_sits_beside_its_file_and_makes_its_folders(tmp_path: Path) -> None:
    target = tmp_path / "a" / "b" / "encoder.pt"
    with runlock.hold_output(target, "simclr export"):
        assert (target.parent / ".encoder.pt.lock").exists()
        with pytest.raises(OutputBusyError, match=f"{target} is being written"):
            with runlock.hold_output(target, "simclr export"):
                pass
        with runlock.hold_output(target.with_name("other.pt"), "simclr export"):
            pass  # another file of the same folder: another writer may write it
    assert not (tmp_path / "a").exists()  # nothing written: the folders it made are gone


@pytest.mark.skipif(not hasattr(os, "fork"), reason="fork")
def test_a_forked_child_does_not_keep_the_lock(tmp_path: Path) -> None:
    """A DataLoader worker outliving a killed main process must not hold the run folder."""
    read, write = os.pipe()
    child = subprocess.Popen(
        [
            sys.executable,
            "-c",
            "import os, sys, time\n"
            "from pathlib import Path\n"
            "from simclr_cli.storage import runlock\n"
            "with runlock.hold_folder(Path(sys.argv[1]), 'simclr pretrain'):\n"
            "    if os.fork() == 0:\n"
            "        os.write(int(sys.argv[2]), b'forked')\n"
            "        time.sleep(600)\n"
            "    time.sleep(600)\n",
            str(tmp_path),
            str(write),
        ],
        env={**os.environ, "PYTHONPATH": str(ROOT)},
        pass_fds=(write,),
        start_new_session=True,
    )
    os.close(write)
    try:
        assert os.read(read, 6) == b"forked"
        child.kill()  # the main process dies; its forked child lives on
        child.wait(GUARD_S)
        with runlock.hold_folder(tmp_path, "simclr pretrain"):
            pass
    finally:
        os.killpg(child.pid, signal.SIGKILL)
        os.close(read)
