"""Box regression losses: torchvision's generalized, distance and complete IoU losses.

Boxes are arrays (..., 4) of (x1, y1, x2, y2); ``boxes1`` are the predictions
(the gradient is with respect to them), ``boxes2`` the targets.  One value per
box, then the reduction.  :func:`_run` is the one place that validates the
arrays, picks the backend, lays the boxes out for the kernel (flat, contiguous,
interleaved) and shapes the results.
"""
from __future__ import annotations

import math
import textwrap
import types
from typing import Callable, Literal, overload

import numpy as np

from .. import _dispatch, reference
from .._convert import same_type_as_input
from .._typing import ArrayLike, Backend, F, Loss, LossAndGrad, Reduction
from .._registry import records
from .._validate import (FLOAT_DTYPES, REDUCTIONS, ArrayMeta, check_bool, check_positive,
                         check_reduction, check_same_place)
from ..kernels import BoxCall

__all__ = ["generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss",
           "BOX_LOSSES"]

#: public name -> kernel name, for every box loss (from the registry)
BOX_LOSSES = {r.name: r.kernel for r in records("boxes")}

#: torchvision's complete_box_iou_loss calls its DIoU part without eps: 1e-7 there
CIOU_DIOU_EPS = 1e-7

_NATIVE: list[types.ModuleType | None] = []   # [the C backend module or None], on first use


def _native():
    if not _NATIVE:
        from ..kernels import native
        _NATIVE.append(native if native.unavailable_reason() is None else None)
    return _NATIVE[0]


def _box_dtype(meta: ArrayMeta, name: str):
    """The dtype the boxes are computed in: theirs, or float32 for integers (as
    torchvision's _upcast_non_float), host only."""
    if meta.dtype in FLOAT_DTYPES:
        return meta.dtype
    if meta.dtype.kind in "biu":
        if meta.on_gpu:
            raise TypeError(f"{name}: integer boxes ({meta.dtype}) on the GPU are not converted "
                            f"(no hidden copies); convert them to float32 on the device first")
        return np.dtype(np.float32)
    raise TypeError(f"{name}: expected float32 or float64 boxes (integers are converted to "
                    f"float32), got dtype {meta.dtype}")


def _check_boxes_shape(meta: ArrayMeta, name: str):
    if not meta.shape or meta.shape[-1] != 4:
        raise ValueError(f"{name}: expected boxes of shape (..., 4) holding (x1, y1, x2, y2), "
                         f"got shape {meta.shape}")


def _position(index: int, lead: tuple) -> str:
    if not lead:
        return "the box"
    where = tuple(int(i) for i in np.unravel_index(index, lead))
    return f"box {where[0] if len(where) == 1 else where}"


def _first_degenerate_host(flat) -> int:
    native = _native()
    if native is not None:
        try:
            return native.first_degenerate_box(flat)
        except RuntimeError:    # a stale build without the box kernels
            pass
    b = flat.reshape(-1, 4)
    hits = np.flatnonzero((b[:, 2] < b[:, 0]) | (b[:, 3] < b[:, 1]))
    return int(hits[0]) if hits.size else -1


def _require_proper(flat, shape, name):
    """ValueError naming the first box of host boxes with x2 < x1 or y2 < y1 (NaN passes)."""
    index = _first_degenerate_host(flat)
    if index >= 0:
        _raise_degenerate(name, flat, shape, index, False, None)


def _raise_degenerate(name, flat, shape, index, on_gpu, module):
    coords = module.box_values(flat, index) if on_gpu else flat[4 * index:4 * index + 4]
    x1, y1, x2, y2 = (float(c) for c in coords)
    raise ValueError(
        f"{name}: {_position(index, tuple(shape[:-1]))} is degenerate, (x1, y1, x2, y2) = "
        f"({x1!r}, {y1!r}, {x2!r}, {y2!r}): expected x2 >= x1 and y2 >= y1; pass "
        f"check_degenerate=False to compute the formulas anyway")


