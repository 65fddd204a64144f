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
/* FL_CDEF_END */

#endif
