"""Memory figures of the running process, shared by the benchmark scripts (Linux)."""

from __future__ import annotations


def proc_status(field: str) -> int:
    """Bytes of a ``/proc/self/status`` field. ``VmHWM`` is this process's own peak resident
    size, unlike ``ru_maxrss``, which a spawned process inherits from its parent."""
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) * 1024
    raise RuntimeError(f"/proc/self/status has no {field}; CPU memory needs Linux")


def peak_rss_gib() -> float:
    """This process's peak resident size (``VmHWM``), GiB."""
    return proc_status("VmHWM") / 2**30
