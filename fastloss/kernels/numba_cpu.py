"""backend="numba": ``@njit(parallel=True)`` kernels.

One loop skeleton per loop shape; each loss contributes its scalar function
from :mod:`._math`.  A kernel is compiled on first use of its loss (lazily,
once, under a lock) and kept for the process.  Sums are taken per fixed block
of ``BLOCK`` elements and the block sums added in order, so results do not
depend on the thread count.

The inner loops are written for LLVM's loop vectoriser: the transcendental
functions come from :mod:`._numba_vmath` (branch-free polynomials instead of
libm calls), the error model is NumPy's (no ZeroDivisionError branch), the
flags that change the hot loop are compile-time constants (one kernel per loss
and variant), and the block sum uses a fixed set of float64 lanes instead of
one serial accumulator (which would need reassociation to vectorise).

Numba's OpenMP threading layer kills a process forked after it started
(GNU OpenMP is not fork-safe), so in such a child the same skeleton runs
compiled without ``parallel=True``: DataLoader-style workers keep working,
on one thread each.
"""
from __future__ import annotations

import os

import numpy as np

from . import BuildOnce

BLOCK = 16384   # elements per block: the unit of work and of summation
CHUNK = 1024    # elements per inner pass: the scratch buffers stay in L1
LANES = 8       # float64 accumulators per block, folded in a fixed order

_built = BuildOnce()
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



def _elementwise_kernel(fn, parallel, want_grad, has_a):
    """The loop for one loss and one (want_grad, has_a) variant: those two decide
    what the vectorised inner loop computes, so they are compile-time constants
    here; the cheap flags (weights, storing the values) are tested once per chunk.

    Per chunk of a block: (1) the vectorised pass computes value and derivative
    into float64 scratch buffers; (2) weights, stores and the gradient scale in
    plain copy loops; (3) the values are added into LANES accumulators, buffer
    position j into lane j % LANES (the tail padded with zeros), the lanes
    folded pairwise at the end of the block.  The order depends only on the
    block, never on the threads."""
    import numba

    # The block's loops live in a function of their own: compiled outside the
    # parfor machinery, they see want_grad / has_a as constants and vectorise
    # (inside a prange body the same loops stay scalar).
    @numba.njit(nogil=True, error_model="numpy")
    def block(x, y, w, a, has_w, p0, p1, out, grad, want_out, grad_scale, start, stop):
        vbuf = np.empty(CHUNK, np.float64)
        gbuf = np.empty(CHUNK, np.float64)
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        for c0 in range(start, stop, CHUNK):
            m = min(CHUNK, stop - c0)
            xc = x[c0:c0 + m]
            yc = y[c0:c0 + m]
            if has_a:
                ac = a[c0:c0 + m]
                for j in range(m):
                    value, deriv = fn(np.float64(xc[j]), np.float64(yc[j]),
                                      np.float64(ac[j]), p0, p1)
                    vbuf[j] = value
                    if want_grad:
                        gbuf[j] = deriv
            else:
                for j in range(m):
                    value, deriv = fn(np.float64(xc[j]), np.float64(yc[j]), p0, p0, p1)
                    vbuf[j] = value
                    if want_grad:
                        gbuf[j] = deriv
            if has_w:
                wc = w[c0:c0 + m]
                for j in range(m):
                    vbuf[j] *= np.float64(wc[j])
                if want_grad:
                    for j in range(m):
                        gbuf[j] *= np.float64(wc[j])
            if want_out:
                oc = out[c0:c0 + m]
                for j in range(m):
                    oc[j] = vbuf[j]
            if want_grad:
                gc = grad[c0:c0 + m]
                for j in range(m):
                    gc[j] = gbuf[j] * grad_scale
            mr = (m + LANES - 1) // LANES * LANES
            for j in range(m, mr):
                vbuf[j] = 0.0
            for j in range(0, mr, LANES):
                s0 += vbuf[j]
                s1 += vbuf[j + 1]
                s2 += vbuf[j + 2]
                s3 += vbuf[j + 3]
                s4 += vbuf[j + 4]
                s5 += vbuf[j + 5]
                s6 += vbuf[j + 6]
                s7 += vbuf[j + 7]
        return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))

    @numba.njit(parallel=parallel, nogil=True)
    def kernel(x, y, w, a, has_w, p0, p1, out, grad, want_out, grad_scale, partials):
        n = x.size
        for b in numba.prange(partials.size):
            start = b * BLOCK
            partials[b] = block(x, y, w, a, has_w, p0, p1, out, grad, want_out, grad_scale,
                                start, min(start + BLOCK, n))
    kernel.block = block   # for inspection: block.inspect_asm(...) shows the vector code
    return kernel


def _scalar_math():
    import numba

    from . import _math, _numba_vmath
    return _built.get("scalar", lambda: _math.compile_for(
        numba.njit(inline="always", error_model="numpy"), _numba_vmath.PRIMITIVES))


def _kernel(loss: str, parallel: bool, want_grad: bool, has_a: bool):
    return _built.get((loss, parallel, want_grad, has_a), lambda: _elementwise_kernel(
        _scalar_math()[loss], parallel, want_grad, has_a))


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
    kernel = _kernel(call.loss, parallel, bool(call.want_grad), call.param is not None)
    if parallel:
        _apply_thread_count()
        _threads_started = True
    kernel(x, call.target,
           call.weight if call.weight is not None else dummy,
           call.param if call.param is not None else dummy,
           call.weight is not None, call.p0, call.p1,
           out, grad, call.want_out, call.grad_scale, partials)
    total = float(partials.sum())
    return (total * call.total_scale, out if call.want_out else None,
            grad if call.want_grad else None)
