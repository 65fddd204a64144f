/* boxes_math.h -- the per-box math of the box regression losses (torchvision's
 * generalized / distance / complete IoU losses): value and gradient with
 * respect to the first box, for one pair of boxes.
 *
 * Two parts:
 *  - bx_atan_f32 / bx_atan_f64: a branch-free arctangent (selects only, no
 *    calls), so that a loop calling it vectorises on every ISA path.
 *  - the box math, a template: boxes.c includes this header's second half
 *    once per dtype with T (float/double) and BX_SFX (f32/f64) defined.
 *
 * No FMA anywhere here (the build has -ffp-contract=off and nothing below asks
 * for a fused multiply-add): every ISA path computes the same IEEE operations
 * in the same order, so baseline, AVX2 and AVX-512 give the same bits.
 *
 * Include before any target region (see common.h). */

/* ======================================================= the shared part */
#ifndef FL_BOXES_MATH_H
#define FL_BOXES_MATH_H

#include "common.h"

#define BX_CAT_(a, b) a##_##b
#define BX_CAT(a, b) BX_CAT_(a, b)

/* ---- arctangent ----------------------------------------------------------------
 * Cephes' range reduction written as selects, for a = |x|:
 *   a > tan(3 pi/8):        atan a = pi/2 + atan(-1/a)
 *   a > tan(pi/8) (f32) / 0.66 (f64):  pi/4 + atan((a - 1)/(a + 1))
 *   else                    atan a
 * one division for the reduced argument t, then on |t| <= 0.4142:
 *   float32: Cephes atanf's odd polynomial, t + t^3 P(t^2) (degree 9);
 *   float64: Cephes atan's rational function, t + t^3 P(t^2)/Q(t^2), with the
 *            low part of pi/2 (MOREBITS) added back.
 * The sign comes back by copysign (atan is odd; -0 stays -0).
 * The low parts of pi/2 and pi/4 are added back in both.  Measured by
 * tests/test_boxes.py (float64 / long-double references) on every ISA path:
 * float32 2.2 ulp at most, float64 0.94 (asserted: <= 3 and <= 2).  atan(+-inf) = +-pi/2 (rounded),
 * NaN in, NaN out (every comparison is false for NaN: the "else" branch, whose
 * arithmetic carries the NaN through). */
FL_INLINE float bx_atan_f32(float x)
{
    const float a = __builtin_fabsf(x);
    const int big = a > 2.414213562373095f;
    const int mid = a > 0.4142135623730950f;
    const float num = big ? -1.0f : (mid ? a - 1.0f : a);
    const float den = big ? a : (mid ? a + 1.0f : 1.0f);
    const float y0 = big ? 1.5707963267948966f : (mid ? 0.7853981633974483f : 0.0f);
    const float lo = big ? -4.371139e-08f : (mid ? -2.1855694e-08f : 0.0f); /* pi/2, pi/4 - y0 */
    const float t = num / den;
    const float z = t * t;
    float p = 8.05374449538e-2f;
    p = p * z - 1.38776856032e-1f;
    p = p * z + 1.99777106478e-1f;
    p = p * z - 3.33329491539e-1f;
    const float r = y0 + ((p * z * t + t) + lo);
    return __builtin_copysignf(r, x);
}

FL_INLINE double bx_atan_f64(double x)
{
    const double a = __builtin_fabs(x);
    const int big = a > 2.41421356237309504880; /* tan(3 pi / 8) */
    const int mid = a > 0.66;
    const double num = big ? -1.0 : (mid ? a - 1.0 : a);
    const double den = big ? a : (mid ? a + 1.0 : 1.0);
    const double y0 = big ? 1.57079632679489661923 : (mid ? 0.78539816339744830962 : 0.0);
    const double lo = big ? 6.123233995736765886130e-17 : (mid ? 3.061616997868382943065e-17 : 0.0);
    const double t = num / den;
    const double z = t * t;
    double p = -8.750608600031904122785e-1;
    p = p * z - 1.615753718733365076637e1;
    p = p * z - 7.500855792314704667340e1;
    p = p * z - 1.228866684490136173410e2;
    p = p * z - 6.485021904942025371773e1;
    double q = z + 2.485846490142306297962e1;
    q = q * z + 1.650270098316988542046e2;
    q = q * z + 4.328810604912902668951e2;
    q = q * z + 4.853903996359136964868e2;
    q = q * z + 1.945506571482613964425e2;
    const double s = t * (z * p / q) + t;
    const double r = y0 + (s + lo);
    return __builtin_copysign(r, x);
}

