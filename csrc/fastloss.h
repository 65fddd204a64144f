/* fastloss.h -- the C ABI of fastloss._native (cffi API mode).
 *
 * This header is read twice: by the C compiler, and (the part between the
 * FL_CDEF markers) by cffi's cdef, so it must stay plain C declarations.
 */
#ifndef FASTLOSS_H
#define FASTLOSS_H
#include <stdint.h>

/* The single list of elementwise losses: C symbols, the name table and the
 * Python names all come from it.  X(name) with name as in fl_ew_name(). */
#define FL_ELEMENTWISE_LOSSES(X) \
    X(mse) X(l1) X(huber) X(smooth_l1) X(log_cosh) X(quantile) \
    X(bce) X(bce_logits) X(sigmoid_focal) X(hinge)

/* The row-wise (multi-class) kernels, in the order of fl_row_name(). */
#define FL_ROWWISE_LOSSES(X) \
    X(cross_entropy) X(cross_entropy_prob) X(nll) X(softmax_focal) X(multi_margin) \
    X(crammer_singer)

/* ignore_index of the losses that have none: the label scans check a label
 * equal to it like any other (int64 labels can hold it) */
#define FL_NO_IGNORE INT64_MIN

/* FL_CDEF_BEGIN */
/* Arguments of one elementwise call.  Every array holds n elements of the
 * call's dtype, contiguous.  Pointers that may be NULL say so. */
typedef struct {
    const void *input;     /* x */
    const void *target;    /* y */
    const void *weight;    /* w, or NULL: w = 1 */
    const void *param;     /* per-element parameter a (pos_weight, q), or NULL: a = p0 */
    double p0, p1;         /* scalar parameters; meaning per loss */
    int64_t n;
    /* 0, or the length L < n of a periodic weight / param: element i reads index
     * i % L (a broadcast over trailing axes, e.g. a (C,) weight over (N, C)) */
    int64_t weight_period, param_period;
    void *out;             /* if not NULL: out[i] = w*l (in the dtype) */
    void *grad;            /* if not NULL: grad[i] = grad_scale*w*g */
    double grad_scale;
    int want_total;        /* if not 0: total = sum of w*l in float64, deterministic */
    double total;          /* result */
} fl_ew_args;

int fl_ew_count(void);
const char *fl_ew_name(int loss);
/* dtype: 0 float32, 1 float64.  Returns 0, or -1 for a bad loss/dtype, -2 out of memory. */
int fl_elementwise(int loss, int dtype, fl_ew_args *args);

/* Arguments of one row-wise call.  `input` holds n*classes*inner elements
 * of the dtype, contiguous, read as (N, C, S): element (i, c, s) at
 * (i*C + c)*S + s.  A row is one (i, s): N*S rows, row r = i*S + s.  The
 * per-row formulas are in rowwise.c. */
typedef struct {
    const void *input;
    const void *target;     /* labels (label_type), or probabilities like input */
    int label_type;         /* 0 int32, 1 int64, 2 uint8 */
    const double *weight;   /* classes weights, or NULL: 1 */
    const double *alpha;    /* softmax_focal: classes alphas, or NULL: p0 */
    int64_t n, classes, inner;
    int64_t ignore_index;
    double smoothing, z_loss;
    double p0, p1;          /* meaning per loss (see rowwise.c) */
    void *out;              /* if not NULL: the N*S row values (in the dtype) */
    void *grad;             /* if not NULL: grad_scale * d(sum of rows)/d input */
    double grad_scale;
    int want_total;         /* if not 0: total = sum of the row values, float64, deterministic */
    double total;
    /* Labels checked in the same call (index targets): with check_labels, the
     * labels are scanned first (on the threads, in blocks combined in order),
     * and a bad one stops the call before anything is written. */
    int check_labels;
    int mean_by;            /* 0: as given; 1: the gradient and total are divided by
                               weight_sum, 2: by count (0 -> nan, as PyTorch's 0/0) */
    int64_t bad;            /* result with check_labels: the first row whose label is
                               outside [0, classes) and not ignore_index, or -1 */
    int64_t count;          /* result with check_labels: the labels != ignore_index */
    double weight_sum;      /* ... and the sum of weight[label] over them (count without weight) */
} fl_row_args;

