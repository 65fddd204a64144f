"""backend="cuda": ``@cuda.jit`` kernels (the ``numba-cuda`` package).

Inputs are any arrays with ``__cuda_array_interface__`` (Numba device arrays,
CuPy, PyTorch CUDA tensors), used in place.  One grid-stride skeleton per loop
shape; the scalar math comes from :mod:`._math`, the same source as the CPU
kernels.  Reductions: each block reduces its threads' float64 sums in a fixed
tree and writes one partial; a one-block kernel adds the partials in order.
No float atomics, so a result depends only on n, never on scheduling.
Results stay on the device (the scalar as a 0-d device array).

Under ``NUMBA_ENABLE_CUDASIM=1`` the same kernels run in Numba's simulator,
with small grids (one Python thread per CUDA thread).
"""
from __future__ import annotations

from typing import Any, Callable

import numpy as np
# Imported at module level (this module loads only when the backend is first
# used): the simulator swaps the module-global ``cuda`` inside kernels.
from numba import cuda, float64, int64

from . import NO_IGNORE, BuildOnce, labels_checked_first

_built = BuildOnce()


def _simulated() -> bool:
    from numba import config
    return bool(getattr(config, "ENABLE_CUDASIM"))   # set at numba import; no stub


def unavailable_reason():
    try:
        if not cuda.is_available():
            return "no CUDA GPU or driver found (cuda.is_available() is False)"
    except Exception as exc:  # a broken driver install
        return f"CUDA is not usable: {exc}"
    return None


def _geometry():
    """(threads per block, most blocks): small under the simulator."""
    return (32, 2) if _simulated() else (256, 1024)


