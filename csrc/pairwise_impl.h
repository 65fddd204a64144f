/* pairwise_impl.h -- the tile loops of the pairwise kernels, a template:
 * pairwise.c includes it once per dtype x ISA path (through isa_paths.h) with
 * T, FL_SFX, FL_FLV, FL_ISA, FL_ATTR and FL_VBYTES defined.  No guard.
 *
 * One unit of work is a row tile of PW_MB rows of a.  It packs its rows once,
 * then for every column tile of PW_NB rows of b, in order: packs them, computes
 * the Gram tile S = a_I b_J^T with the register-blocked micro-kernel, and hands
 * S to the op (pw_consume).  The product ops then multiply the tile's
 * coefficients P (written by pw_consume straight into the packed layout) by
 * b_J with the same micro-kernel, adding each tile's product to a float64
 * accumulator.  Everything a row gets depends on the shape only. */

#define PW_NAME_(name, sfx, isa) pw_##name##_##sfx##_##isa
#define PW_NAME(name, sfx, isa) PW_NAME_(name, sfx, isa)
#define PW(name) PW_NAME(name, FL_SFX, FL_ISA)
#define VM(f) FL_CAT3(fl_##f, FL_SFX, FL_FLV)
#define LANES_ADD FL_CAT(fl_lanes_add, FL_SFX)

#define VL (FL_VBYTES / (int)sizeof(T))   /* values per vector */
#define NR (2 * VL)                        /* micro-tile columns: two vectors */
typedef T PW(vec) __attribute__((vector_size(FL_VBYTES)));
#define V PW(vec)

/* a*b + c, fused where the target has FMA (the baseline path has none) */
FL_ATTR FL_INLINE V PW(madd)(V a, V b, V c)
{
#if FL_X86 && FL_VBYTES == 32 && PW_F32
    return (V)_mm256_fmadd_ps((__m256)a, (__m256)b, (__m256)c);
#elif FL_X86 && FL_VBYTES == 32
    return (V)_mm256_fmadd_pd((__m256d)a, (__m256d)b, (__m256d)c);
#elif FL_X86 && FL_VBYTES == 64 && PW_F32
    return (V)_mm512_fmadd_ps((__m512)a, (__m512)b, (__m512)c);
#elif FL_X86 && FL_VBYTES == 64
    return (V)_mm512_fmadd_pd((__m512d)a, (__m512d)b, (__m512d)c);
#else
    return a * b + c;
#endif
}

/* x in every lane (an explicit broadcast: 0 + x would be an addition) */
FL_ATTR FL_INLINE V PW(splat)(T x)
{
#if FL_X86 && FL_VBYTES == 64 && PW_F32
    return (V)_mm512_set1_ps(x);
#elif FL_X86 && FL_VBYTES == 64
    return (V)_mm512_set1_pd(x);
#elif FL_X86 && FL_VBYTES == 32 && PW_F32
    return (V)_mm256_set1_ps(x);
#elif FL_X86 && FL_VBYTES == 32
    return (V)_mm256_set1_pd(x);
#elif FL_X86 && PW_F32
    return (V)_mm_set1_ps(x);
#elif FL_X86
    return (V)_mm_set1_pd(x);
#else
    V v;
    for (int k = 0; k < VL; k++)
        v[k] = x;
    return v;
#endif
}

/* the largest of s[0, n) (NaN is skipped), in FL_LANES lanes: a vector loop */
FL_ATTR FL_INLINE T PW(row_max)(const T *s, int64_t n)
{
    T lane[FL_LANES];
    for (int k = 0; k < FL_LANES; k++)
        lane[k] = -INFINITY;
    int64_t j = 0;
    for (; j + FL_LANES <= n; j += FL_LANES)
        for (int k = 0; k < FL_LANES; k++)
            lane[k] = s[j + k] > lane[k] ? s[j + k] : lane[k];
    for (int k = 0; j + k < n; k++)
        lane[k] = s[j + k] > lane[k] ? s[j + k] : lane[k];
    T mx = lane[0];
    for (int k = 1; k < FL_LANES; k++)
        mx = lane[k] > mx ? lane[k] : mx;
    return mx;
}

/* C (PW_MR x NR) = sum over p < k of ap[p][r] * bp[p][c] (packed operands);
 * stored to c (row stride ldc, the first rows x cols of it), or, with acc,
 * added in float64 to acc (row stride lda). */
