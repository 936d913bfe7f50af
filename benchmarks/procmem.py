"""What the benchmark scripts share: a measurement in a fresh process, and that process's
memory figures (Linux)."""

from __future__ import annotations

import json
import subprocess
import sys


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


def run_fresh(script: str, *extra: str) -> dict:
    """Run ``script`` again with this process's arguments plus ``extra`` (e.g. ``flag name``), in
    a fresh process (malloc settings and peak memory are per process); return the JSON line it
    prints last."""
    command = [sys.executable, script, *sys.argv[1:], *extra]
    done = subprocess.run(command, stdout=subprocess.PIPE, text=True, check=True)
    return json.loads(done.stdout.strip().splitlines()[-1])
