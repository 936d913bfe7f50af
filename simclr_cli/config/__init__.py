"""Validated options, one frozen model per command.

The CLI builds one of these from its flags; library entry points receive nothing else. Field
names are the flag names with ``_`` for ``-`` (``batch_size`` is ``--batch-size``), so a
validation error can name the flag. Defaults that depend on other options (image size, stem,
learning rate, ...) are :class:`~simclr_cli.config.fields.derived` values, never mutations.

``fields`` holds what the models share, ``pretrain`` the pretraining options, ``commands`` the
others; this package's namespace is the interface the rest of simclr-cli imports.
"""

from simclr_cli.config.commands import (
    EXPORT_FORMATS,
    GRAPH_FORMATS,
    DownloadConfig,
    ExportConfig,
    FeaturesConfig,
    InfoConfig,
    LinearEvalConfig,
    ReportConfig,
)
from simclr_cli.config.fields import (
    default_cache_dir,
    default_data_dir,
    default_workers,
    derived,
    flag_name,
)
from simclr_cli.config.finetune import FINETUNE_MAY_CHANGE, FinetuneConfig, PredictConfig
from simclr_cli.config.pretrain import (
    RESUME_LAUNCH_GROUP,
    RESUME_MAY_CHANGE,
    PretrainConfig,
    default_run_dir,
)

__all__ = [
    "EXPORT_FORMATS",
    "FINETUNE_MAY_CHANGE",
    "GRAPH_FORMATS",
    "RESUME_LAUNCH_GROUP",
    "RESUME_MAY_CHANGE",
    "DownloadConfig",
    "ExportConfig",
    "FeaturesConfig",
    "FinetuneConfig",
    "InfoConfig",
    "LinearEvalConfig",
    "PredictConfig",
    "PretrainConfig",
    "ReportConfig",
    "default_cache_dir",
    "default_data_dir",
    "default_run_dir",
    "default_workers",
    "derived",
    "flag_name",
]
