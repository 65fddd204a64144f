"""backend="c": the cffi-built C kernels in ``fastloss._native``.

Arrays reach C zero-copy through ``ffi.from_buffer``; the calls release the
GIL.  cffi does not check element types, so the loss layer hands over only
contiguous float32/float64 arrays of one dtype.
"""
from __future__ import annotations

import numpy as np

from .._plans import PlanCache
from . import labels_as_int64

try:
    from .. import _native  # type: ignore[attr-defined]  # the compiled cffi module
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
    _ROW_IDS = {ffi.string(lib.fl_row_name(i)).decode(): i for i in range(lib.fl_row_count())}

#: the compiled entry point of the common small call (csrc/py/fastcall.c), given the
#: kernels' addresses; None where it is not built (the Python path then runs every call)
fast = None
if _native is not None:
    try:
        from .. import _fastcall  # type: ignore[attr-defined]
    except ImportError:
        _fastcall = None
    if _fastcall is not None:
        _fastcall.init(*(int(ffi.cast("uintptr_t", ffi.addressof(lib, symbol))) for symbol in
                         ("fl_elementwise", "fl_rowwise", "fl_find_outside", "fl_find_not_pm1")),
                       np.ndarray, np.empty, np.dtype(np.float32), np.dtype(np.float64),
                       np.float32, np.float64)
        fast = _fastcall

def elementwise_id(kernel: str) -> int:
    """The id of an elementwise kernel in fl_elementwise."""
    return _LOSS_IDS[kernel]


def row_id(kernel: str) -> int:
    """The id of a row-wise kernel in fl_rowwise."""
    return _ROW_IDS[kernel]


#: label dtypes the C kernels read directly (others are converted to int64 first)
_LABEL_TYPES = {np.dtype(np.int32): 0, np.dtype(np.int64): 1, np.dtype(np.uint8): 2}


def _c_buffer(array):
    """A cdata view of a host array's memory; a C-contiguous copy of a strided one
    (``ffi.from_buffer`` refuses those, so contiguous arrays pay no check)."""
    try:
        return ffi.from_buffer(array)
    except ValueError:      # "ndarray is not C-contiguous"
        return ffi.from_buffer(np.ascontiguousarray(array))


def elementwise_launcher(call, dtype):
    """A launcher for elementwise calls like ``call`` (a kernels.ElementwiseCall
    whose arrays are ignored but for which of weight and param are given) on
    ``dtype`` data: the argument struct is filled once, and
    ``launch(input, target, weight, param, n) -> (value, out, grad)`` copies it,
    sets the pointers and calls C.  Arrays: n elements, any number of dimensions,
    read flat in C order (a strided one is copied first); a contiguous weight or
    param may be shorter, a period of length L dividing n (element i reads i % L)."""
    fields = ffi.new("fl_ew_args *")      # (field by field: cffi's dict initialiser is slower)
    fields.p0, fields.p1, fields.grad_scale = call.p0, call.p1, call.grad_scale
    fields.want_total = int(not call.want_out)
    template = fields[0]
    loss_id, dtype_id = _LOSS_IDS[call.loss], _DTYPE_IDS[np.dtype(dtype)]
    want_out, want_grad, total_scale = call.want_out, call.want_grad, call.total_scale
    new, from_buffer, run = ffi.new, ffi.from_buffer, lib.fl_elementwise

    def launch(x, target, weight, param, n):
        args = new("fl_ew_args *", template)
        # the cdata buffers must outlive the call: keep them in locals
        xb, yb = _c_buffer(x), _c_buffer(target)
        args.input, args.target, args.n = xb, yb, n
        wb = pb = ob = gb = out = grad = None
        if weight is not None:     # (shorter than n: periodic, read modulo its length)
            args.weight = wb = from_buffer(weight)
            args.weight_period = weight.size if weight.size != n else 0
        if param is not None:
            args.param = pb = from_buffer(param)
            args.param_period = param.size if param.size != n else 0
        if want_out:
            out = np.empty(n, dtype)
            args.out = ob = from_buffer(out)
        if want_grad:
            grad = np.empty(n, dtype)
            args.grad = gb = from_buffer(grad)
        rc = run(loss_id, dtype_id, args)
        del xb, yb, wb, pb, ob, gb
        if rc != 0:
            _check_rc(rc, call.loss)
        return args.total * total_scale, out, grad
    return launch


