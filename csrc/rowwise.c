/* rowwise.c -- multi-class losses: one value per row of C class scores.
 *
 * Layout (fl_row_args): the input is (N, C, S), a row is one (i, s), its C
 * values S apart.  Two loop shapes, chosen by the shape:
 *  - S = 1, contiguous rows: per row, the statistics in one pass over memory
 *    (segments of RW_SEG values; per segment its max, then the sum of
 *    exp(x - max) from cache; segments folded in order with a running max:
 *    an online log-sum-exp), then the gradient in a second pass over the row,
 *    still in cache.  Long rows with few of them are split: the segments of
 *    all rows run on the threads, then the gradients; the same segments and
 *    the same fold give the same bits as the fused loop.
 *  - S > 1, strided class axis (segmentation): tiles of B positions of one
 *    sample, loops over the classes outside and the positions inside, so
 *    every inner loop is contiguous; nothing is transposed.
 * No softmax, one-hot or (N, C) temporary is ever made: extra memory is
 * O(N) (the split path) or a fixed per-thread workspace.
 *
 * Per row (float64; lse = log sum_c exp x_c, p_c = exp(x_c - lse), y the
 * label, w the class weights or 1, W = sum_c w_c, gs = grad_scale; a row whose
 * label is ignore_index has value 0 and a zero gradient):
 *  cross_entropy       (1-e) w_y (lse - x_y) + (e/C)(W lse - sum w_c x_c) + z lse^2
 *                      g_c = gs (A p_c - (1-e) w_y [c=y] - (e/C) w_c),
 *                      A = (1-e) w_y + (e/C) W + 2 z lse    (e = smoothing, z = z_loss)
 *  cross_entropy_prob  t'_c = (1-e) t_c + e/C, Tw = sum w_c t'_c:
 *                      Tw lse - sum w_c t'_c x_c + z lse^2,
 *                      g_c = gs ((Tw + 2 z lse) p_c - w_c t'_c)
 *  nll                 -w_y x_y,  g_c = -gs w_y [c=y]
 *  softmax_focal       a = alpha_y w_y (alpha_y = alpha[y] or p0), gamma = p1,
 *                      L = x_y - lse, u = 1 - p_y = -expm1(L):  -a u^gamma L,
 *                      g_c = gs a F (p_c - [c=y]),  F = u^gamma (1 - gamma p_y L/u)
 *                      (L/u -> -1 as u -> 0: finite at saturated logits, gamma < 1)
 *  multi_margin        w_y sum_{c!=y} max(0, z_c)^p / C, z_c = p0 - x_y + x_c, p = p1
 *  crammer_singer      max(0, p0 + max_{c!=y} x_c - x_y), gradient +gs at the first
 *                      argmax, -gs at y
 * Row sums are float64 and added in an order fixed by the shape (units of
 * rows or tiles, in order), never by the threads. */
#define _GNU_SOURCE
#include <math.h>
#include <stdlib.h>
#include <string.h>

#include "fastloss.h"
#include "common.h"
#include "vmath.h"

#define RW_NAME_(name, sfx, isa) name##_##sfx##_##isa
#define RW_NAME(name, sfx, isa) RW_NAME_(name, sfx, isa)

enum {
#define X(name) RW_LOSS_##name,
    FL_ROWWISE_LOSSES(X)
#undef X
    RW_NLOSS
};
#define RW_LOSS(name) RW_LOSS_##name
static const char *const row_names[RW_NLOSS] = {
#define X(name) #name,
    FL_ROWWISE_LOSSES(X)
#undef X
};
int fl_row_count(void) { return RW_NLOSS; }
const char *fl_row_name(int loss) { return loss >= 0 && loss < RW_NLOSS ? row_names[loss] : NULL; }

#define RW_SEG FL_UNIT   /* values per row segment */
#define RW_ROW_SEGS 64  /* the fused loop keeps this many segment shifts (longer rows: split) */
#define RW_TILE 1024      /* most positions per tile */
#define RW_SHORT 64       /* softmax rows up to this long go through tiles (short_rows) */
#define RW_SHORT_VALUES 4096   /* values in one such tile */
enum { RW_NEED_NONE, RW_NEED_WX, RW_NEED_PROB };
enum { RW_PHASE_ROWS, RW_PHASE_TILES, RW_PHASE_SPLIT_STATS, RW_PHASE_SPLIT_FINISH, RW_PHASE_SPLIT_GRAD };

