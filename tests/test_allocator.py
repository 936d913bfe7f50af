"""simclr_cli.allocator: freed tensor memory is reused without page faults; users can opt out."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from types import SimpleNamespace
from typing import Any

import pytest
import torch

from simclr_cli import allocator
from simclr_cli.allocator import user_tuned_malloc
from simclr_cli.evaluation import features, linear_eval
from simclr_cli.training import pretrain as train

# A 64 MiB buffer is over glibc's largest mmap threshold (32 MiB), so by default every
# allocation of it is a fresh mapping whose 16,384 pages fault in again when written.
PAGES = 64 * 2**20 // 4096

# Allocates, fills and frees the buffer 24 times, like a training step's activations, and
# reports the minor page faults of the last four rounds. With the setting, the heap first grows
# for 3-8 rounds (a freed block is too small for the next 64-byte-aligned request of the same
# size until a neighbour is free too) and then stops faulting.
CHILD = """
import json, resource, sys, torch
from simclr_cli.allocator import keep_freed_memory
applied = keep_freed_memory() if sys.argv[1] == "keep" else False
def fill():
    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
    torch.empty(16 * 2**20).fill_(1.0)  # 64 MiB of float32, freed at once
    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before
faults = [fill() for _ in range(24)]
print(json.dumps({"applied": applied, "faults": max(faults[-4:])}))
"""


def is_glibc() -> bool:
    try:
        version = os.confstr("CS_GNU_LIBC_VERSION") if sys.platform.startswith("linux") else None
    except (ValueError, OSError):  # musl and others do not name a GNU libc
        return False
    return bool(version and version.startswith("glibc"))


glibc_only = pytest.mark.skipif(not is_glibc(), reason="the setting is glibc malloc's")


def settled_faults(mode: str, **env: str) -> dict[str, Any]:
    clean = {k: v for k, v in os.environ.items() if not user_tuned_malloc({k: v})}
    result = subprocess.run(
        [sys.executable, "-c", CHILD, mode],
        env={**clean, "OMP_NUM_THREADS": "1", **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return json.loads(result.stdout.splitlines()[-1])


def huge_pages_always() -> bool:
    path = Path("/sys/kernel/mm/transparent_hugepage/enabled")
    return path.exists() and "[always]" in path.read_text()


@glibc_only
def test_a_freed_buffer_is_reused_without_faulting_its_pages_in_again() -> None:
    kept = settled_faults("keep")
    assert kept["applied"] is True
    assert kept["faults"] < PAGES // 20, kept
    default = settled_faults("default")
    if not huge_pages_always():  # with 2 MiB pages the default faults 512x less often
        assert default["faults"] > PAGES // 2, default  # the control: what the setting removes


@glibc_only
def test_a_malloc_variable_in_the_environment_leaves_malloc_alone() -> None:
    untouched = settled_faults("keep", MALLOC_MMAP_MAX_="65536")
    assert untouched["applied"] is False
    if not huge_pages_always():
        assert untouched["faults"] > PAGES // 2, untouched


@pytest.mark.parametrize(
    ("environ", "tuned"),
    [
        ({}, False),
        ({"PATH": "/usr/bin", "MALLOC": "x", "MALLOC_ARENA_MAX": "2"}, False),
        ({"MALLOC_MMAP_MAX_": "65536"}, True),
        ({"MALLOC_TRIM_THRESHOLD_": "131072"}, True),
        ({"GLIBC_TUNABLES": "glibc.malloc.trim_threshold=0"}, True),
        ({"GLIBC_TUNABLES": "glibc.rtld.nns=4"}, False),
    ],
)
def test_which_environments_count_as_a_user_malloc_setting(
    environ: dict[str, str], tuned: bool
) -> None:
    assert user_tuned_malloc(environ) is tuned


@glibc_only
def test_info_says_whether_cpu_runs_keep_freed_memory() -> None:
    assert allocator.policy({}).startswith("keeps freed memory")
    assert allocator.policy({"MALLOC_MMAP_MAX_": "65536"}).startswith("as the environment")


class Stop(Exception):
    """Raised by the stand-ins below to end a command before any real work."""


@pytest.mark.parametrize("device_type", ["cpu", "cuda"])
def test_the_heavy_commands_keep_freed_memory_on_the_cpu_only(
    monkeypatch: pytest.MonkeyPatch, device_type: str
) -> None:
    kept: list[bool] = []

    def stop(*args: Any, **kwargs: Any) -> None:
        raise Stop

    device = torch.device(device_type)
    monkeypatch.setattr(allocator, "keep_freed_memory", lambda: kept.append(True) or True)
    monkeypatch.setattr(train, "select_device", lambda cfg: device)
    monkeypatch.setattr(train, "resume_checkpoint_path", stop)
    for module in (linear_eval, features):
        monkeypatch.setattr(module, "load_frozen_model", lambda *a: (None, None, None))
        monkeypatch.setattr(module, "resolve_device", lambda name: device)
        monkeypatch.setattr(module, "checkpoint_transform", stop)
    monkeypatch.setattr(features, "check_outputs", lambda *a: None)
    cfg = SimpleNamespace(
        checkpoint="c.pt",
        cache_dir=None,
        resolved_device=device_type,
        image_size=None,
        dataset_kind=None,
        out=".",
        overwrite=False,
    )
    for run in (train.pretrain, linear_eval.run_linear_eval, features.export_features):
        with pytest.raises(Stop):
            run(cfg)  # type: ignore[operator]
    assert kept == ([True] * 3 if device_type == "cpu" else [])
