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
"""
from __future__ import annotations

import math

import numpy as np

from .. import _dispatch, reference
from .._validate import (ArrayMeta, check_bool, check_input, check_positive, check_real,
                         check_reduction, check_same_place, REDUCTIONS)
from ..kernels import LABEL_DTYPES, OverlapCall
from .multiclass import (_check_int, _layout, _raise_bad_label, _scan_labels_numpy,
                         _NO_IGNORE)

__all__ = ["dice_loss", "jaccard_loss", "tversky_loss", "generalized_dice_loss",
           "OVERLAP_LOSSES"]

OVERLAP_LOSSES = ("dice_loss", "jaccard_loss", "tversky_loss", "generalized_dice_loss")
_ACTIVATIONS = {None: "none", "none": "none", "softmax": "softmax", "sigmoid": "sigmoid"}
_W_TYPES = ("square", "simple", "uniform")


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
    else:   # every entry left out (ignore_empty): nothing to score, 0 and no gradient
        value = f.sum() / count if count else 0.0
        d_entry = 1.0 / count if count else 0.0
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
    values = np.asarray(weight, dtype=np.float64)
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


def _run(loss, input, target, *, activation, include_background, smooth_nr, smooth_dr,
         batch, ignore_index, reduction, return_grad, backend, squared_pred=False,
         weight=None, ignore_empty=False, extra=None):
    if reduction not in REDUCTIONS:
        check_reduction(reduction)
    return_grad = check_bool(return_grad, "return_grad")
    if activation not in _ACTIVATIONS:
        raise ValueError(f"activation: expected 'softmax', 'sigmoid' or None, got {activation!r}")
    params = dict(extra or {})
    params.update(
        include_background=check_bool(include_background, "include_background"),
        batch=check_bool(batch, "batch"), ignore_empty=check_bool(ignore_empty, "ignore_empty"),
        smooth_nr=check_positive(smooth_nr, "smooth_nr", allow_zero=True),
        smooth_dr=check_positive(smooth_dr, "smooth_dr", allow_zero=True))
    squared_pred = check_bool(squared_pred, "squared_pred")
    x = check_input(input)
    t = ArrayMeta(target, "target")
    check_same_place({"input": x, "target": t})
    if len(x.shape) < 3:
        raise ValueError(f"input: expected shape (N, C, *spatial) with 1 to 3 spatial axes, "
                         f"got {x.shape}")
    n, classes, inner = x.shape[0], x.shape[1], math.prod(x.shape[2:])
    if classes < 1:
        raise ValueError(f"input: needs at least one class (axis 1), got shape {x.shape}")
    act = _ACTIVATIONS[activation]
    if act == "softmax" and classes == 1:
        raise ValueError(f"activation: 'softmax' over a single channel is constant 1 "
                         f"(input shape {x.shape}); use 'sigmoid' for binary segmentation")
    kind, t_array, label_base = _target_layout(t, x, classes)
    if ignore_index is not None:
        ignore_index = _check_int(ignore_index, "ignore_index")
        if kind == "mask":
            raise ValueError("ignore_index: applies to class-index targets only; with a mask "
                             "target, leave the voxels out of the mask instead")
    scored = classes - 1 if not params["include_background"] and classes > 1 else classes
    params["weight"] = _check_weight(weight, scored)

    name, module = _dispatch.select(backend, x.on_gpu)
    ignore = _NO_IGNORE if ignore_index is None else ignore_index
    if kind == "labels" and name == "numpy":
        _scan_labels_numpy(t, classes + label_base, ignore)
    elif kind == "labels":
        flat = _layout(ArrayMeta(t_array, "target"), "target")
        if not t.on_gpu and flat.dtype.name not in LABEL_DTYPES:
            flat = flat.astype(np.int64)
        first, _, _ = module.scan_labels(flat, classes + label_base, ignore, None)
        if first >= 0:
            _raise_bad_label(t, first, classes + label_base, ignore)
    if name == "numpy":
        kwargs = dict(activation=activation, include_background=params["include_background"],
                      smooth_nr=params["smooth_nr"], smooth_dr=params["smooth_dr"],
                      batch=params["batch"], ignore_index=ignore_index)
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

    if kind == "mask":
        flat = _layout(ArrayMeta(t_array, "target"), "target")
    call = OverlapCall(input=_layout(x, "input"), target=flat, target_kind=kind, n=n,
                       classes=classes, inner=inner, activation=act, squared=squared_pred,
                       ignore_index=ignore, label_base=label_base, want_grad=return_grad)
    result = {}

    def finish(stats):
        result["value"], coef = _evaluate(loss, stats, params, reduction, True)
        return coef

    stats, grad = module.overlap(call, finish)
    value = result["value"] if return_grad else _evaluate(loss, stats, params, reduction,
                                                          False)[0]
    if reduction == "none":
        value = np.asarray(value, dtype=x.dtype)
        if loss != "generalized_dice_loss" and params["batch"]:
            value = value.reshape(value.shape[1:])
        if x.on_gpu:
            from numba import cuda
            value = cuda.to_device(value)
    else:
        value = x.dtype.type(value)
    return (value, grad.reshape(x.shape)) if return_grad else value


# ---- the public losses ---------------------------------------------------------------

_COMMON = """
    input : (N, C, *spatial) float32/float64, 1 to 3 spatial axes: probabilities,
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
        the weights, as MONAI).
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

    squared_pred : bool
        Sum squares of the prediction and target.""")
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

    alpha, beta : float ≥ 0
    gamma : float > 0""")
def tversky_loss(input, target, *, alpha=0.5, beta=0.5, gamma=1.0, activation=None,
                 include_background=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=False,
                 weight=None, ignore_index=None, ignore_empty=False, reduction="mean",
                 return_grad=False, backend=None):
    extra = dict(alpha=check_positive(alpha, "alpha", allow_zero=True),
                 beta=check_positive(beta, "beta", allow_zero=True),
                 gamma=check_positive(gamma, "gamma"))
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

    w_type : "square" | "simple" | "uniform"
""", extra="")
def generalized_dice_loss(input, target, *, w_type="square", activation=None,
                          include_background=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=False,
                          ignore_index=None, reduction="mean", return_grad=False, backend=None):
    if w_type not in _W_TYPES:
        raise ValueError(f"w_type: expected one of {_W_TYPES}, got {w_type!r}")
    return _run("generalized_dice_loss", input, target, activation=activation,
                include_background=include_background, smooth_nr=smooth_nr,
                smooth_dr=smooth_dr, batch=batch, ignore_index=ignore_index,
                reduction=reduction, return_grad=return_grad, backend=backend,
                extra=dict(w_type=w_type))
