/* rowwise_impl.h -- the loops of the row-wise kernels, a template: rowwise.c
 * includes it once per dtype x ISA path with T, FL_SFX (f32/f64), FL_FLV
 * (vmath flavour), FL_ISA (base/avx2/avx512) and FL_ATTR (the target
 * attribute) defined.  Everything here is vector work over contiguous
 * memory, but for the per-row scalar math, RW(finish).  No guard. */

#define RW(name) RW_NAME(name, FL_SFX, FL_ISA)
#define VM(f) FL_CAT3(fl_##f, FL_SFX, FL_FLV)
#define LANES_ADD FL_CAT(fl_lanes_add, FL_SFX)
#define F64(f) FL_CAT3(fl_##f, f64, FL_FLV)

/* u^gamma for u in [0, 1]: by multiplication for the integer gammas people
 * use, through exp/log otherwise (0^gamma = 0 for gamma > 0, 1 for gamma = 0) */
FL_ATTR FL_INLINE double RW(upow)(double u, double gamma)
{
    /* selects, not branches: the tiles' loop over rows vectorises */
    const double general = u > 0.0 ? F64(exp)(gamma * F64(log)(u)) : 0.0;
    const double u2 = u * u;
    return gamma == 2.0 ? u2 : gamma == 0.0 ? 1.0 : gamma == 1.0 ? u : gamma == 3.0 ? u2 * u
         : gamma == 4.0 ? u2 * u2 : general;
}

FL_ATTR FL_INLINE rw_coef RW(finish_ce)(const rw_job *J, double shift, double sum,
                                         double logsum, double s1, double xy, double wy)
{
    const fl_row_args *A = J->A;
    const double gs = J->gs, C = (double)A->classes, z = A->z_loss;
    const double e = A->smoothing, lse = shift + logsum;
    rw_coef k = {0};
    k.shift = shift;
    /* shift - x_y first: exact, no cancellation at large logits */
    k.value = (1.0 - e) * wy * ((shift - xy) + logsum) + e / C * (J->W * lse - s1) +
              z * lse * lse;
    k.a1 = gs * ((1.0 - e) * wy + e / C * J->W + 2.0 * z * lse) / sum;
    k.d = gs * e / C;
    k.b = gs * (1.0 - e) * wy;
    return k;
}

FL_ATTR FL_INLINE rw_coef RW(finish_prob)(const rw_job *J, double shift, double sum,
                                           double logsum, double s1, double s2)
{
    const fl_row_args *A = J->A;
    const double gs = J->gs, z = A->z_loss, lse = shift + logsum;
    rw_coef k = {0};
    k.shift = shift;
    k.value = s2 * lse - s1 + z * lse * lse;
    k.a1 = gs * (s2 + 2.0 * z * lse) / sum;
    k.d = gs;
    return k;
}

FL_ATTR FL_INLINE rw_coef RW(finish_focal)(const rw_job *J, double shift, double sum,
                                            double logsum, double xy, double a)
{
    const fl_row_args *A = J->A;
    const double gs = J->gs, gamma = A->p1, L = (xy - shift) - logsum;
    const double py = F64(exp)(L), u = -F64(expm1)(L);
    const double ug = RW(upow)(u, gamma);
    const double r = u > 0.0 ? L / u : -1.0;
    const double F = ug * (1.0 - gamma * py * r);
    rw_coef k = {0};
    k.shift = shift;
    k.value = -a * ug * L;
    k.b = gs * a * F;
    k.a1 = gs * a * F / sum;
    return k;
}

/* a = alpha_y w_y for the focal loss */
FL_ATTR FL_INLINE rw_coef RW(finish)(const rw_job *J, double shift, double sum, double logsum,
                                     double s1, double s2, double xy, double wy, double alpha_y)
{
    if (J->loss == RW_LOSS(cross_entropy))
        return RW(finish_ce)(J, shift, sum, logsum, s1, xy, wy);
    if (J->loss == RW_LOSS(cross_entropy_prob))
        return RW(finish_prob)(J, shift, sum, logsum, s1, s2);
    return RW(finish_focal)(J, shift, sum, logsum, xy, alpha_y * wy);
}

