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

from . import NO_IGNORE, BuildOnce, labels_as_int64, labels_checked_first

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

    _operand = _built.get("periodic_operand", _periodic_operand)

    # The block's loops live in a function of their own: compiled outside the
    # parfor machinery, they see want_grad / has_a as constants and vectorise
    # (inside a prange body the same loops stay scalar).
    @numba.njit(nogil=True, error_model="numpy")
    def block(x, y, w, a, has_w, w_period, a_period, p0, p1, out, grad, want_out, grad_scale,
              start, stop):
        vbuf = np.empty(CHUNK, np.float64)
        gbuf = np.empty(CHUNK, np.float64)
        wbuf = np.empty(CHUNK if w_period else 0, w.dtype)
        abuf = np.empty(CHUNK if a_period else 0, a.dtype)
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        for c0 in range(start, stop, CHUNK):
            m = min(CHUNK, stop - c0)
            xc = x[c0:c0 + m]
            yc = y[c0:c0 + m]
            if has_a:
                ac = _operand(a, a_period, abuf, c0, m)
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
                wc = _operand(w, w_period, wbuf, c0, m)
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
    def kernel(x, y, w, a, has_w, w_period, a_period, p0, p1, out, grad, want_out, grad_scale,
               partials):
        n = x.size
        for b in numba.prange(partials.size):
            start = b * BLOCK
            partials[b] = block(x, y, w, a, has_w, w_period, a_period, p0, p1, out, grad,
                                want_out, grad_scale, start, min(start + BLOCK, n))
    kernel.block = block   # for inspection: block.inspect_asm(...) shows the vector code
    return kernel


def _periodic_operand():
    import numba

    @numba.njit(nogil=True, inline="always")
    def operand(src, period, buf, c0, m):
        """Elements [c0, c0 + m) of an operand: its own memory, or for a periodic one
        (element i at i % period, a (C,) weight over (N, C)) one chunk copied into buf."""
        if period == 0:
            return src[c0:c0 + m]
        j = c0 % period
        for i in range(m):
            buf[i] = src[j]
            j += 1
            if j == period:
                j = 0
        return buf[:m]
    return operand


def _scalar_math():
    import numba

    from . import _math, _numba_vmath
    return _built.get("scalar", lambda: _math.compile_for(
        numba.njit(inline="always", error_model="numpy"), _numba_vmath.PRIMITIVES))


def _kernel(loss: str, parallel: bool, want_grad: bool, has_a: bool):
    return _built.get((loss, parallel, want_grad, has_a), lambda: _elementwise_kernel(
        _scalar_math()[loss], parallel, want_grad, has_a))


def _period(operand, n: int) -> int:
    """0 for an operand of n elements (or none), else its length: read periodically."""
    return 0 if operand is None or operand.size == n else operand.size


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
    w, a = call.weight, call.param
    kernel(x, call.target, w if w is not None else dummy, a if a is not None else dummy,
           w is not None, _period(w, n), _period(a, n), call.p0, call.p1,
           out, grad, call.want_out, call.grad_scale, partials)
    total = float(partials.sum())
    return (total * call.total_scale, out if call.want_out else None,
            grad if call.want_grad else None)


# ---------------------------------------------------------------------------
# Row-wise (multi-class) kernels: ``rowwise(call)`` and ``scan_labels(...)``.
#
# Layout and formulas: kernels.RowwiseCall and notes/rowwise_spec.md; the
# per-row math (row max / lse to value and gradient coefficients) comes from
# ._rowmath, the source the CUDA kernels compile too.  Two loop shapes, picked
# by the shape alone:
#
# * S == 1 ("rows"): a row's C values are contiguous.  Per row: the max (a
#   vectorised nan-propagating max reduction), then e_c = exp(x_c - max)
#   into a buffer (vectorised) summed in LANES lanes, then the gradient in a
#   second vectorised pass over the row, which is still in cache: A p_c =
#   (A / s) e_c from the kept e_c (rows of up to ROW_CACHE classes; longer
#   rows recompute exp).  cross_entropy / softmax_focal with C <= SMALL_C
#   run the same arithmetic over blocks of rows, one vector loop a pass per
#   block (bit-identical results).  Work unit: max(1, UNIT // C) rows.
# * S > 1 ("tiles"): the class axis is strided.  A tile is up to TILE
#   consecutive positions s of one sample i; every pass loops over c outside
#   and over the tile's positions inside (contiguous, vectorised), with
#   per-position running max / sums in TILE-long scratch arrays, and the
#   tile's e_c kept for the gradient when T*C <= TILE_CACHE.  Work unit:
#   max(1, UNIT // (T * C)) consecutive tiles, T = min(S, TILE).
#
# prange runs over the work units; each writes one float64 partial (its rows
# summed in row order) and the partials are summed in order: the total
# depends on (N, C, S) only, never on the thread count.  Every grad entry is
# written by exactly one unit.
#
# Compile budget: one kernel per (loss, path) (and per input dtype, by
# Numba's type dispatch); want_grad / want_out / smoothing / z-loss are
# runtime flags tested outside the hot loops.  Labels are converted to int64
# on the host when they are another dtype (an O(rows) copy, C times smaller
# than the input) so no kernel is compiled per label dtype; a missing weight
# is a vector of ones and a missing alpha a vector of p0 (O(C)), which give
# bit-identical results to the unweighted formulas.
# ---------------------------------------------------------------------------

UNIT = BLOCK          # elements per row-wise work unit (at least one row / tile)
TILE = 256            # positions s per tile on the strided (S > 1) path
SMALL_C = 64          # classes: up to this, rows are processed in blocks of SMALL_BLOCK elements
SMALL_BLOCK = 1024
ROW_CACHE = 1 << 17   # classes: up to this, a row's exp(x - max) is kept (1 MiB)
TILE_CACHE = 1 << 16  # T*C: up to this, a tile's exp(x - max) is kept (512 KiB)


