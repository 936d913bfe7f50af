"""Launch planning: how one invocation becomes one or several processes (pure but for ports).

Three ways to get several processes, chosen by :func:`plan_launch`:

* ``torchrun`` (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``, ``MASTER_PORT``) or an
  ``srun`` job step (``SLURM_PROCID``, ``SLURM_STEP_NUM_TASKS``, ``SLURM_LOCALID``,
  ``SLURM_NODELIST``, whose first host is the master): every process was started by the
  launcher; simclr-cli joins the group and does not spawn.
* ``--gpus N``: simclr-cli spawns N processes on this node, one per GPU, with NCCL.
* ``--device cpu --processes N``: simclr-cli spawns N CPU processes with gloo.

``--nodes``, ``--node-rank``, ``--master-addr`` and ``--master-port`` extend the last two to several
machines (the same command on every node, each with its own ``--node-rank``).

The options come from a validated ``PretrainConfig``, whose own checks (``--gpus`` with
``--processes``, ``--node-rank`` below ``--nodes``, port range, ...) are trusted here; planning
checks only what needs the environment: the launcher, the visible GPUs, a free port.
"""

from __future__ import annotations

import os
import re
import socket
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Literal, Protocol

from simclr_cli.errors import DistributedError, UsageError

LaunchMode = Literal["single", "spawn", "env"]
Launcher = Literal["torchrun", "slurm"]


class LaunchOptions(Protocol):
    """The options planning reads: the launch fields of a validated ``PretrainConfig``."""

    # Read-only properties, so that a frozen config (or a test's namespace) matches.
    @property
    def gpus(self) -> int: ...
    @property
    def processes(self) -> int: ...
    @property
    def nodes(self) -> int: ...
    @property
    def node_rank(self) -> int: ...
    @property
    def master_addr(self) -> str: ...
    @property
    def master_port(self) -> int | None: ...
    @property
    def resolved_device(self) -> str: ...
    @property
    def procs_per_node(self) -> int: ...
    @property
    def world_size(self) -> int: ...


@dataclass(frozen=True)
class LaunchPlan:
    """How this invocation becomes one or several processes.

    Attributes:
        mode: "single" (no process group), "spawn" (this process starts ``procs_per_node``
            workers) or "env" (a launcher such as torchrun or SLURM started this process).
        backend: "nccl" or "gloo" (None for "single").
        world_size: processes over all nodes.
        procs_per_node: workers on this node (spawn) or tasks per node (env).
        node_rank: index of this node.
        master_addr: address of the rendezvous host (global rank 0).
        master_port: its TCP port (None only for "single").
        source: "cli", "torchrun" or "slurm".
        rank: this process's global rank ("env" only; spawned workers get theirs at start).
        local_rank: this process's index on its node ("env" only).
    """

    mode: LaunchMode
    backend: Literal["nccl", "gloo"] | None
    world_size: int
    procs_per_node: int
    node_rank: int
    master_addr: str
    master_port: int | None
    source: Literal["cli", "torchrun", "slurm"]
    rank: int = 0
    local_rank: int = 0


def detect_launcher(env: Mapping[str, str] | None = None) -> Launcher | None:
    """Name the launcher that started this process as one of several, or None.

    torchrun sets ``RANK`` and ``WORLD_SIZE``. A SLURM job step (``srun``) sets ``SLURM_PROCID``
    and ``SLURM_STEP_NUM_TASKS``; a batch script or ``salloc`` shell also has ``SLURM_PROCID``
    and ``SLURM_NTASKS`` but is one process, so those alone do not count. A step of one task is
    not a multi-process launch either (``--gpus``/``--processes`` still apply inside it).
    """
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return "torchrun"
    if "SLURM_PROCID" in env and int(env.get("SLURM_STEP_NUM_TASKS", "1")) > 1:
        return "slurm"
    return None


