"""Representation-learning losses on tiled pairwise distances and similarities:
contrastive (pytorch-metric-learning), triplet margin (PyTorch), batch-hard
triplet (Hermans et al.), InfoNCE (info-nce-pytorch) and NT-Xent (SimCLR),
plus the distance matrix itself.

No loss builds the N x M matrix: the kernels (kernels/__init__.py PAIRWISE)
compute tiles of it, use them and drop them, and the gradients compute the
tiles again.  Extra memory is O((N + M) D) for normalized copies and
gradients, plus a fixed workspace per thread.

This module holds the glue around the kernels, written once for every
backend: validation, row normalization (torch.nn.functional.normalize:
x / max(||x||, 1e-12), so a zero row stays zero and its cosine similarity
with anything is 0), the O(N) arithmetic on per-row results, and the chain
rule back through the normalization.  The (N, D) glue runs through ``rows``:
the numpy versions below for the host backends, numba_cuda's own on the GPU.
Per-row float64 results come back to the host (an O(N) copy on the GPU).
"""
from __future__ import annotations

import math
import numbers
import types
from typing import Any, Literal, overload

import numpy as np

from .. import _dispatch, reference
from .._convert import same_type_as_input
from .._typing import (ArrayLike, Array, Backend, Loss, LossAndGrad, LossAndGrads, Metric,
                       PairReduction, Reduction)
from .._registry import records
from .._validate import FLOAT_DTYPES, ArrayMeta, check_bool, check_real

FLOAT32_MAX = float(np.finfo(np.float32).max)

__all__ = ["pairwise_distances", "contrastive_loss", "triplet_margin_loss",
           "batch_hard_triplet_loss", "info_nce_loss", "nt_xent_loss", "PAIRWISE_LOSSES"]

#: every public function of the family (pairwise_distances has no gradient)
PAIRWISE_LOSSES = tuple(r.name for r in records("pairwise"))   # from the registry

NORM_EPS = 1e-12          # torch.nn.functional.normalize's eps
METRICS = ("euclidean", "sqeuclidean", "cosine")
PAIR_REDUCTIONS = ("mean", "sum", "none", "mean_nonzero")


# ---------------------------------------------------------------- host row glue
#: rows per block of the host glue: its float64 temporaries stay near 1 MB at D = 128
GLUE_ROWS = 1024


def _blocks(n):
    return (slice(i, min(n, i + GLUE_ROWS)) for i in range(0, n, GLUE_ROWS))


def _normalize_rows(x, eps, out=None):
    out = np.empty_like(x) if out is None else out
    norm = np.empty(x.shape[0])
    for rows in _blocks(x.shape[0]):
        xb = x[rows].astype(np.float64)
        norm[rows] = nb = np.sqrt(np.einsum("ij,ij->i", xb, xb))
        out[rows] = xb / np.maximum(nb, eps)[:, None]
    return out, norm


def _normalize_rows_backward(g, xhat, norm, eps, out=None, raw=False):
    out = np.empty_like(g) if out is None else out      # may be g itself
    for rows in _blocks(g.shape[0]):
        g64, u, nb = g[rows].astype(np.float64), xhat[rows].astype(np.float64), norm[rows]
        if raw:                                          # x given, not x / max(||x||, eps)
            u /= np.maximum(nb, eps)[:, None]
        big = nb >= eps          # torch: clamp_min passes the gradient at eps
        proj = np.einsum("ij,ij->i", g64, u)
        out[rows] = np.where(big[:, None], (g64 - u * proj[:, None])
                             / np.where(big, nb, 1.0)[:, None], g64 / eps)
    return out


def _row_dots(a, b):
    out = np.empty(a.shape[0])
    for rows in _blocks(a.shape[0]):
        out[rows] = np.einsum("ij,ij->i", a[rows].astype(np.float64), b[rows].astype(np.float64))
    return out


def _scaled_copy(out, a, coef):
    coef = np.asarray(coef, np.float64)
    for rows in _blocks(a.shape[0]):
        c = coef[rows, None] if coef.ndim else coef
        out[rows] = c * a[rows].astype(np.float64)


def _pair_rows_distance(x, i, j, metric):
    out = np.empty(len(i))
    for k in _blocks(len(i)):
        u, v = x[i[k]].astype(np.float64), x[j[k]].astype(np.float64)
        if metric == "cosine":
            out[k] = 1.0 - np.einsum("ij,ij->i", u, v)
        else:
            sq = np.einsum("ij,ij->i", u - v, u - v)
            out[k] = sq if metric == "sqeuclidean" else np.sqrt(sq)
    return out


def _pair_rows_grad(x, i, j, coef, metric):
    grad = np.zeros(x.shape, np.float64)
    coef = np.asarray(coef, np.float64)
    for k in _blocks(len(i)):
        u, v = x[i[k]].astype(np.float64), x[j[k]].astype(np.float64)
        if metric == "cosine":        # d = 1 - u.v
            gi, gj = -v, -u
        else:
            diff = u - v
            if metric == "sqeuclidean":
                f = np.full(len(diff), 2.0)
            else:
                d = np.sqrt(np.einsum("ij,ij->i", diff, diff))
                f = np.divide(1.0, d, out=np.zeros_like(d), where=d > 0)
            gi = diff * f[:, None]
            gj = -gi
        c = coef[k, None]
        np.add.at(grad, i[k], c * gi)          # sequential: deterministic
        np.add.at(grad, j[k], c * gj)
    return grad.astype(x.dtype)


