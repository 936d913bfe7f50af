"""Launch planning, failure handling and the single-process behaviour of simclr_cli.distributed."""

from __future__ import annotations

import json
import os
import signal
import socket
import threading
import time
from datetime import timedelta
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from launch_fixtures import launch_cfg as cfg_of
from torch import nn

from simclr_cli import distributed
from simclr_cli.distributed import GlobalBatchNorm, LaunchPlan, launching, plan_launch, planning
from simclr_cli.errors import DistributedError, TrainingError, UsageError

TORCHRUN = {
    "RANK": "5",
    "WORLD_SIZE": "8",
    "LOCAL_RANK": "1",
    "LOCAL_WORLD_SIZE": "4",
    "GROUP_RANK": "1",
    "MASTER_ADDR": "10.0.0.1",
    "MASTER_PORT": "29400",
}
SLURM = {
    "SLURM_PROCID": "6",
    "SLURM_NTASKS": "8",
    "SLURM_STEP_NUM_TASKS": "8",
    "SLURM_STEP_NUM_NODES": "2",
    "SLURM_LOCALID": "2",
    "SLURM_NODEID": "1",
    "SLURM_NNODES": "2",
    "SLURM_NODELIST": "gpu[007-008]",
    "SLURM_JOB_ID": "123456",
}


@pytest.fixture
def no_launcher_env(monkeypatch: pytest.MonkeyPatch) -> None:
    """launch() reads os.environ: hide a surrounding torchrun/SLURM job from these tests."""
    for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
        monkeypatch.delenv(name, raising=False)


# --------------------------------------------------------------------------------------------
# Planning: pure functions of the config and an environment mapping
# --------------------------------------------------------------------------------------------


def test_default_config_runs_in_this_process() -> None:
    plan = plan_launch(cfg_of(), env={})
    assert (plan.mode, plan.world_size, plan.backend) == ("single", 1, None)


def test_cpu_processes_spawn_gloo_workers_on_a_free_port() -> None:
    plan = plan_launch(cfg_of(processes=3), env={})
    assert (plan.mode, plan.backend, plan.world_size, plan.procs_per_node) == (
        "spawn",
        "gloo",
        3,
        3,
    )
    assert plan.master_port is not None
    with socket.socket() as sock:  # the chosen port is bindable
        sock.bind(("127.0.0.1", plan.master_port))


def test_gpus_spawn_nccl_workers_and_multiply_by_nodes() -> None:
    cfg = cfg_of(gpus=4, nodes=2, node_rank=1, master_port=29555, resolved_device="cuda")
    plan = plan_launch(cfg, env={}, visible_gpus=4)
    assert (plan.mode, plan.backend, plan.world_size, plan.procs_per_node) == (
        "spawn",
        "nccl",
        8,
        4,
    )
    assert (plan.node_rank, plan.master_port) == (1, 29555)


def test_one_gpu_needs_no_process_group() -> None:
    plan = plan_launch(cfg_of(gpus=1, resolved_device="cuda"), env={}, visible_gpus=1)
    assert plan.mode == "single"


@pytest.mark.parametrize(
    ("fields", "visible", "option"),
    [
        ({"gpus": 3, "resolved_device": "cuda"}, 2, "--gpus"),
        ({"processes": 2, "resolved_device": "cuda"}, 2, "--processes"),
        ({"processes": 2, "nodes": 2}, 0, "--master-port"),
    ],
)
def test_bad_launch_options_are_usage_errors(
    fields: dict[str, Any], visible: int, option: str
) -> None:
    with pytest.raises(UsageError) as info:
        plan_launch(cfg_of(**fields), env={}, visible_gpus=visible)
    assert info.value.option == option
    assert "\n" not in str(info.value)


def test_too_many_gpus_names_the_visible_count() -> None:
    with pytest.raises(UsageError, match="2 visible CUDA device"):
        plan_launch(cfg_of(gpus=3, resolved_device="cuda"), env={}, visible_gpus=2)


def test_port_in_use_is_a_clear_error() -> None:
    with socket.socket() as sock:
        sock.bind(("", 0))
        sock.listen()
        port = sock.getsockname()[1]
        with pytest.raises(DistributedError, match=f"port {port} is already in use"):
            plan_launch(cfg_of(processes=2, master_port=port), env={})