def launcher_world_size(env: Mapping[str, str] | None = None) -> int | None:
    """Processes started by torchrun or a SLURM job step, or None when no launcher did.

    The one reading of a launcher's world size: the config resolves its ``world_size`` from it
    once, at validation, and :func:`plan_launch` uses it for a launcher's plan.
    """
    env = os.environ if env is None else env
    launcher = detect_launcher(env)
    if launcher == "torchrun":
        return int(env["WORLD_SIZE"])
    if launcher == "slurm":
        return int(env["SLURM_STEP_NUM_TASKS"])
    return None


def starts_rank_zero(cfg: LaunchOptions, env: Mapping[str, str] | None = None) -> bool:
    """Whether this process is, or spawns, global rank 0: the one that writes the run's files
    (and holds the run folder's lock while its processes run)."""
    env = os.environ if env is None else env
    launcher = detect_launcher(env)
    if launcher == "torchrun":
        return int(env["RANK"]) == 0
    if launcher == "slurm":
        return int(env["SLURM_PROCID"]) == 0
    return cfg.node_rank == 0


def plan_launch(
    cfg: LaunchOptions,
    env: Mapping[str, str] | None = None,
    visible_gpus: int | None = None,
) -> LaunchPlan:
    """Decide how to start processes from the config and the launcher environment.

    A launcher environment (see :func:`detect_launcher`) wins over ``--gpus``/``--processes``;
    without one, the plan spawns ``cfg.procs_per_node`` workers of ``cfg.world_size``.

    Args:
        cfg: a validated ``PretrainConfig`` (see :class:`LaunchOptions` for the fields read).
        env: the environment to read (default ``os.environ``).
        visible_gpus: CUDA devices visible here (default ``torch.cuda.device_count()``).

    Returns:
        The plan; a single-node "spawn" without ``--master-port`` gets a free port.

    Raises:
        UsageError: options that this environment rules out (spawning under a launcher, more
            GPUs than are visible, ``--processes`` on CUDA, several nodes without a port).
        DistributedError: the master port is already in use on this machine.
    """
    env = os.environ if env is None else env
    backend: Literal["nccl", "gloo"] = "nccl" if cfg.resolved_device == "cuda" else "gloo"
    launcher = detect_launcher(env)
    if launcher == "torchrun":
        _reject_spawn_options(cfg, "torchrun")
        return _plan_torchrun(env, backend)
    if launcher == "slurm":
        _reject_spawn_options(cfg, "SLURM")
        return _plan_slurm(cfg, env, backend)
    _check_spawn_device(cfg, visible_gpus)
    if cfg.world_size == 1:
        return LaunchPlan("single", None, 1, 1, 0, cfg.master_addr, None, "cli")
    return LaunchPlan(
        "spawn",
        backend,
        cfg.world_size,
        cfg.procs_per_node,
        cfg.node_rank,
        cfg.master_addr,
        _spawn_port(cfg),
        "cli",
    )


def _reject_spawn_options(cfg: LaunchOptions, launcher: str) -> None:
    # The launcher already decided how many processes run; spawning more would nest groups.
    for flag, value in (("--gpus", cfg.gpus), ("--processes", cfg.processes)):
        if value > 1:
            raise UsageError(flag, value, f"omit it: {launcher} already started the processes")


def _plan_torchrun(env: Mapping[str, str], backend: Literal["nccl", "gloo"]) -> LaunchPlan:
    size = launcher_world_size(env)
    assert size is not None  # detect_launcher found torchrun
    if size == 1:
        return LaunchPlan(
            "single", None, 1, 1, 0, env.get("MASTER_ADDR", "127.0.0.1"), None, "torchrun"
        )
    if "MASTER_ADDR" not in env or "MASTER_PORT" not in env:
        raise DistributedError(
            "RANK and WORLD_SIZE are set but MASTER_ADDR/MASTER_PORT are not; start the run with "
            "torchrun, or set all four variables"
        )
    return LaunchPlan(
        mode="env",
        backend=backend,
        world_size=size,
        procs_per_node=int(env.get("LOCAL_WORLD_SIZE", str(size))),
        node_rank=int(env.get("GROUP_RANK", env.get("NODE_RANK", "0"))),
        master_addr=env["MASTER_ADDR"],
        master_port=int(env["MASTER_PORT"]),
        source="torchrun",
        rank=int(env["RANK"]),
        local_rank=int(env.get("LOCAL_RANK", "0")),
    )


