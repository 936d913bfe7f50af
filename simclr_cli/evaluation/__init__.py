"""Using a trained encoder: device and precision for inference, the linear probe, metrics,
``simclr linear-eval`` and ``simclr features``.
"""