_LAUNCHERS = PlanCache(256)   # elementwise(call)'s, by what the launcher bakes in


def elementwise(call):
    """One kernels.ElementwiseCall (see :func:`elementwise_launcher`; the launcher is
    kept per loss, dtype and scalars, so that repeated calls reuse it)."""
    x = call.input
    key = (call.loss, x.dtype, call.p0, call.p1, call.grad_scale, call.total_scale,
           call.want_out, call.want_grad)
    launch = _LAUNCHERS.get(key, lambda: elementwise_launcher(call, x.dtype))
    return launch(x, call.target, call.weight, call.param, x.size)


def _labels(target):
    """Labels and their type id.  The loss layer hands over kernels.LABEL_DTYPES
    only; a direct caller's other dtypes are converted (a copy)."""
    if target.dtype not in _LABEL_TYPES:
        target = labels_as_int64(target)
    return target, _LABEL_TYPES[target.dtype]


def rowwise_launcher(call, dtype):
    """A launcher for row-wise calls like ``call`` (a kernels.RowwiseCall whose
    arrays are ignored) on ``dtype`` data: the argument struct is filled once,
    and ``launch(input, target, weight, alpha) -> (value, out, grad, bad)``
    copies it, sets the pointers and calls C.  With ``check_labels`` the
    labels are checked in the same C call (on the threads, before anything is
    written; ``bad`` >= 0 is the first bad row, the rest is then None), and
    the mean's divisor is applied there (``mean_by``)."""
    fields = ffi.new("fl_row_args *")      # (field by field: cffi's dict initialiser is slower)
    fields.n, fields.classes, fields.inner = call.n, call.classes, call.inner
    fields.ignore_index, fields.smoothing, fields.z_loss = (call.ignore_index, call.smoothing,
                                                            call.z_loss)
    fields.p0, fields.p1, fields.grad_scale = call.p0, call.p1, call.grad_scale
    fields.want_total, fields.check_labels, fields.mean_by = 1, int(call.check_labels), \
        call.mean_by
    template = fields[0]
    loss_id, dtype_id = _ROW_IDS[call.loss], _DTYPE_IDS[np.dtype(dtype)]
    rows, size = call.n * call.inner, call.n * call.classes * call.inner
    want_out, want_grad, total_scale = call.want_out, call.want_grad, call.total_scale
    labels = call.loss != "cross_entropy_prob"
    new, from_buffer, run = ffi.new, ffi.from_buffer, lib.fl_rowwise

    def launch(x, target, weight, alpha):
        args = new("fl_row_args *", template)
        # the cdata buffers must outlive the call: keep them in locals
        xb = _c_buffer(x)
        args.input = xb
        if labels:
            label_type = _LABEL_TYPES.get(target.dtype)
            if label_type is None:
                target, label_type = _labels(target)
            args.label_type = label_type
        tb = _c_buffer(target)
        args.target = tb
        wb = ab = ob = gb = out = grad = None
        if weight is not None:
            args.weight = wb = from_buffer("double[]", weight)
        if alpha is not None:
            args.alpha = ab = from_buffer("double[]", alpha)
        if want_out:
            out = np.empty(rows, dtype)
            args.out = ob = from_buffer(out)
        if want_grad:
            grad = np.empty(size, dtype)
            args.grad = gb = from_buffer(grad)
        rc = run(loss_id, dtype_id, args)
        del xb, tb, wb, ab, ob, gb
        if rc != 0:
            _check_rc(rc, call.loss)
        if args.bad >= 0:
            return None, None, None, int(args.bad)
        return args.total * total_scale, out, grad, -1
    return launch


