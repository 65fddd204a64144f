"""The fastloss losses over dask arrays: volumes larger than one machine's memory.

    import dask.array as da, fastloss.dask as fld
    x = da.from_zarr("logits.zarr")                   # (N, C, D, H, W), chunks of a few MB
    y = da.from_zarr("labels.zarr")                   # (N, D, H, W), the same chunks
    value = fld.dice_loss(x, y, activation="softmax")  # a lazy 0-d dask array
    value, grad = fld.dice_loss(x, y, activation="softmax", return_grad=True)
    value.compute()                                    # or dask.compute(value, grad)

Every function has the name and the keyword arguments of the in-memory loss
(:mod:`fastloss`), plus ``split_every`` (the fan-in of the reduction tree;
dask's default when None), and computes what it computes for the whole array:

- Each chunk runs the fastloss kernel on its block (``backend=`` is passed to
  every chunk call) and returns float64 partial sums: the sum of the losses
  and the ``"mean"`` denominator's share (the element count, or the sum of
  ``weight``; for the row-wise losses the sum of ``weight[target]`` or the
  count over the non-ignored rows; for the overlap losses the (N, C, 3) sums
  I, P, T of :func:`fastloss.losses.overlap.dice_stats`).
- The partials are added in a tree (``dask.array`` sum with ``split_every``):
  a fixed order for given chunks, so the result is the same bits on every run
  and scheduler; it differs from the in-memory value in the last bits only
  (another summation order).
- The value is then computed from the totals as the in-memory loss does (the
  same code for the overlap losses: ``dice_from_stats``).  ``"mean"`` and
  ``"sum"`` give a lazy 0-d dask array of the input's dtype: call
  ``.compute()``.  ``"none"`` gives a dask array of the per-element (per-row)
  losses, chunked like the input (the overlap losses: their small (N, C')
  entries, one chunk).
- ``return_grad=True`` returns ``(value, grad)``, ``grad`` a dask array with
  the input's shape, dtype and chunks.  A chunk's gradient is computed by a
  second pass over the chunk once the totals are known: the gradient of its
  sum times the global ``1 / denominator`` (``"mean"``), or the overlap
  gradient from the global sums' coefficients (``dice_grad``).  So each chunk
  is read twice, and no chunk's gradient waits in memory for the others.

Chunking rules:

- Elementwise losses: any chunks.  ``target`` has the input's shape;
  ``weight`` and an array ``pos_weight`` broadcast to it (as in the core); an
  array ``q`` (quantile loss) runs along the last axis.  Each is a NumPy
  array (wrapped with the input's chunks) or a dask array whose chunks equal
  the input's along the axes it does not broadcast over.
- Row-wise losses (cross_entropy, nll_loss, softmax_focal_loss,
  multi_margin_loss, multiclass_hinge_loss): (N, C, ...) input chunked along
  any axis but the class axis (axis 1), which must be one chunk.  Class
  vectors (``weight``, ``alpha``) are small arrays, sent whole to every chunk.
- Overlap losses (dice_loss, jaccard_loss, tversky_loss,
  generalized_dice_loss): chunked along the batch and spatial axes, the class
  axis one chunk.
- The target, a NumPy array or a dask array, has the input's chunks on the
  axes they share (a dask array of other chunks raises: rechunk it).

The argument checks of the core run when the graph is built, where they need
no data (hyper-parameters, shapes, dtypes, chunks); those that read values
(labels out of range, probabilities outside [0, 1]) run in the chunks and
raise from ``compute()`` (a position they name is within the chunk).  Chunks must be host (NumPy) blocks.  With
``backend=None`` the backend of an enclosing :func:`fastloss.use_backend`
block is taken when the graph is built (dask's worker threads and processes
do not see the block); else each chunk picks one as the core does.  On the
threaded scheduler several chunks run at once: ``fastloss.set_num_threads(1)``
avoids oversubscribing the cores with each kernel's own threads.
"""
from __future__ import annotations

