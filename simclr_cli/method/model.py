"""Encoder factory, projection head and the SimCLR module.

The encoder ``f`` is a torchvision ResNet with its classifier removed, so ``h = f(x)`` is the
pooled representation. The projection head ``g`` maps ``h`` to ``z``, where the contrastive
loss is applied. Attribute names (``encoder``, ``projector``) and the v1 head layout match the
checkpoints published with Spijkervet/SimCLR, so those state dicts load by key.

Reference: Chen et al., "A Simple Framework for Contrastive Learning of Visual Representations",
ICML 2020 (arXiv:2002.05709), section 2.1 and appendix B.9.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import torch
import torchvision
from torch import nn

from simclr_cli.errors import CheckpointError, UsageError
from simclr_cli.method import archs
from simclr_cli.method.archs import ARCHS, CIFAR_STEM_MAX_SIZE, FEATURE_DIMS  # noqa: F401

STEMS = ("auto", *archs.STEMS)
HEADS = ("v1", "v1-bn", "v2")
# Linear layers of the batch-normed heads (the TF code's ``num_proj_layers``).
HEAD_DEPTHS = {"v1-bn": 2, "v2": 3}

SPEC_KEYS = (
    "arch",
    "stem",
    "head",
    "feature_dim",
    "hidden_dim",
    "projection_dim",
    "head_bias",
    "image_size",
    "mean",
    "std",
)


def resolve_stem(stem: str, image_size: int) -> str:
    """Resolve the ``--stem`` option to ``"cifar"`` or ``"imagenet"``.

    Args:
        stem: ``"auto"``, ``"cifar"`` or ``"imagenet"``.
        image_size: side length of the training images in pixels.

    Returns:
        ``"cifar"`` for ``auto`` and images of 64 px or less; ``"imagenet"`` for larger ones;
        an explicit stem unchanged.

    Raises:
        UsageError: for an unknown stem name.
    """
    if stem not in STEMS:
        raise UsageError("--stem", stem, f"choose one of {', '.join(STEMS)}")
    if stem != "auto":
        return stem
    return archs.auto_stem(image_size)


def _cifar_stem(resnet: torchvision.models.ResNet) -> None:
    """Replace the 7x7/2 conv and 3x3/2 max-pool with one 3x3/1 conv, in place.

    Reference: Chen et al. 2020, appendix B.9 ("we replace the first 7x7 Conv of stride 2 with
    3x3 Conv of stride 1, and also remove the first max pooling operation").
    """
    # Keeps 32x32 inputs at 32x32 into layer1 (the ImageNet stem would shrink them to 8x8).
    conv = nn.Conv2d(3, resnet.conv1.out_channels, kernel_size=3, stride=1, padding=1, bias=False)
    nn.init.kaiming_normal_(conv.weight, mode="fan_out", nonlinearity="relu")
    resnet.conv1 = conv
    resnet.maxpool = nn.Identity()


def build_encoder(
    arch: str, stem: str = "imagenet", zero_init_residual: bool = False
) -> tuple[nn.Module, int]:
    """Build a randomly initialised ResNet encoder without its classifier.

    Args:
        arch: one of :data:`ARCHS`.
        stem: ``"cifar"`` or ``"imagenet"`` (resolve ``"auto"`` with :func:`resolve_stem` first).
        zero_init_residual: start the last batch norm of each residual block at zero, as the
            SimCLR TF code does, so every block starts as the identity. The default, ``False``,
            is torchvision's initialisation: it is what a random-encoder baseline means, and in
            short runs it trains to better features (``benchmarks/RESULTS.md``, "Quality").

    Returns:
        ``(encoder, feature_dim)``; ``encoder(x)`` maps ``(B, 3, H, W)`` to ``(B, feature_dim)``.

    Raises:
        UsageError: for an unknown architecture or stem.
    """
    if arch not in ARCHS:
        raise UsageError("--arch", arch, f"choose one of {', '.join(ARCHS)}")
    if stem not in archs.STEMS:
        raise UsageError("--stem", stem, "choose cifar or imagenet")
    return _resnet_encoder(arch, stem, zero_init_residual)


def _resnet_encoder(arch: str, stem: str, zero_init_residual: bool) -> tuple[nn.Module, int]:
    """:func:`build_encoder` for an ``arch`` and ``stem`` already checked."""
    resnet = getattr(torchvision.models, arch)(weights=None, zero_init_residual=zero_init_residual)
    feature_dim = resnet.fc.in_features
    resnet.fc = nn.Identity()
    if stem == "cifar":
        _cifar_stem(resnet)
    return resnet, feature_dim


# One row per layer of a head: ("linear", in, out, bias), ("bn", dim, shift), ("relu",).
HeadLayer = tuple[Any, ...]


def head_layers(
    in_dim: int, hidden_dim: int, out_dim: int, version: str = "v1", bias: bool = True
) -> list[HeadLayer]:
    """The layers of a projection head, as plain data (the model and ``simclr export`` build
    their modules from it).

    ``v1`` is Linear-ReLU-Linear, as the paper's text and Spijkervet/SimCLR write it. ``v1-bn``
    and ``v2`` are the heads of the SimCLR TF code: every linear layer without bias and followed
    by batch norm, ReLU between them, and the last batch norm without a shift (``center=False``);
    ``v1-bn`` has the two layers of SimCLR (lightly's ``SimCLRProjectionHead`` is the same, with a
    trained last shift), ``v2`` the three of SimCLRv2.

    Args:
        in_dim: width of ``h``.
        hidden_dim: width of the hidden layer(s).
        out_dim: width of ``z`` (``--projection-dim``).
        version: one of :data:`HEADS`.
        bias: biases in the v1 linear layers (batch-normed layers never have them).

    References:
        v1: Chen et al. 2020 (arXiv:2002.05709), section 2.1 (projection head g).
        v1-bn, v2: google-research/simclr ``projection_head`` (``use_bn=True``); Chen et al.,
        "Big Self-Supervised Models are Strong Semi-Supervised Learners", NeurIPS 2020
        (arXiv:2006.10029), section 2.
    """
    if version not in HEADS:
        raise UsageError("--head", version, f"choose one of {', '.join(HEADS)}")
    for option, value in (("--hidden-dim", hidden_dim), ("--projection-dim", out_dim)):
        if value < 1:
            raise UsageError(option, value, "use a positive integer")
    if version == "v1":
        return [
            ("linear", in_dim, hidden_dim, bias),
            ("relu",),
            ("linear", hidden_dim, out_dim, bias),
        ]
    widths = [in_dim] + [hidden_dim] * (HEAD_DEPTHS[version] - 1) + [out_dim]
    layers: list[HeadLayer] = []
    for i, (a, b) in enumerate(zip(widths[:-1], widths[1:], strict=True)):
        last = i == len(widths) - 2
        layers += [("linear", a, b, False), ("bn", b, not last)]
        if not last:
            layers.append(("relu",))
    return layers


def build_layer(layer: HeadLayer) -> nn.Module:
    """The module of one :func:`head_layers` row."""
    kind = layer[0]
    if kind == "linear":
        return nn.Linear(layer[1], layer[2], bias=layer[3])
    if kind == "bn":
        norm = nn.BatchNorm1d(layer[1])
        if not layer[2]:
            norm.bias.requires_grad_(False)  # zero shift, not trained (center=False)
        return norm
    return nn.ReLU(inplace=True)


class ProjectionHead(nn.Sequential):
    """The projection head ``g`` that maps ``h`` to ``z``: the layers of :func:`head_layers`."""

    def __init__(
        self,
        in_dim: int,
        hidden_dim: int,
        out_dim: int,
        version: str = "v1",
        bias: bool = True,
    ) -> None:
        """Create the head.

        Args:
            in_dim, hidden_dim, out_dim, version, bias: see :func:`head_layers`.

        Raises:
            UsageError: for an unknown version or a non-positive width.
        """
        layers = head_layers(in_dim, hidden_dim, out_dim, version, bias)
        super().__init__(*(build_layer(layer) for layer in layers))


class SimCLR(nn.Module):
    """Encoder ``f`` plus projection head ``g``.

    Both views go in as ONE batch ``torch.cat([x_i, x_j])`` so that batch norm normalises over
    all 2N images, as in the paper's implementation.

    Reference: Chen et al. 2020 (arXiv:2002.05709), figure 2.
    """

    def __init__(
        self,
        encoder: nn.Module,
        feature_dim: int,
        projection_dim: int = 128,
        head: str = "v1",
        hidden_dim: int | None = None,
        head_bias: bool = True,
        mean: Sequence[float] | None = None,
        std: Sequence[float] | None = None,
    ) -> None:
        """Create the module.

        Args:
            encoder: maps ``(B, 3, H, W)`` to ``(B, feature_dim)``.
            feature_dim: width of ``h``.
            projection_dim: width of ``z``.
            head: one of :data:`HEADS`.
            hidden_dim: hidden width of the head; ``None`` means ``feature_dim`` (the paper).
            head_bias: biases in the v1 head (``False`` for Spijkervet/SimCLR checkpoints).
            mean, std: the per-channel input normalisation the encoder was trained with (None:
                inputs in [0, 1]); evaluation applies it to uint8 batches.
        """
        super().__init__()
        self.mean = None if mean is None else tuple(float(m) for m in mean)
        self.std = None if std is None else tuple(float(s) for s in std)
        self.feature_dim = feature_dim
        self.projection_dim = projection_dim
        self.encoder = encoder
        hidden = feature_dim if hidden_dim is None else hidden_dim
        self.projector = ProjectionHead(feature_dim, hidden, projection_dim, head, head_bias)

    def forward(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """Return ``(h, z)`` of shapes ``(B, feature_dim)``, ``(B, projection_dim)``.

        Args:
            x: ``(B, 3, H, W)`` images; pass both views as one batch.
        """
        h = self.encoder(x)
        return h, self.projector(h)


def model_spec(
    arch: str,
    stem: str,
    head: str = "v1",
    projection_dim: int = 128,
    hidden_dim: int | None = None,
    head_bias: bool = True,
    image_size: int | None = None,
    mean: list[float] | None = None,
    std: list[float] | None = None,
) -> dict[str, Any]:
    """Describe a SimCLR model with primitives only, for checkpoints and :func:`build_simclr`.

    Args:
        arch: one of :data:`ARCHS`.
        stem: ``"cifar"``, ``"imagenet"``, or ``"auto"`` (then ``image_size`` is required).
        head: one of :data:`HEADS`.
        projection_dim: width of ``z``.
        hidden_dim: hidden width of the head; ``None`` means the feature width.
        head_bias: biases in the v1 head.
        image_size: training image side length, recorded for evaluation transforms.
        mean: per-channel normalisation mean used in training, or ``None``.
        std: per-channel normalisation std used in training, or ``None``.

    Returns:
        A dict with the keys of :data:`SPEC_KEYS`; ``hidden_dim`` is resolved to an int.

    Raises:
        UsageError: for an unknown arch, stem or head, or ``stem="auto"`` without an image size.
    """
    if arch not in ARCHS:
        raise UsageError("--arch", arch, f"choose one of {', '.join(ARCHS)}")
    if head not in HEADS:
        raise UsageError("--head", head, f"choose one of {', '.join(HEADS)}")
    if stem == "auto" and image_size is None:
        raise UsageError("--stem", stem, "give --image-size or choose cifar or imagenet")
    feature_dim = FEATURE_DIMS[arch]
    return {
        "arch": arch,
        "stem": resolve_stem(stem, image_size or 0),
        "head": head,
        "feature_dim": feature_dim,
        "hidden_dim": feature_dim if hidden_dim is None else int(hidden_dim),
        "projection_dim": int(projection_dim),
        "head_bias": bool(head_bias),
        "image_size": image_size,
        "mean": None if mean is None else [float(m) for m in mean],
        "std": None if std is None else [float(s) for s in std],
    }


def build_simclr(spec: dict[str, Any], zero_init_residual: bool = False) -> SimCLR:
    """Build a randomly initialised :class:`SimCLR` from a :func:`model_spec` dict.

    Args:
        spec: a dict as returned by :func:`model_spec` (e.g. from a checkpoint).
        zero_init_residual: see :func:`build_encoder`.

    Returns:
        The model, in training mode, on the CPU.

    Raises:
        CheckpointError: when the spec lacks keys or names an unknown arch, stem or head.
    """
    missing = [key for key in ("arch", "stem", "head", "projection_dim") if key not in spec]
    if missing:
        raise CheckpointError(
            f"model description lacks {', '.join(missing)}; use a checkpoint written by simclr-cli"
        )
    bad = [
        f"{key}={spec[key]!r}"
        for key, allowed in (("arch", ARCHS), ("stem", archs.STEMS), ("head", HEADS))
        if spec[key] not in allowed
    ]
    if bad:
        raise CheckpointError(
            f"model description has unsupported {', '.join(bad)}; upgrade simclr-cli or re-export"
        )
    encoder, feature_dim = _resnet_encoder(spec["arch"], spec["stem"], zero_init_residual)
    if spec.get("feature_dim", feature_dim) != feature_dim:
        raise CheckpointError(
            f"model description says feature_dim={spec['feature_dim']} but {spec['arch']} has "
            f"{feature_dim}; the checkpoint is inconsistent, re-export it"
        )
    return SimCLR(
        encoder,
        feature_dim,
        projection_dim=int(spec["projection_dim"]),
        head=spec["head"],
        hidden_dim=spec.get("hidden_dim"),
        head_bias=bool(spec.get("head_bias", True)),
        mean=spec.get("mean"),
        std=spec.get("std"),
    )