_HOST_ROWS = types.SimpleNamespace(
    normalize_rows=_normalize_rows, normalize_rows_backward=_normalize_rows_backward,
    row_dots=_row_dots, scaled_copy=_scaled_copy, pair_rows_distance=_pair_rows_distance,
    pair_rows_grad=_pair_rows_grad)


_ROWS_OF_BACKEND: dict = {}


def _host_rows(module):
    """The host glue of a CPU backend: its own compiled versions of the glue
    functions where it has them (the C backend: norms and dots), NumPy's otherwise."""
    rows = _ROWS_OF_BACKEND.get(module)
    if rows is None:
        own = {name: getattr(module, name) for name in vars(_HOST_ROWS) if hasattr(module, name)}
        rows = _ROWS_OF_BACKEND[module] = types.SimpleNamespace(**{**vars(_HOST_ROWS), **own})
    return rows


# ---------------------------------------------------------------- validation
def _check_choice(value, name, choices):
    if not isinstance(value, str) or value not in choices:
        raise ValueError(f"{name}: expected one of {', '.join(map(repr, choices))}, "
                         f"got {value!r}")
    return value


def _check_margin(value, name, distance=None):
    value = check_real(value, name)
    if not (0.0 <= value < math.inf):
        raise ValueError(f"{name}: expected a finite margin >= 0 (a distance), got {value!r}")
    if distance == "cosine" and value > 2.0:
        raise ValueError(f"{name}: a cosine distance 1 - cos lies in [0, 2]; a margin of "
                         f"{value!r} is out of that range")
    return value


def _check_temperature(value):
    value = check_real(value, "temperature")
    if not (0.0 < value < math.inf):
        raise ValueError(f"temperature: expected a finite value > 0, got {value!r}")
    return value


class _Batch:
    """The embedding arguments of one call, checked together: one float dtype, one
    device, 2-D (or the given ndim), contiguous on the device they are on."""

    def __init__(self, named: dict, backend, ndims=None):
        metas = {name: ArrayMeta(obj, name) for name, obj in named.items()}
        places = {m.on_gpu for m in metas.values()}
        if len(places) > 1:
            where = ", ".join(f"{n} on {'the GPU' if m.on_gpu else 'the host'}"
                              for n, m in metas.items())
            raise TypeError(f"the embeddings must all be on one device; got {where}")
        self.on_gpu = places.pop()
        first = None
        for name, meta in metas.items():
            ndim = (ndims or {}).get(name, 2)
            if len(meta.shape) != ndim:
                shape = "(N, M, D)" if ndim == 3 else "(N, D)"
                raise ValueError(f"{name}: expected a {ndim}-D array {shape}, got shape "
                                 f"{meta.shape}")
            if meta.dtype not in FLOAT_DTYPES:
                raise TypeError(f"{name}: expected float32 or float64 embeddings, got dtype "
                                f"{meta.dtype}")
            if meta.shape[-1] == 0:
                raise ValueError(f"{name}: the embeddings have width 0 (shape {meta.shape}); "
                                 f"expected D >= 1")
            if first is None:
                first = (name, meta)
            elif meta.dtype != first[1].dtype:
                raise TypeError(f"{name}: dtype {meta.dtype} differs from {first[0]}'s "
                                f"{first[1].dtype}; give every embedding the same float dtype")
            elif meta.shape[-1] != first[1].shape[-1]:
                raise ValueError(f"{name}: width D = {meta.shape[-1]} (shape {meta.shape}) "
                                 f"differs from {first[0]}'s D = {first[1].shape[-1]}")
            if self.on_gpu and not meta.contiguous:
                raise ValueError(f"{name}: non-contiguous GPU arrays are not supported "
                                 f"(shape {meta.shape}); make a contiguous copy first")
        assert first is not None       # every caller names at least one array
        self.dtype = first[1].dtype
        self.shapes = {n: m.shape for n, m in metas.items()}
        self.arrays = {n: (m.array if self.on_gpu else np.ascontiguousarray(m.array))
                       for n, m in metas.items()}
        self.name, self.module = _dispatch.select(backend, self.on_gpu)
        self.rows = self.module if self.on_gpu else _host_rows(self.module)

    def value(self, v):
        """A float64 result in the embeddings' dtype: a scalar, or for "none" an array
        on their device."""
        if np.ndim(v) == 0:
            return self.dtype.type(v)
        v = np.asarray(v).astype(self.dtype)
        if self.on_gpu:
            from numba import cuda
            return cuda.to_device(v)
        return v

    def normalized(self, x):
        return self.rows.normalize_rows(x, NORM_EPS)

    def back(self, g, xhat, norm, raw=False):
        """The gradient for x from g, the gradient for x's normalized rows, in place
        (raw: ``xhat`` is x itself)."""
        return self.rows.normalize_rows_backward(g, xhat, norm, NORM_EPS, out=g, raw=raw)

    def empty(self, shape):
        if self.on_gpu:
            from numba import cuda
            return cuda.device_array(shape, self.dtype)
        return np.empty(shape, self.dtype)


