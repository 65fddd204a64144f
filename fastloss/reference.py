"""The NumPy oracle: every loss and its gradient in plain vectorised NumPy.

Everything here computes in float64 with textbook-stable formulas and is
written independently of the kernels (no shared scalar code), so that the
tests compare two separate derivations.  Functions take the same arguments
as the public API (minus ``backend``) and return float64 results:
``reduction="none"`` an array of the input's shape, otherwise a 0-d float64;
``return_grad=True`` returns ``(loss, grad)`` with ``grad`` = d(loss)/d(input)
(for ``"none"``, the gradient of the sum).

Validation is the public API's job; these functions assume valid input.
"""
from __future__ import annotations

import numpy as np

__all__ = [
    "mse_loss", "l1_loss", "huber_loss", "smooth_l1_loss", "log_cosh_loss",
    "quantile_loss", "binary_cross_entropy", "binary_cross_entropy_with_logits",
    "sigmoid_focal_loss", "hinge_loss",
]

LOG2 = np.log(2.0)


def _f64(a):
    return None if a is None else np.asarray(a, dtype=np.float64)


def _reduce(values, grad, weight, reduction, return_grad, mean_by_weight_sum=False):
    """Apply weight and reduction to per-element values and derivatives."""
    shape = values.shape
    if weight is not None:
        weight = np.broadcast_to(weight, shape)
        values = values * weight
        grad = grad * weight
    if reduction == "none":
        out = values
    elif reduction == "sum":
        out = np.float64(values.sum())
    else:  # mean
        if weight is not None and mean_by_weight_sum:
            denom = weight.sum()
        else:
            denom = values.size
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.float64(values.sum()) / np.float64(denom)
            grad = grad / np.float64(denom)
    return (out, grad) if return_grad else out


def _softplus(z):
    """log(1 + exp(z)) without overflow."""
    return np.maximum(z, 0.0) + np.log1p(np.exp(-np.abs(z)))


def _sigmoid(z):
    """1 / (1 + exp(-z)) without overflow, accurate for both tails."""
    e = np.exp(-np.abs(z))
    return np.where(z >= 0, 1.0 / (1.0 + e), e / (1.0 + e))


def mse_loss(input, target, *, weight=None, reduction="mean", return_grad=False):
    x, y = _f64(input), _f64(target)
    d = x - y
    return _reduce(d * d, 2.0 * d, _f64(weight), reduction, return_grad, mean_by_weight_sum=True)


def l1_loss(input, target, *, weight=None, reduction="mean", return_grad=False):
    x, y = _f64(input), _f64(target)
    d = x - y
    return _reduce(np.abs(d), np.sign(d), _f64(weight), reduction, return_grad,
                   mean_by_weight_sum=True)


def huber_loss(input, target, *, weight=None, delta=1.0, reduction="mean", return_grad=False):
    x, y = _f64(input), _f64(target)
    d = x - y
    a = np.abs(d)
    quad = a < delta
    values = np.where(quad, 0.5 * d * d, delta * (a - 0.5 * delta))
    grad = np.where(quad, d, delta * np.sign(d))
    return _reduce(values, grad, _f64(weight), reduction, return_grad)


def smooth_l1_loss(input, target, *, weight=None, beta=1.0, reduction="mean", return_grad=False):
    x, y = _f64(input), _f64(target)
    d = x - y
    a = np.abs(d)
    if beta == 0.0:
        values, grad = a, np.sign(d)
    else:
        quad = a < beta
        values = np.where(quad, 0.5 * d * d / beta, a - 0.5 * beta)
        grad = np.where(quad, d / beta, np.sign(d))
    return _reduce(values, grad, _f64(weight), reduction, return_grad)


def log_cosh_loss(input, target, *, weight=None, reduction="mean", return_grad=False):
    x, y = _f64(input), _f64(target)
    a = np.abs(x - y)
    # log cosh a = log1p(cosh a - 1) with cosh a - 1 = e^2 / (2 (1 + e)), e = expm1(a):
    # exact relative accuracy for small a.  For large a, a + log1p(exp(-2a)) - log 2.
    with np.errstate(over="ignore", invalid="ignore"):
        e = np.expm1(np.minimum(a, 1.0))
        small = np.log1p(e * e / (2.0 * (1.0 + e)))
    large = a + np.log1p(np.exp(-2.0 * a)) - LOG2
    values = np.where(a < 1.0, small, large)
    return _reduce(values, np.tanh(x - y), _f64(weight), reduction, return_grad)


def quantile_loss(input, target, *, weight=None, q=0.5, reduction="mean", return_grad=False):
    x, y = _f64(input), _f64(target)
    q = _f64(q)
    x, y, q = np.broadcast_arrays(x, y, q)
    r = y - x
    values = np.maximum(q * r, (q - 1.0) * r)
    grad = np.where(x > y, 1.0 - q, -q)
    grad = np.where(np.isnan(r), np.nan, grad)
    return _reduce(values, grad, _f64(weight), reduction, return_grad)


def binary_cross_entropy(input, target, *, weight=None, reduction="mean", return_grad=False):
    x, y = _f64(input), _f64(target)
    with np.errstate(divide="ignore"):
        log_x = np.maximum(np.log(x), -100.0)
        log_1mx = np.maximum(np.log1p(-x), -100.0)
    values = -(y * log_x + (1.0 - y) * log_1mx)
    grad = (x - y) / np.maximum(x * (1.0 - x), 1e-12)   # PyTorch's backward, clamp included
    return _reduce(values, grad, _f64(weight), reduction, return_grad)


def binary_cross_entropy_with_logits(input, target, *, weight=None, pos_weight=None,
                                     reduction="mean", return_grad=False):
    x, y = _f64(input), _f64(target)
    pw = 1.0 if pos_weight is None else _f64(pos_weight)
    log_weight = 1.0 + (pw - 1.0) * y
    values = (1.0 - y) * x + log_weight * _softplus(-x)
    # = (1 - y) - log_weight sigmoid(-x), without its cancellation at confident logits
    grad = (1.0 - y) * _sigmoid(x) - pw * y * _sigmoid(-x)
    values, grad = np.broadcast_arrays(values, grad)
    return _reduce(values, grad, _f64(weight), reduction, return_grad)


