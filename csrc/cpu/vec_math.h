// CPU vector kernels of the step op, compiled four times (AVX-512, AVX2+FMA, AVX+FMA, each with
// F16C, and baseline x86-64) from vec_math_impl.h and picked once at run time from the CPU's
// features, so one binary is fast on every x86-64 machine without -march flags. The
// environment variable SUPERTHOUGHTS_CPU_ISA names a variant to use instead (tests run every
// one this CPU can).
// Plain C++, no torch headers.
#pragma once
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <stdexcept>
#include <string>
#include <type_traits>
#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#include <immintrin.h>
#endif

namespace superthoughts::cpu {

// An IEEE binary16 value as raw bits: a type of its own, so the kernels' overloads tell it
// from bfloat16 (plain uint16_t bits).
struct Float16Bits {
  uint16_t bits;
};

// Exact half -> float widening for the scalar tails and the baseline variant.
inline float half_bits_to_float(uint16_t h) {
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t exponent = (h >> 10) & 0x1fu, mantissa = h & 0x3ffu;
  if (exponent == 0) {  // zero or subnormal: mantissa * 2^-24, exact in float
    const float magnitude = static_cast<float>(mantissa) * 0x1p-24f;
    return sign ? -magnitude : magnitude;
  }
  // Infinity / NaN keep an all-ones exponent; normal numbers move from bias 15 to bias 127.
  const uint32_t word = sign | (exponent == 0x1fu ? 0x7f800000u : (exponent + 112u) << 23) | (mantissa << 13);
  float x;
  std::memcpy(&x, &word, sizeof(x));
  return x;
}

#define SUPERTHOUGHTS_VEC_LANES 8
namespace baseline {
#include "vec_math_impl.h"
}

#if defined(__GNUC__) && !defined(__clang__) && defined(__x86_64__)
#define SUPERTHOUGHTS_X86_VARIANTS 1
// Every x86 variant widens halves with vcvtph2ps (F16C, or AVX-512F's 16-lane form).
#define SUPERTHOUGHTS_VEC_F16C 1
#pragma GCC push_options
#pragma GCC target("avx,fma,f16c")
namespace avx_fma {
#include "vec_math_impl.h"
}
#pragma GCC pop_options
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")
namespace avx2_fma {
#include "vec_math_impl.h"
}
#pragma GCC pop_options
// Twice the lanes and twice the registers: the exp pass and the merge projection are
// compute-bound enough on a few cores that this shows (see benchmarks/results/step_cpu.json).
#undef SUPERTHOUGHTS_VEC_LANES
#define SUPERTHOUGHTS_VEC_LANES 16
#pragma GCC push_options
#pragma GCC target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma,f16c")
namespace avx512 {
#include "vec_math_impl.h"
}
#pragma GCC pop_options
#undef SUPERTHOUGHTS_VEC_F16C
#endif
#undef SUPERTHOUGHTS_VEC_LANES

struct VecKernels {
  float (*copy_finite_max_f32)(const float*, float*, int64_t);
  float (*copy_finite_max_bf16)(const uint16_t*, float*, int64_t);
  float (*copy_finite_max_f16)(const Float16Bits*, float*, int64_t);
  int64_t (*first_index_of)(const float*, int64_t, float);
  float (*softmax_sum_parts)(const float*, int64_t, float, float*);
  void (*dot_against_rows)(const float*, const float*, int64_t, int64_t, int64_t, float*);
  void (*dot2_against_rows)(const float*, const float*, const float*, int64_t, int64_t, int64_t, float*, float*);
  // The same with bfloat16 weight rows (raw bits).
  void (*dot_against_rows_bf16)(const uint16_t*, const float*, int64_t, int64_t, int64_t, float*);
  void (*dot2_against_rows_bf16)(const uint16_t*, const uint16_t*, const float*, int64_t, int64_t, int64_t, float*,
                                 float*);
  // And with float16 weight rows.
  void (*dot_against_rows_f16)(const Float16Bits*, const float*, int64_t, int64_t, int64_t, float*);
  void (*dot2_against_rows_f16)(const Float16Bits*, const Float16Bits*, const float*, int64_t, int64_t, int64_t,
                                float*, float*);
  const char* name;
  // Set on the AVX-512 variant when the CPU also multiplies bfloat16 / float16 in hardware
  // (AVX512-BF16, AVX512-FP16; AMX machines have both): torch's GEMM then outruns the merge
  // loop of step.cpp for those types.
  bool bf16_hardware = false;
  bool fp16_hardware = false;

