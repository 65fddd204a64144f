"""Elementwise losses: a value and a derivative per element, then a reduction.

Each public function validates its own hyper-parameters and hands the arrays
to :func:`_run`, the one place that checks shapes, dtypes and devices, picks
the backend, lays the arrays out for the kernel and applies the reduction.
"""
from __future__ import annotations

import math
from typing import Callable, Literal, NamedTuple, overload

import numpy as np

from .. import _dispatch, reference
from .._convert import same_type_as_input
from .._typing import ArrayLike, Backend, F, Loss, LossAndGrad, Reduction
from .._validate import (FLOAT_DTYPES, REDUCTIONS, ArrayMeta, check_bool, check_broadcastable, check_input,
                         check_open_unit, check_positive, check_real, check_reduction,
                         check_same_place, check_shape)
from .._plans import PlanCache
from .._registry import REGISTRY, LossRecord, records
from ..kernels import ElementwiseCall, checks, elementwise_launcher

__all__ = [
    "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "log_cosh_loss", "quantile_loss",
    "binary_cross_entropy", "binary_cross_entropy_with_logits", "sigmoid_focal_loss",
    "hinge_loss", "ELEMENTWISE_LOSSES", "MEAN_BY_WEIGHT_SUM",
]


_Loss = LossRecord
_MSE, _L1, _HUBER, _SMOOTH_L1, _LOG_COSH, _QUANTILE, _BCE, _BCE_LOGITS, _FOCAL, _HINGE = (
    REGISTRY[name] for name in (
        "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "log_cosh_loss", "quantile_loss",
        "binary_cross_entropy", "binary_cross_entropy_with_logits", "sigmoid_focal_loss",
        "hinge_loss"))

#: public name -> kernel name, for every elementwise loss (from the registry)
ELEMENTWISE_LOSSES = {r.name: r.kernel for r in records("elementwise")}
#: the losses whose "mean" with a weight divides by sum(weight) (the others by N)
MEAN_BY_WEIGHT_SUM = frozenset(r.name for r in records("elementwise") if r.mean_by_weight_sum)


def _trailing_period(meta: ArrayMeta, shape) -> tuple | None:
    """The shape of one period of ``meta`` over ``shape`` when it broadcasts along
    leading axes only (a (C,) or (1, C) weight over (N, C)), else None."""
    trailing = tuple(meta.shape)
    while trailing and trailing[0] == 1:
        trailing = trailing[1:]
    return trailing if tuple(shape[len(shape) - len(trailing):]) == trailing else None


def _host_layout(meta: ArrayMeta, shape, dtype, *, periodic: bool = False):
    """A flat, contiguous host array of ``dtype`` holding ``meta`` broadcast to ``shape``.
    No copy when it already is one; never a view the kernel could write through.
    ``periodic`` operands (weight, param) that broadcast along leading axes only
    stay one period long: the kernels read element i at i % len (as on the GPU)."""
    array = meta.array
    if array.shape != tuple(shape):
        period = _trailing_period(meta, shape) if periodic else None
        if period is not None:
            return np.ascontiguousarray(np.reshape(array, period), dtype=dtype).reshape(-1)
        array = np.broadcast_to(array, shape)
    return np.ascontiguousarray(array, dtype=dtype).reshape(-1)


def _gpu_layout(meta: ArrayMeta, shape, name, *, periodic: bool):
    """A flat device view of ``meta``.  ``periodic`` operands (weight, param) may
    cover only trailing axes of ``shape``; the kernel reads them modulo their length."""
    if not meta.contiguous:
        raise ValueError(f"{name}: non-contiguous GPU arrays are not supported yet "
                         f"(shape {meta.shape}); make a contiguous copy on the device first")
    shape = tuple(shape)
    if meta.shape != shape:
        if not periodic or _trailing_period(meta, shape) is None:
            raise ValueError(f"{name}: on the GPU, shape {meta.shape} must equal the input "
                             f"shape {shape} or cover its trailing axes")
    return meta.array


def _check_values(loss: _Loss, metas: dict[str, ArrayMeta], module):
    """Value checks some losses need (probabilities in [0, 1], labels ±1)."""
    for name, bounds in (("input", loss.input_range), ("target", loss.target_range)):
        if bounds is not None:
            checks.require_within(metas[name], name, *bounds, gpu_module=module)
    if loss.target_pm1:
        checks.require_pm1(metas["target"], "target", gpu_module=module)