def sigmoid_focal_loss(input, target, *, weight=None, alpha=0.25, gamma=2.0,
                       reduction="mean", return_grad=False):
    """torchvision's sigmoid_focal_loss, in log space (finite for saturated logits)."""
    x, y = _f64(input), _f64(target)
    log_p = -_softplus(-x)          # log sigmoid(x)
    log_q = -_softplus(x)           # log sigmoid(-x) = log(1 - p)
    ce = -(y * log_p + (1.0 - y) * log_q)
    # m = 1 - p_t = p (1 - y) + (1 - p) y, as a log-sum-exp of its two terms
    with np.errstate(divide="ignore"):
        log_m = np.logaddexp(log_q + np.log(y), log_p + np.log1p(-y))
    modulator = np.exp(gamma * log_m)
    values = ce * modulator
    # d m / dx = p (1 - p) (1 - 2y); d(m^gamma)/dx = gamma m^(gamma-1) p (1-p) (1-2y)
    with np.errstate(invalid="ignore"):
        dmod = gamma * np.exp((gamma - 1.0) * log_m + log_p + log_q) * (1.0 - 2.0 * y)
    dmod = np.where(gamma == 0.0, 0.0, dmod)
    grad = (_sigmoid(x) - y) * modulator + ce * dmod
    if alpha >= 0:
        alpha_t = alpha * y + (1.0 - alpha) * (1.0 - y)
        values = alpha_t * values
        grad = alpha_t * grad
    return _reduce(values, grad, _f64(weight), reduction, return_grad)


def hinge_loss(input, target, *, weight=None, margin=1.0, squared=False, reduction="mean",
               return_grad=False):
    x, y = _f64(input), _f64(target)
    z = margin - y * x
    active = z > 0
    if squared:
        values = np.where(active, z * z, 0.0)
        grad = np.where(active, -2.0 * y * z, 0.0)
    else:
        values = np.maximum(z, 0.0)
        grad = np.where(active, -y, 0.0)
    nan = np.isnan(z)
    grad = np.where(nan, np.nan, grad)
    values = np.where(nan, np.nan, values)
    return _reduce(values, grad, _f64(weight), reduction, return_grad)


# ---------------------------------------------------------------------------
# Multi-class (row-wise) losses.
#
# Shapes follow PyTorch: input (N, C), (N, C, d1, ..., dk) with the class axis 1, or (C,)
# with a 0-d target.  Internally the class axis is moved last, so every function works on
# an array of rows (..., C); ``reduction="none"`` returns the target's shape (the input's
# shape without the class axis, 0-d for a (C,) input) and the gradient has the input's
# shape.  Everything is materialised in full (one-hot matrices, the whole log-softmax):
# this is the readable derivation, not the fast one.
# ---------------------------------------------------------------------------

__all__ += [
    "cross_entropy", "nll_loss", "softmax_focal_loss", "multi_margin_loss",
    "multiclass_hinge_loss",
]


def _class_last(a):
    """(N, C, d...) -> (N, d..., C); a (C,) vector -> (1, C)."""
    a = np.asarray(a)
    return a[None, :] if a.ndim == 1 else np.moveaxis(a, 1, -1)


def _labels_last(target, input_ndim):
    """Index targets to the rows' shape: a 0-d target of a (C,) input -> (1,)."""
    y = np.asarray(target)
    return y[None] if input_ndim == 1 else y


def _class_back(grad, input_ndim):
    return grad[0] if input_ndim == 1 else np.moveaxis(grad, -1, 1)


