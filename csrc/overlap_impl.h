/* overlap_impl.h -- the loops of the overlap kernels, a template: overlap.c
 * includes it once per dtype x ISA path (through isa_paths.h) with T, FL_SFX,
 * FL_FLV, FL_ISA and FL_ATTR defined.  The helpers take the target kind and
 * `squared` as arguments that are constants at every call, so each inlined
 * copy is a plain loop that vectorises.  No guard. */

#define OV(name) OV_NAME(name, FL_SFX, FL_ISA)
#define VM(f) FL_CAT3(fl_##f, FL_SFX, FL_FLV)
#define LANES_ADD FL_CAT(fl_lanes_add, FL_SFX)
enum { OV(K_LABELS), OV(K_MASK_U8), OV(K_MASK_T) };

/* the target of class c at voxel j of the tile (kind is a constant) */
FL_ATTR FL_INLINE T OV(tval)(int kind, const int32_t *cls, const uint8_t *m8, const T *mt,
                             int64_t c, int64_t S, int j)
{
    /* an int32 comparison: 16 lanes, as many as float32 */
    return kind == OV(K_MASK_U8) ? (T)m8[c * S + j]
         : kind == OV(K_MASK_T)  ? mt[c * S + j]
                                 : (cls[j] == (int32_t)c ? (T)1 : (T)0);
}

/* p = the activation of the tile's C x B values x (row stride S) into p (row
 * stride ps), 0 at ignored voxels; for the softmax p holds exp(x - max) and
 * r the per-voxel factor 1/sum (0 if ignored) that makes it p */