def _labels(obj, n):
    """Host int64 labels (N,) of any integer dtype (a GPU array is copied: O(N))."""
    meta = ArrayMeta(obj, "labels")
    array = meta.array.copy_to_host() if meta.on_gpu else meta.array
    if meta.dtype.kind not in "iu" or meta.dtype == np.bool_:
        raise TypeError(f"labels: expected integer class labels, got dtype {meta.dtype}")
    if meta.shape != (n,):
        raise ValueError(f"labels: expected shape ({n},), one label per embedding, got "
                         f"{meta.shape}")
    if meta.dtype == np.uint64 and n and array.max() > np.iinfo(np.int64).max:
        raise ValueError("labels: uint64 labels above 2**63 - 1 are not supported")
    return np.ascontiguousarray(array, dtype=np.int64)


def _flags(reduction, return_grad, choices=("mean", "sum", "none")):
    _check_choice(reduction, "reduction", choices)
    return check_bool(return_grad, "return_grad")


def _reduce_rows(per_row, reduction, empty_mean=math.nan):
    """(value, gradient gain): mean / sum of float64 per-row losses (numpy's pairwise
    sum: fixed order).  The mean of no rows is nan, as in torch (and info-nce-pytorch),
    unless the loss's peer says otherwise (``empty_mean``); its gain is 0."""
    if reduction == "none":
        return per_row, 1.0
    total = float(per_row.sum())
    if reduction == "sum":
        return total, 1.0
    n = per_row.size
    return (total / n if n else empty_mean), (1.0 / n if n else 0.0)


def _lse_and_product(mod, a, b, scale, exclude_diag, gain, out, col_scale=None):
    """lse_i = log sum_j exp(s_ij) and out_i += gain sum_j softmax_j(s_i.) b^_j, with
    s_ij = scale a_i . b^_j and b^_j = b_j col_scale_j (col_scale None: b^ = b): in
    one pass over the tiles where the backend fuses them (C: an online softmax),
    else two."""
    fused = getattr(mod, "pair_lse_product", None)
    if fused is not None:
        return fused(a, b, scale, exclude_diag, gain, out, col_scale=col_scale,
                     col_weight=col_scale)
    lse = mod.pair_lse(a, b, scale, exclude_diag, col_scale=col_scale)
    # the product's weight col_scale_j enters as the column shift -log col_scale_j
    mod.pair_softmax_product(a, b, scale, lse, None if col_scale is None else -np.log(col_scale),
                             exclude_diag, gain, out, col_scale=col_scale)
    return lse


def _need_rows(n, name, at_least=2):
    if n < at_least:
        raise ValueError(f"{name}: needs at least {at_least} embeddings (rows) to form "
                         f"pairs, got {n}")


# ---------------------------------------------------------------- the losses
@same_type_as_input
def pairwise_distances(x: ArrayLike, y: ArrayLike | None = None, *, metric: Metric = "euclidean",
                       backend: Backend = None) -> Array:
    """The (N, M) matrix of distances between the rows of x (N, D) and y (M, D)
    (y = x when None), in x's dtype, computed tile by tile on the threads.

    metric : "euclidean" | "sqeuclidean" | "cosine"
        From the Gram matrix: sqrt(max(|x|^2 + |y|^2 - 2 x.y, 0)), its square,
        or 1 - cos (rows normalized first; a zero row has cosine 0 with
        everything, so distance 1).  With y None the diagonal is exactly 0.

    Example::

        >>> import numpy as np, fastloss as fl
        >>> x = np.array([[0, 0], [3, 4]], np.float32)
        >>> fl.pairwise_distances(x)
        array([[0., 5.],
               [5., 0.]], dtype=float32)
    """
    _check_choice(metric, "metric", METRICS)
    named = {"x": x} if y is None else {"x": x, "y": y}
    batch = _Batch(named, backend)
    a = batch.arrays["x"]
    b = a if y is None else batch.arrays["y"]
    if batch.name == "numpy":
        return reference.pairwise_distances(a, None if y is None else b,
                                            metric=metric).astype(batch.dtype)
    if metric == "cosine":
        a = batch.normalized(a)[0]
        b = a if y is None else batch.normalized(b)[0]
    return batch.module.pair_matrix(a, b, metric)


# Each loss comes with three typing overloads, for return_grad=False (the default: the
# value), True ((value, gradient)) and a bool not known statically (either), then
# its implementation.
@overload
def contrastive_loss(embeddings: ArrayLike, labels: ArrayLike, *, pos_margin: float = ...,
                     neg_margin: float = ..., distance: Metric = ...,
                     normalize_embeddings: bool = ..., reduction: PairReduction = ...,
                     return_grad: Literal[False] = ..., backend: Backend = ...) -> Loss: ...
@overload
def contrastive_loss(embeddings: ArrayLike, labels: ArrayLike, *, pos_margin: float = ...,
                     neg_margin: float = ..., distance: Metric = ...,
                     normalize_embeddings: bool = ..., reduction: PairReduction = ...,
                     return_grad: Literal[True], backend: Backend = ...) -> LossAndGrad: ...
@overload
def contrastive_loss(embeddings: ArrayLike, labels: ArrayLike, *, pos_margin: float = ...,
                     neg_margin: float = ..., distance: Metric = ...,
                     normalize_embeddings: bool = ..., reduction: PairReduction = ...,
                     return_grad: bool, backend: Backend = ...) -> Loss | LossAndGrad: ...
