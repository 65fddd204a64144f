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

import numpy as np
# Imported at module level (this module loads only when the backend is first
# used): the simulator swaps the module-global ``cuda`` inside kernels.
from numba import cuda, float64, int64

from . import BuildOnce

_built = BuildOnce()


def _simulated() -> bool:
    from numba import config
    return bool(config.ENABLE_CUDASIM)


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


def _get(loss: str):
    """(kernel, finish_sum, first_bad), compiled lazily once."""
    return _built.get(loss, lambda: (_elementwise_kernel(_scalar_math()[loss]),)
                      + _shared_kernels())


def _shared_kernels():
    return _built.get("shared", _build_shared)


def _as_device(array):
    if _simulated() or cuda.is_cuda_array(array) and hasattr(array, "copy_to_host"):
        return array
    return cuda.as_cuda_array(array)   # CuPy, torch: a view, no copy


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