class _Plan(NamedTuple):
    """A signature of the common case: two host arrays of one float dtype and
    shape, no weight, no per-element parameter (see :func:`_simple_plan`)."""
    n: int
    shape: tuple
    want_out: bool
    scalar: Callable          # the dtype's scalar type, for the reduced value
    call: ElementwiseCall     # the kernel call of the signature, its arrays aside
    launchers: dict           # backend name -> kernels.elementwise_launcher's, on first use


_PLANS = PlanCache()


def _simple_plan(loss, shape, dtype, reduction, return_grad, p0, p1) -> _Plan:
    n = math.prod(shape)
    scale = 1.0
    if reduction == "mean":
        scale = 1.0 / n if n else float("nan")   # 0/0, as PyTorch
    call = ElementwiseCall(loss=loss.kernel, input=None, target=None, weight=None, param=None,
                           p0=float(p0), p1=float(p1), want_out=reduction == "none",
                           want_grad=return_grad, grad_scale=scale, total_scale=scale)
    return _Plan(n, shape, reduction == "none", dtype.type, call, {})


#: the compiled entry point's arguments per loss, made on first use: (the kernel's id in
#: fastloss._native, its value check: 0 none, 1 input and target in [0, 1], 2 target
#: ±1; csrc/py/fastcall.c)
_FAST_ARGS: dict[str, tuple[int, int]] = {}


def _fast_args(loss: _Loss) -> tuple[int, int]:
    from ..kernels import native
    check = (1 if loss.input_range == loss.target_range == (0.0, 1.0) else
             2 if loss.target_pm1 and not (loss.input_range or loss.target_range) else
             0 if not loss.checks_values else None)
    if check is None:
        raise AssertionError(f"{loss.name}: a value check the compiled entry point lacks")
    args = _FAST_ARGS[loss.name] = native.elementwise_id(loss.kernel), check
    return args


def _run(loss: _Loss, input, target, *, weight, reduction, return_grad, backend,
         p0=0.0, p1=0.0, param=None, param_name=None, reference_kwargs=None,
         target_may_broadcast=False):
    if weight is None and param is None:
        # the common small call, whole in C (or NotImplemented: then the path below
        # runs it and raises what it raises)
        fast = _dispatch.host_fast_path(backend)
        if fast is not None:
            result = fast.elementwise(*(_FAST_ARGS.get(loss.name) or _fast_args(loss)), input,
                                      target, reduction, return_grad, p0, p1)
            if result is not NotImplemented:
                return result
    if reduction not in REDUCTIONS:
        check_reduction(reduction)
    if return_grad is not True and return_grad is not False:
        return_grad = check_bool(return_grad, "return_grad")
    selected = None
    if (weight is None and param is None and type(input) is np.ndarray
            and type(target) is np.ndarray and input.dtype in FLOAT_DTYPES
            and target.dtype == input.dtype and input.shape == target.shape):
        # The common case, checked in a few cheap tests: two host arrays of one
        # float dtype and shape, nothing to broadcast or convert.
        selected = name, module = _dispatch.select(backend, False)
        if name != "numpy":
            key = (loss.name, input.shape, input.dtype, reduction, return_grad, p0, p1)
            plan = _PLANS.lookup(key) or _PLANS.get(key, lambda: _simple_plan(
                loss, input.shape, input.dtype, reduction, return_grad, p0, p1))
            launch = plan.launchers.get(name)
            if launch is None:
                launch = plan.launchers[name] = elementwise_launcher(module, plan.call,
                                                                     input.dtype)
            if loss.checks_values:
                _check_values(loss, {"input": ArrayMeta(input, "input"),
                                     "target": ArrayMeta(target, "target")}, module)
            value, out, grad = launch(input, target, None, None, plan.n)   # (any layout)
            value = out.reshape(plan.shape) if plan.want_out else plan.scalar(value)
            return (value, grad.reshape(plan.shape)) if return_grad else value

    x = check_input(input)
    metas = {"input": x, "target": ArrayMeta(target, "target")}
    if weight is not None:
        metas["weight"] = ArrayMeta(weight, "weight")
    if param is not None:
        metas[param_name] = ArrayMeta(param, param_name)
    check_same_place(metas)
    shape, dtype = x.shape, x.dtype
    if target_may_broadcast:
        check_broadcastable(metas["target"], shape, "target")
    else:
        check_shape(metas["target"], shape, "target")
    for name in ("weight", param_name):
        if name in metas:
            check_broadcastable(metas[name], shape, name)
    for name, meta in metas.items():
        if name != "input" and meta.on_gpu and meta.dtype != dtype:
            raise TypeError(f"{name}: dtype {meta.dtype} differs from the input's {dtype}; "
                            f"on the GPU fastloss does not convert (no hidden copies)")

    name, module = selected or _dispatch.select(backend, x.on_gpu)
    _check_values(loss, metas, module)

    if name == "numpy":
        return _run_reference(loss, metas, param_name, reference_kwargs or {}, reduction,
                              return_grad, dtype)
    uniform = None
    if x.on_gpu:
        arrays = {k: _gpu_layout(m, shape, k, periodic=k not in ("input", "target"))
                  for k, m in metas.items()}
    else:
        w_meta = metas.get("weight")
        if w_meta is not None and w_meta.size == 1 and reduction != "none":
            # one weight for every element: a factor of the sum and the gradient, not
            # an array of the input's size (a (1,) weight on 5M float64 was 40 MB)
            uniform = float(dtype.type(np.asarray(w_meta.array).reshape(-1)[0]))
            metas = {k: m for k, m in metas.items() if k != "weight"}
        arrays = {k: _host_layout(m, shape, dtype, periodic=k not in ("input", "target"))
                  for k, m in metas.items()}
    return _launch(loss, module, arrays, param_name, shape, dtype, x.on_gpu, p0, p1, reduction,
                   return_grad, uniform)


