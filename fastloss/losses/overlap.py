"""Overlap losses for segmentation: Dice, Jaccard (IoU), Tversky and
generalized Dice over (N, C, *spatial) volumes, as MONAI defines them.

Every loss needs the same three sums per (sample, class) over the volume,
I = sum p t, P = sum p^q, T = sum t^q (p the activated prediction, t the
target, q = 2 with ``squared_pred``).  A kernel computes them in one pass over
the volume, for all classes at once, in float64; the loss is a function of
those (N, C) sums, computed here once for every backend (:func:`_score`); its
derivatives with respect to I and P give the gradient, which a second kernel
pass writes straight into the gradient output.  Class-index targets are read
as they are (uint8 included): no one-hot array, no activated copy of the
volume, extra memory O(N * C).

The three steps are public too, for a loss over a batch or volume split into
pieces (processes, dask chunks): :func:`dice_stats` (a piece's sums),
:func:`dice_from_stats` (the loss from the combined sums) and
:func:`dice_grad` (a piece's gradient of the global loss).
"""
from __future__ import annotations

import math
from typing import Any

import numpy as np

from .._convert import same_type_as_input
from .. import _dispatch, reference
from .._validate import (ArrayMeta, check_bool, check_input, check_positive, check_real,
                         check_reduction, check_same_place, REDUCTIONS)
from .._registry import records
from ..kernels import LABEL_DTYPES, OverlapCall, labels_as_int64
from .multiclass import (_LABEL_DTYPES, _check_int, _layout, _raise_bad_label, _scan_labels_numpy,
                         _NO_IGNORE)

__all__ = ["dice_loss", "jaccard_loss", "tversky_loss", "generalized_dice_loss",
           "dice_stats", "dice_from_stats", "dice_grad", "OVERLAP_LOSSES", "STATS_LOSSES"]

OVERLAP_LOSSES = tuple(r.name for r in records("overlap"))   # from the registry
_ACTIVATIONS = {None: "none", "none": "none", "softmax": "softmax", "sigmoid": "sigmoid"}
_W_TYPES = ("square", "simple", "uniform")
#: dice_from_stats(loss=...) -> the loss it computes
STATS_LOSSES = {"dice": "dice_loss", "jaccard": "jaccard_loss", "tversky": "tversky_loss",
                "generalized_dice": "generalized_dice_loss"}


# ---- the loss as a function of the sums -------------------------------------------

def _score(loss, I, P, T, params):
    """Per-entry loss f and its derivatives df/dI, df/dP (float64 arrays of
    I's shape (G, C'); for the generalized Dice, f is (G,) and the
    derivatives (G, C'))."""
    snr, sdr = params["smooth_nr"], params["smooth_dr"]
    with np.errstate(divide="ignore", invalid="ignore"):
        if loss == "dice_loss":
            num, den = 2.0 * I + snr, P + T + sdr
            return 1.0 - num / den, -2.0 / den, num / den ** 2
        if loss == "jaccard_loss":
            num, den = 2.0 * I + snr, 2.0 * (P + T - I) + sdr
            return 1.0 - num / den, -2.0 / den - 2.0 * num / den ** 2, 2.0 * num / den ** 2
        if loss == "tversky_loss":
            a, b, gamma = params["alpha"], params["beta"], params["gamma"]
            num = I + snr
            den = I + a * (P - I) + b * (T - I) + sdr
            ti = num / den
            dti_di = 1.0 / den - num * (1.0 - a - b) / den ** 2
            dti_dp = -num * a / den ** 2
            if gamma == 1.0:
                return 1.0 - ti, -dti_di, -dti_dp
            u = np.maximum(1.0 - ti, 0.0)
            f = u ** gamma
            df_dti = np.where(u > 0, -gamma * u ** (gamma - 1.0), 0.0)
            return f, df_dti * dti_di, df_dti * dti_dp
        # generalized Dice: class weights from the target sums, constants for the gradient
        w_type = params["w_type"]
        w = (1.0 / T ** 2 if w_type == "square" else 1.0 / T if w_type == "simple"
             else np.ones_like(T))
        infinite = np.isinf(w)
        w[infinite] = 0.0
        w = w + infinite * w.max(axis=1, keepdims=True)   # MONAI: the sample's largest weight
        num = 2.0 * (w * I).sum(axis=1) + snr
        den = (w * (P + T)).sum(axis=1) + sdr
        return (1.0 - num / den, -2.0 * w / den[:, None],
                w * (num / den ** 2)[:, None])


