"""Per-box scalar math of the box regression losses, written once for both Numba targets.

Plain Python on floats, compiled by Numba for the CPU (``njit``) and for the
GPU (``cuda.jit(device=True)``) by :func:`compile_for`, like :mod:`._math` for
the elementwise losses.  Each loss is

    fn(x1, y1, x2, y2, X1, Y1, X2, Y2, eps, eps_alpha) -> (l, g1, g2, g3, g4)

for one box (x1, y1, x2, y2) against its target (X1, Y1, X2, Y2): the loss and
its gradient with respect to the first box, in float64.  The formulas are
torchvision's (ops/_utils.py ``_loss_inter_union``, giou_loss.py,
diou_loss.py ``_diou_iou_loss``, ciou_loss.py), in its order of operations;
the gradient is reverse mode through the same graph with torch's rules: at a
tie, d max(a, b) (and min) is split in half between a and b; no gradient
through the zero branch of the intersection; CIoU's alpha is a constant.  The
C kernels (csrc/boxes_math.h) compute the same, step for step.

``atan`` is called by that plain name: ``math.atan`` by default (both targets
provide it), replaceable per target through :func:`compile_for`.

The tests are written as conditional expressions and ``&`` / ``|`` rather
than ``if`` statements and ``and`` / ``or``: LLVM turns those into selects,
and the comparisons of max / min are coin flips from box to box (branches
there cost more than all the arithmetic).
"""
import math

PRIMITIVES = ("atan",)
atan = math.atan
FOUR_OVER_PI2 = 4.0 / (math.pi ** 2)


def _max(a, b):
    """torch.maximum: NaN from either side propagates."""
    return a if (a > b) | (a != a) else b


def _min(a, b):
    return a if (a < b) | (a != a) else b


def _dmax(g, a, b):
    """g times d max(a, b)/da under torch's rule: 0 where a < b, g/2 at a tie, else g
    (a select, not a product: 0 even when g is inf or nan, as torch's masked_fill)."""
    return 0.0 if a < b else (0.5 * g if a == b else g)


def _dmin(g, a, b):
    return 0.0 if a > b else (0.5 * g if a == b else g)


def _iou_parts(x1, y1, x2, y2, X1, Y1, X2, Y2, eps):
    """(U, U + eps, iou, inside, iw, ih, cw, ch) of one pair of boxes."""
    w = x2 - x1
    h = y2 - y1
    ix1 = _max(x1, X1)
    iy1 = _max(y1, Y1)
    ix2 = _min(x2, X2)
    iy2 = _min(y2, Y2)
    iw = ix2 - ix1
    ih = iy2 - iy1
    inside = (iy2 > iy1) & (ix2 > ix1)
    inter = iw * ih if inside else 0.0
    u = (w * h + (X2 - X1) * (Y2 - Y1)) - inter
    ue = u + eps
    iou = inter / ue
    cw = _max(x2, X2) - _min(x1, X1)
    ch = _max(y2, Y2) - _min(y1, Y1)
    return u, ue, iou, inside, iw, ih, cw, ch


def _chain(x1, y1, x2, y2, X1, Y1, X2, Y2, ue, iou, inside, iw, ih, gU, gcw, gch, gpx, gpy, gw,
           gh):
    """The gradient with respect to the first box, given the partial derivatives of the
    value by U (other than through iou), cw, ch, the centre (gpx = d/dx1 = d/dx2 through
    it, likewise gpy), w and h (other than through U); d value / d iou = -1."""
    rue = 1.0 / ue
    gUt = gU + iou * rue          # iou = I / (U + eps): d/dU = -iou / (U + eps)
    gI = -rue - gUt               # U = w h + W H - I
    gw += gUt * (y2 - y1)
    gh += gUt * (x2 - x1)
    giw = gI * ih if inside else 0.0
    gih = gI * iw if inside else 0.0
    g1 = ((-gw - _dmax(giw, x1, X1)) - _dmin(gcw, x1, X1)) + gpx
    g2 = ((-gh - _dmax(gih, y1, Y1)) - _dmin(gch, y1, Y1)) + gpy
    g3 = ((gw + _dmin(giw, x2, X2)) + _dmax(gcw, x2, X2)) + gpx
    g4 = ((gh + _dmin(gih, y2, Y2)) + _dmax(gch, y2, Y2)) + gpy
    return g1, g2, g3, g4


def _diou_value(x1, y1, x2, y2, X1, Y1, X2, Y2, eps, iou, cw, ch):
    """(value, gcw, gch, gpx, gpy) of 1 - iou + d2 / D2."""
    D2 = (cw * cw + ch * ch) + eps
    dx = (x2 + x1) * 0.5 - (X1 + X2) * 0.5
    dy = (y2 + y1) * 0.5 - (Y1 + Y2) * 0.5
    q = (dx * dx + dy * dy) / D2
    rD2 = 1.0 / D2
    gD2 = -q * rD2
    return (1.0 - iou) + q, 2.0 * gD2 * cw, 2.0 * gD2 * ch, rD2 * dx, rD2 * dy