def rowwise(call):
    """One kernels.RowwiseCall (see :func:`rowwise_launcher`)."""
    launch = rowwise_launcher(call, call.input.dtype)
    value, out, grad, call.bad = launch(call.input, call.target, call.weight, call.alpha)
    return value, out, grad


_OVERLAP_TARGETS = {np.dtype(np.int32): 0, np.dtype(np.int64): 1, np.dtype(np.uint8): 2}
_ACTIVATIONS = {"none": 0, "softmax": 1, "sigmoid": 2}


def overlap(call, finish):
    """The overlap statistics, then (when call.want_grad) the gradient from
    ``finish(stats)``: see kernels.OverlapCall."""
    x = call.input
    dtype = x.dtype
    args = ffi.new("fl_overlap_args *")
    xb = ffi.from_buffer(x)
    target = call.target
    if call.target_kind == "labels":
        target, _ = _labels(target)
        target_type = _OVERLAP_TARGETS[target.dtype]
    else:
        target_type = 3 if target.dtype == np.uint8 else 4
    tb = ffi.from_buffer(target)
    stats = np.empty((call.n, call.classes, 3), np.float64)
    sb = ffi.from_buffer("double[]", stats)
    args.input, args.target, args.target_type = xb, tb, target_type
    args.activation, args.squared = _ACTIVATIONS[call.activation], int(call.squared)
    args.n, args.classes, args.inner = call.n, call.classes, call.inner
    args.ignore_index, args.label_base = call.ignore_index, call.label_base
    args.stats = sb
    grad = gb = cb = None
    if call.want_grad:
        grad = np.empty(x.size, dtype)
        args.grad = gb = ffi.from_buffer(grad)
    _check_rc(lib.fl_overlap_stats(_DTYPE_IDS[dtype], args), "overlap statistics")
    if call.want_grad:
        coef = np.ascontiguousarray(finish(stats), dtype=np.float64)
        args.coef = cb = ffi.from_buffer("double[]", coef)
        _check_rc(lib.fl_overlap_grad(_DTYPE_IDS[dtype], args), "overlap gradient")
    del xb, tb, sb, gb, cb
    return stats, grad


def _check_rc(rc, what):
    if rc == -2:
        raise MemoryError("fastloss C kernel: out of memory")
    if rc != 0:
        raise RuntimeError(f"fastloss C kernel ({what}) failed with code {rc}")


def scan_labels(target, classes, ignore_index, weight):
    """(first bad index or -1, sum of weight[label] over valid labels, their count)."""
    target, label_type = _labels(target)
    weight_sum = ffi.new("double *")
    count = ffi.new("int64_t *")
    wb = ffi.NULL if weight is None else ffi.from_buffer("double[]", weight)
    first = lib.fl_scan_labels(label_type, ffi.from_buffer(target), target.size, classes,
                               ignore_index, wb, weight_sum, count)
    if first < -1:
        raise MemoryError("fastloss C label scan: out of memory")
    return int(first), float(weight_sum[0]), int(count[0])


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


# ---- boxes ----
# Box regression losses (csrc/boxes.c): kernels.BoxCall.
if _native is not None:
    _BOX_IDS = {ffi.string(lib.fl_box_name(i)).decode(): i for i in range(lib.fl_box_count())}


def boxes(call):
    b1, b2 = call.boxes1, call.boxes2
    dtype = b1.dtype
    n = call.n
    args = ffi.new("fl_box_args *")
    # the cdata buffers must outlive the call: keep them in locals
    b1b, b2b = ffi.from_buffer(b1), ffi.from_buffer(b2)
    args.boxes1, args.boxes2, args.n = b1b, b2b, n
    args.eps, args.eps_alpha = call.eps, call.eps_alpha
    ob = gb = out = grad = None
    if call.want_out:
        out = np.empty(n, dtype)
        args.out = ob = ffi.from_buffer(out)
    else:
        args.want_total = 1
    if call.want_grad:
        grad = np.empty(4 * n, dtype)
        args.grad = gb = ffi.from_buffer(grad)
    args.grad_scale = call.grad_scale
    args.check = int(call.check)      # found while the kernel deinterleaves the boxes
    rc = lib.fl_boxes(_BOX_IDS[call.loss], _DTYPE_IDS[dtype], args)
    del b1b, b2b, ob, gb
    if rc == -2:
        raise MemoryError("fastloss C kernel: out of memory")
    if rc != 0:
        raise RuntimeError(f"fastloss C kernel {call.loss!r} failed with code {rc}")
    call.bad1, call.bad2 = int(args.bad1), int(args.bad2)
    return args.total * call.total_scale, out, grad