def _evaluate(loss, stats, params, reduction, want_coef):
    """(value, coef): the reduced loss from the (N, C, 3) sums, and the
    (N, C, 2) coefficients of dL/dp = a t + b dP/dp when ``want_coef``."""
    n, classes = stats.shape[:2]
    if params["batch"]:
        stats = stats.sum(axis=0, keepdims=True)
    first = 1 if not params["include_background"] and classes > 1 else 0
    I, P, T = (stats[:, first:, k] for k in range(3))
    f, df_di, df_dp = _score(loss, I, P, T, params)
    weight = params.get("weight")
    if weight is not None:
        f, df_di, df_dp = f * weight, df_di * weight, df_dp * weight
    if params.get("ignore_empty"):
        keep = T > 0
        f = np.where(keep, f, 0.0)
    else:
        keep = None
    count = f.size if keep is None else int(keep.sum())
    if reduction == "none":
        value, d_entry = f, 1.0
    elif reduction == "sum":
        value, d_entry = f.sum(), 1.0
    elif count:
        value, d_entry = f.sum() / count, 1.0 / count
    else:   # no entry: an empty batch is nan (MONAI's torch.mean of nothing); every
        # entry left out by ignore_empty is 0 (nothing to score); no gradient either way
        value, d_entry = (math.nan if f.size == 0 else 0.0), 0.0
    if not want_coef:
        return value, None
    if keep is not None:
        d_entry = d_entry * keep
    coef = np.zeros((n, classes, 2))
    coef[:, first:, 0] = d_entry * df_di     # broadcasts over the batch with batch=True
    coef[:, first:, 1] = d_entry * df_dp
    return value, coef


# ---- shared validation and dispatch -----------------------------------------------

def _target_layout(t: ArrayMeta, x: ArrayMeta, classes):
    """("labels" | "mask", the target as the kernels read it, label_base)."""
    shape, spatial = x.shape, x.shape[2:]
    if t.shape == shape:
        if t.dtype.kind == "b":
            array = t.array if t.on_gpu else np.ascontiguousarray(t.array).view(np.uint8)
            return "mask", array, 0
        if t.dtype == np.uint8:
            return "mask", t.array, 0
        if t.on_gpu and t.dtype != x.dtype:
            raise TypeError(f"target: a mask on the GPU must be uint8, bool or the input's "
                            f"dtype {x.dtype}, got {t.dtype}; fastloss does not convert on "
                            f"the GPU (no hidden copies)")
        return "mask", t.array if t.on_gpu else np.asarray(t.array, dtype=x.dtype), 0
    labels_shapes = [(shape[0],) + spatial]
    if classes > 1:
        labels_shapes.append((shape[0], 1) + spatial)
    if t.shape in labels_shapes:
        if t.dtype.kind not in "iu":
            raise TypeError(f"target: class indices must be integers, got dtype {t.dtype} "
                            f"with shape {t.shape}")
        return "labels", t.array, 1 if classes == 1 else 0
    raise ValueError(
        f"target: expected class indices of shape {labels_shapes[0]}"
        + (f" or {labels_shapes[1]}" if classes > 1 else "")
        + f", or a mask of the input's shape {shape}, got shape {t.shape}")


def _check_weight(weight, scored):
    if weight is None:
        return None
    try:
        values = np.asarray(weight, dtype=np.float64)
    except (TypeError, ValueError):
        raise TypeError(f"weight: expected a number or a sequence of numbers, one per "
                        f"scored class, got {weight!r}") from None
    if values.ndim == 0:
        values = np.full(scored, float(values))
    if values.shape != (scored,):
        raise ValueError(f"weight: expected a scalar or {scored} values, one per scored class "
                         f"(without the background when include_background=False), got "
                         f"shape {values.shape}")
    if not np.all(np.isfinite(values)) or np.any(values < 0):
        bad = values[~(np.isfinite(values) & (values >= 0))][0]
        raise ValueError(f"weight: every value must be finite and ≥ 0, got {bad!r}")
    return values


def _loss_params(include_background, batch, ignore_empty, smooth_nr, smooth_dr, extra=None):
    """The checked options of the loss as a function of the sums (see :func:`_evaluate`)."""
    params = dict(extra or {})
    params.update(
        include_background=check_bool(include_background, "include_background"),
        batch=check_bool(batch, "batch"), ignore_empty=check_bool(ignore_empty, "ignore_empty"),
        smooth_nr=check_positive(smooth_nr, "smooth_nr", allow_zero=True),
        smooth_dr=check_positive(smooth_dr, "smooth_dr", allow_zero=True))
    return params


def _tversky_params(alpha, beta, gamma):
    return dict(alpha=check_positive(alpha, "alpha", allow_zero=True),
                beta=check_positive(beta, "beta", allow_zero=True),
                gamma=check_positive(gamma, "gamma"))


def _check_w_type(w_type):
    if w_type not in _W_TYPES:
        raise ValueError(f"w_type: expected one of {_W_TYPES}, got {w_type!r}")
    return w_type


def _check_activation(activation):
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation: expected 'softmax', 'sigmoid' or None, got {activation!r}")
    return _ACTIVATIONS[activation]


