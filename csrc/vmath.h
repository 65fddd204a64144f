/* vmath.h -- branch-free exp, log, log1p, expm1 in float32 and float64.
 *
 * Why our own: GCC vectorises calls to libm only through libmvec (needs
 * -ffast-math or `declare simd` + -fopenmp-simd, and glibc >= 2.35 for
 * log1pf), so loops calling expf/logf stay scalar.  These are plain
 * straight-line code (selects, no branches, no calls), so a loop calling them
 * vectorises on every ISA path.  Include this header before any target
 * region (see common.h).
 *
 * Method: Cody-Waite range reduction with the "magic number" rounding trick
 * (round-to-nearest by adding 1.5*2^p; the integer comes out of the bits, no
 * float->int conversion needed) and polynomials (Cephes for float32 exp/log,
 * fdlibm for float64 log, Taylor for the rest).  Accuracy measured by
 * tests/test_native.py: <= 2 ulp float32, <= 2 ulp float64 (baseline and FMA
 * paths).  Special values: exp(+inf)=inf, exp(-inf)=0, overflow to inf,
 * gradual underflow to subnormals and 0; log(0)=-inf, log(x<0)=NaN;
 * log1p(-1)=-inf; expm1(-inf)=-1; NaN in, NaN out; signed zeros kept.
 * Nothing here relies on errno or on traps. */
#ifndef FL_VMATH_H
#define FL_VMATH_H

#include <math.h>
#include "common.h"

/* ---- bit casts (memcpy: defined behaviour, compiles to nothing) ---------- */
FL_INLINE uint32_t fl_bits_f32(float x) { uint32_t u; memcpy(&u, &x, 4); return u; }
FL_INLINE float fl_float_f32(uint32_t u) { float x; memcpy(&x, &u, 4); return x; }
FL_INLINE uint64_t fl_bits_f64(double x) { uint64_t u; memcpy(&u, &x, 8); return u; }
FL_INLINE double fl_float_f64(uint64_t u) { double x; memcpy(&x, &u, 8); return x; }


/* ---- the functions, in two flavours --------------------------------------------
 * plain (fl_exp_f32 ...): a*b + c, for baseline x86-64 (no FMA instruction);
 * fma (fl_exp_f32_fma ...): fused, only inlined into code whose target has FMA
 * (the AVX2 and AVX-512 paths; every aarch64). */
#define FL_V(name) name
#define FL_MADD(a, b, c) ((a) * (b) + (c))
#include "vmath_impl.h"
#undef FL_V
#undef FL_MADD
#define FL_V(name) name##_fma
#define FL_MADD(a, b, c) _Generic((a), float: __builtin_fmaf, double: __builtin_fma)(a, b, c)
#include "vmath_impl.h"
#undef FL_V
#undef FL_MADD

#endif
