"""Architecture facts, the one source: names, block layouts, feature widths, the stem rule.

Config validation, the model factory, the release-file converter and the release registry all
read these; nothing here imports torch or the rest of the package.
"""

from __future__ import annotations

# torchvision ResNets: name -> (residual block type, blocks per stage).
BLOCKS: dict[str, tuple[str, tuple[int, int, int, int]]] = {
    "resnet18": ("basic", (2, 2, 2, 2)),
    "resnet34": ("basic", (3, 4, 6, 3)),
    "resnet50": ("bottleneck", (3, 4, 6, 3)),
    "resnet101": ("bottleneck", (3, 4, 23, 3)),
    "resnet152": ("bottleneck", (3, 8, 36, 3)),
    "wide_resnet50_2": ("bottleneck", (3, 4, 6, 3)),  # ResNet-50 with twice the inner width
}
ARCHS = tuple(BLOCKS)
STEMS = ("cifar", "imagenet")
# Width of the pooled representation h: 512 after BasicBlocks, 2048 after Bottlenecks.
BLOCK_FEATURE_DIMS = {"basic": 512, "bottleneck": 2048}
FEATURE_DIMS = {arch: BLOCK_FEATURE_DIMS[block] for arch, (block, _) in BLOCKS.items()}
# Images at or below this side get the CIFAR stem (3x3 conv, no max-pool; paper appendix B.9)
# when the stem is "auto"; the ImageNet stem's stride 4 would leave them 8 px wide at layer1.
CIFAR_STEM_MAX_SIZE = 64
# The ImageNet stem and four stride-2 stages need at least this many pixels.
IMAGENET_STEM_MIN_SIZE = 32


def auto_stem(image_size: int) -> str:
    """The stem ``--stem auto`` means for images of ``image_size`` pixels."""
    return "cifar" if image_size <= CIFAR_STEM_MAX_SIZE else "imagenet"


def arch_of_blocks(block: str, blocks: tuple[int, ...], wide: bool = False) -> str | None:
    """The torchvision name of a ResNet with these blocks per stage, or None if none has them.

    Args:
        block: ``"basic"`` or ``"bottleneck"``.
        blocks: blocks per stage, e.g. ``(2, 2, 2, 2)``.
        wide: a bottleneck ResNet-50 layout with doubled inner width (Wide ResNet-50-2).
    """
    for arch, (kind, layout) in BLOCKS.items():
        if kind == block and layout == blocks and arch.startswith("wide") == wide:
            return arch
    return None