class _Volume:
    """A checked (input, target) pair as the kernels read it (see :func:`_volume`)."""

    __slots__ = ("x", "t", "n", "classes", "inner", "act", "kind", "t_array", "label_base",
                 "ignore_index", "ignore", "name", "module")
    x: ArrayMeta
    t: ArrayMeta
    n: int
    classes: int
    inner: int
    act: str                  # "none" | "softmax" | "sigmoid"
    kind: str                 # "labels" | "mask"
    t_array: Any              # the target as the kernels read it
    label_base: int
    ignore_index: int | None
    ignore: int               # ignore_index, or _NO_IGNORE
    name: str                 # the backend, once _select has run
    module: Any


def _volume(input, target, activation, ignore_index) -> _Volume:
    """Check the input, the target's layout and ``ignore_index`` (no backend yet)."""
    v = _Volume()
    v.act = _check_activation(activation)
    v.x = x = check_input(input)
    v.t = t = ArrayMeta(target, "target")
    check_same_place({"input": x, "target": t})
    if len(x.shape) < 3:
        raise ValueError(f"input: expected shape (N, C, *spatial) with one or more spatial axes, "
                         f"got {x.shape}")
    v.n, v.classes, v.inner = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    if v.classes < 1:
        raise ValueError(f"input: needs at least one class (axis 1), got shape {x.shape}")
    if v.act == "softmax" and v.classes == 1:
        raise ValueError(f"activation: 'softmax' over a single channel is constant 1 "
                         f"(input shape {x.shape}); use 'sigmoid' for binary segmentation")
    v.kind, v.t_array, v.label_base = _target_layout(t, x, v.classes)
    if ignore_index is not None:
        ignore_index = _check_int(ignore_index, "ignore_index")
        if v.kind == "mask":
            raise ValueError("ignore_index: applies to class-index targets only; with a mask "
                             "target, leave the voxels out of the mask instead")
    v.ignore_index = ignore_index
    v.ignore = _NO_IGNORE if ignore_index is None else ignore_index
    return v


def _select(v: _Volume, backend):
    """Pick the backend and check the labels (before any kernel runs)."""
    v.name, v.module = name, module = _dispatch.select(backend, v.x.on_gpu)
    t, classes = v.t, v.classes + v.label_base
    if v.kind == "labels" and name == "numpy":
        _scan_labels_numpy(t, classes, v.ignore)
    elif v.kind == "labels":
        flat = _layout(t, "target")          # (labels: t_array is t's array)
        if not t.on_gpu and flat.dtype not in _LABEL_DTYPES:
            flat = labels_as_int64(flat)
        first, _, _ = module.scan_labels(flat, classes, v.ignore, None)
        if first >= 0:
            _raise_bad_label(t, first, classes, v.ignore)
        v.t_array = flat            # converted once, for the scan and the kernel


def _call(v: _Volume, squared_pred, want_grad) -> OverlapCall:
    target = v.t_array
    if v.kind == "mask":
        target = _layout(ArrayMeta(target, "target"), "target")
    return OverlapCall(input=_layout(v.x, "input"), target=target, target_kind=v.kind,
                       n=v.n, classes=v.classes, inner=v.inner, activation=v.act,
                       squared=squared_pred, ignore_index=v.ignore, label_base=v.label_base,
                       want_grad=want_grad)


def _reference_operands(v: _Volume):
    """backend="numpy": (x, p, t, m) of the float64 reference (see fastloss.reference)."""
    return reference._overlap_operands(np.asarray(v.x.array), np.asarray(v.t.array),
                                       None if v.act == "none" else v.act, v.ignore_index)