def _log_softmax(x):
    """log-softmax over the last axis and the log-sum-exp, shifted by the row max."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    log_s = np.log(np.sum(np.exp(x - m), axis=-1, keepdims=True))
    # (x - m) - log s, not x - (m + log s): at m = 1e30 the latter loses log s
    return (x - m) - log_s, (m + log_s)[..., 0]


def _softmax(x):
    """softmax over the last axis as normalised shifted exps: exp(log-softmax) loses
    the log 2 of two logits of 1e30 (1e30 + log 2 rounds to 1e30) and gives 1 each."""
    m = np.max(x, axis=-1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    return e / np.sum(e, axis=-1, keepdims=True)


def _labels(y, classes, ignore_index=None):
    """(valid mask, labels with ignored ones replaced by 0, one-hot (..., C) of the valid ones)."""
    valid = np.ones(y.shape, dtype=bool) if ignore_index is None else (y != ignore_index)
    safe = np.where(valid, y, 0).astype(np.intp)
    onehot = _onehot(safe, classes) * valid[..., None]
    return valid, safe, onehot


def _onehot(labels, classes):
    """(..., C) one-hot of integer labels (no (C, C) identity: C may be 50k)."""
    out = np.zeros(labels.shape + (classes,), dtype=np.float64)
    np.put_along_axis(out, labels[..., None], 1.0, axis=-1)
    return out


def _rows_and_weights(input, weight):
    """(input in float64, its ndim, its rows (..., C) with the class axis last,
    C, the class weights or ones): the opening of every multi-class loss."""
    x_in = _f64(input)
    x = _class_last(x_in)
    C = x.shape[-1]
    w = np.ones(C) if weight is None else _f64(weight)
    return x_in, x_in.ndim, x, C, w


def _reduce_rows(values, grad, reduction, denom, valid, input_ndim, return_grad):
    """Reduce per-row values; ``grad`` is d(sum of values)/d(rows), shaped (..., C).

    ``mean`` divides by ``denom``.  When that is 0 the mean is nan -- also when label
    smoothing or the z-loss make the numerator nonzero (torch: (1-eps) * (0/0) + ... = nan);
    its gradient is 0 on ignored rows (nothing flows there) and nan on the rows that do
    count, which is what PyTorch's cross_entropy gives for a zero weight sum.  With every
    row ignored the gradient is therefore all zeros.
    """
    if reduction == "none":
        out = values[0] if input_ndim == 1 else values
    elif reduction == "sum":
        out = np.float64(values.sum())
    else:  # mean
        denom = np.float64(denom)
        if denom == 0:
            out = np.float64(np.nan)
            grad = np.where(valid[..., None], np.nan, np.zeros_like(grad))
        else:
            out = np.float64(values.sum()) / denom
            grad = grad / denom
    if not return_grad:
        return out
    return out, _class_back(grad, input_ndim)


def _weighted_soft_ce(logits, q, zmask, z_loss):
    """Rows of  -sum_c q_c log softmax(x)_c + z * zmask * lse^2  and their gradient.

    With Q = sum_c q_c, the first term is Q*lse - sum_c q_c x_c, so its gradient is
    Q*softmax(x) - q; the z-term adds 2 z lse softmax(x).
    """
    logp, lse = _log_softmax(logits)
    p = _softmax(logits)
    zl = z_loss * zmask
    values = -np.sum(q * logp, axis=-1) + zl * lse * lse
    grad = (np.sum(q, axis=-1) + 2.0 * zl * lse)[..., None] * p - q
    return values, grad


def cross_entropy(input, target, *, weight=None, ignore_index=-100, label_smoothing=0.0,
                  z_loss=0.0, reduction="mean", return_grad=False):
    """torch.nn.functional.cross_entropy (2.13), plus an optional z-loss z * lse^2 per row.

    Both target kinds are a class-weight vector ``q`` per row, loss_row = -sum_c q_c log p_c:
      index y:        q = (1 - eps) w_y onehot(y) + (eps / C) w   (0 on ignored rows);
                      mean divides by sum of w_y over the rows not ignored;
      probabilities:  q = w * ((1 - eps) t + eps / C);  mean divides by the number of rows.
    The z-loss is unweighted, skipped on ignored rows and shares the CE term's denominator.
    """
    x_in, ndim, x, C, w = _rows_and_weights(input, weight)
    eps = float(label_smoothing)
    t = np.asarray(target)
    if t.shape == x_in.shape:                                   # class probabilities
        t = _class_last(_f64(t))
        q = w * ((1.0 - eps) * t + eps / C)
        valid = np.ones(x.shape[:-1], dtype=bool)
        denom = valid.size
    else:                                                       # class indices
        valid, safe, onehot = _labels(_labels_last(t, ndim), C, ignore_index)
        w_y = w[safe] * valid
        q = (1.0 - eps) * w_y[..., None] * onehot + (eps / C) * w * valid[..., None]
        denom = w_y.sum()
    values, grad = _weighted_soft_ce(x, q, valid.astype(np.float64), float(z_loss))
    return _reduce_rows(values, grad, reduction, denom, valid, ndim, return_grad)


def nll_loss(input, target, *, weight=None, ignore_index=-100, reduction="mean",
             return_grad=False):
    """torch.nn.functional.nll_loss: loss_row = -w_y * input[y] on log-probabilities."""
    _, ndim, x, C, w = _rows_and_weights(input, weight)
    valid, safe, onehot = _labels(_labels_last(target, ndim), C, ignore_index)
    w_y = w[safe] * valid
    picked = np.take_along_axis(x, safe[..., None], axis=-1)[..., 0]
    values = np.where(valid, -w_y * picked, 0.0)
    if reduction == "mean":
        # written out: the gradient of sum(-w_y x_y) / sum(w_y) is -w_y / sum(w_y) at the
        # target entries only (a zero weight sum makes just those entries nan, as in torch)
        denom = np.float64(w_y.sum())
        with np.errstate(divide="ignore", invalid="ignore"):
            out = np.float64(values.sum()) / denom
            grad = np.where(onehot > 0, (-w_y / denom)[..., None], 0.0)
        return (out, _class_back(grad, ndim)) if return_grad else out
    grad = -w_y[..., None] * onehot
    return _reduce_rows(values, grad, reduction, None, valid, ndim, return_grad)


def softmax_focal_loss(input, target, *, alpha=None, gamma=2.0, weight=None,
                       ignore_index=-100, reduction="mean", return_grad=False):
    """Multi-class focal loss on logits: loss_row = -a (1 - p_y)^gamma log p_y, a = alpha_y w_y.

    alpha: None (1), a scalar, or a (C,) array indexed by the label.  ``mean`` divides by
    the number of rows not ignored.  In log space: L = log p_y = x_y - lse, u = 1 - p_y =
    -expm1(L).  With dL/dx = onehot - p and du/dx = -p_y dL/dx,
        d(-u^g L)/dx = -(u^g - g p_y u^(g-1) L) dL/dx = u^g (1 + g p_y rho) (p - onehot),
    rho = -L/u = -log(1 - u)/u, which tends to 1 as u -> 0 (a saturated correct logit),
    so the gradient stays finite there for every gamma >= 0 (and is 0 there for gamma > 0).
    """
    _, ndim, x, C, w = _rows_and_weights(input, weight)
    valid, safe, onehot = _labels(_labels_last(target, ndim), C, ignore_index)
    if alpha is None:
        alpha_y = np.ones(safe.shape)
    else:
        alpha = _f64(alpha)
        alpha_y = alpha[safe] if alpha.ndim == 1 else np.broadcast_to(alpha, safe.shape)
    a = alpha_y * w[safe] * valid

    logp, _ = _log_softmax(x)
    p = _softmax(x)
    L = np.take_along_axis(logp, safe[..., None], axis=-1)[..., 0]
    u = -np.expm1(L)
    g = float(gamma)
    mod = u ** g                          # 0 ** 0 == 1
    values = np.where(valid, -a * mod * L, 0.0)
    with np.errstate(divide="ignore", invalid="ignore"):
        rho = np.where(u > 0, -L / u, 1.0)
    factor = a * mod * (1.0 + g * np.exp(L) * rho)
    grad = factor[..., None] * (p - onehot)
    grad = np.where(valid[..., None], grad, 0.0)
    return _reduce_rows(values, grad, reduction, valid.sum(), valid, ndim, return_grad)


def multi_margin_loss(input, target, *, p=1, margin=1.0, weight=None, reduction="mean",
                      return_grad=False):
    """torch.nn.functional.multi_margin_loss: sum_{c != y} w_y max(0, margin - x_y + x_c)^p / C.

    ``mean`` divides by the number of rows (not by weights).  Subgradient 0 at a hinge of
    exactly 0.
    """
    _, ndim, x, C, w = _rows_and_weights(input, weight)
    valid, safe, onehot = _labels(_labels_last(target, ndim), C)
    x_y = np.take_along_axis(x, safe[..., None], axis=-1)
    z = margin - x_y + x                                   # (..., C); z_y = margin, masked
    active = (z > 0) & (onehot == 0)
    h = np.where(active, z if p == 1 else z * z, 0.0)
    dh = np.where(active, 1.0 if p == 1 else 2.0 * z, 0.0)  # d h_c / d x_c  (= -d h_c / d x_y)
    w_y = w[safe][..., None]
    values = np.sum(w_y * h, axis=-1) / C
    dc = w_y * dh / C
    grad = dc - onehot * np.sum(dc, axis=-1, keepdims=True)
    return _reduce_rows(values, grad, reduction, values.size, valid, ndim, return_grad)


def multiclass_hinge_loss(input, target, *, margin=1.0, reduction="mean", return_grad=False):
    """Crammer-Singer hinge: max(0, margin + max_{c != y} x_c - x_y); 0 when C = 1.

    The (sub)gradient where the loss is > 0 is +1 at the first c != y attaining the max and
    -1 at y; 0 elsewhere and where the loss is 0.  ``mean`` divides by the number of rows.
    """
    _, ndim, x, C, _ = _rows_and_weights(input, None)
    valid, safe, onehot = _labels(_labels_last(target, ndim), C)
    others = np.where(onehot > 0, -np.inf, x)
    k = np.argmax(others, axis=-1)                         # first index of the max
    m = np.take_along_axis(others, k[..., None], axis=-1)[..., 0]
    x_y = np.take_along_axis(x, safe[..., None], axis=-1)[..., 0]
    with np.errstate(invalid="ignore"):
        h = margin + m - x_y
    active = h > 0
    values = np.where(active, h, 0.0)
    grad = (_onehot(k, C) - onehot) * active[..., None]
    # nan in, nan out (value and row gradient), also for inf - inf (an inf target
    # logit against an inf other)
    nan_row = np.isnan(x).any(axis=-1) | np.isnan(h)
    values = np.where(nan_row, np.nan, values)
    grad = np.where(nan_row[..., None], np.nan, grad)
    return _reduce_rows(values, grad, reduction, values.size, valid, ndim, return_grad)


# ---- overlap (Dice family) ----
#
# MONAI 1.6.1's DiceLoss (also with jaccard=True), TverskyLoss and GeneralizedDiceLoss, with
# to_onehot_y for index targets.  input (N, C, *spatial); target either class indices of
# shape (N, *spatial) ((N, 1, *spatial) also when C > 1) or a mask of the input's shape.
# Everything is materialised in full: the activated input p, the one-hot / mask t and the
# valid-voxel mask m, all (N, C, *spatial) float64 ((N, 1, *spatial) for m); then per scored
# entry (n, c) -- or per c with batch=True -- the sums
#     I = sum m p t,   P = sum m p^q,   T = sum m t^q      (q = 2 with squared_pred, else 1)
# Each loss is a function f(I, P, T) of an entry; the gradient of the reduced loss is
#     dL/dp = m (dL/dI t + dL/dP q p^(q-1))   on the scored channels, 0 on a dropped background,
# pulled back through the activation (softmax: p (g - sum_k p_k g_k); sigmoid: p (1 - p) g).

__all__ += ["dice_loss", "jaccard_loss", "tversky_loss", "generalized_dice_loss"]


def _softmax_axis1(x):
    m = np.max(x, axis=1, keepdims=True)
    m = np.where(np.isfinite(m), m, 0.0)
    e = np.exp(x - m)
    return e / np.sum(e, axis=1, keepdims=True)


def _overlap_operands(input, target, activation, ignore_index):
    """(x, p, t, m): the input and its activation, the target as floats and the valid-voxel
    mask, all float64; x, p, t of the input's shape, m of shape (N, 1, *spatial)."""
    x = _f64(input)
    C = x.shape[1]
    if activation == "softmax":
        p = _softmax_axis1(x)
    elif activation == "sigmoid":
        p = _sigmoid(x)
    else:
        p = x
    y = np.asarray(target)
    if y.shape == x.shape:                                   # a (soft) mask
        t = y.astype(np.float64)
        m = np.ones((x.shape[0], 1) + x.shape[2:])
    else:                                                    # class indices
        if y.ndim == x.ndim:                                 # (N, 1, *spatial)
            y = y[:, 0]
        y = y[:, None]                                       # (N, 1, *spatial)
        if C == 1:                                           # binary labels: foreground = 1
            t = (y == 1).astype(np.float64)
        else:
            classes = np.arange(C).reshape((1, C) + (1,) * (x.ndim - 2))
            t = (y == classes).astype(np.float64)
        if ignore_index is None:
            m = np.ones(y.shape)
        else:
            m = (y != ignore_index).astype(np.float64)
    return x, p, t, m


