"""The learning-rate rules: base learning rates and their batch scaling, linear warmup and
cosine decay, and the default weight decay of each optimiser.

Pure arithmetic on plain numbers (no torch): the config computes its defaults with these rules,
and :class:`Schedule` gives the trainer the lr of every step.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020 (arXiv:2002.05709), section 2.3 and appendix B.1.
"""

from __future__ import annotations

import math
from dataclasses import dataclass

from simclr_cli.errors import UsageError

OPTIMIZERS = ("lars", "adam", "adamw", "sgd")
LR_SCALINGS = ("linear", "sqrt")

# Base learning rates: lr = base * B / 256 ("linear") or base * sqrt(B) ("sqrt").
# LARS values are the paper's (section 2.3, appendix B.1). SGD has no layer adaptation, so it
# gets the usual SGD-momentum value for contrastive ResNets; Adam/AdamW the common 3e-4 at
# B=256. For those, the sqrt base gives the same lr as linear at B=256 (sqrt(256) = 16).
BASE_LRS = {
    ("lars", "linear"): 0.3,
    ("lars", "sqrt"): 0.075,
    ("sgd", "linear"): 0.06,
    ("sgd", "sqrt"): 0.06 / 16,
    ("adam", "linear"): 3e-4,
    ("adam", "sqrt"): 3e-4 / 16,
    ("adamw", "linear"): 3e-4,
    ("adamw", "sqrt"): 3e-4 / 16,
}

# The default warmup: 10 epochs, but never more than this fraction of a run (10 epochs of the
# paper's 100-epoch runs are exactly at the cap). An explicit --warmup-epochs is not capped.
DEFAULT_WARMUP_EPOCHS = 10  # Chen et al. 2020, section 2.3
MAX_WARMUP_FRACTION = 0.1


# Weight decay per optimiser: 1e-6 is the SimCLR paper's default with LARS ("Default setting").
DEFAULT_WEIGHT_DECAY = {"lars": 1e-6, "adam": 1e-6, "adamw": 1e-4, "sgd": 1e-4}


def check_optimizer(optimizer: str) -> None:
    if optimizer not in OPTIMIZERS:
        raise UsageError("--optimizer", optimizer, f"choose one of {', '.join(OPTIMIZERS)}")


def check_scaling(rule: str) -> None:
    if rule not in LR_SCALINGS:
        raise UsageError("--lr-scaling", rule, "choose linear or sqrt")


def default_base_lr(optimizer: str, rule: str) -> float:
    """Return the base learning rate of ``optimizer`` under scaling ``rule`` (see ``BASE_LRS``)."""
    check_optimizer(optimizer)
    check_scaling(rule)
    return BASE_LRS[(optimizer, rule)]


def scaled_lr(base_lr: float, batch_size: int, rule: str) -> float:
    """Scale a base learning rate by the global batch size.

    Args:
        base_lr: learning rate at the reference batch size.
        batch_size: global batch size in pairs (all processes together).
        rule: ``"linear"`` (``base * B / 256``) or ``"sqrt"`` (``base * sqrt(B)``).

    Reference: Chen et al. 2020, section 2.3 (0.3 x B/256) and appendix B.1 (0.075 x sqrt(B)).
    """
    check_scaling(rule)
    if batch_size < 1:
        raise UsageError("--batch-size", batch_size, "use a positive integer")
    return base_lr * batch_size / 256 if rule == "linear" else base_lr * math.sqrt(batch_size)


def warmup_steps_for(warmup_epochs: float | None, steps_per_epoch: int, total_steps: int) -> int:
    """Number of warmup steps.

    ``None`` (the default): the paper's 10 epochs, but at most 10% of the run, so short runs
    do not spend most of their steps in warmup (10 epochs of a 100-epoch run are exactly at the
    cap). An explicit ``warmup_epochs`` is used as given (at most the whole run).
    """
    if warmup_epochs is None:
        wanted = round(DEFAULT_WARMUP_EPOCHS * steps_per_epoch)
        return max(0, min(wanted, math.floor(MAX_WARMUP_FRACTION * total_steps)))
    return max(0, min(round(warmup_epochs * steps_per_epoch), total_steps))


