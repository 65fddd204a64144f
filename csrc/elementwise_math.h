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

/* log cosh d, float32: polynomials only (fitted for relative error), no
 * division, one exp.  With a = |d|, E = e^-2a:
 *   a < 1:   a^2 P(a^2)                   tanh a = a Q(a^2)
 *   a >= 1:  a - log 2 + log1p(E),        tanh a = (1 - E)/(1 + E)
 *            log1p(E) = E R(E), 2/(1 + E) = S(E) on [0, e^-2]
 * (saturates: a = 1e30 gives a - log 2 and tanh 1; tiny a gives a^2/2, a). */
FL_INLINE void FL_CAT3(ew_log_cosh32, FL_SFX, FL_FLV)(T d, T *l, T *g)
{
#define H(v, c) v = VM(madd)(v, s, C(c))
    T ad = VM(abs)(d), s = d * d;
    T P = C(8.608419e-05f);
    H(P, -0.0005547566f); H(P, 0.0020756822f); H(P, -0.006709567f);
    H(P, 0.022216368f); H(P, -0.08333298f); H(P, 0.5f);
    T Q = C(-0.00035080127f);
    H(Q, 0.0022732383f); H(Q, -0.007904938f); H(Q, 0.021456175f);
    H(Q, -0.053867836f); H(Q, 0.13332108f); H(Q, -0.33333275f); H(Q, 1.0f);
    T lsmall = s * P, tsmall = ad * Q;
    s = VM(exp)(C(-2) * ad); /* E */
    T R = C(-0.11951945f);
    H(R, 0.19331075f); H(R, -0.24954577f); H(R, 0.33331916f); H(R, -0.49999985f); H(R, 1.0f);
    T S = C(-1.3570536f);
    H(S, 1.9094818f); H(S, -1.9938627f); H(S, 1.9998082f); H(S, -1.9999977f); H(S, 2.0f);
    T llarge = VM(madd)(s, R, ad - C(0.693147180559945309417232121458176568));
    T tlarge = C(1) - s * S;
    int small = ad < C(1);
    *l = small ? lsmall : llarge;
    *g = VM(copysign)(small ? tsmall : tlarge, d);
#undef H
}

/* log cosh d, float64: a series for |d| < 0.5, else one expm1 and one log1p, e = expm1(|d|),
 * r = 1/(1+e) = e^-|d|:
 *   |d| < 4:  log1p(cosh|d| - 1),  cosh|d| - 1 = e^2 r / 2    (no cancellation)
 *   else:     |d| - log 2 + log1p(e^-2|d|) = |d| - log 2 + log1p(r^2)
 * tanh |d| = e(e+2) / (e(e+2) + 2) when small (relative accuracy at 1e-20),
 *            (1 - r^2) / (1 + r^2) when large (saturates to 1, e = inf ok). */
LOSS(log_cosh)
{
    (void)a, (void)p0, (void)p1;
    T d = x - y, ad = VM(abs)(d);
    if (sizeof(T) == 4) { /* compile-time */
        FL_CAT3(ew_log_cosh32, FL_SFX, FL_FLV)(d, l, g);
        return;
    }
    /* |d| < 0.5: the Taylor series in d^2 (17 terms, exact coefficients from
     * the Bernoulli numbers): e^2 r/2 would square the error of e there */
    T s = d * d, P = C(1.2632091406687664e-08);
    P = VM(madd)(P, s, C(-3.3116463500327045e-08)); P = VM(madd)(P, s, C(8.715903837635848e-08));
    P = VM(madd)(P, s, C(-2.3041747198769394e-07)); P = VM(madd)(P, s, C(6.122655795895756e-07));
    P = VM(madd)(P, s, C(-1.6365968284715348e-06)); P = VM(madd)(P, s, C(4.405244525877023e-06));
    P = VM(madd)(P, s, C(-1.1956455712177625e-05)); P = VM(madd)(P, s, C(3.277930227475478e-05));
    P = VM(madd)(P, s, C(-9.09896491907074e-05)); P = VM(madd)(P, s, C(0.0002565805740408915));
    P = VM(madd)(P, s, C(-0.0007386029608251831)); P = VM(madd)(P, s, C(0.0021869488536155205));
    P = VM(madd)(P, s, C(-0.006746031746031746)); P = VM(madd)(P, s, C(0.022222222222222223));
    P = VM(madd)(P, s, C(-0.08333333333333333)); P = VM(madd)(P, s, C(0.5));
    T e = VM(expm1)(ad);
    T r = C(1) / (C(1) + e);
    int small = ad < C(4);
    T arg = small ? C(0.5) * e * e * r : r * r;
    T base = small ? C(0) : ad - C(0.693147180559945309417232121458176568);
    *l = ad < C(0.5) ? s * P : base + VM(log1p)(arg);
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
    T sig = x >= C(0) ? inv : e * inv;  /* sigmoid(x) and sigmoid(-x), both without */
    T sneg = x >= C(0) ? e * inv : inv; /* cancellation */
    /* d/dx = (1 - y) - lw sigmoid(-x) = (1 - y) sigmoid(x) - a y sigmoid(-x): the second
     * form keeps the gradient at confident logits (the first is 0 below x = -17 in f32) */
    *g = (C(1) - y) * sig - a * y * sneg;
}

