/* boxes.c -- box regression losses over n pairs of boxes (x1, y1, x2, y2):
 * torchvision's generalized, distance and complete IoU losses, value and
 * gradient with respect to the first boxes, in one pass.
 *
 * Layout: the boxes are interleaved (AoS, 4 values a box).  A block of
 * BX_BLOCK boxes is deinterleaved into eight SoA stack arrays, the per-box math
 * (boxes_math.h) runs as one straight-line vector loop over them, and the
 * gradient is written back interleaved.  One skeleton (BX_KERNEL) per loss x
 * dtype x ISA path.
 *
 * Sums: [0, n) is cut into units of BX_UNIT boxes; a unit's losses go into
 * FL_LANES float64 lanes by their index within the unit (common.h), the lanes
 * are folded in a fixed order and the unit sums added in unit order, so the
 * total depends on n only, never on the thread count.  The math has no FMA
 * (see boxes_math.h): every ISA path gives the same bits too. */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fastloss.h"
#include "common.h"
#include "boxes_math.h" /* before any target attribute: its helpers inline everywhere */
#if FL_X86
#include <immintrin.h>
#endif

#define T float
#define BX_SFX f32
#include "boxes_math.h"
#undef T
#undef BX_SFX
#define T double
#define BX_SFX f64
#include "boxes_math.h"
#undef T
#undef BX_SFX

/* The box losses, in the order of fl_box_name(). */
#define FL_BOX_LOSSES(X) X(giou, BX_GIOU) X(diou, BX_DIOU) X(ciou, BX_CIOU)

enum {
#define X(name, id) FL_BOX_##name,
    FL_BOX_LOSSES(X)
#undef X
    FL_NBOX
};
static const char *const box_names[FL_NBOX] = {
#define X(name, id) #name,
    FL_BOX_LOSSES(X)
#undef X
};

int fl_box_count(void) { return FL_NBOX; }
const char *fl_box_name(int loss) { return loss >= 0 && loss < FL_NBOX ? box_names[loss] : NULL; }

#define BX_BLOCK 256   /* boxes per SoA block (a multiple of FL_LANES) */
#define BX_UNIT 2048   /* boxes per unit of work and of summation */
#define BX_NT_BYTES (1 << 21) /* gradients from this size on are streamed (bx_stream) */
enum { BX_VALUE = 1, BX_GRAD = 2 };

/* ---- the loop skeleton ------------------------------------------------------- */
/* One block of m <= BX_BLOCK boxes: lv[i] = loss of box i (mode & BX_VALUE, or
 * always when gradients are asked: it is free then), gv = gs * gradient,
 * interleaved like the boxes (mode & BX_GRAD).  Returns whether any box of
 * boxes1 (bit 0) / boxes2 (bit 1) is degenerate: found while deinterleaving,
 * so the default check costs no pass over memory of its own. */
