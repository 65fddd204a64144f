"""Multi-class losses: one value per row of C class scores (row-wise kernels).

The input is (N, C) or (N, C, d1, ..., dk) with the class axis 1, as in
PyTorch, or a single row (C,).  The kernels read it in place as (N, C, S),
S = d1 * ... * dk, with the class axis strided (nothing is transposed), and
never build a softmax, a one-hot or any (N, C)-sized temporary.

Each public function checks its own hyper-parameters and hands over to
:func:`_run`, the one place that checks shapes, dtypes, devices and labels,
picks the backend, computes the ``mean`` denominator and shapes the results.
"""
from __future__ import annotations

import math
import numbers
from typing import Callable, Literal, NamedTuple, overload

import numpy as np

from .. import _dispatch, reference
from .._convert import same_type_as_input
from .._typing import ArrayLike, Backend, F, Loss, LossAndGrad, Reduction
from .._validate import (FLOAT_DTYPES, REDUCTIONS, ArrayMeta, check_bool, check_input,
                         check_positive, check_real, check_reduction, check_same_place)
from .._plans import PlanCache
from .._registry import records
from ..kernels import (LABEL_DTYPES, MEAN_BY_COUNT, MEAN_BY_NONE, MEAN_BY_WEIGHT,
                       NO_IGNORE as _NO_IGNORE, RowwiseCall, labels_as_int64,
                       rowwise_launcher)

__all__ = ["cross_entropy", "nll_loss", "softmax_focal_loss", "multi_margin_loss",
           "multiclass_hinge_loss", "MULTICLASS_LOSSES", "MEAN_DIVIDES_BY"]

#: public name -> the kernels it uses (from the registry)
MULTICLASS_LOSSES = {r.name: r.kernels for r in records("multiclass")}

#: how "mean" divides the sum of the row values, per loss: "weight" the weights of the
#: non-ignored targets (their count without a weight; every row for probability
#: targets), "valid" the number of non-ignored targets, "rows" the number of rows
MEAN_DIVIDES_BY = {r.name: r.mean for r in records("multiclass")}

_LABEL_DTYPES = frozenset(np.dtype(name) for name in LABEL_DTYPES)

#: the compiled entry point's arguments per loss, made on first use: (the kernel's id in
#: fastloss._native, how its mean divides: 0 weight, 1 count, 2 rows; csrc/py/fastcall.c)
_FAST_ARGS: dict[str, tuple[int, int]] = {}


def _fast_args(public) -> tuple[int, int]:
    from ..kernels import native
    mean = ("weight", "valid", "rows").index(MEAN_DIVIDES_BY[public])
    args = _FAST_ARGS[public] = native.row_id(MULTICLASS_LOSSES[public][0]), mean
    return args


def _check_int(value, name) -> int:
    """An integer argument that the kernels take as int64 (ignore_index)."""
    if type(value) is not int:
        if isinstance(value, (bool, np.bool_)) or not isinstance(value, numbers.Integral):
            raise TypeError(f"{name}: expected an integer, got {value!r} "
                            f"({type(value).__name__})")
        value = int(value)
    if not -2**63 <= value < 2**63:
        raise ValueError(f"{name}: expected an integer in int64's range, got {value}")
    return value


def _check_class_vector(obj, name, classes, on_gpu):
    """A (C,) array of per-class values: float64 on the host, as given on the GPU."""
    meta = ArrayMeta(obj, name)
    if meta.shape != (classes,):
        raise ValueError(f"{name}: expected shape ({classes},), one value per class, "
                         f"got {meta.shape}")
    if meta.on_gpu != on_gpu:
        where = "the GPU" if meta.on_gpu else "the host"
        raise TypeError(f"{name}: on {where} but the input is not; move it to the input's "
                        f"device first")
    if on_gpu:
        if meta.dtype.kind != "f":
            raise TypeError(f"{name}: on the GPU, expected a float array, got {meta.dtype}")
        return meta.array
    values = np.ascontiguousarray(meta.array, dtype=np.float64)
    if not np.all(np.isfinite(values)):
        raise ValueError(f"{name}: every value must be finite, got {values[~np.isfinite(values)][0]!r}")
    return values