FL_ATTR static void PW(micro)(int64_t k, const T *FL_RESTRICT ap, const T *FL_RESTRICT bp,
                              T *c, int64_t ldc, double *acc, int64_t lda, int rows, int cols)
{
    V c0[PW_MR], c1[PW_MR];
    for (int r = 0; r < PW_MR; r++)
        c0[r] = c1[r] = (V){0};
    for (int64_t p = 0; p < k; p++) {
        V b0, b1;
        memcpy(&b0, bp, sizeof b0);
        memcpy(&b1, bp + VL, sizeof b1);
        for (int r = 0; r < PW_MR; r++) {
            const V ar = PW(splat)(ap[r]);
            c0[r] = PW(madd)(ar, b0, c0[r]);
            c1[r] = PW(madd)(ar, b1, c1[r]);
        }
        ap += PW_MR;
        bp += NR;
    }
    T t[PW_MR][NR];
    for (int r = 0; r < PW_MR; r++) {
        memcpy(&t[r][0], &c0[r], sizeof c0[r]);
        memcpy(&t[r][VL], &c1[r], sizeof c1[r]);
    }
    if (acc) {
        for (int r = 0; r < rows; r++)
            for (int j = 0; j < cols; j++)
                acc[r * lda + j] += (double)t[r][j];
    } else {
        for (int r = 0; r < rows; r++)
            memcpy(c + r * ldc, t[r], (size_t)cols * sizeof(T));
    }
}

/* rows [0, m) of x (row stride ld), columns [p0, p0 + k): groups of PW_MR rows,
 * each k x PW_MR, value (p, r) at p * PW_MR + r; rows past m are 0 */
FL_ATTR static void PW(pack_rows)(const T *x, int64_t ld, int64_t m, int64_t p0, int64_t k, T *dst)
{
    for (int64_t g = 0; g < m; g += PW_MR, dst += k * PW_MR) {
        const int rows = (int)(m - g < PW_MR ? m - g : PW_MR);
        for (int r = 0; r < PW_MR; r++) {
            const T *src = x + (g + (r < rows ? r : 0)) * ld + p0;
            for (int64_t p = 0; p < k; p++)
                dst[p * PW_MR + r] = r < rows ? src[p] : (T)0;
        }
    }
}

/* the same with NR rows per panel (the b side of S = a b^T); full panels go
 * through 4 x 4 (float32) or 2 x 2 (float64) SSE transposes, a quarter or
 * half the loads and stores of the scalar loop (packing was a fifth of the
 * log-sum-exp pass) */
FL_ATTR static void PW(pack_cols)(const T *x, int64_t ld, int64_t n, int64_t p0, int64_t k, T *dst)
{
    for (int64_t g = 0; g < n; g += NR, dst += k * NR) {
        const int rows = (int)(n - g < NR ? n - g : NR);
#if FL_X86
        if (rows == NR) {
            const T *src = x + g * ld + p0;
            int64_t p = 0;
#if PW_F32
            for (; p + 4 <= k; p += 4)
                for (int r = 0; r < NR; r += 4) {
                    const float *s0 = src + r * ld + p;
                    __m128 r0 = _mm_loadu_ps(s0), r1 = _mm_loadu_ps(s0 + ld),
                           r2 = _mm_loadu_ps(s0 + 2 * ld), r3 = _mm_loadu_ps(s0 + 3 * ld);
                    _MM_TRANSPOSE4_PS(r0, r1, r2, r3);
                    _mm_storeu_ps(dst + (p + 0) * NR + r, r0);
                    _mm_storeu_ps(dst + (p + 1) * NR + r, r1);
                    _mm_storeu_ps(dst + (p + 2) * NR + r, r2);
                    _mm_storeu_ps(dst + (p + 3) * NR + r, r3);
                }
#else
            for (; p + 2 <= k; p += 2)
                for (int r = 0; r < NR; r += 2) {
                    const double *s0 = src + r * ld + p;
                    const __m128d u = _mm_loadu_pd(s0), v = _mm_loadu_pd(s0 + ld);
                    _mm_storeu_pd(dst + (p + 0) * NR + r, _mm_unpacklo_pd(u, v));
                    _mm_storeu_pd(dst + (p + 1) * NR + r, _mm_unpackhi_pd(u, v));
                }
#endif
            for (; p < k; p++)
                for (int r = 0; r < NR; r++)
                    dst[p * NR + r] = src[r * ld + p];
            continue;
        }
#endif
        for (int r = 0; r < NR; r++) {
            const T *src = x + (g + (r < rows ? r : 0)) * ld + p0;
            for (int64_t p = 0; p < k; p++)
                dst[p * NR + r] = r < rows ? src[p] : (T)0;
        }
    }
}

/* rows [0, k) of x (k x d, row stride ld) as panels of NR columns, each k x NR
 * (the b side of P b_J); columns past d are 0 */
FL_ATTR static void PW(pack_panels)(const T *x, int64_t ld, int64_t k, int64_t d, T *dst)
{
    for (int64_t c0 = 0; c0 < d; c0 += NR, dst += k * NR) {
        const int cols = (int)(d - c0 < NR ? d - c0 : NR);
        for (int64_t p = 0; p < k; p++) {
            T *o = dst + p * NR;
            memcpy(o, x + p * ld + c0, (size_t)cols * sizeof(T));
            for (int c = cols; c < NR; c++)
                o[c] = 0;
        }
    }
}

