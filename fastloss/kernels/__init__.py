"""Kernel backends.  Each module exposes ``unavailable_reason()`` (None when it
can run here) and one entry point per loop shape, e.g.
``elementwise(call) -> (value, out, grad)``.  Modules are imported lazily by
:mod:`fastloss._dispatch`."""
from __future__ import annotations

import threading
from dataclasses import dataclass
from typing import Any, Callable


class BuildOnce:
    """Kernels compiled lazily, once: ``get(key, build)`` runs ``build()`` the
    first time ``key`` is asked for (under a re-entrant lock, so a build may
    ask for another key); later lookups take no lock."""

    def __init__(self):
        self._items: dict = {}
        self._lock = threading.RLock()

    def get(self, key, build: Callable[[], Any]):
        item = self._items.get(key)
        if item is None:
            with self._lock:
                item = self._items.get(key)
                if item is None:
                    item = self._items[key] = build()
        return item


@dataclass(slots=True)
class ElementwiseCall:
    """One elementwise kernel call, already validated and laid out.

    ``input``, ``target`` (and ``weight`` / ``param`` when given) are flat,
    contiguous arrays of one float dtype on one device.  On the host every
    array has ``n`` elements; on the GPU ``weight`` and ``param`` may be
    shorter: element ``i`` reads index ``i % len`` (a trailing-axes
    broadcast).  ``param`` replaces the scalar ``p0`` element by element.
    """

    loss: str                 # kernel name, e.g. "log_cosh"
    input: Any
    target: Any
    weight: Any | None
    param: Any | None
    p0: float
    p1: float
    want_out: bool            # per-element weight * loss ("none")
    want_grad: bool           # grad_scale * weight * d loss / d input
    grad_scale: float
    total_scale: float        # value = total_scale * sum(weight * loss)


#: label dtypes every row-wise kernel reads as they are; the loss layer
#: converts host labels of other integer dtypes to int64, once per call
LABEL_DTYPES = ("int32", "int64", "uint8")

#: row-wise kernel names (see RowwiseCall)
ROWWISE_KERNELS = ("cross_entropy", "cross_entropy_prob", "nll", "softmax_focal",
                   "multi_margin", "crammer_singer")


@dataclass(slots=True)
class RowwiseCall:
    """One row-wise (multi-class) kernel call, already validated and laid out.

    ``input`` is flat and contiguous, ``n * classes * inner`` elements of one
    float dtype, read as (N, C, S): element (i, c, s) at ``(i*C + c)*S + s``.
    A *row* is one (i, s) pair, ``n * inner`` rows in all, row r = i*S + s;
    its C values are ``inner`` apart (S = 1: contiguous rows).

    ``target``: for ``cross_entropy_prob`` probabilities laid out like the
    input (same dtype); otherwise class labels, flat (n * inner,) of dtype
    int32, int64 or uint8, each in [0, C) or equal to ``ignore_index``
    (checked before the call).  ``weight`` / ``alpha``: None or (C,) float
    arrays (float64 on the host; any float dtype on the GPU).

    The per-row value and the gradient of each kernel are written out in
    ``docs``-style comments next to the kernels (csrc/rowwise.c,
    kernels/_rowmath.py); every backend computes the same formulas.
    Ignored rows have value 0 and a zero gradient row.
    """

    loss: str                 # one of ROWWISE_KERNELS
    input: Any
    target: Any
    n: int                    # N
    classes: int              # C
    inner: int                # S = d1 * ... * dk (1 for (N, C) input)
    weight: Any | None
    alpha: Any | None         # softmax_focal: per-class alpha, else p0 is the alpha
    ignore_index: int
    smoothing: float          # cross_entropy: label smoothing epsilon
    z_loss: float             # cross_entropy: coefficient of lse^2
    p0: float                 # softmax_focal: scalar alpha; multi_margin / crammer_singer: margin
    p1: float                 # softmax_focal: gamma; multi_margin: p (1 or 2)
    want_out: bool            # per-row values (n * inner,) in the input dtype
    want_grad: bool           # grad_scale * d(sum of row values)/d input, like input
    grad_scale: float
    total_scale: float        # value = total_scale * sum of row values


