// Tensor-core primitives of the merge projection (step_merge.cuh): one 16-byte chunk of A rows
// and B columns per lane, multiplied with mma.sync. Plain CUDA: no torch.
//
// A chunk is what one lane loads with one 16-byte load per operand row: 8 bf16/fp16 or 4 fp32
// values. Lane (g, t) = (lane / 4, lane % 4) of a warp holds the chunk at columns
// [kVec * t, kVec * (t + 1)) of rows g and g + 8 of A and of column g of B; the 4 lanes t
// together cover a K slice of 4 * kVec columns, which mma_chunk multiplies as two mma steps.
// The steps see the slice's columns in a permuted order, the same for A and B, which a sum
// does not notice: fragment loads stay single coalesced 16-byte loads without shared memory.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cstdint>
#include <type_traits>

namespace superthoughts::cuda_step {

// D += A(16x16, row) * B(16x8, col), 16-bit inputs, fp32 accumulation.
template <typename T>
__device__ __forceinline__ void mma_16816(float (&d)[4], uint32_t a0, uint32_t a1, uint32_t a2,
                                          uint32_t a3, uint32_t b0, uint32_t b1) {
#if defined(SUPERTHOUGHTS_CUDA_EMULATION)
  const uint32_t a[4] = {a0, a1, a2, a3}, b[2] = {b0, b1};
  emulation::mma_m16n8k16(d, a, b, std::is_same_v<T, __nv_bfloat16>);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  if constexpr (std::is_same_v<T, __nv_bfloat16>) {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  } else {
    asm volatile(
        "mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
        "{%8,%9}, {%0,%1,%2,%3};\n"
        : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
        : "r"(a0), "r"(a1), "r"(a2), "r"(a3), "r"(b0), "r"(b1));
  }
#endif
}

// D += A(16x8, row) * B(8x8, col), tf32 inputs (the low 13 bits of each word are ignored).
__device__ __forceinline__ void mma_1688_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2]) {
#if defined(SUPERTHOUGHTS_CUDA_EMULATION)
  emulation::mma_m16n8k8_tf32(d, a, b);
#elif defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm volatile(
      "mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, "
      "{%8,%9}, {%0,%1,%2,%3};\n"
      : "+f"(d[0]), "+f"(d[1]), "+f"(d[2]), "+f"(d[3])
      : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]));
#endif
}

// x rounded to the nearest tf32 (10 mantissa bits), ties away from zero, as a 32-bit word.
__device__ __forceinline__ uint32_t to_tf32(float x) {
#if defined(SUPERTHOUGHTS_CUDA_EMULATION)
  return emulation::round_to_tf32(x);
#else
  uint32_t out = 0;
#if defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800
  asm("cvt.rna.tf32.f32 %0, %1;" : "=r"(out) : "f"(x));
#endif
  return out;
#endif
}

// fp32 D += A * B on tf32 tensor cores without losing fp32 accuracy ("3xTF32"): each input is
// split as x = big + small with big = tf32(x) and small = tf32(x - big); the three products
// big*big, big*small and small*big are exact in fp32 and the dropped small*small term is
// ~2^-22 of the product, below fp32 rounding of a long sum. Small terms go first, so they are
// not absorbed by the large partial sum.
__device__ __forceinline__ void mma_1688_3xtf32(float (&d)[4], const float (&a)[4], const float (&b)[2]) {
  uint32_t a_big[4], a_small[4], b_big[2], b_small[2];
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    a_big[i] = to_tf32(a[i]);
    a_small[i] = to_tf32(a[i] - __uint_as_float(a_big[i]));
  }
#pragma unroll
  for (int i = 0; i < 2; ++i) {
    b_big[i] = to_tf32(b[i]);
    b_small[i] = to_tf32(b[i] - __uint_as_float(b_big[i]));
  }
  mma_1688_tf32(d, a_small, b_big);
  mma_1688_tf32(d, a_big, b_small);
  mma_1688_tf32(d, a_big, b_big);
}

// D += A * B over one K slice (see the top of the file): a_lo / a_hi are the lane's chunks of A
// rows g and g + 8, b its chunk of B column g. 16-bit: two m16n8k16 steps on words {0, 1} and
// {2, 3}; fp32: two m16n8k8 steps (each 3xTF32) on words {x, y} and {z, w}.
template <typename T>
__device__ __forceinline__ void mma_chunk(float (&d)[4], const uint4& a_lo, const uint4& a_hi, const uint4& b) {
  if constexpr (sizeof(T) == 2) {
    mma_16816<T>(d, a_lo.x, a_hi.x, a_lo.y, a_hi.y, b.x, b.y);
    mma_16816<T>(d, a_lo.z, a_hi.z, a_lo.w, a_hi.w, b.z, b.w);
  } else {
    static_assert(sizeof(T) == 4, "fp32 or a 16-bit type");
    // m16n8k8 A: a0 (g, t), a1 (g + 8, t), a2 (g, t + 4), a3 (g + 8, t + 4); B: b0 (t, g), b1 (t + 4, g).
    const float a0[4] = {__uint_as_float(a_lo.x), __uint_as_float(a_hi.x), __uint_as_float(a_lo.y), __uint_as_float(a_hi.y)};
    const float b0[2] = {__uint_as_float(b.x), __uint_as_float(b.y)};
    mma_1688_3xtf32(d, a0, b0);
    const float a1[4] = {__uint_as_float(a_lo.z), __uint_as_float(a_hi.z), __uint_as_float(a_lo.w), __uint_as_float(a_hi.w)};
    const float b1[2] = {__uint_as_float(b.z), __uint_as_float(b.w)};
    mma_1688_3xtf32(d, a1, b1);
  }
}

}  // namespace superthoughts::cuda_step