  // The dot kernels picked by the weight rows' element type (float32, bfloat16 or float16 bits).
  void dot(const float* w, const float* x, int64_t rows, int64_t k, int64_t ldx, float* out) const {
    dot_against_rows(w, x, rows, k, ldx, out);
  }
  void dot(const uint16_t* w, const float* x, int64_t rows, int64_t k, int64_t ldx, float* out) const {
    dot_against_rows_bf16(w, x, rows, k, ldx, out);
  }
  void dot(const Float16Bits* w, const float* x, int64_t rows, int64_t k, int64_t ldx, float* out) const {
    dot_against_rows_f16(w, x, rows, k, ldx, out);
  }
  void dot2(const float* w0, const float* w1, const float* x, int64_t rows, int64_t k, int64_t ldx, float* out0,
            float* out1) const {
    dot2_against_rows(w0, w1, x, rows, k, ldx, out0, out1);
  }
  void dot2(const uint16_t* w0, const uint16_t* w1, const float* x, int64_t rows, int64_t k, int64_t ldx,
            float* out0, float* out1) const {
    dot2_against_rows_bf16(w0, w1, x, rows, k, ldx, out0, out1);
  }
  void dot2(const Float16Bits* w0, const Float16Bits* w1, const float* x, int64_t rows, int64_t k, int64_t ldx,
            float* out0, float* out1) const {
    dot2_against_rows_f16(w0, w1, x, rows, k, ldx, out0, out1);
  }
};

#define SUPERTHOUGHTS_VEC_KERNELS(ns) \
  VecKernels { &ns::copy_finite_max<float>, &ns::copy_finite_max<uint16_t>, &ns::copy_finite_max<Float16Bits>, \
              &ns::first_index_of, &ns::softmax_sum_parts, &ns::dot_against_rows<float>, &ns::dot2_against_rows<float>, \
              &ns::dot_against_rows<uint16_t>, &ns::dot2_against_rows<uint16_t>, &ns::dot_against_rows<Float16Bits>, \
              &ns::dot2_against_rows<Float16Bits>, #ns }

// The variants this CPU can run, fastest first.
inline int supported_variants(VecKernels* out) {
  int n = 0;
#ifdef SUPERTHOUGHTS_X86_VARIANTS
  __builtin_cpu_init();
  const bool fma_f16c = __builtin_cpu_supports("fma") && __builtin_cpu_supports("f16c");
  if (__builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512vl") &&
      __builtin_cpu_supports("avx512bw") && __builtin_cpu_supports("avx512dq") && fma_f16c) {
    out[n] = SUPERTHOUGHTS_VEC_KERNELS(avx512);
#if __GNUC__ >= 12  // the feature names below are GCC 12's
    out[n].bf16_hardware = __builtin_cpu_supports("avx512bf16");
    out[n].fp16_hardware = __builtin_cpu_supports("avx512fp16");
#endif
    ++n;
  }
  if (__builtin_cpu_supports("avx2") && fma_f16c) out[n++] = SUPERTHOUGHTS_VEC_KERNELS(avx2_fma);
  if (__builtin_cpu_supports("avx") && fma_f16c) out[n++] = SUPERTHOUGHTS_VEC_KERNELS(avx_fma);
#endif
  out[n++] = SUPERTHOUGHTS_VEC_KERNELS(baseline);
  return n;
}

inline const VecKernels& vec_kernels() {
  static const VecKernels chosen = [] {
    VecKernels variants[4];
    const int n = supported_variants(variants);
    const char* wanted = std::getenv("SUPERTHOUGHTS_CPU_ISA");
    if (wanted == nullptr || *wanted == '\0') return variants[0];
    std::string names;
    for (int i = 0; i < n; ++i) {
      if (std::strcmp(variants[i].name, wanted) == 0) return variants[i];
      names += (i ? ", " : "") + std::string(variants[i].name);
    }
    throw std::runtime_error("superthoughts_ext: SUPERTHOUGHTS_CPU_ISA=" + std::string(wanted) +
                             " is not a vector kernel variant this CPU can run (" + names + ")");
  }();
  return chosen;
}

}  // namespace superthoughts::cpu