def test_torchrun_environment_is_used_without_spawning() -> None:
    plan = plan_launch(cfg_of(resolved_device="cuda"), env=TORCHRUN)
    assert plan == LaunchPlan("env", "nccl", 8, 4, 1, "10.0.0.1", 29400, "torchrun", 5, 1)


def test_torchrun_wins_over_slurm_and_conflicts_with_gpus() -> None:
    assert plan_launch(cfg_of(), env={**SLURM, **TORCHRUN}).source == "torchrun"
    with pytest.raises(UsageError, match="torchrun already started"):
        plan_launch(cfg_of(gpus=4, resolved_device="cuda"), env=TORCHRUN, visible_gpus=4)


def test_torchrun_with_one_process_runs_single() -> None:
    env = {**TORCHRUN, "RANK": "0", "WORLD_SIZE": "1"}
    assert plan_launch(cfg_of(), env=env).mode == "single"


def test_slurm_job_step_is_used_without_spawning() -> None:
    plan = plan_launch(cfg_of(), env=SLURM)
    assert (plan.mode, plan.source, plan.backend) == ("env", "slurm", "gloo")
    assert (plan.rank, plan.local_rank, plan.world_size, plan.node_rank) == (6, 2, 8, 1)
    assert plan.procs_per_node == 4
    assert plan.master_addr == "gpu007"
    # Derived from the job id, so every task agrees without talking.
    assert plan.master_port == 10000 + 123456 % 20000


def test_slurm_explicit_master_settings_win() -> None:
    env = {**SLURM, "MASTER_ADDR": "head", "MASTER_PORT": "31000"}
    plan = plan_launch(cfg_of(), env=env)
    assert (plan.master_addr, plan.master_port) == ("head", 31000)
    no_job = {k: v for k, v in SLURM.items() if k != "SLURM_JOB_ID"}
    assert plan_launch(cfg_of(master_port=29999), env=no_job).master_port == 29999


def test_single_task_slurm_step_falls_back_to_options() -> None:
    env = {**SLURM, "SLURM_NTASKS": "1", "SLURM_STEP_NUM_TASKS": "1", "SLURM_PROCID": "0"}
    assert plan_launch(cfg_of(processes=2), env=env).mode == "spawn"


def test_batch_script_of_a_multi_task_job_is_not_a_job_step() -> None:
    # sbatch --ntasks 4 runs the script once, with SLURM_PROCID=0 and SLURM_NTASKS=4 but no
    # step variables: treating it as rank 0 of 4 would wait forever for the other three.
    env = {k: v for k, v in SLURM.items() if not k.startswith("SLURM_STEP")}
    env.update(SLURM_PROCID="0", SLURM_NTASKS="4")
    assert distributed.detect_launcher(env) is None
    assert distributed.launcher_world_size(env) is None
    assert plan_launch(cfg_of(processes=2), env=env).mode == "spawn"


def test_launcher_world_size() -> None:
    assert distributed.launcher_world_size(TORCHRUN) == 8
    assert distributed.launcher_world_size({**SLURM, "SLURM_STEP_NUM_TASKS": "3"}) == 3
    assert distributed.launcher_world_size({}) is None


@pytest.mark.parametrize(
    ("nodelist", "host"),
    [
        ("node001", "node001"),
        ("a1,b2", "a1"),
        ("gpu[003-005,9],cpu1", "gpu003"),
        ("rack[2,4]-ib", "rack2-ib"),
        ("x[10-11],y[1-2]", "x10"),
    ],
)
def test_first_slurm_host(nodelist: str, host: str) -> None:
    assert distributed.first_slurm_host(nodelist) == host


def test_timeout_comes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("SIMCLR_DIST_TIMEOUT", "90")
    assert launching._default_timeout() == timedelta(seconds=90)
    monkeypatch.setenv("SIMCLR_DIST_TIMEOUT", "soon")
    with pytest.raises(UsageError):
        launching._default_timeout()
    monkeypatch.delenv("SIMCLR_DIST_TIMEOUT")
    assert launching._default_timeout() == distributed.DEFAULT_TIMEOUT


# --------------------------------------------------------------------------------------------
# One process: every helper describes rank 0 of 1 and changes nothing
# --------------------------------------------------------------------------------------------