@same_type_as_input
def contrastive_loss(embeddings: ArrayLike, labels: ArrayLike, *, pos_margin: float = 0.0,
                     neg_margin: float = 1.0, distance: Metric = "euclidean",
                     normalize_embeddings: bool = True, reduction: PairReduction = "mean_nonzero",
                     return_grad: bool = False, backend: Backend = None) -> Loss | LossAndGrad:
    """Contrastive loss over all ordered pairs of a batch, as
    pytorch-metric-learning's ``ContrastiveLoss`` (Hadsell et al., 2006).

    For i != j, with d the distance between embeddings i and j: a positive
    pair (equal labels) costs relu(d - pos_margin), a negative pair
    relu(neg_margin - d).

    distance : "euclidean" | "sqeuclidean" | "cosine"
        "cosine" is 1 - cos in [0, 2]; pml's ``CosineSimilarity`` with margins
        (pm, nm) is distance="cosine" with margins (1 - pm, 1 - nm).
    normalize_embeddings : bool
        Normalize the rows first, as pml's default ``LpDistance`` does
        (the gradient flows through it).  Cosine always normalizes.
    pos_margin, neg_margin : float >= 0 (<= 2 for cosine)
    reduction : "mean_nonzero" | "mean" | "sum" | "none"
        "mean_nonzero" (pml's default ``AvgNonZeroReducer``): the mean of the
        positive-pair losses that are > 0 plus the mean of the negative-pair
        losses that are > 0, each part 0 when it has none.  "mean" (pml's
        ``MeanReducer``): the mean over all positive pairs plus the mean over
        all negative pairs.  "sum": over all ordered pairs.  "none": (N,), per
        anchor i the sum over j of its pair losses (the (N, N) matrix is never
        built).
    return_grad : bool
        Also return d(result)/d(embeddings) ("none": of the sum); at the
        kinks (d equal to a margin) the gradient of relu at 0 is 0, and the
        euclidean distance of two equal rows has gradient 0.

    Example::

        >>> import numpy as np, fastloss as fl
        >>> x = np.array([[1, 0], [1, 0.1], [0, 1]], np.float32)
        >>> round(float(fl.contrastive_loss(x, np.array([0, 0, 1]))), 4)
        0.0996
    """
    if reduction not in PAIR_REDUCTIONS or distance not in METRICS:
        _check_choice(reduction, "reduction", PAIR_REDUCTIONS)
        _check_choice(distance, "distance", METRICS)
    return_grad = check_bool(return_grad, "return_grad")
    normalize_embeddings = check_bool(normalize_embeddings, "normalize_embeddings")
    pos_margin = _check_margin(pos_margin, "pos_margin", distance)
    neg_margin = _check_margin(neg_margin, "neg_margin", distance)
    batch = _Batch({"embeddings": embeddings}, backend)
    x = batch.arrays["embeddings"]
    n = x.shape[0]
    _need_rows(n, "embeddings")
    y = _labels(labels, n)
    kw = dict(pos_margin=pos_margin, neg_margin=neg_margin, distance=distance,
              normalize_embeddings=normalize_embeddings, reduction=reduction)
    if batch.name == "numpy":
        return _from_reference(batch, reference.contrastive_loss(x, y, return_grad=return_grad,
                                                                 **kw), return_grad)
    norm = distance == "cosine" or normalize_embeddings
    xk, length = batch.normalized(x) if norm else (x, None)
    stats = batch.module.pair_contrastive_stats(xk, y, distance, pos_margin, neg_margin)
    s_pos, c_pos, s_neg, c_neg = (float(v) for v in stats.sum(axis=0))
    if reduction == "mean_nonzero":
        cp, cn = (1.0 / c_pos if c_pos else 0.0), (1.0 / c_neg if c_neg else 0.0)
    elif reduction == "mean":
        counts = np.unique(y, return_counts=True)[1].astype(np.float64)
        n_pos = float((counts * (counts - 1)).sum())
        n_neg = float(n) * (n - 1) - n_pos
        cp, cn = (1.0 / n_pos if n_pos else 0.0), (1.0 / n_neg if n_neg else 0.0)
    else:
        cp = cn = 1.0
    value = stats[:, 0] + stats[:, 2] if reduction == "none" else cp * s_pos + cn * s_neg
    value = batch.value(value)
    if not return_grad:
        return value
    grad = batch.module.pair_contrastive_grad(xk, y, distance, pos_margin, neg_margin, cp, cn)
    return value, (batch.back(grad, xk, length) if norm else grad)


def _from_reference(batch, result, return_grad):
    """A float64 reference result in the dtype (the numpy backend)."""
    if not return_grad:
        return batch.value(result)
    value, grads = result
    cast = (lambda g: np.asarray(g).astype(batch.dtype))
    grads = tuple(cast(g) for g in grads) if isinstance(grads, tuple) else cast(grads)
    return batch.value(value), grads


@overload
def triplet_margin_loss(anchor: ArrayLike, positive: ArrayLike, negative: ArrayLike, *,
                        margin: float = ..., p: float = ..., eps: float = ..., swap: bool = ...,
                        reduction: Reduction = ..., return_grad: Literal[False] = ...,
                        backend: Backend = ...) -> Loss: ...
@overload
def triplet_margin_loss(anchor: ArrayLike, positive: ArrayLike, negative: ArrayLike, *,
                        margin: float = ..., p: float = ..., eps: float = ..., swap: bool = ...,
                        reduction: Reduction = ..., return_grad: Literal[True],
                        backend: Backend = ...) -> LossAndGrads: ...