def _blocks(n: int) -> int:
    threads, most = _geometry()
    return max(1, min(most, (n + threads - 1) // threads))


@cuda.jit(device=True)
def _block_sum(shared, s):
    """The block's sum of every thread's ``s``, added in a fixed tree order
    (blockDim.x a power of two); every thread gets the result."""
    tid = cuda.threadIdx.x
    shared[tid] = s
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            shared[tid] += shared[tid + step]
        cuda.syncthreads()
        step //= 2
    total = shared[0]
    cuda.syncthreads()   # the buffer may be reused after this
    return total


def _build_shared():
    """Kernels every loss shares: finishing a sum, scanning values."""
    threads, _ = _geometry()

    @cuda.jit
    def finish_sum(partials, scale, result):
        # one block: each thread sums a strided slice, then a fixed tree
        shared = cuda.shared.array(threads, float64)
        s = 0.0
        for k in range(cuda.threadIdx.x, partials.size, threads):
            s += partials[k]
        total = _block_sum(shared, s)
        if cuda.threadIdx.x == 0:
            result[0] = total * scale

    @cuda.jit
    def first_bad(x, lo, hi, pm1, partials):
        # per block: the smallest index whose value fails the check, or n
        shared = cuda.shared.array(threads, int64)
        tid = cuda.threadIdx.x
        n = x.size
        best = n
        i = cuda.grid(1)
        while i < n:
            v = float64(x[i])
            bad = (v != 1.0 and v != -1.0) if pm1 else not (v >= lo and v <= hi)
            if bad and i < best:
                best = i
            i += cuda.gridsize(1)
        shared[tid] = best
        cuda.syncthreads()
        step = threads // 2
        while step > 0:
            if tid < step and shared[tid + step] < shared[tid]:
                shared[tid] = shared[tid + step]
            cuda.syncthreads()
            step //= 2
        if tid == 0:
            partials[cuda.blockIdx.x] = shared[0]

    return finish_sum, first_bad


def _elementwise_kernel(fn):
    """The elementwise skeleton for one scalar function."""
    threads, _ = _geometry()

    @cuda.jit
    def kernel(x, y, w, a, has_w, has_a, p0, p1, out, grad, want_out, want_grad, grad_scale,
               partials):
        shared = cuda.shared.array(threads, float64)
        n = x.size
        nw = w.size
        na = a.size
        s = 0.0
        i = cuda.grid(1)
        while i < n:
            ai = p0
            if has_a:
                ai = float64(a[i] if na == n else a[i % na])
            value, deriv = fn(float64(x[i]), float64(y[i]), ai, p0, p1)
            if has_w:
                wi = float64(w[i] if nw == n else w[i % nw])
                value *= wi
                deriv *= wi
            s += value
            if want_out:
                out[i] = value
            if want_grad:
                grad[i] = deriv * grad_scale
            i += cuda.gridsize(1)
        total = _block_sum(shared, s)
        if cuda.threadIdx.x == 0:
            partials[cuda.blockIdx.x] = total

    return kernel


def _identity(x, y, a, p0, p1):
    return x, 0.0


def _scalar_math():
    from . import _math

    def build():
        scalar = _math.compile_for(cuda.jit(device=True))
        scalar["_identity"] = cuda.jit(device=True)(_identity)
        return scalar
    return _built.get("scalar", build)


def kernel_set(name: str, *args):
    """The kernels of set ``name`` built for ``args`` (see ``_KERNEL_SETS`` at the end),
    compiled lazily once.  Every kernel this backend launches comes from here, under
    a key that rebuilds it, so that the CUDA compile check (``fastloss._cuda_check``)
    can rebuild each set a call launched and compile it for a real GPU."""
    return _built.get((name, *args), lambda: _KERNEL_SETS[name](*args))


def _get(loss: str):
    """(kernel, finish_sum, first_bad), compiled lazily once."""
    return (kernel_set("elementwise", loss),) + _shared_kernels()


def _shared_kernels():
    return kernel_set("shared")


def _as_device(array):
    if _simulated() or cuda.is_cuda_array(array) and hasattr(array, "copy_to_host"):
        return array
    # CuPy, torch: a view, no copy.  No sync on the array's stream: the public
    # functions order their stream and ours with events (fastloss._convert).
    return cuda.as_cuda_array(array, sync=False)


def _reduce(loss, x, y, w, a, p0, p1, want_out, want_grad, grad_scale, total_scale):
    """Run the elementwise kernel; (0-d device scalar, out, grad)."""
    kernel, finish_sum, _ = _get(loss)
    x, y = _as_device(x), _as_device(y)
    n = x.size
    dtype = np.dtype(x.dtype)
    dummy = cuda.device_array(1, dtype)
    out = cuda.device_array(n, dtype) if want_out else dummy
    grad = cuda.device_array(n, dtype) if want_grad else dummy
    blocks = _blocks(n)
    threads, _ = _geometry()
    partials = cuda.device_array(blocks, np.float64)
    result = cuda.device_array(1, dtype)
    kernel[blocks, threads](x.reshape(n), y.reshape(n),
                            dummy if w is None else _as_device(w).reshape(w.size),
                            dummy if a is None else _as_device(a).reshape(a.size),
                            w is not None, a is not None, p0, p1, out.reshape(out.size),
                            grad.reshape(grad.size), want_out, want_grad, grad_scale, partials)
    finish_sum[1, threads](partials, total_scale, result)
    return result.reshape(()), out if want_out else None, grad if want_grad else None


def elementwise(call):
    return _reduce(call.loss, call.input, call.target, call.weight, call.param, call.p0,
                   call.p1, call.want_out, call.want_grad, call.grad_scale, call.total_scale)


def sum_float64(array) -> float:
    """sum(array) in float64, brought to the host (used for weighted means)."""
    value, _, _ = _reduce("_identity", array, array, None, None, 0.0, 0.0, False, False, 1.0,
                          1.0)
    return float(value.copy_to_host()) if hasattr(value, "copy_to_host") else float(value)


def _first_bad(array, lo, hi, pm1) -> int:
    _, first_bad = _shared_kernels()
    array = _as_device(array)
    n = array.size
    blocks = _blocks(n)
    threads, _ = _geometry()
    partials = cuda.device_array(blocks, np.int64)
    first_bad[blocks, threads](array.reshape(n), lo, hi, pm1, partials)
    best = int(partials.copy_to_host().min()) if n else 0
    return -1 if best >= n else best


def first_outside(array, lo, hi) -> int:
    return _first_bad(array, float(lo), float(hi), False)


def first_not_pm1(array) -> int:
    return _first_bad(array, 0.0, 0.0, True)



# ---------------------------------------------------------------------------
# Row-wise (multi-class) kernels: ``rowwise(call)`` and ``scan_labels(...)``.
#
# Layout and formulas: kernels.RowwiseCall and notes/rowwise_spec.md; the
# per-row math comes from ._rowmath, the source the CPU kernels compile too.
# Two kernel shapes, picked by the shape alone:
#
# * a thread per row (S > 1, or C <= ROW_BLOCK_MIN_C): grid-stride over the
#   rows r = i*S + s, so adjacent threads take adjacent s (coalesced loads
#   where S > 1); each thread loops over its row's C classes;
# * a block per row (S == 1 and C > ROW_BLOCK_MIN_C): the block's threads
#   stride over the classes, the row max / sums are block reductions in the
#   fixed tree of _block_sum, and the same block writes the row's gradient.
#
# One source for both: each loss's row function is built with the reductions
# (identity or block tree) and the class stride (1 or blockDim) of its shape.
# The value: per-thread sums, a fixed tree per block, one partial per block,
# finish_sum in order -- a result that depends on the shape only.
# ---------------------------------------------------------------------------

import math  # noqa: E402

ROW_BLOCK_MIN_C = 64     # more classes than this, with S == 1: a block per row
_NINF = -math.inf


@cuda.jit(device=True)
def _block_max(shared, v):
    """The block's max of every thread's ``v`` (nan propagates), fixed tree."""
    tid = cuda.threadIdx.x
    shared[tid] = v
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step:
            b = shared[tid + step]
            if b > shared[tid] or b != b:
                shared[tid] = b
        cuda.syncthreads()
        step //= 2
    total = shared[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def _block_min(shared, v):
    """The block's min of every thread's ``v`` (no nan here), fixed tree."""
    tid = cuda.threadIdx.x
    shared[tid] = v
    cuda.syncthreads()
    step = cuda.blockDim.x // 2
    while step > 0:
        if tid < step and shared[tid + step] < shared[tid]:
            shared[tid] = shared[tid + step]
        cuda.syncthreads()
        step //= 2
    total = shared[0]
    cuda.syncthreads()
    return total


@cuda.jit(device=True)
def _same(shared, v):
    return v


def _row_math():
    from . import _rowmath
    return _built.get("rowmath", lambda: _rowmath.compile_for(cuda.jit(device=True)))


def _row_function(loss, per_block):
    """The device function computing one row of ``loss``: its value (every
    thread of a block gets it) and, with want_grad, its gradient entries for
    the classes c = c0, c0 + cstep, ... < C."""
    rm = _row_math()
    vmax, lse_of, ce_finish, smooth_target = (rm["vmax"], rm["lse_of"], rm["ce_finish"],
                                              rm["smooth_target"])
    ce_prob_finish, nll_finish, focal_finish = (rm["ce_prob_finish"], rm["nll_finish"],
                                                rm["focal_finish"])
    margin_term, margin_finish, crammer_finish = (rm["margin_term"], rm["margin_finish"],
                                                  rm["crammer_finish"])
    red_sum, red_max, red_min = (_block_sum, _block_max, _block_min) if per_block else \
        (_same, _same, _same)
    ninf = _NINF
    dev = cuda.jit(device=True)

    # one signature for every loss:
    # (x, t, w, al, has_w, has_al, wsum, C, S, r, base, ignore, eps, z, p0, p1,
    #  want_grad, gs, grad, shared, c0, cstep); element (i, c, s) at base + c*S

    @dev
    def zero_row(grad, C, S, base, c0, cstep):
        c = c0
        while c < C:
            grad[base + c * S] = 0
            c += cstep

    @dev
    def softmax_stats(x, C, S, base, shared, c0, cstep):
        """(row max, sum exp(x - max)) over the row."""
        m = ninf
        c = c0
        while c < C:
            m = vmax(m, float64(x[base + c * S]))
            c += cstep
        m = red_max(shared, m)
        se = 0.0
        c = c0
        while c < C:
            se += math.exp(float64(x[base + c * S]) - m)
            c += cstep
        return m, red_sum(shared, se)

    if loss in ("cross_entropy", "softmax_focal"):
        focal = loss == "softmax_focal"

        @dev
        def row(x, t, w, al, has_w, has_al, wsum, C, S, r, base, ignore, eps, z, p0, p1,
                want_grad, gs, grad, shared, c0, cstep):
            y = int64(t[r])
            if y == ignore:
                if want_grad:
                    zero_row(grad, C, S, base, c0, cstep)
                return 0.0
            m, se = softmax_stats(x, C, S, base, shared, c0, cstep)
            lse = lse_of(m, se)
            xy = float64(x[base + y * S])
            wy = float64(w[y]) if has_w else 1.0
            k = eps / C
            if focal:
                a = (float64(al[y]) if has_al else p0) * wy
                value, A, u = focal_finish(lse, se, xy, a, p1)
                B = 0.0
                k = 0.0
            else:
                swx = 0.0
                if eps != 0.0:
                    c = c0
                    while c < C:
                        swx += (float64(w[c]) if has_w else 1.0) * float64(x[base + c * S])
                        c += cstep
                    swx = red_sum(shared, swx)
                W = wsum[0] if has_w else float64(C)
                value, A, B = ce_finish(lse, se, xy, wy, W, swx, eps, z, C)
                u = 0.0
            if want_grad:
                c = c0
                while c < C:
                    p = math.exp(float64(x[base + c * S]) - lse)
                    if focal:
                        g = A * (-u if c == y else p)
                    else:
                        wc = float64(w[c]) if has_w else 1.0
                        g = A * p - B - k * wc if c == y else A * p - k * wc
                    grad[base + c * S] = gs * g
                    c += cstep
            return value

    elif loss == "cross_entropy_prob":
        @dev
        def row(x, t, w, al, has_w, has_al, wsum, C, S, r, base, ignore, eps, z, p0, p1,
                want_grad, gs, grad, shared, c0, cstep):
            m, se = softmax_stats(x, C, S, base, shared, c0, cstep)
            lse = lse_of(m, se)
            tw = 0.0
            twx = 0.0
            c = c0
            while c < C:
                a = (float64(w[c]) if has_w else 1.0) * smooth_target(float64(t[base + c * S]),
                                                                      eps, C)
                tw += a
                twx += a * float64(x[base + c * S])
                c += cstep
            tw = red_sum(shared, tw)
            twx = red_sum(shared, twx)
            value, A = ce_prob_finish(lse, tw, twx, z)
            if want_grad:
                c = c0
                while c < C:
                    a = (float64(w[c]) if has_w else 1.0) * smooth_target(
                        float64(t[base + c * S]), eps, C)
                    grad[base + c * S] = gs * (A * math.exp(float64(x[base + c * S]) - lse) - a)
                    c += cstep
            return value

    elif loss == "nll":
        @dev
        def row(x, t, w, al, has_w, has_al, wsum, C, S, r, base, ignore, eps, z, p0, p1,
                want_grad, gs, grad, shared, c0, cstep):
            y = int64(t[r])
            if want_grad:
                zero_row(grad, C, S, base, c0, cstep)
            if y == ignore:
                return 0.0
            value, G = nll_finish(float64(x[base + y * S]), float64(w[y]) if has_w else 1.0)
            if want_grad and c0 == y % cstep:   # the thread that owns class y
                grad[base + y * S] = gs * G
            return value

    elif loss == "multi_margin":
        @dev
        def row(x, t, w, al, has_w, has_al, wsum, C, S, r, base, ignore, eps, z, p0, p1,
                want_grad, gs, grad, shared, c0, cstep):
            y = int64(t[r])
            if y == ignore:
                if want_grad:
                    zero_row(grad, C, S, base, c0, cstep)
                return 0.0
            xy = float64(x[base + y * S])
            wy = float64(w[y]) if has_w else 1.0
            gq = gs * margin_finish(0.0, wy, C)[1]
            hs = 0.0
            gsum = 0.0
            c = c0
            while c < C:
                if c != y:
                    h, d = margin_term(float64(x[base + c * S]), xy, p0, p1)
                    hs += h
                    if want_grad:
                        grad[base + c * S] = gq * d
                        gsum += gq * d
                c += cstep
            hs = red_sum(shared, hs)
            if want_grad:
                gsum = red_sum(shared, gsum)
                if c0 == y % cstep:
                    grad[base + y * S] = -gsum
            return margin_finish(hs, wy, C)[0]

    elif loss == "crammer_singer":
        @dev
        def row(x, t, w, al, has_w, has_al, wsum, C, S, r, base, ignore, eps, z, p0, p1,
                want_grad, gs, grad, shared, c0, cstep):
            y = int64(t[r])
            if y == ignore:
                if want_grad:
                    zero_row(grad, C, S, base, c0, cstep)
                return 0.0
            xy = float64(x[base + y * S])
            m = ninf
            c = c0
            while c < C:
                if c != y:
                    m = vmax(m, float64(x[base + c * S]))
                c += cstep
            m = red_max(shared, m)
            value, active = crammer_finish(m, xy, p0)
            if want_grad:
                kk = float64(C)
                if active:   # the first c != y attaining m (the thread's first is its smallest)
                    c = c0
                    while c < C:
                        if c != y and float64(x[base + c * S]) == m:
                            kk = float64(c)
                            break
                        c += cstep
                    kk = red_min(shared, kk)
                c = c0
                while c < C:
                    g = 0.0
                    if value != value:     # a nan logit: a nan row gradient
                        g = math.nan
                    elif active:
                        if c == kk:
                            g = gs
                        elif c == y:
                            g = -gs
                    grad[base + c * S] = g
                    c += cstep
            return value

    else:
        raise ValueError(f"unknown row-wise kernel {loss!r}")
    return row


def _rowwise_kernel(loss, per_block):
    threads, _ = _geometry()
    row = _row_function(loss, per_block)

    @cuda.jit
    def kernel(x, t, w, al, has_w, has_al, wsum, n, C, S, ignore, eps, z, p0, p1, want_out,
               want_grad, gs, out, grad, partials):
        shared = cuda.shared.array(threads, float64)
        rows = n * S
        acc = 0.0
        if per_block:
            c0 = cuda.threadIdx.x
            cstep = cuda.blockDim.x
            r = cuda.blockIdx.x
            rstep = cuda.gridDim.x
        else:
            c0 = 0
            cstep = 1
            r = cuda.grid(1)
            rstep = cuda.gridsize(1)
        while r < rows:   # uniform across a block in the block-per-row shape
            i = r // S
            base = i * C * S + (r - i * S)
            value = row(x, t, w, al, has_w, has_al, wsum, C, S, r, base, ignore, eps, z, p0, p1,
                        want_grad, gs, grad, shared, c0, cstep)
            if c0 == 0:
                acc += value
                if want_out:
                    out[r] = value
            r += rstep
        total = _block_sum(shared, acc)
        if cuda.threadIdx.x == 0:
            partials[cuda.blockIdx.x] = total

    return kernel


def _build_row_shared():
    threads, _ = _geometry()

    @cuda.jit
    def weight_sum(w, result):
        # one block: sum of the class weights (W of the smoothing term), fixed tree
        shared = cuda.shared.array(threads, float64)
        s = 0.0
        for k in range(cuda.threadIdx.x, w.size, threads):
            s += float64(w[k])
        total = _block_sum(shared, s)
        if cuda.threadIdx.x == 0:
            result[0] = total

    @cuda.jit
    def scan(t, classes, ignore, w, has_w, bad, ws, cnt):
        # per block: the smallest bad index (or n), the weight sum and count of valid rows
        shared = cuda.shared.array(threads, float64)
        n = t.size
        best = float64(n)      # indices < 2**53: exact in float64
        s = 0.0
        k = 0.0
        i = cuda.grid(1)
        while i < n:
            y = int64(t[i])
            # a uint64 label >= 2**63 wraps to a negative y, maybe ignore itself:
            # t[i] != ignore compares the label's own value, so it is reported;
            # without an ignore_index, a label equal to the sentinel is too
            if y != ignore or t[i] != ignore or ignore == NO_IGNORE:
                if y < 0 or y >= classes:
                    if i < best:
                        best = float64(i)
                else:
                    k += 1.0
                    s += float64(w[y]) if has_w else 1.0
            i += cuda.gridsize(1)
        best = _block_min(shared, best)
        s = _block_sum(shared, s)
        k = _block_sum(shared, k)
        if cuda.threadIdx.x == 0:
            bad[cuda.blockIdx.x] = best
            ws[cuda.blockIdx.x] = s
            cnt[cuda.blockIdx.x] = k

    return weight_sum, scan


def _row_shared():
    return kernel_set("row_shared")


def rowwise(call):
    """(0-d device value = total_scale * sum of row values, per-row values or
    None, grad or None) for one kernels.RowwiseCall on the GPU."""
    if not labels_checked_first(call, scan_labels):
        return None, None, None
    loss = call.loss
    n, C, S = int(call.n), int(call.classes), int(call.inner)
    rows = n * S
    per_block = S == 1 and C > ROW_BLOCK_MIN_C
    kernel = kernel_set("rowwise", loss, per_block)
    finish_sum, _ = _shared_kernels()
    weight_sum, _ = _row_shared()
    x = _as_device(call.input)
    x = x.reshape(x.size)
    t = _as_device(call.target)
    t = t.reshape(t.size)
    dtype = np.dtype(x.dtype)
    dummy = cuda.device_array(1, dtype)
    has_w = call.weight is not None and loss != "crammer_singer"
    has_al = call.alpha is not None and loss == "softmax_focal"
    w = _as_device(call.weight).reshape(call.weight.size) if has_w else dummy
    al = _as_device(call.alpha).reshape(call.alpha.size) if has_al else dummy
    ignore = int(call.ignore_index)   # every label kernel (as the C kernels and the reference)
    threads, most = _geometry()
    wsum = cuda.device_array(1, np.float64)
    if has_w and loss == "cross_entropy" and call.smoothing != 0.0:
        weight_sum[1, threads](w, wsum)
    out = cuda.device_array(rows, dtype) if call.want_out else dummy
    grad = cuda.device_array(x.size, dtype) if call.want_grad else dummy
    blocks = max(1, min(most, rows)) if per_block else _blocks(rows)
    partials = cuda.device_array(blocks, np.float64)
    result = cuda.device_array(1, dtype)
    kernel[blocks, threads](x, t, w, al, has_w, has_al, wsum, n, C, S, ignore,
                            float(call.smoothing), float(call.z_loss), float(call.p0),
                            float(call.p1), bool(call.want_out), bool(call.want_grad),
                            float(call.grad_scale), out, grad, partials)
    finish_sum[1, threads](partials, float(call.total_scale), result)
    return (result.reshape(()), out if call.want_out else None,
            grad if call.want_grad else None)


def scan_labels(target, classes, ignore_index, weight):
    """(first_bad, weight_sum, count) of device labels, as host Python numbers
    (see numba_cpu.scan_labels; the same contract)."""
    _, scan = _row_shared()
    t = _as_device(target)
    n = t.size
    t = t.reshape(n)
    threads, _ = _geometry()
    blocks = _blocks(n)
    has_w = weight is not None
    w = _as_device(weight).reshape(weight.size) if has_w else cuda.device_array(1, np.float64)
    bad = cuda.device_array(blocks, np.float64)
    ws = cuda.device_array(blocks, np.float64)
    cnt = cuda.device_array(blocks, np.float64)
    if n:
        scan[blocks, threads](t, int(classes), int(ignore_index), w, has_w, bad, ws, cnt)
    else:
        return -1, 0.0, 0
    best = int(bad.copy_to_host().min())
    count = int(cnt.copy_to_host().sum())
    weight_sum = float(ws.copy_to_host().sum()) if has_w else float(count)
    return (-1 if best >= n else best), weight_sum, count


# ---- overlap (Dice family) ----
# ``overlap(call, finish) -> (stats, grad)`` for one kernels.OverlapCall on the
# GPU; the per-voxel math is ._overlapmath's (the CPU kernels' source too),
# called with tiles of one voxel.
#
# * stats: a grid of blocks over jobs; a job is one sample's chunk of
#   OVERLAP_VOXELS consecutive voxels (the geometry's; blocks loop over jobs,
#   grid-stride), the block's threads stride over the chunk's voxels, each
#   thread summing (I, P, T) of a class window of up to OVERLAP_WINDOW classes
#   in float64 registers / local memory.  The block then reduces its threads'
#   sums in a fixed shared-memory tree (OVERLAP_RK values a step) and writes
#   one (window, 3) partial per job; more than OVERLAP_WINDOW classes: the
#   block runs the chunk once per window (softmax still normalises over all C).
#   No float atomics: a fold kernel adds each sample's job partials in job
#   order, so the statistics depend on the shape and geometry only.  The
#   (N, C, 3) statistics (N*C*3 doubles) come to the host.
# * grad: coef (N*C*2 doubles) goes to the device; one thread per voxel
#   (grid-stride) recomputes the activation and writes the voxel's C values,
#   in the same class windows.
#
# Compile budget: stats and grad kernels once per input dtype, the fold kernel
# once; activation, squared and the target kind / dtype are runtime values (the
# target is read from one of four typed arrays, the others 1-element dummies).
# ---------------------------------------------------------------------------

OVERLAP_RK = 8   # sums reduced together in one step of the shared-memory tree


def _overlap_geometry():
    """(threads per block, most blocks, voxels per job, classes per window):
    small under the simulator (its windows of 4 exercise the many-class path)."""
    return (32, 2, 64, 4) if _simulated() else (256, 1024, 8192, 32)


def _build_overlap():
    from numba import uint8

    from . import _overlapmath

    om = _built.get("overlapmath", lambda: _overlapmath.compile_for(cuda.jit(device=True)))
    load_labels, activate, stats_tile, grad_tile = (om["load_labels"], om["activate"],
                                                    om["stats_tile"], om["grad_tile"])
    threads, _, vpj, W = _overlap_geometry()
    RK = OVERLAP_RK

    @cuda.jit
    def stats_kernel(x, t8, t32, t64, tf, labels, tsrc, n, C, S, act, squared, ignore, base,
                     jps, partials):
        sh = cuda.shared.array((RK, threads), float64)
        a1 = cuda.local.array(W, float64)
        a2 = cuda.local.array(W, float64)
        a3 = cuda.local.array(W, float64)
        pb = cuda.local.array(W, float64)
        mx = cuda.local.array(1, float64)
        se = cuda.local.array(1, float64)
        tb = cuda.local.array(1, float64)
        lab = cuda.local.array(1, int64)
        keep = cuda.local.array(1, uint8)
        tid = cuda.threadIdx.x
        keep[0] = 1
        lab[0] = 0
        nw = (C + W - 1) // W
        K = 3 * C
        job = cuda.blockIdx.x
        while job < n * jps:   # uniform across the block
            i = job // jps
            s_lo = (job - i * jps) * vpj
            s_hi = min(s_lo + vpj, S)
            for w in range(nw):
                c_lo = w * W
                nc = min(W, C - c_lo)
                for k in range(nc):
                    a1[k] = 0.0
                    a2[k] = 0.0
                    a3[k] = 0.0
                s = s_lo + tid
                while s < s_hi:
                    xb = i * C * S + s
                    if labels:
                        load_labels(t8, t32, t64, tsrc, ignore, i * S + s, 1, lab, keep)
                    activate(x, xb, S, C, c_lo, nc, 1, act, mx, se, pb, 1)
                    stats_tile(pb, 1, 1, c_lo, nc, xb, S, labels, lab, keep, base, t8, tf,
                               tsrc, squared, tb, a1, a2, a3)
                    s += threads
                # the block's sums of the 3*nc values (class k, q at 3k + q),
                # OVERLAP_RK at a time, in a fixed tree
                for r0 in range(0, 3 * nc, RK):
                    for k in range(RK):
                        r = r0 + k
                        v = 0.0
                        if r < 3 * nc:
                            q = r % 3
                            v = a1[r // 3] if q == 0 else (a2[r // 3] if q == 1 else a3[r // 3])
                        sh[k, tid] = v
                    cuda.syncthreads()
                    step = threads // 2
                    while step > 0:
                        if tid < step:
                            for k in range(RK):
                                sh[k, tid] += sh[k, tid + step]
                        cuda.syncthreads()
                        step //= 2
                    if tid < RK and r0 + tid < 3 * nc:
                        partials[job * K + 3 * c_lo + r0 + tid] = sh[tid, 0]
                    cuda.syncthreads()
            job += cuda.gridDim.x

    @cuda.jit
    def fold_kernel(partials, jps, K, total, stats):
        # stats[i, r] = sum over the sample's jobs, in job order
        e = cuda.grid(1)
        while e < total:
            i = e // K
            r = e - i * K
            s = 0.0
            for k in range(jps):
                s += partials[(i * jps + k) * K + r]
            stats[e] = s
            e += cuda.gridsize(1)

    @cuda.jit
    def grad_kernel(x, t8, t32, t64, tf, labels, tsrc, n, C, S, act, squared, ignore, base,
                    coef, grad):
        pb = cuda.local.array(W, float64)
        mx = cuda.local.array(1, float64)
        se = cuda.local.array(1, float64)
        tb = cuda.local.array(1, float64)
        gb = cuda.local.array(1, float64)
        dot = cuda.local.array(1, float64)
        lab = cuda.local.array(1, int64)
        keep = cuda.local.array(1, uint8)
        keep[0] = 1
        lab[0] = 0
        v = cuda.grid(1)
        while v < n * S:
            i = v // S
            xb = i * C * S + (v - i * S)
            if labels:
                load_labels(t8, t32, t64, tsrc, ignore, v, 1, lab, keep)
            grad_tile(x, xb, S, C, W, 1, 1, act, squared, labels, lab, keep, base, t8, tf, tsrc,
                      coef, i * C * 2, mx, se, pb, tb, gb, dot, grad)
            v += cuda.gridsize(1)

    return stats_kernel, fold_kernel, grad_kernel


def _overlap_targets(call, dtype, size_labels, size_mask):
    """(t8, t32, t64, tf, tsrc, labels): the device target in the array its dtype
    picks, 1-element device dummies for the others."""
    from . import _overlapmath as om

    labels = call.target_kind == "labels"
    if not labels and call.target_kind != "mask":
        raise ValueError(f"target_kind: expected 'labels' or 'mask', got {call.target_kind!r}")
    t = _as_device(call.target)
    t = t.reshape(t.size)
    tdt = np.dtype(t.dtype)
    if tdt == np.bool_:
        t = t.view(np.uint8)
        tdt = np.dtype(np.uint8)
    want = size_labels if labels else size_mask
    if t.size != want:
        raise ValueError(f"target: expected {want} elements ({call.target_kind}), got {t.size}")
    if tdt == np.uint8:
        tsrc = om.T_U8
    elif labels and tdt == np.int32:
        tsrc = om.T_I32
    elif labels and tdt == np.int64:
        tsrc = om.T_I64
    elif not labels and tdt == dtype:
        tsrc = om.T_FLOAT
    else:
        raise TypeError(f"target: {call.target_kind} of dtype {tdt} not supported by the "
                        f"overlap kernels (labels: int32, int64, uint8; masks: uint8, bool or "
                        f"the input's dtype {dtype})")
    arrays = [cuda.device_array(1, d) for d in (np.uint8, np.int32, np.int64, dtype)]
    arrays[tsrc] = t
    return (*arrays, tsrc, labels)


def overlap(call, finish):
    """(stats, grad) for one kernels.OverlapCall on the GPU: host float64
    (N, C, 3) sums (I, P, T), then, when call.want_grad, the gradient (a flat
    device array like the input) from ``coef = finish(stats)``."""
    from . import _overlapmath as om

    x = _as_device(call.input)
    x = x.reshape(x.size)
    dtype = np.dtype(x.dtype)
    n, C, S, act = om.check_call(call, dtype, x.size)
    t8, t32, t64, tf, tsrc, labels = _overlap_targets(call, dtype, n * S, n * C * S)
    threads, most, vpj, _ = _overlap_geometry()
    stats_kernel, fold_kernel, grad_kernel = kernel_set("overlap")
    args = (x, t8, t32, t64, tf, bool(labels), int(tsrc), n, C, S, int(act), bool(call.squared),
            int(call.ignore_index), int(call.label_base))
    stats = np.zeros((n, C, 3), np.float64)
    if n * S and C:
        jps = (S + vpj - 1) // vpj
        jobs = n * jps
        K = 3 * C
        partials = cuda.device_array(jobs * K, np.float64)
        stats_kernel[min(most, jobs), threads](*args, jps, partials)
        d_stats = cuda.device_array(n * K, np.float64)
        fold_kernel[_blocks(n * K), threads](partials, jps, K, n * K, d_stats)
        stats = d_stats.copy_to_host().reshape(n, C, 3)
    if not call.want_grad:
        return stats, None
    coef = np.ascontiguousarray(finish(stats), dtype=np.float64)
    if coef.shape != (n, C, 2):
        raise ValueError(f"finish: expected coefficients of shape {(n, C, 2)}, got "
                         f"{coef.shape}")
    grad = cuda.device_array(x.size, dtype)
    if n * S and C:
        grad_kernel[_blocks(n * S), threads](*args, cuda.to_device(coef.reshape(-1)), grad)
    return stats, grad


# ---- boxes ----
# Box regression losses: ``boxes(call)`` (kernels.BoxCall).  The per-box math
# comes from ._boxmath, the same source as the CPU kernels.  Grid-stride loop
# over boxes, one thread a box; each block reduces its threads' float64 sums
# in a fixed tree (the order of _block_sum) and writes one partial;
# finish_sum adds the partials in a fixed order.  No float atomics: the total
# depends only on n and the geometry (fixed by n).  One kernel for the three
# losses (the loss is an argument).  The degenerate-box check rides along: each
# thread notes the first bad box of each argument it meets, and the same tree
# takes their minimum per block (the host takes the minimum over the blocks).


def _build_box_kernel():
    from . import _boxmath

    threads, _ = _geometry()
    math = _boxmath.compile_for(cuda.jit(device=True))
    box_loss = math["box_loss"]

    @cuda.jit
    def kernel(kind, b1, b2, n, eps, eps_alpha, out, grad, want_out, want_grad, gs, check,
               partials, bad):
        shared = cuda.shared.array(threads, float64)
        first1 = cuda.shared.array(threads, int64)
        first2 = cuda.shared.array(threads, int64)
        tid = cuda.threadIdx.x
        s = float64(0.0)
        bad1 = n
        bad2 = n
        i = cuda.grid(1)
        while i < n:
            j = 4 * i
            x1, y1 = float64(b1[j]), float64(b1[j + 1])
            x2, y2 = float64(b1[j + 2]), float64(b1[j + 3])
            X1, Y1 = float64(b2[j]), float64(b2[j + 1])
            X2, Y2 = float64(b2[j + 2]), float64(b2[j + 3])
            if check:     # a thread's boxes come in increasing order: the first is its least
                if bad1 == n and (x2 < x1 or y2 < y1):
                    bad1 = i
                if bad2 == n and (X2 < X1 or Y2 < Y1):
                    bad2 = i
            value, g1, g2, g3, g4 = box_loss(kind, x1, y1, x2, y2, X1, Y1, X2, Y2, eps,
                                             eps_alpha)
            s += float64(value)
            if want_out:
                out[i] = value
            if want_grad:
                grad[j] = gs * g1
                grad[j + 1] = gs * g2
                grad[j + 2] = gs * g3
                grad[j + 3] = gs * g4
            i += cuda.gridsize(1)
        shared[tid] = s
        first1[tid] = bad1
        first2[tid] = bad2
        cuda.syncthreads()
        step = threads // 2
        while step > 0:
            if tid < step:
                shared[tid] += shared[tid + step]
                if first1[tid + step] < first1[tid]:
                    first1[tid] = first1[tid + step]
                if first2[tid + step] < first2[tid]:
                    first2[tid] = first2[tid + step]
            cuda.syncthreads()
            step //= 2
        if tid == 0:
            partials[cuda.blockIdx.x] = shared[0]
            bad[2 * cuda.blockIdx.x] = first1[0]
            bad[2 * cuda.blockIdx.x + 1] = first2[0]

    return kernel


def _flat_device(array):
    array = _as_device(array)
    return array.reshape(array.size)


def boxes(call):
    from . import _boxmath

    kernel = kernel_set("boxes")
    finish_sum, _ = _shared_kernels()
    b1, b2 = _flat_device(call.boxes1), _flat_device(call.boxes2)
    n = call.n
    dtype = np.dtype(b1.dtype)
    dummy = cuda.device_array(1, dtype)
    out = cuda.device_array(n, dtype) if call.want_out else dummy
    grad = cuda.device_array(4 * n, dtype) if call.want_grad else dummy
    blocks = _blocks(n)
    threads, _ = _geometry()
    partials = cuda.device_array(blocks, np.float64)
    bad = cuda.device_array(2 * blocks, np.int64)
    result = cuda.device_array(1, dtype)
    kernel[blocks, threads](np.int64(_boxmath.KINDS[call.loss]), b1, b2, np.int64(n),
                            float(call.eps), float(call.eps_alpha), out, grad,
                            bool(call.want_out), bool(call.want_grad), float(call.grad_scale),
                            bool(call.check), partials, bad)
    if call.check:
        first = bad.copy_to_host().reshape(blocks, 2).min(axis=0)
        call.bad1, call.bad2 = (int(f) if f < n else -1 for f in first)
    finish_sum[1, threads](partials, float(call.total_scale), result)
    return (result.reshape(()), out if call.want_out else None,
            grad if call.want_grad else None)


def box_values(array, index: int) -> np.ndarray:
    """The four coordinates of box ``index`` of a device array of boxes, on the host
    (for error messages)."""
    return _flat_device(array)[4 * index:4 * index + 4].copy_to_host()


# ---- pairwise ----
# The pairwise (representation-learning) kernels of kernels.PAIRWISE on the
# GPU: the pair_* kernels, triplet_rows, info_nce_paired and the row glue
# (normalize_rows, ..., pair_rows_grad).  The per-pair / per-row math is
# ._pairmath's, the source the CPU kernels compile too.
#
# pair_* kernels: a 2-D grid of blocks, x: a row tile of TR rows of a,
# y: a column split (a range of consecutive column tiles of b, their number
# fixed by the shape).  For each of its column tiles in order, the block
# computes the Gram tile (in the dtype, d in order) into shared memory: the
# tile's rows of a and b staged through shared memory a few widths at a time,
# each thread summing its fixed entries in registers; then thread r < TR
# walks row r of the tile in column order with the ._pairmath tile-row
# function, carrying its row's float64 state (lse, sums, argmax / argmin) in
# registers (pair_lse / pair_softmax_product: the thread first scales its tile
# row in the dtype, s = (scale rs_i cs_j) g, the factor computed in float64 and
# rounded to the dtype, as C; ones for absent row_scale / col_scale).
# The product kernels replace the tile by the weights (P or W, in
# the dtype) and multiply it with the b tile: thread-owned entries (r, d) of
# the row tile, the tile's sum over columns in the dtype, added into a float64
# per-split accumulator (S, Na, D).  Each split writes its own partials (no
# atomics), and a fold kernel combines the splits in split order (lse merged,
# sums added, ties of argmax / argmin to the earlier split), so every result
# depends on the shape only (and on the geometry, fixed per build: small under
# the simulator, where two splits exercise the fold).  Nothing of size
# (Na, Nb) is allocated but pair_matrix's output.
#
# Row kernels and row glue: one thread per row (grid-stride), or per element
# (scaled_copy, the per-element gradient of pair_rows_grad).  pair_rows_grad
# is a gather: the host builds the CSR of each row's incident pairs (a stable
# argsort of the 2K pair ends), a kernel computes each pair's factor, and one
# thread per output element (row, d) adds its row's incident contributions in
# CSR order in float64: no atomics.
#
# Compile budget: the tile kernels are built once per input dtype (their shared
# tile and accumulators are typed); the mode (which pair_* function) and the
# metric are run-time codes.
# ---------------------------------------------------------------------------

P_MATRIX, P_LSE, P_SOFTMAX, P_STATS, P_GRAD, P_HARDEST = range(6)
PAIR_PARTIAL_BYTES = 1 << 28   # most bytes of the product kernels' per-split accumulators


def _pair_geometry():
    """(threads per block, rows per tile, columns per tile, target number of blocks, widths
    per staged chunk of the Gram tile).  Tiles of TR x TC entries, TR*TC a multiple of the
    threads; the shared memory (the tile and the staged chunks, float64: 40.6 KiB) stays
    under the 48 KiB of a static allocation."""
    return (8, 8, 8, 2, 4) if _simulated() else (256, 64, 64, 512, 8)


def _pair_math():
    from . import _pairmath
    return _built.get("pairmath", lambda: _pairmath.compile_for(cuda.jit(device=True)))


def _pair_splits(na, nb, row_bytes=0):
    """(row tiles, splits S, column tiles per split, column tiles) for an (na, nb) pass."""
    threads, TR, TC, target, _ = _pair_geometry()
    rt = (na + TR - 1) // TR
    ntc = (nb + TC - 1) // TC
    S = 2 if _simulated() else (target + rt - 1) // rt
    if row_bytes:
        S = min(S, max(1, PAIR_PARTIAL_BYTES // max(1, na * row_bytes)))
    S = max(1, min(S, ntc))
    tps = (ntc + S - 1) // S
    return rt, (ntc + tps - 1) // tps, tps, ntc


def _build_pair_tiles(dt):
    """The tile kernels for input dtype ``dt`` (a numba type)."""
    from . import _pairmath

    pm = _pair_math()
    matrix_pair = pm["pair_distance"]
    lse_tile, softmax_tile, stats_tile = pm["lse_tile"], pm["softmax_tile"], pm["stats_tile"]
    weight_tile, hardest_tile = pm["weight_tile"], pm["hardest_tile"]
    scale_tile = pm["scale_tile"]
    lse_merge, lse_finish, better = pm["lse_merge"], pm["lse_finish"], pm["better"]
    threads, TR, TC, _, DK = _pair_geometry()
    EPT = (TR * TC) // threads      # tile entries per thread
    # (a shared array's shape must be a compile-time constant: DK + 1 written in the
    # kernel is a run-time int64 there, which the simulator accepts and NVVM does not)
    DK_PADDED = DK + 1
    COSINE = _pairmath.COSINE
    NINF = _pairmath.NINF

    @cuda.jit(device=True)
    def stage(dst, x, row0, nrows, d0, dk, cap):
        """dst[r, q] = x[row0 + r, d0 + q] for r < nrows, q < dk: a slice of rows
        into shared memory, the block's threads in turn (cap: dst's rows)."""
        e = cuda.threadIdx.x
        while e < cap * DK:
            r = e // DK
            q = e - r * DK
            if r < nrows and q < dk:
                dst[r, q] = x[row0 + r, d0 + q]
            e += threads

    @cuda.jit(device=True)
    def owned_entry(k):
        """(row, column) in the tile of this thread's k-th entry (entries tid + k * threads)."""
        e = cuda.threadIdx.x + k * threads
        r = e // TC
        return r, e - r * TC

    @cuda.jit(device=True)
    def gram(G, a, b, r0, nr, c0, nc):
        """G[r, j] = a[r0 + r] . b[c0 + j] in the dtype, d in order: the rows of a and b
        staged through shared memory DK widths at a time (coalesced loads), thread tid
        owning the entries tid + k * threads of the tile, their sums in registers."""
        As = cuda.shared.array((TR, DK), dt)
        Bs = cuda.shared.array((TC, DK_PADDED), dt)  # padded: no bank conflicts
        acc = cuda.local.array(EPT, dt)
        D = a.shape[1]
        for k in range(EPT):
            acc[k] = 0.0
        for d0 in range(0, D, DK):
            dk = min(DK, D - d0)
            stage(As, a, r0, nr, d0, dk, TR)
            stage(Bs, b, c0, nc, d0, dk, TC)
            cuda.syncthreads()
            for k in range(EPT):
                r, j = owned_entry(k)
                if r < nr and j < nc:
                    g = acc[k]
                    for q in range(dk):
                        g += As[r, q] * Bs[j, q]
                    acc[k] = g
            cuda.syncthreads()
        for k in range(EPT):
            r, j = owned_entry(k)
            if r < nr and j < nc:
                G[r, j] = acc[k]

    @cuda.jit
    def matrix_kernel(a, b, same, metric, nA, nB, out):
        Na, D = a.shape
        Nb = b.shape[0]
        e = cuda.grid(1)
        while e < Na * Nb:
            i = e // Nb
            j = e - i * Nb
            g = dt(0.0)
            for d in range(D):
                g += a[i, d] * b[j, d]
            v = matrix_pair(float64(g), nA[i], nB[j], metric)
            out[i, j] = 0.0 if (same and i == j) else v
            e += cuda.gridsize(1)

    @cuda.jit(device=True)
    def block_tiles(Na, tps, ntc):
        """This block's row tile (r0, nr), split s and column tiles [t_lo, t_hi), and
        this thread's row gi (mine: within the tile)."""
        r0 = cuda.blockIdx.x * TR
        nr = min(TR, Na - r0)
        s = cuda.blockIdx.y
        t_lo = s * tps
        return r0, nr, s, t_lo, min(t_lo + tps, ntc), r0 + cuda.threadIdx.x, \
            cuda.threadIdx.x < nr

    @cuda.jit
    def rows_kernel(mode, a, b, excl, metric, scale, rsc, csc, pm_, nm_, lab, nA, nB, tps, ntc,
                    parts, iparts):
        G = cuda.shared.array((TR, TC), dt)
        cf = cuda.local.array(1, dt)
        tid = cuda.threadIdx.x
        Nb = b.shape[0]
        r0, nr, s, t_lo, t_hi, gi, mine = block_tiles(a.shape[0], tps, ntc)
        labelled = mode != P_LSE
        yi = lab[gi] if (mine and labelled) else 0
        ni = nA[gi] if mine else 0.0
        fi = scale * rsc[gi] if (mine and not labelled) else 0.0
        v0 = NINF if mode == P_LSE else 0.0
        v1 = 0.0
        v2 = 0.0
        v3 = 0.0
        j0 = -1
        j1 = -1
        for t in range(t_lo, t_hi):
            c0 = t * TC
            nc = min(TC, Nb - c0)
            gram(G, a, b, r0, nr, c0, nc)
            cuda.syncthreads()
            if mine:
                if mode == P_LSE:   # s = (scale rsc_i csc_j) g in the dtype, row tid only
                    scale_tile(G, tid, nc, c0, fi, csc, cf)
                    v0, v1 = lse_tile(G, tid, nc, c0, gi, excl, 1.0, v0, v1)
                elif mode == P_STATS:
                    v0, v1, v2, v3 = stats_tile(G, tid, nc, c0, gi, ni, nB, yi, lab, metric, pm_,
                                                nm_, v0, v1, v2, v3)
                else:
                    v0, j0, v2, j1 = hardest_tile(G, tid, nc, c0, gi, ni, nB, yi, lab, metric,
                                                  v0, j0, v2, j1)
            cuda.syncthreads()
        if mine:
            parts[s, gi, 0] = v0
            parts[s, gi, 1] = v1
            parts[s, gi, 2] = v2
            parts[s, gi, 3] = v3
            iparts[s, gi, 0] = j0
            iparts[s, gi, 1] = j1

    @cuda.jit
    def rows_fold(mode, S, parts, iparts, res, idx):
        i = cuda.grid(1)
        while i < parts.shape[1]:
            if mode == P_LSE:
                m = NINF
                sm = 0.0
                for k in range(S):
                    m, sm = lse_merge(m, sm, parts[k, i, 0], parts[k, i, 1])
                res[i, 0] = lse_finish(m, sm)
            elif mode == P_STATS:
                for c in range(4):
                    v = 0.0
                    for k in range(S):
                        v += parts[k, i, c]
                    res[i, c] = v
            else:
                bp = 0.0
                ip = -1
                bn = 0.0
                jn = -1
                for k in range(S):
                    if iparts[k, i, 0] >= 0 and better(parts[k, i, 0], bp, ip, True):
                        bp = parts[k, i, 0]
                        ip = iparts[k, i, 0]
                    if iparts[k, i, 1] >= 0 and better(parts[k, i, 2], bn, jn, False):
                        bn = parts[k, i, 2]
                        jn = iparts[k, i, 1]
                idx[i, 0] = ip
                idx[i, 1] = jn
            i += cuda.gridsize(1)

    @cuda.jit
    def prod_kernel(mode, a, b, excl, metric, scale, rs, cs, rsc, csc, pm_, nm_, cpos, cneg, lab,
                    nA, nB, tps, ntc, acc, sw):
        G = cuda.shared.array((TR, TC), dt)
        cf = cuda.local.array(1, dt)
        tid = cuda.threadIdx.x
        D = a.shape[1]
        Nb = b.shape[0]
        r0, nr, s, t_lo, t_hi, gi, mine = block_tiles(a.shape[0], tps, ntc)
        softmax = mode == P_SOFTMAX
        yi = lab[gi] if (mine and not softmax) else 0
        ni = nA[gi] if mine else 0.0
        rsi = rs[gi] if (mine and softmax) else 0.0
        fi = scale * rsc[gi] if (mine and softmax) else 0.0
        swacc = 0.0
        for t in range(t_lo, t_hi):
            c0 = t * TC
            nc = min(TC, Nb - c0)
            gram(G, a, b, r0, nr, c0, nc)
            cuda.syncthreads()
            if mine:
                if softmax:     # s = (scale rsc_i csc_j) g in the dtype, row tid only
                    scale_tile(G, tid, nc, c0, fi, csc, cf)
                    softmax_tile(G, tid, nc, c0, gi, excl, 1.0, rsi, cs)
                else:
                    swacc += weight_tile(G, tid, nc, c0, gi, ni, nB, yi, lab, metric, pm_, nm_,
                                         cpos, cneg)
            cuda.syncthreads()
            e = tid
            while e < nr * D:      # entry (r, d) of the row tile's product
                r = e // D
                d = e - r * D
                tp = dt(0.0)
                for j in range(nc):
                    tp += G[r, j] * b[c0 + j, d]
                if t == t_lo:
                    acc[s, r0 + r, d] = float64(tp)
                else:
                    acc[s, r0 + r, d] += float64(tp)
                e += cuda.blockDim.x
            cuda.syncthreads()
        if mine:
            sw[s, gi] = swacc

    @cuda.jit
    def prod_fold(mode, S, metric, gain, a, acc, sw, out):
        Na, D = a.shape
        e = cuda.grid(1)
        while e < Na * D:
            i = e // D
            d = e - i * D
            v = 0.0
            for k in range(S):
                v += acc[k, i, d]
            if mode == P_SOFTMAX:
                out[i, d] = float64(out[i, d]) + gain * v
            elif metric == COSINE:
                out[i, d] = -v
            else:
                w = 0.0
                for k in range(S):
                    w += sw[k, i]
                out[i, d] = float64(a[i, d]) * w - v
            e += cuda.gridsize(1)

    return matrix_kernel, rows_kernel, rows_fold, prod_kernel, prod_fold


def _build_pair_rows():
    """The dtype-generic row kernels (Numba's dispatch compiles them per dtype)."""
    from . import _pairmath

    pm = _pair_math()
    row_sqnorm, row_dot, rows_distance = pm["row_sqnorm"], pm["row_dot"], pm["rows_distance"]
    normalize_row, normalize_backward_row = pm["normalize_row"], pm["normalize_backward_row"]
    triplet_row, info_nce_row = pm["triplet_row"], pm["info_nce_row"]
    EUCLIDEAN, SQEUCLIDEAN, COSINE = _pairmath.EUCLIDEAN, _pairmath.SQEUCLIDEAN, _pairmath.COSINE

    @cuda.jit
    def sqnorms(x, out):
        i = cuda.grid(1)
        while i < x.shape[0]:
            out[i] = row_sqnorm(x, i, x.shape[1])
            i += cuda.gridsize(1)

    @cuda.jit
    def normalize(x, eps, out, nrm):
        i = cuda.grid(1)
        while i < x.shape[0]:
            nrm[i] = normalize_row(x, i, x.shape[1], eps, out)
            i += cuda.gridsize(1)

    @cuda.jit
    def normalize_backward(g, x, nrm, eps, raw, dx):
        # one thread per row: it reads its row of g before writing it (dx may be g)
        i = cuda.grid(1)
        while i < g.shape[0]:
            normalize_backward_row(g, x, i, g.shape[1], nrm[i], eps, raw, dx)
            i += cuda.gridsize(1)

    @cuda.jit
    def dots(a, b, out):
        i = cuda.grid(1)
        while i < a.shape[0]:
            out[i] = row_dot(a, b, i, a.shape[1])
            i += cuda.gridsize(1)

    @cuda.jit
    def scaled(out, a, coef, per_row, c):
        N, D = a.shape
        e = cuda.grid(1)
        while e < N * D:
            i = e // D
            d = e - i * D
            ci = coef[i] if per_row else c
            out[i, d] = ci * float64(a[i, d])
            e += cuda.gridsize(1)

    @cuda.jit
    def distances(x, pi, pj, metric, out):
        k = cuda.grid(1)
        while k < pi.size:
            out[k] = rows_distance(x, pi[k], pj[k], x.shape[1], metric)
            k += cuda.gridsize(1)

    @cuda.jit
    def factors(x, pi, pj, coef, metric, fac):
        # d d / d x_u = fac (x_u - x_v) (euclidean, sqeuclidean) or fac x_v (cosine)
        k = cuda.grid(1)
        while k < pi.size:
            if metric == EUCLIDEAN:
                dk = rows_distance(x, pi[k], pj[k], x.shape[1], metric)
                fac[k] = coef[k] / dk if dk > 0.0 else 0.0
            elif metric == SQEUCLIDEAN:
                fac[k] = 2.0 * coef[k]
            else:
                fac[k] = -coef[k]
            k += cuda.gridsize(1)

    @cuda.jit
    def gather_grad(x, pi, pj, K, fac, rowptr, ends, metric, grad):
        # grad[r, d]: row r's incident pair ends in CSR order, float64
        N, D = x.shape
        e = cuda.grid(1)
        while e < N * D:
            r = e // D
            d = e - r * D
            v = 0.0
            xr = float64(x[r, d])
            for q in range(rowptr[r], rowptr[r + 1]):
                end = ends[q]
                k = end if end < K else end - K
                other = pj[k] if end < K else pi[k]
                xo = float64(x[other, d])
                if metric == COSINE:
                    v += fac[k] * xo
                else:
                    v += fac[k] * (xr - xo)
            grad[r, d] = v
            e += cuda.gridsize(1)

    @cuda.jit
    def triplet(an, po, ne, margin, p, eps, swap, want_grad, gain, loss, ga, gp, gn):
        i = cuda.grid(1)
        while i < an.shape[0]:
            loss[i] = triplet_row(an, po, ne, i, an.shape[1], margin, p, eps, swap, want_grad,
                                  gain, ga, gp, gn)
            i += cuda.gridsize(1)

    @cuda.jit
    def info_nce(q, k, ne, scale, want_grad, gain, loss, gq, gk, gneg, acc):
        i = cuda.grid(1)
        while i < q.shape[0]:
            loss[i] = info_nce_row(q, k, ne, i, q.shape[1], ne.shape[1], scale, want_grad, gain,
                                   gq, gk, gneg, acc, i if want_grad else 0)
            i += cuda.gridsize(1)

    return dict(sqnorms=sqnorms, normalize=normalize, normalize_backward=normalize_backward,
                dots=dots, scaled=scaled, distances=distances, factors=factors,
                gather_grad=gather_grad, triplet=triplet, info_nce=info_nce)


def _pair_rows_kernels():
    return kernel_set("pair_rows")


def _pair_tile_kernels(dtype):
    return kernel_set("pair_tiles", np.dtype(dtype).name)


def _pair_device(name, x, ndim=2):
    """x as a device array of float32 / float64 with ``ndim`` dims, the last >= 1."""
    x = _as_device(x)
    dtype = np.dtype(x.dtype)
    if dtype not in (np.float32, np.float64):
        raise TypeError(f"{name}: expected float32 or float64, got {dtype}")
    if x.ndim != ndim or x.shape[ndim - 1] < 1:   # (the simulator's shapes: no [-1])
        raise ValueError(f"{name}: expected {ndim} dimensions, the last >= 1, got shape "
                         f"{tuple(x.shape)}")
    return x


def _pair_operands(a, b):
    same = b is a
    a = _pair_device("a", a)
    b = a if same else _pair_device("b", b)
    if np.dtype(b.dtype) != np.dtype(a.dtype):
        raise TypeError(f"b: expected {np.dtype(a.dtype)} like a, got {np.dtype(b.dtype)}")
    if b.shape[1] != a.shape[1]:
        raise ValueError(f"b: expected width {a.shape[1]} like a, got {b.shape[1]}")
    return a, b, same


def _host_vector(name, v, n, dtype):
    """A host copy of an O(N) vector (host or device) as ``dtype``, of shape (n,)."""
    if hasattr(v, "copy_to_host"):
        v = v.copy_to_host()
    elif hasattr(v, "__cuda_array_interface__"):
        v = cuda.as_cuda_array(v).copy_to_host()
    v = np.ascontiguousarray(v, dtype=dtype)
    if n is not None and v.shape != (n,):
        raise ValueError(f"{name}: expected shape ({n},), got {v.shape}")
    return v


def _pair_norms(x):
    out = cuda.device_array(x.shape[0], np.float64)
    if x.shape[0]:
        threads, _ = _geometry()
        _pair_rows_kernels()["sqnorms"][_blocks(x.shape[0]), threads](x, out)
    return out


def _pair_rows_pass(mode, a, b, same, excl=False, metric=0, scale=0.0, pm_=0.0, nm_=0.0,
                    lab=None, rsc=None, csc=None):
    """(res (Na, 4) float64, idx (Na, 2) int64) on the host for LSE / STATS / HARDEST."""
    na, nb = a.shape[0], b.shape[0]
    res = np.zeros((na, 4))
    idx = np.full((na, 2), -1, np.int64)
    if mode == P_LSE:
        res[:, 0] = -np.inf
    if na == 0 or nb == 0:
        return res, idx
    threads, _ = _geometry()
    _, rows_kernel, rows_fold, _, _ = _pair_tile_kernels(a.dtype)
    rt, S, tps, ntc = _pair_splits(na, nb)
    nA = _pair_norms(a)
    nB = nA if same else _pair_norms(b)
    d_lab = cuda.to_device(lab if lab is not None else np.zeros(1, np.int64))
    parts = cuda.device_array((S, na, 4), np.float64)
    iparts = cuda.device_array((S, na, 2), np.int64)
    d_rsc = cuda.to_device(rsc if rsc is not None else np.ones(1))
    d_csc = cuda.to_device(csc if csc is not None else np.ones(1))
    rows_kernel[(rt, S), threads](np.int64(mode), a, b, bool(excl), np.int64(metric),
                                   float(scale), d_rsc, d_csc, float(pm_), float(nm_), d_lab,
                                   nA, nB,
                                   np.int64(tps), np.int64(ntc), parts, iparts)
    d_res = cuda.device_array((na, 4), np.float64)
    d_idx = cuda.device_array((na, 2), np.int64)
    rows_fold[_blocks(na), threads](np.int64(mode), np.int64(S), parts, iparts, d_res, d_idx)
    return d_res.copy_to_host(), d_idx.copy_to_host()


def _pair_prod_pass(mode, a, b, excl, metric, scale, pm_, nm_, cpos, cneg, rs, cs, lab, gain,
                    out, rsc=None, csc=None):
    """The product kernels: out += gain * P b (SOFTMAX) or out = the contrastive gradient."""
    na, nb = a.shape[0], b.shape[0]
    D = a.shape[1]
    if na == 0:
        return
    threads, _ = _geometry()
    _, _, _, prod_kernel, prod_fold = _pair_tile_kernels(a.dtype)
    if nb == 0:
        S, acc, sw = 1, cuda.to_device(np.zeros((1, na, D))), cuda.to_device(np.zeros((1, na)))
    else:
        rt, S, tps, ntc = _pair_splits(na, nb, D * 8)
        nA = _pair_norms(a)
        nB = nA if b is a else _pair_norms(b)
        d_lab = cuda.to_device(lab if lab is not None else np.zeros(1, np.int64))
        d_rs = cuda.to_device(rs if rs is not None else np.zeros(1))
        d_cs = cuda.to_device(cs if cs is not None else np.zeros(1))
        d_rsc = cuda.to_device(rsc if rsc is not None else np.ones(1))
        d_csc = cuda.to_device(csc if csc is not None else np.ones(1))
        acc = cuda.device_array((S, na, D), np.float64)
        sw = cuda.device_array((S, na), np.float64)
        prod_kernel[(rt, S), threads](np.int64(mode), a, b, bool(excl), np.int64(metric),
                                       float(scale), d_rs, d_cs, d_rsc, d_csc, float(pm_),
                                       float(nm_),
                                       float(cpos), float(cneg), d_lab, nA, nB, np.int64(tps),
                                       np.int64(ntc), acc, sw)
    prod_fold[_blocks(na * D), threads](np.int64(mode), np.int64(S), np.int64(metric),
                                        float(gain), a, acc, sw, out)


def pair_matrix(a, b, metric):
    from . import _pairmath
    code = _pairmath.metric_code(metric)
    a, b, same = _pair_operands(a, b)
    na, nb = a.shape[0], b.shape[0]
    out = cuda.device_array((na, nb), np.dtype(a.dtype))
    if na and nb:
        threads, _ = _geometry()
        matrix_kernel = _pair_tile_kernels(a.dtype)[0]
        nA = _pair_norms(a)
        nB = nA if same else _pair_norms(b)
        matrix_kernel[_blocks(na * nb), threads](a, b, bool(same), np.int64(code), nA, nB, out)
    return out


def _pair_scale(name, v, n):
    """row_scale / col_scale as a float64 host vector (ones for None)."""
    return np.ones(n) if v is None else _host_vector(name, v, n, np.float64)


def pair_lse(a, b, scale, exclude_diag, row_scale=None, col_scale=None):
    a, b, same = _pair_operands(a, b)
    rsc = _pair_scale("row_scale", row_scale, a.shape[0])
    csc = _pair_scale("col_scale", col_scale, b.shape[0])
    res, _ = _pair_rows_pass(P_LSE, a, b, same, excl=exclude_diag, scale=scale, rsc=rsc,
                             csc=csc)
    return np.ascontiguousarray(res[:, 0])


def pair_softmax_product(a, b, scale, row_shift, col_shift, exclude_diag, gain, out,
                         row_scale=None, col_scale=None):
    a, b, same = _pair_operands(a, b)
    if out is None:
        raise ValueError("out: pair_softmax_product adds into out, which is required")
    out = _out_array(out, a.shape, a.dtype)
    na, nb = a.shape[0], b.shape[0]
    rs = np.zeros(na) if row_shift is None else _host_vector("row_shift", row_shift, na,
                                                              np.float64)
    cs = np.zeros(nb) if col_shift is None else _host_vector("col_shift", col_shift, nb,
                                                              np.float64)
    rsc = _pair_scale("row_scale", row_scale, na)
    csc = _pair_scale("col_scale", col_scale, nb)
    _pair_prod_pass(P_SOFTMAX, a, b, exclude_diag, 0, scale, 0.0, 0.0, 0.0, 0.0, rs, cs, None,
                    gain, out, rsc, csc)


def _pair_labelled(x, labels):
    x = _pair_device("x", x)
    return x, _host_vector("labels", labels, x.shape[0], np.int64)


def pair_contrastive_stats(x, labels, metric, pos_margin, neg_margin):
    from . import _pairmath
    code = _pairmath.metric_code(metric)
    x, lab = _pair_labelled(x, labels)
    res, _ = _pair_rows_pass(P_STATS, x, x, True, metric=code, pm_=pos_margin, nm_=neg_margin,
                             lab=lab)
    return res


def pair_contrastive_grad(x, labels, metric, pos_margin, neg_margin, cpos, cneg):
    from . import _pairmath
    code = _pairmath.metric_code(metric)
    x, lab = _pair_labelled(x, labels)
    grad = cuda.device_array(tuple(x.shape), np.dtype(x.dtype))
    _pair_prod_pass(P_GRAD, x, x, False, code, 0.0, pos_margin, neg_margin, cpos, cneg, None,
                    None, lab, 0.0, grad)
    return grad


def pair_hardest(x, labels, metric):
    from . import _pairmath
    code = _pairmath.metric_code(metric)
    x, lab = _pair_labelled(x, labels)
    _, idx = _pair_rows_pass(P_HARDEST, x, x, True, metric=code, lab=lab)
    return np.ascontiguousarray(idx[:, 0]), np.ascontiguousarray(idx[:, 1])


def triplet_rows(anchor, positive, negative, margin, p, eps, swap, want_grad, gain):
    an = _pair_device("anchor", anchor)
    po = _pair_device("positive", positive)
    ne = _pair_device("negative", negative)
    dtype = np.dtype(an.dtype)
    for arr in (po, ne):
        if tuple(arr.shape) != tuple(an.shape) or np.dtype(arr.dtype) != dtype:
            raise ValueError(f"anchor, positive, negative: expected one shape and dtype, got "
                             f"{tuple(an.shape)} {dtype}, {tuple(arr.shape)} "
                             f"{np.dtype(arr.dtype)}")
    n = an.shape[0]
    if want_grad:
        ga, gp, gn = (cuda.device_array(tuple(an.shape), dtype) for _ in range(3))
    else:
        ga = gp = gn = cuda.device_array((1, 1), dtype)
    loss = cuda.device_array(n, np.float64)
    if n:
        threads, _ = _geometry()
        _pair_rows_kernels()["triplet"][_blocks(n), threads](
            an, po, ne, float(margin), float(p), float(eps), bool(swap), bool(want_grad),
            float(gain), loss, ga, gp, gn)
    return loss.copy_to_host(), ((ga, gp, gn) if want_grad else None)


def info_nce_paired(q, k, neg, scale, want_grad, gain):
    q = _pair_device("q", q)
    k = _pair_device("k", k)
    ne = _pair_device("neg", neg, ndim=3)
    dtype = np.dtype(q.dtype)
    n, D = q.shape
    if (tuple(k.shape) != (n, D) or ne.shape[0] != n or ne.shape[2] != D
            or np.dtype(k.dtype) != dtype or np.dtype(ne.dtype) != dtype):
        raise ValueError(f"q, k, neg: expected (N, D), (N, D), (N, M, D) of one dtype, got "
                         f"{tuple(q.shape)}, {tuple(k.shape)}, {tuple(ne.shape)}")
    if want_grad:
        gq = cuda.device_array((n, D), dtype)
        gk = cuda.device_array((n, D), dtype)
        gneg = cuda.device_array(tuple(ne.shape), dtype)
        acc = cuda.device_array((max(n, 1), D), np.float64)
    else:
        gq = gk = cuda.device_array((1, 1), dtype)
        gneg = cuda.device_array((1, 1, 1), dtype)
        acc = cuda.device_array((1, D), np.float64)
    loss = cuda.device_array(n, np.float64)
    if n:
        threads, _ = _geometry()
        _pair_rows_kernels()["info_nce"][_blocks(n), threads](
            q, k, ne, float(scale), bool(want_grad), float(gain), loss, gq, gk, gneg, acc)
    return loss.copy_to_host(), ((gq, gk, gneg) if want_grad else None)


def _out_array(out, shape, dtype):
    """``out`` as a device array of this shape and dtype (checked), or a new one."""
    if out is None:
        return cuda.device_array(tuple(shape), dtype)
    out = _as_device(out)
    if tuple(out.shape) != tuple(shape) or np.dtype(out.dtype) != np.dtype(dtype):
        raise ValueError(f"out: expected a {np.dtype(dtype)} array of shape {tuple(shape)}, "
                         f"got {np.dtype(out.dtype)} {tuple(out.shape)}")
    return out


# --- row glue ---
def normalize_rows(x, eps, out=None):
    x = _pair_device("x", x)
    out = _out_array(out, x.shape, x.dtype)
    n = x.shape[0]
    nrm = cuda.device_array(n, np.float64)
    if n:
        threads, _ = _geometry()
        _pair_rows_kernels()["normalize"][_blocks(n), threads](x, float(eps), out, nrm)
    return out, nrm.copy_to_host()


def normalize_rows_backward(g, xhat, norm, eps, out=None, raw=False):
    """dx = (g - xhat (xhat . g)) / norm where norm >= eps, else g / eps.  With raw, the
    second argument is the un-normalized rows x (xhat = x / max(norm, eps), on the fly).
    Into ``out`` when given (it may be g: in place) and returned, else a new array."""
    g = _pair_device("g", g)
    xhat = _pair_device("x" if raw else "xhat", xhat)
    dtype = np.dtype(g.dtype)
    if tuple(xhat.shape) != tuple(g.shape) or np.dtype(xhat.dtype) != dtype:
        raise ValueError(f"{'x' if raw else 'xhat'}: expected the shape and dtype of g "
                         f"{tuple(g.shape)} {dtype}, got {tuple(xhat.shape)} "
                         f"{np.dtype(xhat.dtype)}")
    n = g.shape[0]
    nrm = _host_vector("norm", norm, n, np.float64)
    dx = _out_array(out, g.shape, dtype)
    if n:
        threads, _ = _geometry()
        _pair_rows_kernels()["normalize_backward"][_blocks(n), threads](
            g, xhat, cuda.to_device(nrm), float(eps), bool(raw), dx)
    return dx


def row_dots(a, b):
    a = _pair_device("a", a)
    b = _pair_device("b", b)
    if tuple(b.shape) != tuple(a.shape):
        raise ValueError(f"b: expected shape {tuple(a.shape)}, got {tuple(b.shape)}")
    n = a.shape[0]
    out = cuda.device_array(n, np.float64)
    if n:
        threads, _ = _geometry()
        _pair_rows_kernels()["dots"][_blocks(n), threads](a, b, out)
    return out.copy_to_host()


def scaled_copy(out, a, coef):
    a = _pair_device("a", a)
    out = _as_device(out)
    if tuple(out.shape) != tuple(a.shape):
        raise ValueError(f"out: expected shape {tuple(a.shape)}, got {tuple(out.shape)}")
    n, D = a.shape
    per_row = (hasattr(coef, "copy_to_host") or hasattr(coef, "__cuda_array_interface__")
               or np.ndim(coef) > 0)
    if per_row:
        d_coef = cuda.to_device(_host_vector("coef", coef, n, np.float64))
        c = 0.0
    else:
        d_coef = cuda.to_device(np.zeros(1))
        c = float(coef)
    if n:
        threads, _ = _geometry()
        _pair_rows_kernels()["scaled"][_blocks(n * D), threads](out, a, d_coef, bool(per_row),
                                                                 c)


def _pair_index(name, v, n):
    v = _host_vector(name, v, None, np.int64)
    if v.ndim != 1:
        raise ValueError(f"{name}: expected a 1-D index array, got shape {v.shape}")
    if v.size and (v.min() < 0 or v.max() >= n):
        raise IndexError(f"{name}: row indices must lie in [0, {n})")
    return v


def pair_rows_distance(x, i, j, metric):
    from . import _pairmath
    code = _pairmath.metric_code(metric)
    x = _pair_device("x", x)
    n = x.shape[0]
    pi, pj = _pair_index("i", i, n), _pair_index("j", j, n)
    if pj.size != pi.size:
        raise ValueError(f"j: expected {pi.size} indices like i, got {pj.size}")
    out = cuda.device_array(pi.size, np.float64)
    if pi.size:
        threads, _ = _geometry()
        _pair_rows_kernels()["distances"][_blocks(pi.size), threads](
            x, cuda.to_device(pi), cuda.to_device(pj), np.int64(code), out)
    return out.copy_to_host()


def pair_rows_grad(x, i, j, coef, metric):
    from . import _pairmath
    code = _pairmath.metric_code(metric)
    x = _pair_device("x", x)
    n, D = x.shape
    pi, pj = _pair_index("i", i, n), _pair_index("j", j, n)
    K = pi.size
    if pj.size != K:
        raise ValueError(f"j: expected {K} indices like i, got {pj.size}")
    cf = _host_vector("coef", coef, K, np.float64)
    grad = cuda.device_array((n, D), np.dtype(x.dtype))
    if n == 0:
        return grad
    # CSR of the pair ends per row: end e < K is the i-end of pair e, e >= K the j-end of e - K
    ends = np.concatenate([pi, pj])
    order = np.argsort(ends, kind="stable").astype(np.int64)
    rowptr = np.zeros(n + 1, np.int64)
    np.cumsum(np.bincount(ends, minlength=n), out=rowptr[1:])
    kernels = _pair_rows_kernels()
    threads, _ = _geometry()
    one = np.zeros(1, np.int64)     # a stand-in for the empty arrays of K == 0
    d_pi, d_pj = cuda.to_device(pi if K else one), cuda.to_device(pj if K else one)
    fac = cuda.device_array(max(K, 1), np.float64)
    if K:
        kernels["factors"][_blocks(K), threads](x, d_pi, d_pj, cuda.to_device(cf),
                                                np.int64(code), fac)
    kernels["gather_grad"][_blocks(n * D), threads](
        x, d_pi, d_pj, np.int64(K), fac, cuda.to_device(rowptr),
        cuda.to_device(order if K else one), np.int64(code), grad)
    return grad


def _pair_tiles_of(dtype_name: str):
    from numba import float32
    return _build_pair_tiles(float32 if dtype_name == "float32" else float64)


#: the kernel sets: name -> the function that builds the set from kernel_set's
#: further arguments (a kernel, a tuple or a dict of kernels, each its own name)
_KERNEL_SETS: dict[str, Callable[..., Any]] = {
    "shared": _build_shared,                                          # ()
    "elementwise": lambda loss: _elementwise_kernel(_scalar_math()[loss]),  # (loss,)
    "row_shared": _build_row_shared,                                  # ()
    "rowwise": _rowwise_kernel,                                       # (loss, per_block)
    "overlap": _build_overlap,                                        # ()
    "boxes": _build_box_kernel,                                       # ()
    "pair_rows": _build_pair_rows,                                    # ()
    "pair_tiles": _pair_tiles_of,                                     # (dtype name,)
}