import inspect
import math
import string
from typing import TYPE_CHECKING, Any, Protocol

import numpy as np

try:
    import dask
    import dask.array as da
except ImportError as exc:   # pragma: no cover - depends on the environment
    raise ImportError("fastloss.dask needs dask: pip install 'fastloss[dask]' "
                      f"(dask[array]) ({exc})") from exc

from . import _dispatch
from .losses import overlap as _overlap
from .losses.elementwise import ELEMENTWISE_LOSSES, MEAN_BY_WEIGHT_SUM
from .losses.multiclass import MEAN_DIVIDES_BY as ROWWISE_MEANS  # how their "mean" divides
from .losses.overlap import OVERLAP_LOSSES

_NOT_CHUNK_ARGS = ("input", "target", "reduction", "return_grad")
_PART = "z"            # blockwise index of the partials' own axis
_COEF, _ONE = "y", "x"  # the overlap coefficients' own axis; a size-1 axis of an operand


# ---- the shared skeleton ----------------------------------------------------------

def _graph(family, x, operands, *, reduction, return_grad, split_every, token):
    """(value[, grad]) of one loss over the dask array ``x``.

    ``family`` computes a chunk's partial sums (``partials``), the value and the
    global operand of the gradient from the totals (``finish``), a chunk's
    gradient (``grad``) and, where it is local, the ``"none"`` values
    (``none``).  ``operands`` are (dask array, blockwise index) pairs aligned
    with the input's blocks, handed to those functions after the input block.
    """
    index = _index(x.ndim)
    args = [x, index] + [item for pair in operands for item in pair]
    common = dict(dtype=x.dtype, concatenate=True)
    if reduction == "none" and family.none_index is not None:   # nothing global
        value = da.blockwise(family.none, family.none_index, *args, token=token + "-none",
                             **common)
        glob = None
    else:
        summed = family.summed
        parts = da.blockwise(family.partials, index + _PART, *args,
                             new_axes={_PART: family.width},
                             adjust_chunks={index[a]: 1 for a in summed},
                             dtype=np.float64, concatenate=True, token=token + "-partials")
        total = parts.sum(axis=summed, split_every=split_every)
        result = dask.delayed(family.finish, nout=2, pure=True)(total)
        value = da.from_delayed(result[0], shape=family.value_shape, dtype=x.dtype)
        glob = family.global_operand(result[1], x)
    if not return_grad:
        return value
    grad_args = args + list(glob or ())
    grad = da.blockwise(family.grad, index, *grad_args, token=token + "-grad", **common)
    return value, grad


class _Sums:
    """Elementwise and row-wise losses: partials (Σ loss, Σ denominator) per
    chunk; the gradient is a chunk's sum-gradient times 1 / the denominator."""

    width = 2

    def __init__(self, core, kw, names, reduction, dtype, ndim, denominator, none_index):
        self.core, self.kw, self.names = core, kw, names
        self.reduction, self.dtype, self.denominator = reduction, dtype, denominator
        self.summed = tuple(range(ndim))
        self.value_shape = ()
        self.none_index = none_index

    def _kwargs(self, blocks):
        return {**self.kw, **dict(zip(self.names, blocks))}

    def partials(self, x, t, *blocks):
        kw = self._kwargs(blocks)
        total = self.core(x, t, reduction="sum", **kw)
        part = (float(total), self.denominator(x, t, kw))
        return np.array(part, dtype=np.float64).reshape((1,) * x.ndim + (2,))

    def finish(self, total):
        value, denominator = float(total[0]), float(total[1])
        scale = 1.0
        if self.reduction == "mean":   # 0/0: nan, as the core (and PyTorch)
            scale = 1.0 / denominator if denominator != 0 else math.nan
        return np.asarray(value * scale, dtype=self.dtype), np.asarray(scale)

    def global_operand(self, scale, x):
        if self.reduction != "mean":    # "sum", "none": the gradient of the sum, unscaled
            return None
        return da.from_delayed(scale, shape=(), dtype=np.float64), ()

    def grad(self, x, t, *blocks):
        names = len(self.names)
        kw = self._kwargs(blocks[:names])
        _, g = self.core(x, t, reduction="sum", return_grad=True, **kw)
        if len(blocks) > names:          # the global 1 / denominator
            scale = blocks[names]
            g = (g * scale).astype(g.dtype, copy=False)
            ignored = None if np.isfinite(scale) else self.denominator.ignored(x, t, kw)
            if ignored is not None:      # nan * 0: the core keeps ignored rows at 0
                g[np.broadcast_to(ignored, g.shape)] = 0
        return g

    def none(self, x, t, *blocks):
        return self.core(x, t, reduction="none", **self._kwargs(blocks))