@overload
def triplet_margin_loss(anchor: ArrayLike, positive: ArrayLike, negative: ArrayLike, *,
                        margin: float = ..., p: float = ..., eps: float = ..., swap: bool = ...,
                        reduction: Reduction = ..., return_grad: bool,
                        backend: Backend = ...) -> Loss | LossAndGrads: ...
@same_type_as_input
def triplet_margin_loss(anchor: ArrayLike, positive: ArrayLike, negative: ArrayLike, *,
                        margin: float = 1.0, p: float = 2.0, eps: float = 1e-6, swap: bool = False,
                        reduction: Reduction = "mean", return_grad: bool = False,
                        backend: Backend = None) -> Loss | LossAndGrads:
    """Triplet margin loss, as ``torch.nn.functional.triplet_margin_loss``
    (PyTorch 2.13) exactly.

    Per row: d(u, v) = ||u - v + eps||_p (torch's ``pairwise_distance`` adds
    eps to the difference), l = max(margin + d(a, p) - d_an, 0) with
    d_an = d(a, n), or with swap min(d(a, n), d(p, n)).

    anchor, positive, negative : arrays (N, D) or (D,), one shape, one dtype
    margin : float >= 0 (torch raises for 0; here 0 is a plain ranking loss)
    p : float > 0, the norm (torch accepts p <= 0 and computes something)
    eps : float >= 0
    reduction : "mean" | "sum" | "none" ((N,), or 0-d for (D,) inputs)
    return_grad : bool
        Also return (d/d anchor, d/d positive, d/d negative), with torch's
        rules at the kinks: the gradient passes where margin + d_ap - d_an is
        exactly 0 (clamp_min), half of it goes to each distance at a swap
        tie d(a, n) = d(p, n) (torch.min), and the p-norm's gradient at a
        zero difference is 0.

    Example::

        >>> import numpy as np, fastloss as fl
        >>> a, p, n = (np.array([[0, 0]], np.float32), np.array([[0, 1]], np.float32),
        ...            np.array([[0, 1.5]], np.float32))
        >>> round(float(fl.triplet_margin_loss(a, p, n, eps=0.0)), 4)
        0.5
    """
    return_grad = _flags(reduction, return_grad)
    margin = _check_margin(margin, "margin")
    p = check_real(p, "p")
    if not (0.0 < p < math.inf):
        raise ValueError(f"p: expected a finite norm degree > 0, got {p!r}")
    eps = check_real(eps, "eps")
    if not (0.0 <= eps < math.inf):
        raise ValueError(f"eps: expected a finite value >= 0, got {eps!r}")
    swap = check_bool(swap, "swap")
    metas = {n: ArrayMeta(v, n) for n, v in (("anchor", anchor), ("positive", positive),
                                             ("negative", negative))}
    ndim = len(metas["anchor"].shape)
    if ndim not in (1, 2):
        raise ValueError(f"anchor: expected shape (N, D) or (D,), got {metas['anchor'].shape}")
    for name, meta in metas.items():
        if meta.shape != metas["anchor"].shape:
            raise ValueError(f"{name}: shape {meta.shape} differs from anchor's "
                             f"{metas['anchor'].shape}; the three must match")
    batch = _Batch({n: m.array for n, m in metas.items()}, backend,
                   ndims=dict.fromkeys(metas, ndim))
    a, pp, nn = (batch.arrays[k] for k in ("anchor", "positive", "negative"))
    if batch.name == "numpy":
        return _from_reference(batch, reference.triplet_margin_loss(
            a, pp, nn, margin=margin, p=p, eps=eps, swap=swap, reduction=reduction,
            return_grad=return_grad), return_grad)
    if ndim == 1:      # one triplet: rows of one
        a, pp, nn = (v.reshape(1, -1) for v in (a, pp, nn))
    n = a.shape[0]
    gain = 1.0 / n if reduction == "mean" and n else 1.0
    losses, grads = batch.module.triplet_rows(a, pp, nn, margin, p, eps, swap, return_grad, gain)
    value, _ = _reduce_rows(losses, reduction)
    if reduction == "none" and ndim == 1:
        value = losses[0]
    value = batch.value(value)
    if not return_grad:
        return value
    if ndim == 1:
        grads = tuple(g.reshape(-1) for g in grads)
    return value, tuple(grads)


@overload
def batch_hard_triplet_loss(embeddings: ArrayLike, labels: ArrayLike, *, margin: float = ...,
                            distance: Metric = ..., normalize_embeddings: bool = ...,
                            soft: bool = ..., reduction: PairReduction = ...,
                            return_grad: Literal[False] = ..., backend: Backend = ...) -> Loss: ...
@overload
def batch_hard_triplet_loss(embeddings: ArrayLike, labels: ArrayLike, *, margin: float = ...,
                            distance: Metric = ..., normalize_embeddings: bool = ...,
                            soft: bool = ..., reduction: PairReduction = ...,
                            return_grad: Literal[True], backend: Backend = ...) -> LossAndGrad: ...
@overload
def batch_hard_triplet_loss(embeddings: ArrayLike, labels: ArrayLike, *, margin: float = ...,
                            distance: Metric = ..., normalize_embeddings: bool = ...,
                            soft: bool = ..., reduction: PairReduction = ..., return_grad: bool,
                            backend: Backend = ...) -> Loss | LossAndGrad: ...
