"""Scalar math of each elementwise loss: value and derivative, written once.

Plain Python on floats, compiled by Numba for the CPU (``njit``) and for the
GPU (``cuda.jit(device=True)``).  Every function has the signature
``(x, y, a, p0, p1) -> (loss, dloss/dx)`` with x the input, y the target,
``a`` the per-element parameter (or ``p0`` where there is none) and ``p0``,
``p1`` the scalar parameters, the same contract as the C kernels
(csrc/elementwise.c).  Both Numba targets compute in float64.

The transcendental functions are called by the plain names below (``exp``,
``log``, ``log1p``, ``expm1``, ``tanh``): ``math``'s by default, which both
targets provide, and replaceable per target through :func:`compile_for`
(the Numba CPU backend substitutes versions its loop vectoriser can inline).
"""
import math

LN2 = math.log(2.0)
PRIMITIVES = ("exp", "log", "log1p", "expm1", "tanh")
exp, log, log1p, expm1, tanh = math.exp, math.log, math.log1p, math.expm1, math.tanh


def _sign(d):
    if d > 0.0:
        return 1.0
    if d < 0.0:
        return -1.0
    return d  # 0 stays 0, nan stays nan


def mse(x, y, a, p0, p1):
    d = x - y
    return d * d, 2.0 * d


def l1(x, y, a, p0, p1):
    d = x - y
    return abs(d), _sign(d)


def huber(x, y, a, p0, p1):
    d = x - y
    ad = abs(d)
    if ad < p0:
        return 0.5 * d * d, d
    return p0 * (ad - 0.5 * p0), p0 * _sign(d)


def smooth_l1(x, y, a, p0, p1):
    d = x - y
    ad = abs(d)
    if ad < p0:  # never true for beta = 0: exactly L1
        return 0.5 * d * d / p0, d / p0
    return ad - 0.5 * p0, _sign(d)


def log_cosh(x, y, a, p0, p1):
    d = x - y
    ad = abs(d)
    if ad < 1.0:
        # log cosh = log1p(cosh - 1), cosh - 1 = e^2 / (2 (1 + e)), e = expm1(|d|): no cancellation
        e = expm1(ad)
        arg = e * e / (2.0 * (1.0 + e))
    else:
        arg = exp(-2.0 * ad)
    lg = log1p(arg)   # one call for both branches: select-friendly (vectorised CPU loop)
    value = lg if ad < 1.0 else ad + lg - LN2
    return value, tanh(d)


def quantile(x, y, a, p0, p1):
    r = y - x
    value = max(a * r, (a - 1.0) * r)
    if r != r:
        return r, r
    if x > y:
        return value, 1.0 - a
    return value, -a


def bce(x, y, a, p0, p1):
    log_x = log(x) if x > 0.0 else -math.inf
    log_1mx = log1p(-x) if x < 1.0 else -math.inf
    value = -(y * max(log_x, -100.0) + (1.0 - y) * max(log_1mx, -100.0))
    return value, (x - y) / max(x * (1.0 - x), 1e-12)


def bce_logits(x, y, a, p0, p1):
    e = exp(-abs(x))
    log1pe = log1p(e)
    inv = 1.0 / (1.0 + e)
    sig = inv if x >= 0.0 else e * inv        # sigmoid(x), no cancellation on either side
    sig_neg = e * inv if x >= 0.0 else inv    # sigmoid(-x)
    lw = 1.0 + (a - 1.0) * y
    softplus_neg = max(-x, 0.0) + log1pe
    # d/dx = (1 - y) - lw sigmoid(-x), written as (1 - y) sigmoid(x) - a y sigmoid(-x):
    # the same value, without the cancellation that loses it at confident logits
    return (1.0 - y) * x + lw * softplus_neg, (1.0 - y) * sig - a * y * sig_neg


def _logaddexp(u, v):
    if u == -math.inf:
        return v
    if v == -math.inf:
        return u
    big = max(u, v)
    return big + log1p(exp(-abs(u - v)))


def sigmoid_focal(x, y, a, p0, p1):
    alpha, gamma = p0, p1
    e = exp(-abs(x))
    log1pe = log1p(e)
    log_p = -(max(-x, 0.0) + log1pe)      # log sigmoid(x)
    log_q = -(max(x, 0.0) + log1pe)       # log sigmoid(-x)
    sig = 1.0 / (1.0 + e) if x >= 0.0 else e / (1.0 + e)
    ce = -(y * log_p + (1.0 - y) * log_q)
    # log(1 - p_t) = log(p (1 - y) + (1 - p) y), a log-sum-exp of two terms
    # computed for every y, then selected: select-friendly for the vectorised CPU loop
    # (the guards give log(0) = log1p(-1) = -inf without a domain error in plain Python)
    log_y = log(y) if y != 0.0 else -math.inf
    log_1my = log1p(-y) if y != 1.0 else -math.inf
    log_m = _logaddexp(log_q + log_y, log_p + log_1my)
    log_m = log_q if y == 1.0 else (log_p if y == 0.0 else log_m)
    modulator = exp(gamma * log_m)
    dmod = 0.0
    if gamma != 0.0:
        dmod = gamma * exp((gamma - 1.0) * log_m + log_p + log_q) * (1.0 - 2.0 * y)
    alpha_t = alpha * y + (1.0 - alpha) * (1.0 - y) if alpha >= 0.0 else 1.0
    return alpha_t * ce * modulator, alpha_t * ((sig - y) * modulator + ce * dmod)


def hinge(x, y, a, p0, p1):
    z = p0 - y * x
    if z != z:
        return z, z
    if z <= 0.0:
        return 0.0, 0.0
    if p1 != 0.0:
        return z * z, -2.0 * y * z
    return z, -y


#: kernel name -> scalar function, in the C table's order
LOSSES = {f.__name__: f for f in (mse, l1, huber, smooth_l1, log_cosh, quantile, bce,
                                  bce_logits, sigmoid_focal, hinge)}
HELPERS = (_sign, _logaddexp)


def compile_for(jit, primitives=None):
    """Every loss's scalar function compiled with ``jit`` (``njit(inline=...)`` or
    ``cuda.jit(device=True)``).  The helpers they call are compiled first and
    bound in a private namespace, so the source above stays plain Python.
    ``primitives`` maps names in PRIMITIVES to compiled replacements."""
    import builtins
    import types

    namespace = {"math": math, "LN2": LN2, "__builtins__": builtins}
    namespace.update({name: globals()[name] for name in PRIMITIVES})
    namespace.update(primitives or {})

    def rebind(fn):
        return types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__)

    for helper in HELPERS:
        namespace[helper.__name__] = jit(rebind(helper))
    return {name: jit(rebind(fn)) for name, fn in LOSSES.items()}
