"""Host memory: keep freed tensor memory in the process instead of handing it back every step.

A training step on the CPU allocates and frees gigabytes of activations. glibc's malloc serves
each buffer above its mmap threshold (at most 32 MiB) with a fresh ``mmap`` and unmaps it on
``free``, so every step faults its whole working set back in and the kernel zeroes every page
again. For ResNet-18 at 32 px, 512 images per step on 2 cores, that is about 1.4 million page
faults and 5 s of system time per step (``benchmarks/RESULTS.md``). With mmap off and trimming
off, freed buffers stay on malloc's heap and the next step reuses them: no faults, no zeroing.

The cost is that the process does not return memory to the system until it exits: its resident
size stays near its peak. A user who wants glibc's behaviour back sets any ``MALLOC_*_`` variable
or a ``glibc.malloc`` tunable (``MALLOC_MMAP_MAX_=65536`` is glibc's default); simclr-cli then
leaves malloc alone.
"""

from __future__ import annotations

import ctypes
import os
import sys
from collections.abc import Mapping

# mallopt(3) parameter numbers, from glibc's <malloc.h>.
M_TRIM_THRESHOLD = -1
M_MMAP_MAX = -4
# The largest value mallopt takes (an int): never trim the heap's top.
NO_TRIM = 2**31 - 1

_applied = False


def user_tuned_malloc(environ: Mapping[str, str]) -> bool:
    """Whether the environment already configures glibc malloc (then simclr-cli does not)."""
    if any(name.startswith("MALLOC_") and name.endswith("_") for name in environ):
        return True
    return "glibc.malloc." in environ.get("GLIBC_TUNABLES", "")


def _glibc() -> ctypes.CDLL | None:
    """This process's C library when it is glibc on Linux, else None."""
    if not sys.platform.startswith("linux"):
        return None
    try:
        libc = ctypes.CDLL(None)
        libc.gnu_get_libc_version  # noqa: B018 - only glibc has it (musl's mallopt is a no-op)
    except (OSError, AttributeError):
        return None
    return libc


def policy(environ: Mapping[str, str] | None = None) -> str:
    """What CPU runs of simclr-cli do with malloc here, in words (``simclr info`` shows it)."""
    if _glibc() is None:
        return "system default (not glibc)"
    if user_tuned_malloc(os.environ if environ is None else environ):
        return "as the environment sets it (MALLOC_*_, GLIBC_TUNABLES)"
    return "keeps freed memory in CPU runs (glibc)"


def configure_for(device_type: str) -> bool:
    """Keep freed memory when this process computes on the CPU (see the module docstring).

    GPU runs keep glibc's behaviour: their large buffers are on the GPU, so there is nothing
    to gain and no reason to hold host memory.

    Returns:
        True when :func:`keep_freed_memory` is in effect.
    """
    return device_type == "cpu" and keep_freed_memory()


def keep_freed_memory(environ: Mapping[str, str] | None = None) -> bool:
    """Tell glibc malloc never to mmap large blocks and never to trim its heap.

    Idempotent and process-wide (it is inherited by forked DataLoader workers). A no-op where
    malloc is not glibc's (macOS, Windows, musl) or where the user configured malloc.

    Args:
        environ: the environment to consult (default ``os.environ``).

    Returns:
        True when the settings are in effect in this process.
    """
    global _applied
    if _applied:
        return True
    libc = _glibc()
    if libc is None or user_tuned_malloc(os.environ if environ is None else environ):
        return False
    # Both are needed: with trimming on, freeing the heap's top would still return its pages.
    _applied = bool(libc.mallopt(M_MMAP_MAX, 0)) and bool(libc.mallopt(M_TRIM_THRESHOLD, NO_TRIM))
    return _applied
