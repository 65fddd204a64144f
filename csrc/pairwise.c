/* pairwise.c -- tiles of the Gram matrix a b^T for the representation-learning
 * losses (fl_pair_args in fastloss.h): distance matrices, online
 * log-sum-exp, softmax-weighted products, the contrastive sums and their
 * gradient, batch-hard mining.  No (na, nb) matrix is held (but the distance
 * matrix the caller asks for): each row tile of PW_MB rows of a runs over the
 * column tiles of PW_NB rows of b in order, computing the tile with a
 * register-blocked micro-kernel (PW_MR rows x two vectors of columns, FMA on
 * the AVX2 / AVX-512 paths) from packed copies of its rows, using it and
 * dropping it.  Row tiles are the units of the thread pool and every row's
 * sums run over the same tiles in the same order: results depend on the shape,
 * never on the thread count.  Extra memory: a workspace of about 200 kB per
 * thread (float32, D = 128).
 *
 * Tile products (S = a_I b_J^T, P b_J) are computed in the dtype, as a BLAS
 * would; everything summed over tiles is float64 (lanes, folded in a fixed
 * order), as are the per-row products P b_J added over the column tiles. */
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

#define PW_MR 6           /* rows of a micro-tile */
#define PW_MB 192         /* rows of a row tile: a multiple of PW_MR (each b tile is packed once per row tile) */
#define PW_NB 128         /* rows of b per column tile: a multiple of every NR (<= 32) */
#define PW_KC 256         /* most columns (of D) per packed panel */

enum { PW_OP_MATRIX, PW_OP_LSE, PW_OP_SOFTMAX_PRODUCT, PW_OP_CONTRASTIVE_STATS,
       PW_OP_CONTRASTIVE_GRAD, PW_OP_HARDEST, PW_OP_LSE_PRODUCT, PW_NOPS };
enum { PW_EUCLIDEAN, PW_SQEUCLIDEAN, PW_COSINE };

typedef struct {
    const fl_pair_args *A;
    volatile int failed;     /* a unit could not get its workspace */
} pw_job;

#define PW_ROWS 256       /* rows per unit of the row kernels */
typedef struct {
    const fl_pair_rows_args *A;
    volatile int failed;
} pw_rows_job;

/* the running reductions of one row */
typedef struct {
    double m;                     /* lse: the running max */
    double lanes[4][FL_LANES];    /* lse: lanes[0]; contrastive: the four sums */
    double best_pos, best_neg;    /* hardest */
    int64_t pos, neg;
} pw_rowstate;

static void pw_row_init(pw_rowstate *R)
{
    memset(R, 0, sizeof *R);
    R->m = -INFINITY;
    R->best_pos = -INFINITY;
    R->best_neg = INFINITY;
    R->pos = R->neg = -1;
}

#define FL_TEMPLATE "pairwise_impl.h"
#define T float
#define FL_SFX f32
#define PW_F32 1
#include "isa_paths.h"
#undef T
#undef FL_SFX
#undef PW_F32
#define T double
#define FL_SFX f64
#define PW_F32 0
#include "isa_paths.h"
#undef T
#undef FL_SFX
#undef PW_F32

#if FL_X86
static const fl_unit_fn pw_units[2][FL_NISA] = {
    {pw_unit_f32_base, pw_unit_f32_avx2, pw_unit_f32_avx512},
    {pw_unit_f64_base, pw_unit_f64_avx2, pw_unit_f64_avx512},
};
static const fl_unit_fn pw_rows_units[2][FL_NISA] = {
    {pw_rows_unit_f32_base, pw_rows_unit_f32_avx2, pw_rows_unit_f32_avx512},
    {pw_rows_unit_f64_base, pw_rows_unit_f64_avx2, pw_rows_unit_f64_avx512},
};
#else
static const fl_unit_fn pw_units[2][FL_NISA] = {{pw_unit_f32_base}, {pw_unit_f64_base}};
static const fl_unit_fn pw_rows_units[2][FL_NISA] = {{pw_rows_unit_f32_base},
                                                     {pw_rows_unit_f64_base}};
#endif

int fl_pair(int dtype, fl_pair_args *A)
{
    if (!A || (dtype != 0 && dtype != 1) || A->op < 0 || A->op >= PW_NOPS || A->metric < 0 ||
        A->metric > PW_COSINE || A->na < 0 || A->nb < 0 || A->d < 1 || !A->a || !A->b)
        return -1;
    const int op = A->op;
    const int needs_norms = (op == PW_OP_MATRIX || (op >= PW_OP_CONTRASTIVE_STATS &&
                                                   op <= PW_OP_HARDEST)) &&
                            A->metric != PW_COSINE;
    if ((needs_norms && (!A->norm_a || !A->norm_b)) ||
        (op >= PW_OP_CONTRASTIVE_STATS && op <= PW_OP_HARDEST && (!A->labels || !A->same)) ||
        ((op == PW_OP_LSE || op == PW_OP_LSE_PRODUCT) && !A->lse) || (op == PW_OP_CONTRASTIVE_STATS && !A->stats) ||
        (op == PW_OP_HARDEST && (!A->pos || !A->neg)) ||
        ((op == PW_OP_MATRIX || op == PW_OP_SOFTMAX_PRODUCT || op == PW_OP_CONTRASTIVE_GRAD ||
          op == PW_OP_LSE_PRODUCT) &&
         !A->out))
        return -1;
    if (A->na == 0)
        return 0;
    pw_job J = {A, 0};
    const int64_t units = (A->na + PW_MB - 1) / PW_MB;
    fl_parallel_for(pw_units[dtype][fl_isa_now()], &J, units,
                    fl_threads_for(A->na * (A->nb > 0 ? A->nb : 1) * A->d));
    return J.failed ? -2 : 0;
}

int fl_pair_rows(int dtype, fl_pair_rows_args *A)
{
    if (!A || (dtype != 0 && dtype != 1) || A->kind < 0 || A->kind > 6 || A->rows < 0 ||
        A->d < 1 || A->m < 0 || (A->kind <= 3 && !A->loss) || (A->rows && !A->a) ||
        (A->rows && A->kind <= 1 && (!A->p || !A->n)) ||
        (A->rows && (A->kind == 3 || A->kind == 4) && !A->p) ||
        (A->kind == 4 && !A->norms) || (A->kind >= 4 && !A->ga) ||
        (A->kind == 6 && (!A->norms || (A->m && (!A->pi || !A->pj)) || A->metric < 0 ||
                          A->metric > 2)) ||
        (A->kind <= 1 && A->ga && (!A->gp || !A->gn)))
        return -1;
    if (A->rows == 0)
        return 0;
    pw_rows_job J = {A, 0};
    const int64_t per_row = A->kind == 0 ? 3 * A->d : A->kind == 1 ? (A->m + 1) * A->d : A->d;
    if (A->kind == 6)   /* one unit: the pairs in order */
        fl_parallel_for(pw_rows_units[dtype][fl_isa_now()], &J, 1, 1);
    else
        fl_parallel_for(pw_rows_units[dtype][fl_isa_now()], &J, (A->rows + PW_ROWS - 1) / PW_ROWS,
                        fl_threads_for(A->rows * per_row));
    return J.failed ? -2 : 0;
}
