"""Branch-free float64 ``exp, log, log1p, expm1, tanh`` for the Numba CPU backend.

Numba lowers ``math.exp`` and friends to libm calls, which LLVM's loop
vectoriser cannot widen (there is no SVML here), so a loop calling them runs
one element at a time.  These versions are plain arithmetic: range reduction,
a polynomial, and the special cases as selects rather than branches, with the
bit fiddling done by :func:`as_int` / :func:`as_float` (an LLVM ``bitcast``,
which vectorises).  Once LLVM inlines them into a loop, the loop vectoriser
can if-convert and widen the whole body.

Accuracy (``tests/test_numba_vmath.py``): at most 2 ulp from the correctly
rounded result over the whole float64 range (measured: about 1 ulp), with

* ``exp``: +inf above 709.78, 0 below -745.13, subnormal results rounded
  from the normal-range result (error at most 1 subnormal ulp);
* ``log``: subnormal inputs handled; ``log(0) = -inf``, ``log(x < 0) = nan``;
* ``log1p``: ``log1p(-1) = -inf``, ``log1p(x < -1) = nan``, exact for tiny x;
* ``expm1`` and ``tanh``: exact for tiny x, -1 / ±1 at saturation;
* nan in, nan out (the quiet nan of the hardware, payload not kept); signed
  zeros kept; ±inf mapped as libm does.

No fast-math: the range reduction relies on IEEE rounding (the 1.5·2^52
"shift" trick) and the selects on nan comparing false.
"""
import math

import numba
from llvmlite import ir
from numba import types
from numba.core import cgutils
from numba.extending import intrinsic

__all__ = ["exp", "log", "log1p", "expm1", "tanh", "as_int", "as_float", "PRIMITIVES"]


@intrinsic
def as_int(typingctx, x):
    """The bits of a float64 as an int64 (a bitcast, no conversion)."""
    if x != types.float64:
        return None

    def codegen(context, builder, signature, args):
        return builder.bitcast(args[0], ir.IntType(64))
    return types.int64(types.float64), codegen


@intrinsic
def as_float(typingctx, i):
    """An int64's bits as a float64 (a bitcast, no conversion)."""
    if not isinstance(i, types.Integer):
        return None

    def codegen(context, builder, signature, args):
        value = context.cast(builder, args[0], signature.args[0], types.int64)
        return builder.bitcast(value, ir.DoubleType())
    return types.float64(i), codegen


# numpy error model: x / 0 is inf, not a ZeroDivisionError branch (which blocks
# vectorising).  LLVM inlines the small functions; log1p and tanh are inlined at
# the Numba IR level ("always"), since LLVM's inliner declines them and a loop
# with a call left in it stays scalar.
@intrinsic
def fma(typingctx, a, b, c):
    """a * b + c with one rounding (llvm.fma: one instruction where the CPU has FMA)."""
    if not (a == b == c == types.float64):
        return None

    def codegen(context, builder, signature, args):
        d = ir.DoubleType()
        f = cgutils.get_or_insert_function(builder.module, ir.FunctionType(d, [d, d, d]),
                                           "llvm.fma.f64")
        return builder.call(f, args)
    return types.float64(types.float64, types.float64, types.float64), codegen


_jit = numba.njit(nogil=True, error_model="numpy")
_jit_inline = numba.njit(nogil=True, error_model="numpy", inline="always")

INV_LN2 = 1.4426950408889634
SHIFT = 6755399441055744.0            # 1.5 * 2**52: x + SHIFT - SHIFT rounds x to an integer
SHIFT_BITS = 0x4338000000000000
LN2_HI = 6.93147180369123816490e-01   # 32 significant bits: k * LN2_HI is exact for |k| < 2**21
LN2_LO = 1.90821492927058770002e-10
SIGN = -0x8000000000000000
MANT = 0x000FFFFFFFFFFFFF
SQRT1_2_HI = 0x3FE6A09E00000000       # the high word of sqrt(1/2), as musl/fdlibm reduce
ONE_MINUS_SQRT1_2_HI = 0x3FF0000000000000 - SQRT1_2_HI
INF = math.inf
NAN = math.nan
TINY = 2.2250738585072014e-308        # smallest normal
EXP_ZERO = -745.2                     # exp(x) rounds to 0 below -745.1332...

