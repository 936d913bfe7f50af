"""Device names and precision rules: what ``--device`` and ``--precision`` resolve to.

A leaf module that every layer may use: the config validates options with it, pretraining and
evaluation resolve their device and autocast dtype with it. torch is imported only inside the
functions that ask the hardware, so that ``simclr --help`` does not load it.
"""

from __future__ import annotations


def cuda_available() -> bool:
    """Whether a CUDA device is visible to this process."""
    import torch

    return torch.cuda.is_available()


def resolve_device_name(device: str, cuda_available: bool) -> str:
    """The device a ``--device`` request names.

    Args:
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        cuda_available: whether a GPU is visible (``torch.cuda.is_available()``).

    Returns:
        ``"cuda"`` or ``"cpu"`` for ``"auto"``; any other request as given (the config refuses
        ``"cuda"`` without a GPU, :func:`resolve_device` too).
    """
    if device == "auto":
        return "cuda" if cuda_available else "cpu"
    return device


def resolve_precision(precision: str, device: str) -> str:
    """The precision a ``--precision`` request means on ``device`` (``"cuda"``, ``"cpu"``).

    ``"auto"`` is bf16 on a GPU with native bf16 arithmetic (compute capability 8.0 and
    later), else fp16 on a GPU (with a grad scaler in training), and fp32 on the CPU; an
    explicit request as given. A GPU that only emulates bf16 (V100, T4: ``is_bf16_supported()``
    counts emulation) would leave cuDNN's fast kernels for it.
    """
    if precision != "auto":
        return precision
    if device == "cuda":
        import torch  # here, not at the top: the config validates with this module

        native = torch.cuda.is_bf16_supported(including_emulation=False)
        return "bf16" if native else "fp16"
    return "fp32"
