/* elementwise.c -- losses of the form sum_i w_i * l(x_i, y_i, a_i), with the
 * per-element value and derivative.
 *
 * One loop skeleton (EW_BLOCK) is instantiated per loss x dtype x ISA path;
 * a loss only contributes its scalar math (elementwise_math.h).  The driver
 * (ew_unit_*) cuts a unit into sub-blocks, feeds the skeleton and sums the
 * values into the fixed float64 lanes of common.h, which makes `total`
 * independent of the thread count and of scheduling. */
#define _GNU_SOURCE
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>

#include "fastloss.h"
#include "common.h"
#include "vmath.h" /* before any target attribute: its helpers inline everywhere */


/* the loss math per dtype x vmath flavour (plain, _fma) */
#define T float
#define FL_SFX f32
#define FL_FLV
#include "elementwise_math.h"
#undef FL_FLV
#define FL_FLV _fma
#include "elementwise_math.h"
#undef FL_FLV
#undef T
#undef FL_SFX
#define T double
#define FL_SFX f64
#define FL_FLV
#include "elementwise_math.h"
#undef FL_FLV
#define FL_FLV _fma
#include "elementwise_math.h"
#undef FL_FLV
#undef T
#undef FL_SFX

/* ---- loss table ----------------------------------------------------------- */
/* Kernels = the public losses, then internal variants that fl_elementwise
 * picks by parameter value (not visible in the ABI). */
#define FL_EW_INTERNAL(X) X(sigmoid_focal_ipow)
#define FL_EW_KERNELS(X) FL_ELEMENTWISE_LOSSES(X) FL_EW_INTERNAL(X)
enum {
#define X(name) FL_LOSS_##name,
    FL_ELEMENTWISE_LOSSES(X)
#undef X
    FL_NLOSS
};
enum {
    FL_INTERNAL_BEFORE = FL_NLOSS - 1,
#define X(name) FL_LOSS_##name,
    FL_EW_INTERNAL(X)
#undef X
    FL_NKERNEL
};
static const char *const loss_names[FL_NLOSS] = {
#define X(name) #name,
    FL_ELEMENTWISE_LOSSES(X)
#undef X
};

int fl_ew_count(void) { return FL_NLOSS; }
const char *fl_ew_name(int loss) { return loss >= 0 && loss < FL_NLOSS ? loss_names[loss] : NULL; }

/* ---- ISA selection ----------------------------------------------------------- */
static int isa_max_level;
static _Atomic int isa_level = -1;
static pthread_once_t isa_once = PTHREAD_ONCE_INIT;

static void isa_init(void)
{
    int mx = FL_ISA_BASE;
#if FL_X86
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) {
        mx = FL_ISA_AVX2;
        if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512dq") &&
            __builtin_cpu_supports("avx512vl") && __builtin_cpu_supports("avx512bw"))
            mx = FL_ISA_AVX512;
    }
#endif
    isa_max_level = mx;
    int cur = mx;
    const char *s = getenv("FASTLOSS_ISA"); /* read once; capped at what the CPU has */
    if (s && !strcmp(s, "baseline"))
        cur = FL_ISA_BASE;
    else if (s && !strcmp(s, "avx2"))
        cur = mx < FL_ISA_AVX2 ? mx : FL_ISA_AVX2;
    atomic_store(&isa_level, cur);
}

int fl_max_isa(void)
{
    pthread_once(&isa_once, isa_init);
    return isa_max_level;
}

int fl_isa_now(void)
{
    int v = atomic_load_explicit(&isa_level, memory_order_relaxed);
    if (v >= 0)
        return v;
    pthread_once(&isa_once, isa_init);
    return atomic_load(&isa_level);
}

int fl_get_isa(void) { return fl_isa_now(); }

int fl_set_isa(int level)
{
    int mx = fl_max_isa();
    if (level < 0)
        level = mx;
    if (level > mx)
        return -1;
    atomic_store(&isa_level, level);
    return level;
}