/* d per pair from the Gram value g and the float64 squared norms */
FL_ATTR FL_INLINE T PW(dist)(int metric, T g, double na, double nb)
{
    if (metric == PW_COSINE)
        return (T)1 - g;
    /* an overflowed float32 Gram value (|a|, |b| ~ 1e19 and up) says nothing of
     * the distance: nan, not the 0 or inf the clamp would make of it */
    if ((double)g - (double)g != 0)
        return (T)NAN;
    double s = na + nb - 2.0 * (double)g;
    s = s < 0 ? 0 : s;   /* (rounding below 0 clamps; NaN stays NaN) */
    return metric == PW_EUCLIDEAN ? (T)sqrt(s) : (T)s;
}

/* s[j] *= scale * row_scale_i * col_scale_j (the factor in float64, then the
 * dtype): the logits of row i in this tile */
FL_ATTR FL_INLINE void PW(scale_row)(const fl_pair_args *A, int64_t i, int64_t j0, int64_t nbt,
                                     T *s)
{
    const double f = A->scale * (A->row_scale ? A->row_scale[i] : 1.0);
    if (A->col_scale) {
        const double *cs = A->col_scale + j0;
        for (int64_t j = 0; j < nbt; j++)
            s[j] *= (T)(f * cs[j]);
    } else {
        const T sc = (T)f;
        for (int64_t j = 0; j < nbt; j++)
            s[j] *= sc;
    }
}

/* The op's use of the Gram tile S (mb x nbt, row stride PW_NB) of rows
 * [i0, i0 + mb) and columns [j0, j0 + nbt).  For the product ops it writes
 * the coefficients P in the packed-rows layout (k = nbt). */