def _rowwise_units(n: int, classes: int, inner: int) -> int:
    """Number of work units: the same arithmetic as the kernels' prologues."""
    c = max(1, classes)
    if inner == 1:
        rpu = max(1, UNIT // c)
        return (n + rpu - 1) // rpu
    if n * inner == 0:
        return 0
    t = min(inner, TILE)
    tiles = n * ((inner + t - 1) // t)
    tpu = max(1, UNIT // (t * c))
    return (tiles + tpu - 1) // tpu


def _row_helpers():
    return _built.get("row_helpers", _build_row_helpers)


def _build_row_helpers():
    """The scalar row math (._rowmath with the vectorisable primitives) and
    the loops shared by the row-wise kernels, compiled once (per dtype)."""
    import types

    import numba
    from llvmlite import ir
    from numba.core import cgutils
    from numba.extending import intrinsic

    from . import _numba_vmath, _rowmath

    @intrinsic
    def fmaximum(typingctx, a, b):
        """max(a, b) propagating nan (llvm.maximum): unlike a compare-and-select,
        a reduction over it vectorises without fast-math."""
        if not (a == b == numba.types.float64):
            return None

        def codegen(context, builder, signature, args):
            d = ir.DoubleType()
            f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(d, [d, d]),
                                               "llvm.maximum.f64")
            return builder.call(f, args)
        return numba.types.float64(numba.types.float64, numba.types.float64), codegen

    rm = _rowmath.compile_for(numba.njit(inline="always", error_model="numpy"),
                              _numba_vmath.PRIMITIVES)
    jit = numba.njit(nogil=True, error_model="numpy")
    smooth_target, lse_of = rm["smooth_target"], rm["lse_of"]
    exp = _numba_vmath.exp
    ninf = -np.inf

    # --- contiguous rows (S == 1): x[lo:lo + C] is one row -----------------------
    @jit
    def row_max(x, lo, hi):
        """max of x[lo:hi] in float64 (nan propagates, -inf if empty)."""
        m = ninf
        for j in range(lo, hi):
            m = fmaximum(m, np.float64(x[j]))
        return m

    @jit
    def lanesum(buf, k):
        """sum of buf[:k]: element j into lane j % LANES, the lanes folded
        pairwise -- a fixed order."""
        k8 = k // LANES * LANES
        s0 = s1 = s2 = s3 = s4 = s5 = s6 = s7 = 0.0
        for j in range(0, k8, LANES):
            s0 += buf[j]
            s1 += buf[j + 1]
            s2 += buf[j + 2]
            s3 += buf[j + 3]
            s4 += buf[j + 4]
            s5 += buf[j + 5]
            s6 += buf[j + 6]
            s7 += buf[j + 7]
        rem = k - k8
        if rem > 0:
            s0 += buf[k8]
        if rem > 1:
            s1 += buf[k8 + 1]
        if rem > 2:
            s2 += buf[k8 + 2]
        if rem > 3:
            s3 += buf[k8 + 3]
        if rem > 4:
            s4 += buf[k8 + 4]
        if rem > 5:
            s5 += buf[k8 + 5]
        if rem > 6:
            s6 += buf[k8 + 6]
        return ((s0 + s1) + (s2 + s3)) + ((s4 + s5) + (s6 + s7))

    @jit
    def row_sumexp(x, lo, C, m, ebuf, cached):
        """sum_c e_c, e_c = exp(x[lo + c] - m), per CHUNK; e_c is left in
        ebuf[c] when cached (ebuf holds C), else ebuf is a CHUNK scratch."""
        s = 0.0
        for c0 in range(0, C, CHUNK):
            k = min(CHUNK, C - c0)
            xc = x[lo + c0:lo + c0 + k]
            eb = ebuf[c0:c0 + k] if cached else ebuf[0:k]
            for j in range(k):
                eb[j] = exp(np.float64(xc[j]) - m)
            s += lanesum(eb, k)
        return s

    @jit
    def row_wdot(x, lo, C, w, buf):
        """sum_c w[c] x[lo + c]."""
        s = 0.0
        for c0 in range(0, C, CHUNK):
            k = min(CHUNK, C - c0)
            xc = x[lo + c0:lo + c0 + k]
            wc = w[c0:c0 + k]
            for j in range(k):
                buf[j] = wc[j] * np.float64(xc[j])
            s += lanesum(buf, k)
        return s

    @jit
    def row_prob_sums(x, t, lo, C, w, eps, buf, buf2):
        """(sum_c w_c t'_c, sum_c w_c t'_c x_c) over one row, t'_c the smoothed target."""
        tw = twx = 0.0
        for c0 in range(0, C, CHUNK):
            k = min(CHUNK, C - c0)
            xc = x[lo + c0:lo + c0 + k]
            tc = t[lo + c0:lo + c0 + k]
            wc = w[c0:c0 + k]
            for j in range(k):
                a = wc[j] * smooth_target(np.float64(tc[j]), eps, C)
                buf[j] = a
                buf2[j] = a * np.float64(xc[j])
            tw += lanesum(buf, k)
            twx += lanesum(buf2, k)
        return tw, twx

    @jit
    def row_softmax_grad(x, lo, C, lse, a, q, kw, w, ebuf, cached, grad):
        """grad[lo + c] = a p_c - kw w[c], p_c = exp(x - lse) = e_c / s; from the
        kept e_c when cached (q = a / s)."""
        g = grad[lo:lo + C]
        if cached:
            if kw == 0.0:
                for c in range(C):
                    g[c] = q * ebuf[c]
            else:
                for c in range(C):
                    g[c] = q * ebuf[c] - kw * w[c]
        else:
            xr = x[lo:lo + C]
            for c in range(C):
                g[c] = a * exp(np.float64(xr[c]) - lse) - kw * w[c]

    @jit
    def row_prob_grad(x, t, lo, C, lse, a, q, gs, eps, w, ebuf, cached, grad):
        """grad[lo + c] = a p_c - gs w[c] t'_c."""
        tr = t[lo:lo + C]
        g = grad[lo:lo + C]
        if cached:
            for c in range(C):
                g[c] = q * ebuf[c] - gs * w[c] * smooth_target(np.float64(tr[c]), eps, C)
        else:
            xr = x[lo:lo + C]
            for c in range(C):
                g[c] = (a * exp(np.float64(xr[c]) - lse)
                        - gs * w[c] * smooth_target(np.float64(tr[c]), eps, C))

    @jit
    def zero(a, lo, hi):
        for j in range(lo, hi):
            a[j] = 0

    # --- tiles (S > 1): positions [xb, xb + nt) of class 0, class c at + c*S;
    #     the tile's e_c at ebuf[c*T + j] when cached -----------------------------
    @jit
    def tile_max(x, xb, S, C, nt, mx):
        for j in range(nt):
            mx[j] = ninf
        for c in range(C):
            xc = x[xb + c * S:xb + c * S + nt]
            for j in range(nt):
                mx[j] = fmaximum(mx[j], np.float64(xc[j]))

    @jit
    def tile_sumexp(x, xb, S, C, nt, mx, se, ebuf, cached, T):
        for j in range(nt):
            se[j] = 0.0
        for c in range(C):
            xc = x[xb + c * S:xb + c * S + nt]
            if cached:
                eb = ebuf[c * T:c * T + nt]
                for j in range(nt):
                    e = exp(np.float64(xc[j]) - mx[j])
                    eb[j] = e
                    se[j] += e
            else:
                for j in range(nt):
                    se[j] += exp(np.float64(xc[j]) - mx[j])

    @jit
    def tile_lse(mx, se, nt):
        """mx[j] = lse of position j from its max mx[j] and sum se[j] (a vectorised log)."""
        for j in range(nt):
            mx[j] = lse_of(mx[j], se[j])

    @jit
    def tile_wdot(x, xb, S, C, nt, w, sw):
        for j in range(nt):
            sw[j] = 0.0
        for c in range(C):
            xc = x[xb + c * S:xb + c * S + nt]
            wc = w[c]
            for j in range(nt):
                sw[j] += wc * np.float64(xc[j])

    @jit
    def tile_prob_sums(x, t, xb, S, C, nt, w, eps, tw, twx):
        for j in range(nt):
            tw[j] = 0.0
            twx[j] = 0.0
        for c in range(C):
            xc = x[xb + c * S:xb + c * S + nt]
            tc = t[xb + c * S:xb + c * S + nt]
            wc = w[c]
            for j in range(nt):
                a = wc * smooth_target(np.float64(tc[j]), eps, C)
                tw[j] += a
                twx[j] += a * np.float64(xc[j])

    @jit
    def tile_softmax_grad(x, xb, S, C, nt, lse, ga, qa, gk, keep, w, ebuf, cached, T, grad):
        """grad = ga p - gk w_c (p = e / s, qa = ga / s) where keep, else 0."""
        for c in range(C):
            gc = grad[xb + c * S:xb + c * S + nt]
            wc = w[c]
            if cached:
                eb = ebuf[c * T:c * T + nt]
                for j in range(nt):
                    g = qa[j] * eb[j] - gk[j] * wc
                    gc[j] = g if keep[j] != 0.0 else 0.0
            else:
                xc = x[xb + c * S:xb + c * S + nt]
                for j in range(nt):
                    g = ga[j] * exp(np.float64(xc[j]) - lse[j]) - gk[j] * wc
                    gc[j] = g if keep[j] != 0.0 else 0.0

    @jit
    def tile_prob_grad(x, t, xb, S, C, nt, lse, ga, qa, gs, eps, w, ebuf, cached, T, grad):
        for c in range(C):
            tc = t[xb + c * S:xb + c * S + nt]
            gc = grad[xb + c * S:xb + c * S + nt]
            gw = gs * w[c]
            if cached:
                eb = ebuf[c * T:c * T + nt]
                for j in range(nt):
                    gc[j] = qa[j] * eb[j] - gw * smooth_target(np.float64(tc[j]), eps, C)
            else:
                xc = x[xb + c * S:xb + c * S + nt]
                for j in range(nt):
                    gc[j] = (ga[j] * exp(np.float64(xc[j]) - lse[j])
                             - gw * smooth_target(np.float64(tc[j]), eps, C))

    @jit
    def tile_zero(grad, xb, S, C, nt):
        for c in range(C):
            gc = grad[xb + c * S:xb + c * S + nt]
            for j in range(nt):
                gc[j] = 0

    return types.SimpleNamespace(rm=rm, **{f.__name__: f for f in (
        row_max, lanesum, row_sumexp, row_wdot, row_prob_sums, row_softmax_grad, row_prob_grad,
        zero, tile_max, tile_sumexp, tile_lse, tile_wdot, tile_prob_sums, tile_softmax_grad,
        tile_prob_grad, tile_zero)})


def _build_rowwise_unit(loss: str, tiles: bool):
    """The work unit of one loss on one path: ``unit(..., u)`` computes unit
    u's rows, writes their out / grad entries and returns their value sum."""
    import numba

    h = _row_helpers()
    rm = h.rm
    jit = numba.njit(nogil=True, error_model="numpy")
    from . import _numba_vmath
    exp = _numba_vmath.exp
    vmax, lse_of, ce_finish = rm["vmax"], rm["lse_of"], rm["ce_finish"]
    focal_finish, ce_prob_finish, nll_finish = (rm["focal_finish"], rm["ce_prob_finish"],
                                                rm["nll_finish"])
    margin_term, margin_finish, crammer_finish = (rm["margin_term"], rm["margin_finish"],
                                                  rm["crammer_finish"])
    row_max, lanesum, row_sumexp, row_wdot = h.row_max, h.lanesum, h.row_sumexp, h.row_wdot
    row_prob_sums, row_softmax_grad, row_prob_grad, zero = (h.row_prob_sums, h.row_softmax_grad,
                                                            h.row_prob_grad, h.zero)
    tile_max, tile_sumexp, tile_wdot, tile_prob_sums = (h.tile_max, h.tile_sumexp, h.tile_wdot,
                                                        h.tile_prob_sums)
    tile_lse, tile_softmax_grad = h.tile_lse, h.tile_softmax_grad
    tile_prob_grad, tile_zero = h.tile_prob_grad, h.tile_zero
    focal = loss == "softmax_focal"
    ninf = -np.inf
    # (the unit functions share one signature, so the kernel skeleton is one)

    @numba.njit(inline="always", error_model="numpy")
    def softmax_finish(lse, se, py, xy, wy, ay, W, swx, eps, z, p1, C, gs):
        """cross_entropy / softmax_focal from a valid row's reductions: (value, a,
        kw, gy) with grad_c = a p_c - kw w_c for c != y and grad_y = gy."""
        if focal:
            value, K, uu = focal_finish(lse, se, xy, ay * wy, p1)
            a = gs * K
            return value, a, 0.0, -(a * uu)
        value, A, B = ce_finish(lse, se, xy, wy, W, swx, eps, z, C)
        k = eps / C
        return value, gs * A, gs * k, gs * (A * py - B - k * wy)

    @jit
    def softmax_small_rows(x, t, w, al, W, C, ignore, eps, z, p1, want_out, want_grad, gs,
                           out, grad, r0, r1):
        """Rows r0..r1 of C <= SMALL_C classes, in blocks of G rows: each pass is
        one vectorised loop over the block's G*C elements (a per-row loop of a few
        classes would run its vector loops' scalar remainders), with the row
        maxima and coefficients broadcast per element.  The same values, summed
        in the same lanes, as the per-row loops (bit-identical results)."""
        G = max(1, SMALL_BLOCK // C)
        smooth = (not focal) and eps != 0.0
        e = np.empty(G * C)
        sh = np.empty(G * C)           # per element: its row's max, then its q = a / s
        wrep = np.empty(G * C if smooth else 1)
        wx = np.empty(G * C if smooth else 1)
        mr = np.empty(G)
        sr = np.empty(G)
        swr = np.empty(G)
        qr = np.empty(G)
        gyr = np.empty(G)
        if smooth:
            for g in range(G):
                for c in range(C):
                    wrep[g * C + c] = w[c]
        kw = gs * (eps / C) if smooth else 0.0
        total = 0.0
        for g0 in range(r0, r1, G):
            nb = min(G, r1 - g0)
            lo = g0 * C
            ne = nb * C
            for g in range(nb):
                # a plain compare-and-select max (short rows: no vector loop to feed);
                # a nan it skips still makes e, s and so the row's value and grad nan
                xg = x[lo + g * C:lo + g * C + C]
                m = np.float64(xg[0])
                for c in range(1, C):
                    v = np.float64(xg[c])
                    m = v if v > m else m
                mr[g] = m
                shg = sh[g * C:g * C + C]
                for c in range(C):
                    shg[c] = m
            xs = x[lo:lo + ne]
            for k in range(ne):
                e[k] = exp(np.float64(xs[k]) - sh[k])
            for g in range(nb):
                sr[g] = lanesum(e[g * C:g * C + C], C)
            for g in range(nb):
                mr[g] = lse_of(mr[g], sr[g])
            if smooth:
                for k in range(ne):
                    wx[k] = wrep[k] * np.float64(xs[k])
                for g in range(nb):
                    swr[g] = lanesum(wx[g * C:g * C + C], C)
            for g in range(nb):
                r = g0 + g
                y = t[r]
                value = 0.0
                qr[g] = 0.0
                if y != ignore:
                    value, a, kwr, gy = softmax_finish(
                        mr[g], sr[g], e[g * C + y] / sr[g], np.float64(x[lo + g * C + y]), w[y],
                        al[y], W, swr[g] if smooth else 0.0, eps, z, p1, C, gs)
                    qr[g] = a / sr[g]
                    gyr[g] = gy
                total += value
                if want_out:
                    out[r] = value
            if want_grad:
                for g in range(nb):
                    qg = qr[g]
                    shg = sh[g * C:g * C + C]
                    for c in range(C):
                        shg[c] = qg
                gb = grad[lo:lo + ne]
                if smooth:
                    for k in range(ne):
                        gb[k] = sh[k] * e[k] - kw * wrep[k]
                else:
                    for k in range(ne):
                        gb[k] = sh[k] * e[k]
                for g in range(nb):
                    y = t[g0 + g]
                    if y == ignore:
                        zero(grad, lo + g * C, lo + g * C + C)
                    else:
                        grad[lo + g * C + y] = gyr[g]
        return total

    if loss in ("cross_entropy", "softmax_focal") and not tiles:
        @jit
        def unit(x, t, w, al, W, n, C, S, ignore, eps, z, p0, p1, want_out, want_grad, gs,
                 out, grad, u):
            rpu = max(1, UNIT // C)
            r0 = u * rpu
            r1 = min(r0 + rpu, n)
            if C <= SMALL_C:
                return softmax_small_rows(x, t, w, al, W, C, ignore, eps, z, p1, want_out,
                                          want_grad, gs, out, grad, r0, r1)
            buf = np.empty(CHUNK)
            cached = C <= ROW_CACHE
            ebuf = np.empty(C if cached else CHUNK)
            smooth = (not focal) and eps != 0.0
            total = 0.0
            for r in range(r0, r1):
                lo = r * C
                y = t[r]
                if y == ignore:
                    if want_out:
                        out[r] = 0.0
                    if want_grad:
                        zero(grad, lo, lo + C)
                    continue
                m = row_max(x, lo, lo + C)
                se = row_sumexp(x, lo, C, m, ebuf, cached)
                lse = lse_of(m, se)
                xy = np.float64(x[lo + y])
                py = 0.0
                if not focal:
                    py = ebuf[y] / se if cached else exp(xy - lse)
                value, a, kw, gy = softmax_finish(
                    lse, se, py, xy, w[y], al[y], W, row_wdot(x, lo, C, w, buf) if smooth else 0.0,
                    eps, z, p1, C, gs)
                total += value
                if want_out:
                    out[r] = value
                if want_grad:
                    row_softmax_grad(x, lo, C, lse, a, a / se, kw, w, ebuf, cached, grad)
                    grad[lo + y] = gy
            return total

    elif loss in ("cross_entropy", "softmax_focal"):
        @jit
        def unit(x, t, w, al, W, n, C, S, ignore, eps, z, p0, p1, want_out, want_grad, gs,
                 out, grad, u):
            T = min(S, TILE)
            tps = (S + T - 1) // T
            tpu = max(1, UNIT // (T * C))
            q0 = u * tpu
            q1 = min(q0 + tpu, n * tps)
            cached = T * C <= TILE_CACHE
            ebuf = np.empty(T * C if cached else 1)
            mx = np.empty(T)      # the row max, then lse
            se = np.empty(T)
            sw = np.empty(T)
            ga = np.empty(T)
            qa = np.empty(T)
            gk = np.empty(T)
            gy = np.empty(T)
            keep = np.empty(T)
            yv = np.empty(T, np.int64)
            smooth = (not focal) and eps != 0.0
            total = 0.0
            for q in range(q0, q1):
                i = q // tps
                s0 = (q - i * tps) * T
                nt = min(T, S - s0)
                xb = i * C * S + s0
                rb = i * S + s0
                tile_max(x, xb, S, C, nt, mx)
                tile_sumexp(x, xb, S, C, nt, mx, se, ebuf, cached, T)
                if smooth:
                    tile_wdot(x, xb, S, C, nt, w, sw)
                tile_lse(mx, se, nt)
                for j in range(nt):
                    y = t[rb + j]
                    yv[j] = y
                    if y == ignore:
                        value = 0.0
                        keep[j] = 0.0
                        ga[j] = 0.0
                        qa[j] = 0.0
                        gk[j] = 0.0
                    else:
                        lse = mx[j]
                        keep[j] = 1.0
                        xy = np.float64(x[xb + y * S + j])
                        py = 0.0
                        if not focal:
                            py = ebuf[y * T + j] / se[j] if cached else exp(xy - lse)
                        value, a, kw, gyj = softmax_finish(
                            lse, se[j], py, xy, w[y], al[y], W, sw[j] if smooth else 0.0, eps, z,
                            p1, C, gs)
                        ga[j] = a
                        qa[j] = a / se[j]
                        gk[j] = kw
                        gy[j] = gyj
                    total += value
                    if want_out:
                        out[rb + j] = value
                if want_grad:
                    tile_softmax_grad(x, xb, S, C, nt, mx, ga, qa, gk, keep, w, ebuf, cached, T,
                                      grad)
                    for j in range(nt):
                        if keep[j] != 0.0:
                            grad[xb + yv[j] * S + j] = gy[j]
            return total

    elif loss == "cross_entropy_prob" and not tiles:
        @jit
        def unit(x, t, w, al, W, n, C, S, ignore, eps, z, p0, p1, want_out, want_grad, gs,
                 out, grad, u):
            rpu = max(1, UNIT // C)
            r0 = u * rpu
            r1 = min(r0 + rpu, n)
            buf = np.empty(CHUNK)
            buf2 = np.empty(CHUNK)
            cached = C <= ROW_CACHE
            ebuf = np.empty(C if cached else CHUNK)
            total = 0.0
            for r in range(r0, r1):
                lo = r * C
                m = row_max(x, lo, lo + C)
                se = row_sumexp(x, lo, C, m, ebuf, cached)
                lse = lse_of(m, se)
                tw, twx = row_prob_sums(x, t, lo, C, w, eps, buf, buf2)
                value, A = ce_prob_finish(lse, tw, twx, z)
                total += value
                if want_out:
                    out[r] = value
                if want_grad:
                    row_prob_grad(x, t, lo, C, lse, gs * A, gs * A / se, gs, eps, w, ebuf, cached,
                                  grad)
            return total

    elif loss == "cross_entropy_prob":
        @jit
        def unit(x, t, w, al, W, n, C, S, ignore, eps, z, p0, p1, want_out, want_grad, gs,
                 out, grad, u):
            T = min(S, TILE)
            tps = (S + T - 1) // T
            tpu = max(1, UNIT // (T * C))
            q0 = u * tpu
            q1 = min(q0 + tpu, n * tps)
            mx = np.empty(T)
            se = np.empty(T)
            tw = np.empty(T)
            twx = np.empty(T)
            ga = np.empty(T)
            qa = np.empty(T)
            cached = T * C <= TILE_CACHE
            ebuf = np.empty(T * C if cached else 1)
            total = 0.0
            for q in range(q0, q1):
                i = q // tps
                s0 = (q - i * tps) * T
                nt = min(T, S - s0)
                xb = i * C * S + s0
                rb = i * S + s0
                tile_max(x, xb, S, C, nt, mx)
                tile_sumexp(x, xb, S, C, nt, mx, se, ebuf, cached, T)
                tile_prob_sums(x, t, xb, S, C, nt, w, eps, tw, twx)
                tile_lse(mx, se, nt)
                for j in range(nt):
                    value, A = ce_prob_finish(mx[j], tw[j], twx[j], z)
                    ga[j] = gs * A
                    qa[j] = gs * A / se[j]
                    total += value
                    if want_out:
                        out[rb + j] = value
                if want_grad:
                    tile_prob_grad(x, t, xb, S, C, nt, mx, ga, qa, gs, eps, w, ebuf, cached, T,
                                   grad)
            return total

    elif loss == "nll" and not tiles:
        @jit
        def unit(x, t, w, al, W, n, C, S, ignore, eps, z, p0, p1, want_out, want_grad, gs,
                 out, grad, u):
            rpu = max(1, UNIT // C)
            r0 = u * rpu
            r1 = min(r0 + rpu, n)
            if want_grad:
                zero(grad, r0 * C, r1 * C)
            total = 0.0
            for r in range(r0, r1):
                y = t[r]
                value = 0.0
                if y != ignore:
                    value, G = nll_finish(np.float64(x[r * C + y]), w[y])
                    if want_grad:
                        grad[r * C + y] = gs * G
                total += value
                if want_out:
                    out[r] = value
            return total

    elif loss == "nll":
        @jit
        def unit(x, t, w, al, W, n, C, S, ignore, eps, z, p0, p1, want_out, want_grad, gs,
                 out, grad, u):
            T = min(S, TILE)
            tps = (S + T - 1) // T
            tpu = max(1, UNIT // (T * C))
            q0 = u * tpu
            q1 = min(q0 + tpu, n * tps)
            total = 0.0
            for q in range(q0, q1):
                i = q // tps
                s0 = (q - i * tps) * T
                nt = min(T, S - s0)
                xb = i * C * S + s0
                rb = i * S + s0
                if want_grad:
                    tile_zero(grad, xb, S, C, nt)
                for j in range(nt):
                    y = t[rb + j]
                    value = 0.0
                    if y != ignore:
                        value, G = nll_finish(np.float64(x[xb + y * S + j]), w[y])
                        if want_grad:
                            grad[xb + y * S + j] = gs * G
                    total += value
                    if want_out:
                        out[rb + j] = value
            return total

    elif loss == "multi_margin" and not tiles:
        @jit
        def unit(x, t, w, al, W, n, C, S, ignore, eps, z, p0, p1, want_out, want_grad, gs,
                 out, grad, u):
            rpu = max(1, UNIT // C)
            r0 = u * rpu
            r1 = min(r0 + rpu, n)
            hb = np.empty(CHUNK)
            gb = np.empty(CHUNK)
            total = 0.0
            for r in range(r0, r1):
                lo = r * C
                y = t[r]
                if y == ignore:
                    if want_out:
                        out[r] = 0.0
                    if want_grad:
                        zero(grad, lo, lo + C)
                    continue
                xy = np.float64(x[lo + y])
                wy = w[y]
                gq = gs * margin_finish(0.0, wy, C)[1]
                hsum = gsum = 0.0
                for c0 in range(0, C, CHUNK):
                    k = min(CHUNK, C - c0)
                    xc = x[lo + c0:lo + c0 + k]
                    if want_grad:
                        gc = grad[lo + c0:lo + c0 + k]
                        for j in range(k):
                            hv, dv = margin_term(np.float64(xc[j]), xy, p0, p1)
                            other = c0 + j != y
                            hb[j] = hv if other else 0.0
                            g = gq * dv if other else 0.0
                            gb[j] = g
                            gc[j] = g
                        gsum += lanesum(gb, k)
                    else:
                        for j in range(k):
                            hv, dv = margin_term(np.float64(xc[j]), xy, p0, p1)
                            hb[j] = hv if c0 + j != y else 0.0
                    hsum += lanesum(hb, k)
                value = margin_finish(hsum, wy, C)[0]
                if want_grad:
                    grad[lo + y] = -gsum
                total += value
                if want_out:
                    out[r] = value
            return total

    elif loss == "crammer_singer" and not tiles:
        @jit
        def unit(x, t, w, al, W, n, C, S, ignore, eps, z, p0, p1, want_out, want_grad, gs,
                 out, grad, u):
            rpu = max(1, UNIT // C)
            r0 = u * rpu
            r1 = min(r0 + rpu, n)
            if want_grad:
                zero(grad, r0 * C, r1 * C)
            total = 0.0
            for r in range(r0, r1):
                lo = r * C
                y = t[r]
                if y == ignore:
                    if want_out:
                        out[r] = 0.0
                    continue
                xy = np.float64(x[lo + y])
                m = vmax(row_max(x, lo, lo + y), row_max(x, lo + y + 1, lo + C))
                value, active = crammer_finish(m, xy, p0)
                if want_grad and value != value:     # a nan logit: a nan row gradient
                    for c in range(lo, lo + C):
                        grad[c] = np.nan
                elif want_grad and active:
                    kk = 0
                    while kk == y or np.float64(x[lo + kk]) != m:
                        kk += 1
                    grad[lo + kk] = gs
                    grad[lo + y] = -gs
                total += value
                if want_out:
                    out[r] = value
            return total

    else:
        raise ValueError(f"unknown row-wise kernel {loss!r}")
    return unit


def _rowwise_kernel(unit, parallel):
    """prange over the work units, one float64 partial each."""
    import numba

    @numba.njit(parallel=parallel, nogil=True)
    def kernel(x, t, w, al, W, n, C, S, ignore, eps, z, p0, p1, want_out, want_grad, gs,
               out, grad, partials):
        for u in numba.prange(partials.size):
            partials[u] = unit(x, t, w, al, W, n, C, S, ignore, eps, z, p0, p1, want_out,
                               want_grad, gs, out, grad, np.int64(u))
    kernel.unit = unit   # for inspection (unit.inspect_asm(...))
    return kernel


def _rowwise_get(loss: str, tiles: bool, parallel: bool):
    return _built.get(("rowwise", loss, tiles, parallel), lambda: _rowwise_kernel(
        _built.get(("rowunit", loss, tiles), lambda: _build_rowwise_unit(loss, tiles)), parallel))


def _labels_int64(target):
    """Labels as a flat int64 array: a copy (O(rows)) only for another dtype, so
    the kernels are compiled for one label type."""
    t = np.ascontiguousarray(target).reshape(-1)
    return t if t.dtype == np.int64 else labels_as_int64(t)


def rowwise(call):
    """(total_scale * sum of row values as a float, per-row values or None,
    grad or None) for one kernels.RowwiseCall."""
    x = call.input
    dtype = x.dtype
    n, C, S = int(call.n), int(call.classes), int(call.inner)
    rows = n * S
    loss = call.loss
    if loss in ("multi_margin", "crammer_singer") and S != 1:
        raise ValueError(f"{loss}: (N, C) input only (inner = {S}), as the public API and "
                         f"PyTorch allow")
    if loss == "cross_entropy_prob":
        t = np.ascontiguousarray(call.target).reshape(-1)
    else:
        t = call.target = _labels_int64(call.target)    # once, for the scan and the kernel
    if not labels_checked_first(call, scan_labels):
        return None, None, None
    if call.weight is None or loss == "crammer_singer":
        w = np.ones(max(C, 1), np.float64)
    else:
        w = np.ascontiguousarray(call.weight, np.float64).reshape(-1)
    if call.alpha is None or loss != "softmax_focal":
        al = np.full(max(C, 1), float(call.p0), np.float64)
    else:
        al = np.ascontiguousarray(call.alpha, np.float64).reshape(-1)
    W = float(w[:C].sum())
    ignore = int(call.ignore_index)   # every label kernel (as the C kernels and the reference)
    dummy = np.zeros(1, dtype)
    out = np.empty(rows, dtype) if call.want_out else dummy
    grad = np.empty(x.size, dtype) if call.want_grad else dummy
    partials = np.zeros(_rowwise_units(n, C, S) if C > 0 else 0, np.float64)
    global _threads_started
    parallel = not _forked_child
    kernel = _rowwise_get(loss, S != 1, parallel)
    if parallel:
        _apply_thread_count()
        _threads_started = True
    if partials.size:
        kernel(x, t, w, al, W, n, C, S, ignore, float(call.smoothing),
               float(call.z_loss), float(call.p0), float(call.p1), bool(call.want_out),
               bool(call.want_grad), float(call.grad_scale), out, grad, partials)
    elif call.want_out:
        out[:] = 0
    total = float(partials.sum())
    return (total * call.total_scale, out if call.want_out else None,
            grad if call.want_grad else None)


def _build_scan(parallel):
    import numba

    @numba.njit(nogil=True, error_model="numpy")
    def block(t, classes, ignore, w, has_w, lo, hi):
        ws = 0.0
        count = 0
        for r in range(lo, hi):
            y = t[r]
            if y == ignore and ignore != NO_IGNORE:
                continue
            if y < 0 or y >= classes:
                return r, ws, count
            count += 1
            if has_w:
                ws += w[y]
        return -1, ws, count

    @numba.njit(parallel=parallel, nogil=True)
    def kernel(t, classes, ignore, w, has_w, bad, ws, cnt):
        n = t.size
        for b in numba.prange(bad.size):
            lo = b * BLOCK
            r, s, k = block(t, classes, ignore, w, has_w, lo, min(lo + BLOCK, n))
            bad[b] = r
            ws[b] = s
            cnt[b] = k
    return kernel


def scan_labels(target, classes, ignore_index, weight):
    """(first_bad, weight_sum, count) of flat labels, as notes/rowwise_spec.md:
    first_bad the smallest index of a label outside [0, classes) that is not
    ignore_index (-1 if none); count the valid rows; weight_sum the sum of
    weight[label] over them (float64, fixed order; = count without a weight).
    When first_bad >= 0 the other two are unspecified."""
    t = _labels_int64(target)
    n = t.size
    blocks = (n + BLOCK - 1) // BLOCK
    bad = np.empty(blocks, np.int64)
    ws = np.zeros(blocks, np.float64)
    cnt = np.zeros(blocks, np.int64)
    has_w = weight is not None
    w = np.ascontiguousarray(weight, np.float64).reshape(-1) if has_w else np.zeros(1)
    global _threads_started
    parallel = not _forked_child
    kernel = _built.get(("scan_labels", parallel), lambda: _build_scan(parallel))
    if parallel:
        _apply_thread_count()
        _threads_started = True
    if blocks:
        kernel(t, int(classes), int(ignore_index), w, has_w, bad, ws, cnt)
    hits = bad[bad >= 0]
    first_bad = int(hits[0]) if hits.size else -1
    count = int(cnt.sum())
    return first_bad, (float(ws.sum()) if has_w else float(count)), count


# ---- overlap (Dice family) ----
# ``overlap(call, finish) -> (stats, grad)`` for one kernels.OverlapCall; the
# per-voxel math (activation, the contributions to the sums, the gradient) is
# ._overlapmath's, the source the CUDA kernels compile too.
#
# Work units: each sample's S voxels cut into OVERLAP_UNIT-voxel units (the
# last one shorter), N * ceil(S / OVERLAP_UNIT) in all; prange runs over the
# units and each writes one (C, 3) float64 partial, which the kernel then folds
# per sample in unit order: the statistics depend on (N, C, S) only, never on
# the thread count.  A unit works in tiles of T consecutive voxels (T =
# OVERLAP_TILE, fewer for many classes so that T*C <= OVERLAP_SCRATCH): every
# inner loop runs over the tile's voxels, contiguous in memory, with the
# activated values of the tile (T*C float64) in a per-unit scratch -- nothing
# of the volume's size is allocated.  Each sum is kept in T float64 lanes per
# class (lane j: the tile voxels j, summed over the unit's tiles in order), the
# lanes folded in a fixed order at the end of the unit (the row-wise lanesum).
# The gradient pass (after finish) uses the same units and recomputes the
# activation from the input; every grad element is written by exactly one unit.
#
# Compile budget: ONE kernel per input dtype.  The pass (stats / grad), the
# activation, squared, labels-or-mask and the target dtype are runtime values:
# the target is read from one of four typed arrays (uint8, int32, int64, the
# input's float dtype) picked by a code, the others 1-element dummies.
# ---------------------------------------------------------------------------

OVERLAP_UNIT = 4096        # voxels per work unit (one sample's): one (C, 3) partial each
OVERLAP_TILE = 256         # voxels per tile inside a unit ...
OVERLAP_SCRATCH = 8192     # ... at most this many activated values (T*C) per tile, T >= 1


def _overlap_math():
    import numba

    from . import _numba_vmath, _overlapmath
    return _built.get("overlapmath", lambda: _overlapmath.compile_for(
        numba.njit(inline="always", error_model="numpy"),
        numba.njit(nogil=True, error_model="numpy"),
        {"exp": _numba_vmath.exp}))


def _build_overlap(parallel):
    import numba

    om = _overlap_math()
    load_labels, activate, stats_tile, grad_tile = (
        om["load_labels"], om["activate"], om["stats_tile"], om["grad_tile"])
    lanesum = _row_helpers().lanesum       # the row-wise kernels' fixed-order lane sum
    jit = numba.njit(nogil=True, error_model="numpy")
    U, TILE_V, SCRATCH = OVERLAP_UNIT, OVERLAP_TILE, OVERLAP_SCRATCH

    @jit
    def unit(mode, x, t8, t32, t64, tf, labels, tsrc, C, S, act, squared, ignore, base,
             partials, coef, grad, u):
        ups = (S + U - 1) // U
        i = u // ups
        s_lo = (u - i * ups) * U
        s_hi = min(s_lo + U, S)
        T = max(1, min(TILE_V, SCRATCH // C))
        mx = np.empty(T)
        se = np.empty(T)
        pb = np.empty(T * C)
        lab = np.zeros(T, np.int64)
        keep = np.ones(T, np.uint8)
        tb = np.empty(T)
        gb = np.empty(T)
        dot = np.empty(T)
        if mode == 0:   # per-lane sums: lane j of class k at k*T + j
            a1 = np.zeros(T * C)
            a2 = np.zeros(T * C)
            a3 = np.zeros(T * C)
        else:
            a1 = a2 = a3 = np.zeros(1)
        for s0 in range(s_lo, s_hi, T):
            nt = min(T, s_hi - s0)
            xb = i * C * S + s0
            if labels:
                load_labels(t8, t32, t64, tsrc, ignore, i * S + s0, nt, lab, keep)
            if mode == 0:   # (c_lo an int64, not a literal 0: grad_tile's signature)
                activate(x, xb, S, C, np.int64(0), C, nt, act, mx, se, pb, T)
                stats_tile(pb, T, nt, 0, C, xb, S, labels, lab, keep, base, t8, tf, tsrc,
                           squared, tb, a1, a2, a3)
            else:
                grad_tile(x, xb, S, C, C, nt, T, act, squared, labels, lab, keep, base, t8, tf,
                          tsrc, coef, i * C * 2, mx, se, pb, tb, gb, dot, grad)
        if mode == 0:   # the lanes of each sum folded in a fixed order
            o = u * 3 * C
            for k in range(C):
                partials[o + 3 * k] = lanesum(a1[k * T:(k + 1) * T], T)
                partials[o + 3 * k + 1] = lanesum(a2[k * T:(k + 1) * T], T)
                partials[o + 3 * k + 2] = lanesum(a3[k * T:(k + 1) * T], T)

    @numba.njit(parallel=parallel, nogil=True)
    def kernel(mode, x, t8, t32, t64, tf, labels, tsrc, n, C, S, act, squared, ignore, base,
               partials, stats, coef, grad):
        ups = (S + U - 1) // U
        for u in numba.prange(n * ups):
            unit(mode, x, t8, t32, t64, tf, labels, tsrc, C, S, act, squared, ignore, base,
                 partials, coef, grad, np.int64(u))
        if mode == 0:   # fold the partials per sample, in unit order
            K = 3 * C
            for i in range(n):
                for k in range(ups):
                    o = (i * ups + k) * K
                    for e in range(K):
                        stats[i * K + e] += partials[o + e]
    kernel.unit = unit   # for inspection
    return kernel


def _overlap_targets(call, dtype, size_labels, size_mask):
    """(t8, t32, t64, tf, tsrc, labels): the target in the array its dtype picks,
    dummies for the others."""
    from . import _overlapmath as om

    labels = call.target_kind == "labels"
    if not labels and call.target_kind != "mask":
        raise ValueError(f"target_kind: expected 'labels' or 'mask', got {call.target_kind!r}")
    t = np.ascontiguousarray(call.target).reshape(-1)
    if t.dtype == np.bool_:
        t = t.view(np.uint8)
    want = size_labels if labels else size_mask
    if t.size != want:
        raise ValueError(f"target: expected {want} elements ({call.target_kind}), got {t.size}")
    arrays = [np.zeros(1, np.uint8), np.zeros(1, np.int32), np.zeros(1, np.int64),
              np.zeros(1, dtype)]
    if t.dtype == np.uint8:
        tsrc = om.T_U8
    elif labels and t.dtype == np.int32:
        tsrc = om.T_I32
    elif labels and t.dtype == np.int64:
        tsrc = om.T_I64
    elif not labels and t.dtype == dtype:
        tsrc = om.T_FLOAT
    else:
        raise TypeError(f"target: {call.target_kind} of dtype {t.dtype} not supported by the "
                        f"overlap kernels (labels: int32, int64, uint8; masks: uint8, bool or "
                        f"the input's dtype {dtype})")
    arrays[tsrc] = t
    return (*arrays, tsrc, labels)


def _overlap_coef(finish, stats):
    n, C = stats.shape[:2]
    coef = np.ascontiguousarray(finish(stats), dtype=np.float64)
    if coef.shape != (n, C, 2):
        raise ValueError(f"finish: expected coefficients of shape {(n, C, 2)}, got "
                         f"{coef.shape}")
    return coef.reshape(-1)


def overlap(call, finish):
    """(stats, grad) for one kernels.OverlapCall: host float64 (N, C, 3) sums
    (I, P, T), then, when call.want_grad, the gradient (like the input) from
    ``coef = finish(stats)``."""
    global _threads_started
    from . import _overlapmath as om

    x = np.ascontiguousarray(call.input).reshape(-1)
    dtype = np.dtype(x.dtype)
    n, C, S, act = om.check_call(call, dtype, x.size)
    t8, t32, t64, tf, tsrc, labels = _overlap_targets(call, dtype, n * S, n * C * S)
    units = n * ((S + OVERLAP_UNIT - 1) // OVERLAP_UNIT) if C > 0 else 0
    stats = np.zeros(n * C * 3, np.float64)
    partials = np.empty(units * 3 * C, np.float64)
    dummy = np.zeros(1, dtype)
    coef1 = np.zeros(1, np.float64)
    args = (x, t8, t32, t64, tf, bool(labels), np.int64(tsrc), np.int64(n), np.int64(C),
            np.int64(S), np.int64(act), bool(call.squared), np.int64(call.ignore_index),
            np.int64(call.label_base))
    kernel = None
    if units:
        parallel = not _forked_child
        kernel = _built.get(("overlap", parallel), lambda: _build_overlap(parallel))
        if parallel:
            _apply_thread_count()
            _threads_started = True
        kernel(np.int64(0), *args, partials, stats, coef1, dummy)
    stats = stats.reshape(n, C, 3)
    if not call.want_grad:
        return stats, None
    coef = _overlap_coef(finish, stats)
    grad = np.empty(x.size, dtype)
    if units:
        kernel(np.int64(1), *args, partials, stats.reshape(-1), coef, grad)
    return stats, grad


# ---- boxes ----
# Box regression losses: ``boxes(call)`` (kernels.BoxCall).  The per-box math
# (value and gradient) comes from ._boxmath, the source the CUDA kernels
# compile too.  One loop: prange over blocks of BOX_BLOCK boxes; per block the
# boxes in order, the values added into LANES float64 lanes by their index in
# the block and the lanes folded in a fixed order; the block sums are added
# by NumPy in block order.  So the total depends on n only, not on the threads.
# With call.check, each block also notes its first degenerate box of each
# argument, in the same loop.
# One kernel for the three losses (per dtype, parallel or not): the loss, storing
# values and gradients are run-time arguments, so that few things compile.
BOX_BLOCK = 4096   # boxes per block: the unit of work and of summation


def _box_math():
    import numba

    from . import _boxmath
    return _built.get("box_math", lambda: _boxmath.compile_for(
        numba.njit(error_model="numpy")))


def _build_box_kernel(parallel: bool):
    import numba

    math = _box_math()
    box_loss = math["box_loss"]

    @numba.njit(nogil=True, error_model="numpy")
    def block(kind, b1, b2, eps, eps_alpha, out, grad, want_out, want_grad, gs, check, start,
              stop):
        acc = np.zeros(LANES, np.float64)
        bad1 = bad2 = -1
        for i in range(start, stop):
            j = 4 * i
            x1, y1 = np.float64(b1[j]), np.float64(b1[j + 1])
            x2, y2 = np.float64(b1[j + 2]), np.float64(b1[j + 3])
            X1, Y1 = np.float64(b2[j]), np.float64(b2[j + 1])
            X2, Y2 = np.float64(b2[j + 2]), np.float64(b2[j + 3])
            if check:
                if bad1 < 0 and (x2 < x1 or y2 < y1):
                    bad1 = i
                if bad2 < 0 and (X2 < X1 or Y2 < Y1):
                    bad2 = i
            value, g1, g2, g3, g4 = box_loss(kind, x1, y1, x2, y2, X1, Y1, X2, Y2, eps,
                                             eps_alpha)
            if want_out:
                out[i] = value
            if want_grad:
                grad[j] = gs * g1
                grad[j + 1] = gs * g2
                grad[j + 2] = gs * g3
                grad[j + 3] = gs * g4
            acc[(i - start) % LANES] += value
        w = LANES // 2
        while w >= 1:
            for k in range(w):
                acc[k] += acc[k + w]
            w //= 2
        return acc[0], bad1, bad2

    @numba.njit(parallel=parallel, nogil=True)
    def kernel(kind, b1, b2, n, eps, eps_alpha, out, grad, want_out, want_grad, gs, check,
               partials, bad):
        for b in numba.prange(partials.size):
            start = b * BOX_BLOCK
            total, bad1, bad2 = block(kind, b1, b2, eps, eps_alpha, out, grad, want_out,
                                      want_grad, gs, check, start, min(start + BOX_BLOCK, n))
            partials[b] = total
            bad[2 * b] = bad1
            bad[2 * b + 1] = bad2
    return kernel


def boxes(call):
    from . import _boxmath

    b1, b2 = call.boxes1, call.boxes2
    dtype = b1.dtype
    n = call.n
    dummy = np.zeros(1, dtype)
    out = np.empty(n, dtype) if call.want_out else dummy
    grad = np.empty(4 * n, dtype) if call.want_grad else dummy
    partials = np.zeros((n + BOX_BLOCK - 1) // BOX_BLOCK, np.float64)
    bad = np.full(2 * partials.size, -1, np.int64)
    if n:
        global _threads_started
        parallel = not _forked_child
        kernel = _built.get(("boxes", parallel), lambda: _build_box_kernel(parallel))
        if parallel:
            _apply_thread_count()
            _threads_started = True
        kernel(np.int64(_boxmath.KINDS[call.loss]), b1, b2, np.int64(n), float(call.eps), float(call.eps_alpha), out, grad,
               bool(call.want_out), bool(call.want_grad), float(call.grad_scale),
               bool(call.check), partials, bad)
    for k, field in ((0, "bad1"), (1, "bad2")):      # the first block that has one wins
        hits = bad[k::2][bad[k::2] >= 0]
        setattr(call, field, int(hits[0]) if hits.size else -1)
    total = float(partials.sum())
    return (total * call.total_scale, out if call.want_out else None,
            grad if call.want_grad else None)


# ---- pairwise ----
# The pairwise (representation-learning) kernels of kernels.PAIRWISE: pair_*
# (tiles of the Gram matrix), triplet_rows and info_nce_paired (row kernels).
# The per-pair / per-row math is ._pairmath's, the source the CUDA kernels
# compile too.  (The row glue of the contract is the loss layer's NumPy code
# on the host backends.)
#
# Tiles: PAIR_TR rows of a x PAIR_TC rows of b.  prange runs over the row tiles
# (the unit of work); a unit walks its column tiles in column order: the Gram
# tile G = a[rows] b[cols]^T is computed in the dtype (loop order row, d,
# column: the inner loop over columns is contiguous in b^T -- a (D, Nb) copy
# made once per call -- and vectorises) and copied into a float64 tile, then
# each row of that tile is used by a ._pairmath tile-row function carrying the
# row's float64 state (running lse, sums, argmax / argmin) from tile to tile.
# For pair_lse / pair_softmax_product the Gram tile is first scaled per entry
# in the dtype, s = (scale rs_i cs_j) g with the factor computed in float64
# and rounded to the dtype (row_scale / col_scale: ones when absent), as C;
# the tile-row functions then see scale 1.
# The product kernels (pair_softmax_product, pair_contrastive_grad) overwrite
# the tile with the weights (P or W), round them to the dtype, multiply the
# tile row with the b tile in the dtype and add that into the unit's float64
# (rows, D) accumulator (the sum of W for the gradient's x_i term is taken
# from the rounded weights).  A row is owned by one unit and its tiles come in
# a fixed order, so every result depends on the shape only, never on the
# thread count; nothing of size (Na, Nb) is allocated (but pair_matrix's
# output).  The float64 squared row norms are computed on the host (NumPy,
# once per call).
#
# Compile budget: ONE tile kernel per input dtype for the six pair_*
# functions (the function and the metric are run-time codes; the tile-row
# functions see float64 tiles only, so they compile once for both dtypes), and
# one kernel per dtype for each of the two row kernels.
# ---------------------------------------------------------------------------

PAIR_TR = 64         # rows of a per tile: the unit of work
PAIR_TC = 256        # rows of b (columns of the Gram matrix) per tile
PAIR_ROW_BLOCK = 64  # rows per prange iteration of info_nce_paired

# tile-kernel modes
P_MATRIX, P_LSE, P_SOFTMAX, P_STATS, P_GRAD, P_HARDEST = range(6)


def _pair_math():
    import numba

    from . import _numba_vmath, _pairmath
    return _built.get("pairmath", lambda: _pairmath.compile_for(
        numba.njit(inline="always", error_model="numpy"),
        numba.njit(nogil=True, error_model="numpy"),
        {"exp": _numba_vmath.exp, "log": _numba_vmath.log}))


def _build_pair_tiles(parallel):
    import numba

    from . import _pairmath
    pm = _pair_math()
    matrix_tile, lse_tile, softmax_tile = pm["matrix_tile"], pm["lse_tile"], pm["softmax_tile"]
    scale_tile = pm["scale_tile"]
    stats_tile, weight_tile, hardest_tile = (pm["stats_tile"], pm["weight_tile"],
                                             pm["hardest_tile"])
    lse_finish = pm["lse_finish"]
    jit = numba.njit(nogil=True, error_model="numpy")
    TR, TC = PAIR_TR, PAIR_TC
    COSINE = _pairmath.COSINE

    @jit
    def gram(a, bT, r0, nr, c0, nc, G):
        """G[r, j] = a[r0 + r] . b[c0 + j] in the dtype, d in order."""
        D = a.shape[1]
        for r in range(nr):
            gr = G[r, :nc]
            for j in range(nc):
                gr[j] = 0.0
            ar = a[r0 + r]
            for d in range(D):
                av = ar[d]
                br = bT[d, c0:c0 + nc]
                for j in range(nc):
                    gr[j] += av * br[j]

    @jit
    def widen(G, nr, nc, Gd):
        """Gd = G (float64) over the tile's (nr, nc)."""
        for r in range(nr):
            gr = G[r, :nc]
            dr = Gd[r, :nc]
            for j in range(nc):
                dr[j] = gr[j]

    @jit
    def product(Gd, G, r, nc, c0, b, tp, acc):
        """Row r of the weights Gd rounded to the dtype (into G), then acc[r] +=
        sum_j G[r, j] b[c0 + j]: the tile's sum in the dtype (tp), added in float64.
        Returns the sum of the rounded weights (float64)."""
        D = b.shape[1]
        gr = G[r, :nc]
        dr = Gd[r, :nc]
        sw = 0.0
        for j in range(nc):
            gr[j] = dr[j]
            sw += np.float64(gr[j])
        for d in range(D):
            tp[d] = 0.0
        for j in range(nc):
            w = gr[j]
            br = b[c0 + j]
            for d in range(D):
                tp[d] += w * br[d]
        ar = acc[r]
        for d in range(D):
            ar[d] += np.float64(tp[d])
        return sw

    @jit
    def unit(mode, a, b, bT, same, metric, p0, p1, p2, p3, rs, cs, rsc, csc, excl, lab, nA, nB,
             out, res, idx, t):
        Na, D = a.shape
        Nb = b.shape[0]
        r0 = t * TR
        nr = min(TR, Na - r0)
        G = np.empty((TR, TC), a.dtype)
        Gd = np.empty((TR, TC))
        prod = mode == P_SOFTMAX or mode == P_GRAD
        acc = np.zeros((nr if prod else 1, D))
        tp = np.empty(D, a.dtype)
        cf = np.empty(1, a.dtype)
        scaled = mode == P_LSE or mode == P_SOFTMAX   # s = (p0 rsc_i csc_j) g in the dtype
        st = np.zeros((nr, 4))      # per-row float64 state
        ji = np.full((nr, 2), -1, np.int64)
        if mode == P_LSE:
            for r in range(nr):
                st[r, 0] = -np.inf
        for c0 in range(0, Nb, TC):
            nc = min(TC, Nb - c0)
            gram(a, bT, r0, nr, c0, nc, G)
            if scaled:
                for r in range(nr):
                    scale_tile(G, r, nc, c0, p0 * rsc[r0 + r], csc, cf)
            widen(G, nr, nc, Gd)
            for r in range(nr):
                gi = r0 + r
                if mode == P_MATRIX:
                    matrix_tile(Gd, r, nc, c0, gi, nA[gi], nB, metric, same, out)
                elif mode == P_LSE:
                    m, s = lse_tile(Gd, r, nc, c0, gi, excl, 1.0, st[r, 0], st[r, 1])
                    st[r, 0] = m
                    st[r, 1] = s
                elif mode == P_SOFTMAX:
                    softmax_tile(Gd, r, nc, c0, gi, excl, 1.0, rs[gi], cs)
                    product(Gd, G, r, nc, c0, b, tp, acc)
                elif mode == P_GRAD:
                    weight_tile(Gd, r, nc, c0, gi, nA[gi], nB, lab[gi], lab, metric, p0, p1, p2,
                                p3)
                    st[r, 0] += product(Gd, G, r, nc, c0, b, tp, acc)
                elif mode == P_STATS:
                    s0, s1, s2, s3 = stats_tile(Gd, r, nc, c0, gi, nA[gi], nB, lab[gi], lab,
                                                metric, p0, p1, st[r, 0], st[r, 1], st[r, 2],
                                                st[r, 3])
                    st[r, 0] = s0
                    st[r, 1] = s1
                    st[r, 2] = s2
                    st[r, 3] = s3
                else:
                    bp, ip, bn, jn = hardest_tile(Gd, r, nc, c0, gi, nA[gi], nB, lab[gi], lab,
                                                  metric, st[r, 0], ji[r, 0], st[r, 2], ji[r, 1])
                    st[r, 0] = bp
                    ji[r, 0] = ip
                    st[r, 2] = bn
                    ji[r, 1] = jn
        for r in range(nr):
            gi = r0 + r
            if mode == P_LSE:
                res[gi, 0] = lse_finish(st[r, 0], st[r, 1])
            elif mode == P_STATS:
                for k in range(4):
                    res[gi, k] = st[r, k]
            elif mode == P_HARDEST:
                idx[gi, 0] = ji[r, 0]
                idx[gi, 1] = ji[r, 1]
            elif mode == P_SOFTMAX:      # p1: gain
                for d in range(D):
                    out[gi, d] = np.float64(out[gi, d]) + p1 * acc[r, d]
            elif mode == P_GRAD:
                sw = st[r, 0]
                if metric == COSINE:
                    for d in range(D):
                        out[gi, d] = -acc[r, d]
                else:
                    for d in range(D):
                        out[gi, d] = np.float64(a[gi, d]) * sw - acc[r, d]

    @numba.njit(parallel=parallel, nogil=True)
    def kernel(mode, a, b, bT, same, metric, p0, p1, p2, p3, rs, cs, rsc, csc, excl, lab, nA,
               nB, out, res, idx):
        for t in numba.prange((a.shape[0] + TR - 1) // TR):
            unit(mode, a, b, bT, same, metric, p0, p1, p2, p3, rs, cs, rsc, csc, excl, lab, nA,
                 nB, out, res, idx, np.int64(t))
    kernel.unit = unit   # for inspection
    return kernel


def _build_pair_rows(parallel):
    import numba

    pm = _pair_math()
    triplet_row, info_nce_row = pm["triplet_row"], pm["info_nce_row"]
    RB = PAIR_ROW_BLOCK

    @numba.njit(parallel=parallel, nogil=True)
    def triplet(an, po, ne, margin, p, eps, swap, want_grad, gain, loss, ga, gp, gn):
        N, D = an.shape
        for i in numba.prange(N):
            loss[i] = triplet_row(an, po, ne, np.int64(i), D, margin, p, eps, swap, want_grad,
                                  gain, ga, gp, gn)

    @numba.njit(parallel=parallel, nogil=True)
    def info_nce(q, k, ne, scale, want_grad, gain, loss, gq, gk, gneg):
        N, D = q.shape
        M = ne.shape[1]
        for t in numba.prange((N + RB - 1) // RB):
            acc = np.empty((1, D))
            for i in range(t * RB, min(N, (t + 1) * RB)):
                loss[i] = info_nce_row(q, k, ne, np.int64(i), D, M, scale, want_grad, gain, gq,
                                       gk, gneg, acc, 0)
    return triplet, info_nce


def _pair_parallel():
    """Whether to run the parallel variant (not in a forked child), the threads set."""
    global _threads_started
    parallel = not _forked_child
    if parallel:
        _apply_thread_count()
        _threads_started = True
    return parallel


def _pair_array(name, x, ndim=2):
    """x as a C-contiguous float32 / float64 array of ``ndim`` dims (a copy only if
    it is not one already); D >= 1."""
    x = np.asarray(x)
    if x.dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected float32 or float64, got {x.dtype}")
    if x.ndim != ndim or x.shape[-1] < 1:
        raise ValueError(f"{name}: expected {ndim} dimensions, the last >= 1, got shape "
                         f"{x.shape}")
    return np.ascontiguousarray(x)


def _pair_operands(a, b):
    """(a, b, same) checked: one dtype, one width; ``same`` when b is a."""
    same = b is a
    a = _pair_array("a", a)
    b = a if same else _pair_array("b", b)
    if b.dtype != a.dtype:
        raise TypeError(f"b: expected {a.dtype} like a, got {b.dtype}")
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"b: expected width {a.shape[1]} like a, got {b.shape[1]}")
    return a, b, same


def _pair_labels(labels, n):
    lab = np.ascontiguousarray(labels, dtype=np.int64)
    if lab.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},), got {np.shape(labels)}")
    return lab


def _pair_shift(name, shift, n, default=0.0):
    """A float64 (n,) host vector: ``shift``, or ``default`` everywhere for None."""
    if shift is None:
        return np.full(n, default, np.float64)
    shift = np.ascontiguousarray(shift, dtype=np.float64)
    if shift.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {shift.shape}")
    return shift


def _pair_sqnorms(x):
    """float64 |x_i|^2 per row (NumPy: a fixed order, no threads)."""
    return np.einsum("ij,ij->i", x, x, dtype=np.float64)


def _pair_tiles(mode, a, b, same, metric=0, params=(0.0, 0.0, 0.0, 0.0), rs=None, cs=None,
                rsc=None, csc=None, excl=False, lab=None, out=None, res=None, idx=None):
    dtype = a.dtype
    parallel = _pair_parallel()
    kernel = _built.get(("pair_tiles", parallel), lambda: _build_pair_tiles(parallel))
    bT = np.ascontiguousarray(b.T)
    nA = _pair_sqnorms(a)
    nB = nA if same else _pair_sqnorms(b)
    kernel(np.int64(mode), a, b, bT, bool(same), np.int64(metric),
           *(float(p) for p in params),
           np.zeros(a.shape[0]) if rs is None else rs,
           np.zeros(b.shape[0]) if cs is None else cs,
           np.ones(a.shape[0]) if rsc is None else rsc,
           np.ones(b.shape[0]) if csc is None else csc, bool(excl),
           np.zeros(1, np.int64) if lab is None else lab, nA, nB,
           np.zeros((1, 1), dtype) if out is None else out,
           np.zeros((1, 4)) if res is None else res,
           np.zeros((1, 2), np.int64) if idx is None else idx)


def pair_matrix(a, b, metric):
    from . import _pairmath
    code = _pairmath.metric_code(metric)
    a, b, same = _pair_operands(a, b)
    out = np.empty((a.shape[0], b.shape[0]), a.dtype)
    _pair_tiles(P_MATRIX, a, b, same, metric=code, out=out)
    return out


def pair_lse(a, b, scale, exclude_diag, row_scale=None, col_scale=None):
    a, b, same = _pair_operands(a, b)
    rsc = _pair_shift("row_scale", row_scale, a.shape[0], 1.0)
    csc = _pair_shift("col_scale", col_scale, b.shape[0], 1.0)
    res = np.empty((a.shape[0], 4))
    _pair_tiles(P_LSE, a, b, same, params=(scale, 0.0, 0.0, 0.0), rsc=rsc, csc=csc,
                excl=exclude_diag, res=res)
    return np.ascontiguousarray(res[:, 0])


def pair_softmax_product(a, b, scale, row_shift, col_shift, exclude_diag, gain, out,
                         row_scale=None, col_scale=None):
    a, b, same = _pair_operands(a, b)
    if not isinstance(out, np.ndarray) or out.dtype != a.dtype or out.shape != a.shape:
        raise ValueError(f"out: expected a {a.dtype} array of shape {a.shape}, got "
                         f"{getattr(out, 'dtype', type(out))} {np.shape(out)}")
    rs = _pair_shift("row_shift", row_shift, a.shape[0])
    cs = _pair_shift("col_shift", col_shift, b.shape[0])
    rsc = _pair_shift("row_scale", row_scale, a.shape[0], 1.0)
    csc = _pair_shift("col_scale", col_scale, b.shape[0], 1.0)
    work = out if out.flags.c_contiguous else np.ascontiguousarray(out)
    _pair_tiles(P_SOFTMAX, a, b, same, params=(scale, gain, 0.0, 0.0), rs=rs, cs=cs,
                rsc=rsc, csc=csc, excl=exclude_diag, out=work)
    if work is not out:
        out[...] = work


def pair_contrastive_stats(x, labels, metric, pos_margin, neg_margin):
    from . import _pairmath
    code = _pairmath.metric_code(metric)
    x = _pair_array("x", x)
    lab = _pair_labels(labels, x.shape[0])
    res = np.empty((x.shape[0], 4))
    _pair_tiles(P_STATS, x, x, True, metric=code, params=(pos_margin, neg_margin, 0.0, 0.0),
                lab=lab, res=res)
    return res


def pair_contrastive_grad(x, labels, metric, pos_margin, neg_margin, cpos, cneg):
    from . import _pairmath
    code = _pairmath.metric_code(metric)
    x = _pair_array("x", x)
    lab = _pair_labels(labels, x.shape[0])
    grad = np.empty_like(x)
    _pair_tiles(P_GRAD, x, x, True, metric=code,
                params=(pos_margin, neg_margin, cpos, cneg), lab=lab, out=grad)
    return grad


def pair_hardest(x, labels, metric):
    from . import _pairmath
    code = _pairmath.metric_code(metric)
    x = _pair_array("x", x)
    lab = _pair_labels(labels, x.shape[0])
    idx = np.empty((x.shape[0], 2), np.int64)
    _pair_tiles(P_HARDEST, x, x, True, metric=code, lab=lab, idx=idx)
    return np.ascontiguousarray(idx[:, 0]), np.ascontiguousarray(idx[:, 1])


def triplet_rows(anchor, positive, negative, margin, p, eps, swap, want_grad, gain):
    an = _pair_array("anchor", anchor)
    po = _pair_array("positive", positive)
    ne = _pair_array("negative", negative)
    if po.shape != an.shape or ne.shape != an.shape or po.dtype != an.dtype \
            or ne.dtype != an.dtype:
        raise ValueError(f"anchor, positive, negative: expected one shape and dtype, got "
                         f"{an.shape} {an.dtype}, {po.shape} {po.dtype}, {ne.shape} {ne.dtype}")
    n = an.shape[0]
    loss = np.empty(n)
    if want_grad:
        ga, gp, gn = (np.empty_like(an) for _ in range(3))
    else:
        ga = gp = gn = np.zeros((1, 1), an.dtype)
    parallel = _pair_parallel()
    triplet, _ = _built.get(("pair_rows", parallel), lambda: _build_pair_rows(parallel))
    triplet(an, po, ne, float(margin), float(p), float(eps), bool(swap), bool(want_grad),
            float(gain), loss, ga, gp, gn)
    return loss, ((ga, gp, gn) if want_grad else None)


def info_nce_paired(q, k, neg, scale, want_grad, gain):
    q = _pair_array("q", q)
    k = _pair_array("k", k)
    ne = _pair_array("neg", neg, ndim=3)
    n, D = q.shape
    if k.shape != q.shape or ne.shape[0] != n or ne.shape[2] != D or k.dtype != q.dtype \
            or ne.dtype != q.dtype:
        raise ValueError(f"q, k, neg: expected (N, D), (N, D), (N, M, D) of one dtype, got "
                         f"{q.shape} {q.dtype}, {k.shape} {k.dtype}, {ne.shape} {ne.dtype}")
    loss = np.empty(n)
    if want_grad:
        gq, gk, gneg = np.empty_like(q), np.empty_like(k), np.empty_like(ne)
    else:
        gq = gk = np.zeros((1, 1), q.dtype)
        gneg = np.zeros((1, 1, 1), q.dtype)
    parallel = _pair_parallel()
    _, info_nce = _built.get(("pair_rows", parallel), lambda: _build_pair_rows(parallel))
    info_nce(q, k, ne, float(scale), bool(want_grad), float(gain), loss, gq, gk, gneg)
    return loss, ((gq, gk, gneg) if want_grad else None)