def _launch(loss, module, arrays, param_name, shape, dtype, on_gpu, p0, p1, reduction,
            return_grad, uniform_weight=None):
    """Run the kernel on laid-out arrays and shape its results.  ``uniform_weight``:
    a weight of one value, applied as a factor (not in ``arrays``)."""
    n = arrays["input"].size
    w = arrays.get("weight")
    factor = 1.0 if uniform_weight is None else uniform_weight  # the weight outside the kernel
    scale = factor
    if reduction == "mean":
        if loss.mean_by_weight_sum and uniform_weight is not None:
            denom = uniform_weight * n
        elif loss.mean_by_weight_sum and w is not None:
            weight_sum = module.sum_float64 if on_gpu else _host_sum
            # a periodic weight (shorter than n) repeats n // w.size times
            denom = weight_sum(w) * (n // w.size) if w.size else 0.0
        else:
            denom = float(n)
        # a zero denominator divides as PyTorch's sum / weight.sum() does: ±inf for a
        # non-zero sum, nan for 0/0 (0 · inf) -- also for an empty input
        scale = factor / denom if denom != 0 else factor * math.copysign(math.inf, denom)
    call = ElementwiseCall(
        loss=loss.kernel, input=arrays["input"], target=arrays["target"],
        weight=arrays.get("weight"), param=arrays.get(param_name), p0=float(p0), p1=float(p1),
        want_out=reduction == "none", want_grad=return_grad, grad_scale=scale,
        total_scale=scale)
    value, out, grad = module.elementwise(call)
    if reduction == "none":
        value = out.reshape(shape)
    elif not on_gpu:
        value = dtype.type(value)
    if not return_grad:
        return value
    return value, grad.reshape(shape)


def _host_sum(array) -> float:
    return float(np.sum(array, dtype=np.float64))


def _run_reference(loss, metas, param_name, kwargs, reduction, return_grad, dtype):
    """backend="numpy": the float64 reference, cast back to the input's dtype."""
    args = {k: m.array for k, m in metas.items()}
    if param_name in args:
        kwargs = {**kwargs, param_name: args.pop(param_name)}
    fn = getattr(reference, loss.name)
    result = fn(args["input"], args["target"], weight=args.get("weight"), reduction=reduction,
                return_grad=return_grad, **kwargs)
    value, grad = result if return_grad else (result, None)
    value = np.asarray(value).astype(dtype) if reduction == "none" else dtype.type(value)
    if not return_grad:
        return value
    return value, np.asarray(grad).astype(dtype)


_COMMON_DOC = """
    Parameters
    ----------
    input : array (float32 or float64), any shape
        {input}
    target : array of the input's shape (any real dtype; cast to the input's)
        {target}
    weight : array broadcastable to the input's shape, optional
        Per-element weight, multiplies each element's loss.
    reduction : "mean" | "sum" | "none"
        ``"none"`` returns ``weight * loss`` per element (input's shape and
        dtype); ``"sum"`` their float64-accumulated sum; ``"mean"`` divides
        the sum by {mean}.  Empty input: ``mean`` is nan, ``sum`` is 0.
    return_grad : bool
        Also return d(result)/d(input) (for ``"none"``: of the sum), same
        shape and dtype as ``input``, computed in the same pass.
    backend : "c" | "numba" | "cuda" | "numpy" | None
        See :func:`fastloss.backends`; None picks one from the inputs.
"""

_BY_N = "the number of elements N"
_BY_W = "sum(weight) when a weight is given (PyTorch's convention for this loss), else by N"


def _doc(summary: str, *, example: str, input: str = "Predictions.", target: str = "Targets.",
         mean: str = _BY_N) -> Callable[[F], F]:
    """The docstring: the summary, the shared parameters, then ``example`` (doctest
    lines indented by 4) as a numpydoc Examples section."""
    def decorate(fn: F) -> F:
        fn.__doc__ = (summary.rstrip() + "\n"
                      + _COMMON_DOC.format(input=input, target=target, mean=mean)
                      + "\n    Examples\n    --------\n" + example.strip("\n") + "\n")
        return fn
    return decorate


# Each loss comes with three typing overloads, for return_grad=False (the default: the
# value), True ((value, gradient)) and a bool not known statically (either), then
# its implementation.
@overload
def mse_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
             reduction: Reduction = ..., return_grad: Literal[False] = ...,
             backend: Backend = ...) -> Loss: ...
