/* isa_paths.h -- instantiates the template FL_TEMPLATE (a header name,
 * defined by the including .c file, with the dtype: T, FL_SFX ...) once per
 * ISA path: baseline, and on x86-64 AVX2 and AVX-512.  No guard. */
#define FL_FLV BASE_FLV
#define FL_ISA base
#define FL_ATTR
#define FL_VBYTES 16
#include FL_TEMPLATE
#undef FL_FLV
#undef FL_ISA
#undef FL_ATTR
#undef FL_VBYTES
#if FL_X86
#define FL_FLV _fma
#define FL_ISA avx2
#define FL_ATTR FL_TARGET_AVX2
#define FL_VBYTES 32
#include FL_TEMPLATE
#undef FL_ISA
#undef FL_ATTR
#undef FL_VBYTES
#define FL_ISA avx512
#define FL_ATTR FL_TARGET_AVX512
#define FL_VBYTES 64
#include FL_TEMPLATE
#undef FL_FLV
#undef FL_ISA
#undef FL_ATTR
#undef FL_VBYTES
#endif