const char *fl_isa_name(int level)
{
    static const char *const names[FL_NISA] = {"baseline", "avx2", "avx512"};
    return level >= 0 && level < FL_NISA ? names[level] : NULL;
}

/* ---- the loop skeleton ---------------------------------------------------- */
enum { EW_VALUE = 1, EW_GRAD = 2, EW_BOTH = 3 };

/* One sub-block of m <= FL_SUB elements.  One loop per mode, so that a
 * forward-only call does not pay for the derivative (dead after inlining). */
#define EW_BLOCK(LOSS, T, S, FLV, ISA, ATTR)                                            \
    ATTR static void ew_##LOSS##_##S##_##ISA(                                           \
        int m, int mode, const T *restrict x, const T *restrict y, const T *restrict w, \
        const T *restrict a, T p0, T p1, T gs, T *restrict lv, T *restrict gv)          \
    {                                                                                   \
        if (mode == EW_VALUE) {                                                         \
            for (int i = 0; i < m; i++) {                                               \
                T l, g;                                                                 \
                ew_##LOSS##_##S##FLV(x[i], y[i], a[i], p0, p1, &l, &g);                      \
                lv[i] = w[i] * l;                                                       \
            }                                                                           \
        } else if (mode == EW_GRAD) {                                                   \
            for (int i = 0; i < m; i++) {                                               \
                T l, g;                                                                 \
                ew_##LOSS##_##S##FLV(x[i], y[i], a[i], p0, p1, &l, &g);                      \
                gv[i] = gs * w[i] * g;                                                  \
            }                                                                           \
        } else {                                                                        \
            for (int i = 0; i < m; i++) {                                               \
                T l, g;                                                                 \
                ew_##LOSS##_##S##FLV(x[i], y[i], a[i], p0, p1, &l, &g);                      \
                lv[i] = w[i] * l;                                                       \
                gv[i] = gs * w[i] * g;                                                  \
            }                                                                           \
        }                                                                               \
    }

/* The lane sum, compiled per ISA too (it runs over every value). */
#define EW_LANES(T, S, ISA, ATTR)                                                        \
    ATTR static void lanes_##S##_##ISA(double *restrict acc, const T *restrict v, int m) \
    {                                                                                    \
        fl_lanes_add_##S(acc, v, m);                                                     \
    }

/* fl_math, per ISA */
#define MATH_FN(T, S, FLV, ISA, ATTR)                                                       \
    ATTR static void math_##S##_##ISA(int fn, const T *restrict x, T *restrict y, int64_t n) \
    {                                                                                    \
        switch (fn) {                                                                    \
        case 0: for (int64_t i = 0; i < n; i++) y[i] = fl_exp_##S##FLV(x[i]); break;          \
        case 1: for (int64_t i = 0; i < n; i++) y[i] = fl_log_##S##FLV(x[i]); break;          \
        case 2: for (int64_t i = 0; i < n; i++) y[i] = fl_log1p_##S##FLV(x[i]); break;        \
        case 3: for (int64_t i = 0; i < n; i++) y[i] = fl_expm1_##S##FLV(x[i]); break;        \
        }                                                                                \
    }

#define EW_PATH(FLV, ISA, ATTR)         \
    EW_LANES(float, f32, ISA, ATTR)     \
    EW_LANES(double, f64, ISA, ATTR)    \
    MATH_FN(float, f32, FLV, ISA, ATTR) \
    MATH_FN(double, f64, FLV, ISA, ATTR)

#define EW_BLOCK_E(...) EW_BLOCK(__VA_ARGS__) /* expands BASE_FLV first */
#define X(name) EW_BLOCK_E(name, float, f32, BASE_FLV, base, ) \
                EW_BLOCK_E(name, double, f64, BASE_FLV, base, )
FL_EW_KERNELS(X)
#undef X
EW_PATH(BASE_FLV, base, )