int fl_row_count(void);
const char *fl_row_name(int loss);
/* Returns 0, -1 for a bad loss/dtype/label type, -2 out of memory. */
int fl_rowwise(int loss, int dtype, fl_row_args *args);
/* Label check: the first index r < n with labels[r] outside [0, classes) and
 * != ignore_index, or -1 if none; then *count = the labels != ignore_index and
 * *weight_sum = the sum of weight[label] over them (= count without weight). */
int64_t fl_scan_labels(int label_type, const void *labels, int64_t n, int64_t classes,
                       int64_t ignore_index, const double *weight, double *weight_sum,
                       int64_t *count);

/* Threads: n <= 0 restores the default (OMP_NUM_THREADS, else the CPUs this
 * process may run on).  Returns the count in effect. */
int fl_set_num_threads(int n);
int fl_get_num_threads(void);

/* Instruction-set paths: 0 baseline, 1 AVX2+FMA, 2 AVX-512 (x86-64 only).
 * fl_set_isa(-1) picks the best the CPU has (also the default, unless the
 * environment variable FASTLOSS_ISA=baseline|avx2|avx512 says otherwise).
 * Returns the level in effect, or -1 if the CPU lacks it (nothing changes). */
int fl_set_isa(int level);
int fl_get_isa(void);
int fl_max_isa(void);
const char *fl_isa_name(int level);

/* Value checks run before the loss kernels: the first index i with
 * x[i] < lo or x[i] > hi or x[i] NaN, or -1 if none. */
int64_t fl_find_outside(int dtype, const void *x, int64_t n, double lo, double hi);
/* the first index with x[i] not exactly -1 or +1, or -1 if none */
int64_t fl_find_not_pm1(int dtype, const void *x, int64_t n);

/* The vector math the kernels use, exposed for the accuracy tests:
 * fn 0 exp, 1 log, 2 log1p, 3 expm1; y[i] = f(x[i]) on the current ISA path. */
int fl_math(int fn, int dtype, const void *x, void *y, int64_t n);
/* ---- overlap (Dice family) ----
 * Per-class sums over a volume.  `input` holds n*classes*inner elements of
 * the dtype, read as (N, C, S); a voxel is one (i, s).  p = the activation of
 * the input (per voxel softmax over the C values, sigmoid, or none).
 * Statistics per (i, c), float64, over the voxels whose label is not
 * ignore_index, in an order fixed by the shape:
 *   I = sum p t,  P = sum p^q,  T = sum t^q   (q = 2 if squared, else 1)
 * with t = [label == c + label_base] for labels, the mask value otherwise. */
typedef struct {
    const void *input;
    const void *target;     /* labels (N*S) or a mask (N*C*S), see target_type */
    int target_type;        /* 0 int32 labels, 1 int64 labels, 2 uint8 labels,
                               3 uint8 mask, 4 mask in the dtype */
    int activation;         /* 0 none, 1 softmax, 2 sigmoid */
    int squared;
    int64_t n, classes, inner;
    int64_t ignore_index;   /* labels only */
    int64_t label_base;
    double *stats;          /* fl_overlap_stats writes (N, C, 3): I, P, T */
    const double *coef;     /* fl_overlap_grad reads (N, C, 2): dL/dp = a t + b (2p if squared, else 1) */
    void *grad;             /* NULL, or like the input: fl_overlap_stats stores p there,
                               fl_overlap_grad turns it into dL/d input (0 at ignored voxels) */
} fl_overlap_args;

