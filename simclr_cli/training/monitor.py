"""The kNN monitor: weighted kNN top-1 of ``h`` on labelled subsets, during pretraining.

Reference: Wu et al. 2018 (arXiv:1805.01978), section 3.4, as the SimCLR/MoCo monitors.
"""

from __future__ import annotations

import torch
from torch.utils.data import Dataset

from simclr_cli.config import PretrainConfig
from simclr_cli.data.datasets import build_dataset
from simclr_cli.evaluation import inference, metrics
from simclr_cli.method.model import SimCLR
from simclr_cli.method.preprocess import to_uint8_transform

# Labelled subsets the kNN monitor embeds: a bank from the train split, queries from the test split.
KNN_BANK_IMAGES = 10_000
KNN_QUERY_IMAGES = 2_000
# Datasets with a labelled train and test split (image folders have no test split).
LABELLED_KINDS = ("cifar10", "cifar100", "stl10", "shapes")


def knn_datasets(cfg: PretrainConfig) -> tuple[Dataset, Dataset]:
    """Labelled bank (train split) and queries (test split) for the kNN monitor, as uint8 crops
    (the model normalises them in :func:`~simclr_cli.evaluation.inference.encode`)."""
    transform = to_uint8_transform(cfg.resolved_image_size)
    # A run limited to N training images gets a monitor of at most N bank and N query images.
    bank_size = min(KNN_BANK_IMAGES, cfg.limit or KNN_BANK_IMAGES)
    query_size = min(KNN_QUERY_IMAGES, bank_size)
    bank = build_dataset(cfg.dataset, "train", cfg.data_dir, transform, limit=bank_size)
    queries = build_dataset(cfg.dataset, "test", cfg.data_dir, transform, limit=query_size)
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