@overload
def mse_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
             reduction: Reduction = ..., return_grad: Literal[True],
             backend: Backend = ...) -> LossAndGrad: ...
@overload
def mse_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
             reduction: Reduction = ..., return_grad: bool,
             backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Mean squared error, as ``torch.nn.functional.mse_loss``.

    l = (x - y)^2,  dl/dx = 2 (x - y).

    Departure: ``weight`` may broadcast (PyTorch requires the input's shape);
    ``target`` must have the input's shape (PyTorch broadcasts with a warning).
""", mean=_BY_W, example="""
    >>> import numpy as np, fastloss as fl
    >>> pred, target = np.array([0.5, 2.0, -1.0]), np.array([0.0, 2.5, -1.0])
    >>> loss, grad = fl.mse_loss(pred, target, return_grad=True)
    >>> round(float(loss), 4)
    0.1667
    >>> grad.round(4)
    array([ 0.3333, -0.3333,  0.    ])
    >>> # one large error dominates: (0.5^2 + 3^2) / 2
    >>> round(float(fl.mse_loss(np.array([0.0, 3.0]), np.array([0.5, 0.0]))), 4)
    4.625
""")
@same_type_as_input
def mse_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
             reduction: Reduction = "mean", return_grad: bool = False,
             backend: Backend = None) -> Loss | LossAndGrad:
    return _run(_MSE, input, target, weight=weight, reduction=reduction,
                return_grad=return_grad, backend=backend)


@overload
def l1_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
            reduction: Reduction = ..., return_grad: Literal[False] = ...,
            backend: Backend = ...) -> Loss: ...
@overload
def l1_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
            reduction: Reduction = ..., return_grad: Literal[True],
            backend: Backend = ...) -> LossAndGrad: ...
@overload
def l1_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
            reduction: Reduction = ..., return_grad: bool,
            backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Mean absolute error, as ``torch.nn.functional.l1_loss``.

    l = |x - y|,  dl/dx = sign(x - y) (0 at a tie; nan for nan input, where
    PyTorch's gradient gives 0).
""", mean=_BY_W, example="""
    >>> import numpy as np, fastloss as fl
    >>> pred, target = np.array([0.0, 3.0]), np.array([0.5, 0.0])
    >>> round(float(fl.l1_loss(pred, target)), 4)     # mse_loss gives 4.625
    1.75
    >>> fl.l1_loss(pred, target, return_grad=True)[1]  # sign(x - y) / N
    array([-0.5,  0.5])
""")
@same_type_as_input
def l1_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
            reduction: Reduction = "mean", return_grad: bool = False,
            backend: Backend = None) -> Loss | LossAndGrad:
    return _run(_L1, input, target, weight=weight, reduction=reduction,
                return_grad=return_grad, backend=backend)


@overload
def huber_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
               delta: float = ..., reduction: Reduction = ..., return_grad: Literal[False] = ...,
               backend: Backend = ...) -> Loss: ...
@overload
def huber_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
               delta: float = ..., reduction: Reduction = ..., return_grad: Literal[True],
               backend: Backend = ...) -> LossAndGrad: ...