def _overlap_sums(p, t, m, include_background, batch, q):
    """Scored channel offset and the sums I, P, T of shape (Nb, C', 1, ...), Nb = 1 with batch."""
    off = 1 if (not include_background and p.shape[1] > 1) else 0
    ps, ts = p[:, off:], t[:, off:]
    axes = tuple(range(2, p.ndim))
    if batch:
        axes = (0,) + axes
    I = np.sum(m * ps * ts, axis=axes, keepdims=True)
    P = np.sum(m * ps ** q, axis=axes, keepdims=True)
    T = np.sum(m * ts ** q, axis=axes, keepdims=True)
    return off, I, P, T


def _overlap_grad(x, p, t, m, off, q, gI, gP, activation):
    """d L / d input from gI = dL/dI, gP = dL/dP (shaped like the sums, broadcast over voxels)."""
    ps, ts = p[:, off:], t[:, off:]
    dPdp = 2.0 * ps if q == 2 else 1.0
    g = np.zeros(x.shape)
    g[:, off:] = m * (gI * ts + gP * dPdp)
    if activation == "softmax":
        return p * (g - np.sum(p * g, axis=1, keepdims=True))
    if activation == "sigmoid":
        return p * (1.0 - p) * g
    return g


def _overlap_reduce(f, dI, dP, T, weight, ignore_empty, reduction, batch):
    """Weight, drop empty entries, reduce.  f, dI, dP, T are per entry, shaped (Nb, C', 1, ...);
    returns (value, dL/dI, dL/dP)."""
    w = np.ones(f.shape[1]) if weight is None else np.broadcast_to(_f64(weight), (f.shape[1],))
    w = w.reshape((1, -1) + (1,) * (f.ndim - 2))
    f, dI, dP = f * w, dI * w, dP * w
    if ignore_empty:
        keep = T != 0
        f = np.where(keep, f, 0.0)
        dI = np.where(keep, dI, 0.0)
        dP = np.where(keep, dP, 0.0)
        count = int(keep.sum())
    else:
        count = f.size
    if reduction == "none":
        entries = f.reshape(f.shape[:2])
        value = entries[0] if batch else entries
    elif reduction == "sum":
        value = np.float64(f.sum())
    else:  # mean over the (kept) entries
        if count == 0:
            # no entries: an empty batch is nan (MONAI's torch.mean of nothing); every
            # entry left out by ignore_empty is 0 (nothing to score)
            empty = np.nan if f.size == 0 else 0.0
            value, dI, dP = np.float64(empty), np.zeros_like(dI), np.zeros_like(dP)
        else:
            value = np.float64(f.sum()) / np.float64(count)
            dI, dP = dI / count, dP / count
    return value, dI, dP


def _dice_family(input, target, kind, *, activation, include_background, squared_pred,
                 smooth_nr, smooth_dr, batch, weight, ignore_index, ignore_empty, reduction,
                 return_grad, alpha=0.5, beta=0.5, gamma=1.0):
    q = 2 if squared_pred else 1
    snr, sdr = float(smooth_nr), float(smooth_dr)
    x, p, t, m = _overlap_operands(input, target, activation, ignore_index)
    off, I, P, T = _overlap_sums(p, t, m, include_background, batch, q)
    if kind == "dice":
        A, B = 2.0 * I + snr, P + T + sdr
        f = 1.0 - A / B
        dI, dP = -2.0 / B, A / (B * B)
    elif kind == "jaccard":
        A, B = 2.0 * I + snr, 2.0 * (P + T - I) + sdr
        f = 1.0 - A / B
        dI, dP = -(2.0 * B + 2.0 * A) / (B * B), 2.0 * A / (B * B)
    else:  # tversky: B = I + alpha (P - I) + beta (T - I) + sdr
        a, b = float(alpha), float(beta)
        A, B = I + snr, I + a * (P - I) + b * (T - I) + sdr
        ti = A / B
        dti_dI = (B - A * (1.0 - a - b)) / (B * B)
        dti_dP = -A * a / (B * B)
        u = 1.0 - ti
        if float(gamma) == 1.0:
            f, df_du = u, np.ones_like(u)
        else:
            gm = float(gamma)
            pos = u > 0
            up = np.where(pos, u, 0.0)
            f = up ** gm
            with np.errstate(divide="ignore", invalid="ignore"):
                df_du = np.where(pos, gm * up ** (gm - 1.0), 0.0)
        dI, dP = -df_du * dti_dI, -df_du * dti_dP
    value, gI, gP = _overlap_reduce(f, dI, dP, T, weight, ignore_empty, reduction, batch)
    if not return_grad:
        return value
    return value, _overlap_grad(x, p, t, m, off, q, gI, gP, activation)