enum { BX_GIOU, BX_DIOU, BX_CIOU };

#endif /* FL_BOXES_MATH_H */

/* ===================================================== the template part */
#ifdef BX_SFX

#define BXF(name) BX_CAT(name, BX_SFX)
#define BXC(v) ((T)(v))

/* torch.maximum / torch.minimum: NaN from either side propagates */
FL_INLINE T BXF(bx_max)(T a, T b) { return ((a > b) | (a != a)) ? a : b; }
FL_INLINE T BXF(bx_min)(T a, T b) { return ((a < b) | (a != a)) ? a : b; }
/* g times d max(a, b)/da, torch's rule: 0 where a < b, g/2 at a tie, else g
 * (so g itself when either is NaN).  Selects, not products: a zero branch
 * gives 0 even when g is inf or NaN, as torch's masked_fill does. */
FL_INLINE T BXF(bx_dmax)(T g, T a, T b) { return a < b ? BXC(0) : (a == b ? BXC(0.5) * g : g); }
FL_INLINE T BXF(bx_dmin)(T g, T a, T b) { return a > b ? BXC(0) : (a == b ? BXC(0.5) * g : g); }

/* One pair of boxes: the loss of box (x1, y1, x2, y2) against the target
 * (X1, Y1, X2, Y2), and with want_grad its gradient with respect to the first
 * box in *g1..*g4.  `loss` and `want_grad` are constants where this is
 * inlined, so each kernel keeps only its own arithmetic.
 *
 * Forward, in torchvision's order of operations (ops/_utils.py
 * _loss_inter_union, giou_loss.py, diou_loss.py _diou_iou_loss, ciou_loss.py):
 *   w = x2 - x1, h = y2 - y1 (W, H of the target)
 *   intersection: ix1 = max(x1, X1), ix2 = min(x2, X2) (likewise y),
 *     I = (ix2 - ix1)(iy2 - iy1) where iy2 > iy1 and ix2 > ix1, else 0
 *   U = (w h + W H) - I,  iou = I / (U + eps)
 *   enclosing box: cx1 = min(x1, X1), cx2 = max(x2, X2) (likewise y), cw, ch
 *   giou: C = cw ch,  1 - (iou - (C - U) / (C + eps))
 *   diou: (1 - iou) + d2 / D2,  D2 = (cw^2 + ch^2) + eps,
 *         d2 = dx^2 + dy^2, dx = (x2 + x1)/2 - (X1 + X2)/2 (likewise dy)
 *   ciou: diou + alpha v,  v = 4/pi^2 (atan(W/H) - atan(w/h))^2,
 *         alpha = v / (((1 - iou) + v) + eps2), a constant for the gradient
 *         (torchvision computes it under no_grad; its DIoU part uses eps = 1e-7
 *         whatever the eps argument, which enters alpha only: the caller passes
 *         eps and eps2 accordingly)
 * Backward, reverse mode through the same graph, with torch's rules: the
 * tie rule of max/min (bx_dmax/bx_dmin) and no gradient through the zero
 * branch of the intersection. */
