"""Per-voxel math of the overlap (Dice-family) kernels, written once.

Plain Python, compiled by Numba for the CPU (``njit``) and for the GPU
(``cuda.jit(device=True)``) by :func:`compile_for`, like :mod:`._rowmath` for
the row-wise losses.  The layout and the contract are kernels.OverlapCall's:
the input is (N, C, S), element (i, c, s) at ``(i*C + c)*S + s``; a voxel is
one (i, s).

The functions work on a *tile*: ``nt`` consecutive voxels s0 .. s0+nt-1 of
one sample, whose element (c, j) is at ``xb + c*S + j``.  The CPU skeleton
calls them with tiles of up to a few hundred voxels (every inner loop runs
over j, contiguous in memory, and vectorises); the CUDA skeleton calls the
same functions with nt = 1 (one voxel per thread).  Class *windows*
[c_lo, c_lo + nc) bound the per-tile scratch: the activated values of the
window's classes are kept in ``pb[k*T + j]`` (k = c - c_lo, T the scratch's
row length); the CPU uses one window of all C classes, the CUDA kernels
windows of a compile-time maximum (local arrays).

Formulas (float64 throughout; q = 2 if squared else 1):

* activation, per voxel: softmax p_c = exp(x_c - m) / sum_k exp(x_k - m),
  m = max_k x_k (nan propagates); sigmoid p = 1 / (1 + exp(-x)) computed as
  1/(1+z) or z/(1+z) with z = exp(-|x|) (no overflow for any x); or p = x.
* target: labels t_c = [y == c + label_base], the voxel ignored when
  y == ignore_index; masks t = the mask's value (never ignored).
* statistics: (p t, p^q, t^q) summed per (i, c) over the non-ignored voxels
  (ignored voxels add exactly 0, whatever their input: nan included).
* gradient, given coef (a, b) per (i, c): g_c = dL/dp_c = a t_c + b (2 p_c if
  squared else 1), chained through the activation:
  softmax grad_c = p_c (g_c - sum_k p_k g_k), sigmoid g_c p_c (1 - p_c),
  none g_c; 0 at ignored voxels.

Targets are read from one of four flat arrays (u8, i32, i64, f: the float
mask, in the input's dtype) chosen by the runtime code ``tsrc``, so a kernel is
compiled once per input dtype, not once per (input, target) dtype pair; the
arrays not in use are 1-element dummies.

The transcendental function is called by the plain name ``exp`` (``math``'s
by default, replaceable per target, see :func:`compile_for`).
"""
import math

PRIMITIVES = ("exp",)
exp = math.exp

# activation codes ("none", "softmax", "sigmoid": the C enum's order)
NONE, SOFTMAX, SIGMOID = 0, 1, 2
ACTIVATION_CODES = {"none": NONE, "softmax": SOFTMAX, "sigmoid": SIGMOID}
# target sources: which array the target is read from
T_U8, T_I32, T_I64, T_FLOAT = 0, 1, 2, 3
NINF = -math.inf


def check_call(call, dtype, size):
    """(N, C, S, activation code) of a kernels.OverlapCall whose input has ``size``
    elements of ``dtype``; both skeletons check a direct caller's call here."""
    if dtype not in ("float32", "float64"):
        raise TypeError(f"input: expected float32 or float64, got {dtype}")
    n, C, S = int(call.n), int(call.classes), int(call.inner)
    if size != n * C * S:
        raise ValueError(f"input: expected n*classes*inner = {n * C * S} elements, got {size}")
    if call.activation not in ACTIVATION_CODES:
        raise ValueError(f"activation: expected one of {tuple(ACTIVATION_CODES)}, got "
                         f"{call.activation!r}")
    return n, C, S, ACTIVATION_CODES[call.activation]


# --- scalar pieces ---------------------------------------------------------------------------
def vmax(m, v):
    """max(m, v) that propagates nan (from either side)."""
    return v if (v > m or v != v) else m


def sigmoid(x):
    """1 / (1 + exp(-x)), stable for any x (nan stays nan)."""
    z = exp(-abs(x))
    return 1.0 / (1.0 + z) if x >= 0.0 else z / (1.0 + z)


def activate_one(x, act):
    """p of one element for the elementwise activations (none, sigmoid)."""
    return sigmoid(x) if act == SIGMOID else x


def terms(p, t, squared):
    """One element's contribution to (I, P, T)."""
    if squared:
        return p * t, p * p, t * t
    return p * t, p, t


