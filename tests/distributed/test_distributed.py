"""Two gloo processes on the CPU compute what one process computes on the same global batch.

One spawned job (the module fixture ``two_ranks``) runs every multi-process check and saves
each rank's tensors; the tests compare them with single-process references computed here,
in the pytest process, where ``world_size() == 1`` and every code path is the plain one.
"""

from __future__ import annotations

from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch
from launch_fixtures import launch_cfg as spawn_cfg
from torch import nn

from simclr_cli import distributed
from simclr_cli.distributed import GlobalBatchNorm, gather_with_grad

GLOBAL_ROWS = 8  # global batch of the checks; rank r holds rows [4r, 4r + 4)
UNEVEN = (3, 5)  # row counts of ranks 0 and 1 in the uneven batch-norm check
TOL = {"atol": 1e-5, "rtol": 1e-5}

# Every test here shares one spawned 2-process job (about 20-40 s on 2 busy cores).
pytestmark = pytest.mark.slow


def rows_of(rank: int, n: int = GLOBAL_ROWS // 2) -> slice:
    return slice(rank * n, (rank + 1) * n)


# --------------------------------------------------------------------------------------------
# Cases: deterministic inputs shared by the workers and the single-process references
# --------------------------------------------------------------------------------------------


def gather_case() -> torch.Tensor:
    return torch.randn(GLOBAL_ROWS, 5, generator=torch.Generator().manual_seed(1))


def gather_loss(rows: torch.Tensor, columns: torch.Tensor) -> torch.Tensor:
    # Local rows scored against all rows, as NT-Xent does: sum over ranks = the global loss.
    return (rows @ columns.T).square().sum()


def bn_case(shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    g = torch.Generator().manual_seed(2)
    channels = shape[1]
    return {
        "x": torch.randn(shape, generator=g) * 2 + 1,
        "x_eval": torch.randn(shape, generator=g),
        "probe": torch.randn(shape, generator=g),  # makes the input gradient non-trivial
        "weight": torch.rand(channels, generator=g) + 0.5,
        "bias": torch.randn(channels, generator=g),
    }


def run_bn(bn: nn.Module, case: dict[str, torch.Tensor], rows: slice) -> dict[str, torch.Tensor]:
    """One training step and one eval forward of ``bn`` on ``rows`` of the case."""
    with torch.no_grad():
        bn.weight.copy_(case["weight"])
        bn.bias.copy_(case["bias"])
    x = case["x"][rows].clone().requires_grad_(True)
    y = bn(x)
    (y * case["probe"][rows]).sum().backward()
    bn.eval()
    return {
        "y": y.detach(),
        "x_grad": x.grad,
        "weight_grad": bn.weight.grad.clone(),
        "bias_grad": bn.bias.grad.clone(),
        "running_mean": bn.running_mean.clone(),
        "running_var": bn.running_var.clone(),
        "num_batches_tracked": bn.num_batches_tracked.clone(),
        "y_eval": bn(case["x_eval"][rows]).detach(),
    }


def ntxent_case() -> tuple[torch.Tensor, torch.Tensor]:
    g = torch.Generator().manual_seed(3)
    return torch.rand(GLOBAL_ROWS, 3, 8, 8, generator=g), torch.rand(
        GLOBAL_ROWS, 3, 8, 8, generator=g
    )


def tiny_simclr() -> nn.Module:
    """A SimCLR model with a two-conv encoder; batch norm in the encoder and the v2 head."""
    from simclr_cli.method.model import SimCLR

    torch.manual_seed(0)
    encoder = nn.Sequential(
        nn.Conv2d(3, 8, 3, padding=1, bias=False),
        nn.BatchNorm2d(8),
        nn.ReLU(),
        nn.Conv2d(8, 16, 3, stride=2, padding=1, bias=False),
        nn.BatchNorm2d(16),
        nn.ReLU(),
        nn.AdaptiveAvgPool2d(1),
        nn.Flatten(),
    )
    return SimCLR(encoder, feature_dim=16, projection_dim=8, head="v2", hidden_dim=16)


def train_step(model: nn.Module, optimizer_name: str, rows: slice) -> dict[str, Any]:
    """Loss, gradients and weights after one optimizer step on ``rows`` of the case."""
    from simclr_cli.method.loss import nt_xent
    from simclr_cli.method.optim import LARS, param_groups

    x_i, x_j = ntxent_case()
    bare = getattr(model, "module", model)  # DDP's wrapped module, or the bare model
    if optimizer_name == "lars":
        optimizer = LARS(param_groups(bare, 1e-4), lr=1.0, momentum=0.9, weight_decay=1e-4)
    else:
        optimizer = torch.optim.Adam(bare.parameters(), lr=1e-3)
    _, z = model(torch.cat([x_i[rows], x_j[rows]]))  # both views as one batch
    z_i, z_j = z.chunk(2)
    loss = nt_xent(z_i, z_j, temperature=0.5)
    loss.backward()
    grads = {k: p.grad.clone() for k, p in bare.named_parameters() if p.grad is not None}
    optimizer.step()
    return {
        "loss": loss.detach(),
        "loss_mean": distributed.all_reduce_mean(loss.detach()),
        "grads": grads,
        "state": {k: v.clone() for k, v in bare.state_dict().items()},
    }


# --------------------------------------------------------------------------------------------
# The spawned job
# --------------------------------------------------------------------------------------------


def two_rank_checks(cfg: SimpleNamespace) -> dict[str, Any]:
    """Runs in each of the 2 processes; saves this rank's results to ``cfg.out_dir``."""
    torch.set_num_threads(1)
    r = distributed.rank()
    x = gather_case()
    local = x[rows_of(r)].clone().requires_grad_(True)
    columns = gather_with_grad(local)
    gather_loss(local, columns).backward()
    out: dict[str, Any] = {"gathered": columns.detach(), "gather_grad": local.grad}

    case4d = bn_case((GLOBAL_ROWS, 3, 4, 4))
    out["global_bn"] = run_bn(GlobalBatchNorm(3), case4d, rows_of(r))
    out["local_bn"] = run_bn(nn.BatchNorm2d(3), case4d, rows_of(r))
    case2d = bn_case((sum(UNEVEN), 6))
    uneven = slice(0, UNEVEN[0]) if r == 0 else slice(UNEVEN[0], None)
    bn1d = distributed.convert_sync_batchnorm(nn.BatchNorm1d(6, momentum=None), "cpu")
    out["uneven_bn"] = run_bn(bn1d, case2d, uneven)

    for name in ("lars", "adam"):
        model = distributed.convert_sync_batchnorm(tiny_simclr(), "cpu")
        model = distributed.wrap_ddp(model, "cpu")
        out[f"step_{name}"] = train_step(model, name, rows_of(r))
    out["ddp_type"] = type(model).__name__

    out["broadcast"] = distributed.broadcast_object({"from": r}, src=1)
    out["sum"] = distributed.all_reduce_sum(float(r + 1))
    torch.save(out, Path(cfg.out_dir) / f"rank{r}.pt")
    distributed.barrier()
    return {"rank": r, "world_size": distributed.world_size(), "is_main": distributed.is_main()}


@pytest.fixture(scope="module")
def two_ranks(tmp_path_factory: pytest.TempPathFactory) -> tuple[Any, list[dict[str, Any]]]:
    out_dir = tmp_path_factory.mktemp("two_ranks")
    cfg = spawn_cfg(processes=2, out_dir=str(out_dir))
    with pytest.MonkeyPatch.context() as patch:
        # launch() reads os.environ: hide a surrounding torchrun/SLURM job.
        for name in ("RANK", "WORLD_SIZE", "SLURM_PROCID", "SLURM_STEP_NUM_TASKS"):
            patch.delenv(name, raising=False)
        returned = distributed.launch(two_rank_checks, cfg)
    ranks = [torch.load(out_dir / f"rank{r}.pt", weights_only=True) for r in range(2)]
    return returned, ranks


# --------------------------------------------------------------------------------------------
# Tests against the spawned job
# --------------------------------------------------------------------------------------------


def test_launch_returns_rank0_value_and_ranks_see_the_group(two_ranks: Any) -> None:
    returned, ranks = two_ranks
    assert returned == {"rank": 0, "world_size": 2, "is_main": True}
    assert [r["broadcast"] for r in ranks] == [{"from": 1}, {"from": 1}]
    assert [r["sum"] for r in ranks] == [3.0, 3.0]


def test_gather_forward_is_concatenation_and_backward_is_exact(two_ranks: Any) -> None:
    _, ranks = two_ranks
    x = gather_case().requires_grad_(True)
    gather_loss(x, x).backward()
    for r, result in enumerate(ranks):
        torch.testing.assert_close(result["gathered"], gather_case(), atol=0, rtol=0)
        # Not scaled by 1/world_size and not missing the other rank's terms.
        torch.testing.assert_close(result["gather_grad"], x.grad[rows_of(r)], **TOL)


def bn_reference(bn: nn.Module, shape: tuple[int, ...]) -> dict[str, torch.Tensor]:
    return run_bn(bn, bn_case(shape), slice(None))


def test_global_bn_equals_one_process_batch_norm(two_ranks: Any) -> None:
    _, ranks = two_ranks
    ref = bn_reference(nn.BatchNorm2d(3), (GLOBAL_ROWS, 3, 4, 4))
    for r, result in enumerate(ranks):
        got = result["global_bn"]
        for key in ("y", "x_grad", "y_eval"):
            torch.testing.assert_close(got[key], ref[key][rows_of(r)], **TOL)
        for key in ("running_mean", "running_var", "num_batches_tracked"):
            torch.testing.assert_close(got[key], ref[key], **TOL)
    # Parameter gradients: DDP sums (then averages) them, so the sum over ranks is the reference.
    for key in ("weight_grad", "bias_grad"):
        total = ranks[0]["global_bn"][key] + ranks[1]["global_bn"][key]
        torch.testing.assert_close(total, ref[key], **TOL)


def test_global_bn_merges_uneven_batches_exactly(two_ranks: Any) -> None:
    _, ranks = two_ranks
    ref = bn_reference(nn.BatchNorm1d(6, momentum=None), (sum(UNEVEN), 6))
    parts = [slice(0, UNEVEN[0]), slice(UNEVEN[0], None)]
    for r, result in enumerate(ranks):
        got = result["uneven_bn"]
        torch.testing.assert_close(got["y"], ref["y"][parts[r]], **TOL)
        torch.testing.assert_close(got["x_grad"], ref["x_grad"][parts[r]], **TOL)
        torch.testing.assert_close(got["running_var"], ref["running_var"], **TOL)


def test_local_bn_does_not_match_one_process(two_ranks: Any) -> None:
    # The control: per-process statistics differ, so the global-BN test above can fail.
    _, ranks = two_ranks
    ref = bn_reference(nn.BatchNorm2d(3), (GLOBAL_ROWS, 3, 4, 4))
    for r, result in enumerate(ranks):
        assert not torch.allclose(result["local_bn"]["y"], ref["y"][rows_of(r)], **TOL)
        assert not torch.allclose(result["local_bn"]["running_mean"], ref["running_mean"], **TOL)


@pytest.mark.parametrize("optimizer_name", ["lars", "adam"])
def test_ntxent_step_over_two_ranks_equals_one_process(two_ranks: Any, optimizer_name: str) -> None:
    _, ranks = two_ranks
    ref = train_step(tiny_simclr(), optimizer_name, slice(None))
    got = [result[f"step_{optimizer_name}"] for result in ranks]
    # Each rank's loss is the mean over its anchors; their mean is the global loss.
    torch.testing.assert_close((got[0]["loss"] + got[1]["loss"]) / 2, ref["loss"], **TOL)
    for result in got:
        torch.testing.assert_close(result["loss_mean"], ref["loss"], **TOL)
        assert result["grads"].keys() == ref["grads"].keys()
        for key, grad in ref["grads"].items():
            torch.testing.assert_close(result["grads"][key], grad, **TOL, msg=key)
        # Same keys as a single-process state dict: no "module." prefix, BN buffers included.
        assert list(result["state"]) == list(ref["state"])
        for key, value in ref["state"].items():
            torch.testing.assert_close(result["state"][key], value, **TOL, msg=key)


def test_models_were_wrapped_in_ddp(two_ranks: Any) -> None:
    _, ranks = two_ranks
    assert ranks[0]["ddp_type"] == "DistributedDataParallel"
