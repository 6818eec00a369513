// Host-compiler stand-ins for the CUDA built-ins that csrc/kernels/*.cuh use, so the SAME
// kernel source runs on a CPU: every block is an OS thread, every CUDA thread a fiber of that
// block's OS thread (ucontext), switched at the points where a GPU thread can wait for others
// (__syncthreads, warp shuffles, mma, the grid barrier). Test-only: python_tests/
// cuda_emulation.py builds it with g++; the test_emulated_* tests of test_step.py, test_generate.py
// and test_step_cuda_memcheck.py check the kernel against the reference on machines without a GPU
// (test_emulation_fibers.py the emulator itself). It checks the kernel's logic (indexing,
// tiling, the mma fragment layout, reductions, barriers), not its speed, its memory ordering
// or its caches, with one exception: __ldg from memory the launch writes is reported (see Span).
//
// Faithful where the kernel relies on it: __shfl_xor_sync and mma.sync are warp collectives
// (all 32 lanes must arrive, else the emulator reports a deadlock naming the block), __shared__
// is one instance per block, cooperative_groups::this_grid().sync() waits for every block.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <source_location>
#include <string>
#include <vector>

#ifndef SUPERTHOUGHTS_CUDA_EMULATION
#error "cuda_emulation.h is for host compilers emulating CUDA: define SUPERTHOUGHTS_CUDA_EMULATION"
#endif

// Execution-space qualifiers: plain C++ functions; shared memory is per block = per OS thread.
#undef __global__
#undef __device__
#undef __host__
#undef __forceinline__
#undef __launch_bounds__
#undef __grid_constant__
#undef __shared__
#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __grid_constant__
#define __shared__ static thread_local

using std::isfinite;

namespace superthoughts::emulation {

uint3 thread_index();
uint3 block_index();
dim3 grid_dim();
// Every wait names its call site: threads of one block (or warp) that meet at different
// __syncthreads (or a shuffle and an mma) are undefined behaviour on a GPU, reported here.
using Site = std::source_location;
void sync_block(Site site);
void sync_grid();
// Exchanges 64-bit words across the 32 lanes of the calling warp: returns lane (lane ^ mask)'s.
uint64_t warp_exchange_xor(uint64_t value, int lane_mask, Site site);
// mma.sync.aligned.m16n8k16.row.col.f32.{bf16,f16}: d += A * B with the PTX fragment layout.
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool bf16,
                  Site site = Site::current());
// mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 (inputs truncated to tf32, as the hardware reads them).
void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], Site site = Site::current());
// cvt.rna.tf32.f32: nearest tf32, ties away from zero, low 13 bits cleared.
uint32_t round_to_tf32(float x);

// Memory that a launch writes. A load from it through the read-only path (__ldg, i.e.
// ld.global.nc) is a bug only a GPU shows: that cache is not kept coherent with the launch's
// own writes and may return older data, so __ldg is for data read-only for the whole kernel.
struct Span {
  const void* data;
  size_t bytes;
};
// Reports (as the launch's error) a `bytes`-byte __ldg at p that overlaps a written Span.
void check_read_only(const void* p, size_t bytes, Site site);

// Runs body once per (block, thread) of a grid x block launch; returns "" or what went wrong
// (a deadlock: threads of one block waiting at different barriers, or some never arriving; an
// __ldg from `written`). schedule_seed 0 resumes a block's waiting threads in index order, else
// in an order reshuffled every round (seeded), to expose code that depends on one order.
std::string launch(int grid, int block, const std::function<void()>& body, uint64_t schedule_seed = 0,
                   std::vector<Span> written = {});

// How this build switches between fibers: "stack" or "ucontext" (fiber_switch.h).
const char* fiber_switch_kind();

}  // namespace superthoughts::emulation

#define threadIdx (::superthoughts::emulation::thread_index())
#define blockIdx (::superthoughts::emulation::block_index())
#define gridDim (::superthoughts::emulation::grid_dim())

inline void __syncthreads(std::source_location site = std::source_location::current()) {
  ::superthoughts::emulation::sync_block(site);
}

template <typename T>
T __shfl_xor_sync(unsigned mask, T value, int lane_mask, std::source_location site = std::source_location::current()) {
  static_assert(sizeof(T) <= sizeof(uint64_t), "shuffles move at most 64 bits");
  if (mask != 0xffffffffu) std::abort();  // the kernels only shuffle across full warps
  uint64_t word = 0;
  std::memcpy(&word, &value, sizeof(T));
  word = ::superthoughts::emulation::warp_exchange_xor(word, lane_mask, site);
  T out;
  std::memcpy(&out, &word, sizeof(T));
  return out;
}

// Cache-hinted loads are plain loads here; __ldg also checks that the launch never writes p.
template <typename T>
inline T __ldg(const T* p, std::source_location site = std::source_location::current()) {
  ::superthoughts::emulation::check_read_only(p, sizeof(T), site);
  return *p;
}
template <typename T>
inline T __ldcs(const T* p) { return *p; }
template <typename T>
inline T __ldcg(const T* p) { return *p; }

inline float __uint_as_float(uint32_t bits) {
  float f;
  std::memcpy(&f, &bits, sizeof f);
  return f;
}
inline uint32_t __float_as_uint(float f) {
  uint32_t bits;
  std::memcpy(&bits, &f, sizeof bits);
  return bits;
}
inline int min(int a, int b) { return a < b ? a : b; }

namespace cooperative_groups {
struct grid_group {
  void sync() const { ::superthoughts::emulation::sync_grid(); }
};
inline grid_group this_grid() { return {}; }
}  // namespace cooperative_groups