def dice_loss(input, target, *, activation=None, include_background=True, squared_pred=False,
              smooth_nr=1e-5, smooth_dr=1e-5, batch=False, weight=None, ignore_index=None,
              ignore_empty=False, reduction="mean", return_grad=False):
    """MONAI DiceLoss: f = 1 - (2 I + smooth_nr) / (P + T + smooth_dr) per (n, c) (per c with
    batch), times weight[c]; "mean" is the plain mean over the (kept) entries, "none" returns
    (N, C') or (C',) with batch.  Unlike MONAI the weight also applies when C' == 1."""
    return _dice_family(input, target, "dice", activation=activation,
                        include_background=include_background, squared_pred=squared_pred,
                        smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch, weight=weight,
                        ignore_index=ignore_index, ignore_empty=ignore_empty,
                        reduction=reduction, return_grad=return_grad)


def jaccard_loss(input, target, *, activation=None, include_background=True, squared_pred=False,
                 smooth_nr=1e-5, smooth_dr=1e-5, batch=False, weight=None, ignore_index=None,
                 ignore_empty=False, reduction="mean", return_grad=False):
    """MONAI DiceLoss(jaccard=True): f = 1 - (2 I + smooth_nr) / (2 (P + T - I) + smooth_dr)."""
    return _dice_family(input, target, "jaccard", activation=activation,
                        include_background=include_background, squared_pred=squared_pred,
                        smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch, weight=weight,
                        ignore_index=ignore_index, ignore_empty=ignore_empty,
                        reduction=reduction, return_grad=return_grad)


def tversky_loss(input, target, *, alpha=0.5, beta=0.5, gamma=1.0, activation=None,
                 include_background=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=False,
                 weight=None, ignore_index=None, ignore_empty=False, reduction="mean",
                 return_grad=False):
    """MONAI TverskyLoss, TI = (I + smooth_nr) / (I + alpha (P - I) + beta (T - I) + smooth_dr),
    f = 1 - TI; focal Tversky max(1 - TI, 0)^gamma for gamma != 1 (gradient 0 where
    1 - TI <= 0).  weight and ignore_empty as in dice_loss (MONAI's Tversky has neither)."""
    return _dice_family(input, target, "tversky", activation=activation,
                        include_background=include_background, squared_pred=False,
                        smooth_nr=smooth_nr, smooth_dr=smooth_dr, batch=batch, weight=weight,
                        ignore_index=ignore_index, ignore_empty=ignore_empty,
                        reduction=reduction, return_grad=return_grad,
                        alpha=alpha, beta=beta, gamma=gamma)


def generalized_dice_loss(input, target, *, w_type="square", activation=None,
                          include_background=True, smooth_nr=1e-5, smooth_dr=1e-5, batch=False,
                          ignore_index=None, reduction="mean", return_grad=False):
    """MONAI GeneralizedDiceLoss: per sample (one value with batch)
        f = 1 - (2 sum_c w_c I_c + smooth_nr) / (sum_c w_c (P_c + T_c) + smooth_dr),
    w = 1/T^2 ("square"), 1/T ("simple"), 1 ("uniform"); an infinite weight (T == 0) becomes
    the largest finite weight of its sample (of all, with batch).  The weights depend on the
    target only and are constants for the gradient.  "none" returns (N,), or (1,) with batch.
    (MONAI has no ignore_index here; voxels are masked out of I, P, T as in dice_loss.)"""
    snr, sdr = float(smooth_nr), float(smooth_dr)
    x, p, t, m = _overlap_operands(input, target, activation, ignore_index)
    off, I, P, T = _overlap_sums(p, t, m, include_background, batch, 1)
    with np.errstate(divide="ignore"):
        if w_type == "square":
            w = 1.0 / (T * T)
        elif w_type == "simple":
            w = 1.0 / T
        else:
            w = np.ones_like(T)
    infs = np.isinf(w)
    w = np.where(infs, 0.0, w)
    w = w + infs * np.max(w, axis=1, keepdims=True)          # (Nb, C', 1, ...): per sample
    A = 2.0 * np.sum(w * I, axis=1, keepdims=True) + snr
    B = np.sum(w * (P + T), axis=1, keepdims=True) + sdr
    f = (1.0 - A / B).reshape(-1)                            # (N,), or (1,) with batch
    dI, dP = -2.0 * w / B, w * A / (B * B)
    if reduction == "none":
        value = f
    elif reduction == "sum":
        value = np.float64(f.sum())
    elif f.size == 0:      # an empty batch: nan, MONAI's torch.mean of nothing
        value = np.float64(np.nan)
    else:
        value = np.float64(f.sum()) / np.float64(f.size)
        dI, dP = dI / f.size, dP / f.size
    if not return_grad:
        return value
    return value, _overlap_grad(x, p, t, m, off, 1, dI, dP, activation)


# ---- boxes ----
# torchvision's box regression losses (ops/giou_loss.py, diou_loss.py,
# ciou_loss.py) on boxes (..., 4) = (x1, y1, x2, y2), and their gradients with
# respect to boxes1, derived here in *forward* mode: every intermediate carries
# its derivative with respect to the four coordinates of its box as a (..., 4)
# array (the kernels run reverse mode through the same graph).  torch's rules:
# d max(a, b)/da = 1 where a > b, 1/2 at a tie, 0 where a < b (min alike, and
# 1 when either is NaN), and no derivative through the zero branch of the
# intersection.  "mean" of no boxes is 0, as torchvision (not nan).

__all__ += ["generalized_box_iou_loss", "distance_box_iou_loss", "complete_box_iou_loss"]

_BOX_E = np.eye(4)                   # d(coordinate k of boxes1)/d(boxes1)
_BOX_CIOU_DIOU_EPS = 1e-7            # torchvision's CIoU calls _diou_iou_loss without eps


def _box_tie(a, b, larger):
    """d max(a, b)/da (``larger``) or d min(a, b)/da, torch's tie rule."""
    loses = (a < b) if larger else (a > b)
    return np.where(loses, 0.0, np.where(a == b, 0.5, 1.0))