def first_degenerate_box(flat) -> int:
    """The first box of a flat contiguous (4n,) float array with x2 < x1 or y2 < y1, or -1."""
    found = int(lib.fl_boxes_first_degenerate(_DTYPE_IDS[flat.dtype], ffi.from_buffer(flat),
                                              flat.size // 4))
    if found < -1:
        raise MemoryError("fastloss C scan: out of memory")
    return found


def box_atan(x) -> np.ndarray:
    """The box kernels' vector arctangent on an array (for the accuracy tests)."""
    x = np.ascontiguousarray(x)
    y = np.empty_like(x)
    lib.fl_boxes_atan(_DTYPE_IDS[x.dtype], ffi.from_buffer(x), ffi.from_buffer(y), x.size)
    return y


# ---- pairwise ----
_PAIR_OPS = {"matrix": 0, "lse": 1, "softmax_product": 2, "contrastive_stats": 3,
             "contrastive_grad": 4, "hardest": 5, "lse_product": 6}
_PAIR_METRICS = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}


def _sq_norms(x):
    return np.einsum("ij,ij->i", x, x, dtype=np.float64)


def _label_codes(labels):
    """Dense int32 codes of int64 labels (the kernels compare codes)."""
    return np.unique(labels, return_inverse=True)[1].astype(np.int32).reshape(-1)


def _pair(op, a, b, *, metric="cosine", labels=None, keep=(), **fields):
    """One fl_pair call: the buffers it reads and writes are kept alive in ``keep``
    and the locals until it returns."""
    args = ffi.new("fl_pair_args *")
    args.op, args.metric = _PAIR_OPS[op], _PAIR_METRICS[metric]
    args.same = int(b is a)
    ab = ffi.from_buffer(a)
    bb = ab if b is a else ffi.from_buffer(b)
    args.a, args.b = ab, bb
    args.na, args.nb, args.d = a.shape[0], b.shape[0], a.shape[1]
    buffers = [ab, bb]
    if metric != "cosine" and op in ("matrix", "contrastive_stats", "contrastive_grad",
                                     "hardest"):
        na2 = _sq_norms(a)
        nb2 = na2 if b is a else _sq_norms(b)
        buffers += [ffi.from_buffer(na2), ffi.from_buffer(nb2)]
        args.norm_a, args.norm_b = ffi.cast("double *", buffers[-2]), \
            ffi.cast("double *", buffers[-1])
    if labels is not None:
        codes = _label_codes(labels)
        buffers.append(ffi.from_buffer(codes))
        args.labels = ffi.cast("int32_t *", buffers[-1])
    for name, value in fields.items():
        if isinstance(value, np.ndarray):
            buf = ffi.from_buffer(value)
            buffers.append(buf)
            ctype = "void *" if name == "out" else "int64_t *" if name in ("pos", "neg") \
                else "double *"
            setattr(args, name, ffi.cast(ctype, buf))
        elif value is not None:
            setattr(args, name, value)
    _check_rc(lib.fl_pair(_DTYPE_IDS[a.dtype], args), f"pairwise {op}")


def pair_matrix(a, b, metric):
    out = np.empty((a.shape[0], b.shape[0]), a.dtype)
    _pair("matrix", a, b, metric=metric, out=out)
    return out


def pair_lse(a, b, scale, exclude_diag, row_scale=None, col_scale=None):
    lse = np.empty(a.shape[0], np.float64)
    _pair("lse", a, b, scale=float(scale), exclude_diag=int(bool(exclude_diag)), lse=lse,
          row_scale=_f64_or_none(row_scale), col_scale=_f64_or_none(col_scale))
    return lse


def pair_lse_product(a, b, scale, exclude_diag, gain, out, col_scale=None, col_weight=None):
    lse = np.empty(a.shape[0], np.float64)
    _pair("lse_product", a, b, scale=float(scale), gain=float(gain), lse=lse, out=out,
          exclude_diag=int(bool(exclude_diag)), col_scale=_f64_or_none(col_scale),
          col_weight=_f64_or_none(col_weight))
    return lse


def _f64_or_none(v):
    return None if v is None else np.ascontiguousarray(v, dtype=np.float64)


def pair_softmax_product(a, b, scale, row_shift, col_shift, exclude_diag, gain, out,
                         row_scale=None, col_scale=None):
    _pair("softmax_product", a, b, scale=float(scale), gain=float(gain),
          row_shift=_f64_or_none(row_shift), col_shift=_f64_or_none(col_shift),
          row_scale=_f64_or_none(row_scale), col_scale=_f64_or_none(col_scale),
          exclude_diag=int(bool(exclude_diag)), out=out)


def pair_contrastive_stats(x, labels, metric, pos_margin, neg_margin):
    stats = np.empty((x.shape[0], 4), np.float64)
    _pair("contrastive_stats", x, x, metric=metric, labels=labels,
          pos_margin=float(pos_margin), neg_margin=float(neg_margin), stats=stats)
    return stats


def pair_contrastive_grad(x, labels, metric, pos_margin, neg_margin, cpos, cneg):
    out = np.empty_like(x)
    _pair("contrastive_grad", x, x, metric=metric, labels=labels,
          pos_margin=float(pos_margin), neg_margin=float(neg_margin), cpos=float(cpos),
          cneg=float(cneg), out=out)
    return out


def pair_hardest(x, labels, metric):
    pos = np.empty(x.shape[0], np.int64)
    neg = np.empty(x.shape[0], np.int64)
    _pair("hardest", x, x, metric=metric, labels=labels, pos=pos, neg=neg)
    return pos, neg


def _pair_rows(kind, a, p, n, m, want_grad, **fields):
    args = ffi.new("fl_pair_rows_args *")
    args.kind, args.rows, args.d, args.m = kind, a.shape[0], a.shape[-1], m
    bufs = [ffi.from_buffer(v) for v in (a, p, n)]
    args.a, args.p, args.n = bufs
    for name, value in fields.items():
        setattr(args, name, value)
    loss = np.empty(a.shape[0], np.float64)
    bufs.append(ffi.from_buffer(loss))
    args.loss = ffi.cast("double *", bufs[-1])
    grads = None
    if want_grad:
        grads = tuple(np.empty_like(v) for v in (a, p, n))
        gb = [ffi.from_buffer(g) for g in grads]
        args.ga, args.gp, args.gn = gb
        bufs += gb
    _check_rc(lib.fl_pair_rows(_DTYPE_IDS[a.dtype], args), "pairwise rows")
    return loss, grads


def triplet_rows(anchor, positive, negative, margin, p, eps, swap, want_grad, gain):
    return _pair_rows(0, anchor, positive, negative, 0, want_grad, margin=float(margin),
                      p_norm=float(p), eps=float(eps), swap=int(bool(swap)), gain=float(gain))


def normalize_rows(x, eps, out=None):
    """(x / max(||x_i||, eps) in x's dtype, the float64 norms (N,)): the host glue
    of the pairwise losses, in C (see kernels.PAIR_ROW_GLUE)."""
    out = np.empty_like(x) if out is None else out
    norm = np.empty(x.shape[0], np.float64)
    args = ffi.new("fl_pair_rows_args *")
    args.kind, args.rows, args.d, args.eps = 2, x.shape[0], x.shape[1], float(eps)
    xb, nb, ob = _c_buffer(x), ffi.from_buffer(norm), ffi.from_buffer(out)
    args.a, args.loss, args.ga = xb, ffi.cast("double *", nb), ob
    _check_rc(lib.fl_pair_rows(_DTYPE_IDS[x.dtype], args), "row norms")
    return out, norm


def row_dots(a, b):
    """sum_d a_id b_id per row, in float64 (N,) (see kernels.PAIR_ROW_GLUE)."""
    out = np.empty(a.shape[0], np.float64)
    args = ffi.new("fl_pair_rows_args *")
    args.kind, args.rows, args.d = 3, a.shape[0], a.shape[1]
    ab, bb, ob = _c_buffer(a), _c_buffer(b), ffi.from_buffer(out)
    args.a, args.p, args.loss = ab, bb, ffi.cast("double *", ob)
    _check_rc(lib.fl_pair_rows(_DTYPE_IDS[a.dtype], args), "row dots")
    return out


def normalize_rows_backward(g, xhat, norm, eps, out=None, raw=False):
    """The gradient for x from g, the gradient for its normalized rows (see
    kernels.PAIR_ROW_GLUE); ``out`` may be g itself."""
    out = np.empty_like(g) if out is None else out
    norm = np.ascontiguousarray(norm, np.float64)
    args = ffi.new("fl_pair_rows_args *")
    args.kind, args.rows, args.d, args.eps, args.raw = 4, g.shape[0], g.shape[1], float(eps), \
        int(bool(raw))
    gb, ub, nb, ob = _c_buffer(g), _c_buffer(xhat), ffi.from_buffer(norm), ffi.from_buffer(out)
    args.a, args.p, args.norms, args.ga = gb, ub, ffi.cast("double *", nb), ob
    _check_rc(lib.fl_pair_rows(_DTYPE_IDS[g.dtype], args), "normalization backward")
    return out


def scaled_copy(out, a, coef):
    """out = coef * a per row, coef a float or a float64 (N,) array (see
    kernels.PAIR_ROW_GLUE)."""
    args = ffi.new("fl_pair_rows_args *")
    args.kind, args.rows, args.d = 5, a.shape[0], a.shape[1]
    ab, ob, cb = _c_buffer(a), ffi.from_buffer(out), None
    if np.ndim(coef):
        coef = np.ascontiguousarray(coef, np.float64)
        cb = ffi.from_buffer(coef)
        args.norms = ffi.cast("double *", cb)
    else:
        args.scale = float(coef)
    args.a, args.ga = ab, ob
    _check_rc(lib.fl_pair_rows(_DTYPE_IDS[a.dtype], args), "scaled copy")


_METRIC_IDS = {"euclidean": 0, "sqeuclidean": 1, "cosine": 2}


def pair_rows_grad(x, i, j, coef, metric):
    """The gradient of sum_k coef_k d(x_i[k], x_j[k]) for every row of x (see
    kernels.PAIR_ROW_GLUE), accumulated pair by pair in float64."""
    grad = np.empty_like(x)
    i, j = (np.ascontiguousarray(v, np.int64) for v in (i, j))
    coef = np.ascontiguousarray(coef, np.float64)
    args = ffi.new("fl_pair_rows_args *")
    args.kind, args.rows, args.d, args.m = 6, x.shape[0], x.shape[1], i.size
    args.metric = _METRIC_IDS[metric]
    xb, ib, jb, cb, gb = (_c_buffer(x), ffi.from_buffer(i), ffi.from_buffer(j),
                          ffi.from_buffer(coef), ffi.from_buffer(grad))
    args.a, args.ga = xb, gb
    args.pi, args.pj = ffi.cast("int64_t *", ib), ffi.cast("int64_t *", jb)
    args.norms = ffi.cast("double *", cb)
    _check_rc(lib.fl_pair_rows(_DTYPE_IDS[x.dtype], args), "pair gradients")
    return grad


def info_nce_paired(q, k, neg, scale, want_grad, gain):
    return _pair_rows(1, q, k, neg, neg.shape[1], want_grad, scale=float(scale),
                      gain=float(gain))
