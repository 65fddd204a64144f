"""backend="c": the cffi-built C kernels in ``fastloss._native``.

Arrays reach C zero-copy through ``ffi.from_buffer``; the calls release the
GIL.  cffi does not check element types, so the loss layer hands over only
contiguous float32/float64 arrays of one dtype.
"""
from __future__ import annotations

import numpy as np

try:
    from .. import _native
except ImportError as exc:  # not built: the numba backend takes over
    _native = None
    _import_error = str(exc)

_DTYPE_IDS = {np.dtype(np.float32): 0, np.dtype(np.float64): 1}
ISA_NAMES = ("baseline", "avx2", "avx512")


def unavailable_reason():
    if _native is None:
        return f"the C extension fastloss._native is not built ({_import_error})"
    return None


if _native is not None:
    ffi, lib = _native.ffi, _native.lib
    _LOSS_IDS = {ffi.string(lib.fl_ew_name(i)).decode(): i for i in range(lib.fl_ew_count())}


def elementwise(call):
    x = call.input
    dtype = x.dtype
    n = x.size
    args = ffi.new("fl_ew_args *")
    # the cdata buffers must outlive the call: keep them in locals
    xb = ffi.from_buffer(x)
    yb = ffi.from_buffer(call.target)
    args.input, args.target = xb, yb
    wb = pb = ob = gb = out = grad = None
    if call.weight is not None:
        args.weight = wb = ffi.from_buffer(call.weight)
    if call.param is not None:
        args.param = pb = ffi.from_buffer(call.param)
    if call.want_out:
        out = np.empty(n, dtype)
        args.out = ob = ffi.from_buffer(out)
    else:
        args.want_total = 1
    if call.want_grad:
        grad = np.empty(n, dtype)
        args.grad = gb = ffi.from_buffer(grad)
    args.p0, args.p1, args.n = call.p0, call.p1, n
    args.grad_scale = call.grad_scale
    rc = lib.fl_elementwise(_LOSS_IDS[call.loss], _DTYPE_IDS[dtype], args)
    del xb, yb, wb, pb, ob, gb
    if rc == -2:
        raise MemoryError("fastloss C kernel: out of memory")
    if rc != 0:
        raise RuntimeError(f"fastloss C kernel {call.loss!r} failed with code {rc}")
    return args.total * call.total_scale, out, grad


def first_outside(flat, lo, hi) -> int:
    return int(lib.fl_find_outside(_DTYPE_IDS[flat.dtype], ffi.from_buffer(flat), flat.size,
                                   lo, hi))


def first_not_pm1(flat) -> int:
    return int(lib.fl_find_not_pm1(_DTYPE_IDS[flat.dtype], ffi.from_buffer(flat), flat.size))


def set_num_threads(n: int) -> int:
    return int(lib.fl_set_num_threads(n))


def get_num_threads() -> int:
    return int(lib.fl_get_num_threads())


def isa() -> str:
    return ISA_NAMES[lib.fl_get_isa()]


def max_isa() -> str:
    return ISA_NAMES[lib.fl_max_isa()]


def set_isa(name: str | None) -> str:
    level = -1 if name is None else ISA_NAMES.index(name)
    if lib.fl_set_isa(level) < 0:
        raise ValueError(f"isa: this CPU cannot run the {name!r} path "
                         f"(best here: {max_isa()!r})")
    return isa()


def math(fn: str, x) -> np.ndarray:
    """The kernels' vector exp/log/log1p/expm1 on an array (for the accuracy tests)."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    fns = ("exp", "log", "log1p", "expm1")
    lib.fl_math(fns.index(fn), _DTYPE_IDS[x.dtype], ffi.from_buffer(x), ffi.from_buffer(y),
                x.size)
    return y