/* statistics of a segment, or of a row once folded: sum = sum exp(x - shift) */
typedef struct {
    double shift, sum, s1, s2;
} rw_seg;

/* a row's value and its gradient g_c = a1 exp(x_c - shift) - d w_c(t'_c) - b [c=y] */
typedef struct {
    double value, a1, b, d, shift;
    int64_t y;
    int ignored;
} rw_coef;

typedef struct {
    const fl_row_args *A;
    int loss, need, phase;
    const void *wt;          /* the class weights in the dtype, or NULL */
    const double *wd;        /* the class weights in float64 (ones without a weight) */
    double W;                /* their sum */
    double gs;               /* the gradient's scale: grad_scale, divided by the mean's divisor */
    double keep, add;        /* probability targets: t' = keep t + add */
    int64_t rows_per_unit;   /* RW_PHASE_ROWS */
    int64_t short_block;     /* RW_PHASE_ROWS of short rows: rows per tile (short_rows), or 0 */
    int64_t tile, tiles;     /* RW_PHASE_TILES: positions per tile, tiles per sample */
    int64_t nseg;            /* split phases: segments per row */
    double *partials;        /* per unit */
    rw_seg *segs;            /* split: per (row, segment) */
    rw_coef *coefs;          /* split: per row */
} rw_job;

/* fold segment b into the row statistics a (first: a = b) */
FL_INLINE void rw_fold(rw_seg *a, const rw_seg *b, int first)
{
    if (first) {
        *a = *b;
        return;
    }
    double m = b->shift > a->shift ? b->shift : a->shift;
    a->sum = a->sum * exp(a->shift - m) + b->sum * exp(b->shift - m);
    a->shift = m;
    a->s1 += b->s1;
    a->s2 += b->s2;
}

/* labels [r0, r0 + m) as int32, ignore_index as -1 (one loop per label type,
 * so that each vectorises) */
static void rw_labels_int32(const fl_row_args *A, int64_t r0, int m, int32_t *lab)
{
    const int64_t ig = A->ignore_index;
#define RW_LABELS(TY)                                           \
    {                                                           \
        const TY *v = (const TY *)A->target + r0;               \
        for (int j = 0; j < m; j++)                             \
            lab[j] = (int64_t)v[j] == ig ? -1 : (int32_t)v[j];  \
    }
    switch (A->label_type) {
    case 0: RW_LABELS(int32_t) break;
    case 1: RW_LABELS(int64_t) break;
    default: RW_LABELS(uint8_t) break;
    }
#undef RW_LABELS
}

FL_INLINE int64_t rw_label(const fl_row_args *A, int64_t r)
{
    switch (A->label_type) {
    case 0: return ((const int32_t *)A->target)[r];
    case 1: return ((const int64_t *)A->target)[r];
    default: return ((const uint8_t *)A->target)[r];
    }
}

/* ---- the loops, per dtype x ISA path ------------------------------------------ */

#define FL_TEMPLATE "rowwise_impl.h"
/* per dtype: T, its suffix and the integer type of its comparison masks */
#define T float
#define FL_SFX f32
#define RW_MASK_INT int32_t
#include "isa_paths.h"
#undef T
#undef FL_SFX
#undef RW_MASK_INT
#define T double
#define FL_SFX f64
#define RW_MASK_INT int64_t
#include "isa_paths.h"
#undef T
#undef FL_SFX
#undef RW_MASK_INT

#if FL_X86
static const fl_unit_fn unit_fns[2][FL_NISA] = {
    {unit_f32_base, unit_f32_avx2, unit_f32_avx512},
    {unit_f64_base, unit_f64_avx2, unit_f64_avx512},
};
#else
static const fl_unit_fn unit_fns[2][FL_NISA] = {{unit_f32_base}, {unit_f64_base}};
#endif

/* ---- per-thread scratch --------------------------------------------------------
 * The calling thread's buffers grow as calls need and are kept: a call of a size
 * seen before on this thread allocates nothing.  (Workers only read and write
 * the caller's buffers through the job.) */
enum { RW_SCRATCH_WT, RW_SCRATCH_ONES, RW_SCRATCH_PARTIALS, RW_SCRATCH_SCAN, RW_SCRATCH_SEGS,
       RW_SCRATCH_COEFS, RW_NSCRATCH };

