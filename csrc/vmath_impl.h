/* vmath_impl.h -- the bodies of vmath.h, a template: included once per
 * flavour, FL_V(name) naming the functions and FL_MADD(a, b, c) being either
 * a*b + c (two roundings) or fma(a, b, c) (one).  The flavour is explicit
 * because the build has -ffp-contract=off: GCC never fuses on its own, so a
 * function gives the same bits in whatever loop it is inlined.  No guard. */
/* ---- small helpers, one per dtype ------------------------------------------ */
FL_INLINE float FL_V(fl_abs_f32)(float x) { return __builtin_fabsf(x); }
FL_INLINE double FL_V(fl_abs_f64)(double x) { return __builtin_fabs(x); }
/* sign(d): +1, -1, d itself for +-0 and NaN (so NaN propagates) */
FL_INLINE float FL_V(fl_sign_f32)(float d) { return d > 0 ? 1.0f : (d < 0 ? -1.0f : d); }
FL_INLINE double FL_V(fl_sign_f64)(double d) { return d > 0 ? 1.0 : (d < 0 ? -1.0 : d); }
/* a*b + c, fused in the fma flavour */
FL_INLINE float FL_V(fl_madd_f32)(float a, float b, float c) { return FL_MADD(a, b, c); }
FL_INLINE double FL_V(fl_madd_f64)(double a, double b, double c) { return FL_MADD(a, b, c); }
FL_INLINE float FL_V(fl_copysign_f32)(float a, float s) { return __builtin_copysignf(a, s); }
FL_INLINE double FL_V(fl_copysign_f64)(double a, double s) { return __builtin_copysign(a, s); }

/* ===================================================================== exp */
/* 2^k as two factors, so that k in [-150, 129] (float) / [-1076, 1025]
 * (double) gives correct subnormals and overflow without special cases. */

FL_INLINE float FL_V(fl_exp_f32)(float x)
{
    const float magic = 12582912.0f; /* 1.5 * 2^23 */
    float xc = x < -104.0f ? -104.0f : x; /* NaN passes through both */
    xc = xc > 89.0f ? 89.0f : xc;
    float t = FL_MADD(xc, 1.44269504088896341f, magic);
    float kf = t - magic;
    int32_t k = (int32_t)(fl_bits_f32(t) - fl_bits_f32(magic));
    float r = xc - kf * 0.693359375f; /* exact: ln2 hi has 9 bits */
    r = FL_MADD(kf, 2.12194440e-4f, r);
    float p = 1.9875691500e-4f; /* Cephes expf, |r| <= ln2/2 */
    p = FL_MADD(p, r, 1.3981999507e-3f);
    p = FL_MADD(p, r, 8.3334519073e-3f);
    p = FL_MADD(p, r, 4.1665795894e-2f);
    p = FL_MADD(p, r, 1.6666665459e-1f);
    p = FL_MADD(p, r, 5.0000001201e-1f);
    float y = p * (r * r) + r + 1.0f;
    int32_t k1 = k >> 1, k2 = k - k1;
    float s1 = fl_float_f32((uint32_t)(k1 + 127) << 23);
    float s2 = fl_float_f32((uint32_t)(k2 + 127) << 23);
    return y * s1 * s2;
}

FL_INLINE double FL_V(fl_exp_f64)(double x)
{
    const double magic = 6755399441055744.0; /* 1.5 * 2^52 */
    double xc = x < -746.0 ? -746.0 : x;
    xc = xc > 710.0 ? 710.0 : xc;
    double t = FL_MADD(xc, 1.4426950408889634, magic);
    double kf = t - magic;
    double r = xc - kf * 6.93147180369123816490e-01; /* exact: low 21 bits 0 */
    r = FL_MADD(kf, -1.90821492927058770002e-10, r);
    /* Taylor to degree 13: remainder < 4e-18 on |r| <= ln2/2 */
    double q = 1.0 / 6227020800.0;
    q = FL_MADD(q, r, 1.0 / 479001600.0);
    q = FL_MADD(q, r, 1.0 / 39916800.0);
    q = FL_MADD(q, r, 1.0 / 3628800.0);
    q = FL_MADD(q, r, 1.0 / 362880.0);
    q = FL_MADD(q, r, 1.0 / 40320.0);
    q = FL_MADD(q, r, 1.0 / 5040.0);
    q = FL_MADD(q, r, 1.0 / 720.0);
    q = FL_MADD(q, r, 1.0 / 120.0);
    q = FL_MADD(q, r, 1.0 / 24.0);
    q = FL_MADD(q, r, 1.0 / 6.0);
    q = FL_MADD(q, r, 0.5);
    double y = 1.0 + (r + q * (r * r));
    /* k = k1 + k2, k1 ~ k/2 by the same rounding trick: only 64-bit add,
     * subtract and shift-left, which AVX2 has (it has no 64-bit sra). */
    double t1 = kf * 0.5 + magic;
    uint64_t k = fl_bits_f64(t) - fl_bits_f64(magic);
    uint64_t k1 = fl_bits_f64(t1) - fl_bits_f64(magic);
    uint64_t k2 = k - k1;
    double s1 = fl_float_f64((k1 + 1023) << 52);
    double s2 = fl_float_f64((k2 + 1023) << 52);
    return y * s1 * s2;
}