/* p0 = alpha (< 0: no alpha weighting), p1 = gamma >= 0.
 * m = 1 - p_t = p(1 - y) + (1 - p) y is a sum of two non-negative terms, so
 * it is accurate in linear space; it underflows only for hard labels, where
 * log m is exactly lq (y = 1) or lp (y = 0).  FOCAL_COMMON is the part shared
 * by the general kernel (m^gamma in log space) and the integer-gamma one. */
#define FOCAL_COMMON                                                            \
    const T alpha = p0, gamma = p1;                                             \
    T e = VM(exp)(-VM(abs)(x));                                                 \
    T L = VM(log1p)(e);                                                         \
    T inv = C(1) / (C(1) + e);                                                  \
    T lp = -((x < C(0) ? -x : C(0)) + L); /* log sigmoid(x) */                  \
    T lq = -((x > C(0) ? x : C(0)) + L);  /* log sigmoid(-x) */                 \
    T p = x >= C(0) ? inv : e * inv;      /* sigmoid(x) */                      \
    T q = x >= C(0) ? e * inv : inv;      /* sigmoid(-x) */                     \
    T ce = -(y * lp + (C(1) - y) * lq);                                         \
    T m = p * (C(1) - y) + q * y;                                               \
    T at = alpha >= C(0) ? alpha * y + (C(1) - alpha) * (C(1) - y) : C(1)

LOSS(sigmoid_focal)
{
    (void)a;
    FOCAL_COMMON;
    T logm = VM(log)(m);
    logm = y == C(1) ? lq : logm;
    logm = y == C(0) ? lp : logm;
    T mg = VM(exp)(gamma * logm);
    *l = at * ce * mg;
    /* d(m^gamma)/dx = gamma (1 - 2y) m^(gamma-1) p q, exponent <= 0 */
    T t2 = ce * gamma * (C(1) - C(2) * y) * VM(exp)((gamma - C(1)) * logm + lp + lq);
    t2 = gamma == C(0) ? C(0) : t2;
    *g = at * ((p - y) * mg + t2);
}

/* the same for gamma in {0, 1, 2, 3, 4}: powers by multiplication (linear m
 * underflows only where m^gamma does too); picked by fl_elementwise */
LOSS(sigmoid_focal_ipow)
{
    (void)a;
    FOCAL_COMMON;
    T pw = C(1); /* m^(gamma - 1) for gamma >= 1 */
    pw = gamma >= C(2) ? pw * m : pw;
    pw = gamma >= C(3) ? pw * m : pw;
    pw = gamma >= C(4) ? pw * m : pw;
    T mg = gamma >= C(1) ? pw * m : C(1);
    *l = at * ce * mg;
    T t2 = ce * gamma * (C(1) - C(2) * y) * (pw * (p * q));
    *g = at * ((p - y) * mg + t2);
}
#undef FOCAL_COMMON

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
