"""Kernel backends.  Each module exposes ``unavailable_reason()`` (None when it
can run here) and one entry point per loop shape, e.g.
``elementwise(call) -> (value, out, grad)``.  Modules are imported lazily by
:mod:`fastloss._dispatch`."""
from __future__ import annotations

import os
import sys
import threading
from dataclasses import dataclass
from typing import Any, Callable

import numpy as np


#: held while any kernel is built (one lock for every BuildOnce: builds are rare)
_BUILD_LOCK = threading.RLock()


class BuildOnce:
    """Kernels compiled lazily, once: ``get(key, build)`` runs ``build()`` the
    first time ``key`` is asked for (under a re-entrant lock, so a build may
    ask for another key); later lookups take no lock."""

    def __init__(self):
        self._items: dict = {}

    def get(self, key, build: Callable[[], Any]):
        item = self._items.get(key)
        if item is None:
            with _BUILD_LOCK:
                item = self._items.get(key)
                if item is None:
                    item = self._items[key] = build()
        return item


def _compile_locks() -> list:
    """The locks a compile holds: fastloss's build lock, then Numba's compiler
    lock (in the order a build takes them), if Numba is loaded."""
    locks = [_BUILD_LOCK]
    numba_lock = getattr(sys.modules.get("numba.core.compiler_lock"), "global_compiler_lock",
                         None)     # (None too while Numba is being imported)
    if numba_lock is not None:
        locks.append(numba_lock._lock)
    return locks


_held_across_fork: list = []


def _before_fork() -> None:
    # fork waits for a compile in another thread to finish: a child forked in the
    # middle of one would inherit its locks held by a thread it does not have, and
    # hang on its first compile
    for lock in _compile_locks():
        lock.acquire()
        _held_across_fork.append(lock)


def _after_fork() -> None:
    while _held_across_fork:
        _held_across_fork.pop().release()


os.register_at_fork(before=_before_fork, after_in_parent=_after_fork,
                    after_in_child=_after_fork)


def compile_into(namespace: dict, groups) -> dict:
    """Plain-Python kernel math compiled for one Numba target: for each
    ``(functions, jit)`` group in order, every function rebound to
    ``namespace`` (its globals: the compiled versions, so the functions call
    each other compiled) and compiled with ``jit``.  Returns {name: compiled}."""
    import types
    out = {}
    for functions, jit in groups:
        for fn in functions:
            compiled = jit(types.FunctionType(fn.__code__, namespace, fn.__name__,
                                              fn.__defaults__))
            namespace[fn.__name__] = out[fn.__name__] = compiled
    return out


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


#: ignore_index of the losses that have none (csrc's FL_NO_IGNORE): the label
#: scans check a label equal to it like any other, since int64 labels can hold it
NO_IGNORE = -(2 ** 63)

#: label dtypes every row-wise kernel reads as they are; the loss layer
#: converts host labels of other integer dtypes to int64, once per call
LABEL_DTYPES = ("int32", "int64", "uint8")


def labels_as_int64(labels):
    """Host labels of another integer dtype as an int64 copy.  uint64 values past
    int64's range become int64's max instead of wrapping to negatives (2**64 - 100
    would read as ignore_index=-100): still out of range, so the label check
    reports them with their original value."""
    if labels.dtype == np.uint64:
        labels = np.minimum(labels, np.iinfo(np.int64).max)
    return labels.astype(np.int64)


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

    loss: str                 # a multi-class record's kernel (fastloss._registry)
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
    # With check_labels (index targets), the backend checks the labels itself
    # before it writes anything: the first row with a label outside [0, C) that
    # is not ignore_index goes to ``bad`` and the call returns (None, None, None).
    # mean_by then divides both scales by the labels' weight sum (MEAN_BY_WEIGHT)
    # or their count (MEAN_BY_COUNT), 0 giving nan (PyTorch's 0/0).
    check_labels: bool = False
    mean_by: int = 0
    bad: int = -1             # result of the check


