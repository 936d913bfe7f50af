"""Launching and supervising the processes of a run (see :mod:`.planning` for the plan).

:func:`launch` runs the worker here ("single"), joins a launcher's group ("env": torchrun,
SLURM) or spawns this node's workers ("spawn"), then waits for them, keeps Ctrl-C from killing
them mid-checkpoint, and turns the first worker failure into one :class:`DistributedError`.
"""

from __future__ import annotations

import json
import logging
import os
import signal
import sys
import tempfile
import time
import traceback
from collections.abc import Callable, Iterator, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import timedelta
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
import torch.multiprocessing as mp

from simclr_cli import signals
from simclr_cli.distributed.planning import LaunchOptions, LaunchPlan, plan_launch
from simclr_cli.errors import DistributedError, SimCLRError, UsageError, os_error_line

#: Exit status of a run stopped by SIGINT/SIGTERM (128 + SIGINT), kept through the launcher.
INTERRUPTED_EXIT_CODE = 130

#: How long a collective may wait for the other processes before the run fails instead of hanging.
#: Override with the environment variable ``SIMCLR_DIST_TIMEOUT`` (seconds).
DEFAULT_TIMEOUT = timedelta(minutes=30)


def launch(
    worker_fn: Callable[[Any], Any],
    cfg: LaunchOptions,
    timeout: timedelta | None = None,
) -> Any:
    """Run ``worker_fn(cfg)`` in every process of the run and return rank 0's result.

    In "single" mode this is just ``worker_fn(cfg)``. In "env" mode (torchrun/SLURM) this process
    joins the group, runs the worker and leaves the group. In "spawn" mode ``procs_per_node``
    processes are started with ``torch.multiprocessing`` (start method "spawn", so ``worker_fn``
    must be a module-level function and ``cfg`` picklable); if any of them fails, the others are
    stopped and one :class:`DistributedError` names the failed rank.

    Args:
        worker_fn: module-level function run in every process with a process group initialized.
        cfg: the run's config (see :func:`plan_launch` for the fields read).
        timeout: how long a collective may wait for other processes (default
            ``$SIMCLR_DIST_TIMEOUT`` seconds or :data:`DEFAULT_TIMEOUT`).

    Returns:
        ``worker_fn``'s return value on global rank 0 (in spawn mode on nodes other than 0, the
        value of this node's first worker; in env mode, this process's own value).

    Raises:
        DistributedError: a worker failed ("worker rank R failed: <message>"), or the group could
            not be formed.
    """
    plan = plan_launch(cfg)
    timeout = timeout or _default_timeout()
    if plan.mode == "single":
        return worker_fn(cfg)
    if plan.mode == "env":
        return _run_in_group(worker_fn, cfg, plan, plan.rank, plan.local_rank, timeout)
    return _spawn(worker_fn, cfg, plan, timeout)


def _default_timeout() -> timedelta:
    seconds = os.environ.get("SIMCLR_DIST_TIMEOUT")
    if not seconds:
        return DEFAULT_TIMEOUT
    try:
        return timedelta(seconds=float(seconds))
    except ValueError:
        raise UsageError("SIMCLR_DIST_TIMEOUT", seconds, "use a number of seconds") from None


_GROUP_ENV = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT")


def _run_in_group(
    worker_fn: Callable[[Any], Any],
    cfg: Any,
    plan: LaunchPlan,
    global_rank: int,
    local: int,
    timeout: timedelta,
) -> Any:
    """Join the process group as ``global_rank``, run the worker, always leave the group."""
    with _group_environment(plan, global_rank, local):
        if plan.backend == "nccl":
            torch.cuda.set_device(local % max(1, torch.cuda.device_count()))
        try:
            dist.init_process_group(
                backend=plan.backend,
                # env:// reads MASTER_ADDR/PORT set here; under torchrun it joins the agent's store.
                init_method="env://",
                rank=global_rank,
                world_size=plan.world_size,
                timeout=timeout,
            )
        except (RuntimeError, ValueError) as err:
            raise DistributedError(
                f"could not join the process group at {plan.master_addr}:{plan.master_port} as "
                f"rank {global_rank}: {_one_line(err)}; check --master-addr/--master-port and "
                "that the port is free"
            ) from err
        try:
            return worker_fn(cfg)
        finally:
            dist.destroy_process_group()


@contextmanager
def _group_environment(plan: LaunchPlan, global_rank: int, local: int) -> Iterator[None]:
    """Set the group's variables in ``os.environ`` for the block, then restore them."""
    # env:// and other libraries read these; torchrun sets them, spawn and SLURM do not.
    # Restored afterwards, so later launches in this process plan afresh.
    saved = {name: os.environ.get(name) for name in _GROUP_ENV}
    os.environ.update(
        RANK=str(global_rank),
        WORLD_SIZE=str(plan.world_size),
        LOCAL_RANK=str(local),
        LOCAL_WORLD_SIZE=str(plan.procs_per_node),
        MASTER_ADDR=plan.master_addr,
        MASTER_PORT=str(plan.master_port),
    )
    try:
        yield
    finally:
        for name, value in saved.items():
            if value is None:
                os.environ.pop(name, None)
            else:
                os.environ[name] = value


def _one_line(err: BaseException) -> str:
    lines = [line.strip() for line in str(err).splitlines() if line.strip()]
    return lines[0] if lines else type(err).__name__


