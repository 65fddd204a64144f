/* overlap.c -- the Dice family: per-class sums over a volume.
 *
 * Layout (fl_overlap_args): the input is (N, C, S), a voxel is one (i, s),
 * its C values S apart.  Two passes, each over tiles of B voxels of one
 * sample with loops over the classes outside and the voxels inside, so every
 * inner loop is contiguous and nothing is transposed:
 *  - fl_overlap_stats: per tile the activation p of its C x B values (into
 *    the gradient output when there is one, else a workspace), then, per
 *    class, the tile's sums of p t, p^q and t^q in float64 lanes.  Tiles are
 *    grouped into units of OV_UNIT voxels; each unit keeps its (C, 3)
 *    partial sums, and the units of a sample are added in order: the result
 *    depends on the shape only, never on the threads.
 *  - fl_overlap_grad: from the stored p and the per-(i, c) coefficients
 *    (dL/dp = a t + b dP/dp) the gradient through the activation, written
 *    over p.  No second exp, and the input is not read again.
 * No activated copy, one-hot or (N, C, S) temporary is made: extra memory is
 * the (units, C, 3) partials plus a per-thread tile workspace.
 *
 * Ignored voxels (label == ignore_index) get p = 0, which drops them from
 * every sum and gives them a zero gradient through softmax and sigmoid (the
 * identity activation masks its gradient explicitly). */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fastloss.h"
#include "common.h"
#include "vmath.h"
#if FL_X86
#include <immintrin.h>
#endif

#define OV_NAME_(name, sfx, isa) ov_##name##_##sfx##_##isa
#define OV_NAME(name, sfx, isa) OV_NAME_(name, sfx, isa)

#define OV_TILE 512                /* most voxels per tile */
#define OV_UNIT 8192               /* voxels per unit of partial sums (a multiple of tiles) */
#define OV_WORKSPACE 16384         /* values of a tile's stack workspace */
#define OV_IGNORED (-2)            /* class code of an ignored voxel (-1: no class, C = 1 background) */
enum { OV_LABELS_I32, OV_LABELS_I64, OV_LABELS_U8, OV_MASK_U8, OV_MASK_T };
enum { OV_ACT_NONE, OV_ACT_SOFTMAX, OV_ACT_SIGMOID };
enum { OV_PHASE_STATS, OV_PHASE_GRAD };

typedef struct {
    const fl_overlap_args *A;
    int phase;
    int64_t tile;            /* voxels per tile (a divisor of OV_UNIT or all of S) */
    int64_t unit;            /* voxels per unit */
    int64_t units;           /* per sample */
    double *partials;        /* (N * units, C, 3) */
    const void *coef_t;      /* the coefficients (N, C, 2) in the dtype */
    int failed;              /* a unit could not get its workspace */
} ov_job;

/* class codes of voxels [r0, r0 + m): label - base, OV_IGNORED if ignored.
 * In int32 where the label type allows (16 lanes per AVX-512 vector, not 8):
 * an ignore_index outside int32 can only match int64 labels. */
static void ov_classes(const fl_overlap_args *A, int64_t r0, int m, int32_t *cls)
{
    const int64_t ig = A->ignore_index;
    const int32_t base = (int32_t)A->label_base;
    if (A->target_type == OV_LABELS_I64) {
        const int64_t *v = (const int64_t *)A->target + r0;
        for (int j = 0; j < m; j++)
            cls[j] = v[j] == ig ? OV_IGNORED : (int32_t)(v[j] - base);
        return;
    }
    const int in_range = ig >= INT32_MIN && ig <= INT32_MAX;
    const int32_t ig32 = in_range ? (int32_t)ig : 0;
#define OV_CLASSES(TY)                                                           \
    {                                                                            \
        const TY *v = (const TY *)A->target + r0;                                \
        if (in_range)                                                            \
            for (int j = 0; j < m; j++)                                          \
                cls[j] = (int32_t)v[j] == ig32 ? OV_IGNORED : (int32_t)v[j] - base; \
        else                                                                     \
            for (int j = 0; j < m; j++)                                          \
                cls[j] = (int32_t)v[j] - base;                                   \
    }
    if (A->target_type == OV_LABELS_I32)
        OV_CLASSES(int32_t)
    else
        OV_CLASSES(uint8_t)
#undef OV_CLASSES
}