def _layout(meta: ArrayMeta, name, dtype=None):
    """A flat contiguous array: a view where possible, a copy for strided host
    arrays (never a view the kernel could write through)."""
    if meta.on_gpu:
        if not meta.contiguous:
            raise ValueError(f"{name}: non-contiguous GPU arrays are not supported yet "
                             f"(shape {meta.shape}); make a contiguous copy on the device first")
        if dtype is not None and meta.dtype != dtype:
            raise TypeError(f"{name}: dtype {meta.dtype} differs from the input's {dtype}; "
                            f"on the GPU fastloss does not convert (no hidden copies)")
        return meta.array
    return np.ascontiguousarray(meta.array, dtype=dtype).reshape(-1)


class _Plan(NamedTuple):
    """What one call signature decides, once (see :func:`_build_plan`)."""
    shape: tuple
    row_shape: tuple
    classes: int
    prob: bool                # probability targets of the input's shape
    ignore: int
    want_out: bool
    call: RowwiseCall         # the kernel call of the signature, its arrays aside
    launchers: dict           # backend name -> kernels.rowwise_launcher's, made on first use


_PLANS = PlanCache()


def _build_plan(public, shape, dtype, t_shape, t_dtype, reduction, return_grad,
                ignore_index, two_d_only, allow_prob, scalars) -> _Plan:
    """The shape and dtype checks of a call and the layout they decide (no backend)."""
    if not shape or (two_d_only and len(shape) > 2):
        want = "(C,) or (N, C)" if two_d_only else "(C,), (N, C) or (N, C, d1, ..., dk)"
        raise ValueError(f"input: expected shape {want}, got {shape}")
    if len(shape) == 1:
        n, classes, inner, row_shape = 1, shape[0], 1, ()
    else:
        n, classes, inner = shape[0], shape[1], math.prod(shape[2:])
        row_shape = (shape[0],) + tuple(shape[2:])
    if classes < 1:
        raise ValueError(f"input: needs at least one class (axis {0 if len(shape) == 1 else 1} "
                         f"has size 0), got shape {shape}")
    prob = allow_prob and t_shape == shape and t_dtype.kind == "f"
    if prob:
        if ignore_index is not None and ignore_index >= 0:
            raise ValueError(f"ignore_index: not supported with probability targets (got "
                             f"{ignore_index}; PyTorch raises too); leave it negative")
    else:
        if t_dtype.kind not in "iu":
            extra = (f" or class probabilities of the input's shape {shape}" if allow_prob
                     else "")
            raise TypeError(f"target: expected integer class indices{extra}, got dtype "
                            f"{t_dtype} with shape {t_shape}")
        if t_shape != row_shape:
            raise ValueError(f"target: class indices must have shape {row_shape} (the "
                             f"input's {shape} without the class axis), got {t_shape}")
    # losses without ignore_index: a value no label can take (-2**63), so every
    # label is checked and every row counts
    ignore = _NO_IGNORE if ignore_index is None else ignore_index
    rows = n * inner
    mean_by, scale = MEAN_BY_NONE, 1.0
    if reduction == "mean":
        divides_by = "rows" if prob else MEAN_DIVIDES_BY[public]
        if divides_by == "rows":
            scale = 1.0 / rows if rows else float("nan")   # 0/0: nan, as PyTorch
        else:
            mean_by = MEAN_BY_WEIGHT if divides_by == "weight" else MEAN_BY_COUNT
    smoothing, z_loss, p0, p1 = map(float, scalars)
    call = RowwiseCall(
        loss=MULTICLASS_LOSSES[public][1 if prob else 0], input=None, target=None, n=n,
        classes=classes, inner=inner, weight=None, alpha=None, ignore_index=ignore,
        smoothing=smoothing, z_loss=z_loss, p0=p0, p1=p1, want_out=reduction == "none",
        want_grad=return_grad, grad_scale=scale, total_scale=scale, check_labels=not prob,
        mean_by=mean_by)
    return _Plan(shape, row_shape, classes, prob, ignore, reduction == "none", call, {})