FL_ATTR static void PW(consume)(pw_job *J, int64_t i0, int64_t mb, int64_t j0, int64_t nbt,
                                T *S, T *P, pw_rowstate *st, double *acc, int64_t dpad)
{
    const fl_pair_args *A = J->A;
    const int op = A->op, metric = A->metric;
    const double *nb2 = A->norm_b ? A->norm_b + j0 : NULL;
    const int32_t *lab = A->labels;
    T w[PW_NB];        /* a row of per-pair values */
    for (int64_t r = 0; r < mb; r++) {
        const int64_t i = i0 + r;
        T *s = S + r * PW_NB;
        const int64_t diag = A->same ? i - j0 : -1;    /* the pair (i, i) in this tile? */
        const int has_diag = diag >= 0 && diag < nbt;
        const double na2 = A->norm_a ? A->norm_a[i] : 0.0;
        pw_rowstate *R = &st[r];
        if (op == PW_OP_MATRIX) {
            T *o = (T *)A->out + i * A->nb + j0;
            for (int64_t j = 0; j < nbt; j++)
                o[j] = PW(dist)(metric, s[j], na2, nb2 ? nb2[j] : 0.0);
            if (has_diag)
                o[diag] = 0;
        } else if (op == PW_OP_LSE || op == PW_OP_LSE_PRODUCT) {
            /* online log-sum-exp; LSE_PRODUCT also keeps acc_i = sum_j
             * exp(s_ij - m_i) b_j, rescaled with the sum when the max grows */
            PW(scale_row)(A, i, j0, nbt, s);
            if (has_diag && A->exclude_diag)
                s[diag] = -INFINITY;
            const T mx = PW(row_max)(s, nbt);
            if ((double)mx > R->m) {      /* a new running max: rescale the sums */
                const double f = exp(R->m - (double)mx);
                for (int k = 0; k < FL_LANES; k++)
                    R->lanes[0][k] *= f;
                if (op == PW_OP_LSE_PRODUCT)
                    for (int64_t k = 0; k < A->d; k++)
                        acc[r * dpad + k] *= f;
                R->m = (double)mx;
            }
            T *pr = P + (r / PW_MR) * PW_MR * nbt + r % PW_MR;
            if (R->m == -INFINITY) {      /* nothing yet: no weights */
                if (op == PW_OP_LSE_PRODUCT)
                    for (int64_t j = 0; j < nbt; j++)
                        pr[j * PW_MR] = 0;
                continue;
            }
            const T m = (T)R->m;
            for (int64_t j = 0; j < nbt; j++)
                w[j] = VM(exp)(s[j] - m);
            LANES_ADD(R->lanes[0], w, (int)nbt);
            if (op == PW_OP_LSE_PRODUCT && A->col_weight) {
                const double *cw = A->col_weight + j0;
                for (int64_t j = 0; j < nbt; j++)
                    pr[j * PW_MR] = w[j] * (T)cw[j];
            } else if (op == PW_OP_LSE_PRODUCT) {
                for (int64_t j = 0; j < nbt; j++)
                    pr[j * PW_MR] = w[j];
            }
        } else if (op == PW_OP_SOFTMAX_PRODUCT) {
            const T ri = A->row_shift ? (T)A->row_shift[i] : (T)0;
            PW(scale_row)(A, i, j0, nbt, s);
            if (A->col_shift) {
                const double *cs = A->col_shift + j0;
                for (int64_t j = 0; j < nbt; j++)
                    w[j] = VM(exp)(s[j] - ri - (T)cs[j]);
            } else {
                for (int64_t j = 0; j < nbt; j++)
                    w[j] = VM(exp)(s[j] - ri);
            }
            if (has_diag && A->exclude_diag)
                w[diag] = 0;
            T *pr = P + (r / PW_MR) * PW_MR * nbt + r % PW_MR;
            for (int64_t j = 0; j < nbt; j++)
                pr[j * PW_MR] = w[j];
        } else if (op == PW_OP_CONTRASTIVE_STATS) {
            const T pm = (T)A->pos_margin, nm = (T)A->neg_margin;
            const int32_t li = lab[i];
            T lp[PW_NB], cp[PW_NB], ln[PW_NB], cn[PW_NB];
            for (int64_t j = 0; j < nbt; j++)
                w[j] = PW(dist)(metric, s[j], na2, nb2 ? nb2[j] : 0.0);
            if (has_diag)
                w[diag] = 0;    /* then relu(0 - pos_margin) = 0: (i, i) adds nothing */
            for (int64_t j = 0; j < nbt; j++) {
                const int same = lab[j0 + j] == li;
                const T up = w[j] - pm, un = nm - w[j];
                /* relu that keeps NaN (as torch's), counted only where > 0 */
                lp[j] = same ? (up < 0 ? (T)0 : up) : (T)0;
                ln[j] = !same ? (un < 0 ? (T)0 : un) : (T)0;
                cp[j] = lp[j] > 0 ? (T)1 : (T)0;
                cn[j] = ln[j] > 0 ? (T)1 : (T)0;
            }
            LANES_ADD(R->lanes[0], lp, (int)nbt);
            LANES_ADD(R->lanes[1], cp, (int)nbt);
            LANES_ADD(R->lanes[2], ln, (int)nbt);
            LANES_ADD(R->lanes[3], cn, (int)nbt);
        } else if (op == PW_OP_CONTRASTIVE_GRAD) {
            /* W_ij = 2 c_ij phi_ij: grad_i = x_i sum_j W_ij - sum_j W_ij x_j
             * (cosine: - sum_j W_ij x_j, phi = 1) */
            const T pm = (T)A->pos_margin, nm = (T)A->neg_margin;
            const T cpos = (T)(2.0 * A->cpos), cneg = (T)(2.0 * A->cneg);
            const int32_t li = lab[i];
            for (int64_t j = 0; j < nbt; j++)
                w[j] = PW(dist)(metric, s[j], na2, nb2 ? nb2[j] : 0.0);
            for (int64_t j = 0; j < nbt; j++) {
                const int same = lab[j0 + j] == li;
                const T d = w[j];
                const T c = d != d ? d   /* nan in, nan out */
                          : same ? (d > pm ? cpos : (T)0) : (d < nm ? -cneg : (T)0);
                const T phi = metric == PW_EUCLIDEAN ? (d > 0 ? (T)1 / d : (T)0)
                            : metric == PW_SQEUCLIDEAN ? (T)2 : (T)1;
                w[j] = c * phi;
            }
            if (has_diag)
                w[diag] = 0;
            T *pr = P + (r / PW_MR) * PW_MR * nbt + r % PW_MR;
            for (int64_t j = 0; j < nbt; j++)
                pr[j * PW_MR] = w[j];
            LANES_ADD(R->lanes[0], w, (int)nbt);
        } else {   /* PW_OP_HARDEST: the first largest positive, the first smallest negative;
                    * the first NaN distance wins either (as NumPy's argmax): nan in, nan out */
            const int32_t li = lab[i];
            for (int64_t j = 0; j < nbt; j++)
                w[j] = PW(dist)(metric, s[j], na2, nb2 ? nb2[j] : 0.0);
            for (int64_t j = 0; j < nbt; j++) {
                if (j == diag)
                    continue;
                const double d = (double)w[j];
                if (lab[j0 + j] == li) {
                    if (d > R->best_pos || (d != d && R->best_pos == R->best_pos)) {
                        R->best_pos = d;
                        R->pos = j0 + j;
                    }
                } else if (d < R->best_neg || (d != d && R->best_neg == R->best_neg)) {
                    R->best_neg = d;
                    R->neg = j0 + j;
                }
            }
        }
    }
}