/* Returns 0, -1 for bad arguments, -2 out of memory. */
int fl_overlap_stats(int dtype, fl_overlap_args *args);
/* Needs the p stored by fl_overlap_stats in args->grad. */
int fl_overlap_grad(int dtype, fl_overlap_args *args);

/* ---- boxes ----
 * Box regression losses (torchvision's generalized / distance / complete IoU
 * losses, csrc/boxes.c): n pairs of boxes (x1, y1, x2, y2), each array 4n
 * values of the dtype, interleaved and contiguous; boxes2 are the targets.
 * Per box i: l_i (formulas in boxes_math.h), and d l_i / d boxes1_i. */
typedef struct {
    const void *boxes1;     /* 4n values */
    const void *boxes2;     /* 4n values, the targets (no gradient) */
    int64_t n;              /* boxes */
    double eps;             /* in iou = I / (U + eps) and the enclosing-box terms */
    double eps_alpha;       /* ciou only: alpha = v / (1 - iou + v + eps_alpha) */
    void *out;              /* if not NULL: the n values l_i (in the dtype) */
    void *grad;             /* if not NULL: 4n values grad_scale * d l_i / d boxes1_i */
    double grad_scale;
    int want_total;         /* if not 0: total = sum of the l_i in float64, deterministic */
    int check;              /* if not 0: look for degenerate boxes in the same pass */
    double total;           /* result */
    int64_t bad1, bad2;     /* results with check: the first box i of boxes1 / boxes2 with
                               x2 < x1 or y2 < y1 (NaN is not), or -1; then the caller
                               discards out, grad and total */
} fl_box_args;

int fl_box_count(void);
const char *fl_box_name(int loss);   /* "giou", "diou", "ciou" */
/* dtype: 0 float32, 1 float64.  Returns 0, -1 bad loss/dtype, -2 out of memory. */
int fl_boxes(int loss, int dtype, fl_box_args *args);
/* The first box i < n with x2 < x1 or y2 < y1 (NaN is not), or -1 if none;
 * -2 bad dtype, -3 out of memory. */
int64_t fl_boxes_first_degenerate(int dtype, const void *boxes, int64_t n);
/* y[i] = atan(x[i]) as the kernels compute it, on the current ISA path (tests). */
int fl_boxes_atan(int dtype, const void *x, void *y, int64_t n);

/* ---- pairwise ----
 * Tiles of the Gram matrix G = a b^T (csrc/pairwise.c): a (na, d) and b
 * (nb, d), contiguous, of the dtype.  Per pair, from g = a_i . b_j and the
 * float64 squared norms: d = max(|a_i|^2 + |b_j|^2 - 2 g, 0) (sqeuclidean),
 * its sqrt (euclidean), 1 - g (cosine, on normalized rows); with same, the
 * pair (i, i) has d = 0.  The ops (fastloss/kernels/__init__.py PAIRWISE):
 *  0 matrix: out (na, nb) = d
 *  1 lse: lse[i] = log sum_j exp(scale g_ij)  (j != i with exclude_diag;
 *    g_ij times row_scale_i col_scale_j where given, here and in op 2)
 *  2 softmax product: out (na, d) += gain sum_j exp(scale g_ij - row_shift_i
 *    - col_shift_j) b_j  (shifts NULL: 0; j != i with exclude_diag)
 *  3 contrastive stats (a = b, same): stats (na, 4) = per row over j != i:
 *    sum of relu(d - pos_margin) over equal labels, how many are > 0,
 *    sum of relu(neg_margin - d) over other labels, how many are > 0
 *  4 contrastive grad: out (na, d) = the gradient of cpos * (sum of the
 *    positive terms) + cneg * (sum of the negative terms) over ordered pairs
 *  5 hardest: pos[i] = the first j != i of equal label with the largest d,
 *    neg[i] = the first j of another label with the smallest d (-1: none)
 *  6 lse product: ops 1 and 2 in one pass: lse as op 1, and out (na, d) +=
 *    gain sum_j exp(scale g_ij - lse_i) col_weight_j b_j (an online softmax:
 *    the running sums are rescaled when a row's max grows) */