def _run(public, input, target, *, reduction, return_grad, backend, weight=None, alpha=None,
         ignore_index=None, smoothing=0.0, z_loss=0.0, p0=0.0, p1=0.0, two_d_only=False,
         allow_prob=False, reference_kwargs=None):
    if reduction not in REDUCTIONS:
        check_reduction(reduction)
    if weight is None and alpha is None:
        # the common small call, whole in C (or NotImplemented: then the path below
        # runs it and raises what it raises)
        fast = _dispatch.host_fast_path(backend)
        if fast is not None:
            result = fast.rowwise(*(_FAST_ARGS.get(public) or _fast_args(public)), input,
                                  target, reduction, return_grad,
                                  _NO_IGNORE if ignore_index is None else ignore_index,
                                  smoothing, z_loss, p0, p1)
            if result is not NotImplemented:
                return result
    if return_grad is not True and return_grad is not False:
        return_grad = check_bool(return_grad, "return_grad")
    if (type(input) is np.ndarray and type(target) is np.ndarray
            and input.dtype in FLOAT_DTYPES and target.dtype.kind in "biuf"):
        # host NumPy arrays, the common case: nothing to describe or convert
        x = t = None
        x_array, t_array, on_gpu = input, target, False
        shape, dtype, t_shape, t_dtype = input.shape, input.dtype, target.shape, target.dtype
    else:
        x = check_input(input)
        t = ArrayMeta(target, "target")
        check_same_place({"input": x, "target": t})
        x_array, t_array, on_gpu = x.array, t.array, x.on_gpu
        shape, dtype, t_shape, t_dtype = x.shape, x.dtype, t.shape, t.dtype
    scalars = (smoothing, z_loss, p0, p1)    # floats: the public functions checked them
    key = (public, shape, dtype, t_shape, t_dtype, reduction, return_grad, ignore_index,
           two_d_only, allow_prob, scalars)
    plan = _PLANS.lookup(key) or _PLANS.get(key, lambda: _build_plan(
        public, shape, dtype, t_shape, t_dtype, reduction, return_grad, ignore_index,
        two_d_only, allow_prob, scalars))
    if weight is not None:
        weight = _check_class_vector(weight, "weight", plan.classes, on_gpu)
    if alpha is not None:
        alpha = _check_class_vector(alpha, "alpha", plan.classes, on_gpu)
        if not on_gpu and np.any(alpha < 0):
            raise ValueError(f"alpha: per-class values must be ≥ 0, got {alpha[alpha < 0][0]!r}")
    name, module = _dispatch.select(backend, on_gpu)
    if name == "numpy":
        return _run_reference(public, plan, x_array, t_array, weight, alpha, reduction,
                              return_grad, reference_kwargs)
    launch = plan.launchers.get(name)
    if launch is None:
        launch = plan.launchers[name] = rowwise_launcher(module, plan.call, dtype)

    if on_gpu:
        x_flat = _layout(x, "input")
        t_flat = _layout(t, "target", dtype if plan.prob else None)
    else:   # host arrays in any layout: the launchers read them flat, copying strided ones
        x_flat, t_flat = x_array, t_array
        if plan.prob and t_dtype != dtype:
            t_flat = np.ascontiguousarray(t_array, dtype)
        elif not plan.prob and t_dtype not in _LABEL_DTYPES:
            t_flat = labels_as_int64(t_array)    # once, for the label check and the kernel
    value, out, grad, bad = launch(x_flat, t_flat, weight, alpha)
    if bad >= 0:
        _raise_bad_label(t if t is not None else ArrayMeta(t_array, "target"), bad,
                         plan.classes, plan.ignore)
    if plan.want_out:
        value = out.reshape(plan.row_shape)
    elif not on_gpu:
        value = dtype.type(value)
    return (value, grad.reshape(plan.shape)) if return_grad else value


def _run_reference(public, plan, x_array, t_array, weight, alpha, reduction, return_grad,
                   reference_kwargs):
    """backend="numpy": the float64 reference, cast back to the input's dtype."""
    x_array, t_array = np.asarray(x_array), np.asarray(t_array)
    if not plan.prob:
        _scan_labels_numpy(ArrayMeta(t_array, "target"), plan.classes, plan.ignore)
    kwargs = dict(reference_kwargs or {})
    if weight is not None:
        kwargs["weight"] = weight
    if alpha is not None:
        kwargs["alpha"] = alpha
    result = getattr(reference, public)(x_array, t_array, reduction=reduction,
                                        return_grad=return_grad, **kwargs)
    value, grad = result if return_grad else (result, None)
    dtype = x_array.dtype
    value = np.asarray(value).astype(dtype) if reduction == "none" else dtype.type(value)
    return (value, np.asarray(grad).astype(dtype)) if return_grad else value


