"""The kNN monitor: weighted kNN top-1 of ``h`` on labelled subsets, during pretraining.

A named dataset is monitored with a bank from its train split and queries from its test split.
A folder of class subfolders has no test split: a fixed, class-stratified part of the training
images (:data:`KNN_HELD_OUT`, seeded by ``--seed``) is held out of the bank as the queries. The
loss never sees a label, so pretraining still uses every image. A folder without classes has
no labels to monitor, and the config refuses ``--knn-every`` there.

Reference: Wu et al. 2018 (arXiv:1805.01978), section 3.4, as the SimCLR/MoCo monitors.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from simclr_cli.config import PretrainConfig
from simclr_cli.data.datasets import (
    build_dataset,
    limit_dataset,
    train_test_split,
    with_transform,
)
from simclr_cli.evaluation import inference, metrics
from simclr_cli.method.model import SimCLR
from simclr_cli.method.preprocess import to_uint8_transform

# Labelled subsets the kNN monitor embeds: a bank from the train split, queries from the test split.
KNN_BANK_IMAGES = 10_000
KNN_QUERY_IMAGES = 2_000
# The share of each class of a folder held out of the bank as the monitor's queries.
KNN_HELD_OUT = 0.2


def monitor_description(cfg: PretrainConfig, bank: Dataset, queries: Dataset) -> str:
    """Which images the monitor uses, for the run's summary."""
    sizes = f"{len(queries)} queries, {len(bank)} bank images"  # type: ignore[arg-type]
    if cfg.dataset_kind == "folder":
        return (
            f"{sizes}: {KNN_HELD_OUT:.0%} of each class held out of the bank as queries (seed "
            f"{cfg.seed}); pretraining uses every image, without labels"
        )
    return f"{sizes}: queries from the test split, the bank from the train split"


def knn_datasets(cfg: PretrainConfig, images: Dataset | None = None) -> tuple[Dataset, Dataset]:
    """Labelled bank and queries for the kNN monitor, as uint8 crops (the model normalises them
    in :func:`~simclr_cli.evaluation.inference.encode`).

    Args:
        cfg: the run's options.
        images: the run's training images; a folder's bank and queries are split from them.
    """
    transform = to_uint8_transform(cfg.resolved_image_size)
    if cfg.dataset_kind == "folder":
        assert images is not None, "a folder's monitor splits the training images"
        bank, queries = train_test_split(
            with_transform(images, transform), KNN_HELD_OUT, cfg.seed, option="--knn-every"
        )
        return (
            limit_dataset(bank, KNN_BANK_IMAGES, cfg.seed),
            limit_dataset(queries, KNN_QUERY_IMAGES, cfg.seed),
        )
    # A run limited to N training images gets a monitor of at most N bank and N query images.
    bank_size = min(KNN_BANK_IMAGES, cfg.limit or KNN_BANK_IMAGES)
    query_size = min(KNN_QUERY_IMAGES, bank_size)
    options = {"transform": transform, "seed": cfg.seed}
    bank = build_dataset(cfg.dataset, "train", cfg.data_dir, limit=bank_size, **options)
    queries = build_dataset(cfg.dataset, "test", cfg.data_dir, limit=query_size, **options)
    return bank, queries


def knn_eval(
    net: SimCLR, bank: Dataset, queries: Dataset, cfg: PretrainConfig, device: torch.device
) -> tuple[float, int]:
    """Weighted kNN top-1 accuracy of the encoder's ``h`` and the k it used (``--knn-k``, else
    chosen from the bank by :func:`~simclr_cli.evaluation.metrics.knn_k_for`; temperature 0.1).

    Reference: Wu et al. 2018 (arXiv:1805.01978), section 3.4, as the SimCLR/MoCo monitors.
    """
    was_training = net.training
    net.eval()
    try:
        options = (cfg.batch_size, device, "encoder", cfg.workers, cfg.resolved_precision)
        bank_h, bank_y = inference.extract_features(net, bank, *options)
        query_h, query_y = inference.extract_features(net, queries, *options)
    finally:
        net.train(was_training)
    k = metrics.knn_k_for(bank_y, cfg.knn_k)
    accuracy = metrics.knn_accuracy(bank_h, bank_y, query_h, query_y, k, metrics.KNN_TEMPERATURE)
    return accuracy, k
