/* overlap_impl.h -- the loops of the overlap kernels, a template: overlap.c
 * includes it once per dtype x ISA path (through isa_paths.h) with T, FL_SFX,
 * FL_FLV, FL_ISA and FL_ATTR defined.  The helpers take the target kind and
 * `squared` as arguments that are constants at every call, so each inlined
 * copy is a plain loop that vectorises.  No guard. */

#define OV(name) OV_NAME(name, FL_SFX, FL_ISA)
#define VM(f) FL_CAT3(fl_##f, FL_SFX, FL_FLV)
enum { OV(K_LABELS), OV(K_MASK_U8), OV(K_MASK_T) };

/* the target of class c at voxel j of the tile (kind is a constant) */
FL_ATTR FL_INLINE T OV(tval)(int kind, const int32_t *cls, const uint8_t *m8, const T *mt,
                             int64_t c, int64_t S, int j)
{
    return kind == OV(K_MASK_U8) ? (T)m8[c * S + j]
         : kind == OV(K_MASK_T)  ? mt[c * S + j]
                                 : (cls[j] == c ? (T)1 : (T)0);
}

/* p = the activation of the tile's C x B values x (row stride S) into p (row
 * stride ps), 0 at ignored voxels */
FL_ATTR FL_INLINE void OV(activate)(int activation, const T *x, int64_t S, T *p, int64_t ps,
                                    const int32_t *cls, int64_t C, int B)
{
    if (activation == OV_ACT_SOFTMAX) {
        T mx[OV_TILE], r[OV_TILE];
        for (int j = 0; j < B; j++)
            mx[j] = x[j];
        for (int64_t c = 1; c < C; c++)
            for (int j = 0; j < B; j++)
                mx[j] = x[c * S + j] > mx[j] ? x[c * S + j] : mx[j];
        for (int j = 0; j < B; j++)
            r[j] = 0;
        for (int64_t c = 0; c < C; c++)
            for (int j = 0; j < B; j++) {
                const T e = VM(exp)(x[c * S + j] - mx[j]);
                p[c * ps + j] = e;
                r[j] += e;
            }
        for (int j = 0; j < B; j++)
            r[j] = cls[j] == OV_IGNORED ? (T)0 : (T)1 / r[j];
        for (int64_t c = 0; c < C; c++)
            for (int j = 0; j < B; j++)
                p[c * ps + j] *= r[j];
    } else if (activation == OV_ACT_SIGMOID) {
        for (int64_t c = 0; c < C; c++)
            for (int j = 0; j < B; j++) {
                /* exp of -|x| only: no overflow, full precision on both sides */
                const T z = x[c * S + j];
                const T e = VM(exp)(z < 0 ? z : -z);
                const T q = (T)1 / ((T)1 + e);
                const T s = z >= 0 ? q : e * q;
                p[c * ps + j] = cls[j] == OV_IGNORED ? (T)0 : s;
            }
    } else {
        for (int64_t c = 0; c < C; c++)
            for (int j = 0; j < B; j++)
                p[c * ps + j] = cls[j] == OV_IGNORED ? (T)0 : x[c * S + j];
    }
}

/* out[0..2] += the tile's sums of p t, p^q, t^q for class c (float64 lanes,
 * folded in a fixed order) */
FL_ATTR FL_INLINE void OV(accumulate)(int kind, int squared, const T *pc, const int32_t *cls,
                                      const uint8_t *m8, const T *mt, int64_t c, int64_t S,
                                      int B, double *out)
{
    double aI[FL_LANES] = {0}, aP[FL_LANES] = {0}, aT[FL_LANES] = {0};
#define OV_ACC(k, l)                                                        \
    {                                                                       \
        const T pv = pc[k], tv = OV(tval)(kind, cls, m8, mt, c, S, k);      \
        aI[l] += (double)(pv * tv);                                         \
        aP[l] += (double)(squared ? pv * pv : pv);                          \
        aT[l] += (double)(squared ? tv * tv : tv);                          \
    }
    int j = 0;
    for (; j + FL_LANES <= B; j += FL_LANES)
        for (int l = 0; l < FL_LANES; l++)
            OV_ACC(j + l, l)
    for (int l = 0; j + l < B; l++)
        OV_ACC(j + l, l)
#undef OV_ACC
    out[0] += fl_lanes_fold(aI);
    out[1] += fl_lanes_fold(aP);
    out[2] += fl_lanes_fold(aT);
}