def _layout(boxes1, boxes2, backend):
    """Every check of the arrays, the backend, and the boxes laid out for the kernel."""
    m1, m2 = ArrayMeta(boxes1, "boxes1"), ArrayMeta(boxes2, "boxes2")
    check_same_place({"boxes1": m1, "boxes2": m2})
    _check_boxes_shape(m1, "boxes1")
    _check_boxes_shape(m2, "boxes2")
    on_gpu = m1.on_gpu
    shape = tuple(m1.shape)
    if m2.shape != shape:
        try:
            fits = np.broadcast_shapes(m2.shape, shape) == shape
        except ValueError:
            fits = False
        if on_gpu or not fits:
            how = "equal" if on_gpu else "equal or broadcast to"
            raise ValueError(f"boxes2: shape {m2.shape} must {how} the shape of boxes1 "
                             f"{shape}{' on the GPU' if on_gpu else ''}")
    dtype, dtype2 = _box_dtype(m1, "boxes1"), _box_dtype(m2, "boxes2")
    if dtype2 != dtype:
        raise TypeError(f"boxes2: dtype {m2.dtype} ({dtype2} as boxes) differs from boxes1's "
                        f"{m1.dtype} ({dtype}); give both the same float dtype")

    name, module = _dispatch.select(backend, on_gpu)
    if on_gpu:
        for meta, arg in ((m1, "boxes1"), (m2, "boxes2")):
            if not meta.contiguous:
                raise ValueError(f"{arg}: non-contiguous GPU arrays are not supported yet "
                                 f"(shape {meta.shape}); make a contiguous copy on the device "
                                 f"first")
        b1, b2, b2_own = m1.array, m2.array, m2.array
    else:
        # flat, contiguous, of the dtype: no copy when it already is one (the kernels
        # only read them)
        b1 = np.ascontiguousarray(m1.array, dtype=dtype).reshape(-1)
        b2_own = np.ascontiguousarray(m2.array, dtype=dtype).reshape(-1)
        b2 = b2_own if m2.shape == shape else \
            np.ascontiguousarray(np.broadcast_to(b2_own.reshape(m2.shape), shape)).reshape(-1)
    return on_gpu, shape, dtype, tuple(m2.shape), name, module, b1, b2, b2_own


def _run(public, boxes1, boxes2, *, reduction, eps, check_degenerate, return_grad, backend):
    if reduction not in REDUCTIONS:
        check_reduction(reduction)
    if return_grad is not True and return_grad is not False:
        return_grad = check_bool(return_grad, "return_grad")
    if check_degenerate is not True and check_degenerate is not False:
        check_degenerate = check_bool(check_degenerate, "check_degenerate")
    if not (type(eps) is float and 0.0 <= eps < math.inf):
        eps = check_positive(eps, "eps", allow_zero=True)

    if (type(boxes1) is np.ndarray and type(boxes2) is np.ndarray
            and boxes1.dtype in FLOAT_DTYPES and boxes2.dtype == boxes1.dtype
            and boxes1.shape == boxes2.shape and boxes1.shape and boxes1.shape[-1] == 4):
        # the common case, checked in a few cheap tests: host arrays of one float
        # dtype and one shape (..., 4)
        on_gpu, shape, dtype = False, boxes1.shape, boxes1.dtype
        m2_shape = shape
        name, module = _dispatch.select(backend, False)
        b1 = np.ascontiguousarray(boxes1).reshape(-1)
        b2 = b2_own = np.ascontiguousarray(boxes2).reshape(-1)
    else:
        on_gpu, shape, dtype, m2_shape, name, module, b1, b2, b2_own = _layout(
            boxes1, boxes2, backend)
    # The kernels look for degenerate boxes in their own pass over the boxes (they
    # read every coordinate anyway; a scan of its own would read them all again);
    # the reference backend, and a broadcast boxes2, are scanned here first.
    if check_degenerate and name == "numpy":
        _require_proper(b1, shape, "boxes1")
    if check_degenerate and (name == "numpy" or b2 is not b2_own):
        _require_proper(b2_own, m2_shape, "boxes2")

    lead = shape[:-1]
    n = math.prod(lead)
    if name == "numpy":
        result = getattr(reference, public)(b1.reshape(shape), b2.reshape(shape),
                                            reduction=reduction, eps=eps, return_grad=True)
        value, grad = result
        value = np.asarray(value).astype(dtype) if reduction == "none" else dtype.type(value)
        return (value, np.asarray(grad).astype(dtype)) if return_grad else value

    kernel = BOX_LOSSES[public]
    scale = (1.0 / n if n else 0.0) if reduction == "mean" else 1.0   # mean of none: 0
    eps_iou, eps_alpha = (CIOU_DIOU_EPS, eps) if kernel == "ciou" else (eps, eps)
    call = BoxCall(loss=kernel, boxes1=b1, boxes2=b2, n=n, eps=eps_iou, eps_alpha=eps_alpha,
                   want_out=reduction == "none", want_grad=return_grad, grad_scale=scale,
                   total_scale=scale, check=check_degenerate)
    value, out, grad = module.boxes(call)
    if call.bad1 >= 0:      # nothing is returned: the results are dropped
        _raise_degenerate("boxes1", b1, shape, call.bad1, on_gpu, module)
    if call.bad2 >= 0:
        _raise_degenerate("boxes2", b2, shape, call.bad2, on_gpu, module)
    if reduction == "none":
        value = out.reshape(lead)
    elif not on_gpu:
        value = dtype.type(value)
    if not return_grad:
        return value
    return value, grad.reshape(shape)