typedef struct {
    int op;
    int metric;              /* 0 euclidean, 1 sqeuclidean, 2 cosine */
    int same;                /* b is a */
    int exclude_diag;        /* ops 1, 2 */
    const void *a;
    const void *b;
    int64_t na, nb, d;
    const double *norm_a;    /* squared norms, for the euclidean metrics */
    const double *norm_b;
    const int32_t *labels;   /* ops 3-5: label codes of the rows */
    double scale, gain;
    const double *row_shift;
    const double *col_shift;
    const double *row_scale;  /* ops 1, 2: g_ij is taken as g_ij row_scale_i col_scale_j */
    const double *col_scale;  /* (NULL: 1), e.g. inverse norms instead of normalized copies */
    const double *col_weight; /* op 6: the product uses b_j col_weight_j (NULL: 1) */
    double pos_margin, neg_margin, cpos, cneg;
    void *out;
    double *lse;
    double *stats;
    int64_t *pos;
    int64_t *neg;
} fl_pair_args;

/* dtype: 0 float32, 1 float64.  Returns 0, -1 bad arguments, -2 out of memory. */
int fl_pair(int dtype, fl_pair_args *args);

/* Row kernels of the family, no pairs: kind 0 triplet margin (a, p, n each
 * (rows, d); torch's triplet_margin_loss per row: d(u, v) = ||u - v + eps||_p,
 * loss = max(margin + d(a, p) - d_an, 0), d_an = d(a, n), or with swap
 * min(d(a, n), d(p, n)), half the gradient to each at a tie, and the gradient
 * passes at loss = 0 as torch's clamp_min); kind 1 InfoNCE
 * with paired negatives (a = queries, p = positive keys (rows, d), n =
 * negatives (rows, m, d), rows normalized: z = scale [q.k, q.n_1 ...],
 * loss = logsumexp(z) - z_0).  Gradients (if ga) = gain * d loss / d (a, p, n).
 * The host glue of the pairwise losses: kind 2 row norms (loss[i] = ||a_i||_2,
 * and if ga, ga_i = a_i / max(||a_i||, eps) in the dtype); kind 3 row dots
 * (loss[i] = a_i . p_i); kind 4 the normalization's backward (a = g, p = the
 * normalized rows u, or x itself with raw, norms = ||x_i||: ga_i = (g_i - u_i
 * (u_i . g_i)) / norms_i where norms_i >= eps, else g_i / eps; ga may be a);
 * kind 5 a scaled copy (ga_i = c_i a_i, c_i = norms_i, or scale if norms is
 * NULL); kind 6 the gradient of sum_k norms_k d(a_{pi_k}, a_{pj_k}) for m pairs
 * (metric 0 euclidean, 1 squared, 2 cosine 1 - u.v), accumulated in float64
 * pair by pair in blocks of 1024 (the i ends, then the j ends), into ga (the
 * dtype).  Sums and products in float64, in a fixed order. */
typedef struct {
    int kind;
    const void *a;
    const void *p;
    const void *n;
    int64_t rows, d, m;
    double margin, p_norm, eps;
    int swap;
    double scale, gain;
    double *loss;            /* (rows,) float64 */
    void *ga;                /* NULL: no gradients */
    void *gp;
    void *gn;
    const double *norms;     /* kinds 4, 5 (N,); kind 6 the pairs' coefficients (m,) */
    int raw;                 /* kind 4 */
    const int64_t *pi;       /* kind 6: the pairs' rows (m,) each */
    const int64_t *pj;
    int metric;              /* kind 6 */
} fl_pair_rows_args;

int fl_pair_rows(int dtype, fl_pair_rows_args *args);

/* FL_CDEF_END */

#endif
