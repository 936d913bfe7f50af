"""NT-Xent against a loop transcription of the paper's Algorithm 1, plus its known pitfalls."""

from __future__ import annotations

import math
import subprocess
import sys
import textwrap

import pytest
import torch
import torch.nn.functional as F

from simclr_cli import distributed as dist
from simclr_cli.errors import UsageError
from simclr_cli.method.loss import NTXentLoss, nt_xent


def algorithm1_loss(z_i: torch.Tensor, z_j: torch.Tensor, temperature: float) -> float:
    """Chen et al. 2020, Algorithm 1, in float64 Python loops with the paper's indexing.

    The 2N augmented examples are interleaved: example 2k-1 is z_i[k], example 2k is z_j[k]
    (0-based here: 2k and 2k+1).
    """
    rows = [[float(v) for v in r] for pair in zip(z_i, z_j, strict=True) for r in pair]
    two_n = len(rows)

    def sim(u: list[float], v: list[float]) -> float:
        dot = math.fsum(a * b for a, b in zip(u, v, strict=True))
        return dot / (
            math.sqrt(math.fsum(a * a for a in u)) * math.sqrt(math.fsum(b * b for b in v))
        )

    s = [[sim(rows[a], rows[b]) for b in range(two_n)] for a in range(two_n)]

    def ell(a: int, b: int) -> float:
        denominator = math.fsum(math.exp(s[a][k] / temperature) for k in range(two_n) if k != a)
        return -math.log(math.exp(s[a][b] / temperature) / denominator)

    n = two_n // 2
    return math.fsum(ell(2 * k, 2 * k + 1) + ell(2 * k + 1, 2 * k) for k in range(n)) / two_n


@pytest.mark.parametrize(
    ("n", "d", "temperature"),
    [(1, 4, 0.5), (2, 3, 0.5), (5, 7, 0.07), (8, 16, 0.1), (16, 32, 1.0), (12, 8, 2.0)],
)
def test_matches_algorithm1_in_float64(n: int, d: int, temperature: float) -> None:
    gen = torch.Generator().manual_seed(n * 100 + d)
    z_i = torch.randn(n, d, generator=gen, dtype=torch.float64)
    z_j = torch.randn(n, d, generator=gen, dtype=torch.float64)
    loss = nt_xent(z_i, z_j, temperature)
    assert loss.dtype == torch.float64
    assert loss.item() == pytest.approx(algorithm1_loss(z_i, z_j, temperature), abs=1e-6)


def test_float32_matches_algorithm1() -> None:
    gen = torch.Generator().manual_seed(1)
    z_i, z_j = torch.randn(2, 10, 12, generator=gen)
    loss = nt_xent(z_i, z_j, 0.2)
    assert loss.dtype == torch.float32
    assert loss.item() == pytest.approx(algorithm1_loss(z_i, z_j, 0.2), abs=1e-5)


def test_module_form_equals_function() -> None:
    z_i, z_j = torch.randn(2, 6, 5, generator=torch.Generator().manual_seed(2))
    assert NTXentLoss(0.3)(z_i, z_j).item() == nt_xent(z_i, z_j, 0.3).item()
    assert "temperature=0.3" in repr(NTXentLoss(0.3))


@pytest.mark.parametrize("n", [1, 4, 33])
def test_equal_embeddings_give_log_2n_minus_1(n: int) -> None:
    z = torch.ones(n, 8, dtype=torch.float64)
    assert nt_xent(z, 3 * z, 0.5).item() == pytest.approx(math.log(2 * n - 1), abs=1e-9)


def test_symmetric_in_the_two_views_and_pair_order() -> None:
    z_i, z_j = torch.randn(2, 9, 6, generator=torch.Generator().manual_seed(3), dtype=torch.float64)
    loss = nt_xent(z_i, z_j, 0.5).item()
    assert nt_xent(z_j, z_i, 0.5).item() == pytest.approx(loss, abs=1e-12)
    perm = torch.randperm(9, generator=torch.Generator().manual_seed(4))
    assert nt_xent(z_i[perm], z_j[perm], 0.5).item() == pytest.approx(loss, abs=1e-12)


def test_positives_lower_the_loss() -> None:
    # Matching views must score far better than unrelated ones: pins the target indices.
    z = torch.randn(16, 32, generator=torch.Generator().manual_seed(5))
    other = torch.randn(16, 32, generator=torch.Generator().manual_seed(6))
    assert nt_xent(z, z, 0.1).item() < 0.1 * nt_xent(z, other, 0.1).item()


def test_gradcheck_float64() -> None:
    gen = torch.Generator().manual_seed(7)
    z_i = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    z_j = torch.randn(4, 5, generator=gen, dtype=torch.float64, requires_grad=True)
    assert torch.autograd.gradcheck(lambda a, b: nt_xent(a, b, 0.3), (z_i, z_j))


def test_smaller_last_batch_needs_no_new_loss_object() -> None:
    # Spijkervet/SimCLR bakes the batch size into the loss (its mask), so a short last batch fails.
    criterion = NTXentLoss(0.5)
    gen = torch.Generator().manual_seed(8)
    for n in (8, 3):
        z_i, z_j = torch.randn(2, n, 4, generator=gen, dtype=torch.float64)
        assert criterion(z_i, z_j).item() == pytest.approx(algorithm1_loss(z_i, z_j, 0.5), abs=1e-9)