_DOC = """
    Parameters
    ----------
    boxes1 : array (..., 4) of (x1, y1, x2, y2), float32 or float64
        The predicted boxes; the gradient is with respect to them.  Integer
        boxes are converted to float32, as torchvision does.
    boxes2 : array like boxes1 (its dtype)
        The target boxes.  On the host it may broadcast to boxes1's shape
        (e.g. one target box (4,) for all); on the GPU the shapes must be equal.
    reduction : "mean" | "sum" | "none"
        ``"none"``: one loss per box, shape ``boxes1.shape[:-1]``, boxes1's
        dtype.  ``"sum"``: their float64-accumulated sum.  ``"mean"``: the sum
        divided by the number of boxes; for no boxes it is 0, as torchvision
        (not nan).
    eps : float >= 0
        {eps}
    check_degenerate : bool
        Raise ValueError, naming the argument, the box's index and its
        coordinates, if a box of either argument has x2 < x1 or y2 < y1.
        Zero-width or zero-height boxes pass; NaN passes (NaN in, NaN out).
        With False the formulas are computed as written (see above).
    return_grad : bool
        Also return d(result)/d(boxes1) (for ``"none"``: of the sum), same
        shape and dtype as boxes1, computed in the same pass: the gradient
        torch's autograd gives for torchvision's formulas, including the tie
        rule of torch.max/min (at a tie, half the gradient to each argument)
        and no gradient through the zero branch of the intersection.
    backend : "c" | "numba" | "cuda" | "numpy" | None
        See :func:`fastloss.backends`; None picks one from the inputs.

    Departures from torchvision: the default ``reduction`` is "mean", as for
    every fastloss loss (torchvision's is "none", which the PyTorch adapter
    keeps); degenerate boxes raise unless ``check_degenerate=False``
    (torchvision computes whatever comes out); only boxes2 broadcasts, and
    only on the host (torch would broadcast either); two float dtypes are
    an error (torch would promote); ``eps`` must be finite and >= 0.
    Float32 boxes are computed in float32 arithmetic, as torch does, with
    float64 sums.
"""

_COMMON = """
    With w = x2 - x1, h = y2 - y1 (W, H for the target box), the
    intersection I = (min(x2, X2) - max(x1, X1)) (min(y2, Y2) - max(y1, Y1))
    where both differences are > 0, else 0; U = w h + W H - I;
    iou = I / (U + eps); the smallest enclosing box spans min(x1, X1) to
    max(x2, X2) and min(y1, Y1) to max(y2, Y2): width cw, height ch.
"""

_DEGENERATE = """
    Degenerate boxes (check_degenerate=False): a box with x2 < x1 (or
    y2 < y1) intersects nothing (min(x2, X2) <= x2 < x1 <= max(x1, X1)), so
    I = 0 and iou = 0 (nan if U + eps = 0), and its "area" w h may be
    negative, so U may be below the other box's area, or negative."""