def test_helpers_without_a_process_group() -> None:
    assert not distributed.is_initialized()
    assert (distributed.rank(), distributed.world_size()) == (0, 1)
    assert distributed.is_main()
    distributed.barrier()
    x = torch.tensor([1.0, 3.0])
    assert torch.equal(distributed.all_reduce_mean(x), x)
    assert distributed.all_reduce_sum(2.5) == 2.5
    assert distributed.broadcast_object({"a": 1}) == {"a": 1}
    assert distributed.gather_with_grad(x) is x


def test_single_mode_launch_calls_the_worker_here(no_launcher_env: None) -> None:
    assert distributed.launch(lambda cfg: ("ran", cfg.processes), cfg_of()) == ("ran", 1)


def test_global_bn_in_one_process_is_batch_norm() -> None:
    torch.manual_seed(0)
    plain, ours = nn.BatchNorm2d(4), GlobalBatchNorm(4)
    assert list(ours.state_dict()) == list(plain.state_dict())
    x = torch.randn(6, 4, 3, 3)
    xa, xb = x.clone().requires_grad_(True), x.clone().requires_grad_(True)
    plain(xa).square().sum().backward()
    ours(xb).square().sum().backward()
    torch.testing.assert_close(xb.grad, xa.grad)
    torch.testing.assert_close(ours.running_var, plain.running_var)
    plain.eval(), ours.eval()
    torch.testing.assert_close(ours(x), plain(x))


def small_net() -> nn.Sequential:
    torch.manual_seed(0)
    return nn.Sequential(nn.Conv2d(3, 4, 3), nn.BatchNorm2d(4), nn.Flatten(), nn.BatchNorm1d(16))


def test_convert_on_cpu_keeps_parameters_and_state_dict() -> None:
    net = small_net()
    net[1].running_mean.fill_(0.5)
    before = {k: v.clone() for k, v in net.state_dict().items()}
    converted = distributed.convert_sync_batchnorm(net, "cpu")
    assert [type(m).__name__ for m in converted] == [
        "Conv2d",
        "GlobalBatchNorm",
        "Flatten",
        "GlobalBatchNorm",
    ]
    after = converted.state_dict()
    assert list(after) == list(before)
    for key, value in before.items():
        assert torch.equal(after[key], value), key
    small_net().load_state_dict(after)  # loads back into plain batch norm, strictly


def test_convert_for_cuda_uses_torch_sync_batchnorm() -> None:
    converted = distributed.convert_sync_batchnorm(small_net(), torch.device("cuda", 0))
    assert isinstance(converted[1], nn.SyncBatchNorm)


def test_a_bare_batch_norm_is_replaced() -> None:
    assert isinstance(distributed.convert_sync_batchnorm(nn.BatchNorm1d(3), "cpu"), GlobalBatchNorm)


def test_wrap_ddp_is_identity_in_one_process() -> None:
    net = small_net()
    assert distributed.wrap_ddp(net, "cpu") is net


# --------------------------------------------------------------------------------------------
# Failures
# --------------------------------------------------------------------------------------------


def record(err_dir: Path, rank: int, at: float, kind: str, simclr: bool, message: str) -> None:
    data = {"rank": rank, "time": at, "type": kind, "simclr": simclr, "message": message}
    (err_dir / f"rank{rank}.json").write_text(json.dumps({**data, "traceback": "tb"}))


def test_failure_report_names_the_first_failed_rank(tmp_path: Path) -> None:
    plan = plan_launch(cfg_of(processes=2), env={})
    exc = RuntimeError("process 0 terminated with exit code 1")
    record(tmp_path, 0, 20.0, "RuntimeError", False, "Connection closed by peer")
    record(tmp_path, 1, 10.0, "ValueError", False, "bad shape (3, 4)")
    error = launching._worker_failure(tmp_path, plan, exc)
    assert str(error) == "worker rank 1 failed: ValueError: bad shape (3, 4)"
    assert error.worker_rank == 1  # type: ignore[attr-defined]


def test_failure_report_keeps_the_worker_exit_code(tmp_path: Path) -> None:
    plan = plan_launch(cfg_of(processes=2), env={})
    record(tmp_path, 0, 1.0, "Interrupted", True, "stopped by SIGINT; resume with --resume auto")
    data = json.loads((tmp_path / "rank0.json").read_text())
    (tmp_path / "rank0.json").write_text(json.dumps({**data, "exit_code": 130}))
    error = launching._worker_failure(tmp_path, plan, RuntimeError("exit code 1"))
    # Every worker got the signal: the message stands alone, with the interrupt's exit status.
    assert str(error) == "stopped by SIGINT; resume with --resume auto"
    assert error.exit_code == 130