@same_type_as_input
def batch_hard_triplet_loss(embeddings: ArrayLike, labels: ArrayLike, *, margin: float = 1.0,
                            distance: Metric = "euclidean", normalize_embeddings: bool = False,
                            soft: bool = False, reduction: PairReduction = "mean",
                            return_grad: bool = False,
                            backend: Backend = None) -> Loss | LossAndGrad:
    """Batch-hard triplet loss (Hermans, Beyer & Leibe, 2017): per anchor its
    hardest positive (the farthest embedding of its label) and hardest
    negative (the nearest of another label), mined inside the tile loop.

    l_i = relu(margin + d_ap - d_an), or with soft softplus(margin + d_ap -
    d_an) (Hermans' soft margin is soft=True, margin=0).  An anchor without a
    positive or a negative is left out.  Among equal distances the first
    index wins.  The distances of the mined pairs are then computed exactly
    from the rows, and the gradient flows through both ends of both pairs
    (not through the mining).

    distance : "euclidean" | "sqeuclidean" | "cosine" (1 - cos)
    normalize_embeddings : bool (cosine always normalizes)
    reduction : "mean" (over the valid anchors; 0 if none) | "sum" |
        "mean_nonzero" (over the valid anchors with l_i > 0, as
        pytorch-metric-learning's ``BatchHardMiner`` + ``TripletMarginLoss``)
        | "none" ((N,), 0 for anchors left out)

    Example::

        >>> import numpy as np, fastloss as fl
        >>> x = np.array([[0, 0], [0, 1], [0, 3]], np.float32)
        >>> fl.batch_hard_triplet_loss(x, np.array([0, 0, 1]), reduction="none")
        array([0., 0., 0.], dtype=float32)
    """
    return_grad = _flags(reduction, return_grad, PAIR_REDUCTIONS)
    _check_choice(distance, "distance", METRICS)
    margin = _check_margin(margin, "margin", distance)
    normalize_embeddings = check_bool(normalize_embeddings, "normalize_embeddings")
    soft = check_bool(soft, "soft")
    batch = _Batch({"embeddings": embeddings}, backend)
    x = batch.arrays["embeddings"]
    n = x.shape[0]
    _need_rows(n, "embeddings")
    y = _labels(labels, n)
    if batch.name == "numpy":
        return _from_reference(batch, reference.batch_hard_triplet_loss(
            x, y, margin=margin, distance=distance, normalize_embeddings=normalize_embeddings,
            soft=soft, reduction=reduction, return_grad=return_grad), return_grad)
    norm = distance == "cosine" or normalize_embeddings
    xk, length = batch.normalized(x) if norm else (x, None)
    pos, neg = batch.module.pair_hardest(xk, y, distance)
    valid = np.flatnonzero((pos >= 0) & (neg >= 0))
    d_ap = batch.rows.pair_rows_distance(xk, valid, pos[valid], distance)
    d_an = batch.rows.pair_rows_distance(xk, valid, neg[valid], distance)
    z = margin + d_ap - d_an
    if not norm and batch.dtype == np.float32 and valid.size and float(
            np.max(batch.rows.row_dots(xk, xk))) > FLOAT32_MAX:
        # |x|² past float32's range: the float32 Gram products that chose the pairs
        # overflowed (the pair distances are nan there), so the choice is unknown
        z = np.full_like(z, np.nan)
    if soft:
        loss = np.logaddexp(0.0, z)
        slope = 0.5 * (1.0 + np.tanh(0.5 * z))         # sigmoid(z), overflow-free
    else:
        loss = np.maximum(z, 0.0)
        slope = np.where(z != z, np.nan, z > 0)     # nan in, nan out (gradient too)
    value: Any        # a float, or the (N,) per-anchor losses
    if reduction == "mean_nonzero":
        keep = loss > 0
        k = int(keep.sum())
        value, gain = (float(loss[keep].sum()) / k, 1.0 / k) if k else (0.0, 0.0)
        slope = slope * keep
    elif reduction == "none":
        value, gain = np.zeros(n), 1.0
        value[valid] = loss
    else:   # no valid anchor: 0 (pml's rule for a batch without triplets)
        value, gain = _reduce_rows(loss, reduction, empty_mean=0.0)
    value = batch.value(value)
    if not return_grad:
        return value
    coef = gain * slope
    pairs_i = np.concatenate([valid, valid])
    pairs_j = np.concatenate([pos[valid], neg[valid]])
    grad = batch.rows.pair_rows_grad(xk, pairs_i, pairs_j, np.concatenate([coef, -coef]),
                                     distance)
    return value, (batch.back(grad, xk, length) if norm else grad)


@overload
def info_nce_loss(query: ArrayLike, positive_key: ArrayLike, negative_keys: ArrayLike | None = ...,
                  *, temperature: float = ..., negative_mode: Literal["unpaired", "paired"] = ...,
                  reduction: Reduction = ..., return_grad: Literal[False] = ...,
                  backend: Backend = ...) -> Loss: ...
@overload
def info_nce_loss(query: ArrayLike, positive_key: ArrayLike, negative_keys: ArrayLike | None = ...,
                  *, temperature: float = ..., negative_mode: Literal["unpaired", "paired"] = ...,
                  reduction: Reduction = ..., return_grad: Literal[True],
                  backend: Backend = ...) -> LossAndGrads: ...
