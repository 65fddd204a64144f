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
    grad = (1.0 - y) - log_weight * _sigmoid(-x)
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