static void *rw_scratch(int slot, size_t bytes)
{
    static __thread void *buf[RW_NSCRATCH];
    static __thread size_t cap[RW_NSCRATCH];
    if (bytes > cap[slot]) {
        void *p = realloc(buf[slot], bytes);
        if (!p)
            return NULL;
        buf[slot] = p;
        cap[slot] = bytes;
    }
    return buf[slot];
}

/* ---- label check ---------------------------------------------------------------------
 * Labels are checked in blocks: each block is checked and counted with
 * branch-free loops that vectorise; only a block with a bad label is searched
 * element by element, and the weight sum (a gather) runs element by element.
 * Blocks are combined in order, so any thread count gives the same bits. */
#define SCAN_BLOCK 4096

typedef struct {
    int64_t bad;     /* first bad row of the block, or -1 */
    int64_t count;
    double wsum;
} rw_scan;

/* IT: the integer type the checks run in (int32 where the label type fits:
 * twice the lanes of int64), UT its unsigned twin (y < 0 is y >= cl unsigned) */
#define SCAN(TY, IT, UT, IG, CL)                                                      \
    {                                                                                 \
        const TY *b = (const TY *)labels + r0;                                        \
        const IT ig = (IT)(IG), cl = (IT)(CL);                                        \
        IT bad = 0, valid = 0;                                                        \
        for (int r = 0; r < m; r++) {                                                 \
            const IT y = (IT)b[r];                                                    \
            const IT keep = y != ig || no_ignore;                                     \
            bad |= keep & ((UT)y >= (UT)cl);                                          \
            valid += keep;                                                            \
        }                                                                             \
        if (bad)                                                                      \
            for (int r = 0; r < m; r++) {                                             \
                const int64_t y = (int64_t)b[r];                                      \
                if ((y != ignore_index || no_ignore) && (y < 0 || y >= classes)) {    \
                    out->bad = r0 + r;                                                \
                    return;                                                           \
                }                                                                     \
            }                                                                         \
        out->count = valid;                                                           \
        if (weight)                                                                   \
            for (int r = 0; r < m; r++) {                                             \
                const int64_t y = (int64_t)b[r];                                      \
                ws += y != ignore_index ? weight[y] : 0.0;                            \
            }                                                                         \
    }

/* labels [r0, r0 + m) */
FL_INLINE void rw_scan_block_impl(int label_type, const void *labels, int64_t r0, int m,
                                  int64_t classes, int64_t ignore_index, const double *weight,
                                  rw_scan *out)
{
    double ws = 0.0;
    out->bad = -1;
    out->count = 0;
    /* no ignore_index: a label equal to the sentinel is checked like any other */
    const int no_ignore = ignore_index == FL_NO_IGNORE;
    /* int32 checks where they are exact: int32 labels with an ignore_index in
     * int32 range, and uint8 labels (whose ignore_index, if outside 0..255,
     * can match nothing: -1 stands for it); classes clamp to INT32_MAX */
    const int ig_fits = ignore_index >= INT32_MIN && ignore_index <= INT32_MAX;
    const int64_t cl32 = classes < INT32_MAX ? classes : INT32_MAX;
    switch (label_type) {
    case 0:
        if (ig_fits)
            SCAN(int32_t, int32_t, uint32_t, ignore_index, cl32)
        else
            SCAN(int32_t, int64_t, uint64_t, ignore_index, classes)
        break;
    case 1: SCAN(int64_t, int64_t, uint64_t, ignore_index, classes) break;
    default:
        if (ig_fits)
            SCAN(uint8_t, int32_t, uint32_t, ignore_index, cl32)
        else
            SCAN(uint8_t, int32_t, uint32_t, -1, cl32)   /* no uint8 label is -1 */
        break;
    }
    out->wsum = weight ? ws : (double)out->count;
}

/* per ISA path: int64 labels need AVX2's 64-bit compares to vectorise (4x faster) */
#define RW_SCAN_ARGS                                                                    \
    int label_type, const void *labels, int64_t r0, int m, int64_t classes,          \
        int64_t ignore_index, const double *weight, rw_scan *out
#define RW_SCAN_PASS label_type, labels, r0, m, classes, ignore_index, weight, out
static void rw_scan_block_base(RW_SCAN_ARGS) { rw_scan_block_impl(RW_SCAN_PASS); }
#if FL_X86
FL_TARGET_AVX2 static void rw_scan_block_avx2(RW_SCAN_ARGS) { rw_scan_block_impl(RW_SCAN_PASS); }
#endif
static void rw_scan_block(RW_SCAN_ARGS)
{
#if FL_X86
    if (fl_isa_now() >= FL_ISA_AVX2) {
        rw_scan_block_avx2(RW_SCAN_PASS);
        return;
    }
#endif
    rw_scan_block_base(RW_SCAN_PASS);
}