/* The per-row results of a row tile. */
FL_ATTR static void PW(finish)(pw_job *J, int64_t i0, int64_t mb, pw_rowstate *st,
                               const double *acc, int64_t dpad)
{
    const fl_pair_args *A = J->A;
    const int64_t D = A->d;
    for (int64_t r = 0; r < mb; r++) {
        const int64_t i = i0 + r;
        pw_rowstate *R = &st[r];
        switch (A->op) {
        case PW_OP_LSE:
            A->lse[i] = R->m == -INFINITY ? -INFINITY : R->m + log(fl_lanes_fold(R->lanes[0]));
            break;
        case PW_OP_LSE_PRODUCT: {
            const double l = fl_lanes_fold(R->lanes[0]);
            A->lse[i] = R->m == -INFINITY ? -INFINITY : R->m + log(l);
            const double f = R->m == -INFINITY ? 0.0 : A->gain / l;
            T *o = (T *)A->out + i * D;
            for (int64_t k = 0; k < D; k++)
                o[k] = (T)((double)o[k] + f * acc[r * dpad + k]);
            break;
        }
        case PW_OP_SOFTMAX_PRODUCT: {
            T *o = (T *)A->out + i * D;
            for (int64_t k = 0; k < D; k++)
                o[k] = (T)((double)o[k] + A->gain * acc[r * dpad + k]);
            break;
        }
        case PW_OP_CONTRASTIVE_STATS:
            for (int k = 0; k < 4; k++)
                A->stats[i * 4 + k] = fl_lanes_fold(R->lanes[k]);
            break;
        case PW_OP_CONTRASTIVE_GRAD: {
            const double alpha = A->metric == PW_COSINE ? 0.0 : fl_lanes_fold(R->lanes[0]);
            const T *x = (const T *)A->a + i * D;
            T *o = (T *)A->out + i * D;
            for (int64_t k = 0; k < D; k++)
                o[k] = (T)(alpha * (double)x[k] - acc[r * dpad + k]);
            break;
        }
        case PW_OP_HARDEST:
            A->pos[i] = R->pos;
            A->neg[i] = R->neg;
            break;
        default:
            break;
        }
    }
}

/* One row tile of a, all the column tiles of b. */
FL_ATTR static void PW(unit)(void *ctx, int64_t unit)
{
    pw_job *J = ctx;
    const fl_pair_args *A = J->A;
    const T *a = A->a, *b = A->b;
    const int64_t D = A->d, i0 = unit * PW_MB;
    const int64_t mb = A->na - i0 < PW_MB ? A->na - i0 : PW_MB;
    const int64_t kc = D < PW_KC ? D : PW_KC;           /* columns of a per pack */
    const int64_t nchunks = (D + kc - 1) / kc;
    const int64_t dpad = (D + NR - 1) / NR * NR;
    const int op = A->op;
    const int product = op == PW_OP_SOFTMAX_PRODUCT || op == PW_OP_CONTRASTIVE_GRAD ||
                        op == PW_OP_LSE_PRODUCT;
    const int mgroups = (int)((mb + PW_MR - 1) / PW_MR);

    /* workspace: packed a rows (all chunks), packed b tile, S, P, and for the
     * product ops the b tile's panels and the float64 accumulator */
    const size_t n_apack = (size_t)(mgroups * PW_MR) * (size_t)(nchunks * kc);
    const size_t n_bpack = (size_t)PW_NB * (size_t)(kc > dpad ? kc : dpad);
    const size_t n_s = (size_t)PW_MB * PW_NB;
    const size_t n_p = product ? (size_t)(mgroups * PW_MR) * PW_NB : 0;
    const size_t n_acc = product ? (size_t)PW_MB * (size_t)dpad : 0;
    char *ws = aligned_alloc(64, ((n_apack + n_bpack + n_s + n_p) * sizeof(T) +
                                  n_acc * sizeof(double) + 64 * 5) / 64 * 64 + 64);
    if (!ws) {
        J->failed = 1;
        return;
    }
    T *apack = (T *)ws;
    T *bpack = apack + (n_apack + 15) / 16 * 16;
    T *S = bpack + (n_bpack + 15) / 16 * 16;
    T *P = S + (n_s + 15) / 16 * 16;
    double *acc = (double *)(P + (n_p + 15) / 16 * 16);
    if (n_acc)
        memset(acc, 0, n_acc * sizeof(double));

    for (int64_t c = 0; c < nchunks; c++) {
        const int64_t p0 = c * kc, k = D - p0 < kc ? D - p0 : kc;
        PW(pack_rows)(a + i0 * D, D, mb, p0, k, apack + c * (int64_t)mgroups * PW_MR * kc);
    }

    /* per-row state of the reductions */
    pw_rowstate st[PW_MB];
    for (int64_t r = 0; r < mb; r++)
        pw_row_init(&st[r]);

    for (int64_t j0 = 0; j0 < A->nb; j0 += PW_NB) {
        const int64_t nbt = A->nb - j0 < PW_NB ? A->nb - j0 : PW_NB;
        const int npanels = (int)((nbt + NR - 1) / NR);
        for (int64_t c = 0; c < nchunks; c++) {
            const int64_t p0 = c * kc, k = D - p0 < kc ? D - p0 : kc;
            const T *ap = apack + c * (int64_t)mgroups * PW_MR * kc;
            PW(pack_cols)(b + j0 * D, D, nbt, p0, k, bpack);
            /* a panel of b (k x NR) stays in L1 while the row groups stream by */
            for (int q = 0; q < npanels; q++) {
                const int cols = (int)(nbt - q * NR < NR ? nbt - q * NR : NR);
                for (int g = 0; g < mgroups; g++) {
                    const int rows = (int)(mb - g * PW_MR < PW_MR ? mb - g * PW_MR : PW_MR);
                    T *sij = S + (int64_t)g * PW_MR * PW_NB + q * NR;
                    if (c == 0) {
                        PW(micro)(k, ap + (int64_t)g * PW_MR * k, bpack + (int64_t)q * NR * k,
                                  sij, PW_NB, NULL, 0, rows, cols);
                    } else {   /* later chunks of a long D: add to S */
                        T t[PW_MR * NR];
                        PW(micro)(k, ap + (int64_t)g * PW_MR * k, bpack + (int64_t)q * NR * k,
                                  t, NR, NULL, 0, rows, cols);
                        for (int r = 0; r < rows; r++)
                            for (int x = 0; x < cols; x++)
                                sij[r * PW_NB + x] += t[r * NR + x];
                    }
                }
            }
        }
        PW(consume)(J, i0, mb, j0, nbt, S, P, st, acc, dpad);
        if (product) {
            /* acc += P b_J: P is (mb x nbt) in the packed-rows layout */
            PW(pack_panels)(b + j0 * D, D, nbt, D, bpack);
            for (int g = 0; g < mgroups; g++) {
                const int rows = (int)(mb - g * PW_MR < PW_MR ? mb - g * PW_MR : PW_MR);
                for (int64_t c0 = 0; c0 < D; c0 += NR) {
                    const int cols = (int)(D - c0 < NR ? D - c0 : NR);
                    PW(micro)(nbt, P + (int64_t)g * PW_MR * nbt, bpack + c0 * nbt, NULL, 0,
                              acc + (int64_t)g * PW_MR * dpad + c0, dpad, rows, cols);
                }
            }
        }
    }
    PW(finish)(J, i0, mb, st, acc, dpad);
    free(ws);
}