def giou(x1, y1, x2, y2, X1, Y1, X2, Y2, eps, eps_alpha):
    """1 - (iou - (C - U) / (C + eps)), C the enclosing box's area."""
    u, ue, iou, inside, iw, ih, cw, ch = _iou_parts(x1, y1, x2, y2, X1, Y1, X2, Y2, eps)
    C = cw * ch
    ce = C + eps
    value = 1.0 - (iou - (C - u) / ce)
    rce = 1.0 / ce
    gC = ue * rce * rce
    g1, g2, g3, g4 = _chain(x1, y1, x2, y2, X1, Y1, X2, Y2, ue, iou, inside, iw, ih, -rce,
                            gC * ch, gC * cw, 0.0, 0.0, 0.0, 0.0)
    return value, g1, g2, g3, g4


def diou(x1, y1, x2, y2, X1, Y1, X2, Y2, eps, eps_alpha):
    """1 - iou + d2 / (diag^2 + eps)."""
    u, ue, iou, inside, iw, ih, cw, ch = _iou_parts(x1, y1, x2, y2, X1, Y1, X2, Y2, eps)
    value, gcw, gch, gpx, gpy = _diou_value(x1, y1, x2, y2, X1, Y1, X2, Y2, eps, iou, cw, ch)
    g1, g2, g3, g4 = _chain(x1, y1, x2, y2, X1, Y1, X2, Y2, ue, iou, inside, iw, ih, 0.0, gcw,
                            gch, gpx, gpy, 0.0, 0.0)
    return value, g1, g2, g3, g4


def ciou(x1, y1, x2, y2, X1, Y1, X2, Y2, eps, eps_alpha):
    """DIoU + alpha v, v = 4/pi^2 (atan(W/H) - atan(w/h))^2, alpha = v / (1 - iou + v +
    eps_alpha), a constant for the gradient."""
    u, ue, iou, inside, iw, ih, cw, ch = _iou_parts(x1, y1, x2, y2, X1, Y1, X2, Y2, eps)
    value, gcw, gch, gpx, gpy = _diou_value(x1, y1, x2, y2, X1, Y1, X2, Y2, eps, iou, cw, ch)
    w = x2 - x1
    h = y2 - y1
    r = w / h
    at = atan((X2 - X1) / (Y2 - Y1)) - atan(r)
    v = FOUR_OVER_PI2 * (at * at)
    alpha = v / (((1.0 - iou) + v) + eps_alpha)
    value = value + alpha * v
    gr = -(alpha * FOUR_OVER_PI2 * 2.0 * at) / (1.0 + r * r)
    gw = gr / h                   # r = w / h; torch: g / h and -g w / h^2 (nan at h = 0)
    gh = -gw * r
    g1, g2, g3, g4 = _chain(x1, y1, x2, y2, X1, Y1, X2, Y2, ue, iou, inside, iw, ih, 0.0, gcw,
                            gch, gpx, gpy, gw, gh)
    return value, g1, g2, g3, g4


#: kernel name -> scalar function, in the C table's order (the box records' kernels)
LOSSES = {f.__name__: f for f in (giou, diou, ciou)}
HELPERS = (_max, _min, _dmax, _dmin, _iou_parts, _chain, _diou_value)
#: kernel name -> the run-time code box_loss takes
KINDS = {name: code for code, name in enumerate(LOSSES)}


def box_loss(kind, x1, y1, x2, y2, X1, Y1, X2, Y2, eps, eps_alpha):
    """(value, 4 gradients) of the loss KINDS names by ``kind``: the one dispatch
    of both Numba skeletons."""
    if kind == 0:
        return giou(x1, y1, x2, y2, X1, Y1, X2, Y2, eps, eps_alpha)
    if kind == 1:
        return diou(x1, y1, x2, y2, X1, Y1, X2, Y2, eps, eps_alpha)
    return ciou(x1, y1, x2, y2, X1, Y1, X2, Y2, eps, eps_alpha)


def compile_for(jit, primitives=None):
    """Every loss compiled with ``jit`` (``njit(inline="always", ...)`` or
    ``cuda.jit(device=True)``); the helpers first, bound in a private namespace
    so that the source above stays plain Python.  ``primitives`` maps names in
    PRIMITIVES to compiled replacements."""
    import builtins
    import types

    namespace = {"math": math, "FOUR_OVER_PI2": FOUR_OVER_PI2, "__builtins__": builtins}
    namespace.update({name: globals()[name] for name in PRIMITIVES})
    namespace.update(primitives or {})

    def rebind(fn):
        return types.FunctionType(fn.__code__, namespace, fn.__name__, fn.__defaults__)

    for helper in HELPERS:   # in dependency order: _chain needs _dmax, ...
        namespace[helper.__name__] = jit(rebind(helper))
    out = {name: jit(rebind(fn)) for name, fn in LOSSES.items()}
    namespace.update(out)
    out["box_loss"] = jit(rebind(box_loss))
    return out