/* ===================================================================== log */
/* x > 0 finite is split as 2^k * m, m in [sqrt(1/2), sqrt(2)), with unsigned
 * integer ops only: adding (1.0 - sqrt(1/2)) to the bits carries into the
 * exponent exactly when m >= sqrt(1/2)... after subtracting k from the
 * exponent. */

/* log(1 + f) + k ln2 (+ c, a small correction) for f = m - 1, float32, Cephes */
FL_INLINE float FL_V(fl_logcore_f32)(float f, float k, float c)
{
    float z = f * f;
    float p = 7.0376836292e-2f;
    p = FL_MADD(p, f, -1.1514610310e-1f);
    p = FL_MADD(p, f, 1.1676998740e-1f);
    p = FL_MADD(p, f, -1.2420140846e-1f);
    p = FL_MADD(p, f, 1.4249322787e-1f);
    p = FL_MADD(p, f, -1.6668057665e-1f);
    p = FL_MADD(p, f, 2.0000714765e-1f);
    p = FL_MADD(p, f, -2.4999993993e-1f);
    p = FL_MADD(p, f, 3.3333331174e-1f);
    float y = p * f * z;
    y = y + (k * -2.12194440e-4f + c);
    y = y - 0.5f * z;
    return (f + y) + k * 0.693359375f;
}

/* m - 1 and k of x = 2^k m; x positive, normal, finite */
FL_INLINE float FL_V(fl_logsplit_f32)(float x, float *k)
{
    uint32_t ix = fl_bits_f32(x);
    uint32_t kb = (ix + (0x3f800000u - 0x3f3504f3u)) >> 23; /* k + 127 */
    float m = fl_float_f32(ix - ((kb - 127u) << 23));
    *k = (float)(int32_t)kb - 127.0f;
    return m - 1.0f;
}

FL_INLINE float FL_V(fl_log_f32)(float x)
{
    int sub = x < 1.17549435e-38f; /* subnormal: scale up by 2^23 first */
    float xs = sub ? x * 8388608.0f : x;
    float k;
    float f = FL_V(fl_logsplit_f32)(xs, &k);
    k = sub ? k - 23.0f : k;
    float r = FL_V(fl_logcore_f32)(f, k, 0.0f);
    r = x == INFINITY ? x : r;
    return x > 0 ? r : (x == 0 ? -INFINITY : NAN);
}

/* log1p(x) = log(u) + c/u, u = fl(1 + x), c = (1 + x) - u exactly. */
FL_INLINE float FL_V(fl_log1p_f32)(float x)
{
    float u = 1.0f + x;
    float c = x >= 1.0f ? 1.0f - (u - x) : x - (u - 1.0f); /* both exact */
    float k;
    float f = FL_V(fl_logsplit_f32)(u, &k); /* u >= 2^-24: never subnormal */
    float r = FL_V(fl_logcore_f32)(f, k, c / u);
    r = x == INFINITY ? x : r;
    r = x > -1.0f ? r : (x == -1.0f ? -INFINITY : NAN);
    return x == 0 ? x : r; /* keeps -0 */
}

/* fdlibm log core: log(1 + f) + k ln2 + c, with s = f / (2 + f) given. */
FL_INLINE double FL_V(fl_logcore_f64)(double f, double s, double k, double c)
{
    const double Lg1 = 6.666666666666735130e-01, Lg2 = 3.999999999940941908e-01,
                 Lg3 = 2.857142874366239149e-01, Lg4 = 2.222219843214978396e-01,
                 Lg5 = 1.818357216161805012e-01, Lg6 = 1.531383769920937332e-01,
                 Lg7 = 1.479819860511658591e-01;
    double hfsq = 0.5 * f * f;
    double z = s * s, w = z * z;
    double t1 = w * (Lg2 + w * (Lg4 + w * Lg6));
    double t2 = z * (Lg1 + w * (Lg3 + w * (Lg5 + w * Lg7)));
    double R = t2 + t1;
    return k * 6.93147180369123816490e-01 -
           ((hfsq - (s * (hfsq + R) + (k * 1.90821492927058770002e-10 + c))) - f);
}

FL_INLINE double FL_V(fl_logsplit_f64)(double x, double *k)
{
    uint64_t ix = fl_bits_f64(x);
    uint64_t kb = (ix + (0x3ff0000000000000ull - 0x3fe6a09e667f3bcdull)) >> 52;
    double m = fl_float_f64(ix - ((kb - 1023u) << 52));
    /* int64 -> double without cvtqq2pd (AVX2 lacks it): 2^52 + kb, exactly */
    *k = fl_float_f64(kb | 0x4330000000000000ull) - (4503599627370496.0 + 1023.0);
    return m - 1.0;
}

