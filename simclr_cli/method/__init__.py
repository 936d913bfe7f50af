"""The method of the paper, on a few screens: plain arguments in, tensors out.

* :mod:`.archs`: the encoder architectures and the stem rule (facts, no torch);
* :mod:`.model`: the encoder factory, the projection head ``g`` and :class:`SimCLR`;
* :mod:`.loss`: NT-Xent;
* :mod:`.augment` (with :mod:`.augment_ops`): the two views, per image and batched;
* :mod:`.preprocess`: the fixed transforms (RGB, uint8 crops, normalisation);
* :mod:`.optim`: LARS and the parameter groups; :mod:`.schedule`: the lr rules.

Nothing here reads the command line or imports pydantic: ``from simclr_cli.method import
SimCLR, nt_xent, LARS`` is the method as a library. The names are imported lazily.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual
Representations", ICML 2020 (arXiv:2002.05709).
"""

from simclr_cli import lazy_exports

_PUBLIC = {
    "SimCLR": "model",
    "ProjectionHead": "model",
    "build_encoder": "model",
    "build_simclr": "model",
    "model_spec": "model",
    "NTXentLoss": "loss",
    "nt_xent": "loss",
    "LARS": "optim",
    "build_optimizer": "optim",
    "param_groups": "optim",
    "Schedule": "schedule",
    "scaled_lr": "schedule",
    "warmup_cosine": "schedule",
    "SimCLRAugment": "augment",
    "BatchedSimCLRAugment": "augment",
    "TwoViews": "augment",
}

__all__ = sorted(_PUBLIC)

__getattr__ = lazy_exports(__name__, {name: f".{module}" for name, module in _PUBLIC.items()})
