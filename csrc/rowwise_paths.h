/* rowwise_paths.h -- instantiates rowwise_impl.h for one dtype (T, FL_SFX,
 * RW_MASK_INT defined by rowwise.c) on every ISA path.  No guard. */
#define FL_FLV BASE_FLV
#define FL_ISA base
#define FL_ATTR
#define FL_VBYTES 16
#include "rowwise_impl.h"
#undef FL_FLV
#undef FL_ISA
#undef FL_ATTR
#undef FL_VBYTES
#if FL_X86
#define FL_FLV _fma
#define FL_ISA avx2
#define FL_ATTR FL_TARGET_AVX2
#define FL_VBYTES 32
#include "rowwise_impl.h"
#undef FL_ISA
#undef FL_ATTR
#undef FL_VBYTES
#define FL_ISA avx512
#define FL_ATTR FL_TARGET_AVX512
#define FL_VBYTES 64
#include "rowwise_impl.h"
#undef FL_FLV
#undef FL_ISA
#undef FL_ATTR
#undef FL_VBYTES
#endif
