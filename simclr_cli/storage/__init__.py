"""Files in and out: the checkpoint format, release conversion, the registry of published
weights, the download cache, atomic writes, locks and ``simclr export``.
"""
