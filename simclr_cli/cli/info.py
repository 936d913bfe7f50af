"""What ``simclr info`` reports, and the tables it and the other commands print.

Collecting facts (``system_info``, ``checkpoint_info``) is kept apart from drawing them
(``render*``), so ``--json`` and the tables show exactly the same data.
"""

from __future__ import annotations

import os
import platform
from pathlib import Path
from typing import Any

from rich.table import Table

from simclr_cli import __version__, allocator
from simclr_cli.config import InfoConfig
from simclr_cli.console import human_bytes, stdout_console


def folder_size(path: Path) -> int:
    """Bytes under ``path`` (0 when it does not exist)."""
    if not path.exists():
        return 0
    if path.is_file():
        return path.stat().st_size
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _devices() -> dict[str, Any]:
    import torch

    gpus = []
    if torch.cuda.is_available():
        for index in range(torch.cuda.device_count()):
            props = torch.cuda.get_device_properties(index)
            gpus.append({"index": index, "name": props.name, "memory_bytes": props.total_memory})
    return {
        "cuda_available": torch.cuda.is_available(),
        "cuda_version": torch.version.cuda,
        "gpus": gpus,
        "cpu_count": os.cpu_count(),
        "torch_threads": torch.get_num_threads(),
        "cpu_malloc": allocator.policy(),
    }


def system_info(cfg: InfoConfig) -> dict[str, Any]:
    """Versions, devices, distributed backends, folders and the release registry."""
    import torch
    import torchvision

    from simclr_cli.distributed import available_backends
    from simclr_cli.storage import hub

    return {
        "versions": {
            "simclr-cli": __version__,
            "python": platform.python_version(),
            "torch": torch.__version__,
            "torchvision": torchvision.__version__,
        },
        "devices": _devices(),
        "distributed_backends": available_backends(),
        "folders": {
            "cache_dir": str(cfg.cache_dir),
            "cache_bytes": folder_size(cfg.cache_dir),
            "data_dir": str(cfg.data_dir),
            "data_bytes": folder_size(cfg.data_dir),
        },
        "checkpoints": hub.registry_table(cfg.cache_dir),
    }


def checkpoint_info(cfg: InfoConfig) -> dict[str, Any]:
    """What a checkpoint (file or release name, downloaded on first use, or a classifier of
    ``simclr finetune``) holds."""
    from simclr_cli.storage import checkpoint, classifier, hub

    assert cfg.target is not None
    path = hub.resolve_checkpoint(cfg.target, cfg.cache_dir)
    kinds = (checkpoint.PRETRAIN_KIND, checkpoint.CLASSIFIER_KIND)
    payload = checkpoint.load_checkpoint(path, kinds=kinds)
    if payload["kind"] == checkpoint.CLASSIFIER_KIND:
        described = classifier.describe_classifier(classifier.check_classifier(payload, path))
    else:
        described = checkpoint.describe(payload)
    return {"path": str(path), "size_bytes": path.stat().st_size, **described}


# -- rendering -------------------------------------------------------------------------------


def _scalar(value: Any) -> str:
    if isinstance(value, float):
        return f"{value:.4g}"
    if isinstance(value, list):
        return ", ".join(_scalar(v) for v in value) if value else "-"
    if isinstance(value, dict):
        return ", ".join(f"{k}={_scalar(v)}" for k, v in value.items()) if value else "-"
    return "-" if value is None else str(value)


def _key_value_table(title: str, rows: dict[str, Any]) -> Table:
    table = Table(title=title, show_header=False, title_justify="left")
    table.add_column(style="bold")
    table.add_column()
    for key, value in rows.items():
        if key.endswith("_bytes") and isinstance(value, int):  # size_bytes -> size: 1.2 MiB
            key, value = key.removesuffix("_bytes"), human_bytes(value)
        table.add_row(key, _scalar(value))
    return table


def render(data: dict[str, Any]) -> None:
    """Draw ``system_info`` or ``checkpoint_info`` output as tables on stdout."""
    console = stdout_console()
    if "versions" not in data:
        console.print(_key_value_table("Checkpoint", data))
        return
    console.print(_key_value_table("Versions", data["versions"]))
    devices = dict(data["devices"])
    gpus = devices.pop("gpus")
    devices["gpus"] = [
        f"{g['index']}: {g['name']} ({human_bytes(g['memory_bytes'])})" for g in gpus
    ]
    devices["distributed_backends"] = data["distributed_backends"]
    console.print(_key_value_table("Devices", devices))
    console.print(_key_value_table("Folders", data["folders"]))
    _registry_table(data["checkpoints"])


def _registry_table(rows: list[dict[str, Any]]) -> None:
    table = Table(title="Release checkpoints", title_justify="left")
    for column in ("name", "arch", "epochs", "published accuracy", "cached"):
        table.add_column(column)
    for row in rows:
        cached = human_bytes(row["size_bytes"]) if row.get("cached") else "no"
        table.add_row(
            row["name"],
            str(row.get("arch", "-")),
            str(row.get("epochs", "-")),
            _scalar(row.get("accuracy")),
            cached,
        )
    stdout_console().print(table)


def render_registry(cache_dir: Path) -> None:
    from simclr_cli.storage import hub

    _registry_table(hub.registry_table(cache_dir))


def render_summary(title: str, summary: Any) -> None:
    """A one-screen summary of a finished command (a dict of results)."""
    if not isinstance(summary, dict):
        stdout_console().print(f"{title}: {summary}")
        return
    hidden = ("next_command", "next_commands", "verdict")
    shown = {k: v for k, v in summary.items() if k not in hidden}
    stdout_console().print(_key_value_table(title, shown))
    if summary.get("verdict"):
        stdout_console().print(f"vs baselines: {summary['verdict']}", markup=False)
    commands = summary.get("next_commands") or [summary.get("next_command")]
    for command in filter(None, commands):
        stdout_console().print(f"next: [bold]{command}[/bold]", markup=True)