@pytest.mark.parametrize("temperature", [0.0, -0.5, float("nan"), float("inf")])
def test_bad_temperature_is_rejected(temperature: float) -> None:
    with pytest.raises(UsageError, match="--temperature"):
        NTXentLoss(temperature)
    with pytest.raises(UsageError, match="--temperature"):
        nt_xent(torch.randn(2, 3), torch.randn(2, 3), temperature)


@pytest.mark.parametrize(
    ("a", "b"), [((3, 4), (2, 4)), ((3, 4), (3, 5)), ((4,), (4,)), ((0, 4), (0, 4))]
)
def test_bad_shapes_are_rejected(a: tuple[int, ...], b: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match="z_i, z_j"):
        nt_xent(torch.randn(a), torch.randn(b))


def test_logits_stay_float32_under_autocast() -> None:
    gen = torch.Generator().manual_seed(9)
    z_i, z_j = (torch.randn(2, 64, 32, generator=gen) * 3).to(torch.bfloat16)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        loss = nt_xent(z_i, z_j, 0.05)
    assert loss.dtype == torch.float32
    # bfloat16 logits would be off by ~1e-2 at this temperature.
    expected = nt_xent(z_i.double(), z_j.double(), 0.05).item()
    assert loss.item() == pytest.approx(expected, abs=2e-5)


@pytest.mark.parametrize("world", [2, 3])
def test_rank_layout_matches_single_process(world: int, monkeypatch: pytest.MonkeyPatch) -> None:
    """Each rank scores its rows against all ranks' [z_i; z_j]; targets are offset by its rank.

    Simulates the gather in one process; the mean over ranks must equal the loss of the whole
    batch, in value and gradient. (Spijkervet/SimCLR's mask assumes [all z_i; all z_j] and picks
    the wrong positives with more than one process.)
    """
    n, d = 3, 5
    gen = torch.Generator().manual_seed(10)
    z_i = torch.randn(world * n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    z_j = torch.randn(world * n, d, generator=gen, dtype=torch.float64, requires_grad=True)
    whole = nt_xent(z_i, z_j, 0.5)
    grads = torch.autograd.grad(whole, (z_i, z_j))

    def local(k: int) -> torch.Tensor:  # rank k's normalised [z_i; z_j]: (2n, d)
        rows = slice(k * n, (k + 1) * n)
        return F.normalize(torch.cat([z_i[rows], z_j[rows]]), dim=1)

    monkeypatch.setattr(dist, "world_size", lambda: world)
    total = torch.zeros((), dtype=torch.float64)
    for r in range(world):
        monkeypatch.setattr(dist, "rank", lambda r=r: r)
        monkeypatch.setattr(
            dist,
            "gather_with_grad",
            lambda z, r=r: torch.cat([z if k == r else local(k) for k in range(world)]),
        )
        total = total + nt_xent(z_i[r * n : (r + 1) * n], z_j[r * n : (r + 1) * n], 0.5) / world
    assert total.item() == pytest.approx(whole.item(), abs=1e-12)
    for got, want in zip(torch.autograd.grad(total, (z_i, z_j)), grads, strict=True):
        torch.testing.assert_close(got, want, rtol=0, atol=1e-12)


PEAK_PROBE = """
import sys, torch
torch.set_num_threads(1)
from simclr_cli.method.loss import nt_xent

def status(field):  # bytes; VmHWM is this process's own peak (ru_maxrss inherits the parent's)
    for line in open("/proc/self/status"):
        if line.startswith(field + ":"):
            return int(line.split()[1]) * 1024

def spijkervet_style(z_i, z_j, t):
    # (2N, 2N, D) broadcast cosine similarity, as Spijkervet/SimCLR computes it.
    z = torch.cat([z_i, z_j])
    sim = torch.nn.CosineSimilarity(dim=2)(z.unsqueeze(1), z.unsqueeze(0)) / t
    return sim.logsumexp(1).mean()

which, n, d = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
fn = nt_xent if which == "ours" else spijkervet_style
small = [torch.randn(64, d, requires_grad=True) for _ in range(2)]
fn(*small, 0.5).backward()  # load kernels and allocator pools before the baseline
z_i, z_j = (torch.randn(n, d, requires_grad=True) for _ in range(2))
with open("/proc/self/clear_refs", "w") as f:
    f.write("5")  # reset VmHWM to the current resident size
before = status("VmRSS")
fn(z_i, z_j, 0.5).backward()
print(status("VmHWM") - before)
"""


def peak_bytes(which: str, n: int, d: int) -> int:
    """Extra peak resident memory of one forward+backward, measured in a fresh process."""
    out = subprocess.run(
        [sys.executable, "-c", textwrap.dedent(PEAK_PROBE), which, str(n), str(d)],
        capture_output=True,
        text=True,
        check=True,
        timeout=300,
    )
    return int(out.stdout.strip())


@pytest.mark.slow  # two fresh processes importing torch, and a 4096-pair forward+backward
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads /proc/self/status")
def test_peak_memory_at_4096_pairs_stays_under_1_gib() -> None:
    # The meter sees a (2N, 2N, D) float32 intermediate: 256 x 256 x 128 x 4 B = 32 MiB.
    assert peak_bytes("spijkervet", 128, 128) > 32 * 2**20
    # Ours at N = 4096, D = 128: (8192, 8192) float32 logits are 256 MiB; three live at most.
    assert peak_bytes("ours", 4096, 128) < 2**30