FL_ATTR FL_INLINE rw_coef RW(finish_seg)(const rw_job *J, const rw_seg *st, double xy, double wy,
                                double alpha_y)
{
    return RW(finish)(J, st->shift, st->sum, F64(log)(st->sum), st->s1, st->s2, xy, wy, alpha_y);
}

/* ---- contiguous rows (S = 1) ----------------------------------------------- */

/* max of x[0..m), m >= 1 (a NaN is skipped unless x[0] is one; the sum of
 * exps then carries it into the result anyway).  GCC vector types: written
 * as a plain loop, GCC turns the select into scalar conditional moves. */
FL_ATTR static T RW(vmax)(const T *restrict x, int64_t m)
{
    typedef T vec __attribute__((vector_size(FL_VBYTES)));
    typedef RW_MASK_INT mask __attribute__((vector_size(FL_VBYTES)));
    enum { L = FL_VBYTES / sizeof(T) };
    vec acc;
    for (int j = 0; j < L; j++)
        acc[j] = x[0];
    int64_t i = 0;
    for (; i + L <= m; i += L) {
        vec v;
        memcpy(&v, x + i, sizeof v);
        mask k = v > acc;
        acc = (vec)(((mask)v & k) | ((mask)acc & ~k));
    }
    T r = acc[0];
    for (int j = 1; j < L; j++)
        r = acc[j] > r ? acc[j] : r;
    for (; i < m; i++)
        r = x[i] > r ? x[i] : r;
    return r;
}

/* The statistics of one segment x[0..m) of a row (see rw_seg in rowwise.c):
 * its max as the shift (0 if it is -inf); sum exp(x - shift); and what the
 * loss needs besides, s1 = sum w x (label smoothing) or, for probability
 * targets t' = keep t + add, s1 = sum w t' x and s2 = sum w t'.  w may be
 * NULL (all 1).  If e is not NULL the exps are left there (the gradient
 * output: the gradient pass then rescales them in place, with no second exp
 * and no second read of x). */
FL_ATTR static void RW(seg_stats)(int need, const T *restrict x, const T *restrict t,
                                   const T *restrict w, T keep, T add, int64_t m,
                                   rw_seg *restrict st, T *restrict e)
{
    T mx = RW(vmax)(x, m);
    /* an all -inf segment adds exp(-inf) = 0 (not exp(-inf - -inf) = nan):
     * masked-out logits are common */
    T shift = mx == -(T)INFINITY ? (T)0 : mx;
    T buf[FL_SUB];
    double tb[FL_SUB];
    double acc[FL_LANES] = {0}, a1[FL_LANES] = {0}, a2[FL_LANES] = {0};
    for (int64_t off = 0; off < m; off += FL_SUB) {
        const int mm = m - off < FL_SUB ? (int)(m - off) : FL_SUB;
        const T *xo = x + off;
        T *eo = e ? e + off : buf;
        for (int i = 0; i < mm; i++)
            eo[i] = VM(exp)(xo[i] - shift);
        LANES_ADD(acc, eo, mm);
        if (need == RW_NEED_WX) {
            if (w)
                for (int i = 0; i < mm; i++)
                    tb[i] = (double)w[off + i] * (double)xo[i];
            else
                for (int i = 0; i < mm; i++)
                    tb[i] = (double)xo[i];
            fl_lanes_add_f64(a1, tb, mm);
        } else if (need == RW_NEED_PROB) {
            const T *to = t + off;
            for (int i = 0; i < mm; i++)
                buf[i] = w ? w[off + i] * (keep * to[i] + add) : keep * to[i] + add;
            LANES_ADD(a2, buf, mm);
            for (int i = 0; i < mm; i++)
                tb[i] = (double)buf[i] * (double)xo[i];
            fl_lanes_add_f64(a1, tb, mm);
        }
    }
    st->shift = (double)shift;
    st->sum = fl_lanes_fold(acc);
    st->s1 = fl_lanes_fold(a1);
    st->s2 = fl_lanes_fold(a2);
}