#define BX_KERNEL(LOSS, ID, T, MI, S, ISA, ATTR)                                                 \
    ATTR static int bx_##LOSS##_##S##_##ISA(int m, int mode, const T *restrict b1,              \
                                            const T *restrict b2, T eps, T eps2, T gs,          \
                                            T *restrict lv, T *restrict gv, int nt)             \
    {                                                                                           \
        T x1[BX_BLOCK], y1[BX_BLOCK], x2[BX_BLOCK], y2[BX_BLOCK];                              \
        T X1[BX_BLOCK], Y1[BX_BLOCK], X2[BX_BLOCK], Y2[BX_BLOCK];                              \
        MI bad1 = 0, bad2 = 0; /* MI: an integer of T's width, so that the OR vectorises */    \
        for (int i = 0; i < m; i++) {                                                           \
            x1[i] = b1[4 * i], y1[i] = b1[4 * i + 1], x2[i] = b1[4 * i + 2], y2[i] = b1[4 * i + 3]; \
            X1[i] = b2[4 * i], Y1[i] = b2[4 * i + 1], X2[i] = b2[4 * i + 2], Y2[i] = b2[4 * i + 3]; \
            bad1 |= (x2[i] < x1[i]) | (y2[i] < y1[i]);                                          \
            bad2 |= (X2[i] < X1[i]) | (Y2[i] < Y1[i]);                                          \
        }                                                                                       \
        const int bad = (bad1 ? 1 : 0) | (bad2 ? 2 : 0);                                        \
        if (!(mode & BX_GRAD)) {                                                                \
            for (int i = 0; i < m; i++) {                                                       \
                T d1, d2, d3, d4;                                                               \
                lv[i] = bx_box_##S(ID, 0, x1[i], y1[i], x2[i], y2[i], X1[i], Y1[i], X2[i],      \
                                   Y2[i], eps, eps2, &d1, &d2, &d3, &d4);                       \
            }                                                                                   \
            return bad;                                                                         \
        }                                                                                       \
        /* the gradient goes to the SoA arrays of the first box, then is interleaved: into */ \
        /* gv, or (nt: large outputs) into an L1 buffer streamed out by bx_stream           */ \
        for (int i = 0; i < m; i++) {                                                           \
            T d1, d2, d3, d4;                                                                   \
            lv[i] = bx_box_##S(ID, 1, x1[i], y1[i], x2[i], y2[i], X1[i], Y1[i], X2[i], Y2[i],   \
                               eps, eps2, &d1, &d2, &d3, &d4);                                  \
            x1[i] = gs * d1, y1[i] = gs * d2, x2[i] = gs * d3, y2[i] = gs * d4;                 \
        }                                                                                       \
        T ibuf[4 * BX_BLOCK];                                                                   \
        T *restrict dst = nt ? ibuf : gv;                                                       \
        for (int i = 0; i < m; i++) {                                                           \
            dst[4 * i] = x1[i], dst[4 * i + 1] = y1[i], dst[4 * i + 2] = x2[i], dst[4 * i + 3] = y2[i]; \
        }                                                                                       \
        if (nt)                                                                                 \
            bx_stream_##S##_##ISA(gv, ibuf, 4 * m);                                             \
        return bad;                                                                             \
    }

/* per-ISA extras: the lane sum, the atan for the tests, the degenerate-box scan */
#define BX_EXTRAS(T, MI, S, ISA, ATTR)                                                          \
    ATTR static void bx_lanes_##S##_##ISA(double *restrict acc, const T *restrict v, int m)     \
    {                                                                                           \
        fl_lanes_add_##S(acc, v, m);                                                            \
    }                                                                                           \
    ATTR static void bx_atan_loop_##S##_##ISA(const T *restrict x, T *restrict y, int64_t n)    \
    {                                                                                           \
        for (int64_t i = 0; i < n; i++)                                                         \
            y[i] = bx_atan_##S(x[i]);                                                           \
    }                                                                                           \
    /* 1 if any of the m boxes has x2 < x1 or y2 < y1 (NaN is not degenerate) */               \
    ATTR static int bx_any_bad_##S##_##ISA(const T *restrict b, int m)                          \
    {                                                                                           \
        MI bad = 0;                                                                             \
        for (int i = 0; i < m; i++)                                                             \
            bad |= (b[4 * i + 2] < b[4 * i]) | (b[4 * i + 3] < b[4 * i + 1]);                   \
        return bad != 0;                                                                        \
    }

/* dst[0 .. k) = src[0 .. k) with non-temporal stores where dst is aligned: the
 * gradient is written once and not read back soon, and ordinary stores would
 * first read every output line (read-for-ownership), which costs as much as
 * the stores on the project's machines.  Made visible to other threads by the
 * sfence at the end of each unit (bx_run_unit).  Same values either way. */
#if FL_X86
#define BX_STREAM(T, S, ISA, ATTR, VT, W, STREAM, LOAD)                                        \
    ATTR static inline void bx_stream_##S##_##ISA(T *restrict dst, const T *restrict src, int k) \
    {                                                                                           \
        int i = 0;                                                                              \
        for (; i < k && ((uintptr_t)(dst + i) & (sizeof(VT) - 1)); i++)                         \
            dst[i] = src[i];                                                                    \
        for (; i + W <= k; i += W)                                                              \
            STREAM(dst + i, LOAD(src + i));                                                     \
        for (; i < k; i++)                                                                      \
            dst[i] = src[i];                                                                    \
    }