#: activations the overlap kernels apply to the input, per voxel
OVERLAP_ACTIVATIONS = ("none", "softmax", "sigmoid")


@dataclass(slots=True)
class OverlapCall:
    """One overlap (Dice-family) kernel call, already validated and laid out.

    ``input`` is flat and contiguous, ``n * classes * inner`` elements of one
    float dtype, read as (N, C, S): element (i, c, s) at ``(i*C + c)*S + s``;
    a *voxel* is one (i, s).  p = the activation of the input: softmax over the
    C values of a voxel, a sigmoid per element, or the input itself.

    ``target``, for ``target_kind == "labels"``: flat (n * inner,) labels of
    dtype int32, int64 or uint8 (each in [0, C + label_base) or equal to
    ``ignore_index``, checked before the call); the target of class c is
    t = [label == c + label_base] (label_base is 1 for C == 1: binary labels
    whose foreground is the one channel).  A voxel whose label equals
    ``ignore_index`` is left out of every sum and gets a zero gradient.
    For ``target_kind == "mask"``: flat like the input, uint8 (0/1, bools
    viewed as uint8) or the input's float dtype; t is its value.

    The statistics, per (i, c), float64, summed over the non-ignored voxels
    in an order fixed by the shape (any thread count gives the same bits):
    I = sum p t,  P = sum p^q,  T = sum t^q,  q = 2 if ``squared`` else 1.

    Each backend module has ``overlap(call, finish) -> (stats, grad)``:
    ``stats`` is a host float64 (N, C, 3) array of (I, P, T).  When
    ``want_grad`` it then calls ``coef = finish(stats)``, a host float64
    (N, C, 2) array (a, b), and computes the gradient of the loss with respect
    to the input, given dL/dp = a t + b (2p if squared else 1) at each
    non-ignored element, chained through the activation; else ``grad`` is
    None and ``finish`` is not called.  ``grad`` is like the input (flat, its
    dtype, on its device).
    """

    input: Any
    target: Any
    target_kind: str          # "labels" or "mask"
    n: int                    # N
    classes: int              # C
    inner: int                # S = d1 * ... * dk
    activation: str           # one of OVERLAP_ACTIVATIONS
    squared: bool
    ignore_index: int         # labels only; -2**63: none
    label_base: int           # 0, or 1 when C == 1
    want_grad: bool


#: box regression kernel names (see BoxCall), in the C table's order
BOX_KERNELS = ("giou", "diou", "ciou")


@dataclass(slots=True)
class BoxCall:
    """One box-loss kernel call, already validated and laid out.

    ``boxes1`` and ``boxes2`` are flat, contiguous arrays of ``4 * n`` values
    of one float dtype on one device: n boxes (x1, y1, x2, y2), interleaved;
    ``boxes2`` are the targets (no gradient).  The per-box value l_i and its
    gradient are written out in csrc/boxes_math.h and kernels/_boxmath.py;
    every backend computes the same formulas.  ``eps`` enters iou and the
    enclosing-box terms, ``eps_alpha`` only CIoU's alpha (torchvision's CIoU
    uses 1e-7 for its DIoU part and the eps argument for alpha).

    Each backend module has ``boxes(call) -> (value, out, grad)``: value =
    ``total_scale * sum_i l_i`` (float64, deterministic; a 0-d device array on
    the GPU), ``out`` the n values l_i in the dtype when ``want_out`` (else
    None), ``grad`` the 4n values ``grad_scale * d l_i / d boxes1_i``,
    interleaved like the boxes, when ``want_grad`` (else None).

    With ``check``, the backend also finds the first degenerate box (x2 < x1
    or y2 < y1; NaN is not) of each argument, in the same pass where it can,
    and stores its index in ``bad1`` / ``bad2`` (-1: none).  If either is
    found the caller raises and discards the results (which may then be
    anything, or None).
    """

    loss: str                 # one of BOX_KERNELS
    boxes1: Any
    boxes2: Any
    n: int                    # boxes
    eps: float
    eps_alpha: float
    want_out: bool
    want_grad: bool
    grad_scale: float
    total_scale: float
    check: bool = False
    bad1: int = -1            # results of the check
    bad2: int = -1