#if FL_X86
#define X(name) EW_BLOCK(name, float, f32, _fma, avx2, FL_TARGET_AVX2) \
                EW_BLOCK(name, double, f64, _fma, avx2, FL_TARGET_AVX2)
FL_EW_KERNELS(X)
#undef X
EW_PATH(_fma, avx2, FL_TARGET_AVX2)
#define X(name) EW_BLOCK(name, float, f32, _fma, avx512, FL_TARGET_AVX512) \
                EW_BLOCK(name, double, f64, _fma, avx512, FL_TARGET_AVX512)
FL_EW_KERNELS(X)
#undef X
EW_PATH(_fma, avx512, FL_TARGET_AVX512)
#define FL_PATHS(f) {f##_base, f##_avx2, f##_avx512}
#else
#define FL_PATHS(f) {f##_base, NULL, NULL}
#endif

/* ---- dispatch tables [loss][isa] per dtype ------------------------------------ */
typedef void (*ew_blk_f32)(int, int, const float *, const float *, const float *, const float *,
                           float, float, float, float *, float *);
typedef void (*ew_blk_f64)(int, int, const double *, const double *, const double *,
                           const double *, double, double, double, double *, double *);
typedef void (*lanes_f32_fn)(double *, const float *, int);
typedef void (*lanes_f64_fn)(double *, const double *, int);
typedef void (*math_f32_fn)(int, const float *, float *, int64_t);
typedef void (*math_f64_fn)(int, const double *, double *, int64_t);

static const ew_blk_f32 blk_f32[FL_NKERNEL][FL_NISA] = {
#define X(name) FL_PATHS(ew_##name##_f32),
    FL_EW_KERNELS(X)
#undef X
};
static const ew_blk_f64 blk_f64[FL_NKERNEL][FL_NISA] = {
#define X(name) FL_PATHS(ew_##name##_f64),
    FL_EW_KERNELS(X)
#undef X
};
static const lanes_f32_fn lanes_f32[FL_NISA] = FL_PATHS(lanes_f32);
static const lanes_f64_fn lanes_f64[FL_NISA] = FL_PATHS(lanes_f64);
static const math_f32_fn math_f32[FL_NISA] = FL_PATHS(math_f32);
static const math_f64_fn math_f64[FL_NISA] = FL_PATHS(math_f64);

/* ---- the driver: one unit [lo, hi), the same whatever thread runs it -------- */
/* Elements [off, off + m) of a periodic operand (index i % period) into buf. */
#define EW_PERIODIC(T, S)                                                                  \
    static const T *periodic_##S(T *restrict buf, const T *restrict src, int64_t period,  \
                                 int64_t off, int m)                                       \
    {                                                                                      \
        int64_t j = off % period;                                                          \
        for (int i = 0; i < m; i++) {                                                      \
            buf[i] = src[j];                                                               \
            if (++j == period)                                                             \
                j = 0;                                                                     \
        }                                                                                  \
        return buf;                                                                        \
    }
EW_PERIODIC(float, f32)
EW_PERIODIC(double, f64)

/* An operand's sub-block: its own memory, one period read into buf, or buf
 * itself (no operand: buf holds the default, filled once). */