/* g holds exp(x - shift) of one segment: g = coef g - d w, the softmax part of
 * the gradient (coef = a1 exp(shift - the row's shift); w NULL: 1), for
 * probability targets (t != NULL) - d w (keep t + add) instead */
FL_ATTR static void RW(seg_grad)(const T *restrict t, const T *restrict w, T coef, T d, T keep,
                                  T add, int64_t m, T *restrict g)
{
    if (t) {
        if (w)
            for (int64_t i = 0; i < m; i++)
                g[i] = coef * g[i] - d * (w[i] * (keep * t[i] + add));
        else
            for (int64_t i = 0; i < m; i++)
                g[i] = coef * g[i] - d * (keep * t[i] + add);
    } else if (w) {
        for (int64_t i = 0; i < m; i++)
            g[i] = coef * g[i] - d * w[i];
    } else {
        for (int64_t i = 0; i < m; i++)
            g[i] = coef * g[i] - d;
    }
}

/* The gradient of segment [c0, c0 + m) of a row from its kept exps, the
 * segment's shift and the row's coefficients (the same call in the fused
 * and the split loops: the same bits). */
FL_ATTR static void RW(row_seg_grad)(const rw_job *J, int64_t r, int64_t c0, int64_t m,
                                      double seg_shift, const rw_coef *k)
{
    const fl_row_args *A = J->A;
    T *g = (T *)A->grad + r * A->classes + c0;
    const T *t = J->loss == RW_LOSS(cross_entropy_prob)
                     ? (const T *)A->target + r * A->classes + c0 : NULL;
    const T *w = J->wt ? (const T *)J->wt + c0 : NULL;
    const T coef = (T)(k->a1 * exp(seg_shift - k->shift));
    RW(seg_grad)(t, w, coef, (T)k->d, (T)J->keep, (T)J->add, m, g);
    if (k->y >= c0 && k->y < c0 + m)
        g[k->y - c0] -= (T)k->b;
}

/* multi_margin over one row: the value (before w_y / C) and, if g, the
 * gradient with coefficient gc = gs w_y / C.  z_c = margin - x_y + x_c. */
FL_ATTR static double RW(margin_row)(const T *restrict x, int64_t C, int64_t y, T margin,
                                      int p2, T gc, T *restrict g)
{
    const T base = margin - x[y];
    T buf[FL_SUB];
    double acc[FL_LANES] = {0}, gacc[FL_LANES] = {0};
    for (int64_t off = 0; off < C; off += FL_SUB) {
        const int mm = C - off < FL_SUB ? (int)(C - off) : FL_SUB;
        const T *xo = x + off;
        for (int i = 0; i < mm; i++) {
            T z = base + xo[i];
            buf[i] = z > 0 ? (p2 ? z * z : z) : (T)0;
        }
        LANES_ADD(acc, buf, mm);
        if (g) {
            T *go = g + off;
            for (int i = 0; i < mm; i++) {
                T z = base + xo[i];
                go[i] = z > 0 ? (p2 ? (T)2 * z * gc : gc) : (T)0;
            }
            LANES_ADD(gacc, go, mm);
        }
    }
    /* c = y has z = margin; take it back out */
    T zy = base + x[y];
    T hy = zy > 0 ? (p2 ? zy * zy : zy) : (T)0;
    if (g) {
        T gy = g[y];
        g[y] = (T)(-(fl_lanes_fold(gacc) - (double)gy));
    }
    return fl_lanes_fold(acc) - (double)hy;
}