def _scan_labels_numpy(t: ArrayMeta, classes, ignore):
    labels = np.asarray(t.array).reshape(-1)
    checked = (labels != ignore) if ignore != _NO_IGNORE else True
    bad = checked & ((labels < 0) | (labels >= classes))
    if bad.any():
        _raise_bad_label(t, int(np.argmax(bad)), classes, ignore)


def _raise_bad_label(t: ArrayMeta, flat_index, classes, ignore):
    position = np.unravel_index(flat_index, t.shape) if t.shape else ()
    if t.on_gpu:
        value = _read_gpu_element(t.array, flat_index)
    else:
        value = np.asarray(t.array).reshape(-1)[flat_index]
    which = "" if ignore == _NO_IGNORE else f" and is not ignore_index={ignore}"
    raise ValueError(f"target: class index {int(value)} at position {tuple(map(int, position))} "
                     f"is outside [0, {classes}){which}")


def _read_gpu_element(array, flat_index):
    from numba import cuda
    view = array if hasattr(array, "copy_to_host") else cuda.as_cuda_array(array)
    return view.reshape(view.size)[flat_index:flat_index + 1].copy_to_host()[0]


def _check_smoothing(label_smoothing):
    if type(label_smoothing) is float and 0.0 <= label_smoothing <= 1.0:
        return label_smoothing
    value = check_real(label_smoothing, "label_smoothing")
    if not 0.0 <= value <= 1.0:
        raise ValueError(f"label_smoothing: expected a value in [0, 1], got {value!r}")
    return value


_COMMON = """
    reduction : "mean" | "sum" | "none"
        ``"none"`` returns one value per row, of the target's shape (the
        input's without the class axis; 0-d for a single (C,) row).
        ``"sum"`` their float64-accumulated sum; ``"mean"``: {mean}.
    return_grad : bool
        Also return d(result)/d(input) (for ``"none"``: of the sum), the
        input's shape and dtype, written in the same pass over each row.
    backend : "c" | "numba" | "cuda" | "numpy" | None
        See :func:`fastloss.backends`; None picks one from the inputs.

    Labels outside [0, C) that are not ``ignore_index`` raise ``ValueError``
    naming the first one and its position, before any kernel runs.  A
    non-contiguous host input is copied once to contiguous memory.
"""


def _doc(text: str, mean: str, example: str) -> Callable[[F], F]:
    """The docstring: ``text``, the shared parameters, then ``example`` (doctest
    lines indented by 8)."""
    def decorate(fn: F) -> F:
        fn.__doc__ = (text.rstrip() + "\n" + _COMMON.format(mean=mean) + "\n    Example::\n\n"
                      + example.strip("\n") + "\n")
        return fn
    return decorate


# Each loss comes with three typing overloads, for return_grad=False (the default: the
# value), True ((value, gradient)) and a bool not known statically (either), then
# its implementation.
@overload
def cross_entropy(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                  ignore_index: int = ..., label_smoothing: float = ..., z_loss: float = ...,
                  reduction: Reduction = ..., return_grad: Literal[False] = ...,
                  backend: Backend = ...) -> Loss: ...
@overload
def cross_entropy(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                  ignore_index: int = ..., label_smoothing: float = ..., z_loss: float = ...,
                  reduction: Reduction = ..., return_grad: Literal[True],
                  backend: Backend = ...) -> LossAndGrad: ...
@overload
def cross_entropy(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                  ignore_index: int = ..., label_smoothing: float = ..., z_loss: float = ...,
                  reduction: Reduction = ..., return_grad: bool,
                  backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Softmax cross-entropy on logits, as ``torch.nn.functional.cross_entropy``.

    input : (N, C), (N, C, d1, ..., dk) or (C,), float32/float64 logits.
    target : class indices of shape (N, d1, ..., dk) (any integer dtype; 0-d
        for a (C,) input), or class probabilities of the input's shape (a
        float array; ``ignore_index`` must then stay negative, as in PyTorch).
    weight : (C,) class weights, optional.
    ignore_index : targets equal to it contribute 0 (and a zero gradient).
    label_smoothing : e in [0, 1]; the target becomes (1 - e) onehot + e / C,
        mixed with ``weight`` and ``ignore_index`` as PyTorch does.
    z_loss : adds ``z_loss * logsumexp(row)**2`` to every non-ignored row (the
        PaLM auxiliary loss; 0 = off).  It is not multiplied by the class
        weight, and ``mean`` divides it by the same denominator as the rest.

    Per row, with lse the log-sum-exp of the row (computed online, with a
    running max: finite for logits of ±1e4 or more):
    (1 - e) w_y (lse - x_y) + (e / C) sum_c w_c (lse - x_c) + z lse^2.