BX_STREAM(float, f32, base, , __m128, 4, _mm_stream_ps, _mm_loadu_ps)
BX_STREAM(double, f64, base, , __m128d, 2, _mm_stream_pd, _mm_loadu_pd)
BX_STREAM(float, f32, avx2, FL_TARGET_AVX2, __m256, 8, _mm256_stream_ps, _mm256_loadu_ps)
BX_STREAM(double, f64, avx2, FL_TARGET_AVX2, __m256d, 4, _mm256_stream_pd, _mm256_loadu_pd)
BX_STREAM(float, f32, avx512, FL_TARGET_AVX512, __m512, 16, _mm512_stream_ps, _mm512_loadu_ps)
BX_STREAM(double, f64, avx512, FL_TARGET_AVX512, __m512d, 8, _mm512_stream_pd, _mm512_loadu_pd)
#define BX_FENCE() _mm_sfence()
#else
#define BX_STREAM(T, S, ISA)                                                                   \
    static inline void bx_stream_##S##_##ISA(T *restrict dst, const T *restrict src, int k)    \
    {                                                                                           \
        memcpy(dst, src, (size_t)k * sizeof(T));                                                \
    }
BX_STREAM(float, f32, base)
BX_STREAM(double, f64, base)
#define BX_FENCE() ((void)0)
#endif

#define BX_PATH(ISA, ATTR)                                    \
    BX_KERNEL(giou, BX_GIOU, float, int32_t, f32, ISA, ATTR)  \
    BX_KERNEL(diou, BX_DIOU, float, int32_t, f32, ISA, ATTR)  \
    BX_KERNEL(ciou, BX_CIOU, float, int32_t, f32, ISA, ATTR)  \
    BX_KERNEL(giou, BX_GIOU, double, int64_t, f64, ISA, ATTR) \
    BX_KERNEL(diou, BX_DIOU, double, int64_t, f64, ISA, ATTR) \
    BX_KERNEL(ciou, BX_CIOU, double, int64_t, f64, ISA, ATTR) \
    BX_EXTRAS(float, int32_t, f32, ISA, ATTR)                 \
    BX_EXTRAS(double, int64_t, f64, ISA, ATTR)

BX_PATH(base, )
#if FL_X86
BX_PATH(avx2, FL_TARGET_AVX2)
BX_PATH(avx512, FL_TARGET_AVX512)
#define BX_PATHS(f) {f##_base, f##_avx2, f##_avx512}
#else
#define BX_PATHS(f) {f##_base, NULL, NULL}
#endif

/* ---- dispatch tables [loss][isa] per dtype --------------------------------------- */
typedef int (*bx_blk_f32)(int, int, const float *, const float *, float, float, float, float *,
                          float *, int);
typedef int (*bx_blk_f64)(int, int, const double *, const double *, double, double, double,
                          double *, double *, int);
typedef void (*bx_lanes_f32_fn)(double *, const float *, int);
typedef void (*bx_lanes_f64_fn)(double *, const double *, int);

static const bx_blk_f32 bx_blk_f32_tab[FL_NBOX][FL_NISA] = {
#define X(name, id) BX_PATHS(bx_##name##_f32),
    FL_BOX_LOSSES(X)
#undef X
};
static const bx_blk_f64 bx_blk_f64_tab[FL_NBOX][FL_NISA] = {
#define X(name, id) BX_PATHS(bx_##name##_f64),
    FL_BOX_LOSSES(X)
#undef X
};
static const bx_lanes_f32_fn bx_lanes_f32_tab[FL_NISA] = BX_PATHS(bx_lanes_f32);
static const bx_lanes_f64_fn bx_lanes_f64_tab[FL_NISA] = BX_PATHS(bx_lanes_f64);
static void (*const bx_atan_f32_tab[FL_NISA])(const float *, float *, int64_t) = BX_PATHS(bx_atan_loop_f32);
static void (*const bx_atan_f64_tab[FL_NISA])(const double *, double *, int64_t) = BX_PATHS(bx_atan_loop_f64);
static int (*const bx_bad_f32_tab[FL_NISA])(const float *, int) = BX_PATHS(bx_any_bad_f32);
static int (*const bx_bad_f64_tab[FL_NISA])(const double *, int) = BX_PATHS(bx_any_bad_f64);

