/* common.h -- shared by every kernel family: inline/ISA macros, the
 * deterministic float64 accumulator, the thread pool API.
 *
 * Everything here that hot loops use is `static inline` always_inline and is
 * defined outside any target region, so that it inlines into (and is
 * vectorised for) every ISA clone: a helper defined inside a target region
 * inherits that target and cannot inline into baseline code. */
#ifndef FL_COMMON_H
#define FL_COMMON_H

#include <stdint.h>
#include <stddef.h>
#include <string.h>

#define FL_INLINE static inline __attribute__((always_inline))
#define FL_RESTRICT restrict

/* ---- instruction-set paths ------------------------------------------------
 * 0 baseline (whatever the compiler targets by default: SSE2 on x86-64),
 * 1 AVX2+FMA, 2 AVX-512.  Non-x86 builds have the baseline only. */
#define FL_ISA_BASE 0
#define FL_ISA_AVX2 1
#define FL_ISA_AVX512 2
#define FL_NISA 3
/* -DFL_NO_X86 builds the portable baseline only, as on other architectures */
#if defined(__x86_64__) && defined(__GNUC__) && !defined(FL_NO_X86)
#define FL_X86 1
#define FL_TARGET_AVX2 __attribute__((target("avx2,fma")))
/* 512-bit vectors: GCC would otherwise keep to 256 bits for AVX-512 code. */
#define FL_TARGET_AVX512 \
    __attribute__((target("avx512f,avx512dq,avx512vl,avx512bw,fma,prefer-vector-width=512")))
#else
#define FL_X86 0
#endif

/* The ISA path in effect (FASTLOSS_ISA / fl_set_isa / best available). */
int fl_isa_now(void);

/* ---- template names ----------------------------------------------------------
 * FL_CAT(a, b) = a_b, FL_CAT3(a, b, c) = a_bc (after expansion), for the
 * per-dtype x ISA names of the kernel templates.  BASE_FLV: the vmath flavour
 * of the baseline path (every aarch64 has FMA). */
#define FL_CAT_(a, b) a##_##b
#define FL_CAT(a, b) FL_CAT_(a, b)
#define FL_CAT3_(a, b, c) a##_##b##c
#define FL_CAT3(a, b, c) FL_CAT3_(a, b, c)
#if defined(__aarch64__)
#define BASE_FLV _fma
#else
#define BASE_FLV
#endif

/* ---- deterministic accumulation -------------------------------------------
 * [0, n) is cut into units of FL_UNIT elements.  A unit is computed in
 * sub-blocks of FL_SUB values written to a buffer, and the buffer is summed
 * into FL_LANES float64 lanes (lane = index mod FL_LANES within the unit); the
 * lanes are folded in a fixed order.  Per-unit sums are added in unit order by
 * the caller.  So the total depends on n only, never on which thread ran which
 * unit.  Explicit lanes because GCC does not vectorise a plain `s += v`
 * double reduction without -ffast-math (it may not reassociate). */
#define FL_UNIT 16384
#define FL_SUB 1024
#define FL_LANES 16

/* acc[j] += v[i + j] lane-wise; m may be any size (the tail goes to the first
 * lanes, which keeps the lane of an element a function of its index). */
FL_INLINE void fl_lanes_add_f32(double *FL_RESTRICT acc, const float *FL_RESTRICT v, int m)
{
    int i = 0;
    for (; i + FL_LANES <= m; i += FL_LANES)
        for (int j = 0; j < FL_LANES; j++)
            acc[j] += (double)v[i + j];
    for (int j = 0; i + j < m; j++)
        acc[j] += (double)v[i + j];
}

FL_INLINE void fl_lanes_add_f64(double *FL_RESTRICT acc, const double *FL_RESTRICT v, int m)
{
    int i = 0;
    for (; i + FL_LANES <= m; i += FL_LANES)
        for (int j = 0; j < FL_LANES; j++)
            acc[j] += v[i + j];
    for (int j = 0; i + j < m; j++)
        acc[j] += v[i + j];
}

/* Pairwise fold of the lanes, always in the same order. */
FL_INLINE double fl_lanes_fold(const double *acc)
{
    double t[FL_LANES];
    memcpy(t, acc, sizeof t);
    for (int w = FL_LANES / 2; w >= 1; w /= 2)
        for (int j = 0; j < w; j++)
            t[j] = t[j] + t[j + w];
    return t[0];
}

/* ---- threads ---------------------------------------------------------------
 * fl_parallel_for runs fn(ctx, u) for every u in [0, units) on up to
 * `nthreads` threads (the caller included); units are handed out by an atomic
 * counter.  If the pool is busy with another caller's job, this caller runs
 * its job alone on its own thread.  Returns when every unit is done. */
typedef void (*fl_unit_fn)(void *ctx, int64_t unit);
void fl_parallel_for(fl_unit_fn fn, void *ctx, int64_t units, int nthreads);

/* Below this many elements a call stays on the caller's thread: waking
 * workers costs microseconds. */
#define FL_PAR_MIN 65536
/* Threads a call over n elements should use. */
int fl_threads_for(int64_t n);

#endif