class _Stats:
    """Overlap losses: the (N, C, 3) sums per chunk, added over the spatial
    chunks (and the batch with ``batch=True``); the gradient of a chunk from
    the global sums' coefficients."""

    width = 3
    none_index = None

    def __init__(self, stats_kw, from_kw, reduction, dtype, ndim, batch, value_shape):
        self.stats_kw, self.from_kw = stats_kw, from_kw
        self.reduction, self.dtype, self.batch = reduction, dtype, batch
        self.summed = ((0,) if batch else ()) + tuple(range(2, ndim))
        self.value_shape = value_shape

    def partials(self, x, t):
        stats = _overlap.dice_stats(x, t, **self.stats_kw)
        return stats.reshape(stats.shape[:2] + (1,) * (x.ndim - 2) + (3,))

    def finish(self, total):
        if self.batch:
            total = total[None]
        value, coef = _overlap.dice_from_stats(total, reduction=self.reduction,
                                               return_coef=True, **self.from_kw)
        return np.asarray(value, dtype=self.dtype), coef

    def global_operand(self, coef, x):
        rows, classes = x.shape[:2]
        if self.batch:       # one row of coefficients for every sample
            coef = da.from_delayed(coef, shape=(1, classes, 2), dtype=np.float64)
            return coef, _ONE + _index(2)[1] + _COEF
        coef = da.from_delayed(coef, shape=(rows, classes, 2), dtype=np.float64)
        return coef.rechunk((x.chunks[0], (classes,), (2,))), _index(2) + _COEF

    def grad(self, x, t, coef):
        return _overlap.dice_grad(x, t, coef, **self.stats_kw)


# ---- the three families: checks, operands, the family object -------------------------

def _elementwise_family(name, core, x, target, kw, reduction):
    kw = dict(kw)
    q_array = name == "quantile_loss" and _is_array(kw.get("q"))
    if q_array and tuple(target.shape) == x.shape[:-1]:
        target = target[..., None]     # one target per row, as the core allows
    if not q_array and tuple(target.shape) != x.shape:
        raise ValueError(f"target: shape {tuple(target.shape)} does not match input shape "
                         f"{x.shape}")
    operands = [(_broadcast_like(target, "target", x) if q_array
                 else _blocks_like(target, "target", x, range(x.ndim)),
                 _index(x.ndim))]
    names = []
    for arg in ("weight", "pos_weight", "q"):
        if _is_array(kw.get(arg)):
            value = kw.pop(arg)
            if arg == "q":
                operands.append((_blocks_like(value, "q", x, (x.ndim - 1,)),
                                 _index(x.ndim)[-1]))
            else:
                operands.append((_broadcast_like(value, arg, x), _index(x.ndim)))
            names.append(arg)
    by_weight = name in MEAN_BY_WEIGHT_SUM
    family = _Sums(core, kw, tuple(names), reduction, x.dtype, x.ndim,
                   _ElementwiseDenominator(by_weight), _index(x.ndim))
    return family, operands


class _ElementwiseDenominator:
    def __init__(self, by_weight):
        self.by_weight = by_weight

    def ignored(self, x, t, kw):
        return None

    def __call__(self, x, t, kw):
        weight = kw.get("weight")
        if self.by_weight and weight is not None:
            return float(np.sum(np.broadcast_to(weight, x.shape), dtype=np.float64))
        return float(x.size)