#: RowwiseCall.mean_by: divide by nothing more, by sum(weight[label]), by the labels' count
MEAN_BY_NONE, MEAN_BY_WEIGHT, MEAN_BY_COUNT = 0, 1, 2


def elementwise_launcher(module, call: ElementwiseCall, dtype) -> Callable:
    """``launch(input, target, weight, param, n) -> (value, out, grad)`` for calls
    like ``call`` (its arrays aside, but for which of weight and param are given)
    on ``module``, given host arrays of n elements in any layout (read flat, in C
    order; strided ones are copied) or contiguous device arrays: the
    module's own ``elementwise_launcher`` where it has one (the C backend
    prepares its argument struct once), else a call of its ``elementwise`` on a
    copy of ``call``."""
    prepare = getattr(module, "elementwise_launcher", None)
    if prepare is not None:
        return prepare(call, dtype)

    c = call

    def launch(x, target, weight, param, n):
        return module.elementwise(ElementwiseCall(
            c.loss, x.reshape(-1), target.reshape(-1),
            None if weight is None else weight.reshape(-1),
            None if param is None else param.reshape(-1), c.p0, c.p1, c.want_out, c.want_grad,
            c.grad_scale, c.total_scale))
    return launch


def rowwise_launcher(module, call: RowwiseCall, dtype) -> Callable:
    """``launch(input, target, weight, alpha) -> (value, out, grad, bad)`` for calls
    like ``call`` (its arrays aside) on ``module``, given host arrays in any layout
    (read flat, in C order; strided ones are copied) or contiguous device arrays:
    the module's own
    ``rowwise_launcher`` where it has one (the C backend prepares its argument
    struct once), else a call of its ``rowwise`` on a copy of ``call``."""
    prepare = getattr(module, "rowwise_launcher", None)
    if prepare is not None:
        return prepare(call, dtype)

    c = call

    def launch(x, target, weight, alpha):
        one = RowwiseCall(c.loss, x.reshape(-1), target.reshape(-1), c.n, c.classes, c.inner,
                          weight, alpha, c.ignore_index, c.smoothing, c.z_loss, c.p0, c.p1,
                          c.want_out, c.want_grad, c.grad_scale, c.total_scale,
                          c.check_labels, c.mean_by)
        value, out, grad = module.rowwise(one)
        return value, out, grad, one.bad
    return launch


def labels_checked_first(call: RowwiseCall, scan_labels: Callable) -> bool:
    """RowwiseCall.check_labels and mean_by for a backend whose row kernel does not
    check labels itself: its ``scan_labels`` runs first.  False when a label is bad
    (``call.bad`` says where): the caller then runs nothing."""
    weight_sum = count = call.n * call.inner
    if call.check_labels and call.loss != "cross_entropy_prob":
        call.bad, weight_sum, count = scan_labels(call.target, call.classes,
                                                  call.ignore_index, call.weight)
        if call.bad >= 0:
            return False
    if call.mean_by != MEAN_BY_NONE:
        divisor = weight_sum if call.mean_by == MEAN_BY_WEIGHT else count
        scale = 1.0 / divisor if divisor != 0 else float("nan")
        call.grad_scale *= scale
        call.total_scale *= scale
    return True



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
    activation: str           # "none", "softmax" or "sigmoid"
    squared: bool
    ignore_index: int         # labels only; -2**63: none
    label_base: int           # 0, or 1 when C == 1
    want_grad: bool



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

    loss: str                 # a box record's kernel (fastloss._registry)
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


#: the pairwise kernels every backend module has (see PAIRWISE)
PAIR_KERNELS = ("pair_matrix", "pair_lse", "pair_softmax_product", "pair_contrastive_stats",
                "pair_contrastive_grad", "pair_hardest", "triplet_rows", "info_nce_paired")