typedef struct {
    int label_type;
    const void *labels;
    int64_t n, classes, ignore_index;
    const double *weight;
    rw_scan *blocks;
} rw_scan_job;

static void rw_scan_unit(void *ctx, int64_t u)
{
    const rw_scan_job *S = ctx;
    const int64_t r0 = u * SCAN_BLOCK;
    const int m = S->n - r0 < SCAN_BLOCK ? (int)(S->n - r0) : SCAN_BLOCK;
    rw_scan_block(S->label_type, S->labels, r0, m, S->classes, S->ignore_index, S->weight,
                  &S->blocks[u]);
}

/* the blocks on the threads, combined in order; returns 0, or -2 out of memory */
static int rw_scan_all(int label_type, const void *labels, int64_t n, int64_t classes,
                       int64_t ignore_index, const double *weight, int nthreads, rw_scan *total)
{
    const int64_t units = (n + SCAN_BLOCK - 1) / SCAN_BLOCK;
    rw_scan small[4];
    rw_scan_job S = {label_type, labels, n, classes, ignore_index, weight, small};
    if (units > 4 && !(S.blocks = rw_scratch(RW_SCRATCH_SCAN, (size_t)units * sizeof(rw_scan))))
        return -2;
    fl_parallel_for(rw_scan_unit, &S, units, units > 1 ? nthreads : 1);
    total->bad = -1;
    total->count = 0;
    total->wsum = 0.0;
    for (int64_t u = 0; u < units; u++) {
        if (S.blocks[u].bad >= 0) {
            total->bad = S.blocks[u].bad;
            return 0;
        }
        total->count += S.blocks[u].count;
        total->wsum += S.blocks[u].wsum;
    }
    return 0;
}

int64_t fl_scan_labels(int label_type, const void *labels, int64_t n, int64_t classes,
                       int64_t ignore_index, const double *weight, double *weight_sum,
                       int64_t *count)
{
    if (label_type < 0 || label_type > 2)
        return -2;
    rw_scan total;
    if (rw_scan_all(label_type, labels, n, classes, ignore_index, weight,
                    fl_threads_for(n), &total))
        return -3;
    *count = total.count;
    *weight_sum = total.wsum;
    return total.bad;
}

/* ---- the driver ------------------------------------------------------------------ */

/* Long rows, few of them: the segments' statistics on the threads, then per
 * row the fold and the finish, then the gradients. */
static int rw_split(rw_job *J, fl_unit_fn fn, int nthreads)
{
    const fl_row_args *A = J->A;
    const int64_t R = A->n, units = R * J->nseg;
    J->segs = rw_scratch(RW_SCRATCH_SEGS, (size_t)units * sizeof(rw_seg));
    J->coefs = rw_scratch(RW_SCRATCH_COEFS, (size_t)R * sizeof(rw_coef));
    if (!J->segs || !J->coefs)
        return -2;
    J->phase = RW_PHASE_SPLIT_STATS;
    fl_parallel_for(fn, J, units, nthreads);
    J->phase = RW_PHASE_SPLIT_FINISH;
    fl_parallel_for(fn, J, R, nthreads);
    double total = 0.0;
    for (int64_t r = 0; r < R; r++)
        total += J->coefs[r].value; /* one row per unit, as in the fused loop for rows this long */
    if (A->grad) {
        J->phase = RW_PHASE_SPLIT_GRAD;
        fl_parallel_for(fn, J, units, nthreads);
    }
    ((fl_row_args *)A)->total = total;
    return 0;
}

