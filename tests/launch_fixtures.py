"""A stand-in for PretrainConfig with the launch fields, shared by the distributed tests."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any


def launch_cfg(**fields: Any) -> SimpleNamespace:
    """The fields plan_launch and launch read (plus anything a worker needs), as a namespace."""
    base = {
        "gpus": 0,
        "processes": 1,
        "nodes": 1,
        "node_rank": 0,
        "master_addr": "127.0.0.1",
        "master_port": None,
        "resolved_device": "cpu",
    }
    return SimpleNamespace(**{**base, **fields})
