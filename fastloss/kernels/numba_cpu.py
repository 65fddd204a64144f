"""backend="numba": ``@njit(parallel=True)`` kernels.

One loop skeleton per loop shape; each loss contributes its scalar function
from :mod:`._math`.  A kernel is compiled on first use of its loss (lazily,
once, under a lock) and kept for the process.  Sums are taken per fixed block
of ``BLOCK`` elements and the block sums added in order, so results do not
depend on the thread count.

Numba's OpenMP threading layer kills a process forked after it started
(GNU OpenMP is not fork-safe), so in such a child the same skeleton runs
compiled without ``parallel=True``: DataLoader-style workers keep working,
on one thread each.
"""
from __future__ import annotations

import os
import threading

import numpy as np

BLOCK = 16384   # elements per block: the unit of work and of summation

_lock = threading.Lock()
_kernels: dict[tuple[str, bool], object] = {}
_scalar = None
_threads_started = False   # the parallel runtime ran in this process
_forked_child = False      # ... in the parent of this process: run serially


def _after_fork_in_child():
    global _forked_child
    _forked_child = _forked_child or _threads_started


os.register_at_fork(after_in_child=_after_fork_in_child)


def unavailable_reason():
    try:
        import numba  # noqa: F401
    except ImportError as exc:
        return f"numba is not installed ({exc})"
    return None


def _elementwise_kernel(fn, parallel):
    import numba

    @numba.njit(parallel=parallel, nogil=True)
    def kernel(x, y, w, a, has_w, has_a, p0, p1, out, grad, want_out, want_grad, grad_scale,
               partials):
        n = x.size
        for b in numba.prange(partials.size):
            start = b * BLOCK
            stop = min(start + BLOCK, n)
            s0 = 0.0
            s1 = 0.0   # two lanes: a shorter dependency chain, same order every run
            for i in range(start, stop):
                ai = np.float64(a[i]) if has_a else p0
                value, deriv = fn(np.float64(x[i]), np.float64(y[i]), ai, p0, p1)
                if has_w:
                    wi = np.float64(w[i])
                    value *= wi
                    deriv *= wi
                if (i - start) & 1:
                    s1 += value
                else:
                    s0 += value
                if want_out:
                    out[i] = value
                if want_grad:
                    grad[i] = deriv * grad_scale
            partials[b] = s0 + s1
    return kernel


def _kernel(loss: str, parallel: bool):
    global _scalar
    key = (loss, parallel)
    kernel = _kernels.get(key)
    if kernel is None:
        with _lock:
            kernel = _kernels.get(key)
            if kernel is None:
                import numba

                from . import _math
                if _scalar is None:
                    _scalar = _math.compile_for(numba.njit(inline="always"))
                kernel = _kernels[key] = _elementwise_kernel(_scalar[loss], parallel)
    return kernel


def _apply_thread_count():
    import numba

    from .. import _threads
    numba.set_num_threads(max(1, min(_threads.get(), numba.config.NUMBA_NUM_THREADS)))


def elementwise(call):
    x = call.input
    n = x.size
    dtype = x.dtype
    dummy = np.zeros(1, dtype)
    out = np.empty(n, dtype) if call.want_out else dummy
    grad = np.empty(n, dtype) if call.want_grad else dummy
    partials = np.zeros((n + BLOCK - 1) // BLOCK, np.float64)
    global _threads_started
    parallel = not _forked_child
    kernel = _kernel(call.loss, parallel)
    if parallel:
        _apply_thread_count()
        _threads_started = True
    kernel(x, call.target,
           call.weight if call.weight is not None else dummy,
           call.param if call.param is not None else dummy,
           call.weight is not None, call.param is not None, call.p0, call.p1,
           out, grad, call.want_out, call.want_grad, call.grad_scale, partials)
    total = float(partials.sum())
    return (total * call.total_scale, out if call.want_out else None,
            grad if call.want_grad else None)