@overload
def huber_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
               delta: float = ..., reduction: Reduction = ..., return_grad: bool,
               backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Huber loss, as ``torch.nn.functional.huber_loss``.

    With d = x - y:  l = d^2 / 2 if |d| < delta, else delta (|d| - delta / 2);
    dl/dx = d, or delta sign(d).  ``delta`` > 0.  With a weight, ``mean``
    divides by N, as PyTorch 2.13 does for this loss (unlike mse/l1).
""", example="""
    >>> import numpy as np, fastloss as fl
    >>> pred, target = np.array([0.0, 3.0]), np.array([0.5, 0.0])
    >>> fl.huber_loss(pred, target, reduction="none")   # quadratic, then linear
    array([0.125, 2.5  ])
    >>> fl.huber_loss(pred, target, return_grad=True)[1]  # d / N, then delta sign(d) / N
    array([-0.25,  0.5 ])
""")
@same_type_as_input
def huber_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
               delta: float = 1.0, reduction: Reduction = "mean", return_grad: bool = False,
               backend: Backend = None) -> Loss | LossAndGrad:
    delta = check_positive(delta, "delta")
    return _run(_HUBER, input, target, weight=weight, reduction=reduction,
                return_grad=return_grad, backend=backend, p0=delta,
                reference_kwargs={"delta": delta})


@overload
def smooth_l1_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                   beta: float = ..., reduction: Reduction = ...,
                   return_grad: Literal[False] = ..., backend: Backend = ...) -> Loss: ...
@overload
def smooth_l1_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                   beta: float = ..., reduction: Reduction = ..., return_grad: Literal[True],
                   backend: Backend = ...) -> LossAndGrad: ...
@overload
def smooth_l1_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                   beta: float = ..., reduction: Reduction = ..., return_grad: bool,
                   backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Smooth L1 loss, as ``torch.nn.functional.smooth_l1_loss``.

    With d = x - y:  l = d^2 / (2 beta) if |d| < beta, else |d| - beta / 2;
    dl/dx = d / beta, or sign(d).  ``beta`` ≥ 0; ``beta = 0`` is the L1 loss.
    PyTorch has no ``weight`` here; ours divides ``mean`` by N, like huber_loss
    (huber_loss(delta) = delta * smooth_l1_loss(beta=delta)).
""", example="""
    >>> import numpy as np, fastloss as fl
    >>> pred, target = np.array([0.0, 3.0]), np.array([0.5, 0.0])
    >>> fl.smooth_l1_loss(pred, target, beta=0.5, reduction="none")
    array([0.25, 2.75])
    >>> round(float(fl.smooth_l1_loss(pred, target, beta=0.5)), 4)
    1.5
""")
@same_type_as_input
def smooth_l1_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
                   beta: float = 1.0, reduction: Reduction = "mean", return_grad: bool = False,
                   backend: Backend = None) -> Loss | LossAndGrad:
    beta = check_positive(beta, "beta", allow_zero=True)
    return _run(_SMOOTH_L1, input, target, weight=weight, reduction=reduction,
                return_grad=return_grad, backend=backend, p0=beta,
                reference_kwargs={"beta": beta})


@overload
def log_cosh_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                  reduction: Reduction = ..., return_grad: Literal[False] = ...,
                  backend: Backend = ...) -> Loss: ...
@overload
def log_cosh_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                  reduction: Reduction = ..., return_grad: Literal[True],
                  backend: Backend = ...) -> LossAndGrad: ...
@overload
def log_cosh_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                  reduction: Reduction = ..., return_grad: bool,
                  backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Log-cosh loss (Keras ``LogCosh``, optax ``log_cosh``).

    l = log(cosh(x - y)),  dl/dx = tanh(x - y).  Computed without overflow or
    cancellation: |d| - log 2 + log1p(exp(-2|d|)) for large |d| (finite at
    1e30), log1p(e^2 / (2 (1 + e))) with e = expm1(|d|) for small |d| (d^2/2
    at 1e-20).  PyTorch has no such loss.
""", example="""
    >>> import numpy as np, fastloss as fl
    >>> pred, target = np.array([0.0, 3.0]), np.array([0.5, 0.0])
    >>> fl.log_cosh_loss(pred, target, reduction="none").round(4)  # ~d^2/2, ~|d| - log 2
    array([0.1201, 2.3093])
    >>> round(float(fl.log_cosh_loss(pred, target)), 4)
    1.2147