def _run(loss, input, target, *, activation, include_background, smooth_nr, smooth_dr,
         batch, ignore_index, reduction, return_grad, backend, squared_pred=False,
         weight=None, ignore_empty=False, extra=None):
    if reduction not in REDUCTIONS:
        check_reduction(reduction)
    return_grad = check_bool(return_grad, "return_grad")
    params = _loss_params(include_background, batch, ignore_empty, smooth_nr, smooth_dr, extra)
    squared_pred = check_bool(squared_pred, "squared_pred")
    v = _volume(input, target, activation, ignore_index)
    x, t = v.x, v.t
    scored = v.classes - 1 if not params["include_background"] and v.classes > 1 else v.classes
    params["weight"] = _check_weight(weight, scored)
    _select(v, backend)

    if v.name == "numpy":
        kwargs = dict(activation=activation, include_background=params["include_background"],
                      smooth_nr=params["smooth_nr"], smooth_dr=params["smooth_dr"],
                      batch=params["batch"], ignore_index=v.ignore_index)
        kwargs.update(extra or {})
        if loss in ("dice_loss", "jaccard_loss"):
            kwargs["squared_pred"] = squared_pred
        if loss != "generalized_dice_loss":
            kwargs.update(weight=weight, ignore_empty=params["ignore_empty"])
        result = getattr(reference, loss)(np.asarray(x.array), np.asarray(t.array),
                                          reduction=reduction, return_grad=return_grad,
                                          **kwargs)
        value, grad = result if return_grad else (result, None)
        value = (np.asarray(value).astype(x.dtype) if reduction == "none"
                 else x.dtype.type(value))
        return (value, np.asarray(grad).astype(x.dtype)) if return_grad else value

    result = {}

    def finish(stats):
        result["value"], coef = _evaluate(loss, stats, params, reduction, True)
        return coef

    stats, grad = v.module.overlap(_call(v, squared_pred, return_grad), finish)
    value = result["value"] if return_grad else _evaluate(loss, stats, params, reduction,
                                                          False)[0]
    value = _shape_value(loss, value, params, reduction)
    if reduction == "none":
        value = np.asarray(value, dtype=x.dtype)
        if x.on_gpu:
            from numba import cuda
            value = cuda.to_device(value)
    else:
        value = x.dtype.type(value)
    return (value, grad.reshape(x.shape)) if return_grad else value


def _shape_value(loss, value, params, reduction):
    """``"none"``: (C',) entries with ``batch=True`` (the generalized Dice keeps (1,))."""
    if reduction == "none" and loss != "generalized_dice_loss" and params["batch"]:
        value = value.reshape(value.shape[1:])
    return value


# ---- the public losses ---------------------------------------------------------------

_COMMON = """
    input : (N, C, *spatial) float32/float64, one or more spatial axes: probabilities,
        or logits with ``activation``.
    target : class indices (N, *spatial) of any integer dtype (uint8 is read as
        it is; no one-hot array is made), or (N, 1, *spatial) as MONAI's
        ``to_onehot_y`` takes them; or a mask of the input's shape (bool,
        uint8, or float for soft labels).  With C == 1, class indices are
        binary (0 background, 1 the foreground, which the one channel scores).
    activation : "softmax" | "sigmoid" | None
        Applied per voxel inside the kernel (no activated copy is made).
        None: the input is the prediction.  Softmax needs C ≥ 2.
    include_background : bool
        False leaves channel 0 out of the score (the softmax still uses it).
    smooth_nr, smooth_dr : float ≥ 0
        Added to the numerator and the denominator of the ratio (MONAI's).
    batch : bool
        Sum over the batch before the ratio (one score per class).
    ignore_index : int or None
        Class-index targets only: voxels with this label are left out of
        every sum and get a zero gradient (a class in [0, C) may be given: its
        voxels are then left out, as in MONAI).
    reduction : "mean" | "sum" | "none"
        {none} ``"mean"`` is the plain mean of the entries (not divided by
        the weights, as MONAI); of an empty batch (N = 0) it is nan, as MONAI's.
    return_grad : bool
        Also return d(result)/d(input) (for ``"none"``: of the sum), the
        input's shape and dtype.
    backend : "c" | "numba" | "cuda" | "numpy" | None
        See :func:`fastloss.backends`; None picks one from the inputs.

    A label outside [0, C) that is not ``ignore_index``, a target of another
    shape, fewer than 3 input axes or softmax with C == 1 raise before any
    kernel runs.  The sums are float64 and, for a given shape, the same bits
    whatever the thread count.
"""

_ENTRIES = ('``"none"`` returns the (N, C\') entries, C\' the scored classes, or '
            '(C\',) with ``batch=True``.')

_WEIGHTING = """
    weight : float or sequence of C' floats ≥ 0, optional
        Multiplies each class's entry (C' = the scored classes), as MONAI's;
        also when a single class is scored, where MONAI drops the weight.
    ignore_empty : bool
        Leave out of the reduction the entries whose target sum T is 0 (the
        class is absent from that sample's target, or the batch's with
        ``batch=True``), instead of scoring them (an absent class scores about
        0 when the prediction is absent too and about 1 otherwise).  ``"mean"``
        then divides by the entries kept; with none kept the value is 0 and
        the gradient 0; ``"none"`` puts 0 at the entries left out.  Default
        False: MONAI's losses have no such option, and their values are the
        reference.  With soft predictions P is never exactly 0, so "absent"
        is judged on the target alone (as MONAI's ``DiceMetric(ignore_empty)``).
"""


def _doc(text, extra=_WEIGHTING):
    def decorate(fn):
        fn.__doc__ = (text.rstrip() + "\n" + extra.rstrip("\n") +
                      _COMMON.format(none=_ENTRIES if fn.__name__ != "generalized_dice_loss"
                                     else '``"none"`` returns (N,), or (1,) with '
                                          '``batch=True``, as MONAI.'))
        return fn
    return decorate