def _box_iou_parts(b1, b2, eps):
    """(I, U, iou, cw, ch) and their derivatives, plus the widths and heights."""
    E = _BOX_E
    x1, y1, x2, y2 = np.moveaxis(b1, -1, 0)
    X1, Y1, X2, Y2 = np.moveaxis(b2, -1, 0)
    with np.errstate(all="ignore"):
        w, h = x2 - x1, y2 - y1
        dw, dh = E[2] - E[0], E[3] - E[1]
        ix1, iy1 = np.maximum(x1, X1), np.maximum(y1, Y1)
        ix2, iy2 = np.minimum(x2, X2), np.minimum(y2, Y2)
        diw = (_box_tie(x2, X2, False)[..., None] * E[2]
               - _box_tie(x1, X1, True)[..., None] * E[0])
        dih = (_box_tie(y2, Y2, False)[..., None] * E[3]
               - _box_tie(y1, Y1, True)[..., None] * E[1])
        iw, ih = ix2 - ix1, iy2 - iy1
        inside = (iy2 > iy1) & (ix2 > ix1)
        inter = np.where(inside, iw * ih, 0.0)
        dinter = np.where(inside[..., None], ih[..., None] * diw + iw[..., None] * dih, 0.0)
        union = (w * h + (X2 - X1) * (Y2 - Y1)) - inter
        dunion = h[..., None] * dw + w[..., None] * dh - dinter
        ue = union + eps
        iou = inter / ue
        diou = dinter / ue[..., None] - (inter / (ue * ue))[..., None] * dunion
        cw = np.maximum(x2, X2) - np.minimum(x1, X1)
        ch = np.maximum(y2, Y2) - np.minimum(y1, Y1)
        dcw = (_box_tie(x2, X2, True)[..., None] * E[2]
               - _box_tie(x1, X1, False)[..., None] * E[0])
        dch = (_box_tie(y2, Y2, True)[..., None] * E[3]
               - _box_tie(y1, Y1, False)[..., None] * E[1])
    return dict(union=union, dunion=dunion, iou=iou, diou=diou, cw=cw, dcw=dcw, ch=ch, dch=dch,
                w=w, h=h, dw=dw, dh=dh, W=X2 - X1, H=Y2 - Y1)


def _box_diou_terms(b1, b2, eps, p):
    """DIoU loss 1 - iou + d2 / D2 and its derivative."""
    E = _BOX_E
    x1, y1, x2, y2 = np.moveaxis(b1, -1, 0)
    X1, Y1, X2, Y2 = np.moveaxis(b2, -1, 0)
    cw, ch, dcw, dch = p["cw"], p["ch"], p["dcw"], p["dch"]
    with np.errstate(all="ignore"):
        D2 = cw ** 2 + ch ** 2 + eps
        dD2 = 2 * cw[..., None] * dcw + 2 * ch[..., None] * dch
        dx = (x1 + x2) / 2 - (X1 + X2) / 2
        dy = (y1 + y2) / 2 - (Y1 + Y2) / 2
        d2 = dx ** 2 + dy ** 2
        dd2 = dx[..., None] * (E[0] + E[2]) + dy[..., None] * (E[1] + E[3])
        value = 1 - p["iou"] + d2 / D2
        grad = -p["diou"] + dd2 / D2[..., None] - (d2 / (D2 * D2))[..., None] * dD2
    return value, grad


def _box_reduce(values, grad, reduction, return_grad):
    n = values.size
    if reduction == "none":
        out = values
    elif reduction == "sum":
        out = np.float64(values.sum())
    else:  # mean; torchvision: 0 for no boxes
        out = np.float64(values.sum()) / n if n else np.float64(0.0)
        grad = grad / n if n else grad
    return (out, grad) if return_grad else out


def _boxes_in(boxes1, boxes2):
    b1 = np.asarray(boxes1, dtype=np.float64)
    b2 = np.broadcast_to(np.asarray(boxes2, dtype=np.float64), b1.shape)
    return b1, b2


def generalized_box_iou_loss(boxes1, boxes2, *, reduction="mean", eps=1e-7, return_grad=False):
    """torchvision.ops.generalized_box_iou_loss: 1 - (iou - (C - U) / (C + eps)), with
    iou = I / (U + eps) and C the area of the smallest enclosing box."""
    b1, b2 = _boxes_in(boxes1, boxes2)
    p = _box_iou_parts(b1, b2, eps)
    cw, ch = p["cw"], p["ch"]
    with np.errstate(all="ignore"):
        C = cw * ch
        dC = ch[..., None] * p["dcw"] + cw[..., None] * p["dch"]
        Ce = C + eps
        value = 1 - (p["iou"] - (C - p["union"]) / Ce)
        grad = (-p["diou"] + (dC - p["dunion"]) / Ce[..., None]
                - ((C - p["union"]) / (Ce * Ce))[..., None] * dC)
    return _box_reduce(value, grad, reduction, return_grad)


def distance_box_iou_loss(boxes1, boxes2, *, reduction="mean", eps=1e-7, return_grad=False):
    """torchvision.ops.distance_box_iou_loss: 1 - iou + d2 / (diag^2 + eps), d2 the
    squared distance of the centres, diag that of the enclosing box."""
    b1, b2 = _boxes_in(boxes1, boxes2)
    value, grad = _box_diou_terms(b1, b2, eps, _box_iou_parts(b1, b2, eps))
    return _box_reduce(value, grad, reduction, return_grad)


def complete_box_iou_loss(boxes1, boxes2, *, reduction="mean", eps=1e-7, return_grad=False):
    """torchvision.ops.complete_box_iou_loss: DIoU + alpha v, v = 4/pi^2 (atan(W/H) -
    atan(w/h))^2, alpha = v / (1 - iou + v + eps) held constant for the gradient.  As
    torchvision, the DIoU part and its iou use eps = 1e-7 whatever ``eps`` is."""
    b1, b2 = _boxes_in(boxes1, boxes2)
    p = _box_iou_parts(b1, b2, _BOX_CIOU_DIOU_EPS)
    value, grad = _box_diou_terms(b1, b2, _BOX_CIOU_DIOU_EPS, p)
    w, h = p["w"], p["h"]
    with np.errstate(all="ignore"):
        r = w / h
        dr = p["dw"] / h[..., None] - (w / (h * h))[..., None] * p["dh"]
        diff = np.arctan(p["W"] / p["H"]) - np.arctan(r)
        c = 4 / np.pi ** 2
        v = c * diff ** 2
        dv = (-2 * c * diff / (1 + r * r))[..., None] * dr
        alpha = v / (1 - p["iou"] + v + eps)
        value = value + alpha * v
        grad = grad + alpha[..., None] * dv
    return _box_reduce(value, grad, reduction, return_grad)


# ---- pairwise (representation learning) ----
# Metric-learning and self-supervised losses on embeddings (N, D): distances,
# pytorch-metric-learning's ContrastiveLoss, torch's triplet_margin_loss,
# batch-hard triplets (Hermans et al. 2017), info-nce-pytorch's InfoNCE and
# SimCLR's NT-Xent (contract: notes/pairwise_api.md).  Everything holds the
# full (N, M) matrices and computes each distance directly from the
# difference of the rows.  Gradients are derived by hand in reverse mode: a
# loss builds its upstream G = d(loss)/d(distance matrix) (or d(loss)/d(logits)),
# _pw_dist_grad carries G to both ends of every pair, _pw_normalize_grad
# through torch.nn.functional.normalize.  Rules at the kinks, as torch's
# autograd: relu'(0) = 0 (but triplet_margin_loss: see there), d||v||/dv = 0
# at v = 0 (so the euclidean distance has gradient 0 at d = 0), and
# normalize's clamp max(||x||, 1e-12) passes no gradient below 1e-12 (a zero
# row gets g / 1e-12: finite).