int fl_rowwise(int loss, int dtype, fl_row_args *A)
{
    if (!A || loss < 0 || loss >= RW_NLOSS || (dtype != 0 && dtype != 1) || A->label_type < 0 ||
        A->label_type > 2 || A->classes < 1 || A->mean_by < 0 || A->mean_by > 2)
        return -1;
    A->total = 0.0;
    A->bad = -1;
    const int64_t C = A->classes, S = A->inner, R = A->n * S;
    if ((loss == RW_LOSS(multi_margin) || loss == RW_LOSS(crammer_singer)) && S != 1)
        return -1;
    /* threads by the work: nll's value reads one element per row; the softmax losses
     * take an exp per element (~2.5 ns), worth threads from an eighth of FL_PAR_MIN */
    const int softmax = loss == RW_LOSS(cross_entropy) || loss == RW_LOSS(cross_entropy_prob) ||
                        loss == RW_LOSS(softmax_focal);
    const int nthreads = fl_threads_for(loss == RW_LOSS(nll) && !A->grad ? R
                                        : softmax                       ? 8 * R * C
                                                                        : R * C);
    rw_job J = {0};
    J.gs = A->grad_scale;
    double scale = 1.0;    /* the mean's 1 / divisor */
    if (A->check_labels && loss != RW_LOSS(cross_entropy_prob)) {
        rw_scan found;
        if (rw_scan_all(A->label_type, A->target, R, C, A->ignore_index, A->weight,
                        fl_threads_for(R), &found))
            return -2;
        A->bad = found.bad;
        if (found.bad >= 0)
            return 0;
        A->count = found.count;
        A->weight_sum = found.wsum;
    } else {
        A->count = R;
        A->weight_sum = (double)R;
    }
    if (A->mean_by) {
        const double d = A->mean_by == 1 ? A->weight_sum : (double)A->count;
        scale = d != 0.0 ? 1.0 / d : NAN;
        J.gs *= scale;
    }
    if (R <= 0 || !(A->out || A->grad || A->want_total)) {
        A->total = 0.0 * scale;   /* an empty mean is 0/0: nan */
        return 0;
    }
    J.A = A;
    J.loss = loss;
    J.need = loss == RW_LOSS(cross_entropy_prob)                      ? RW_NEED_PROB
             : loss == RW_LOSS(cross_entropy) && A->smoothing != 0.0 ? RW_NEED_WX
                                                                     : RW_NEED_NONE;
    J.keep = 1.0 - A->smoothing;
    J.add = A->smoothing / (double)C;
    const size_t size = dtype == 0 ? sizeof(float) : sizeof(double);
    if (A->weight) {
        void *wt = rw_scratch(RW_SCRATCH_WT, (size_t)C * size);
        if (!wt)
            return -2;
        for (int64_t c = 0; c < C; c++) {
            J.W += A->weight[c];
            if (dtype == 0)
                ((float *)wt)[c] = (float)A->weight[c];
            else
                ((double *)wt)[c] = A->weight[c];
        }
        J.wt = wt;
        J.wd = A->weight;
    } else {
        double *ones = rw_scratch(RW_SCRATCH_ONES, (size_t)C * sizeof(double));
        if (!ones)
            return -2;
        for (int64_t c = 0; c < C; c++)
            ones[c] = 1.0;
        J.W = (double)C;
        J.wd = ones;
    }
    const fl_unit_fn fn = unit_fns[dtype][fl_isa_now()];
    int rc = 0;
    int64_t units;
    if (S == 1) {
        J.nseg = (C + RW_SEG - 1) / RW_SEG;
        if (softmax && ((J.nseg >= 4 && R < 4 * (int64_t)nthreads && nthreads > 1) ||
                        J.nseg > RW_ROW_SEGS)) {
            rc = rw_split(&J, fn, nthreads);
            A->total *= scale;
            return rc;
        }
        J.phase = RW_PHASE_ROWS;
        J.rows_per_unit = C >= FL_UNIT ? 1 : FL_UNIT / C;
        if (C <= RW_SHORT && (loss == RW_LOSS(cross_entropy) || loss == RW_LOSS(softmax_focal))) {
            const int64_t b = RW_SHORT_VALUES / C;
            J.short_block = b < RW_TILE ? b : RW_TILE;
        }
        units = (R + J.rows_per_unit - 1) / J.rows_per_unit;
    } else {
        /* a tile's C x B values stay in L2 between its passes */
        int64_t b = ((int64_t)1 << 18) / C / 16 * 16;
        b = b < 16 ? 16 : b > RW_TILE ? RW_TILE : b;
        J.tile = b < S ? b : S;
        J.tiles = (S + J.tile - 1) / J.tile;
        J.phase = RW_PHASE_TILES;
        units = A->n * J.tiles;
    }
    double small[64];
    J.partials = units <= 64 ? small : rw_scratch(RW_SCRATCH_PARTIALS, (size_t)units * sizeof(double));
    if (!J.partials)
        return -2;
    fl_parallel_for(fn, &J, units, nthreads);
    double total = 0.0;
    for (int64_t u = 0; u < units; u++)
        total += J.partials[u];
    A->total = total * scale;
    return rc;
}