def warmup_cosine(step: int, total_steps: int, warmup_steps: int, base_lr: float) -> float:
    """Learning rate at ``step`` (0-based): linear warmup, then cosine decay to 0 without restarts.

    Warmup reaches ``base_lr`` at step ``warmup_steps - 1`` (step 0 already gets
    ``base_lr / warmup_steps``, so no step is wasted at lr 0); cosine then runs from ``base_lr``
    at ``warmup_steps`` to 0 at ``total_steps``. Steps past the end get 0.

    Reference: Chen et al. 2020, section 2.3 (10 warmup epochs, cosine decay without restarts).
    """
    if step < warmup_steps:
        return base_lr * (step + 1) / warmup_steps
    progress = min(1.0, (step - warmup_steps) / max(1, total_steps - warmup_steps))
    return base_lr * 0.5 * (1.0 + math.cos(math.pi * progress))


@dataclass(frozen=True)
class Schedule:
    """Per-step learning rate: linear warmup, then cosine decay to zero (paper appendix B.6)."""

    base_lr: float
    total_steps: int
    warmup_steps: int

    def __call__(self, step: int) -> float:
        """The learning rate of optimizer step ``step`` (0-based)."""
        return warmup_cosine(step, self.total_steps, self.warmup_steps, self.base_lr)


# -- fine-tuning on few labels ---------------------------------------------------------------

FINETUNE_OPTIMIZERS = ("sgd", "lars")
# SimCLR fine-tunes with Nesterov momentum at 0.05 x B/256 (appendix B.5); SimCLRv2 with LARS at
# 0.005 x sqrt(B) (its appendix: 0.16 at B = 1024). Neither warms up or decays weights.
FINETUNE_BASE_LRS = {"sgd": 0.05, "lars": 0.005}
# Epochs: 60 on 1% of the labels, 30 on 10% (appendix B.5); the switch sits between the two.
FINETUNE_EPOCHS_FEW, FINETUNE_EPOCHS_MORE, FINETUNE_FEW_SHARE = 60, 30, 0.05


# The batch when none is given: the paper's 4096 is a few steps per epoch of ImageNet's 1%; on
# small subsets a batch of 256 would be one step per epoch, so it is at most a quarter of them.
FINETUNE_BATCH, FINETUNE_MIN_STEPS = 256, 4


def finetune_batch_size(images: int, batch_size: int | None = None) -> int:
    """The fine-tuning batch for ``images`` training images: ``batch_size`` (at most
    ``images``), else 256 but at most ``images // 4`` (at least 2: batch norm in train mode),
    so an epoch takes at least four steps."""
    if batch_size is not None:
        return min(batch_size, images)
    return max(2, min(FINETUNE_BATCH, images // FINETUNE_MIN_STEPS))


def finetune_lr(optimizer: str, batch_size: int) -> float:
    """The fine-tuning lr of the paper for ``optimizer`` at a batch of ``batch_size`` images.

    References: Chen et al. 2020 (arXiv:2002.05709), appendix B.5; Chen et al. 2020b
    (arXiv:2006.10029), appendix (fine-tuning).
    """
    if optimizer not in FINETUNE_OPTIMIZERS:
        raise UsageError("--optimizer", optimizer, "choose sgd or lars")
    if optimizer == "sgd":
        return scaled_lr(FINETUNE_BASE_LRS["sgd"], batch_size, "linear")
    return FINETUNE_BASE_LRS["lars"] * math.sqrt(batch_size)


def finetune_epochs(label_share: float) -> int:
    """Fine-tuning epochs for a subset holding ``label_share`` of the training labels: 60 up to
    5% (the paper's 1% setting), else 30 (its 10% setting)."""
    return FINETUNE_EPOCHS_FEW if label_share <= FINETUNE_FEW_SHARE else FINETUNE_EPOCHS_MORE
