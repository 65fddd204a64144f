"""The thread count shared by the C and Numba CPU backends."""
from __future__ import annotations

import os

_count: int | None = None


def _default() -> int:
    env = os.environ.get("OMP_NUM_THREADS", "").split(",")[0].strip()
    if env.isdigit() and int(env) > 0:
        return int(env)
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def get() -> int:
    return _count if _count is not None else _default()


def set(n: int | None) -> int:
    """Set the thread count for the CPU kernels; None or 0 restores the default
    (``OMP_NUM_THREADS``, else the CPUs this process may use)."""
    global _count
    if n is not None and (isinstance(n, bool) or not isinstance(n, int) or n < 0):
        raise ValueError(f"n: expected a thread count ≥ 1 (or 0/None for the default), got {n!r}")
    _count = n or None
    from .kernels import native
    if native.unavailable_reason() is None:
        native.set_num_threads(_count or 0)
    return get()