@overload
def info_nce_loss(query: ArrayLike, positive_key: ArrayLike, negative_keys: ArrayLike | None = ...,
                  *, temperature: float = ..., negative_mode: Literal["unpaired", "paired"] = ...,
                  reduction: Reduction = ..., return_grad: bool,
                  backend: Backend = ...) -> Loss | LossAndGrads: ...
@same_type_as_input
def info_nce_loss(query: ArrayLike, positive_key: ArrayLike,
                  negative_keys: ArrayLike | None = None, *, temperature: float = 0.1,
                  negative_mode: Literal["unpaired", "paired"] = "unpaired",
                  reduction: Reduction = "mean", return_grad: bool = False,
                  backend: Backend = None) -> Loss | LossAndGrads:
    """InfoNCE, as the info-nce-pytorch package's ``info_nce`` (van den Oord et
    al., 2018): cosine similarities over ``temperature``, then cross-entropy
    with the positive as the target.

    query, positive_key : (N, D).  negative_keys : None, (M, D) for
    ``negative_mode="unpaired"`` (shared by every query) or (N, M, D) for
    "paired" (each query its own).  Without negatives the other queries'
    positives are the negatives: logits q k^T (N x N), target the diagonal.
    Every input is normalized first (a zero row has cosine 0 with all).

    reduction : "mean" | "sum" | "none" ((N,))
    return_grad : bool
        Also return the gradients of the inputs given, in input order:
        (d/d query, d/d positive_key[, d/d negative_keys]).

    Example::

        >>> import numpy as np, fastloss as fl
        >>> q = np.array([[1, 0], [0, 1]], np.float32)
        >>> round(float(fl.info_nce_loss(q, q, temperature=1.0)), 4)
        0.3133
    """
    return_grad = _flags(reduction, return_grad)
    _check_choice(negative_mode, "negative_mode", ("unpaired", "paired"))
    temperature = _check_temperature(temperature)
    named = {"query": query, "positive_key": positive_key}
    ndims = {}
    if negative_keys is not None:
        named["negative_keys"] = negative_keys
        ndims = {"negative_keys": 3 if negative_mode == "paired" else 2}
    batch = _Batch(named, backend, ndims)
    q, k = batch.arrays["query"], batch.arrays["positive_key"]
    neg = batch.arrays.get("negative_keys")
    n = q.shape[0]
    if k.shape[0] != n:
        raise ValueError(f"positive_key: {k.shape[0]} rows (shape {k.shape}) for {n} queries; "
                         f"expected one positive per query")
    if neg is not None and negative_mode == "paired" and neg.shape[0] != n:
        raise ValueError(f"negative_keys: paired negatives need one set per query, shape "
                         f"({n}, M, D); got {neg.shape}")
    if batch.name == "numpy":
        return _from_reference(batch, reference.info_nce_loss(
            q, k, neg, temperature=temperature, negative_mode=negative_mode,
            reduction=reduction, return_grad=return_grad), return_grad)
    mod, rows, scale = batch.module, batch.rows, 1.0 / temperature
    qh, q_len = batch.normalized(q)
    kh, k_len = batch.normalized(k)
    if neg is not None and negative_mode == "paired":
        m, d = neg.shape[1], neg.shape[2]     # (explicit d: m may be 0)
        nh, n_len = batch.normalized(neg.reshape(n * m, d))
        gain = 1.0 / n if reduction == "mean" and n else 1.0
        losses, grads = mod.info_nce_paired(qh, kh, nh.reshape(n, m, d), scale, return_grad,
                                            gain)
        value = batch.value(_reduce_rows(losses, reduction)[0])
        if not return_grad:
            return value
        gq, gk, gn = grads
        gn = batch.back(gn.reshape(n * m, d), nh, n_len).reshape(neg.shape)
        return value, (batch.back(gq, qh, q_len), batch.back(gk, kh, k_len), gn)
    pos = scale * rows.row_dots(qh, kh)
    g = (1.0 / n if reduction == "mean" and n else 1.0) * scale
    if neg is None and return_grad:
        # in-batch, the diagonal of q k^T the positive:
        # dq_i = g (sum_j p_ij k_j - k_i),  dk_j = g (sum_i p_ij q_i - q_j)
        gq, gk = batch.empty(qh.shape), batch.empty(kh.shape)
        rows.scaled_copy(gq, kh, -g)
        rows.scaled_copy(gk, qh, -g)
        lse = _lse_and_product(mod, qh, kh, scale, False, g, gq)
        mod.pair_softmax_product(kh, qh, scale, None, lse, False, g, gk)
        value = batch.value(_reduce_rows(lse - pos, reduction)[0])
        return value, (batch.back(gq, qh, q_len), batch.back(gk, kh, k_len))
    if neg is None:
        return batch.value(_reduce_rows(mod.pair_lse(qh, kh, scale, False) - pos, reduction)[0])
    # the negatives are used as they are, with their inverse norms as column
    # scales: no normalized copy of the (M, D) matrix
    n_len = np.sqrt(rows.row_dots(neg, neg))
    inv = 1.0 / np.maximum(n_len, NORM_EPS)
    if not return_grad:
        lse_neg = mod.pair_lse(qh, neg, scale, False, col_scale=inv)
        return batch.value(_reduce_rows(np.logaddexp(lse_neg, pos) - pos, reduction)[0])
    # lse_i = logaddexp(lse over the negatives, pos_i), p_i = exp(pos_i - lse_i):
    # dq_i = g (sum_j p_ij n^_j + (p_i - 1) k_i) = g (1 - p_i) (F_i - k_i), F_i the
    # softmax over the negatives alone times n^;  dk_i = g (p_i - 1) q_i;
    # dn^_j = g sum_i p_ij q_i
    gq, gk = batch.empty(qh.shape), batch.empty(kh.shape)
    rows.scaled_copy(gq, kh, -1.0)
    lse_neg = _lse_and_product(mod, qh, neg, scale, False, 1.0, gq, col_scale=inv)
    lse = np.logaddexp(lse_neg, pos)
    value = batch.value(_reduce_rows(lse - pos, reduction)[0])
    c = g * (np.exp(pos - lse) - 1.0)
    rows.scaled_copy(gq, gq, -c)
    rows.scaled_copy(gk, qh, c)
    gn = batch.empty(neg.shape)
    rows.scaled_copy(gn, neg, 0.0)      # zeros, on the device
    mod.pair_softmax_product(neg, qh, scale, None, lse, False, g, gn, row_scale=inv)
    return value, (batch.back(gq, qh, q_len), batch.back(gk, kh, k_len),
                   batch.back(gn, neg, n_len, raw=True))