""", mean="divided by the sum of ``weight[target]`` over the non-ignored targets "
          "(their count without a weight) for index targets, as PyTorch; nan if every "
          "target is ignored; by the number of rows for probability targets", example="""
        >>> import numpy as np, fastloss as fl
        >>> logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> labels = np.array([0, 2])
        >>> fl.cross_entropy(logits, labels, reduction="none").round(4)
        array([0.1698, 1.5514])
        >>> round(float(fl.cross_entropy(logits, labels, label_smoothing=0.1)), 4)
        0.9273
        >>> round(float(fl.cross_entropy(logits, np.array([0, -100]))), 4)  # row 1 ignored
        0.1698
""")
@same_type_as_input
def cross_entropy(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
                  ignore_index: int = -100, label_smoothing: float = 0.0, z_loss: float = 0.0,
                  reduction: Reduction = "mean", return_grad: bool = False,
                  backend: Backend = None) -> Loss | LossAndGrad:
    ignore_index = _check_int(ignore_index, "ignore_index")
    label_smoothing = _check_smoothing(label_smoothing)
    z_loss = check_positive(z_loss, "z_loss", allow_zero=True)
    return _run("cross_entropy", input, target, reduction=reduction, return_grad=return_grad,
                backend=backend, weight=weight, ignore_index=ignore_index,
                smoothing=label_smoothing, z_loss=z_loss, allow_prob=True,
                reference_kwargs={"ignore_index": ignore_index,
                                  "label_smoothing": label_smoothing, "z_loss": z_loss})


@overload
def nll_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
             ignore_index: int = ..., reduction: Reduction = ...,
             return_grad: Literal[False] = ..., backend: Backend = ...) -> Loss: ...
@overload
def nll_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
             ignore_index: int = ..., reduction: Reduction = ..., return_grad: Literal[True],
             backend: Backend = ...) -> LossAndGrad: ...
@overload
def nll_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
             ignore_index: int = ..., reduction: Reduction = ..., return_grad: bool,
             backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Negative log-likelihood on log-probabilities, as ``torch.nn.functional.nll_loss``.

    input : (N, C), (N, C, d1, ..., dk) or (C,) log-probabilities (e.g. a
        log_softmax); target : class indices of shape (N, d1, ..., dk).
    Per row: -weight[y] * input[y]; ``ignore_index`` rows give 0.
""", mean="divided by the sum of ``weight[target]`` over the non-ignored targets "
          "(their count without a weight), as PyTorch; nan if every target is ignored",
      example="""
        >>> import numpy as np, fastloss as fl
        >>> logp = np.log(np.array([[0.7, 0.2, 0.1], [0.1, 0.1, 0.8]]))
        >>> round(float(fl.nll_loss(logp, np.array([0, 2]))), 4)  # -(log 0.7 + log 0.8) / 2
        0.2899
        >>> round(float(fl.nll_loss(logp, np.array([0, 2]), weight=np.array([1.0, 1.0, 3.0]))), 4)
        0.2565
""")
@same_type_as_input
def nll_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
             ignore_index: int = -100, reduction: Reduction = "mean", return_grad: bool = False,
             backend: Backend = None) -> Loss | LossAndGrad:
    ignore_index = _check_int(ignore_index, "ignore_index")
    return _run("nll_loss", input, target, reduction=reduction, return_grad=return_grad,
                backend=backend, weight=weight, ignore_index=ignore_index,
                reference_kwargs={"ignore_index": ignore_index})


@overload
def softmax_focal_loss(input: ArrayLike, target: ArrayLike, *,
                       alpha: float | ArrayLike | None = ..., gamma: float = ...,
                       weight: ArrayLike | None = ..., ignore_index: int = ...,
                       reduction: Reduction = ..., return_grad: Literal[False] = ...,
                       backend: Backend = ...) -> Loss: ...