/* One row of a contiguous (S = 1) input, fused: statistics, value,
 * gradient.  The row is cut into the same segments as the split path
 * (rw_split_*), so both give the same bits.  Returns the row's value. */
FL_ATTR static double RW(row)(const rw_job *J, int64_t r)
{
    const fl_row_args *A = J->A;
    const int64_t C = A->classes;
    const T *x = (const T *)A->input + r * C;
    T *g = A->grad ? (T *)A->grad + r * C : NULL;
    const T *w = J->wt;
    const int loss = J->loss;
    double value = 0.0;
    if (loss == RW_LOSS(cross_entropy_prob)) {
        const T *t = (const T *)A->target + r * C;
        double shifts[RW_ROW_SEGS];
        rw_seg row = {0}, seg;
        for (int64_t c0 = 0, s = 0; c0 < C; c0 += RW_SEG, s++) {
            const int64_t m = C - c0 < RW_SEG ? C - c0 : RW_SEG;
            RW(seg_stats)(RW_NEED_PROB, x + c0, t + c0, w ? w + c0 : NULL, (T)J->keep,
                          (T)J->add, m, &seg, g ? g + c0 : NULL);
            rw_fold(&row, &seg, c0 == 0);
            shifts[s] = seg.shift;
        }
        rw_coef k = RW(finish_seg)(J, &row, 0.0, 1.0, 1.0);
        k.y = -1;
        if (g)
            for (int64_t c0 = 0, s = 0; c0 < C; c0 += RW_SEG, s++)
                RW(row_seg_grad)(J, r, c0, C - c0 < RW_SEG ? C - c0 : RW_SEG, shifts[s], &k);
        return k.value;
    }
    const int64_t y = rw_label(A, r);
    if (y == A->ignore_index) {
        if (g)
            memset(g, 0, (size_t)C * sizeof(T));
        return 0.0;
    }
    const double wy = A->weight ? A->weight[y] : 1.0;
    switch (loss) {
    case RW_LOSS(nll):
        if (g) {
            memset(g, 0, (size_t)C * sizeof(T));
            g[y] = (T)(-J->gs * wy);
        }
        return -wy * (double)x[y];
    case RW_LOSS(multi_margin): {
        const T gc = (T)(J->gs * wy / (double)C);
        value = RW(margin_row)(x, C, y, (T)A->p0, A->p1 == 2.0, gc, g);
        return wy * value / (double)C;
    }
    case RW_LOSS(crammer_singer): {
        /* max over c != y, and the first c attaining it */
        T m = -(T)INFINITY;
        if (y > 0)
            m = RW(vmax)(x, y);
        if (y + 1 < C) {
            T m2 = RW(vmax)(x + y + 1, C - y - 1);
            m = m2 > m ? m2 : m;
        }
        const double h = A->p0 + (double)m - (double)x[y];
        /* nan in, nan out: vmax skips a nan logit, so look for one (the row is in
         * L1 by now); a nan row has a nan value and a nan gradient */
        int nan_row = h != h;
        for (int64_t c = 0; c < C; c++)
            nan_row |= x[c] != x[c];
        if (g) {
            if (nan_row) {
                for (int64_t c = 0; c < C; c++)
                    g[c] = (T)NAN;
            } else {
                memset(g, 0, (size_t)C * sizeof(T));
                if (h > 0) {
                    int64_t k = 0;
                    while (k == y || x[k] != m)
                        k++;
                    g[k] = (T)J->gs;
                    g[y] = (T)(-J->gs);
                }
            }
        }
        return nan_row ? (double)NAN : (h > 0 ? h : 0.0);
    }
    default: { /* cross_entropy, softmax_focal */
        double shifts[RW_ROW_SEGS];
        rw_seg row = {0}, seg;
        for (int64_t c0 = 0, s = 0; c0 < C; c0 += RW_SEG, s++) {
            const int64_t m = C - c0 < RW_SEG ? C - c0 : RW_SEG;
            RW(seg_stats)(J->need, x + c0, NULL, w ? w + c0 : NULL, 0, 0, m, &seg,
                          g ? g + c0 : NULL);
            rw_fold(&row, &seg, c0 == 0);
            shifts[s] = seg.shift;
        }
        const double alpha_y = A->alpha ? A->alpha[y] : A->p0;
        rw_coef k = RW(finish_seg)(J, &row, (double)x[y], wy, alpha_y);
        k.y = y;
        if (g)
            for (int64_t c0 = 0, s = 0; c0 < C; c0 += RW_SEG, s++)
                RW(row_seg_grad)(J, r, c0, C - c0 < RW_SEG ? C - c0 : RW_SEG, shifts[s], &k);
        return k.value;
    }
    }
}