/* one tile of the statistics pass: part (C, 3) += its sums */
FL_ATTR static void OV(stats_tile)(const ov_job *J, int64_t i, int64_t v0, int B, T *ws,
                                   double *part)
{
    const fl_overlap_args *A = J->A;
    const int64_t C = A->classes, S = A->inner, off = i * C * S + v0;
    const T *x = (const T *)A->input + off;
    T *p = A->grad ? (T *)A->grad + off : ws;
    const int64_t ps = A->grad ? S : B;
    int32_t cls[OV_TILE];
    if (A->target_type <= OV_LABELS_U8)
        ov_classes(A, i * S + v0, B, cls);
    else
        memset(cls, 0, (size_t)B * sizeof cls[0]);
    OV(activate)(A->activation, x, S, p, ps, cls, C, B);
    const uint8_t *m8 = A->target_type == OV_MASK_U8 ? (const uint8_t *)A->target + off : NULL;
    const T *mt = A->target_type == OV_MASK_T ? (const T *)A->target + off : NULL;
    const int kind = m8 ? OV(K_MASK_U8) : mt ? OV(K_MASK_T) : OV(K_LABELS);
    for (int64_t c = 0; c < C; c++) {
        const T *pc = p + c * ps;
        double *o = part + c * 3;
        /* constant arguments: each call inlines into its own loop */
        if (kind == OV(K_LABELS))
            A->squared ? OV(accumulate)(OV(K_LABELS), 1, pc, cls, m8, mt, c, S, B, o)
                       : OV(accumulate)(OV(K_LABELS), 0, pc, cls, m8, mt, c, S, B, o);
        else if (kind == OV(K_MASK_U8))
            A->squared ? OV(accumulate)(OV(K_MASK_U8), 1, pc, cls, m8, mt, c, S, B, o)
                       : OV(accumulate)(OV(K_MASK_U8), 0, pc, cls, m8, mt, c, S, B, o);
        else
            A->squared ? OV(accumulate)(OV(K_MASK_T), 1, pc, cls, m8, mt, c, S, B, o)
                       : OV(accumulate)(OV(K_MASK_T), 0, pc, cls, m8, mt, c, S, B, o);
    }
}

/* dL/dx over a tile whose p sits in g, for one activation and target kind:
 * dL/dp_c = a_c t_c + b_c (2 p_c if squared, else 1) */
FL_ATTR FL_INLINE void OV(grad_loop)(int activation, int kind, int squared, T *g,
                                     const int32_t *cls, const uint8_t *m8, const T *mt,
                                     const T *co, int64_t C, int64_t S, int B)
{
#define OV_DLDP(c, j, pv)                                                        \
    (co[2 * (c)] * OV(tval)(kind, cls, m8, mt, c, S, j) +                       \
     co[2 * (c) + 1] * (squared ? (T)2 * (pv) : (T)1))
    if (activation == OV_ACT_SOFTMAX) {
        /* p_c (g_c - sum_k p_k g_k): p = 0 at ignored voxels gives 0 there */
        T s[OV_TILE];
        for (int j = 0; j < B; j++)
            s[j] = 0;
        for (int64_t c = 0; c < C; c++)
            for (int j = 0; j < B; j++) {
                const T pv = g[c * S + j];
                s[j] += pv * OV_DLDP(c, j, pv);
            }
        for (int64_t c = 0; c < C; c++)
            for (int j = 0; j < B; j++) {
                const T pv = g[c * S + j];
                g[c * S + j] = pv * (OV_DLDP(c, j, pv) - s[j]);
            }
    } else if (activation == OV_ACT_SIGMOID) {
        for (int64_t c = 0; c < C; c++)
            for (int j = 0; j < B; j++) {
                const T pv = g[c * S + j];
                g[c * S + j] = OV_DLDP(c, j, pv) * pv * ((T)1 - pv);
            }
    } else {
        for (int64_t c = 0; c < C; c++)
            for (int j = 0; j < B; j++) {
                const T pv = g[c * S + j];
                const T d = OV_DLDP(c, j, pv);
                g[c * S + j] = cls[j] == OV_IGNORED ? (T)0 : d;
            }
    }
#undef OV_DLDP
}