def _plan_slurm(
    cfg: LaunchOptions, env: Mapping[str, str], backend: Literal["nccl", "gloo"]
) -> LaunchPlan:
    size = launcher_world_size(env)
    assert size is not None  # detect_launcher found a SLURM job step
    addr = env.get("MASTER_ADDR") or first_slurm_host(env.get("SLURM_NODELIST", ""))
    if "MASTER_PORT" in env:
        port = int(env["MASTER_PORT"])
    elif cfg.master_port is not None:
        port = cfg.master_port
    elif "SLURM_JOB_ID" in env:
        # Every task of the job derives the same port; spreads concurrent jobs over 10000-29999.
        port = 10000 + int(env["SLURM_JOB_ID"]) % 20000
    else:
        raise UsageError("--master-port", None, "set it (the same on every task) under SLURM")
    nodes = max(1, int(env.get("SLURM_STEP_NUM_NODES", env.get("SLURM_NNODES", "1"))))
    return LaunchPlan(
        mode="env",
        backend=backend,
        world_size=size,
        procs_per_node=max(1, size // nodes),
        node_rank=int(env.get("SLURM_NODEID", "0")),
        master_addr=addr or cfg.master_addr,
        master_port=port,
        source="slurm",
        rank=int(env["SLURM_PROCID"]),
        local_rank=int(env.get("SLURM_LOCALID", "0")),
    )


def first_slurm_host(nodelist: str) -> str:
    """Return the first host of a SLURM node list ("gpu[003-005,9],cpu1" -> "gpu003")."""
    match = re.match(r"([^,\[]+)(?:\[([^\]]+)\]([^,\[]*))?", nodelist.strip())
    if match is None:
        return ""
    prefix, ranges, suffix = match.groups()
    if not ranges:
        return prefix
    return prefix + ranges.split(",")[0].split("-")[0] + (suffix or "")


def _check_spawn_device(cfg: LaunchOptions, visible_gpus: int | None) -> None:
    # What the config cannot know: how many GPUs this machine shows, and whether "auto" became
    # CUDA (then CPU processes would share one device; --gpus is the CUDA way).
    if cfg.gpus > 0:
        visible = _visible_gpus() if visible_gpus is None else visible_gpus
        if cfg.gpus > visible:
            raise UsageError(
                "--gpus",
                cfg.gpus,
                f"this machine has {visible} visible CUDA device(s); use at most "
                f"{visible} (check CUDA_VISIBLE_DEVICES)",
            )
    elif cfg.processes > 1 and cfg.resolved_device == "cuda":
        raise UsageError("--processes", cfg.processes, "on CUDA use --gpus N, or add --device cpu")


def _spawn_port(cfg: LaunchOptions) -> int:
    if cfg.master_port is None:
        if cfg.nodes > 1:
            raise UsageError(
                "--master-port", None, "set the same port on every node when --nodes > 1"
            )
        return find_free_port()
    if cfg.node_rank == 0 and not _port_is_free(cfg.master_port):
        raise DistributedError(
            f"port {cfg.master_port} is already in use on this machine; pass another "
            "--master-port or omit it (single node) to pick a free one"
        )
    return cfg.master_port


def find_free_port() -> int:
    """Return a TCP port that is free on this machine right now."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("", 0))
        return int(sock.getsockname()[1])


def _port_is_free(port: int) -> bool:
    # SO_REUSEADDR like torch's TCPStore, so a port in TIME_WAIT counts as free.
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            sock.bind(("", port))
        except OSError:
            return False
    return True


def _visible_gpus() -> int:
    """CUDA devices visible here (torch is imported only now: the config reads the launcher's
    world size from this module, and ``simclr --help`` should not load torch)."""
    import torch

    return torch.cuda.device_count()