/* ---- strided class axis (S > 1): tiles of B positions of one sample ---------- */

/* One tile of B <= RW_TILE rows, r0 the first (the rows' labels and values):
 * element (c, j) at x[c S + j], likewise g and tgt.  Loops over the
 * classes outside, over the tile's positions inside (contiguous, vectorised):
 * pass 1 the max per position (the read from memory), pass 2 the sums of
 * exps (and the exps themselves, kept in the gradient output when there is
 * one), the rows' values, pass 3 the gradient from the kept exps.  The tile
 * is sized to stay in L2 between passes.  Returns the sum of its row values,
 * in position order. */
FL_ATTR static double RW(tile_at)(const rw_job *J, const T *restrict x, T *restrict g,
                                  const T *restrict tgt, int64_t S, int64_t r0, int B)
{
    const fl_row_args *A = J->A;
    const int64_t C = A->classes;
    const int loss = J->loss;
    const int prob = loss == RW_LOSS(cross_entropy_prob);
    const T *wt = J->wt;
    int32_t lab[RW_TILE]; /* the label, -1 if ignored (0 for probability targets) */
    T mx[RW_TILE], xy[RW_TILE], a1[RW_TILE], b[RW_TILE], dv[RW_TILE];
    double sum[RW_TILE], s1[RW_TILE], s2[RW_TILE], logsum[RW_TILE], vals[RW_TILE];
    double total = 0.0;

    for (int j = 0; j < B; j++)
        xy[j] = 0;
    if (prob)
        memset(lab, 0, (size_t)B * sizeof lab[0]);
    else
        rw_labels_int32(A, r0, B, lab);
    if (loss == RW_LOSS(nll)) {
        for (int64_t c = 0; c < C; c++)
            for (int j = 0; j < B; j++)
                xy[j] = lab[j] == c ? x[c * S + j] : xy[j];
        for (int j = 0; j < B; j++) {
            const int ok = lab[j] >= 0;
            const double wy = ok && A->weight ? A->weight[lab[j]] : 1.0;
            const double v = ok ? -wy * (double)xy[j] : 0.0;
            b[j] = ok ? (T)(-J->gs * wy) : (T)0;
            if (A->out)
                ((T *)A->out)[r0 + j] = (T)v;
            total += v;
        }
        if (g)
            for (int64_t c = 0; c < C; c++)
                for (int j = 0; j < B; j++)
                    g[c * S + j] = lab[j] == c ? b[j] : (T)0;
        return total;
    }

    /* pass 1 */
    for (int j = 0; j < B; j++)
        mx[j] = x[j];
    for (int64_t c = 1; c < C; c++) {
        const T *xc = x + c * S;
        for (int j = 0; j < B; j++)
            mx[j] = xc[j] > mx[j] ? xc[j] : mx[j];
    }
    /* pass 2 */
    const T keep = (T)J->keep, add = (T)J->add;
    for (int j = 0; j < B; j++)
        sum[j] = s1[j] = s2[j] = 0.0;
    for (int64_t c = 0; c < C; c++) {
        const T *xc = x + c * S;
        const T wc = wt ? wt[c] : (T)1;
        if (g) {
            T *ec = g + c * S;
            for (int j = 0; j < B; j++) {
                const T e = VM(exp)(xc[j] - mx[j]);
                ec[j] = e;
                sum[j] += (double)e;
                xy[j] = lab[j] == c ? xc[j] : xy[j];
            }
        } else {
            for (int j = 0; j < B; j++) {
                sum[j] += (double)VM(exp)(xc[j] - mx[j]);
                xy[j] = lab[j] == c ? xc[j] : xy[j];
            }
        }
        if (prob) {
            const T *tc = tgt + c * S;
            for (int j = 0; j < B; j++) {
                const T tw = wc * (keep * tc[j] + add);
                s2[j] += (double)tw;
                s1[j] += (double)tw * (double)xc[j];
            }
        } else if (J->need == RW_NEED_WX) {
            for (int j = 0; j < B; j++)
                s1[j] += (double)wc * (double)xc[j];
        }
    }
    /* the rows' values and gradient coefficients: one loop per loss, without
     * branches, so that each vectorises (the tile has up to RW_TILE rows) */
    for (int j = 0; j < B; j++)
        logsum[j] = F64(log)(sum[j]);
    const double *wd = J->wd, *ad = A->alpha, p0 = A->p0;
#define RW_FINISH_LOOP(CALL)                                            \
    for (int j = 0; j < B; j++) {                                       \
        const int ok = lab[j] >= 0, y = ok ? lab[j] : 0;                \
        (void)y;                                                        \
        const rw_coef k = CALL;                                         \
        vals[j] = ok ? k.value : 0.0;                                   \
        a1[j] = ok ? (T)k.a1 : (T)0;                                    \
        b[j] = (T)k.b;                                                  \
        dv[j] = (T)k.d;                                                 \
    }
    if (loss == RW_LOSS(cross_entropy))
        RW_FINISH_LOOP(RW(finish_ce)(J, (double)mx[j], sum[j], logsum[j], s1[j], (double)xy[j],
                                     wd[y]))
    else if (prob)
        RW_FINISH_LOOP(RW(finish_prob)(J, (double)mx[j], sum[j], logsum[j], s1[j], s2[j]))
    else if (ad)
        RW_FINISH_LOOP(RW(finish_focal)(J, (double)mx[j], sum[j], logsum[j], (double)xy[j],
                                        ad[y] * wd[y]))
    else
        RW_FINISH_LOOP(RW(finish_focal)(J, (double)mx[j], sum[j], logsum[j], (double)xy[j],
                                        p0 * wd[y]))
#undef RW_FINISH_LOOP
    if (A->out)
        for (int j = 0; j < B; j++)
            ((T *)A->out)[r0 + j] = (T)vals[j];
    double acc[FL_LANES] = {0};
    fl_lanes_add_f64(acc, vals, B);
    total = fl_lanes_fold(acc);
    if (!g)
        return total;
    /* pass 3: g holds the exps */
    for (int64_t c = 0; c < C; c++) {
        T *gc = g + c * S;
        const T wc = wt ? wt[c] : (T)1;
        if (prob) {
            const T *tc = tgt + c * S;
            for (int j = 0; j < B; j++)
                gc[j] = a1[j] * gc[j] - dv[j] * (wc * (keep * tc[j] + add));
        } else {
            for (int j = 0; j < B; j++) {
                const T v = a1[j] * gc[j] - dv[j] * wc - (lab[j] == c ? b[j] : (T)0);
                gc[j] = lab[j] >= 0 ? v : (T)0;
            }
        }
    }
    return total;
}