def dloss(p, t, a, b, squared):
    """dL/dp = a t + b (2p if squared else 1)."""
    return a * t + b * (2.0 * p if squared else 1.0)


def chain(p, g, dot, act):
    """dL/dx of one element from g = dL/dp; dot = sum_k p_k g_k of its voxel (softmax)."""
    if act == SOFTMAX:
        return p * (g - dot)
    if act == SIGMOID:
        return g * p * (1.0 - p)
    return g


# --- tile functions --------------------------------------------------------------------------
# The runtime flags (act, squared, labels / tsrc) are tested outside the loops
# over j, and the scalar pieces above are called with them as literals, so each
# loop body is branch-free and vectorises; the arrays are sliced so that the
# indices are j in range(nt) (no negative-index handling in the loop).

def load_labels(t8, t32, t64, tsrc, ignore, rb, nt, lab, keep):
    """lab[j] = label of voxel rb + j, keep[j] = 1 if it is not ignore_index, else 0."""
    if tsrc == T_U8:
        r8 = t8[rb:rb + nt]
        for j in range(nt):
            lab[j] = int(r8[j])
    elif tsrc == T_I32:
        r32 = t32[rb:rb + nt]
        for j in range(nt):
            lab[j] = int(r32[j])
    else:
        r64 = t64[rb:rb + nt]
        for j in range(nt):
            lab[j] = int(r64[j])
    for j in range(nt):
        keep[j] = 1 if lab[j] != ignore else 0


def load_target(labels, lab, cb, t8, tf, tsrc, e0, nt, tb):
    """tb[j] = t of one class at tile voxel j: [lab[j] == cb] (cb = c +
    label_base), or the mask's elements e0 + j."""
    if labels:
        for j in range(nt):
            tb[j] = 1.0 if lab[j] == cb else 0.0
    elif tsrc == T_U8:
        m8 = t8[e0:e0 + nt]
        for j in range(nt):
            tb[j] = float(m8[j])
    else:
        mf = tf[e0:e0 + nt]
        for j in range(nt):
            tb[j] = float(mf[j])


def activate(x, xb, S, C, c_lo, nc, nt, act, mx, se, pb, T):
    """pb[k*T + j] = p of class c_lo + k at tile voxel j, k < nc.  Softmax
    normalises over all C classes (mx, se: the voxels' max and sum of exps)."""
    if act == SOFTMAX:
        for j in range(nt):
            mx[j] = NINF
            se[j] = 0.0
        for c in range(C):
            xr = x[xb + c * S:xb + c * S + nt]
            for j in range(nt):
                mx[j] = vmax(mx[j], float(xr[j]))
        for c in range(C):
            xr = x[xb + c * S:xb + c * S + nt]
            k = c - c_lo
            if k >= 0 and k < nc:
                pr = pb[k * T:k * T + nt]
                for j in range(nt):
                    e = exp(float(xr[j]) - mx[j])
                    pr[j] = e
                    se[j] += e
            else:
                for j in range(nt):
                    se[j] += exp(float(xr[j]) - mx[j])
        for k in range(nc):
            pr = pb[k * T:k * T + nt]
            for j in range(nt):
                pr[j] = pr[j] / se[j]
    else:
        for k in range(nc):
            e0 = xb + (c_lo + k) * S
            xr = x[e0:e0 + nt]
            pr = pb[k * T:k * T + nt]
            if act == SIGMOID:
                for j in range(nt):
                    pr[j] = activate_one(float(xr[j]), SIGMOID)
            else:
                for j in range(nt):
                    pr[j] = activate_one(float(xr[j]), NONE)


def stats_tile(pb, T, nt, c_lo, nc, xb, S, labels, lab, keep, base, t8, tf, tsrc, squared,
               tb, a1, a2, a3):
    """Adds the tile's (I, P, T) terms of class c_lo + k at voxel j into the
    per-lane accumulators a1, a2, a3 [k*T + j] (summed over the lanes j by the
    caller, in a fixed order); voxels with keep[j] == 0 add exactly 0."""
    for k in range(nc):
        c = c_lo + k
        load_target(labels, lab, c + base, t8, tf, tsrc, xb + c * S, nt, tb)
        pr = pb[k * T:k * T + nt]
        r1 = a1[k * T:k * T + nt]
        r2 = a2[k * T:k * T + nt]
        r3 = a3[k * T:k * T + nt]
        if squared:
            for j in range(nt):
                i_, p_, t_ = terms(pr[j], tb[j], True)
                kj = keep[j] != 0
                r1[j] += i_ if kj else 0.0
                r2[j] += p_ if kj else 0.0
                r3[j] += t_ if kj else 0.0
        else:
            for j in range(nt):
                i_, p_, t_ = terms(pr[j], tb[j], False)
                kj = keep[j] != 0
                r1[j] += i_ if kj else 0.0
                r2[j] += p_ if kj else 0.0
                r3[j] += t_ if kj else 0.0