""")
@same_type_as_input
def log_cosh_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
                  reduction: Reduction = "mean", return_grad: bool = False,
                  backend: Backend = None) -> Loss | LossAndGrad:
    return _run(_LOG_COSH, input, target, weight=weight, reduction=reduction,
                return_grad=return_grad, backend=backend)


@overload
def quantile_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                  q: float | ArrayLike = ..., reduction: Reduction = ...,
                  return_grad: Literal[False] = ..., backend: Backend = ...) -> Loss: ...
@overload
def quantile_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                  q: float | ArrayLike = ..., reduction: Reduction = ...,
                  return_grad: Literal[True], backend: Backend = ...) -> LossAndGrad: ...
@overload
def quantile_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                  q: float | ArrayLike = ..., reduction: Reduction = ..., return_grad: bool,
                  backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Quantile (pinball) loss, as Keras/TF-Addons ``pinball_loss`` and scikit-learn's
    ``mean_pinball_loss``.

    With r = y - x:  l = max(q r, (q - 1) r);  dl/dx = 1 - q if x > y, else -q.
    ``q`` is a float in (0, 1), or a 1-D array of quantiles, each in (0, 1),
    against the last axis of ``input``; the target may then have the input's
    shape without that axis (one target per row, broadcast over the quantiles).
""", target="Targets; with an array ``q``, of shape ``input.shape[:-1]`` or the input's.",
      example="""
    >>> import numpy as np, fastloss as fl
    >>> # q = 0.9: predicting 1 below the target costs 0.9, 1 above costs 0.1
    >>> fl.quantile_loss(np.array([1.0, 3.0]), np.array([2.0, 2.0]), q=0.9, reduction="none")
    array([0.9, 0.1])
    >>> # three quantiles per row against one target per row
    >>> fl.quantile_loss(np.array([[1.0, 2.0, 3.0]]), np.array([2.5]),
    ...                  q=np.array([0.1, 0.5, 0.9]), reduction="none").round(4)
    array([[0.15, 0.25, 0.05]])
""")
@same_type_as_input
def quantile_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
                  q: float | ArrayLike = 0.5, reduction: Reduction = "mean",
                  return_grad: bool = False, backend: Backend = None) -> Loss | LossAndGrad:
    if isinstance(q, (bool, np.bool_)):
        raise TypeError(f"q: expected a float in (0, 1) or a 1-D array of levels, got {q!r} "
                        f"(bool)")
    if isinstance(q, (int, float, np.floating, np.integer)):
        q = check_open_unit(q, "q")
        return _run(_QUANTILE, input, target, weight=weight, reduction=reduction,
                    return_grad=return_grad, backend=backend, p0=q,
                    reference_kwargs={"q": q})
    q_meta = ArrayMeta(q, "q")
    x_meta = check_input(input)
    if len(q_meta.shape) != 1 or not x_meta.shape or q_meta.shape[0] != x_meta.shape[-1]:
        raise ValueError(f"q: expected a float in (0, 1) or a 1-D array of length "
                         f"input.shape[-1] = {x_meta.shape[-1] if x_meta.shape else None}, "
                         f"got shape {q_meta.shape}")
    if not q_meta.on_gpu:
        q_host = np.asarray(q_meta.array, dtype=np.float64)
        if not np.all((q_host > 0) & (q_host < 1)):
            bad = q_host[~((q_host > 0) & (q_host < 1))][0]
            raise ValueError(f"q: every quantile must lie in the open interval (0, 1), "
                             f"got {bad!r}")
    t_meta = ArrayMeta(target, "target")
    if t_meta.shape == x_meta.shape[:-1]:
        if t_meta.on_gpu:
            raise ValueError("target: on the GPU, give the target the input's shape "
                             f"{x_meta.shape} (got {t_meta.shape})")
        target = np.asarray(t_meta.array)[..., None]
    return _run(_QUANTILE, input, target, weight=weight, reduction=reduction,
                return_grad=return_grad, backend=backend, param=q, param_name="q",
                target_may_broadcast=True)


@overload
def binary_cross_entropy(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                         reduction: Reduction = ..., return_grad: Literal[False] = ...,
                         backend: Backend = ...) -> Loss: ...
@overload
def binary_cross_entropy(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                         reduction: Reduction = ..., return_grad: Literal[True],
                         backend: Backend = ...) -> LossAndGrad: ...
