"""The data of ``simclr finetune``: the labelled splits, the class-balanced subset (drawn, read
from ``--subset`` or, on a resume, from the run's ``subset.txt``), the held-out part, and the
fine-tuning recipe resolved for that subset."""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from torch.utils.data import Dataset

from simclr_cli.config import FinetuneConfig
from simclr_cli.console import phase
from simclr_cli.errors import DatasetError, plural
from simclr_cli.evaluation import subset as subsets
from simclr_cli.evaluation.inference import class_names, report_skipped
from simclr_cli.evaluation.tuning import Recipe
from simclr_cli.method.preprocess import to_uint8_transform
from simclr_cli.method.schedule import finetune_batch_size, finetune_epochs, finetune_lr


@dataclass
class LabelledData:
    """The splits of a fine-tune and which training images carry the labels it uses.

    ``subset`` indexes ``train``; ``fit`` is the part the classifiers train on and ``val`` the
    part held out with ``--val-split`` (empty without).
    """

    train: Dataset
    test: Dataset
    name: str
    classes: list[str]
    labels: list[int]
    keys: list[str]
    subset: list[int]
    fit: list[int]
    val: list[int]

    @property
    def labelled(self) -> int:
        """Labelled images in the training split."""
        return sum(label >= 0 for label in self.labels)


def finetune_splits(cfg: FinetuneConfig, size: int) -> tuple[Dataset, Dataset]:
    """The (train, test) splits as uint8 crops of ``size``: a named dataset's own splits,
    ``--train-dir``/``--test-dir``, or one folder split by ``--test-split`` (stratified, seed 0:
    the same test images whatever ``--seed``)."""
    from simclr_cli.data import datasets as data

    transform = to_uint8_transform(size)
    if cfg.dataset_kind != "folder":
        return (
            data.build_dataset(cfg.dataset, "train", cfg.data_dir, transform, image_size=size),
            data.build_dataset(cfg.dataset, "test", cfg.data_dir, transform, image_size=size),
        )
    train = data.ImageFolderDataset(Path(cfg.train_dir or cfg.dataset).expanduser(), transform)
    if cfg.test_dir is None:
        return data.train_test_split(train, cfg.resolved_test_split, seed=0, option="--test-split")
    test = data.ImageFolderDataset(Path(cfg.test_dir).expanduser(), transform)
    if test.classes != train.classes:
        raise DatasetError(
            f"class subfolders of {cfg.test_dir} ({len(test.classes)}) differ from those of the "
            f"training folder ({len(train.classes)}); use the same class names in both"
        )
    return train, test


def load_labelled(cfg: FinetuneConfig, size: int, saved_subset: Path | None) -> LabelledData:
    """The splits and the labelled subset: drawn, read from ``--subset``, or (resuming) read
    from the run's own ``subset.txt``; then the held-out part with ``--val-split``.

    Raises:
        DatasetError: unlabelled images, a subset file that names other images.
        UsageError: a fraction or count the training split cannot give.
    """
    from simclr_cli.data.datasets import labels_of

    name = str(cfg.dataset or cfg.train_dir)
    phase(f"loading data ({name})")
    train, test = finetune_splits(cfg, size)
    report_skipped(train, test)
    classes = class_names(train)
    labels, test_labels = labels_of(train), labels_of(test)
    if not classes or min(labels + test_labels) < 0:
        raise DatasetError(
            f"{name} has unlabelled images; fine-tuning needs labels: put each class in its own "
            "subfolder"
        )
    keys = subsets.image_keys(train)
    source = saved_subset or cfg.subset
    if source is not None:
        chosen = subsets.read_subset(
            Path(source).expanduser(), keys, labels, classes, f"{name} (train)"
        )
    else:
        chosen = subsets.draw_subset(
            labels, cfg.labels_per_class, cfg.label_fraction, cfg.seed, classes
        )
    fit, val = chosen, []
    if cfg.val_split is not None:
        fit, val = subsets.hold_out(chosen, labels, cfg.val_split, cfg.seed)
    return LabelledData(train, test, name, classes, labels, keys, chosen, fit, val)


def build_recipe(cfg: FinetuneConfig, data: LabelledData, size: int) -> Recipe:
    """The paper's recipe for this subset: the batch is at most the images trained on (by
    default 256, at most a quarter of them: :func:`~simclr_cli.method.schedule.
    finetune_batch_size`), the lr follows the optimiser's rule at that batch
    (:func:`~simclr_cli.method.schedule.finetune_lr`) and the epochs the share of the labels
    (:func:`~simclr_cli.method.schedule.finetune_epochs`).

    Raises:
        DatasetError: fewer than two images to train on (batch norm needs two).
    """
    images = len(data.fit)
    if images < 2:
        raise DatasetError(
            f"{plural(images, 'labelled image')} to train on; batch norm in train mode needs "
            "two: use more labels (--labels-per-class, --label-fraction) or a smaller --val-split"
        )
    batch = finetune_batch_size(images, cfg.batch_size)
    return Recipe(
        epochs=cfg.epochs or finetune_epochs(len(data.subset) / data.labelled),
        batch_size=batch,
        steps_per_epoch=images // batch,
        optimizer=cfg.optimizer,
        lr=cfg.lr if cfg.lr is not None else finetune_lr(cfg.optimizer, batch),
        momentum=cfg.momentum,
        weight_decay=cfg.weight_decay,
        crop_scale=tuple(cfg.crop_scale),  # type: ignore[arg-type]
        flip=cfg.flip,
        image_size=size,
        precision=cfg.resolved_precision,
        seed=cfg.seed,
    )