/* ---- row kernels: no pairs (fl_pair_rows) ---- */

/* ||v||_p of v = u - w + eps, its pieces in float64; g (if not NULL) gets
 * d||v||_p / dv (0 where ||v|| = 0) */
FL_ATTR static double PW(pnorm)(const T *u, const T *w, int64_t D, double eps, double p, double *g)
{
    double s = 0;
    int64_t k0 = 0;
    if (p == 2.0 || p == 1.0) {
        /* 8 partial sums in a fixed order: the loop vectorises, and no add waits on
         * the one before (a serial chain made this 4x slower) */
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
#define PW_NORM_SUM(term)                                                    \
    for (; k0 + 8 <= D; k0 += 8)                                             \
        for (int j = 0; j < 8; j++) {                                        \
            const double v = (double)u[k0 + j] - (double)w[k0 + j] + eps;    \
            acc[j] += term;                                                  \
        }
        if (p == 2.0)   /* (one loop per norm: a select inside would not vectorise) */
            PW_NORM_SUM(v * v)
        else
            PW_NORM_SUM(fabs(v))
#undef PW_NORM_SUM
        s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    }
    for (int64_t k = k0; k < D; k++) {
        const double v = (double)u[k] - (double)w[k] + eps;
        s += p == 2.0 ? v * v : p == 1.0 ? fabs(v) : pow(fabs(v), p);
    }
    const double norm = p == 2.0 ? sqrt(s) : p == 1.0 ? s : pow(s, 1.0 / p);
    if (g) {
        for (int64_t k = 0; k < D; k++) {
            const double v = (double)u[k] - (double)w[k] + eps;
            const double sg = v > 0 ? 1.0 : v < 0 ? -1.0 : 0.0;
            g[k] = norm == 0 ? 0.0
                 : p == 2.0 ? v / norm
                 : p == 1.0 ? sg
                 : sg * pow(fabs(v) / norm, p - 1.0);
        }
    }
    return norm;
}