def _spawn(worker_fn: Callable[[Any], Any], cfg: Any, plan: LaunchPlan, timeout: timedelta) -> Any:
    """Start the node's workers, wait for all, return local worker 0's result or raise once."""
    results = mp.get_context("spawn").SimpleQueue()
    box: list[Any] = []
    with tempfile.TemporaryDirectory(prefix="simclr-dist-") as err_dir:
        procs = mp.start_processes(
            _spawn_entry,
            args=(worker_fn, cfg, plan, timeout, results, err_dir),
            nprocs=plan.procs_per_node,
            join=False,
            start_method="spawn",
        )
        spawn_log = logging.getLogger("torch.multiprocessing.spawn")
        level = spawn_log.level
        spawn_log.setLevel(logging.ERROR)  # its "Terminating process" lines would repeat the error
        try:
            with _patient_signals():
                # Drain while waiting: a large result would otherwise block its writer on the pipe.
                while not procs.join(timeout=0.5):
                    _drain(results, box)
        except (mp.ProcessRaisedException, mp.ProcessExitedException) as exc:
            exit_codes = [process.exitcode for process in procs.processes]
            raise _worker_failure(Path(err_dir), plan, exc, exit_codes) from None
        finally:
            spawn_log.setLevel(level)
            for process in procs.processes:  # only after a second Ctrl-C or an internal error
                if process.is_alive():
                    process.kill()
                    process.join()
        _drain(results, box)
    return box[0] if box else None


def _patient_signals() -> AbstractContextManager[Any]:
    """While workers run, the first SIGINT/SIGTERM here waits for them; a second one aborts.

    Ctrl-C and ``scancel`` signal the whole process group, workers included, and the workers
    stop cleanly on their own (the training loop checkpoints first). Forwarding the signal
    would deliver it twice. A second signal raises KeyboardInterrupt, and ``_spawn`` kills them.
    """
    return signals.stop_requests()


def _drain(results: Any, box: list[Any]) -> None:
    while not results.empty():
        box.append(results.get())


def _spawn_entry(
    local: int,
    worker_fn: Callable[[Any], Any],
    cfg: Any,
    plan: LaunchPlan,
    timeout: timedelta,
    results: Any,
    err_dir: str,
) -> None:
    """Body of one spawned worker: record any failure to ``err_dir`` and exit non-zero."""
    global_rank = plan.node_rank * plan.procs_per_node + local
    if plan.backend == "gloo" and "OMP_NUM_THREADS" not in os.environ:
        # N CPU workers share the cores; the default (all cores each) oversubscribes them.
        torch.set_num_threads(max(1, (os.cpu_count() or 1) // plan.procs_per_node))
    try:
        result = _run_in_group(worker_fn, cfg, plan, global_rank, local, timeout)
        if local == 0:
            results.put(result)
    except BaseException as err:  # noqa: BLE001 - every failure must reach the parent
        os_line = os_error_line(err) if isinstance(err, OSError) else None  # full disk, ...
        record = {
            "rank": global_rank,
            "time": time.time(),
            "type": type(err).__name__,
            "simclr": isinstance(err, SimCLRError) or os_line is not None,
            "exit_code": getattr(err, "exit_code", 1),
            "message": os_line or _one_line(err),
            "traceback": traceback.format_exc(),
        }
        (Path(err_dir) / f"rank{global_rank}.json").write_text(json.dumps(record))
        # SystemExit (not Exception) keeps torch from pickling the traceback a second time.
        sys.exit(1)


def _worker_failure(
    err_dir: Path, plan: LaunchPlan, exc: Exception, exit_codes: Sequence[int | None] = ()
) -> DistributedError:
    """Build the one error for a failed spawn: a worker killed by a signal, else the earliest
    recorded worker failure.

    A worker killed by a signal (kill -9, the out-of-memory killer, a crash) writes no record,
    and its peers then fail on the broken connection and record that: the signal is the cause.
    SIGTERM is left out: torch sends it to the survivors after the first failure.
    """
    records = []
    for path in err_dir.glob("rank*.json"):
        try:
            records.append(json.loads(path.read_text()))
        except (OSError, ValueError):
            continue  # a worker killed while writing; others tell the story
    killed = _killed_by_signal(plan, exit_codes, {record["rank"] for record in records})
    if killed is not None:
        return killed
    if not records:
        # Killed without a Python exception (signal, out of memory).
        failed = plan.node_rank * plan.procs_per_node + getattr(exc, "error_index", 0)
        error = DistributedError(f"worker rank {failed} failed: {_one_line(exc)}")
        error.worker_rank = failed  # type: ignore[attr-defined]
        return error
    # The first failure is the cause; later ones are peers losing their connection to it.
    first = min(records, key=lambda record: record["time"])
    message = first["message"] if first["simclr"] else f"{first['type']}: {first['message']}"
    exit_code = int(first.get("exit_code", 1))
    # A signal stops every worker (exit 130); that is no worker's failure, so no rank is named.
    prefix = "" if exit_code == INTERRUPTED_EXIT_CODE else f"worker rank {first['rank']} failed: "
    error = DistributedError(prefix + message)
    error.exit_code = exit_code  # keep the worker's exit status (2 for a usage error)
    error.worker_rank = first["rank"]  # type: ignore[attr-defined]
    error.worker_traceback = first["traceback"]  # type: ignore[attr-defined]
    return error


def _killed_by_signal(
    plan: LaunchPlan, exit_codes: Sequence[int | None], recorded: set[int]
) -> DistributedError | None:
    """The error for the first worker (in rank order) that a signal other than SIGTERM ended."""
    for local, code in enumerate(exit_codes):
        rank = plan.node_rank * plan.procs_per_node + local
        if code is None or code >= 0 or rank in recorded or -code == signal.SIGTERM:
            continue
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = "unknown signal"
        error = DistributedError(
            f"worker rank {rank} was killed by signal {-code} ({name}) (often the out-of-memory "
            "killer); the other ranks stopped because it died; lower --batch-size or --workers"
        )
        error.worker_rank = rank  # type: ignore[attr-defined]
        return error
    return None
