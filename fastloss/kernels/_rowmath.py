"""Per-row scalar math of the row-wise (multi-class) losses, written once.

Plain Python on floats, compiled by Numba for the CPU (``njit``) and for the
GPU (``cuda.jit(device=True)``) by :func:`compile_for`, like :mod:`._math`
for the elementwise losses.  A backend's loops compute the per-row
reductions (the row max, ``sum exp(x_c - max)``, ``sum w_c x_c``, ...) in
whatever order suits its hardware; these functions turn those into the row's
value and the coefficients of its gradient, so the formulas below are the
only copy of the spec's (notes/rowwise_spec.md) in the Numba backends.
Everything is float64.

Notation: a row has C values x_c, its label y, class weights w_c (1 without
a weight), W = sum_c w_c, lse = log sum_c exp(x_c), p_c = exp(x_c - lse), and
gs the gradient scale (applied by the caller).

The transcendental functions are called by the plain names ``exp``, ``log``
and ``expm1`` (``math``'s by default, replaceable per target, see
:func:`compile_for`).
"""
import math

PRIMITIVES = ("exp", "log", "expm1")
exp, log, expm1 = math.exp, math.log, math.expm1


def vmax(m, v):
    """max(m, v) that propagates nan (from either side): the running max of a row."""
    return v if (v > m or v != v) else m


def lse_of(m, s):
    """log sum_c exp(x_c) from the row max m and s = sum_c exp(x_c - m) (s >= 1)."""
    return m + log(s)


def log_p_y(lse, se, xy):
    """log p_y = x_y - lse, ≤ 0.  Where it rounds to ≥ 0, x_y is the row max and lse
    rounded onto it (|x| ~ 1e30: 1e30 + log 2 == 1e30): then log p_y = -log se."""
    L = xy - lse
    if L >= 0.0:
        L = -log(se) if se > 1.0 else 0.0
    return L


def ce_finish(lse, se, xy, wy, W, swx, eps, z, C):
    """cross_entropy (label smoothing eps, z-loss z), swx = sum_c w_c x_c (unused
    when eps = 0):

        value  = (1-eps) w_y (lse - x_y) + (eps/C) (W lse - swx) + z lse^2
        grad_c = gs (A p_c - B [c==y] - (eps/C) w_c),
        A = (1-eps) w_y + (eps/C) W + 2 z lse,  B = (1-eps) w_y.

    Returns (value, A, B).  The eps and z terms are added only when nonzero
    (0 * inf would turn an infinite lse into nan)."""
    B = (1.0 - eps) * wy
    value = -B * log_p_y(lse, se, xy)
    A = B
    if eps != 0.0:
        k = eps / C
        value += k * (W * lse - swx)
        A += k * W
    if z != 0.0:
        value += z * lse * lse
        A += 2.0 * z * lse
    return value, A, B


def smooth_target(t, eps, C):
    """cross_entropy_prob: the smoothed target probability t' = (1-eps) t + eps/C."""
    return (1.0 - eps) * t + eps / C


def ce_prob_finish(lse, Tw, swtx, z):
    """cross_entropy_prob, Tw = sum_c w_c t'_c, swtx = sum_c w_c t'_c x_c:

        value  = Tw lse - swtx + z lse^2
        grad_c = gs (A p_c - w_c t'_c),  A = Tw + 2 z lse.

    Returns (value, A)."""
    value = Tw * lse - swtx
    A = Tw
    if z != 0.0:
        value += z * lse * lse
        A += 2.0 * z * lse
    return value, A


def nll_finish(xy, wy):
    """nll (the input are log-probabilities): value = -w_y x_y, grad_c = gs G [c==y].
    Returns (value, G) with G = -w_y."""
    return -wy * xy, -wy


def focal_finish(lse, se, xy, a, gamma):
    """softmax_focal, a = alpha_y w_y:

        L = x_y - lse, p_y = exp(L), u = 1 - p_y = -expm1(L)
        value  = -a u^gamma L                         (u^0 = 1, also for u = 0)
        grad_c = gs K (p_c - [c==y]),  K = a u^gamma (1 - gamma p_y r),
        r = L / u (-> -1 as u -> 0, used at u = 0).

    Finite for saturated logits and for 0 <= gamma < 1 (r stays bounded: the
    u^(gamma-1) of the derivative is folded into u^gamma * L / u).  Returns
    (value, K, u): the caller writes grad_y = -gs K u, which keeps the
    accuracy of expm1 where p_y is close to 1."""
    L = log_p_y(lse, se, xy)    # (≤ 0: guards u^gamma against a rounding u < 0)
    p_y = exp(L)
    u = -expm1(L)
    ug = 1.0 if gamma == 0.0 else u ** gamma
    value = -a * ug * L
    r = L / u if u > 0.0 else -1.0
    K = a * ug * (1.0 - gamma * p_y * r)
    return value, K, u


def margin_term(xc, xy, margin, p):
    """multi_margin, one class c != y: z_c = margin - x_y + x_c; returns
    (h_c, dh_c/dx_c): (z_c, 1) for p = 1, (z_c^2, 2 z_c) for p = 2, (0, 0)
    where z_c <= 0 (or nan)."""
    zc = margin - xy + xc
    h = zc if p == 1.0 else zc * zc
    g = 1.0 if p == 1.0 else 2.0 * zc
    pos = zc > 0.0
    return (h if pos else 0.0), (g if pos else 0.0)


def margin_finish(hsum, wy, C):
    """multi_margin: value = w_y sum_{c != y} h_c / C; grad_c = gs Q dh_c (c != y),
    grad_y = -sum_{c != y} grad_c.  Returns (value, Q) with Q = w_y / C."""
    return wy * hsum / C, wy / C


def crammer_finish(m, xy, margin):
    """crammer_singer, m = max_{c != y} x_c (-inf for C = 1):
    h = margin + m - x_y, value = max(0, h) (nan stays nan); the gradient is
    +gs at the first c != y attaining m and -gs at y when h > 0, else 0.
    Returns (value, active)."""
    h = margin + m - xy
    active = h > 0.0
    value = h if (active or h != h) else 0.0
    return value, active


FUNCTIONS = (vmax, lse_of, log_p_y, ce_finish, smooth_target, ce_prob_finish, nll_finish, focal_finish,
             margin_term, margin_finish, crammer_finish)


def compile_for(jit, primitives=None):
    """Every function above compiled with ``jit`` (``njit(inline="always")`` or
    ``cuda.jit(device=True)``), as a dict by name.  ``primitives`` maps names in
    PRIMITIVES to compiled replacements (the CPU backend's vectorisable ones)."""
    import builtins

    from . import compile_into

    namespace = {"math": math, "__builtins__": builtins}
    namespace.update({name: globals()[name] for name in PRIMITIVES})
    namespace.update(primitives or {})
    # (in order, each into the namespace: the finishes call log_p_y compiled)
    return compile_into(namespace, [(FUNCTIONS, jit)])