#: the start of the examples below: a 4 x 4 image of two classes, class 1 in the top
#: half of the target and predicted there
_TWO_CLASS_EXAMPLE = """    Example::

        >>> import numpy as np, fastloss as fl
        >>> logits = np.zeros((1, 2, 4, 4), np.float32)
        >>> logits[0, 1, :2] = 2.0              # class 1 predicted in the top half
        >>> labels = np.zeros((1, 4, 4), np.uint8)
        >>> labels[0, :2] = 1                   # and there in the target
"""


@_doc("""Dice loss, as MONAI's ``DiceLoss`` (``to_onehot_y=True`` for index targets).

    Per (sample, class): I = Σ p t, P = Σ p^q, T = Σ t^q over the voxels
    (q = 2 with ``squared_pred``, else 1), and
    f = 1 − (2 I + smooth_nr) / (P + T + smooth_dr).

    Example::

        >>> import numpy as np, fastloss as fl
        >>> logits = np.zeros((1, 2, 4, 4), np.float32)
        >>> labels = np.zeros((1, 4, 4), np.uint8)
        >>> round(float(fl.dice_loss(logits, labels, activation="softmax")), 4)
        0.6667
        >>> # class 1 is absent from the target: scored about 1 above, left out here
        >>> round(float(fl.dice_loss(logits, labels, activation="softmax",
        ...                          ignore_empty=True)), 4)
        0.3333

    squared_pred : bool
        Sum squares of the prediction and target in the denominator.""")
@same_type_as_input
def dice_loss(input, target, *, activation=None, include_background=True, squared_pred=False,
              smooth_nr=1e-5, smooth_dr=1e-5, batch=False, weight=None, ignore_index=None,
              ignore_empty=False, reduction="mean", return_grad=False, backend=None):
    return _run("dice_loss", input, target, activation=activation,
                include_background=include_background, squared_pred=squared_pred,
                smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch, weight=weight,
                ignore_index=ignore_index, ignore_empty=ignore_empty, reduction=reduction,
                return_grad=return_grad, backend=backend)


@_doc("""Jaccard (IoU) loss, as MONAI's ``DiceLoss(jaccard=True)``.

    With the sums of :func:`dice_loss`:
    f = 1 − (2 I + smooth_nr) / (2 (P + T − I) + smooth_dr).

""" + _TWO_CLASS_EXAMPLE + """        >>> round(float(fl.jaccard_loss(logits, labels, activation="softmax")), 4)
        0.483

    squared_pred : bool
        Sum squares of the prediction and target.""")
@same_type_as_input
def jaccard_loss(input, target, *, activation=None, include_background=True,
                 squared_pred=False, smooth_nr=1e-5, smooth_dr=1e-5, batch=False, weight=None,
                 ignore_index=None, ignore_empty=False, reduction="mean", return_grad=False,
                 backend=None):
    return _run("jaccard_loss", input, target, activation=activation,
                include_background=include_background, squared_pred=squared_pred,
                smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch, weight=weight,
                ignore_index=ignore_index, ignore_empty=ignore_empty, reduction=reduction,
                return_grad=return_grad, backend=backend)


@_doc("""Tversky loss, as MONAI's ``TverskyLoss``; focal Tversky for gamma ≠ 1.

    With I = Σ p t, P = Σ p, T = Σ t per (sample, class):
    TI = (I + smooth_nr) / (I + α (P − I) + β (T − I) + smooth_dr), and
    f = 1 − TI, or max(1 − TI, 0)^γ for γ ≠ 1 (the focal Tversky loss of
    Abraham and Khan, 2019, with the exponent written γ: their 1/γ = 4/3 is
    gamma=0.75 here; MONAI has no gamma).  α weighs false positives, β false
    negatives (α = β = 0.5 is the Dice loss).

""" + _TWO_CLASS_EXAMPLE + """        >>> round(float(fl.tversky_loss(logits, labels, activation="softmax",
        ...                             alpha=0.3, beta=0.7)), 4)
        0.3225
        >>> # focal Tversky, Abraham and Khan's 1/gamma = 4/3
        >>> round(float(fl.tversky_loss(logits, labels, activation="softmax",
        ...                             alpha=0.3, beta=0.7, gamma=0.75)), 4)
        0.4229

    alpha, beta : float ≥ 0
    gamma : float > 0""")
@same_type_as_input
def tversky_loss(input, target, *, alpha=0.5, beta=0.5, gamma=1.0, activation=None,
                 include_background=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=False,
                 weight=None, ignore_index=None, ignore_empty=False, reduction="mean",
                 return_grad=False, backend=None):
    extra = _tversky_params(alpha, beta, gamma)
    return _run("tversky_loss", input, target, activation=activation,
                include_background=include_background, smooth_nr=smooth_nr,
                smooth_dr=smooth_dr, batch=batch, weight=weight, ignore_index=ignore_index,
                ignore_empty=ignore_empty, reduction=reduction, return_grad=return_grad,
                backend=backend, extra=extra)