#: the row glue of the loss layer: numpy on the host, numba_cuda's own on the GPU
PAIR_ROW_GLUE = ("normalize_rows", "normalize_rows_backward", "row_dots", "scaled_copy",
                 "pair_rows_distance", "pair_rows_grad")

PAIRWISE = """
The pairwise (representation-learning) kernels.  Every backend module (native,
numba_cpu, numba_cuda) has the functions below.  Arrays are C-contiguous, of
one float dtype (float32 or float64) on the backend's device; embeddings are
(rows, D) with D >= 1.  ``b is a`` (the same object) means one set of rows
against itself.  None of them writes its inputs, and none ever holds an
(Na, Nb) matrix (but pair_matrix's output): tiles of the Gram matrix
G = a b^T are computed, used and dropped, the gradient kernels compute them
again.  Per-row results depend on the shape only, never on the thread count
or scheduling (fixed tiles, each row's tiles in column order, float64 sums).

Per pair, from g = a_i . b_j (computed in the dtype, like a GEMM) and the
float64 squared norms |a_i|^2, |b_j|^2:
  metric "sqeuclidean": d = max(|a_i|^2 + |b_j|^2 - 2 g, 0)
  metric "euclidean":   d = sqrt(that)
  metric "cosine":      d = 1 - g   (the caller has already normalized the rows)
with ``b is a`` and i == j, d = 0 exactly.

pair_matrix(a, b, metric) -> (Na, Nb) array of d, in the dtype.

pair_lse(a, b, scale, exclude_diag, row_scale=None, col_scale=None) -> float64 (Na,):
  lse_i = log sum_j exp(scale * g_ij), over j != i when exclude_diag (only
  with b is a).  Online: per row a running max and float64 sum over tiles.
  row_scale (Na,) / col_scale (Nb,): float64 or None (1); where given, g_ij
  is taken as g_ij row_scale_i col_scale_j (the factor scale rs_i cs_j in
  float64, then the dtype, times g): inverse norms instead of normalized
  copies.  The same in pair_softmax_product.

pair_softmax_product(a, b, scale, row_shift, col_shift, exclude_diag, gain, out,
                     row_scale=None, col_scale=None)
  -> None, adds into out (Na, D) of the dtype:
  out_i += gain * sum_j exp(scale * g_ij - row_shift_i - col_shift_j) * b_j
  (j != i when exclude_diag).  row_shift (Na,) / col_shift (Nb,) are float64
  arrays or None (zero).  The sum over j is accumulated in float64 (tile
  products in the dtype, added to a float64 row accumulator), then added to
  out.  With row_shift = lse from pair_lse this is softmax(S) b; with
  a and b swapped and col_shift = lse it is softmax(S)^T a.

pair_lse_product(a, b, scale, exclude_diag, gain, out, col_scale=None, col_weight=None)
  -> lse (optional: only the C backend has it; the loss layer composes the two
  calls above elsewhere): pair_lse and pair_softmax_product with row_shift =
  lse in one pass (an online softmax: the running sums of a row are rescaled
  when its max grows); the product's b_j is weighted by col_weight_j.

pair_contrastive_stats(x, labels, metric, pos_margin, neg_margin) -> float64 (N, 4):
  labels int64 (N,).  Row i over j != i, with d = d(x_i, x_j):
  [sum over y_j == y_i of relu(d - pos_margin), count of those terms > 0,
   sum over y_j != y_i of relu(neg_margin - d), count of those terms > 0].

pair_contrastive_grad(x, labels, metric, pos_margin, neg_margin, cpos, cneg)
  -> (N, D) array of the dtype: the gradient of
  L = cpos * sum_{i != j, y_i == y_j} relu(d_ij - pos_margin)
    + cneg * sum_{i != j, y_i != y_j} relu(neg_margin - d_ij)
  over ordered pairs, so  dL/dx_i = 2 sum_{j != i} c_ij * dd_ij/dx_i  with
  c_ij = cpos [y_j == y_i and d_ij > pos_margin] - cneg [y_j != y_i and d_ij < neg_margin];
  dd/dx_i = (x_i - x_j) / d ("euclidean"; 0 where d == 0), 2 (x_i - x_j)
  ("sqeuclidean"), -x_j ("cosine").  As W_ij = 2 c_ij phi_ij:
  grad_i = x_i sum_j W_ij - sum_j W_ij x_j (phi = 1/d or 2), or
  -sum_j 2 c_ij x_j (cosine): one Gram tile and one tile product per tile.

pair_hardest(x, labels, metric) -> (pos, neg), int64 (N,) each:
  pos_i = argmax over j != i with y_j == y_i of d_ij, neg_i = argmin over
  y_j != y_i of d_ij; the smallest j among ties; -1 where there is no such j.

Row kernels (no pairs; O(N D)):

triplet_rows(anchor, positive, negative, margin, p, eps, swap, want_grad, gain)
  -> (loss float64 (N,), grads (ga, gp, gn) of the dtype or None):
  torch.nn.functional.triplet_margin_loss per row: with
  dist(u, v) = ||u - v + eps||_p (torch's pairwise_distance: eps added to
  the difference, p > 0), d_ap = dist(a, p), d_an = dist(a, n), with swap
  d_an = min(d_an, dist(p, n)) (at a tie half the gradient to each, as
  torch.min); loss = max(margin + d_ap - d_an, 0); grads = gain * d loss /
  d (a, p, n) per row (0 where margin + d_ap - d_an < 0; at exactly 0 the
  gradient passes, as torch's clamp_min; the p-norm's gradient
  sign(v)|v|^(p-1) / ||v||^(p-1), 0 at v = 0).

info_nce_paired(q, k, neg, scale, want_grad, gain)
  -> (loss float64 (N,), grads (gq, gk, gneg) or None): q, k (N, D), neg
  (N, M, D), rows already normalized.  Logits z_0 = scale q_i . k_i,
  z_m = scale q_i . neg_im; loss_i = logsumexp(z) - z_0; grads = gain * d
  loss_i / d inputs.

Row glue for the loss layer, on the backend's device (the host backends share
numpy versions in fastloss.losses.pairwise, where a backend module does not
have its own: native has compiled ones of all but pair_rows_distance,
numba_cuda has all):
  normalize_rows(x, eps, out=None) -> (xhat, norm float64 (N,)):
      xhat = x / max(||x||, eps) in the dtype (torch.nn.functional.normalize;
      a zero row stays zero), written into ``out`` (N, D) when given (a view
      of a larger array) and returned
  normalize_rows_backward(g, xhat, norm, eps, out=None, raw=False) -> dx:
      (g - xhat (xhat . g)) / norm where norm >= eps, else g / eps, into out
      (may be g itself) or a new array; raw: the second argument is x itself
      (xhat = x / max(norm, eps) on the fly)
  row_dots(a, b) -> float64 (N,): sum_d a_id b_id, accumulated in float64
  scaled_copy(out, a, coef) -> None: out = coef * a per row, coef a float or
      a float64 (N,) array, computed in float64, stored in the dtype
  pair_rows_distance(x, i, j, metric) -> float64 (K,): d(x_i[k], x_j[k])
      computed directly from the rows in float64 (||x_i - x_j||, its square,
      or 1 - x_i . x_j), for int64 index arrays i, j (K,)
  pair_rows_grad(x, i, j, coef, metric) -> (N, D) array of the dtype: the
      gradient of sum_k coef_k d(x_i[k], x_j[k]) with respect to every row of
      x (both ends of each pair; 0 for the euclidean distance at d = 0),
      accumulated deterministically in float64

Results of one float64 value per row (lse, stats, indices, losses) are host
numpy arrays on every backend, and float64 inputs of that kind (row_shift,
col_shift, coef, index arrays) are host numpy arrays too: the CUDA backend
copies these O(N) vectors; every (N, D) array stays on the device.
"""