FL_INLINE double FL_V(fl_log_f64)(double x)
{
    int sub = x < 2.2250738585072014e-308;
    double xs = sub ? x * 18014398509481984.0 : x; /* 2^54 */
    double k;
    double f = FL_V(fl_logsplit_f64)(xs, &k);
    k = sub ? k - 54.0 : k;
    double r = FL_V(fl_logcore_f64)(f, f / (2.0 + f), k, 0.0);
    r = x == INFINITY ? x : r;
    return x > 0 ? r : (x == 0 ? -INFINITY : NAN);
}

FL_INLINE double FL_V(fl_log1p_f64)(double x)
{
    double u = 1.0 + x;
    double c = x >= 1.0 ? 1.0 - (u - x) : x - (u - 1.0);
    double k;
    double f = FL_V(fl_logsplit_f64)(u, &k);
    /* one division for both s = f/(2+f) and c/u: only correction terms
     * depend on them, so the extra rounding does not show */
    int huge = u > 1e18; /* c/u is below 2^-60 there: drop it, keep (2+f)u finite */
    double uc = huge ? 1.0 : u;
    c = huge ? 0.0 : c;
    double inv = 1.0 / ((2.0 + f) * uc);
    double r = FL_V(fl_logcore_f64)(f, f * uc * inv, k, c * (2.0 + f) * inv);
    r = x == INFINITY ? x : r;
    r = x > -1.0 ? r : (x == -1.0 ? -INFINITY : NAN);
    return x == 0 ? x : r;
}

/* =================================================================== expm1 */
/* expm1(x) = 2^k (expm1(r) + 1) - 1 = 2^k expm1(r) + (2^k - 1); for k = 0
 * it is the polynomial alone, exact in r = x, so small x keeps full relative
 * precision.  2^k is capped at the largest finite power (k = 128 / 1024 only
 * happens right at overflow) and finished by a doubling. */

FL_INLINE float FL_V(fl_expm1_f32)(float x)
{
    const float magic = 12582912.0f;
    float xc = x < -30.0f ? -30.0f : x; /* expm1(-30) rounds to -1 */
    xc = xc > 89.0f ? 89.0f : xc;
    float t = FL_MADD(xc, 1.44269504088896341f, magic);
    float kf = t - magic;
    int32_t k = (int32_t)(fl_bits_f32(t) - fl_bits_f32(magic));
    float r = xc - kf * 0.693359375f;
    r = FL_MADD(kf, 2.12194440e-4f, r);
    float q = 1.0f / 362880.0f; /* Taylor to degree 9 */
    q = FL_MADD(q, r, 1.0f / 40320.0f);
    q = FL_MADD(q, r, 1.0f / 5040.0f);
    q = FL_MADD(q, r, 1.0f / 720.0f);
    q = FL_MADD(q, r, 1.0f / 120.0f);
    q = FL_MADD(q, r, 1.0f / 24.0f);
    q = FL_MADD(q, r, 1.0f / 6.0f);
    q = FL_MADD(q, r, 0.5f);
    float p = r + q * (r * r);
    int32_t kk = k > 127 ? 127 : k;
    float s = fl_float_f32((uint32_t)(kk + 127) << 23);
    float res = FL_MADD(s, p, s - 1.0f);
    res = k > 127 ? res * 2.0f : res;
    return x == 0 ? x : res;
}

FL_INLINE double FL_V(fl_expm1_f64)(double x)
{
    const double magic = 6755399441055744.0;
    double xc = x < -40.0 ? -40.0 : x;
    xc = xc > 710.0 ? 710.0 : xc;
    double t = FL_MADD(xc, 1.4426950408889634, magic);
    double kf = t - magic;
    uint64_t k = fl_bits_f64(t) - fl_bits_f64(magic);
    double r = xc - kf * 6.93147180369123816490e-01;
    r = FL_MADD(kf, -1.90821492927058770002e-10, r);
    double q = 1.0 / 87178291200.0; /* Taylor to degree 14 */
    q = FL_MADD(q, r, 1.0 / 6227020800.0);
    q = FL_MADD(q, r, 1.0 / 479001600.0);
    q = FL_MADD(q, r, 1.0 / 39916800.0);
    q = FL_MADD(q, r, 1.0 / 3628800.0);
    q = FL_MADD(q, r, 1.0 / 362880.0);
    q = FL_MADD(q, r, 1.0 / 40320.0);
    q = FL_MADD(q, r, 1.0 / 5040.0);
    q = FL_MADD(q, r, 1.0 / 720.0);
    q = FL_MADD(q, r, 1.0 / 120.0);
    q = FL_MADD(q, r, 1.0 / 24.0);
    q = FL_MADD(q, r, 1.0 / 6.0);
    q = FL_MADD(q, r, 0.5);
    double p = r + q * (r * r);
    int top = kf > 1023.0;
    uint64_t kk = top ? 1023 : k;
    double s = fl_float_f64((kk + 1023) << 52);
    double res = FL_MADD(s, p, s - 1.0);
    res = top ? res * 2.0 : res;
    return x == 0 ? x : res;
}