def _rowwise_family(name, core, x, target, kw, reduction):
    if x.ndim < 2:
        raise ValueError(f"input: expected shape (N, C) or (N, C, d1, ..., dk) (one row of "
                         f"(C,) needs no dask: use fastloss.{name}), got {x.shape}")
    _check_class_axis(x)
    kw = dict(kw)
    for arg in ("weight", "alpha"):     # class vectors: small, sent whole to every chunk
        if _is_array(kw.get(arg)):
            kw[arg] = np.asarray(kw[arg])
    index = _index(x.ndim)
    rows = index[:1] + index[2:]
    row_shape = (x.shape[0],) + x.shape[2:]
    prob = (name == "cross_entropy" and tuple(target.shape) == x.shape
            and np.dtype(target.dtype).kind == "f")
    if prob:
        t_axes, t_index = range(x.ndim), index
    elif tuple(target.shape) == row_shape:
        t_axes, t_index = [0] + list(range(2, x.ndim)), rows
    else:
        extra = f" or class probabilities of the input's shape {x.shape}" if (
            name == "cross_entropy") else ""
        raise ValueError(f"target: class indices must have shape {row_shape} (the input's "
                         f"{x.shape} without the class axis){extra}, got {tuple(target.shape)}")
    operands = [(_blocks_like(target, "target", x, t_axes), t_index)]
    family = _Sums(core, kw, (), reduction, x.dtype, x.ndim,
                   _RowDenominator("rows" if prob else ROWWISE_MEANS[name]), rows)
    return family, operands