/* the first degenerate box among b[0 .. m), or -1 (the rare path: scalar) */
#define BX_FIRST_BAD(T, S)                                                          \
    static int64_t bx_first_bad_##S(const T *b, int64_t m)                         \
    {                                                                               \
        for (int64_t i = 0; i < m; i++)                                             \
            if (b[4 * i + 2] < b[4 * i] || b[4 * i + 3] < b[4 * i + 1])             \
                return i;                                                           \
        return -1;                                                                  \
    }
BX_FIRST_BAD(float, f32)
BX_FIRST_BAD(double, f64)

/* ---- the driver: one unit of boxes [lo, hi), the same whatever thread runs it ---- */
/* Also records the unit's first degenerate box of each argument (bad[0], bad[1]). */
#define BX_UNIT_FN(T, S)                                                                       \
    static double bx_unit_##S(const fl_box_args *A, bx_blk_##S blk, bx_lanes_##S##_fn lanes,   \
                              int64_t lo, int64_t hi, int64_t *bad)                            \
    {                                                                                          \
        T lbuf[BX_BLOCK];                                                                      \
        double acc[FL_LANES] = {0};                                                            \
        const int mode = (A->out || A->want_total ? BX_VALUE : 0) | (A->grad ? BX_GRAD : 0);   \
        const T eps = (T)A->eps, eps2 = (T)A->eps_alpha, gs = (T)A->grad_scale;               \
        const int nt = 4 * A->n * (int64_t)sizeof(T) >= BX_NT_BYTES;                           \
        bad[0] = bad[1] = -1;                                                                  \
        for (int64_t off = lo; off < hi; off += BX_BLOCK) {                                    \
            const int m = hi - off < BX_BLOCK ? (int)(hi - off) : BX_BLOCK;                    \
            T *lv = A->out ? (T *)A->out + off : lbuf;                                         \
            T *gv = A->grad ? (T *)A->grad + 4 * off : NULL;                                   \
            const T *p1 = (const T *)A->boxes1 + 4 * off, *p2 = (const T *)A->boxes2 + 4 * off; \
            const int flags = blk(m, mode, p1, p2, eps, eps2, gs, lv, gv, nt);                 \
            if (A->check && flags) {                                                           \
                if ((flags & 1) && bad[0] < 0)                                                 \
                    bad[0] = off + bx_first_bad_##S(p1, m);                                    \
                if ((flags & 2) && bad[1] < 0)                                                 \
                    bad[1] = off + bx_first_bad_##S(p2, m);                                    \
            }                                                                                  \
            if (A->want_total)                                                                 \
                lanes(acc, lv, m);                                                             \
        }                                                                                      \
        return fl_lanes_fold(acc);                                                             \
    }
BX_UNIT_FN(float, f32)
BX_UNIT_FN(double, f64)

typedef struct {
    const fl_box_args *A;
    bx_blk_f32 b32;
    bx_blk_f64 b64;
    bx_lanes_f32_fn l32;
    bx_lanes_f64_fn l64;
    double *sums;
    int64_t *bad; /* 2 per unit */
} bx_job;

static void bx_run_unit(void *ctx, int64_t u)
{
    const bx_job *J = ctx;
    const int64_t lo = u * BX_UNIT, hi = lo + BX_UNIT < J->A->n ? lo + BX_UNIT : J->A->n;
    J->sums[u] = J->b32 ? bx_unit_f32(J->A, J->b32, J->l32, lo, hi, J->bad + 2 * u)
                        : bx_unit_f64(J->A, J->b64, J->l64, lo, hi, J->bad + 2 * u);
    BX_FENCE(); /* the unit's streamed gradient is visible before the pool reports it done */
}

/* a box costs about as much as 32 elements of a cheap elementwise loss: threads
 * from 2048 boxes on (fl_threads_for counts elements) */
#define BX_WORK 32