FL_ATTR static void PW(triplet_row)(const fl_pair_rows_args *A, int64_t i, double *g)
{
    const int64_t D = A->d;
    const T *a = (const T *)A->a + i * D, *p = (const T *)A->p + i * D,
            *n = (const T *)A->n + i * D;
    const int grad = A->ga != NULL;
    double *gap = g, *gan = g + D, *gpn = g + 2 * D;
    const double dap = PW(pnorm)(a, p, D, A->eps, A->p_norm, grad ? gap : NULL);
    const double dan = PW(pnorm)(a, n, D, A->eps, A->p_norm, grad ? gan : NULL);
    double wan = 1.0, wpn = 0.0;        /* how d_an is made of d(a, n) and d(p, n) */
    double dneg = dan;
    if (A->swap) {
        const double dpn = PW(pnorm)(p, n, D, A->eps, A->p_norm, grad ? gpn : NULL);
        if (dpn < dan) {
            dneg = dpn, wan = 0.0, wpn = 1.0;
        } else if (dpn == dan) {        /* torch.min: half to each at a tie */
            wan = wpn = 0.5;
        }
    }
    const double z = A->margin + dap - dneg;
    A->loss[i] = z < 0 ? 0.0 : z;      /* NaN stays NaN, as torch's clamp_min */
    if (!grad)
        return;
    T *ga = (T *)A->ga + i * D, *gp = (T *)A->gp + i * D, *gn = (T *)A->gn + i * D;
    const double c = z >= 0 ? A->gain : 0.0;     /* torch's clamp_min passes at 0 */
    for (int64_t k = 0; k < D; k++) {
        /* d_ap: +g_ap on a, -g_ap on p; d(a, n): +a, -n; d(p, n): +p, -n */
        const double ean = wan * gan[k], epn = wpn * (A->swap ? gpn[k] : 0.0);
        ga[k] = (T)(c * (gap[k] - ean));
        gp[k] = (T)(c * (-gap[k] - epn));
        gn[k] = (T)(c * (ean + epn));
    }
}

FL_ATTR static void PW(info_nce_row)(const fl_pair_rows_args *A, int64_t i, double *z)
{
    const int64_t D = A->d, M = A->m;
    const T *q = (const T *)A->a + i * D, *k = (const T *)A->p + i * D,
            *ng = (const T *)A->n + i * M * D;
    double mx = -INFINITY;
    for (int64_t m = 0; m <= M; m++) {
        const T *v = m == 0 ? k : ng + (m - 1) * D;
        double s = 0;
        for (int64_t c = 0; c < D; c++)
            s += (double)q[c] * (double)v[c];
        z[m] = A->scale * s;
        mx = z[m] > mx ? z[m] : mx;
    }
    double sum = 0;
    for (int64_t m = 0; m <= M; m++)
        sum += exp(z[m] - mx);
    const double lse = mx + log(sum);
    A->loss[i] = lse - z[0];
    if (!A->ga)
        return;
    const double g = A->gain * A->scale;
    T *gq = (T *)A->ga + i * D, *gk = (T *)A->gp + i * D, *gn = (T *)A->gn + i * M * D;
    const double c0 = exp(z[0] - lse) - 1.0;
    for (int64_t c = 0; c < D; c++)
        gk[c] = (T)(g * c0 * (double)q[c]);
    double *acc = z + M + 1;           /* sum_m p_m v_m, float64 */
    for (int64_t c = 0; c < D; c++)
        acc[c] = c0 * (double)k[c];
    for (int64_t m = 1; m <= M; m++) {
        const double pm = exp(z[m] - lse);
        const T *v = ng + (m - 1) * D;
        T *o = gn + (m - 1) * D;
        for (int64_t c = 0; c < D; c++) {
            acc[c] += pm * (double)v[c];
            o[c] = (T)(g * pm * (double)q[c]);
        }
    }
    for (int64_t c = 0; c < D; c++)
        gq[c] = (T)(g * acc[c]);
}

/* sum_k u_k w_k in float64 (u_k^2 with w = u): 8 partial sums in a fixed order */
FL_ATTR static double PW(row_dot)(const T *u, const T *w, int64_t D)
{
    double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    int64_t k0 = 0;
    for (; k0 + 8 <= D; k0 += 8)
        for (int j = 0; j < 8; j++)
            acc[j] += (double)u[k0 + j] * (double)w[k0 + j];
    double s = ((acc[0] + acc[1]) + (acc[2] + acc[3])) + ((acc[4] + acc[5]) + (acc[6] + acc[7]));
    for (int64_t k = k0; k < D; k++)
        s += (double)u[k] * (double)w[k];
    return s;
}

/* kind 2: loss[i] = ||a_i||, and (if ga) ga_i = a_i / max(||a_i||, eps) in the dtype;
 * kind 3: loss[i] = a_i . p_i */
