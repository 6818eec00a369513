// CPU vector kernels of the step op, compiled three times (AVX2+FMA, AVX+FMA, baseline
// x86-64) from vec_math_impl.h and picked once at run time from the CPU's features, so one
// binary is fast on every x86-64 machine without -march flags. Plain C++, no torch headers.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

namespace superthoughts::cpu {

namespace baseline {
#include "vec_math_impl.h"
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SUPERTHOUGHTS_X86_VARIANTS 1
#pragma GCC push_options
#pragma GCC target("avx,fma")
namespace avx_fma {
#include "vec_math_impl.h"
}
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma")
namespace avx2_fma {
#include "vec_math_impl.h"
}
#pragma GCC pop_options
#endif

struct VecKernels {
  float (*copy_finite_max_f32)(const float*, float*, int64_t);
  float (*copy_finite_max_bf16)(const uint16_t*, float*, int64_t);
  int64_t (*first_index_of)(const float*, int64_t, float);
  float (*sum_exp)(const float*, int64_t, float);
  void (*dot_against_rows)(const float*, const float*, int64_t, int64_t, int64_t, float*);
  void (*dot2_against_rows)(const float*, const float*, const float*, int64_t, int64_t, int64_t, float*, float*);
  const char* name;
};

#define SUPERTHOUGHTS_VEC_KERNELS(ns) \
  VecKernels { &ns::copy_finite_max_f32, &ns::copy_finite_max_bf16, &ns::first_index_of, &ns::sum_exp, \
              &ns::dot_against_rows, &ns::dot2_against_rows, #ns }

inline const VecKernels& vec_kernels() {
  static const VecKernels chosen = [] {
#ifdef SUPERTHOUGHTS_X86_VARIANTS
    __builtin_cpu_init();
    if (__builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma")) return SUPERTHOUGHTS_VEC_KERNELS(avx2_fma);
    if (__builtin_cpu_supports("avx") && __builtin_cpu_supports("fma")) return SUPERTHOUGHTS_VEC_KERNELS(avx_fma);
#endif
    return SUPERTHOUGHTS_VEC_KERNELS(baseline);
  }();
  return chosen;
}

}  // namespace superthoughts::cpu