def dloss_tile(pr, tb, a, b, squared, nt, gb):
    """gb[j] = dL/dp of one class at tile voxel j."""
    if squared:
        for j in range(nt):
            gb[j] = dloss(pr[j], tb[j], a, b, True)
    else:
        for j in range(nt):
            gb[j] = dloss(pr[j], tb[j], a, b, False)


def grad_tile(x, xb, S, C, W, nt, T, act, squared, labels, lab, keep, base, t8, tf, tsrc, coef,
              cb0, mx, se, pb, tb, gb, dot, grad):
    """grad of the tile's elements (all C classes), in class windows of W
    (pb holds W*T values); coef[cb0 + 2c + (0, 1)] = (a, b) of class c;
    elements of voxels with keep[j] == 0 get 0."""
    nw = (C + W - 1) // W
    if act == SOFTMAX:
        for j in range(nt):
            dot[j] = 0.0
        for w in range(nw):
            c_lo = w * W
            nc = min(W, C - c_lo)
            activate(x, xb, S, C, c_lo, nc, nt, act, mx, se, pb, T)
            for k in range(nc):
                c = c_lo + k
                pr = pb[k * T:k * T + nt]
                load_target(labels, lab, c + base, t8, tf, tsrc, xb + c * S, nt, tb)
                dloss_tile(pr, tb, coef[cb0 + 2 * c], coef[cb0 + 2 * c + 1], squared, nt, gb)
                for j in range(nt):
                    dot[j] += pr[j] * gb[j]
    for w in range(nw):
        c_lo = w * W
        nc = min(W, C - c_lo)
        if act != SOFTMAX or nw > 1:   # one softmax window: pb still holds it
            activate(x, xb, S, C, c_lo, nc, nt, act, mx, se, pb, T)
        for k in range(nc):
            c = c_lo + k
            pr = pb[k * T:k * T + nt]
            load_target(labels, lab, c + base, t8, tf, tsrc, xb + c * S, nt, tb)
            dloss_tile(pr, tb, coef[cb0 + 2 * c], coef[cb0 + 2 * c + 1], squared, nt, gb)
            gr = grad[xb + c * S:xb + c * S + nt]
            if act == SOFTMAX:
                for j in range(nt):
                    v = chain(pr[j], gb[j], dot[j], SOFTMAX)
                    gr[j] = v if keep[j] != 0 else 0.0
            elif act == SIGMOID:
                for j in range(nt):
                    v = chain(pr[j], gb[j], 0.0, SIGMOID)
                    gr[j] = v if keep[j] != 0 else 0.0
            else:
                for j in range(nt):
                    v = chain(pr[j], gb[j], 0.0, NONE)
                    gr[j] = v if keep[j] != 0 else 0.0


SCALARS = (vmax, sigmoid, activate_one, terms, dloss, chain)
# in dependency order
LOOPS = (load_labels, load_target, activate, stats_tile, dloss_tile, grad_tile)


def compile_for(jit, loop_jit=None, primitives=None):
    """Every function above compiled, as a dict by name: the scalar ones with
    ``jit`` (``njit(inline="always")`` or ``cuda.jit(device=True)``), the
    tile loops with ``loop_jit`` (default ``jit``).  ``primitives`` maps names
    in PRIMITIVES to compiled replacements (the CPU backend's vectorisable
    ones).  The functions call each other through one namespace holding the
    compiled versions."""
    import builtins

    from . import compile_into
    namespace = {"math": math, "__builtins__": builtins}
    namespace.update({name: globals()[name] for name in PRIMITIVES})
    namespace.update({name: globals()[name] for name in (
        "NONE", "SOFTMAX", "SIGMOID", "T_U8", "T_I32", "T_I64", "T_FLOAT", "NINF")})
    namespace.update(primitives or {})
    return compile_into(namespace, ((SCALARS, jit), (LOOPS, loop_jit or jit)))