FL_ATTR static void PW(glue_row)(const fl_pair_rows_args *A, int64_t i)
{
    const int64_t D = A->d;
    const T *a = (const T *)A->a + i * D;
    if (A->kind == 3) {
        A->loss[i] = PW(row_dot)(a, (const T *)A->p + i * D, D);
        return;
    }
    if (A->kind == 5) {
        const double c = A->norms ? A->norms[i] : A->scale;
        T *o = (T *)A->ga + i * D;
        for (int64_t k = 0; k < D; k++)
            o[k] = (T)(c * (double)a[k]);
        return;
    }
    if (A->kind == 4) {   /* a = g; o may be g itself: every g_k is read before o_k is written */
        const T *u = (const T *)A->p + i * D;
        const double nb = A->norms[i];
        T *o = (T *)A->ga + i * D;
        if (!(nb >= A->eps)) {   /* (NaN too, as NumPy's glue) */
            for (int64_t k = 0; k < D; k++)
                o[k] = (T)((double)a[k] / A->eps);
            return;
        }
        /* raw: u = x / max(nb, eps) = x / nb here */
        double acc[8] = {0, 0, 0, 0, 0, 0, 0, 0};
        int64_t k0 = 0;
        for (; k0 + 8 <= D; k0 += 8)
            for (int j = 0; j < 8; j++)
                acc[j] += (double)a[k0 + j] * (A->raw ? (double)u[k0 + j] / nb : (double)u[k0 + j]);
        double proj = ((acc[0] + acc[1]) + (acc[2] + acc[3])) +
                      ((acc[4] + acc[5]) + (acc[6] + acc[7]));
        for (int64_t k = k0; k < D; k++)
            proj += (double)a[k] * (A->raw ? (double)u[k] / nb : (double)u[k]);
        for (int64_t k = 0; k < D; k++) {
            const double uk = A->raw ? (double)u[k] / nb : (double)u[k];
            o[k] = (T)(((double)a[k] - uk * proj) / nb);
        }
        return;
    }
    const double norm = sqrt(PW(row_dot)(a, a, D));
    A->loss[i] = norm;
    if (A->ga) {
        /* max(norm, eps), NaN staying NaN as np.maximum's */
        const double den = norm != norm || norm > A->eps ? norm : A->eps;
        T *o = (T *)A->ga + i * D;
        for (int64_t k = 0; k < D; k++)
            o[k] = (T)((double)a[k] / den);
    }
}

/* kind 6 (one unit, sequential: deterministic); acc: rows * d float64 zeros */
FL_ATTR static void PW(pairs_grad)(const fl_pair_rows_args *A, double *acc)
{
    const int64_t D = A->d, K = A->m;
    const T *x = (const T *)A->a;
    for (int64_t b0 = 0; b0 < K; b0 += 1024) {
        const int64_t b1 = b0 + 1024 < K ? b0 + 1024 : K;
        for (int end = 0; end < 2; end++)   /* the i ends of the block, then its j ends */
            for (int64_t k = b0; k < b1; k++) {
                const T *u = x + A->pi[k] * D, *v = x + A->pj[k] * D;
                double f = 0.0;              /* d d / d u = f (u - v), or -v for cosine */
                if (A->metric == 1) {
                    f = 2.0;
                } else if (A->metric == 0) {
                    double s = 0.0;
                    for (int64_t c = 0; c < D; c++) {
                        const double t = (double)u[c] - (double)v[c];
                        s += t * t;
                    }
                    const double dist = sqrt(s);
                    f = dist > 0 ? 1.0 / dist : 0.0;
                }
                const double ck = A->norms[k];
                double *g = acc + (end == 0 ? A->pi[k] : A->pj[k]) * D;
                for (int64_t c = 0; c < D; c++) {
                    const double gi = A->metric == 2 ? -(double)v[c]
                                                     : ((double)u[c] - (double)v[c]) * f;
                    /* j end: cosine -u, else -gi */
                    const double ge = end == 0 ? gi : A->metric == 2 ? -(double)u[c] : -gi;
                    g[c] += ck * ge;
                }
            }
    }
    T *o = (T *)A->ga;
    for (int64_t e = 0; e < A->rows * D; e++)
        o[e] = (T)acc[e];
}

FL_ATTR static void PW(rows_unit)(void *ctx, int64_t unit)
{
    pw_rows_job *J = ctx;
    const fl_pair_rows_args *A = J->A;
    if (A->kind == 6) {
        double *acc = calloc((size_t)(A->rows * A->d), sizeof(double));
        if (!acc) {
            J->failed = 1;
            return;
        }
        PW(pairs_grad)(A, acc);
        free(acc);
        return;
    }
    const int64_t r0 = unit * PW_ROWS, r1 = r0 + PW_ROWS < A->rows ? r0 + PW_ROWS : A->rows;
    if (A->kind >= 2) {
        for (int64_t i = r0; i < r1; i++)
            PW(glue_row)(A, i);
        return;
    }
    const size_t nw = A->kind == 0 ? (size_t)(3 * A->d) : (size_t)(A->m + 1 + A->d);
    double *w = malloc(nw * sizeof(double));
    if (!w) {
        J->failed = 1;
        return;
    }
    for (int64_t i = r0; i < r1; i++) {
        if (A->kind == 0)
            PW(triplet_row)(A, i, w);
        else
            PW(info_nce_row)(A, i, w);
    }
    free(w);
}

#undef PW
#undef VM
#undef LANES_ADD
#undef VL
#undef NR
#undef V