@overload
def binary_cross_entropy(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                         reduction: Reduction = ..., return_grad: bool,
                         backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Binary cross-entropy on probabilities, as ``torch.nn.functional.binary_cross_entropy``.

    l = -(y max(log x, -100) + (1 - y) max(log(1 - x), -100));
    dl/dx = (x - y) / max(x (1 - x), 1e-12)  (PyTorch's backward, clamp included).
    ``input`` and ``target`` must lie in [0, 1] (checked first, as PyTorch does;
    nan is rejected too).  ``weight`` broadcasts; ``mean`` divides by N.
""", input="Probabilities in [0, 1].", target="Targets in [0, 1] (soft labels allowed).",
      example="""
    >>> import numpy as np, fastloss as fl
    >>> prob, labels = np.array([0.9, 0.2]), np.array([1.0, 0.0])
    >>> round(float(fl.binary_cross_entropy(prob, labels)), 4)   # (-log 0.9 - log 0.8) / 2
    0.1643
""")
@same_type_as_input
def binary_cross_entropy(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
                         reduction: Reduction = "mean", return_grad: bool = False,
                         backend: Backend = None) -> Loss | LossAndGrad:
    return _run(_BCE, input, target, weight=weight, reduction=reduction,
                return_grad=return_grad, backend=backend)


@overload
def binary_cross_entropy_with_logits(input: ArrayLike, target: ArrayLike, *,
                                     weight: ArrayLike | None = ...,
                                     pos_weight: float | ArrayLike | None = ...,
                                     reduction: Reduction = ..., return_grad: Literal[False] = ...,
                                     backend: Backend = ...) -> Loss: ...
@overload
def binary_cross_entropy_with_logits(input: ArrayLike, target: ArrayLike, *,
                                     weight: ArrayLike | None = ...,
                                     pos_weight: float | ArrayLike | None = ...,
                                     reduction: Reduction = ..., return_grad: Literal[True],
                                     backend: Backend = ...) -> LossAndGrad: ...
@overload
def binary_cross_entropy_with_logits(input: ArrayLike, target: ArrayLike, *,
                                     weight: ArrayLike | None = ...,
                                     pos_weight: float | ArrayLike | None = ...,
                                     reduction: Reduction = ..., return_grad: bool,
                                     backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Binary cross-entropy on logits, as ``torch.nn.functional.binary_cross_entropy_with_logits``.

    With lw = 1 + (pos_weight - 1) y:
    l = (1 - y) x + lw softplus(-x),  dl/dx = (1 - y) - lw sigmoid(-x),
    with softplus(z) = max(z, 0) + log1p(exp(-|z|)): finite for any finite x.
    ``pos_weight`` (a float or an array broadcasting against the trailing axes,
    e.g. one per class) weights the positive term; ``mean`` divides by N.
""", input="Logits.", target="Targets in [0, 1].", example="""
    >>> import numpy as np, fastloss as fl
    >>> logits, labels = np.array([2.0, -1.0]), np.array([1.0, 0.0])
    >>> round(float(fl.binary_cross_entropy_with_logits(logits, labels)), 4)
    0.2201
    >>> round(float(fl.binary_cross_entropy_with_logits(logits, labels, pos_weight=3.0)), 4)
    0.347
""")
@same_type_as_input
def binary_cross_entropy_with_logits(input: ArrayLike, target: ArrayLike, *,
                                     weight: ArrayLike | None = None,
                                     pos_weight: float | ArrayLike | None = None,
                                     reduction: Reduction = "mean", return_grad: bool = False,
                                     backend: Backend = None) -> Loss | LossAndGrad:
    if pos_weight is None or isinstance(pos_weight, (int, float, np.floating, np.integer)):
        p0 = 1.0 if pos_weight is None else check_real(pos_weight, "pos_weight")
        return _run(_BCE_LOGITS, input, target, weight=weight, reduction=reduction,
                    return_grad=return_grad, backend=backend, p0=p0,
                    reference_kwargs={"pos_weight": None if pos_weight is None else p0})
    return _run(_BCE_LOGITS, input, target, weight=weight, reduction=reduction,
                return_grad=return_grad, backend=backend, p0=1.0, param=pos_weight,
                param_name="pos_weight")


@overload
def sigmoid_focal_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                       alpha: float = ..., gamma: float = ..., reduction: Reduction = ...,
                       return_grad: Literal[False] = ..., backend: Backend = ...) -> Loss: ...
@overload
def sigmoid_focal_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                       alpha: float = ..., gamma: float = ..., reduction: Reduction = ...,
                       return_grad: Literal[True], backend: Backend = ...) -> LossAndGrad: ...
