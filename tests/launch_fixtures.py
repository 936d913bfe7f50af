"""A stand-in for PretrainConfig with the launch fields, shared by the distributed tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def launch_cfg(**fields: Any) -> SimpleNamespace:
    """The fields plan_launch and launch read (plus anything a worker needs), as a namespace.

    ``procs_per_node`` and ``world_size`` are derived as ``PretrainConfig`` derives them with no
    launcher around (the tests give plan_launch a launcher environment of their own).
    """
    base: dict[str, Any] = {
        "gpus": 0,
        "processes": 1,
        "nodes": 1,
        "node_rank": 0,
        "master_addr": "127.0.0.1",
        "master_port": None,
        "resolved_device": "cpu",
    }
    options = {**base, **fields}
    procs_per_node = options["gpus"] or options["processes"]
    derived = {"procs_per_node": procs_per_node, "world_size": procs_per_node * options["nodes"]}
    return SimpleNamespace(**{**derived, **options})