@overload
def nt_xent_loss(z1: ArrayLike, z2: ArrayLike, *, temperature: float = ...,
                 reduction: Reduction = ..., return_grad: Literal[False] = ...,
                 backend: Backend = ...) -> Loss: ...
@overload
def nt_xent_loss(z1: ArrayLike, z2: ArrayLike, *, temperature: float = ...,
                 reduction: Reduction = ..., return_grad: Literal[True],
                 backend: Backend = ...) -> LossAndGrads: ...
@overload
def nt_xent_loss(z1: ArrayLike, z2: ArrayLike, *, temperature: float = ...,
                 reduction: Reduction = ..., return_grad: bool,
                 backend: Backend = ...) -> Loss | LossAndGrads: ...
@same_type_as_input
def nt_xent_loss(z1: ArrayLike, z2: ArrayLike, *, temperature: float = 0.5,
                 reduction: Reduction = "mean", return_grad: bool = False,
                 backend: Backend = None) -> Loss | LossAndGrads:
    """NT-Xent, SimCLR's loss (Chen et al., 2020), over the 2N views
    Z = [z1; z2]: with s_ij = cos(z_i, z_j) / temperature, view i's positive is
    its pair (i + N mod 2N) and every other view is a negative:
    l_i = -log(exp(s_i,pos) / sum_{j != i} exp(s_ij)).  The same as
    pytorch-metric-learning's ``NTXentLoss`` with labels [0..N-1, 0..N-1].

    z1, z2 : (N, D), N >= 2.  reduction : "mean" (over the 2N views) | "sum"
    | "none" ((2N,), z1's views first).  return_grad : also return
    (d/d z1, d/d z2).

    Example::

        >>> import numpy as np, fastloss as fl
        >>> z = np.array([[1, 0], [0, 1]], np.float32)
        >>> round(float(fl.nt_xent_loss(z, z, temperature=1.0)), 4)
        0.5514
    """
    return_grad = _flags(reduction, return_grad)
    temperature = _check_temperature(temperature)
    batch = _Batch({"z1": z1, "z2": z2}, backend)
    a, b = batch.arrays["z1"], batch.arrays["z2"]
    if a.shape != b.shape:
        raise ValueError(f"z2: shape {b.shape} differs from z1's {a.shape}; the two views "
                         f"must pair up row by row")
    n = a.shape[0]
    _need_rows(n, "z1")
    if batch.name == "numpy":
        return _from_reference(batch, reference.nt_xent_loss(
            a, b, temperature=temperature, reduction=reduction, return_grad=return_grad),
            return_grad)
    mod, rows, scale = batch.module, batch.rows, 1.0 / temperature
    z = batch.empty((2 * n, a.shape[1]))
    _, len1 = rows.normalize_rows(a, NORM_EPS, out=z[:n])
    _, len2 = rows.normalize_rows(b, NORM_EPS, out=z[n:])
    pos = scale * rows.row_dots(z[:n], z[n:])
    if not return_grad:
        lse = mod.pair_lse(z, z, scale, True)
        return batch.value(_reduce_rows(lse - np.concatenate([pos, pos]), reduction)[0])
    # dL/dz_i = g (sum_j p_ij z_j + sum_j p_ji z_j - 2 z_pos(i)), g = gain / temperature
    g = (1.0 / (2 * n) if reduction == "mean" else 1.0) * scale
    grad = batch.empty(z.shape)
    rows.scaled_copy(grad[:n], z[n:], -2.0 * g)
    rows.scaled_copy(grad[n:], z[:n], -2.0 * g)
    lse = _lse_and_product(mod, z, z, scale, True, g, grad)
    mod.pair_softmax_product(z, z, scale, None, lse, True, g, grad)
    value = batch.value(_reduce_rows(lse - np.concatenate([pos, pos]), reduction)[0])
    # in place: the two halves of one buffer are the two gradients
    return value, (batch.back(grad[:n], z[:n], len1), batch.back(grad[n:], z[n:], len2))