__all__ += ["pairwise_distances", "contrastive_loss", "triplet_margin_loss",
            "batch_hard_triplet_loss", "info_nce_loss", "nt_xent_loss"]

_PW_NORM_EPS = 1e-12                 # torch.nn.functional.normalize's eps


def _pw_normalize(x):
    """x / max(||x||, 1e-12) along the last axis, and the clamped norm (..., 1)."""
    r = np.sqrt(np.sum(x * x, axis=-1, keepdims=True))
    den = np.maximum(r, _PW_NORM_EPS)
    return x / den, r, den


def _pw_normalize_grad(xn, r, den, g):
    """d(loss)/dx from g = d(loss)/d(xn): (g - xn (xn . g)) / ||x|| where the norm is
    not clamped, g / 1e-12 where it is."""
    proj = np.where(r >= _PW_NORM_EPS, xn * np.sum(xn * g, axis=-1, keepdims=True), 0.0)
    return (g - proj) / den


def _pw_dist(x, y, metric):
    """(N, M) distances between the rows of x and y, from the differences;
    "cosine" expects normalized rows."""
    if metric == "cosine":
        return 1.0 - x @ y.T
    diff = x[:, None, :] - y[None, :, :]
    d2 = np.sum(diff * diff, axis=-1)
    return d2 if metric == "sqeuclidean" else np.sqrt(d2)


def _pw_dist_grad(x, y, metric, G):
    """(gx, gy): the gradient of sum_ij G_ij d(x_i, y_j)."""
    if metric == "cosine":
        return -G @ y, -G.T @ x
    diff = x[:, None, :] - y[None, :, :]
    if metric == "sqeuclidean":
        W = 2.0 * G
    else:
        d = np.sqrt(np.sum(diff * diff, axis=-1))
        with np.errstate(divide="ignore", invalid="ignore"):
            W = np.where(d > 0, G / d, 0.0)
    gpair = W[..., None] * diff
    return gpair.sum(axis=1), -gpair.sum(axis=0)


def _pw_self_grad(x, metric, G):
    """Gradient of sum_ij G_ij d(x_i, x_j) with respect to x (both ends)."""
    gx, gy = _pw_dist_grad(x, x, metric, G)
    return gx + gy


def _pw_prepare(embeddings, metric, normalize):
    """float64 embeddings, normalized where asked (cosine always): (x, undo) with undo
    carrying a gradient with respect to x back to the embeddings."""
    x = np.asarray(embeddings, dtype=np.float64)
    if metric == "cosine" or normalize:
        xn, r, den = _pw_normalize(x)
        return xn, (lambda g: _pw_normalize_grad(xn, r, den, g))
    return x, (lambda g: g)


def _pw_masks(labels):
    """(positive, negative) (N, N) masks of the ordered pairs i != j."""
    y = np.asarray(labels).reshape(-1)
    same = y[:, None] == y[None, :]
    pos = same & ~np.eye(y.size, dtype=bool)
    return pos, ~same


def _pw_share(mask):
    """mask / count (zeros where the mask is empty)."""
    n = np.count_nonzero(mask)
    return mask / n if n else np.zeros(mask.shape)


def pairwise_distances(x, y=None, *, metric="euclidean"):
    """(N, M) distance matrix: "euclidean" ||x_i - y_j||, "sqeuclidean" its square,
    "cosine" 1 - cos(x_i, y_j) on normalized rows; with y None the diagonal is 0."""
    a = np.asarray(x, dtype=np.float64)
    b = a if y is None else np.asarray(y, dtype=np.float64)
    if metric == "cosine":
        a, b = _pw_normalize(a)[0], _pw_normalize(b)[0]
    D = _pw_dist(a, b, metric)
    if y is None:
        np.fill_diagonal(D, 0.0)
    return D


def contrastive_loss(embeddings, labels, *, pos_margin=0.0, neg_margin=1.0, distance="euclidean",
                     normalize_embeddings=True, reduction="mean_nonzero", return_grad=False):
    """pytorch-metric-learning's ContrastiveLoss over the ordered pairs i != j:
    relu(d - pos_margin) for equal labels, relu(neg_margin - d) for different ones."""
    x, undo = _pw_prepare(embeddings, distance, normalize_embeddings)
    D = _pw_dist(x, x, distance)
    pos, neg = _pw_masks(labels)
    zp, zn = D - pos_margin, neg_margin - D
    L = np.where(pos, np.maximum(zp, 0.0), 0.0) + np.where(neg, np.maximum(zn, 0.0), 0.0)
    dL = np.where(pos & (zp > 0), 1.0, 0.0) - np.where(neg & (zn > 0), 1.0, 0.0)
    if reduction == "mean_nonzero":
        W = _pw_share(pos & (L > 0)) + _pw_share(neg & (L > 0))
    elif reduction == "mean":
        W = _pw_share(pos) + _pw_share(neg)
    else:  # sum, none
        W = np.ones(D.shape)
    if reduction == "none":
        value = L.sum(axis=1)
    else:
        value = np.float64((W * L).sum())
    if not return_grad:
        return value
    return value, undo(_pw_self_grad(x, distance, W * dL))


def _pw_lp(w, p):
    """(||w||_p along the last axis, its gradient; 0 at w = 0)."""
    a = np.abs(w)
    r = np.sum(a ** p, axis=-1) ** (1.0 / p)
    with np.errstate(divide="ignore", invalid="ignore"):
        g = np.sign(w) * (a / r[..., None]) ** (p - 1.0)
    return r, np.where(r[..., None] > 0, g, 0.0)