def _doc(summary: str, body: str, degenerate: str, eps: str) -> Callable[[F], F]:
    """The docstring: summary, the shared definitions, the loss's formula, what it
    gives for degenerate boxes (the shared part and its own, one paragraph), the
    parameters."""
    paragraph = textwrap.fill(" ".join((_DEGENERATE + degenerate).split()), 76,
                              initial_indent="    ", subsequent_indent="    ")

    def decorate(fn: F) -> F:
        fn.__doc__ = (summary.rstrip() + "\n" + _COMMON + body.rstrip() + "\n\n" + paragraph
                      + "\n" + _DOC.format(eps=eps))
        return fn
    return decorate


# Each loss comes with three typing overloads, for return_grad=False (the default: the
# value), True ((value, gradient)) and a bool not known statically (either), then
# its implementation.
@overload
def generalized_box_iou_loss(boxes1: ArrayLike, boxes2: ArrayLike, *, reduction: Reduction = ...,
                             eps: float = ..., check_degenerate: bool = ...,
                             return_grad: Literal[False] = ...,
                             backend: Backend = ...) -> Loss: ...
@overload
def generalized_box_iou_loss(boxes1: ArrayLike, boxes2: ArrayLike, *, reduction: Reduction = ...,
                             eps: float = ..., check_degenerate: bool = ...,
                             return_grad: Literal[True],
                             backend: Backend = ...) -> LossAndGrad: ...
@overload
def generalized_box_iou_loss(boxes1: ArrayLike, boxes2: ArrayLike, *, reduction: Reduction = ...,
                             eps: float = ..., check_degenerate: bool = ..., return_grad: bool,
                             backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Generalized IoU loss, as ``torchvision.ops.generalized_box_iou_loss``
    (Rezatofighi et al., 2019).""", """
    l = 1 - (iou - (C - U) / (C + eps)),  C = cw ch.

    0 for identical boxes (up to eps), 1 for boxes that touch at an edge and
    fill their enclosing box, towards 2 for distant ones.

    Example::

        >>> import numpy as np, fastloss as fl
        >>> pred = np.array([[0, 0, 1, 1], [0, 0, 1, 1]], np.float32)
        >>> target = np.array([[0, 0, 1, 1], [2, 0, 3, 1]], np.float32)
        >>> fl.generalized_box_iou_loss(pred, target, reduction="none").round(4)
        array([0.    , 1.3333], dtype=float32)""", """  The
    enclosing box stays proper (it comes from min and max); with U < 0 the
    penalty (C - U) / (C + eps) exceeds 1 and l can exceed 2.  Zero-area
    boxes are fine while eps > 0 (eps = 0 and two zero-area boxes: 0/0 =
    nan).""", "In iou = I / (U + eps) and (C - U) / (C + eps).")
@same_type_as_input
def generalized_box_iou_loss(boxes1: ArrayLike, boxes2: ArrayLike, *,
                             reduction: Reduction = "mean", eps: float = 1e-7,
                             check_degenerate: bool = True, return_grad: bool = False,
                             backend: Backend = None) -> Loss | LossAndGrad:
    return _run("generalized_box_iou_loss", boxes1, boxes2, reduction=reduction, eps=eps,
                check_degenerate=check_degenerate, return_grad=return_grad, backend=backend)


@overload
def distance_box_iou_loss(boxes1: ArrayLike, boxes2: ArrayLike, *, reduction: Reduction = ...,
                          eps: float = ..., check_degenerate: bool = ...,
                          return_grad: Literal[False] = ..., backend: Backend = ...) -> Loss: ...
@overload
def distance_box_iou_loss(boxes1: ArrayLike, boxes2: ArrayLike, *, reduction: Reduction = ...,
                          eps: float = ..., check_degenerate: bool = ...,
                          return_grad: Literal[True], backend: Backend = ...) -> LossAndGrad: ...
@overload
def distance_box_iou_loss(boxes1: ArrayLike, boxes2: ArrayLike, *, reduction: Reduction = ...,
                          eps: float = ..., check_degenerate: bool = ..., return_grad: bool,
                          backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Distance IoU loss, as ``torchvision.ops.distance_box_iou_loss``
    (Zheng et al., 2019).""", """
    l = 1 - iou + d2 / (cw^2 + ch^2 + eps),  d2 the squared distance between
    the centres ((x1 + x2)/2, (y1 + y2)/2) of the two boxes.

    Example::

        >>> import numpy as np, fastloss as fl
        >>> pred = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], np.float64)
        >>> target = np.array([[1, 1, 3, 3], [0, 0, 1, 2]], np.float64)
        >>> fl.distance_box_iou_loss(pred, target, reduction="none").round(4)
        array([0.9683, 0.55  ])""", """  The
    centre distance and the enclosing diagonal stay well defined, so l is
    finite unless iou is nan; eps = 0 and two boxes that are the same single
    point give 0/0 = nan.""", "In iou = I / (U + eps) and d2 / (cw^2 + ch^2 + eps).")