@_doc("""Generalized Dice loss (Sudre et al., 2017), as MONAI's ``GeneralizedDiceLoss``.

    With I, P, T per (sample, class) as in :func:`tversky_loss` and class
    weights w = 1/T² ("square"), 1/T ("simple") or 1 ("uniform") — a class
    with T = 0 takes the largest weight of the sample's other classes, as
    MONAI does — one score per sample:
    f = 1 − (2 Σ_c w I + smooth_nr) / (Σ_c w (P + T) + smooth_dr).
    The weights depend on the target only: constants for the gradient.

""" + _TWO_CLASS_EXAMPLE + """        >>> round(float(fl.generalized_dice_loss(logits, labels, activation="softmax")), 4)
        0.3096

    w_type : "square" | "simple" | "uniform"
""", extra="")
@same_type_as_input
def generalized_dice_loss(input, target, *, w_type="square", activation=None,
                          include_background=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=False,
                          ignore_index=None, reduction="mean", return_grad=False, backend=None):
    _check_w_type(w_type)
    return _run("generalized_dice_loss", input, target, activation=activation,
                include_background=include_background, smooth_nr=smooth_nr,
                smooth_dr=smooth_dr, batch=batch, ignore_index=ignore_index,
                reduction=reduction, return_grad=return_grad, backend=backend,
                extra=dict(w_type=w_type))


# ---- the sufficient statistics: the losses over shards (distributed training, dask) ----
#
# Every overlap loss is a function of the (N, C, 3) sums (I, P, T), and sums add up: the
# sums of a volume split into pieces (along the batch or the spatial axes) are the sums of
# the pieces.  dice_stats computes them for one piece, dice_from_stats the loss from the
# combined sums, exactly as the loss itself does (the same _evaluate), and dice_grad the
# gradient of that (global) loss with respect to one piece, from the coefficients
# dice_from_stats returns.

def dice_stats(input, target, *, activation: str | None = None, squared_pred: bool = False,
               ignore_index: int | None = None, backend: str | None = None) -> np.ndarray:
    """The per-(sample, class) sums every overlap loss is computed from.

    Returns a host NumPy float64 array of shape (N, C, 3): ``[..., 0]`` is
    I = Σ p t, ``[..., 1]`` P = Σ p^q, ``[..., 2]`` T = Σ t^q over the
    non-ignored voxels of each sample, for every class (``include_background``
    is applied later, by :func:`dice_from_stats`), with p the activated input,
    t the target and q = 2 with ``squared_pred`` (else 1).  The arguments mean
    what they mean in :func:`dice_loss` and are checked the same way, before
    any kernel runs; the sums are the kernels' own (float64, the same bits
    whatever the thread count), also for GPU input (a small host array).

    Sums add up, so the statistics of a batch split over processes or chunks
    combine into those of the whole:

    - along the spatial axes: add the pieces' arrays;
    - along the batch: concatenate the rows (``batch=False`` needs them,
      one row per sample), or add them up after summing each piece over its
      own samples (``stats.sum(axis=0, keepdims=True)``: all that
      ``batch=True`` needs; an ``all_reduce`` of a (1, C, 3) array).

    :func:`tversky_loss` and :func:`generalized_dice_loss` use q = 1: leave
    ``squared_pred`` False for them.

    Example::

        >>> import numpy as np, fastloss.losses.overlap as ov
        >>> probs = np.array([[[0.9, 0.2, 0.1, 0.8]]])       # (N=1, C=1, 4 voxels)
        >>> mask = np.array([[[1.0, 0.0, 0.0, 1.0]]])
        >>> ov.dice_stats(probs, mask)                       # I, P, T
        array([[[1.7, 2. , 2. ]]])
        >>> # two halves of the volume: their sums add up to the whole's
        >>> halves = ov.dice_stats(probs[..., :2], mask[..., :2]) + ov.dice_stats(
        ...     probs[..., 2:], mask[..., 2:])
        >>> bool(np.allclose(halves, ov.dice_stats(probs, mask)))
        True
    """
    squared_pred = _check_stats_args(activation, squared_pred)
    v = _volume(input, target, activation, ignore_index)
    _select(v, backend)
    if v.name == "numpy":
        _, p, t, m = _reference_operands(v)
        _, I, P, T = reference._overlap_sums(p, t, m, True, False, 2 if squared_pred else 1)
        return np.stack([a.reshape(v.n, v.classes) for a in (I, P, T)], axis=-1)
    stats, _ = v.module.overlap(_call(v, squared_pred, False), None)
    return stats