def test_failure_report_without_records_uses_the_exit(tmp_path: Path) -> None:
    plan = plan_launch(cfg_of(processes=2, nodes=2, node_rank=1, master_port=29501), env={})
    exc = RuntimeError("process 1 terminated with signal SIGKILL")
    exc.error_index = 1  # type: ignore[attr-defined]
    error = launching._worker_failure(tmp_path, plan, exc)
    assert str(error) == "worker rank 3 failed: process 1 terminated with signal SIGKILL"


def test_a_worker_out_of_disk_is_reported_in_one_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import errno

    # The worker body, in this process: its run fails the way a full disk fails a checkpoint.
    monkeypatch.setenv("OMP_NUM_THREADS", "2")  # so it leaves this process's threads alone
    saved = tmp_path / "runs" / "checkpoint_last.pt.tmp"

    def full_disk(*args: Any) -> None:
        raise OSError(errno.ENOSPC, "No space left on device", str(saved))

    monkeypatch.setattr(launching, "_run_in_group", full_disk)
    plan = plan_launch(cfg_of(processes=2), env={})
    err_dir = tmp_path / "errors"
    err_dir.mkdir()
    with pytest.raises(SystemExit):
        launching._spawn_entry(1, None, None, plan, timedelta(seconds=5), None, str(err_dir))
    exc = RuntimeError("process 1 terminated with exit code 1")
    error = launching._worker_failure(err_dir, plan, exc)
    assert str(error) == (
        f"worker rank 1 failed: No space left on device: {saved}; "
        "free some space, or write somewhere else"
    )


def fail_on_step_two(cfg: SimpleNamespace) -> int:
    """Each step all-reduces like a training step; rank 1 fails at step 2, rank 0 blocks."""
    for step in range(1, 100):
        distributed.all_reduce_sum(torch.ones(1))
        if step == 2 and distributed.rank() == 1:
            raise TrainingError("loss is not finite at step 2; lower --lr")
        time.sleep(0.05)
    return 0


@pytest.mark.slow
def test_a_failing_worker_stops_the_run_with_one_error(no_launcher_env: None) -> None:
    start = time.monotonic()
    cfg = cfg_of(processes=2)
    with pytest.raises(DistributedError) as info:
        distributed.launch(fail_on_step_two, cfg, timeout=timedelta(seconds=120))
    elapsed = time.monotonic() - start
    assert str(info.value) == "worker rank 1 failed: loss is not finite at step 2; lower --lr"
    assert "TrainingError" in info.value.worker_traceback  # type: ignore[attr-defined]
    # Bounded well below the collective timeout: the parent stops the blocked rank 0.
    assert elapsed < 60


@pytest.mark.slow
def test_port_taken_after_planning_is_a_clear_error(
    no_launcher_env: None, monkeypatch: pytest.MonkeyPatch
) -> None:
    # Another program grabs the port between planning and rendezvous: rank 0 cannot listen.
    monkeypatch.setattr(planning, "_port_is_free", lambda port: True)
    with socket.socket() as sock:
        sock.bind(("", 0))
        sock.listen()
        port = sock.getsockname()[1]
        cfg = cfg_of(processes=2, master_port=port)
        with pytest.raises(DistributedError, match="could not join the process group") as info:
            distributed.launch(fail_on_step_two, cfg, timeout=timedelta(seconds=60))
    assert str(info.value).startswith("worker rank 0 failed:")
    assert "\n" not in str(info.value)


def sleep_then_return_rank(cfg: SimpleNamespace) -> int:
    distributed.barrier()
    time.sleep(cfg.seconds)
    return distributed.rank()


@pytest.mark.slow
def test_one_signal_to_the_launcher_waits_for_the_workers(no_launcher_env: None) -> None:
    # Ctrl-C reaches the workers too and they stop cleanly; the launcher must not kill them.
    timer = threading.Timer(1.0, os.kill, (os.getpid(), signal.SIGINT))
    timer.start()
    try:
        assert distributed.launch(sleep_then_return_rank, cfg_of(processes=2, seconds=4)) == 0
    finally:
        timer.cancel()