/* Tile (i, s0) of a strided class axis: positions [s0, s0 + B) of sample i. */
FL_ATTR static double RW(tile)(const rw_job *J, int64_t i, int64_t s0, int B)
{
    const fl_row_args *A = J->A;
    const int64_t C = A->classes, S = A->inner, off = i * C * S + s0;
    const T *tgt = J->loss == RW_LOSS(cross_entropy_prob) ? (const T *)A->target + off : NULL;
    return RW(tile_at)(J, (const T *)A->input + off, A->grad ? (T *)A->grad + off : NULL, tgt,
                       S, i * S + s0, B);
}

/* B short contiguous rows [r0, r0 + B) of cross_entropy or softmax_focal
 * (C B <= RW_SHORT_VALUES), transposed into a tile so that the tile's loops run
 * across the rows: per row, the lane sums of seg_stats would cost more than
 * its few classes. */
FL_ATTR static double RW(short_rows)(const rw_job *J, int64_t r0, int B)
{
    const fl_row_args *A = J->A;
    const int64_t C = A->classes;
    T xt[RW_SHORT_VALUES], gt[RW_SHORT_VALUES];
    const T *x = (const T *)A->input + r0 * C;
    for (int j = 0; j < B; j++)
        for (int64_t c = 0; c < C; c++)
            xt[c * B + j] = x[j * C + c];
    const double total = RW(tile_at)(J, xt, A->grad ? gt : NULL, NULL, B, r0, B);
    if (A->grad) {
        T *g = (T *)A->grad + r0 * C;
        for (int j = 0; j < B; j++)
            for (int64_t c = 0; c < C; c++)
                g[j * C + c] = gt[c * B + j];
    }
    return total;
}