FL_ATTR FL_INLINE void OV(activate)(int activation, const T *x, int64_t S, T *p, int64_t ps,
                                    const int32_t *cls, int64_t C, int B, T *r)
{
    if (activation == OV_ACT_SOFTMAX) {
        T mx[OV_TILE];
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

/* explicit vectors for the sums: W lanes of T; float64 vectors of the same
 * width in bytes (two per T vector for float32); integer masks of T's width */
#define OV_W (FL_VBYTES / (int)sizeof(T))
#define OV_DW (FL_VBYTES / 8)
#define OV_DREGS ((int)(sizeof(double) / sizeof(T)))
typedef T OV(vt) __attribute__((vector_size(FL_VBYTES)));
typedef double OV(vd) __attribute__((vector_size(FL_VBYTES)));
typedef OV_MASK_INT OV(vm) __attribute__((vector_size(FL_VBYTES)));
typedef int32_t OV(vi) __attribute__((vector_size(OV_W * 4)));

/* acc[0 .. OV_DREGS) += v in float64.  float32 on x86 by intrinsics: GCC
 * lowers a convertvector of a vector's half to 128-bit pieces (seven
 * instructions where vcvtps2pd does it in one or two). */
FL_ATTR FL_INLINE void OV(add_f64)(OV(vd) *acc, OV(vt) v)
{
#if OV_F32 && FL_X86 && FL_VBYTES == 64
    const __m512 w = (__m512)v;
    acc[0] += (OV(vd))_mm512_cvtps_pd(_mm512_castps512_ps256(w));
    acc[1] += (OV(vd))_mm512_cvtps_pd(_mm256_castpd_ps(_mm512_extractf64x4_pd(_mm512_castps_pd(w), 1)));
#elif OV_F32 && FL_X86 && FL_VBYTES == 32
    const __m256 w = (__m256)v;
    acc[0] += (OV(vd))_mm256_cvtps_pd(_mm256_castps256_ps128(w));
    acc[1] += (OV(vd))_mm256_cvtps_pd(_mm256_extractf128_ps(w, 1));
#elif OV_F32
    for (int h = 0; h < 2; h++) {
        T part[OV_DW];
        memcpy(part, (const T *)&v + h * OV_DW, sizeof part);
        for (int l = 0; l < OV_DW; l++)
            acc[h][l] += (double)part[l];
    }
#else
    acc[0] += v;
#endif
}

FL_ATTR FL_INLINE double OV(hsum)(const OV(vd) *acc)
{
    double s = 0.0;
    for (int h = 0; h < OV_DREGS; h++)
        for (int l = 0; l < OV_DW; l++)
            s += acc[h][l];
    return s;
}

/* out[0..2] += the tile's sums of p t, p^q, t^q for class c (kind and
 * squared are constants).  p = pc, times r per voxel when r is given (the
 * softmax's 1/sum), and then stored back into pc when `store`.  The terms
 * are computed in the dtype (as PyTorch does) and summed in float64 lanes;
 * the class counts of index targets in integer lanes.  tt: workspace. */
FL_ATTR FL_INLINE void OV(accumulate)(int kind, int squared, T *pc, const T *r, int store,
                                      const int32_t *cls, const uint8_t *m8, const T *mt,
                                      int64_t c, int64_t S, int B, T *tt, double *out)
{
    OV(vd) aI[OV_DREGS] = {{0}}, aP[OV_DREGS] = {{0}}, aT[OV_DREGS] = {{0}};
    OV(vm) count = {0};
    const OV(vm) one_bits = (OV(vm))((OV(vt)){0} + (T)1);
    const T *tv = kind == OV(K_MASK_T) ? mt + c * S : tt;
    if (kind == OV(K_MASK_U8))      /* widened by the auto-vectoriser, which does it well */
        for (int j = 0; j < B; j++)
            tt[j] = (T)m8[c * S + j];
    int j = 0;
    for (; j + OV_W <= B; j += OV_W) {
        OV(vt) p, t;
        memcpy(&p, pc + j, sizeof p);
        if (r) {
            OV(vt) rv;
            memcpy(&rv, r + j, sizeof rv);
            p *= rv;
        }
        if (store)
            memcpy(pc + j, &p, sizeof p);
        if (kind == OV(K_LABELS)) {
            OV(vi) k;
            memcpy(&k, cls + j, sizeof k);
            const OV(vm) hit = __builtin_convertvector(k == (int32_t)c, OV(vm));
            t = (OV(vt))(hit & one_bits);
            count -= hit;
        } else {
            memcpy(&t, tv + j, sizeof t);
            OV(add_f64)(aT, squared ? t * t : t);
        }
        OV(add_f64)(aI, p * t);
        OV(add_f64)(aP, squared ? p * p : p);
    }
    double sI = OV(hsum)(aI), sP = OV(hsum)(aP), sT = OV(hsum)(aT);
    for (int l = 0; l < OV_W; l++)
        sT += (double)count[l];
    for (; j < B; j++) {
        T pv = pc[j];
        if (r)
            pv *= r[j];
        if (store)
            pc[j] = pv;
        const T t = kind == OV(K_LABELS) ? (cls[j] == (int32_t)c ? (T)1 : (T)0) : tv[j];
        sI += (double)(pv * t);
        sP += (double)(squared ? pv * pv : pv);
        sT += (double)(squared ? t * t : t);
    }
    out[0] += sI;
    out[1] += sP;
    out[2] += sT;
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
    T r[OV_TILE], tt[OV_TILE];
    OV(activate)(A->activation, x, S, p, ps, cls, C, B, r);
    const T *scale = A->activation == OV_ACT_SOFTMAX ? r : NULL;
    const int store = scale && A->grad;
    const uint8_t *m8 = A->target_type == OV_MASK_U8 ? (const uint8_t *)A->target + off : NULL;
    const T *mt = A->target_type == OV_MASK_T ? (const T *)A->target + off : NULL;
    for (int64_t c = 0; c < C; c++) {
        T *pc = p + c * ps;
        double *o = part + c * 3;
        /* constant kind and squared: each call inlines into its own loop */
#define OV_ACC(kind, sq) OV(accumulate)(kind, sq, pc, scale, store, cls, m8, mt, c, S, B, tt, o)
        if (m8)
            A->squared ? OV_ACC(OV(K_MASK_U8), 1) : OV_ACC(OV(K_MASK_U8), 0);
        else if (mt)
            A->squared ? OV_ACC(OV(K_MASK_T), 1) : OV_ACC(OV(K_MASK_T), 0);
        else
            A->squared ? OV_ACC(OV(K_LABELS), 1) : OV_ACC(OV(K_LABELS), 0);
#undef OV_ACC
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
#undef LANES_ADD
#undef OV_W
#undef OV_DW
#undef OV_DREGS