FL_ATTR static void OV(grad_tile)(const ov_job *J, int64_t i, int64_t v0, int B)
{
    const fl_overlap_args *A = J->A;
    const int64_t C = A->classes, S = A->inner, off = i * C * S + v0;
    T *g = (T *)A->grad + off;
    const T *co = (const T *)J->coef_t + i * C * 2;
    int32_t cls[OV_TILE];
    if (A->target_type <= OV_LABELS_U8)
        ov_classes(A, i * S + v0, B, cls);
    else
        memset(cls, 0, (size_t)B * sizeof cls[0]);
    const uint8_t *m8 = A->target_type == OV_MASK_U8 ? (const uint8_t *)A->target + off : NULL;
    const T *mt = A->target_type == OV_MASK_T ? (const T *)A->target + off : NULL;
    const int kind = m8 ? OV(K_MASK_U8) : mt ? OV(K_MASK_T) : OV(K_LABELS);
#define OV_GRAD(act, k, sq) OV(grad_loop)(act, k, sq, g, cls, m8, mt, co, C, S, B)
#define OV_GRAD_SQ(act, k) (A->squared ? OV_GRAD(act, k, 1) : OV_GRAD(act, k, 0))
#define OV_GRAD_KIND(act)                                                 \
    (kind == OV(K_LABELS)    ? OV_GRAD_SQ(act, OV(K_LABELS))              \
     : kind == OV(K_MASK_U8) ? OV_GRAD_SQ(act, OV(K_MASK_U8))             \
                             : OV_GRAD_SQ(act, OV(K_MASK_T)))
    switch (A->activation) {
    case OV_ACT_SOFTMAX: OV_GRAD_KIND(OV_ACT_SOFTMAX); break;
    case OV_ACT_SIGMOID: OV_GRAD_KIND(OV_ACT_SIGMOID); break;
    default: OV_GRAD_KIND(OV_ACT_NONE); break;
    }
#undef OV_GRAD_KIND
#undef OV_GRAD_SQ
#undef OV_GRAD
}

/* unit u: sample u / units, voxels [lo, hi) */
FL_ATTR static void OV(unit)(void *ctx, int64_t u)
{
    ov_job *J = ctx;
    const fl_overlap_args *A = J->A;
    const int64_t C = A->classes, i = u / J->units, lo = (u % J->units) * J->unit;
    const int64_t hi = lo + J->unit < A->inner ? lo + J->unit : A->inner;
    if (J->phase == OV_PHASE_GRAD) {
        for (int64_t v0 = lo; v0 < hi; v0 += J->tile)
            OV(grad_tile)(J, i, v0, (int)(hi - v0 < J->tile ? hi - v0 : J->tile));
        return;
    }
    double *part = J->partials + u * C * 3;
    memset(part, 0, (size_t)(C * 3) * sizeof(double));
    T stack_ws[A->grad ? 1 : OV_WORKSPACE];
    T *ws = stack_ws;
    if (!A->grad && C * J->tile > OV_WORKSPACE) { /* C > 1024 classes */
        ws = malloc((size_t)(C * J->tile) * sizeof(T));
        if (!ws) {
            __atomic_store_n(&J->failed, 1, __ATOMIC_RELAXED);
            return;
        }
    }
    for (int64_t v0 = lo; v0 < hi; v0 += J->tile)
        OV(stats_tile)(J, i, v0, (int)(hi - v0 < J->tile ? hi - v0 : J->tile), ws, part);
    if (ws != stack_ws)
        free(ws);
}

#undef OV
#undef VM