def dice_from_stats(stats, *, loss: str = "dice", include_background: bool = True,
                    smooth_nr: float = 1e-5, smooth_dr: float = 1e-5, batch: bool = False,
                    weight=None, ignore_empty: bool = False, alpha: float = 0.5,
                    beta: float = 0.5, gamma: float = 1.0, w_type: str = "square",
                    reduction: str = "mean", return_coef: bool = False) -> Any:
    """An overlap loss from its sums (:func:`dice_stats`), possibly combined
    over processes or chunks: the value :func:`dice_loss`, :func:`jaccard_loss`,
    :func:`tversky_loss` or :func:`generalized_dice_loss` would give for the
    whole volume, computed by the same code.

    stats : (N, C, 3) float array of the sums (I, P, T); with ``batch=True``
        its rows are added up first, so (1, C, 3) sums over a whole batch
        (e.g. all-reduced) are enough.
    loss : "dice" | "jaccard" | "tversky" | "generalized_dice"
    include_background, smooth_nr, smooth_dr, batch, weight, ignore_empty,
    reduction : as in the loss (and with its defaults); ``weight`` and
        ``ignore_empty`` are not options of the generalized Dice loss.
    alpha, beta, gamma : the Tversky loss's (given another value for another
        loss, they raise); w_type : the generalized Dice loss's, likewise.
    return_coef : also return ``coef``, a float64 (N, C, 2) array (N the rows
        of ``stats``): ``coef[..., 0]`` = ∂L/∂I, ``coef[..., 1]`` = ∂L/∂P for
        each row (with ``reduction="none"``: of the sum of the entries; with
        ``batch=True`` every row holds the batch's coefficient).  The target
        sums T have no gradient (the generalized Dice weights are constants,
        as in the loss).  :func:`dice_grad` turns the rows of a piece into
        the gradient with respect to that piece's input.

    Returns the value as the loss does (a float64 scalar, or the entries for
    ``"none"``), and ``coef`` with ``return_coef``.

    Example (two shards of a batch, e.g. two processes)::

        >>> import numpy as np, fastloss as fl, fastloss.losses.overlap as ov
        >>> rng = np.random.default_rng(0)
        >>> logits = rng.normal(size=(4, 3, 8, 8))
        >>> labels = rng.integers(0, 3, size=(4, 8, 8))
        >>> parts = [ov.dice_stats(logits[i:i + 2], labels[i:i + 2], activation="softmax")
        ...          for i in (0, 2)]
        >>> # batch=True: the shards' sums over their samples, added (an all_reduce)
        >>> total = sum(p.sum(axis=0, keepdims=True) for p in parts)
        >>> value = ov.dice_from_stats(total, batch=True)
        >>> bool(np.isclose(value, fl.dice_loss(logits, labels, activation="softmax",
        ...                                     batch=True)))
        True
        >>> # batch=False: the shards' rows, concatenated (an all_gather)
        >>> value, coef = ov.dice_from_stats(np.concatenate(parts), loss="tversky",
        ...                                  alpha=0.3, beta=0.7, return_coef=True)
        >>> bool(np.isclose(value, fl.tversky_loss(logits, labels, activation="softmax",
        ...                                        alpha=0.3, beta=0.7)))
        True
        >>> coef.shape
        (4, 3, 2)
    """
    if not isinstance(loss, str) or loss not in STATS_LOSSES:
        raise ValueError(f"loss: expected one of {', '.join(map(repr, STATS_LOSSES))}, "
                         f"got {loss!r}")
    if reduction not in REDUCTIONS:
        check_reduction(reduction)
    return_coef = check_bool(return_coef, "return_coef")
    name = STATS_LOSSES[loss]
    extra = {}
    if loss == "tversky":
        extra = _tversky_params(alpha, beta, gamma)
    else:
        _only_for(loss, "tversky", alpha=(alpha, 0.5), beta=(beta, 0.5), gamma=(gamma, 1.0))
    if loss == "generalized_dice":
        extra["w_type"] = _check_w_type(w_type)
        if weight is not None:
            raise ValueError("weight: not an option of the generalized Dice loss (its class "
                             "weights come from w_type); leave it None")
        if ignore_empty is not False:
            raise ValueError("ignore_empty: not an option of the generalized Dice loss; "
                             "leave it False")
    else:
        _only_for(loss, "generalized_dice", w_type=(w_type, "square"))
    params = _loss_params(include_background, batch, ignore_empty, smooth_nr, smooth_dr, extra)
    meta = ArrayMeta(stats, "stats")
    if meta.on_gpu:
        raise TypeError("stats: expected a host array (dice_stats returns one), got a GPU "
                        "array; copy it to the host first (it is small)")
    if len(meta.shape) != 3 or meta.shape[2] != 3 or meta.shape[1] < 1:
        raise ValueError(f"stats: expected shape (N, C, 3), the sums (I, P, T) per sample "
                         f"and class as dice_stats returns them, got {meta.shape}")
    if meta.dtype.kind != "f":
        raise TypeError(f"stats: expected float sums (float64, as dice_stats returns), got "
                        f"dtype {meta.dtype}")
    classes = meta.shape[1]
    scored = classes - 1 if not params["include_background"] and classes > 1 else classes
    params["weight"] = _check_weight(weight, scored)
    values = np.asarray(meta.array, dtype=np.float64)
    value, coef = _evaluate(name, values, params, reduction, return_coef)
    value = _shape_value(name, value, params, reduction)
    value = np.asarray(value, dtype=np.float64) if reduction == "none" else np.float64(value)
    return (value, coef) if return_coef else value