class _RowDenominator:
    def __init__(self, mean_by):
        self.mean_by = mean_by

    def ignored(self, x, t, kw):
        """The rows left out (None: none can be): (N, 1, ...) like the input."""
        if "ignore_index" not in kw or np.ndim(t) == x.ndim:
            return None
        return np.expand_dims(np.asarray(t) == kw["ignore_index"], 1)

    def __call__(self, x, t, kw):
        if self.mean_by == "rows":
            return float(x.size // x.shape[1]) if x.shape[1] else 0.0
        labels = np.asarray(t).reshape(-1)
        valid = labels != kw["ignore_index"]
        weight = kw.get("weight")
        if self.mean_by == "valid" or weight is None:
            return float(np.count_nonzero(valid))
        return float(np.sum(np.asarray(weight, dtype=np.float64)[labels[valid]]))


_STATS_ARGS = ("activation", "squared_pred", "ignore_index", "backend")


def _overlap_family(name, core, x, target, kw, reduction):
    if x.ndim < 3:
        raise ValueError(f"input: expected shape (N, C, *spatial) with one or more spatial axes, "
                         f"got {x.shape}")
    _check_class_axis(x)
    classes = x.shape[1]
    index = _index(x.ndim)
    labels = (x.shape[0],) + x.shape[2:]
    shape = tuple(target.shape)
    if shape == x.shape:
        t_axes, t_index = range(x.ndim), index
    elif shape == labels:
        t_axes, t_index = [0] + list(range(2, x.ndim)), index[:1] + index[2:]
    elif classes > 1 and shape == (x.shape[0], 1) + x.shape[2:]:
        t_axes, t_index = [0, None] + list(range(2, x.ndim)), index[:1] + _ONE + index[2:]
    else:
        raise ValueError(f"target: expected class indices of shape {labels}"
                         + (f" or {(x.shape[0], 1) + x.shape[2:]}" if classes > 1 else "")
                         + f", or a mask of the input's shape {x.shape}, got shape {shape}")
    stats_kw = {k: kw[k] for k in _STATS_ARGS if k in kw}
    if name not in ("dice_loss", "jaccard_loss"):
        stats_kw["squared_pred"] = False
    from_kw = {k: np.asarray(v) if k == "weight" and _is_array(v) else v
               for k, v in kw.items() if k not in _STATS_ARGS}
    from_kw["loss"] = name.removesuffix("_loss")
    # the options of the value, checked now on sums of the right shape
    _overlap.dice_from_stats(np.ones((1, classes, 3)), reduction=reduction, **from_kw)
    scored = classes - 1 if not kw["include_background"] and classes > 1 else classes
    batch = kw["batch"]
    if reduction != "none":
        value_shape = ()
    elif name == "generalized_dice_loss":
        value_shape = (1,) if batch else (x.shape[0],)
    else:
        value_shape = (scored,) if batch else (x.shape[0], scored)
    family = _Stats(stats_kw, from_kw, reduction, x.dtype, x.ndim, batch, value_shape)
    return family, [(_blocks_like(target, "target", x, t_axes), t_index)]


def _check_class_axis(x):
    if len(x.chunks[1]) != 1:
        raise ValueError(f"input: the class axis (axis 1, size {x.shape[1]}) must be one "
                         f"chunk, got chunks {x.chunks[1]}; rechunk: input.rechunk({{1: -1}})")


# ---- operands -----------------------------------------------------------------------

def _index(ndim):
    return string.ascii_lowercase[:ndim]


def _is_array(value) -> bool:
    return isinstance(value, da.Array) or (value is not None and np.ndim(value) > 0)


def _blocks_like(obj, name, x, axes):
    """``obj`` as a dask array whose axes are ``x``'s ``axes`` (None: an axis of
    size 1 of its own) with ``x``'s chunks there: a NumPy array is wrapped, a
    dask array must have them."""
    chunks = tuple((1,) if a is None else x.chunks[a] for a in axes)
    if isinstance(obj, da.Array):
        if obj.chunks != chunks:
            raise ValueError(f"{name}: chunks {obj.chunks} differ from the input's "
                             f"{chunks} on the axes they share; rechunk it first: "
                             f"{name}.rechunk({chunks})")
        return obj
    return da.from_array(np.asarray(obj), chunks=chunks)


def _broadcast_like(obj, name, x):
    """``obj`` broadcast to ``x``'s shape and chunks (a weight, pos_weight)."""
    array = obj if isinstance(obj, da.Array) else np.asarray(obj)
    shape = tuple(array.shape)
    try:
        fits = np.broadcast_shapes(shape, x.shape) == x.shape
    except ValueError:
        fits = False
    if not fits:
        raise ValueError(f"{name}: shape {shape} does not broadcast to the input shape "
                         f"{x.shape}")
    lead = x.ndim - len(shape)
    axes = [None if extent == 1 else lead + i for i, extent in enumerate(shape)]
    return da.broadcast_to(_blocks_like(array, name, x, axes), x.shape, chunks=x.chunks)


# ---- eager checks: what the core checks before it reads an array ---------------------

class _ProbeReached(Exception):
    pass


class _Probe:
    """Stands for every array in a call of the core loss made only to check the
    other arguments when the graph is built: the core checks its
    hyper-parameters, ``reduction`` and ``return_grad`` first and stops here
    as soon as it reads an array."""

    def __array__(self, *args, **kwargs):
        raise _ProbeReached


def _check_with_core(core, kwargs):
    probed = {k: _Probe() if _is_array(v) else v for k, v in kwargs.items()}
    try:
        core(_Probe(), _Probe(), **probed)
    except _ProbeReached:
        pass
    except TypeError as exc:       # ArrayMeta wraps what reading the probe raised
        if not isinstance(exc.__cause__, _ProbeReached):
            raise


# ---- the public functions -----------------------------------------------------------

class DaskLoss(Protocol):
    """A loss of this module: ``(input, target, **options)`` of the core loss,
    plus ``split_every``; returns a dask array, or (value, grad)."""

    def __call__(self, input: Any, target: Any, **kwargs: Any) -> Any: ...


def _make(name, core, prepare) -> DaskLoss:
    signature = inspect.signature(core)

    def loss(input, target, **kwargs):
        split_every = kwargs.pop("split_every", None)
        try:
            bound = signature.bind(input, target, **kwargs)
        except TypeError as exc:
            raise TypeError(f"fastloss.dask.{name}: {exc}") from None
        bound.apply_defaults()
        arguments = dict(bound.arguments)
        _check_with_core(core, {k: v for k, v in arguments.items()
                                if k not in ("input", "target")})
        reduction, return_grad = arguments["reduction"], bool(arguments["return_grad"])
        if not isinstance(input, da.Array):
            raise TypeError(f"input: expected a dask array, got {type(input).__name__}; "
                            f"for in-memory arrays use fastloss.{name}")
        if input.dtype not in (np.float32, np.float64):
            raise TypeError(f"input: expected a float32 or float64 array, got dtype "
                            f"{input.dtype}")
        if any(math.isnan(c) for chunks in input.chunks for c in chunks):
            raise ValueError("input: chunk sizes are unknown (nan); call "
                             "input.compute_chunk_sizes() first")
        if not hasattr(target, "shape") or not hasattr(target, "dtype"):
            target = np.asarray(target)
        chunk_kw = {k: v for k, v in arguments.items() if k not in _NOT_CHUNK_ARGS}
        if chunk_kw.get("backend") is None:     # use_backend() does not reach dask's workers
            chunk_kw["backend"] = _dispatch._context.get()
        family, operands = prepare(name, core, input, target, chunk_kw, reduction)
        return _graph(family, input, operands, reduction=reduction, return_grad=return_grad,
                      split_every=split_every, token=f"fastloss-{name}")

    split = inspect.Parameter("split_every", inspect.Parameter.KEYWORD_ONLY, default=None,
                              annotation="int | dict | None")
    loss.__signature__ = signature.replace(  # type: ignore[attr-defined]
        parameters=list(signature.parameters.values()) + [split],
        return_annotation="dask.array.Array | tuple[dask.array.Array, dask.array.Array]")
    loss.__name__ = loss.__qualname__ = name
    loss.__module__ = __name__
    loss.__doc__ = (f"fastloss.{name} over dask arrays (see the module's docstring for the "
                    f"chunking rules): the same arguments, plus ``split_every``; returns a "
                    f"lazy dask array (0-d for \"mean\"/\"sum\"), or ``(value, grad)`` with "
                    f"``return_grad=True``, grad chunked like the input.\n\n"
                    f"The core loss:\n\n{inspect.getdoc(core) or ''}")
    return loss


def _table():
    import fastloss
    table = {}
    for names, prepare in ((ELEMENTWISE_LOSSES, _elementwise_family),
                           (ROWWISE_MEANS, _rowwise_family),
                           (OVERLAP_LOSSES, _overlap_family)):
        for name in names:
            table[name] = _make(name, getattr(fastloss, name), prepare)
    return table


LOSSES: dict[str, DaskLoss] = _table()
globals().update(LOSSES)
__all__ = list(LOSSES) + ["LOSSES", "ROWWISE_MEANS", "DaskLoss"]

if TYPE_CHECKING:   # the generated functions, for type checkers
    mse_loss: DaskLoss
    l1_loss: DaskLoss
    huber_loss: DaskLoss
    smooth_l1_loss: DaskLoss
    log_cosh_loss: DaskLoss
    quantile_loss: DaskLoss
    binary_cross_entropy: DaskLoss
    binary_cross_entropy_with_logits: DaskLoss
    sigmoid_focal_loss: DaskLoss
    hinge_loss: DaskLoss
    cross_entropy: DaskLoss
    nll_loss: DaskLoss
    softmax_focal_loss: DaskLoss
    multi_margin_loss: DaskLoss
    multiclass_hinge_loss: DaskLoss
    dice_loss: DaskLoss
    jaccard_loss: DaskLoss
    tversky_loss: DaskLoss
    generalized_dice_loss: DaskLoss