@overload
def sigmoid_focal_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
                       alpha: float = ..., gamma: float = ..., reduction: Reduction = ...,
                       return_grad: bool, backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Sigmoid focal loss on logits, as ``torchvision.ops.sigmoid_focal_loss``.

    p = sigmoid(x), ce = BCE-with-logits(x, y), p_t = p y + (1 - p)(1 - y),
    alpha_t = alpha y + (1 - alpha)(1 - y) (1 if alpha < 0),
    l = alpha_t ce (1 - p_t)^gamma.
    Computed in log space (log(1 - p_t) as a log-sum-exp of log-sigmoids), so
    values and gradients are finite at saturated logits (±1e4) and for
    0 ≤ gamma < 1, where torchvision's gradient is nan.  Departure: the
    default ``reduction`` is "mean" like every fastloss loss (torchvision's is
    "none"; the PyTorch adapter keeps torchvision's); ``mean`` divides by N.
""", input="Logits.", target="Labels in [0, 1] (0/1, or soft).", example="""
    >>> import numpy as np, fastloss as fl
    >>> logits, labels = np.array([2.0, -1.0]), np.array([1.0, 0.0])
    >>> # well-classified elements weigh (1 - p_t)^gamma less than in BCE
    >>> fl.sigmoid_focal_loss(logits, labels, reduction="none").round(5)
    array([0.00045, 0.01699])
    >>> fl.binary_cross_entropy_with_logits(logits, labels, reduction="none").round(5)
    array([0.12693, 0.31326])
    >>> fl.sigmoid_focal_loss(logits, labels, alpha=-1, gamma=0.0, reduction="none").round(5)
    array([0.12693, 0.31326])
""")
@same_type_as_input
def sigmoid_focal_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
                       alpha: float = 0.25, gamma: float = 2.0, reduction: Reduction = "mean",
                       return_grad: bool = False, backend: Backend = None) -> Loss | LossAndGrad:
    alpha = check_real(alpha, "alpha")
    if alpha > 1:
        raise ValueError(f"alpha: expected a value in [0, 1] (or < 0 to disable it), got {alpha!r}")
    gamma = check_positive(gamma, "gamma", allow_zero=True)
    return _run(_FOCAL, input, target, weight=weight, reduction=reduction,
                return_grad=return_grad, backend=backend, p0=alpha, p1=gamma,
                reference_kwargs={"alpha": alpha, "gamma": gamma})


@overload
def hinge_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
               margin: float = ..., squared: bool = ..., reduction: Reduction = ...,
               return_grad: Literal[False] = ..., backend: Backend = ...) -> Loss: ...
@overload
def hinge_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
               margin: float = ..., squared: bool = ..., reduction: Reduction = ...,
               return_grad: Literal[True], backend: Backend = ...) -> LossAndGrad: ...
@overload
def hinge_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = ...,
               margin: float = ..., squared: bool = ..., reduction: Reduction = ...,
               return_grad: bool, backend: Backend = ...) -> Loss | LossAndGrad: ...
@_doc("""Binary hinge loss with targets ±1, as Keras ``Hinge`` / ``SquaredHinge`` and
    scikit-learn's ``hinge_loss``.

    z = margin - y x;  l = max(0, z) (squared: max(0, z)^2);
    dl/dx = -y where z > 0, else 0 (squared: -2 y z).  ``target`` must hold
    only -1 and +1 (checked first; Keras would silently map 0/1 labels);
    ``margin`` > 0; ``mean`` divides by N.
""", input="Scores (decision values).", target="Labels, each -1 or +1.", example="""
    >>> import numpy as np, fastloss as fl
    >>> scores, labels = np.array([2.0, 0.5, 0.3]), np.array([1, 1, -1])
    >>> fl.hinge_loss(scores, labels, reduction="none")   # max(0, 1 - y x)
    array([0. , 0.5, 1.3])
    >>> round(float(fl.hinge_loss(scores, labels)), 4)
    0.6
    >>> round(float(fl.hinge_loss(scores, labels, squared=True)), 4)
    0.6467
""")
@same_type_as_input
def hinge_loss(input: ArrayLike, target: ArrayLike, *, weight: ArrayLike | None = None,
               margin: float = 1.0, squared: bool = False, reduction: Reduction = "mean",
               return_grad: bool = False, backend: Backend = None) -> Loss | LossAndGrad:
    margin = check_positive(margin, "margin")
    squared = check_bool(squared, "squared")
    return _run(_HINGE, input, target, weight=weight, reduction=reduction,
                return_grad=return_grad, backend=backend, p0=margin, p1=float(squared),
                reference_kwargs={"margin": margin, "squared": squared})