@same_type_as_input
def distance_box_iou_loss(boxes1: ArrayLike, boxes2: ArrayLike, *, reduction: Reduction = "mean",
                          eps: float = 1e-7, check_degenerate: bool = True,
                          return_grad: bool = False,
                          backend: Backend = None) -> Loss | LossAndGrad:
    return _run("distance_box_iou_loss", boxes1, boxes2, reduction=reduction, eps=eps,
                check_degenerate=check_degenerate, return_grad=return_grad, backend=backend)


@overload
def complete_box_iou_loss(boxes1: ArrayLike, boxes2: ArrayLike, *, reduction: Reduction = ...,
                          eps: float = ..., check_degenerate: bool = ...,
                          return_grad: Literal[False] = ..., backend: Backend = ...) -> Loss: ...
@overload
def complete_box_iou_loss(boxes1: ArrayLike, boxes2: ArrayLike, *, reduction: Reduction = ...,
                          eps: float = ..., check_degenerate: bool = ...,
                          return_grad: Literal[True], backend: Backend = ...) -> LossAndGrad: ...
@overload
def complete_box_iou_loss(boxes1: ArrayLike, boxes2: ArrayLike, *, reduction: Reduction = ...,
                          eps: float = ..., check_degenerate: bool = ..., return_grad: bool,
                          backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Complete IoU loss, as ``torchvision.ops.complete_box_iou_loss``
    (Zheng et al., 2019).""", """
    l = DIoU + alpha v,  v = 4/pi^2 (atan(W/H) - atan(w/h))^2,
    alpha = v / (1 - iou + v + eps), a constant for the gradient (torchvision
    computes it under no_grad), DIoU as in :func:`distance_box_iou_loss`.

    As in torchvision, ``eps`` enters alpha only: the DIoU part and its iou
    always use eps = 1e-7 (torchvision calls its DIoU helper without passing
    eps on); with the default eps this makes no difference.

    Zero height (y1 == y2, which the degenerate check lets pass): w/h is
    +-inf, atan gives +-pi/2 and the value is finite, but the gradient of
    that box is nan, as torch's autograd gives (0/0 in the backward of w/h);
    a target of zero height is harmless.  A boxes1 box with w = h = 0 gives
    0/0 = nan.

    Example (the second pair differs in aspect ratio: v > 0)::

        >>> import numpy as np, fastloss as fl
        >>> pred = np.array([[0, 0, 2, 2], [0, 0, 1, 1]], np.float64)
        >>> target = np.array([[1, 1, 3, 3], [0, 0, 1, 2]], np.float64)
        >>> fl.complete_box_iou_loss(pred, target, reduction="none").round(4)
        array([0.9683, 0.5532])""", """  A box flipped in one axis has w/h < 0 and a negative
    angle: v stays finite.  What is said above of zero heights holds too.""",
      "In alpha = v / (1 - iou + v + eps) only (see above).")
@same_type_as_input
def complete_box_iou_loss(boxes1: ArrayLike, boxes2: ArrayLike, *, reduction: Reduction = "mean",
                          eps: float = 1e-7, check_degenerate: bool = True,
                          return_grad: bool = False,
                          backend: Backend = None) -> Loss | LossAndGrad:
    return _run("complete_box_iou_loss", boxes1, boxes2, reduction=reduction, eps=eps,
                check_degenerate=check_degenerate, return_grad=return_grad, backend=backend)