# 1/k! for the Taylor polynomial of exp on |r| <= ln2/2 (truncation error < 5e-18)
C2, C3, C4, C5, C6, C7 = (1 / 2, 1 / 6, 1 / 24, 1 / 120, 1 / 720, 1 / 5040)
C8, C9, C10, C11, C12, C13 = (1 / 40320, 1 / 362880, 1 / 3628800, 1 / 39916800,
                              1 / 479001600, 1 / 6227020800)

# fdlibm's log(1 + f) = f - f^2/2 + s (f^2/2 + R(s^2)), s = f / (2 + f)
LG1 = 6.666666666666735130e-01
LG2 = 3.999999999940941908e-01
LG3 = 2.857142874366239149e-01
LG4 = 2.222219843214978396e-01
LG5 = 1.818357216161805012e-01
LG6 = 1.531383769920937332e-01
LG7 = 1.479819860511658591e-01

# (tanh(r) - r) / r^3 as a polynomial in s = r^2 on [0, 0.625^2] (mpmath.chebyfit,
# degree 11, error 4e-18)
TANH_R = (6.485163482793113e-06, -3.12011014257974e-05, 9.257116129556769e-05,
          -0.0002375906496055562, 0.0005896606577757043, -0.0014557754120478055,
          0.0035921217511549622, -0.008863235103240878, 0.021869488519008305,
          -0.05396825396789699, 0.13333333333333042, -0.3333333333333333)
TH0, TH1, TH2, TH3, TH4, TH5, TH6, TH7, TH8, TH9, TH10, TH11 = TANH_R
TANH_SMALL = 0.625


@_jit
def _pow2(k):
    """2**k for an int64 k in [-1022, 1023]."""
    return as_float((k + 1023) << 52)


@_jit
def _to_float(k):
    """float(k) for an int64 |k| < 2**51, by the shift trick (no int64 -> double
    conversion instruction, which AVX2 lacks)."""
    return as_float(k + SHIFT_BITS) - SHIFT


@_jit
def _exp_tail(r):
    """(exp(r) - 1 - r) / r^2 for |r| <= ln2/2: the Taylor polynomial to degree 13."""
    p = fma(C13, r, C12)
    p = fma(p, r, C11)
    p = fma(p, r, C10)
    p = fma(p, r, C9)
    p = fma(p, r, C8)
    p = fma(p, r, C7)
    p = fma(p, r, C6)
    p = fma(p, r, C5)
    p = fma(p, r, C4)
    p = fma(p, r, C3)
    return fma(p, r, C2)


@_jit
def exp(x):
    # Beyond 710 the result overflows to inf by itself (nan stays nan: comparisons
    # are false).  Below EXP_ZERO it is 0, set by a select: computing it would
    # underflow, and an underflowing vector multiply costs a microcode assist
    # (~100 cycles) on x86 -- exp(-inf) is common (log of a 0 label).
    zero = x < EXP_ZERO
    x = 710.0 if x > 710.0 else x
    x = 0.0 if zero else x
    kd = fma(x, INV_LN2, SHIFT)       # round(x / ln2) in the low mantissa bits
    k = as_int(kd) - SHIFT_BITS
    kd = kd - SHIFT
    r = fma(-kd, LN2_LO, fma(-kd, LN2_HI, x))
    e = 1.0 + fma(r * r, _exp_tail(r), r)
    k1 = k >> 1                       # two factors: k spans [-1075, 1024]
    y = (e * _pow2(k1)) * _pow2(k - k1)
    return 0.0 if zero else y


@_jit
def expm1(x):
    x = 710.0 if x > 710.0 else x
    x = -40.0 if x < -40.0 else x     # expm1(-40) rounds to -1
    kd = fma(x, INV_LN2, SHIFT)
    k = as_int(kd) - SHIFT_BITS
    kd = kd - SHIFT
    r_hi = fma(-kd, LN2_HI, x)        # exact; = x when k = 0
    r_lo = -(kd * LN2_LO)
    r = r_hi + r_lo
    # expm1(x) = 2^k (t + r + r^2 P(r)), t = 1 - 2^-k (1 to working precision beyond
    # k = 60); t + r_hi is summed exactly (|t| >= |r_hi| or t = 0)
    kc = 60 if k > 60 else k
    t = 1.0 - as_float((1023 - kc) << 52)
    hi = t + r_hi
    lo = (t - hi) + r_hi
    q = fma(r * r, _exp_tail(r), r_lo)
    k1 = k >> 1
    y = ((hi + (lo + q)) * _pow2(k1)) * _pow2(k - k1)
    return x if x == 0.0 else y       # keeps -0