#define EW_OPERAND(S, src, period, buf, off, m)                                        \
    (!(src) ? (buf) : (period) ? periodic_##S(buf, src, period, off, m) : (src) + (off))

/* No weight: a buffer of ones; no param: a buffer of p0.  Keeps one skeleton
 * (loads from L1 cost nothing next to the streams from memory).  A periodic
 * weight or param is copied into the same buffers a sub-block at a time (a
 * (C,) weight is never materialised to the input's size). */
#define EW_UNIT(T, S)                                                                     \
    static double ew_unit_##S(const fl_ew_args *A, ew_blk_##S blk, lanes_##S##_fn lanes,  \
                              int64_t lo, int64_t hi)                                     \
    {                                                                                     \
        T lbuf[FL_SUB], wbuf[FL_SUB], pbuf[FL_SUB];                                       \
        double acc[FL_LANES] = {0};                                                       \
        const int mode = (A->out || A->want_total ? EW_VALUE : 0) | (A->grad ? EW_GRAD : 0); \
        const T p0 = (T)A->p0, p1 = (T)A->p1, gs = (T)A->grad_scale;                      \
        const int fill = hi - lo < FL_SUB ? (int)(hi - lo) : FL_SUB;                      \
        if (!A->weight)                                                                   \
            for (int i = 0; i < fill; i++) wbuf[i] = (T)1;                                \
        if (!A->param)                                                                    \
            for (int i = 0; i < fill; i++) pbuf[i] = p0;                                  \
        for (int64_t off = lo; off < hi; off += FL_SUB) {                                 \
            const int m = hi - off < FL_SUB ? (int)(hi - off) : FL_SUB;                   \
            const T *w = EW_OPERAND(S, (const T *)A->weight, A->weight_period, wbuf, off, m); \
            const T *a = EW_OPERAND(S, (const T *)A->param, A->param_period, pbuf, off, m);   \
            T *lv = A->out ? (T *)A->out + off : lbuf;                                    \
            T *gv = A->grad ? (T *)A->grad + off : NULL;                                  \
            blk(m, mode, (const T *)A->input + off, (const T *)A->target + off, w, a, p0, \
                p1, gs, lv, gv);                                                          \
            if (A->want_total)                                                            \
                lanes(acc, lv, m);                                                        \
        }                                                                                 \
        return fl_lanes_fold(acc);                                                        \
    }
EW_UNIT(float, f32)
EW_UNIT(double, f64)

typedef struct {
    const fl_ew_args *A;
    ew_blk_f32 b32;
    ew_blk_f64 b64;
    lanes_f32_fn l32;
    lanes_f64_fn l64;
    double *sums;
} ew_job;

static void ew_run_unit(void *ctx, int64_t u)
{
    const ew_job *J = ctx;
    int64_t lo = u * FL_UNIT, hi = lo + FL_UNIT < J->A->n ? lo + FL_UNIT : J->A->n;
    J->sums[u] = J->b32 ? ew_unit_f32(J->A, J->b32, J->l32, lo, hi)
                        : ew_unit_f64(J->A, J->b64, J->l64, lo, hi);
}

int fl_elementwise(int loss, int dtype, fl_ew_args *A)
{
    if (!A || loss < 0 || loss >= FL_NLOSS || (dtype != 0 && dtype != 1))
        return -1;
    A->total = 0.0;
    const int64_t n = A->n;
    if (n <= 0 || !(A->out || A->grad || A->want_total))
        return 0;
    /* integer gamma (2 by default): m^gamma by multiplication, no log/exp */
    if (loss == FL_LOSS_sigmoid_focal && (A->p1 == 0 || A->p1 == 1 || A->p1 == 2 ||
                                          A->p1 == 3 || A->p1 == 4))
        loss = FL_LOSS_sigmoid_focal_ipow;
    const int isa = fl_isa_now();
    ew_job J = {A, NULL, NULL, NULL, NULL, NULL};
    if (dtype == 0) {
        J.b32 = blk_f32[loss][isa];
        J.l32 = lanes_f32[isa];
    } else {
        J.b64 = blk_f64[loss][isa];
        J.l64 = lanes_f64[isa];
    }
    const int64_t units = (n + FL_UNIT - 1) / FL_UNIT;
    double small[64];
    J.sums = units <= 64 ? small : malloc((size_t)units * sizeof(double));
    if (!J.sums)
        return -2;
    fl_parallel_for(ew_run_unit, &J, units, fl_threads_for(n));
    if (A->want_total) {
        double t = 0.0; /* in unit order: the deterministic part */
        for (int64_t u = 0; u < units; u++)
            t += J.sums[u];
        A->total = t;
    }
    if (J.sums != small)
        free(J.sums);
    return 0;
}

