"""Process-wide runtime settings: torch threads and project paths.

Oversubscribing torch threads on a busy 2-core machine was measured 9x slower, so the
thread count follows the cores this process may actually use.
"""

from __future__ import annotations

import logging
import os
from pathlib import Path

logger = logging.getLogger("maskshare")

PROJECT_ROOT = Path(__file__).resolve().parents[2]


def available_cores() -> int:
    """Cores this process may run on (respects affinity masks and cgroup-style limits)."""
    try:
        return max(1, len(os.sched_getaffinity(0)))
    except AttributeError:  # pragma: no cover - non-Linux
        return max(1, os.cpu_count() or 1)


def thread_count(n: int | None = None) -> int:
    """`n`, else `$MASKSHARE_THREADS`, else the available cores (at least 1)."""
    if n is None:
        env = os.environ.get("MASKSHARE_THREADS")
        n = int(env) if env else available_cores()
    return max(1, int(n))


def configure_threads(n: int | None = None) -> int:
    """Set torch's intra-op threads to `n`, `$MASKSHARE_THREADS`, or the available cores."""
    import torch

    n = thread_count(n)
    if torch.get_num_threads() != n:
        torch.set_num_threads(n)
    return n


def data_dir() -> Path:
    """Tracked data (dataset specs, source tables, shipped SAEs)."""
    return Path(os.environ.get("MASKSHARE_DATA", PROJECT_ROOT / "data"))


def cache_dir() -> Path:
    """Ignored caches (converted model weights, built datasets, activations)."""
    d = Path(os.environ.get("MASKSHARE_CACHE", data_dir() / "cache"))
    d.mkdir(parents=True, exist_ok=True)
    return d
