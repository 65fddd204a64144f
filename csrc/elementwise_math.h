/* elementwise_math.h -- the scalar math of each elementwise loss: value l and
 * derivative g = dl/dx from (x, y, a, p0, p1).  A template: elementwise.c
 * includes it once per dtype and vmath flavour, with T (float/double),
 * FL_SFX (f32/f64) and FL_FLV (empty, or _fma) defined, so each loss is
 * written once.  No include guard on purpose.
 *
 * Rules for the code here: straight-line, selects only (so loops
 * vectorise), every constant cast to T (float math stays float), selects
 * ordered so that NaN falls through to a NaN result. */

#define VM(f) FL_CAT3(fl_##f, FL_SFX, FL_FLV)
#define LOSS(name) \
    FL_INLINE void FL_CAT3(ew_##name, FL_SFX, FL_FLV)(T x, T y, T a, T p0, T p1, T *l, T *g)
#define C(v) ((T)(v))

LOSS(mse)
{
    (void)a, (void)p0, (void)p1;
    T d = x - y;
    *l = d * d;
    *g = C(2) * d;
}

LOSS(l1)
{
    (void)a, (void)p0, (void)p1;
    T d = x - y;
    *l = VM(abs)(d);
    *g = VM(sign)(d);
}

/* p0 = delta > 0 */
LOSS(huber)
{
    (void)a, (void)p1;
    T d = x - y, ad = VM(abs)(d);
    int in = ad < p0;
    *l = in ? C(0.5) * d * d : p0 * (ad - C(0.5) * p0);
    *g = in ? d : p0 * VM(sign)(d);
}

/* p0 = beta >= 0; beta = 0 never takes the quadratic branch (inf/NaN there
 * is dropped by the select), which makes it exactly l1 */
LOSS(smooth_l1)
{
    (void)a, (void)p1;
    T d = x - y, ad = VM(abs)(d);
    int in = ad < p0;
    T t = d / p0;
    *l = in ? C(0.5) * d * t : ad - C(0.5) * p0;
    *g = in ? t : VM(sign)(d);
}

/* log cosh d from one expm1 and one log1p, e = expm1(|d|), r = 1/(1+e) = e^-|d|:
 *   |d| < 4:  log1p(cosh|d| - 1),  cosh|d| - 1 = e^2 r / 2    (no cancellation)
 *   else:     |d| - log 2 + log1p(e^-2|d|) = |d| - log 2 + log1p(r^2)
 * tanh |d| = e(e+2) / (e(e+2) + 2) when small (relative accuracy at 1e-20),
 *            (1 - r^2) / (1 + r^2) when large (saturates to 1, e = inf ok). */
LOSS(log_cosh)
{
    (void)a, (void)p0, (void)p1;
    T d = x - y, ad = VM(abs)(d);
    T e = VM(expm1)(ad);
    T r = C(1) / (C(1) + e);
    int small = ad < C(4);
    T arg = small ? C(0.5) * e * e * r : r * r;
    T base = small ? C(0) : ad - C(0.693147180559945309417232121458176568);
    *l = base + VM(log1p)(arg);
    T ee = e * (e + C(2));
    T num = small ? ee : C(1) - r * r;
    T den = small ? ee + C(2) : C(1) + r * r;
    *g = VM(copysign)(num / den, d);
}

/* a = q in (0, 1), pinball loss on r = y - x */
LOSS(quantile)
{
    (void)p0, (void)p1;
    T d = x - y, r = y - x;
    T u = a * r, v = (a - C(1)) * r;
    *l = u > v ? u : v;
    T gg = x > y ? C(1) - a : -a;
    *g = d == d ? gg : d;
}

/* x in [0, 1] (checked before the call); each log clamped at -100 as
 * PyTorch does; gradient exactly PyTorch's backward formula */
LOSS(bce)
{
    (void)a, (void)p0, (void)p1;
    T lx = VM(log)(x), l1x = VM(log1p)(-x);
    lx = lx < C(-100) ? C(-100) : lx;
    l1x = l1x < C(-100) ? C(-100) : l1x;
    *l = -(y * lx + (C(1) - y) * l1x);
    T den = x * (C(1) - x);
    den = den < C(1e-12) ? C(1e-12) : den;
    *g = (x - y) / den;
}

/* a = pos_weight (p0 = 1 when none); softplus and sigmoid from e = exp(-|x|) */
LOSS(bce_logits)
{
    (void)p0, (void)p1;
    T e = VM(exp)(-VM(abs)(x));
    T L = VM(log1p)(e);
    T nx = -x;
    T sp = (nx > C(0) ? nx : C(0)) + L; /* softplus(-x) */
    T lw = C(1) + (a - C(1)) * y;
    *l = (C(1) - y) * x + lw * sp;
    T inv = C(1) / (C(1) + e);
    T sneg = x >= C(0) ? e * inv : inv; /* sigmoid(-x) */
    *g = (C(1) - y) - lw * sneg;
}

/* p0 = alpha (< 0: no alpha weighting), p1 = gamma >= 0.  Log space for the
 * modulating factor m^gamma, m = 1 - p_t = p(1 - y) + (1 - p) y.  m itself is
 * a sum of two non-negative terms (accurate in linear space); it underflows
 * only for hard labels, where log m is exactly lq (y = 1) or lp (y = 0). */
LOSS(sigmoid_focal)
{
    (void)a;
    const T alpha = p0, gamma = p1;
    T ax = VM(abs)(x);
    T e = VM(exp)(-ax);
    T L = VM(log1p)(e);
    T inv = C(1) / (C(1) + e);
    T lp = -((x < C(0) ? -x : C(0)) + L); /* log sigmoid(x) */
    T lq = -((x > C(0) ? x : C(0)) + L);  /* log sigmoid(-x) */
    T p = x >= C(0) ? inv : e * inv;      /* sigmoid(x) */
    T q = x >= C(0) ? e * inv : inv;      /* sigmoid(-x) */
    T ce = -(y * lp + (C(1) - y) * lq);
    T m = p * (C(1) - y) + q * y;
    T logm = VM(log)(m);
    logm = y == C(1) ? lq : logm;
    logm = y == C(0) ? lp : logm;
    T at = alpha >= C(0) ? alpha * y + (C(1) - alpha) * (C(1) - y) : C(1);
    T mg = VM(exp)(gamma * logm);
    *l = at * ce * mg;
    /* d(m^gamma)/dx = gamma (1 - 2y) m^(gamma-1) p q: exponent <= 0 */
    T t2 = ce * gamma * (C(1) - C(2) * y) * VM(exp)((gamma - C(1)) * logm + lp + lq);
    t2 = gamma == C(0) ? C(0) : t2;
    *g = at * ((p - y) * mg + t2);
}

/* p0 = margin, p1 != 0: squared; y = +-1 (checked before the call) */
LOSS(hinge)
{
    (void)a;
    T z = p0 - y * x;
    int sq = p1 != C(0);
    T h = z < C(0) ? C(0) : z; /* max(0, z), NaN kept */
    *l = sq ? h * h : h;
    T gp = sq ? C(-2) * y * z : -y;
    *g = z > C(0) ? gp : (z == z ? C(0) : z);
}

#undef VM
#undef LOSS
#undef C
