"""The thread count shared by the C and Numba CPU backends."""
from __future__ import annotations

import operator
import os

#: the C pool's limit (csrc/threads.c FL_MAX_THREADS): larger requests get this many
MAX_THREADS = 256

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
    """The count in force for the C kernels (the Numba ones use at most
    ``NUMBA_NUM_THREADS`` of it)."""
    return min(_count if _count is not None else _default(), MAX_THREADS)


def set(n: int | None) -> int:
    """Set the thread count for the CPU kernels; None or 0 restores the default
    (``OMP_NUM_THREADS``, else the CPUs this process may use).  Counts above
    MAX_THREADS give MAX_THREADS.  Checked before anything is stored."""
    global _count
    if n is not None:
        try:
            if isinstance(n, bool):
                raise TypeError
            n = operator.index(n)       # any integer type (np.int64 too), not 2.0
        except TypeError:
            raise ValueError(f"n: expected a thread count ≥ 1 (or 0/None for the default), "
                             f"got {n!r} ({type(n).__name__})") from None
        if n < 0:
            raise ValueError(f"n: expected a thread count ≥ 1 (or 0/None for the default), "
                             f"got {n}")
        n = min(n, MAX_THREADS)
    _count = n or None
    from .kernels import native
    if native.unavailable_reason() is None:
        native.set_num_threads(_count or 0)
    return get()