/* ---- vector math, for the tests ------------------------------------------------ */
int fl_math(int fn, int dtype, const void *x, void *y, int64_t n)
{
    if (fn < 0 || fn > 3 || (dtype != 0 && dtype != 1))
        return -1;
    const int isa = fl_isa_now();
    if (dtype == 0)
        math_f32[isa](fn, x, y, n);
    else
        math_f64[isa](fn, x, y, n);
    return 0;
}

/* ---- value checks ---------------------------------------------------------------- */
/* The scan runs over the same fixed units as the kernels, on the pool; each
 * unit records its first bad index and the first unit that has one wins, so
 * the answer is the first bad index whatever the threads.  Within a unit, per
 * block, a vectorised OR of "bad" flags; only a block with a bad value is
 * scanned again for the position.  Comparisons in T (bounds cast to T, exact
 * for the 0 and 1 the losses use): converting to double stops GCC vectorising. */
#define FIND_BLOCK 4096
enum { CHECK_RANGE, CHECK_PM1 };

#define FIND_IN(T, BAD)                                                       \
    static int64_t find_in_##T(const T *restrict v, int64_t off, int64_t end, \
                               T lo, T hi)                                    \
    {                                                                         \
        for (; off < end; off += FIND_BLOCK) {                                \
            int64_t m = end - off < FIND_BLOCK ? end - off : FIND_BLOCK;      \
            int bad = 0;                                                      \
            for (int64_t i = 0; i < m; i++) {                                 \
                T t = v[off + i];                                             \
                bad |= BAD;                                                   \
            }                                                                 \
            if (bad)                                                          \
                for (int64_t i = 0; i < m; i++) {                             \
                    T t = v[off + i];                                         \
                    if (BAD)                                                  \
                        return off + i;                                       \
                }                                                             \
        }                                                                     \
        return -1;                                                            \
    }
/* lo > hi marks the ±1 check (one function per dtype keeps the loops simple) */
#define BAD_VALUE (lo <= hi ? (!(t >= lo) | !(t <= hi)) /* NaN fails both */ \
                            : ((t != 1) & (t != -1)))
FIND_IN(float, BAD_VALUE)
FIND_IN(double, BAD_VALUE)
#undef BAD_VALUE

typedef struct {
    int dtype;
    const void *x;
    int64_t n;
    double lo, hi;
    int64_t *first; /* per unit */
} scan_job;

static void scan_unit(void *ctx, int64_t u)
{
    const scan_job *J = ctx;
    int64_t off = u * FL_UNIT, end = off + FL_UNIT < J->n ? off + FL_UNIT : J->n;
    J->first[u] = J->dtype == 0 ? find_in_float(J->x, off, end, (float)J->lo, (float)J->hi)
                                : find_in_double(J->x, off, end, J->lo, J->hi);
}

static int64_t scan(int dtype, const void *x, int64_t n, double lo, double hi)
{
    if (dtype != 0 && dtype != 1)
        return -2; /* dtype errors: -2 (no index is negative otherwise) */
    const int64_t units = (n + FL_UNIT - 1) / FL_UNIT;
    int64_t small[64];
    int64_t *first = units <= 64 ? small : malloc((size_t)units * sizeof(int64_t));
    if (!first)
        return dtype == 0 ? find_in_float(x, 0, n, (float)lo, (float)hi)
                          : find_in_double(x, 0, n, lo, hi);
    scan_job J = {dtype, x, n, lo, hi, first};
    fl_parallel_for(scan_unit, &J, units, fl_threads_for(n));
    int64_t found = -1;
    for (int64_t u = 0; u < units && found < 0; u++)
        found = first[u];
    if (first != small)
        free(first);
    return found;
}

int64_t fl_find_outside(int dtype, const void *x, int64_t n, double lo, double hi)
{
    if (!(lo <= hi)) /* an empty range: everything is outside */
        return n > 0 ? 0 : -1;
    return scan(dtype, x, n, lo, hi);
}

int64_t fl_find_not_pm1(int dtype, const void *x, int64_t n) { return scan(dtype, x, n, 1, 0); }