/* ---- the unit of work, whatever thread runs it --------------------------------- */
FL_ATTR static void RW(unit)(void *ctx, int64_t u)
{
    const rw_job *J = ctx;
    const fl_row_args *A = J->A;
    const int64_t C = A->classes;
    switch (J->phase) {
    case RW_PHASE_ROWS: { /* rows [u G, u G + G) */
        const int64_t R = A->n, lo = u * J->rows_per_unit;
        const int64_t hi = lo + J->rows_per_unit < R ? lo + J->rows_per_unit : R;
        double s = 0.0;
        if (J->loss == RW_LOSS(nll)) {   /* a gather: a tight loop keeps many loads in flight */
            /* (the arguments in locals: the stores through out and g could alias *A, and
             * reloading it every row made this loop 3x slower) */
            const T *const x = (const T *)A->input;
            T *const out = (T *)A->out, *const g = (T *)A->grad;
            const double *const weight = A->weight;
            const int64_t ignore = A->ignore_index;
            const double gs = J->gs;
            double lane[4] = {0.0, 0.0, 0.0, 0.0};   /* 4 sums: no serial chain of adds */
            if (!out && !g && !weight && A->label_type == 1) {   /* the value of int64 labels */
                const int64_t *const label = (const int64_t *)A->target;
                double l0 = 0.0, l1 = 0.0, l2 = 0.0, l3 = 0.0;
                int64_t r = lo;
                for (; r + 4 <= hi; r += 4) {   /* row r + k adds to lane k, as below */
                    const int64_t y0 = label[r], y1 = label[r + 1], y2 = label[r + 2],
                                  y3 = label[r + 3];
                    l0 += y0 != ignore ? -(double)x[r * C + y0] : 0.0;
                    l1 += y1 != ignore ? -(double)x[(r + 1) * C + y1] : 0.0;
                    l2 += y2 != ignore ? -(double)x[(r + 2) * C + y2] : 0.0;
                    l3 += y3 != ignore ? -(double)x[(r + 3) * C + y3] : 0.0;
                }
                lane[0] = l0, lane[1] = l1, lane[2] = l2, lane[3] = l3;
                for (; r < hi; r++) {
                    const int64_t y = label[r];
                    lane[(r - lo) & 3] += y != ignore ? -(double)x[r * C + y] : 0.0;
                }
            } else {
                for (int64_t r = lo; r < hi; r++) {
                    const int64_t y = rw_label(A, r);
                    const int ok = y != ignore;
                    const double wy = ok && weight ? weight[y] : 1.0;
                    const double v = ok ? -wy * (double)x[r * C + y] : 0.0;
                    if (g) {
                        memset(g + r * C, 0, (size_t)C * sizeof(T));
                        if (ok)
                            g[r * C + y] = (T)(-gs * wy);
                    }
                    if (out)
                        out[r] = (T)v;
                    lane[(r - lo) & 3] += v;
                }
            }
            J->partials[u] = (lane[0] + lane[1]) + (lane[2] + lane[3]);
            break;
        }
        if (J->short_block) {   /* blocks of rows as tiles; each writes its own values */
            for (int64_t r = lo; r < hi; r += J->short_block) {
                const int64_t b = hi - r < J->short_block ? hi - r : J->short_block;
                s += RW(short_rows)(J, r, (int)b);
            }
            J->partials[u] = s;
            break;
        }
        for (int64_t r = lo; r < hi; r++) {
            double v = RW(row)(J, r);
            if (A->out)
                ((T *)A->out)[r] = (T)v;
            s += v;
        }
        J->partials[u] = s;
        break;
    }
    case RW_PHASE_TILES: { /* sample u / tiles, tile u % tiles */
        const int64_t i = u / J->tiles, s0 = (u % J->tiles) * J->tile;
        const int64_t B = A->inner - s0 < J->tile ? A->inner - s0 : J->tile;
        J->partials[u] = RW(tile)(J, i, s0, (int)B);
        break;
    }
    case RW_PHASE_SPLIT_STATS: { /* segment u % nseg of row u / nseg */
        const int64_t r = u / J->nseg, c0 = (u % J->nseg) * RW_SEG;
        const int64_t m = C - c0 < RW_SEG ? C - c0 : RW_SEG;
        const T *x = (const T *)A->input + r * C + c0;
        const T *t = J->loss == RW_LOSS(cross_entropy_prob) ? (const T *)A->target + r * C + c0
                                                             : NULL;
        const T *w = J->wt ? (const T *)J->wt + c0 : NULL;
        RW(seg_stats)(J->need, x, t, w, (T)J->keep, (T)J->add, m, &J->segs[u],
                      A->grad ? (T *)A->grad + r * C + c0 : NULL);
        break;
    }
    case RW_PHASE_SPLIT_FINISH: { /* row u: fold its segments in order, finish */
        const int prob = J->loss == RW_LOSS(cross_entropy_prob);
        const int64_t y = prob ? 0 : rw_label(A, u);
        rw_coef k = {0};
        k.ignored = !prob && y == A->ignore_index;
        if (!k.ignored) {
            rw_seg row = {0};
            for (int64_t s = 0; s < J->nseg; s++)
                rw_fold(&row, &J->segs[u * J->nseg + s], s == 0);
            const double xy = prob ? 0.0 : (double)((const T *)A->input)[u * C + y];
            const double wy = !prob && A->weight ? A->weight[y] : 1.0;
            const double alpha_y = !prob && A->alpha ? A->alpha[y] : A->p0;
            k = RW(finish_seg)(J, &row, xy, wy, alpha_y);
            k.y = prob ? -1 : y;
        }
        if (A->out)
            ((T *)A->out)[u] = (T)k.value;
        J->coefs[u] = k;
        break;
    }
    case RW_PHASE_SPLIT_GRAD: {
        const int64_t r = u / J->nseg, c0 = (u % J->nseg) * RW_SEG;
        const int64_t m = C - c0 < RW_SEG ? C - c0 : RW_SEG;
        if (J->coefs[r].ignored)
            memset((T *)A->grad + r * C + c0, 0, (size_t)m * sizeof(T));
        else
            RW(row_seg_grad)(J, r, c0, m, J->segs[u].shift, &J->coefs[r]);
        break;
    }
    }
}

#undef RW
#undef VM
#undef LANES_ADD
#undef F64