FL_INLINE T BXF(bx_box)(const int loss, const int want_grad, T x1, T y1, T x2, T y2, T X1, T Y1,
                        T X2, T Y2, T eps, T eps2, T *g1, T *g2, T *g3, T *g4)
{
    const T w = x2 - x1, h = y2 - y1, W = X2 - X1, H = Y2 - Y1;
    const T ix1 = BXF(bx_max)(x1, X1), iy1 = BXF(bx_max)(y1, Y1);
    const T ix2 = BXF(bx_min)(x2, X2), iy2 = BXF(bx_min)(y2, Y2);
    const T iw = ix2 - ix1, ih = iy2 - iy1;
    const int in = (iy2 > iy1) & (ix2 > ix1);
    const T I = in ? iw * ih : BXC(0);
    const T U = (w * h + W * H) - I;
    const T Ue = U + eps;
    const T iou = I / Ue;
    const T cx1 = BXF(bx_min)(x1, X1), cy1 = BXF(bx_min)(y1, Y1);
    const T cx2 = BXF(bx_max)(x2, X2), cy2 = BXF(bx_max)(y2, Y2);
    const T cw = cx2 - cx1, ch = cy2 - cy1;

    T value;
    T gU = 0, gcw, gch, gpx = 0, gpy = 0, gw = 0, gh = 0; /* d value / d (each) */
    if (loss == BX_GIOU) {
        const T C = cw * ch, Ce = C + eps;
        value = BXC(1) - (iou - (C - U) / Ce);
        const T rCe = BXC(1) / Ce;
        gU = -rCe;                      /* d/dU of (C - U)/(C + eps) */
        const T gC = Ue * rCe * rCe;    /* d/dC of the same: (U + eps)/(C + eps)^2 */
        gcw = gC * ch;
        gch = gC * cw;
    } else {
        const T D2 = (cw * cw + ch * ch) + eps;
        const T dx = (x2 + x1) * BXC(0.5) - (X1 + X2) * BXC(0.5);
        const T dy = (y2 + y1) * BXC(0.5) - (Y1 + Y2) * BXC(0.5);
        const T d2 = dx * dx + dy * dy;
        const T q = d2 / D2;
        value = (BXC(1) - iou) + q;
        const T rD2 = BXC(1) / D2;
        const T gD2 = -q * rD2;         /* d/dD2 of d2/D2 */
        gcw = BXC(2) * gD2 * cw;
        gch = BXC(2) * gD2 * ch;
        gpx = rD2 * dx;                 /* d/dx1 = d/dx2 of d2/D2 through the centre */
        gpy = rD2 * dy;
        if (loss == BX_CIOU) {
            const T c = BXC(0.40528473456935108578); /* 4 / pi^2 */
            const T r = w / h;
            const T at = BXF(bx_atan)(W / H) - BXF(bx_atan)(r);
            const T v = c * (at * at);
            const T alpha = v / (((BXC(1) - iou) + v) + eps2);
            value = value + alpha * v;
            const T gr = -(alpha * c * BXC(2) * at) / (BXC(1) + r * r); /* d(alpha v)/dr */
            gw = gr / h;                /* r = w / h; torch: g / h and -g w / h^2 */
            gh = -gw * r;
        }
    }
    if (!want_grad)
        return value;
    /* iou = I / Ue: d/dI = 1/Ue, d/dUe = -I/Ue^2 = -iou/Ue; d value/d iou = -1 */
    const T rUe = BXC(1) / Ue;
    const T gUt = gU + iou * rUe;       /* through U, both ways */
    const T gI = -rUe - gUt;            /* U = A1 + A2 - I */
    gw += gUt * h;                      /* A1 = w h */
    gh += gUt * w;
    const T giw = in ? gI * ih : BXC(0);
    const T gih = in ? gI * iw : BXC(0);
    *g1 = ((-gw - BXF(bx_dmax)(giw, x1, X1)) - BXF(bx_dmin)(gcw, x1, X1)) + gpx;
    *g2 = ((-gh - BXF(bx_dmax)(gih, y1, Y1)) - BXF(bx_dmin)(gch, y1, Y1)) + gpy;
    *g3 = ((gw + BXF(bx_dmin)(giw, x2, X2)) + BXF(bx_dmax)(gcw, x2, X2)) + gpx;
    *g4 = ((gh + BXF(bx_dmin)(gih, y2, Y2)) + BXF(bx_dmax)(gch, y2, Y2)) + gpy;
    return value;
}

#undef BXF
#undef BXC
#endif /* BX_SFX */
