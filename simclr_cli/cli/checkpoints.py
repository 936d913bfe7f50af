"""The commands about checkpoints and the machine: ``download`` and ``info``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Annotated

import typer

from simclr_cli.cli.app import build, examples, print_registry, shared_option, with_default
from simclr_cli.config import DownloadConfig, InfoConfig

D = DownloadConfig

DOWNLOAD_EXAMPLES = examples(
    "simclr download resnet50-stl10",
    "simclr download --list",
    "simclr download resnet18-stl10 --from-file ~/Downloads/checkpoint_100.tar",
)


def download(
    name: Annotated[
        str | None, typer.Argument(help="Release checkpoint name (see --list) or an http(s) URL.")
    ] = None,
    list_only: Annotated[
        bool | None, typer.Option("--list", help="List release checkpoints and the cache.")
    ] = None,
    cache_dir: Annotated[Path | None, shared_option(D, "cache_dir")] = None,
    force: Annotated[
        bool | None, typer.Option(help=with_default(D, "force", "Download again even if cached."))
    ] = None,
    from_file: Annotated[
        Path | None,
        typer.Option(help="Import a file fetched by hand (offline machines) instead."),
    ] = None,
    sha256: Annotated[
        str | None,
        typer.Option(help="Expected sha256 of the file (hex); verified, for any name or URL."),
    ] = None,
) -> None:
    """Fetch a release checkpoint (or any checkpoint URL) into the cache, verified."""
    cfg = build(DownloadConfig, **locals())
    from simclr_cli import hub

    if cfg.list_only and cfg.name is None:
        print_registry(cfg.cache_dir)
        return
    path = hub.download(
        cfg.name,
        cache_dir=cfg.cache_dir,
        force=cfg.force,
        from_file=cfg.from_file,
        sha256=cfg.sha256,
    )
    typer.echo(str(path))


INFO = InfoConfig

INFO_EXAMPLES = examples(
    "simclr info", "simclr info --json", "simclr info runs/x/checkpoint_last.pt"
)


def info(
    target: Annotated[
        str | None, typer.Argument(help="A checkpoint file or release name to describe.")
    ] = None,
    as_json: Annotated[
        bool | None, typer.Option("--json", help="Machine-readable output on stdout.")
    ] = None,
    cache_dir: Annotated[Path | None, shared_option(INFO, "cache_dir")] = None,
    data_dir: Annotated[
        Path | None, typer.Option(help=with_default(INFO, "data_dir", "Dataset folder."))
    ] = None,
) -> None:
    """What is installed, which devices, what is cached; or what a checkpoint holds."""
    cfg = build(InfoConfig, **locals())
    from simclr_cli import info as facts

    data = facts.checkpoint_info(cfg) if cfg.target else facts.system_info(cfg)
    if cfg.as_json:
        typer.echo(json.dumps(data, indent=2, default=str))
    else:
        facts.render(data)