@same_type_as_input
def dice_grad(input, target, coef, *, activation: str | None = None,
              squared_pred: bool = False, ignore_index: int | None = None,
              backend: str | None = None) -> Any:
    """The gradient with respect to ``input`` of a loss whose derivatives with
    respect to the sums are ``coef`` (from ``dice_from_stats(...,
    return_coef=True)``): dL/dp = ∂L/∂I t + ∂L/∂P q p^(q-1) at every
    non-ignored voxel, chained through the activation, by the backend's
    gradient kernel (the one the losses use).  Computed with the global
    sums' coefficients, it is the piece's share of the global loss's gradient.

    coef : (N, C, 2) float array, N the samples of ``input`` (with
        ``batch=False``, the rows of the global ``coef`` that belong to this
        piece's samples), or (1, C, 2): one row for every sample (what
        ``batch=True`` gives).
    input, target, activation, squared_pred, ignore_index, backend : as in
        :func:`dice_stats` (the same as for the sums).

    Returns an array of the input's shape and dtype (on its device).  The
    backends compute the piece's sums again on the way (the kernel contract
    computes the gradient after the sums): one extra pass over the piece.

    Example (the gradient of the batch's loss, shard by shard)::

        >>> import numpy as np, fastloss as fl, fastloss.losses.overlap as ov
        >>> rng = np.random.default_rng(1)
        >>> logits = rng.normal(size=(4, 2, 6, 6))
        >>> labels = rng.integers(0, 2, size=(4, 6, 6))
        >>> shards = [(logits[:1], labels[:1]), (logits[1:], labels[1:])]
        >>> rows = np.concatenate([ov.dice_stats(x, y, activation="softmax")
        ...                        for x, y in shards])
        >>> value, coef = ov.dice_from_stats(rows, return_coef=True)
        >>> grads = [ov.dice_grad(shards[0][0], shards[0][1], coef[:1], activation="softmax"),
        ...          ov.dice_grad(shards[1][0], shards[1][1], coef[1:], activation="softmax")]
        >>> full_value, full_grad = fl.dice_loss(logits, labels, activation="softmax",
        ...                                      return_grad=True)
        >>> bool(np.allclose(np.concatenate(grads), full_grad))
        True
    """
    squared_pred = _check_stats_args(activation, squared_pred)
    v = _volume(input, target, activation, ignore_index)
    meta = ArrayMeta(coef, "coef")
    if meta.on_gpu:
        raise TypeError("coef: expected a host array (dice_from_stats returns one), got a "
                        "GPU array")
    if meta.shape not in ((v.n, v.classes, 2), (1, v.classes, 2)):
        raise ValueError(f"coef: expected shape ({v.n}, {v.classes}, 2) (one row per sample "
                         f"of the input {v.x.shape}) or (1, {v.classes}, 2), got {meta.shape}")
    if meta.dtype.kind != "f":
        raise TypeError(f"coef: expected a float array, got dtype {meta.dtype}")
    coef = np.ascontiguousarray(np.broadcast_to(np.asarray(meta.array, dtype=np.float64),
                                                (v.n, v.classes, 2)))
    _select(v, backend)
    if v.name == "numpy":
        x, p, t, m = _reference_operands(v)
        shape = (v.n, v.classes) + (1,) * (x.ndim - 2)
        grad = reference._overlap_grad(x, p, t, m, 0, 2 if squared_pred else 1,
                                       coef[..., 0].reshape(shape),
                                       coef[..., 1].reshape(shape), v.act)
        return grad.astype(v.x.dtype)
    _, grad = v.module.overlap(_call(v, squared_pred, True), lambda stats: coef)
    return grad.reshape(v.x.shape)


def _check_stats_args(activation, squared_pred) -> bool:
    _check_activation(activation)
    return check_bool(squared_pred, "squared_pred")


def _only_for(loss, owner, **given):
    """Options of another loss must keep their defaults (a changed one is a mistake)."""
    for name, (value, default) in given.items():
        if value != default:
            raise ValueError(f"{name}: an option of loss={owner!r} only, got {name}={value!r} "
                             f"with loss={loss!r}")