def triplet_margin_loss(anchor, positive, negative, *, margin=1.0, p=2.0, eps=1e-6, swap=False,
                        reduction="mean", return_grad=False):
    """torch.nn.functional.triplet_margin_loss: max(margin + d(a, p) - d(a, n), 0) with
    d(u, v) = ||u - v + eps||_p; swap: d(a, n) -> min(d(a, n), d(p, n)).  torch's rules
    at the kinks: a swap tie gives each distance half the gradient (minimum), and
    margin + d_ap - d_an == 0 passes the gradient (clamp_min's >=).  1-D inputs are one
    triplet ("none" then gives a 0-d array, as torch)."""
    a, pp, n = (np.asarray(t, dtype=np.float64) for t in (anchor, positive, negative))
    one = a.ndim == 1
    a, pp, n = (t.reshape(1, -1) if one else t for t in (a, pp, n))
    dap, gap = _pw_lp(a - pp + eps, p)
    dan, gan = _pw_lp(a - n + eps, p)
    if swap:
        dpn, gpn = _pw_lp(pp - n + eps, p)
        ca = np.where(dan < dpn, 1.0, np.where(dan == dpn, 0.5, 0.0))
        dneg = np.minimum(dan, dpn)
    else:
        dpn, gpn = dan, np.zeros_like(gan)
        ca = np.ones_like(dan)
        dneg = dan
    cp = 1.0 - ca
    z = margin + dap - dneg
    loss = np.maximum(z, 0.0)
    c = np.where(z >= 0, 1.0, 0.0)                  # torch's clamp_min: gradient 1 at z == 0
    if reduction == "none":
        value = loss.reshape(()) if one else loss
    elif reduction == "sum":
        value = np.float64(loss.sum())
    else:
        value = np.float64(loss.sum()) / loss.size
        c = c / loss.size
    if not return_grad:
        return value
    c = c[:, None]
    ga = c * (gap - ca[:, None] * gan)
    gp = c * (-gap - cp[:, None] * gpn)
    gn = c * (ca[:, None] * gan + cp[:, None] * gpn)
    if one:
        ga, gp, gn = ga[0], gp[0], gn[0]
    return value, (ga, gp, gn)


def batch_hard_triplet_loss(embeddings, labels, *, margin=1.0, distance="euclidean",
                            normalize_embeddings=False, soft=False, reduction="mean",
                            return_grad=False):
    """Batch-hard triplets: per anchor the farthest positive and the nearest negative
    (first index among ties), relu (soft: softplus) of margin + d_ap - d_an; anchors
    without a positive or a negative are invalid (loss 0, not counted)."""
    x, undo = _pw_prepare(embeddings, distance, normalize_embeddings)
    D = _pw_dist(x, x, distance)
    pos, neg = _pw_masks(labels)
    rows = np.arange(D.shape[0])
    jp = np.argmax(np.where(pos, D, -np.inf), axis=1)
    jn = np.argmin(np.where(neg, D, np.inf), axis=1)
    valid = pos.any(axis=1) & neg.any(axis=1)
    z = margin + D[rows, jp] - D[rows, jn]
    if soft:
        loss, dl = np.logaddexp(0.0, z), _sigmoid(z)
    else:
        loss, dl = np.maximum(z, 0.0), np.where(z > 0, 1.0, 0.0)
    loss, dl = np.where(valid, loss, 0.0), np.where(valid, dl, 0.0)
    if reduction == "mean":
        w = _pw_share(valid)
    elif reduction == "mean_nonzero":
        w = _pw_share(valid & (loss > 0))
    else:  # sum, none
        w = valid.astype(np.float64)
    value = loss if reduction == "none" else np.float64((w * loss).sum())
    if not return_grad:
        return value
    G = np.zeros(D.shape)
    np.add.at(G, (rows, jp), w * dl)
    np.add.at(G, (rows, jn), -w * dl)
    return value, undo(_pw_self_grad(x, distance, G))


def _pw_ce_rows(logits, target, reduction):
    """Cross-entropy per row (log-sum-exp, max subtracted) and d(reduced)/d(logits)."""
    n = logits.shape[0]
    if n == 0:      # no rows: the mean is nan (0/0), as in torch
        value = {"none": np.zeros(0), "sum": np.float64(0.0)}.get(reduction, np.float64(np.nan))
        return value, np.zeros_like(logits, dtype=np.float64)
    m = np.max(logits, axis=1, keepdims=True)
    e = np.exp(logits - m)
    s = e.sum(axis=1, keepdims=True)
    rows = np.arange(n)
    loss = (m[:, 0] + np.log(s[:, 0])) - logits[rows, target]
    dz = e / s
    dz[rows, target] -= 1.0
    if reduction == "none":
        return loss, dz
    if reduction == "sum":
        return np.float64(loss.sum()), dz
    return np.float64(loss.sum()) / n, dz / n


def info_nce_loss(query, positive_key, negative_keys=None, *, temperature=0.1,
                  negative_mode="unpaired", reduction="mean", return_grad=False):
    """info-nce-pytorch 0.1.4's info_nce: cross-entropy of cosine logits / temperature,
    the positive key the target (negatives: the other rows' positive keys when
    negative_keys is None, else all of negative_keys (M, D) or each row's (M, D))."""
    q, rq, dq = _pw_normalize(np.asarray(query, dtype=np.float64))
    k, rk, dk = _pw_normalize(np.asarray(positive_key, dtype=np.float64))
    t = float(temperature)
    n = q.shape[0]
    if negative_keys is None:
        value, dz = _pw_ce_rows(q @ k.T / t, np.arange(n), reduction)
        if not return_grad:
            return value
        gq, gk = dz @ k / t, dz.T @ q / t
        return value, (_pw_normalize_grad(q, rq, dq, gq), _pw_normalize_grad(k, rk, dk, gk))
    v, rv, dv = _pw_normalize(np.asarray(negative_keys, dtype=np.float64))
    zpos = np.sum(q * k, axis=1, keepdims=True)
    if negative_mode == "paired":
        zneg = np.einsum("nd,nmd->nm", q, v)
    else:
        zneg = q @ v.T
    value, dz = _pw_ce_rows(np.concatenate([zpos, zneg], axis=1) / t,
                            np.zeros(n, dtype=np.intp), reduction)
    if not return_grad:
        return value
    dpos, dneg = dz[:, :1] / t, dz[:, 1:] / t
    gk = dpos * q
    if negative_mode == "paired":
        gq = dpos * k + np.einsum("nm,nmd->nd", dneg, v)
        gv = dneg[:, :, None] * q[:, None, :]
    else:
        gq = dpos * k + dneg @ v
        gv = dneg.T @ q
    return value, (_pw_normalize_grad(q, rq, dq, gq), _pw_normalize_grad(k, rk, dk, gk),
                   _pw_normalize_grad(v, rv, dv, gv))


def nt_xent_loss(z1, z2, *, temperature=0.5, reduction="mean", return_grad=False):
    """SimCLR's NT-Xent over the 2N views [z1; z2]: cross-entropy of the cosine
    similarities / temperature over j != i, the other view of the same sample the
    target; "none" (2N,), z1's views first."""
    z = np.concatenate([np.asarray(z1, dtype=np.float64), np.asarray(z2, dtype=np.float64)])
    zn, r, den = _pw_normalize(z)
    m = z.shape[0]
    t = float(temperature)
    S = zn @ zn.T / t
    S[np.arange(m), np.arange(m)] = -np.inf          # exp(-inf) = 0: j != i
    target = (np.arange(m) + m // 2) % m
    value, dS = _pw_ce_rows(S, target, reduction)
    if not return_grad:
        return value
    g = _pw_normalize_grad(zn, r, den, (dS + dS.T) @ zn / t)
    return value, (g[: m // 2], g[m // 2:])
