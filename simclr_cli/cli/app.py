"""The Typer app and what every command shares: help texts that show the config's defaults,
flags validated into one config, the options several commands declare alike, the summaries."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import typer
from pydantic import BaseModel

from simclr_cli import __version__
from simclr_cli.config import RESUME_MAY_CHANGE, flag_name
from simclr_cli.evaluation.metrics import KNN_K
from simclr_cli.method.schedule import DEFAULT_WEIGHT_DECAY


def _no_flag_type(show_type: Any) -> Any:
    """Typer 0.29 prints ``<bool>`` in the type column of every on/off flag (``--help``
    included); a flag takes no value, so its type column stays empty."""

    def display_type_rich(self: Any, ctx: Any) -> Any:
        return None if getattr(self, "is_flag", False) else show_type(self, ctx)

    return display_type_rich


if hasattr(typer.core, "TyperOption") and hasattr(typer.core.TyperOption, "display_type_rich"):
    typer.core.TyperOption.display_type_rich = _no_flag_type(  # type: ignore[method-assign]
        typer.core.TyperOption.display_type_rich
    )

app = typer.Typer(
    name="simclr",
    help="SimCLR from the command line: pretrain, evaluate, export features, fetch checkpoints.",
    context_settings={"help_option_names": ["-h", "--help"]},
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode="rich",
)


def _version(value: bool) -> None:
    if value:
        typer.echo(f"simclr-cli {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: Annotated[
        bool | None,
        typer.Option("--version", callback=_version, is_eager=True, help="Print the version."),
    ] = None,
) -> None:
    """SimCLR (Chen et al. 2020) from the command line."""


# -- help texts and configs ------------------------------------------------------------------


def _default(model: type[BaseModel], field: str, none: str = "auto") -> str:
    info = model.model_fields[field]
    if info.default_factory is not None:
        value = info.default_factory()  # type: ignore[call-arg]
    else:
        value = info.default
    return none if value is None else str(value)


def with_default(model: type[BaseModel], field: str, text: str, none: str = "auto") -> str:
    """Help text with the model's default, so defaults are declared in one place.

    Args:
        model: The config model whose field the flag sets.
        field: The field's name.
        text: What the flag does.
        none: How a default of None reads.
    """
    return f"{text} \\[default: {_default(model, field, none)}]"


# Help of the flags that several commands declare with the same words.
_SHARED_HELP = {
    "cache_dir": "Checkpoint cache.",
    "data_dir": "Where datasets live.",
    "device": "auto, cpu or cuda.",
    "precision": "auto, fp32, bf16 or fp16.",
    "workers": "DataLoader worker processes.",
    "overwrite": "Replace existing output files.",
    "image_size": "Input size; auto = the checkpoint's.",
}

CHECKPOINT_HELP = "Checkpoint file, or a release name (see simclr download --list)."
KNN_K_HELP = f"kNN neighbours; auto: {KNN_K}, at most 1/10 of the smallest class."


def shared_option(model: type[BaseModel], field: str) -> Any:
    """The ``typer.Option`` of a flag several commands share (``--device``, ``--cache-dir``...).

    Args:
        model: The config model of the command.
        field: The field's name, a key of the shared help texts.
    """
    return flag(model, field, _SHARED_HELP[field])


def flag(
    model: type[BaseModel], field: str, text: str, none: str = "auto", name: str | None = None
) -> Any:
    """The ``typer.Option`` of the flag that sets ``field``, its help ending with the default.

    Args:
        model, field, text, none: As for :func:`with_default`.
        name: The flag's declaration when Typer's own is not wanted (``--blur/--no-blur``).
    """
    return typer.Option(*([name] if name else []), help=with_default(model, field, text, none))


def decay_defaults() -> str:
    """``1e-06 for LARS, Adam; 0.0001 for AdamW, SGD``: the defaults of the config, grouped."""
    names = {"lars": "LARS", "adam": "Adam", "adamw": "AdamW", "sgd": "SGD"}
    groups: dict[float, list[str]] = {}
    for optimizer, decay in DEFAULT_WEIGHT_DECAY.items():
        groups.setdefault(decay, []).append(names[optimizer])
    return "; ".join(f"{decay:g} for {', '.join(opts)}" for decay, opts in groups.items())


def resume_flags() -> str:
    """The flags a resume may change, for ``--help`` (from the one list in the config)."""
    return ", ".join(flag_name(name) for name in RESUME_MAY_CHANGE)


def build(model: type[BaseModel], **flags: Any) -> Any:
    """Validate flags into a config; ``None`` means "use the model's default"."""
    return model(**{k: v for k, v in flags.items() if v is not None})


def examples(*lines: str) -> str:
    """The ``Examples:`` epilog of a command's ``--help``."""
    return "Examples:\n\n" + "\n\n".join(f"  $ {line}" for line in lines)


# -- output ----------------------------------------------------------------------------------


def print_summary(title: str, summary: Any) -> None:
    """Print the summary a command returned (a dict of results) as one table."""
    from simclr_cli.cli import info

    info.render_summary(title, summary)


def print_registry(cache_dir: Path) -> None:
    """Print the release checkpoints and what of them is cached."""
    from simclr_cli.cli import info

    info.render_registry(cache_dir)