int fl_boxes(int loss, int dtype, fl_box_args *A)
{
    if (!A || loss < 0 || loss >= FL_NBOX || (dtype != 0 && dtype != 1))
        return -1;
    A->total = 0.0;
    A->bad1 = A->bad2 = -1;
    const int64_t n = A->n;
    if (n <= 0 || !(A->out || A->grad || A->want_total || A->check))
        return 0;
    const int isa = fl_isa_now();
    bx_job J = {A, NULL, NULL, NULL, NULL, NULL, NULL};
    if (dtype == 0) {
        J.b32 = bx_blk_f32_tab[loss][isa];
        J.l32 = bx_lanes_f32_tab[isa];
    } else {
        J.b64 = bx_blk_f64_tab[loss][isa];
        J.l64 = bx_lanes_f64_tab[isa];
    }
    const int64_t units = (n + BX_UNIT - 1) / BX_UNIT;
    double small[64];
    int64_t small_bad[2 * 64];
    J.sums = units <= 64 ? small : malloc((size_t)units * sizeof(double));
    J.bad = units <= 64 ? small_bad : malloc((size_t)units * 2 * sizeof(int64_t));
    if (!J.sums || !J.bad) {
        if (J.sums != small)
            free(J.sums);
        if (J.bad != small_bad)
            free(J.bad);
        return -2;
    }
    fl_parallel_for(bx_run_unit, &J, units, fl_threads_for(n > INT64_MAX / BX_WORK ? n : n * BX_WORK));
    if (A->want_total) {
        double t = 0.0; /* in unit order: the deterministic part */
        for (int64_t u = 0; u < units; u++)
            t += J.sums[u];
        A->total = t;
    }
    if (A->check) /* the first unit that has one wins: the first bad box */
        for (int64_t u = 0; u < units; u++) {
            if (A->bad1 < 0)
                A->bad1 = J.bad[2 * u];
            if (A->bad2 < 0)
                A->bad2 = J.bad[2 * u + 1];
        }
    if (J.sums != small)
        free(J.sums);
    if (J.bad != small_bad)
        free(J.bad);
    return 0;
}

/* ---- the degenerate-box scan ------------------------------------------------------ */
/* Units of BX_UNIT boxes on the pool; per block a vectorised OR of the "bad"
 * flags, and only a block with a bad box is scanned again for its position.
 * Each unit records its first bad box; the first unit that has one wins. */
typedef struct {
    int dtype, isa;
    const void *b;
    int64_t n;
    int64_t *first;
} bx_scan_job;

static void bx_scan_unit(void *ctx, int64_t u)
{
    const bx_scan_job *J = ctx;
    const int64_t lo = u * BX_UNIT, hi = lo + BX_UNIT < J->n ? lo + BX_UNIT : J->n;
    J->first[u] = -1;
    for (int64_t off = lo; off < hi; off += BX_BLOCK) {
        const int m = hi - off < BX_BLOCK ? (int)(hi - off) : BX_BLOCK;
        int bad;
        if (J->dtype == 0)
            bad = bx_bad_f32_tab[J->isa]((const float *)J->b + 4 * off, m);
        else
            bad = bx_bad_f64_tab[J->isa]((const double *)J->b + 4 * off, m);
        if (bad) {
            J->first[u] = off + (J->dtype == 0 ? bx_first_bad_f32((const float *)J->b + 4 * off, m)
                                               : bx_first_bad_f64((const double *)J->b + 4 * off, m));
            return;
        }
    }
}

int64_t fl_boxes_first_degenerate(int dtype, const void *boxes, int64_t n)
{
    if (dtype != 0 && dtype != 1)
        return -2;
    if (n <= 0)
        return -1;
    const int64_t units = (n + BX_UNIT - 1) / BX_UNIT;
    int64_t small[64];
    int64_t *first = units <= 64 ? small : malloc((size_t)units * sizeof(int64_t));
    if (!first)
        return -3;
    bx_scan_job J = {dtype, fl_isa_now(), boxes, n, first};
    fl_parallel_for(bx_scan_unit, &J, units, fl_threads_for(4 * n));
    int64_t found = -1;
    for (int64_t u = 0; u < units && found < 0; u++)
        found = first[u];
    if (first != small)
        free(first);
    return found;
}

/* ---- the arctangent, for the accuracy tests --------------------------------------- */
int fl_boxes_atan(int dtype, const void *x, void *y, int64_t n)
{
    if (dtype != 0 && dtype != 1)
        return -1;
    const int isa = fl_isa_now();
    if (dtype == 0)
        bx_atan_f32_tab[isa](x, y, n);
    else
        bx_atan_f64_tab[isa](x, y, n);
    return 0;
}