@_jit
def _log_core(f, s, dk, c):
    """log(1 + f) + dk ln2 + c for f in [sqrt(1/2) - 1, sqrt(2) - 1), s = f / (2 + f)
    (s only enters a correction of relative size f^2 / 6: a few ulp in s are harmless)."""
    hfsq = 0.5 * f * f
    z = s * s
    w = z * z
    t1 = w * fma(w, fma(w, LG6, LG4), LG2)
    t2 = z * fma(w, fma(w, fma(w, LG7, LG5), LG3), LG1)
    return s * (hfsq + t1 + t2) + (dk * LN2_LO + c) - hfsq + f + dk * LN2_HI


@_jit
def _reduce(ix):
    """(m, k): m in [sqrt(1/2), sqrt(2)) and k with the float of bits ix = m 2^k."""
    ix = ix + ONE_MINUS_SQRT1_2_HI
    k = (ix >> 52) - 1023
    m = as_float((ix & MANT) + SQRT1_2_HI)
    return m, k


@_jit
def log(x):
    sub = x < TINY
    xs = x * 18014398509481984.0 if sub else x   # 2**54: subnormals become normal
    m, k = _reduce(as_int(xs))
    k = k - 54 if sub else k
    f = m - 1.0
    y = _log_core(f, f / (2.0 + f), _to_float(k), 0.0)
    y = x if x == INF else y
    y = -INF if x == 0.0 else y
    return y if x >= 0.0 else NAN


@_jit_inline
def log1p(x):
    u = 1.0 + x
    m, k = _reduce(as_int(u))
    # u is 1 + x rounded: c / u corrects log(u) to log(1 + x) (musl/fdlibm)
    c = (1.0 - (u - x)) if k >= 2 else (x - (u - 1.0))
    near = (x < 0.41421356237309503) and (x > -0.2928932188134524)   # 1 + x in [sqrt(1/2), sqrt(2))
    m = u if near else m
    f = x if near else m - 1.0
    c = 0.0 if near or k >= 54 else c
    k = 0 if near else k
    # one division for both s = f / (2 + f) and c / u = c 2^-k / m
    d2 = 2.0 + f
    inv = 1.0 / (d2 * m)
    s = f * m * inv
    cu = c * _pow2(-(60 if k > 60 else k)) * d2 * inv   # c = 0 there: no inf * 0
    y = _log_core(f, s, _to_float(k), cu)
    y = x if x == INF else y
    y = x if x == 0.0 else y          # keeps -0
    y = -INF if x == -1.0 else y
    return y if x >= -1.0 else NAN


@_jit_inline
def tanh(x):
    ax = abs(x)
    ax = 20.0 if ax > 20.0 else ax    # tanh(20) rounds to 1
    # |x| < 0.625: x + x^3 R(x^2); above, 1 - 2 / (e^2|x| + 1) (result > 0.55)
    s = ax * ax
    p = fma(TH0, s, TH1)
    p = fma(p, s, TH2)
    p = fma(p, s, TH3)
    p = fma(p, s, TH4)
    p = fma(p, s, TH5)
    p = fma(p, s, TH6)
    p = fma(p, s, TH7)
    p = fma(p, s, TH8)
    p = fma(p, s, TH9)
    p = fma(p, s, TH10)
    p = fma(p, s, TH11)
    small = fma(ax, s * p, ax)
    e = expm1(2.0 * ax)
    big = 1.0 - 2.0 / (e + 2.0)
    t = small if ax < TANH_SMALL else big
    return as_float(as_int(t) | (as_int(x) & SIGN))   # copysign: odd, keeps -0


PRIMITIVES = {"exp": exp, "log": log, "log1p": log1p, "expm1": expm1, "tanh": tanh}