#define FL_TEMPLATE "overlap_impl.h"
/* per dtype: T, its suffix and the integer type of its comparison masks */
#define T float
#define FL_SFX f32
#define OV_MASK_INT int32_t
#define OV_F32 1
#include "isa_paths.h"
#undef T
#undef FL_SFX
#undef OV_MASK_INT
#undef OV_F32
#define T double
#define FL_SFX f64
#define OV_MASK_INT int64_t
#define OV_F32 0
#include "isa_paths.h"
#undef T
#undef FL_SFX
#undef OV_MASK_INT
#undef OV_F32

#if FL_X86
static const fl_unit_fn unit_fns[2][FL_NISA] = {
    {ov_unit_f32_base, ov_unit_f32_avx2, ov_unit_f32_avx512},
    {ov_unit_f64_base, ov_unit_f64_avx2, ov_unit_f64_avx512},
};
#else
static const fl_unit_fn unit_fns[2][FL_NISA] = {{ov_unit_f32_base}, {ov_unit_f64_base}};
#endif

/* ---- the driver ------------------------------------------------------------------ */

static int ov_check(int dtype, const fl_overlap_args *A)
{
    return A && (dtype == 0 || dtype == 1) && A->target_type >= 0 && A->target_type <= 4 &&
           A->activation >= 0 && A->activation <= 2 && A->classes >= 1 && A->n >= 0 &&
           A->inner >= 0;
}

/* tiles: a tile's C x B values fit the stack workspace (C <= 1024) */
static void ov_layout(ov_job *J)
{
    const fl_overlap_args *A = J->A;
    int64_t b = OV_WORKSPACE / A->classes / 16 * 16;
    b = b < 16 ? 16 : b > OV_TILE ? OV_TILE : b;
    /* b is a power of two times 16 only if C is; units hold whole tiles */
    J->unit = OV_UNIT / b * b;
    J->tile = b < A->inner ? b : A->inner;
    J->units = (A->inner + J->unit - 1) / J->unit;
}

int fl_overlap_stats(int dtype, fl_overlap_args *A)
{
    if (!ov_check(dtype, A) || !A->stats)
        return -1;
    const int64_t N = A->n, C = A->classes, S = A->inner;
    memset(A->stats, 0, (size_t)(N * C * 3) * sizeof(double));
    if (N == 0 || S == 0)
        return 0;
    ov_job J = {0};
    J.A = A;
    J.phase = OV_PHASE_STATS;
    ov_layout(&J);
    const int64_t units = N * J.units;
    J.partials = malloc((size_t)(units * C * 3) * sizeof(double));
    if (!J.partials)
        return -2;
    fl_parallel_for(unit_fns[dtype][fl_isa_now()], &J, units, fl_threads_for(N * C * S));
    if (J.failed) {
        free(J.partials);
        return -2;
    }
    for (int64_t i = 0; i < N; i++)
        for (int64_t u = 0; u < J.units; u++) {
            const double *p = J.partials + (i * J.units + u) * C * 3;
            double *st = A->stats + i * C * 3;
            for (int64_t k = 0; k < C * 3; k++)
                st[k] += p[k];
        }
    free(J.partials);
    return 0;
}

int fl_overlap_grad(int dtype, fl_overlap_args *A)
{
    if (!ov_check(dtype, A) || !A->coef || !A->grad)
        return -1;
    const int64_t N = A->n, C = A->classes, S = A->inner;
    if (N == 0 || S == 0)
        return 0;
    ov_job J = {0};
    J.A = A;
    J.phase = OV_PHASE_GRAD;
    ov_layout(&J);
    /* the coefficients in the dtype: the gradient loop runs in it, as PyTorch's */
    void *coef = malloc((size_t)(N * C * 2) * (dtype == 0 ? sizeof(float) : sizeof(double)));
    if (!coef)
        return -2;
    for (int64_t k = 0; k < N * C * 2; k++) {
        if (dtype == 0)
            ((float *)coef)[k] = (float)A->coef[k];
        else
            ((double *)coef)[k] = A->coef[k];
    }
    J.coef_t = coef;
    fl_parallel_for(unit_fns[dtype][fl_isa_now()], &J, N * J.units, fl_threads_for(N * C * S));
    free(coef);
    return J.failed ? -2 : 0;
}