@overload
def softmax_focal_loss(input: ArrayLike, target: ArrayLike, *,
                       alpha: float | ArrayLike | None = ..., gamma: float = ...,
                       weight: ArrayLike | None = ..., ignore_index: int = ...,
                       reduction: Reduction = ..., return_grad: Literal[True],
                       backend: Backend = ...) -> LossAndGrad: ...
@overload
def softmax_focal_loss(input: ArrayLike, target: ArrayLike, *,
                       alpha: float | ArrayLike | None = ..., gamma: float = ...,
                       weight: ArrayLike | None = ..., ignore_index: int = ...,
                       reduction: Reduction = ..., return_grad: bool,
                       backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Multi-class (softmax) focal loss on logits, with class-index targets.

    Per row, with p_y the softmax probability of the target class:
    -alpha_y * weight_y * (1 - p_y)^gamma * log p_y.

    Convention: kornia's ``focal_loss`` (and Keras' ``CategoricalFocalCrossentropy``
    with a scalar alpha): ``alpha`` multiplies every class equally when it
    is a scalar, or per class when it is a (C,) array; ``alpha=None`` means
    1.  MONAI instead gives a scalar alpha to the foreground and 1 - alpha to
    class 0, which only makes sense for segmentation with a background
    class; a (C,) ``alpha`` expresses it when wanted.  Like kornia, ``mean``
    divides by the number of rows (here: non-ignored rows), not by weights.

    Computed in log space: log p_y = x_y - lse and 1 - p_y = -expm1(log p_y),
    so the value and the gradient are finite at saturated logits (±1e4) and
    for 0 ≤ gamma < 1 (where the textbook gradient has 0 * inf).
""", mean="divided by the number of non-ignored targets; nan if every target is ignored",
      example="""
        >>> import numpy as np, fastloss as fl
        >>> logits = np.array([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
        >>> labels = np.array([0, 2])
        >>> # the confident, correct row 0 weighs (1 - p_y)^2 = 0.024 times its cross-entropy
        >>> fl.softmax_focal_loss(logits, labels, reduction="none").round(4)
        array([0.0041, 0.9635])
        >>> fl.softmax_focal_loss(logits, labels, gamma=0.0, reduction="none").round(4)
        array([0.1698, 1.5514])
""")
@same_type_as_input
def softmax_focal_loss(input: ArrayLike, target: ArrayLike, *,
                       alpha: float | ArrayLike | None = None, gamma: float = 2.0,
                       weight: ArrayLike | None = None, ignore_index: int = -100,
                       reduction: Reduction = "mean", return_grad: bool = False,
                       backend: Backend = None) -> Loss | LossAndGrad:
    ignore_index = _check_int(ignore_index, "ignore_index")
    gamma = check_positive(gamma, "gamma", allow_zero=True)
    p0, alpha_array = 1.0, None
    if alpha is None or isinstance(alpha, numbers.Real) and not isinstance(alpha, bool):
        if alpha is not None:
            p0 = check_positive(alpha, "alpha", allow_zero=True)
    else:
        alpha_array = alpha
    ref = {"ignore_index": ignore_index, "gamma": gamma}
    if alpha_array is None and alpha is not None:
        ref["alpha"] = p0
    return _run("softmax_focal_loss", input, target, reduction=reduction,
                return_grad=return_grad, backend=backend, weight=weight, alpha=alpha_array,
                ignore_index=ignore_index, p0=p0, p1=gamma,
                reference_kwargs=ref)


@overload
def multi_margin_loss(input: ArrayLike, target: ArrayLike, *, p: Literal[1, 2] = ...,
                      margin: float = ..., weight: ArrayLike | None = ...,
                      reduction: Reduction = ..., return_grad: Literal[False] = ...,
                      backend: Backend = ...) -> Loss: ...
@overload
def multi_margin_loss(input: ArrayLike, target: ArrayLike, *, p: Literal[1, 2] = ...,
                      margin: float = ..., weight: ArrayLike | None = ...,
                      reduction: Reduction = ..., return_grad: Literal[True],
                      backend: Backend = ...) -> LossAndGrad: ...
@overload
def multi_margin_loss(input: ArrayLike, target: ArrayLike, *, p: Literal[1, 2] = ...,
                      margin: float = ..., weight: ArrayLike | None = ...,
                      reduction: Reduction = ..., return_grad: bool,
                      backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Multi-class hinge loss (Weston–Watkins), as ``torch.nn.functional.multi_margin_loss``.

    input : (N, C) or (C,) scores; target : (N,) class indices (0-d for (C,)).
    Per row: sum_{c != y} weight[y] * max(0, margin - x_y + x_c)^p / C,
    p in {1, 2}.  No ``ignore_index`` (PyTorch has none).  Departure from
    "nan in, nan out", to match PyTorch: a term whose margin is nan counts as
    inactive (PyTorch's kernel adds it only when it is > 0), so a nan score
    contributes 0 to the value and the gradient.
""", mean="divided by N (PyTorch's convention here, weights or not)", example="""
        >>> import numpy as np, fastloss as fl
        >>> scores, label = np.array([[0.1, 0.2, 0.4, 0.8]]), np.array([3])
        >>> # (0.3 + 0.4 + 0.6) / 4, as in PyTorch's MultiMarginLoss documentation
        >>> round(float(fl.multi_margin_loss(scores, label)), 4)
        0.325
        >>> round(float(fl.multi_margin_loss(scores, label, p=2)), 4)
        0.1525
""")
@same_type_as_input
def multi_margin_loss(input: ArrayLike, target: ArrayLike, *, p: Literal[1, 2] = 1,
                      margin: float = 1.0, weight: ArrayLike | None = None,
                      reduction: Reduction = "mean", return_grad: bool = False,
                      backend: Backend = None) -> Loss | LossAndGrad:
    if isinstance(p, bool) or p not in (1, 2):
        raise ValueError(f"p: expected 1 or 2 (as PyTorch), got {p!r}")
    margin = check_real(margin, "margin")
    if math.isinf(margin):
        raise ValueError(f"margin: expected a finite value, got {margin!r}")
    return _run("multi_margin_loss", input, target, reduction=reduction,
                return_grad=return_grad, backend=backend, weight=weight, p0=margin,
                p1=float(p), two_d_only=True,
                reference_kwargs={"p": int(p), "margin": margin})


@overload
def multiclass_hinge_loss(input: ArrayLike, target: ArrayLike, *, margin: float = ...,
                          reduction: Reduction = ..., return_grad: Literal[False] = ...,
                          backend: Backend = ...) -> Loss: ...
@overload
def multiclass_hinge_loss(input: ArrayLike, target: ArrayLike, *, margin: float = ...,
                          reduction: Reduction = ..., return_grad: Literal[True],
                          backend: Backend = ...) -> LossAndGrad: ...
@overload
def multiclass_hinge_loss(input: ArrayLike, target: ArrayLike, *, margin: float = ...,
                          reduction: Reduction = ..., return_grad: bool,
                          backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Multi-class hinge loss in the Crammer–Singer form, as optax
    ``multiclass_hinge_loss``, Keras ``CategoricalHinge`` (with index targets)
    and scikit-learn's ``hinge_loss`` for more than two classes.

    input : (N, C) or (C,) scores; target : (N,) class indices.
    Per row: max(0, margin + max_{c != y} x_c - x_y); with C = 1, 0.  The
    gradient (a subgradient) is +1 at the first class attaining the max and
    -1 at the target where the hinge is active, 0 elsewhere.  A nan score
    makes the row's value and gradient nan (optax's max propagates it).
""", mean="divided by N", example="""
        >>> import numpy as np, fastloss as fl
        >>> scores, label = np.array([[0.1, 0.2, 0.4, 0.8]]), np.array([3])
        >>> round(float(fl.multiclass_hinge_loss(scores, label)), 4)  # 1 + 0.4 - 0.8
        0.6
""")
@same_type_as_input
def multiclass_hinge_loss(input: ArrayLike, target: ArrayLike, *, margin: float = 1.0,
                          reduction: Reduction = "mean", return_grad: bool = False,
                          backend: Backend = None) -> Loss | LossAndGrad:
    margin = check_positive(margin, "margin")
    return _run("multiclass_hinge_loss", input, target, reduction=reduction,
                return_grad=return_grad, backend=backend, p0=margin, two_d_only=True,
                reference_kwargs={"margin": margin})
