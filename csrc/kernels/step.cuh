// CUDA kernel of superthoughts_step (semantics: superthoughts_ext/reference.py).
// Plain CUDA, no torch headers: the glue in csrc/cuda/step.cu validates, allocates
// and calls plan_superthoughts_step then launch_superthoughts_step on the current stream.
//
// One cooperative launch, one grid-wide barrier:
//   0. every block issues L2 prefetches for the rows of W it will multiply first;
//   1. the logits [2, B, V] seen as one flat array of 2*B*V elements are cut into `grid` equal
//      ranges, one per block, so all blocks stream the same bytes for any B (B = 1 and
//      V = 151936 spreads one row over ~130 blocks; B = 256 gives each block ~2 rows). Each
//      block writes one partial (max, argmax, sum of exp, best Gumbel score, its index,
//      finished flag) per (head, row) piece it touches into the workspace;
//   -- grid.sync() --
//   2. rows are dealt out to blocks from the last one (phase 3 starts from the first); a block
//      merges the partials of its rows (online-softmax merge, lowest index on ties), applies
//      the confidence rule and writes tokens, n_new, conf, finished (and the raw pair when
//      there is no merge weight);
//   3. next_in = W [E[t1]; E[second]] + bias, tasks (feature tile x batch tile) dealt out to
//      blocks batch-tile-major; each block re-derives the decisions of its batch tile from the
//      partials (cheap: a few hundred bytes from L2) instead of waiting on a second barrier.
//      B <= 16 or H % 32 != 0 or unaligned rows: warp-per-feature GEMV in fp32 (W read once
//      per 8 rows); otherwise tensor-core MMA, fp32 accumulation: m16n8k16 for bf16/fp16,
//      m16n8k8 tf32 in three products per step for fp32 ("3xTF32", fp32 accuracy).
// There is no host sync and no state carried between launches (the workspace holds only
// partials written before they are read), so the launch can be captured in a CUDA graph.
//
// Grid: blocks_per_SM (from the occupancy calculator, 2 expected at 256 threads and
// <= 128 registers) x SMs: every block is resident, which the barrier requires, and 2 x 256
// threads with 4 x 16-byte loads in flight each keep ~32 KiB per SM in flight for phase 1.
//
// For a future GPU session, measure (H100, bf16, V = 151936, H = 1536; ncu + CUDA events):
//   - every B: the H100 run (38.5 us at B = 1 ... 134.8 us at B = 256) fits ~30 us fixed per
//     launch plus streaming at 1.1-1.6 TB/s. benchmarks/gpu/phase_probe.py stamps each phase
//     per block and times ablations (empty cooperative launch, grid.sync alone, ...): run it
//     first. Phase 1 now sums with ex2.approx (fewer instructions per logit): compare its
//     stamped time with the copy bandwidth.
//   - B = 1: target <= 8 us end to end. Check the cost of grid.sync() and of phase 2 (one
//     row merges ~130 partials per head); try kLogitUnroll 2 and a smaller grid for phase 1
//     (session.sh stages phase_probe_knobs and phase_probe_grid). GEMV_CHUNKS 8 spills.
//     merge_heads loads 4 partials per lane (predicated) before merging them: the SASS shows
//     24 loads back to back, where a plain loop waited one L2 round trip per partial (~5 per
//     lane at B = 1). Same for the GEMV (phase 3 at B <= 16): a lane issues 4 chunks of W and
//     of each pair row before its first FMA (it waited on each of its 12 chunks, B = 1,
//     H = 1536). Both unmeasured: compare the stamped phases 2-3 with the probe's L2 latency.
//     Phase 1 waits for `finished[b]` before it loads the row's logits (two L2 trips in a
//     row); if phase 1 alone is several us at B = 1, load the first logits before the flag.
//     If phase 3 still dominates at B = 1 (it streams all of W, 9.4 MB), the linear merge can
//     become two row gathers: next_in = P1[t1] + P2[second] + bias with P1 = E W[:, :H]^T and
//     P2 = E W[:, H:]^T precomputed per model (2 x V x H: ~0.9 GB for 1.5B in bf16, fp32
//     sums once rounded would need fp32 tables to match the op's rounding).
//   - B = 64 / 256: target >= 75% of copy bandwidth for 2*B*V*2 + 2*H*H*2 bytes. Phase 3
//     re-reads W ceil(B / 32) times and the gathered pairs H / 32 times from L2; if it shows,
//     stage the pair tile in shared memory (cp.async) and widen the feature tile.
//   - temperature > 0: Philox (~25 integer ops per 4 elements) and two float logs run only
//     for elements within 17 of the thread's best score (kGumbelBound), the double logs only
//     where those cannot rule the element out; check phase 1 stays memory bound at B = 256
//     with flat logits, where most elements are candidates.
//   - registers (-Xptxas -v): 128 of 128 under __launch_bounds__(256, 2), no spills (nvcc 13,
//     re-read after the double-log noise).
//   - code size: the bf16 x bf16 kernel is ~21k SASS instructions (a 342 KB cubin; ~16k before
//     the sampling path gained its float-log bound and double logs; cuobjdump from the
//     nvidia-cuda-cuobjdump wheel reads it on a CPU machine). If ncu's WarpStateStats blame
//     instruction fetch (stall_no_instruction), split the sampling and greedy paths into
//     separate kernels.
//   - noise: the tests check the host's noise for all 2^23 words against the reference, the
//     device's (CUDA's double log) only through sampled tokens; a device-side table would
//     check it for every word.
//   - capture the op in a CUDA graph and replay it (cooperative launches are capturable since
//     CUDA 12; confirm on the driver at hand).
//   - fp32, B >= 64: the 3xTF32 tensor-core merge (was a GEMV re-reading W per 8 rows: 0.55x
//     torch.compile at B = 64); check it against torch.compile and its error against fp32.
// python_tests/test_step.py reaches every path on a GPU: B <= 16 or H = 8 -> GEMV; B = 64,
// H = 64 -> tensor cores (all dtypes); raw_pair -> copy; V = 7 -> ranges spanning many rows;
// V = 151936, B = 1 -> ~130 partials per row; strided logits -> scalar prologues. The same
// tests run the kernel emulated on the CPU (device cuda_emulated) on every CI run.
#pragma once
#ifdef SUPERTHOUGHTS_CUDA_EMULATION
#include "../emulation/cuda_emulation.h"  // the same kernel on a CPU, for tests without a GPU
#else
#include <cooperative_groups.h>
#endif
#include <cuda_runtime.h>

#include <atomic>
#include <cstddef>
#include <cstdint>

#include "step_merge.cuh"
#include "step_vocab.cuh"

namespace superthoughts::cuda_step {

// Smallest phase-1 range: one element per thread; below it tiny problems only add partials.
constexpr int64_t kMinRange = kThreads;
constexpr int kMaxDevices = 64;

template <typename LogitT, typename EmbedT>
__global__ void __launch_bounds__(kThreads, 2) superthoughts_step_kernel(const __grid_constant__ StepParams p) {
  __shared__ SharedState sh;
  prefetch_first_weights<EmbedT>(p);
  reduce_vocab<LogitT>(p, sh.u.reduce);
  cooperative_groups::this_grid().sync();
  write_rows<EmbedT>(p, sh);
  if (p.merge_path != kMergeCopy) merge_projection<EmbedT>(p, sh);
}

inline bool aligned16(const void* ptr) { return (reinterpret_cast<uintptr_t>(ptr) & 15u) == 0; }

// Fills the plan fields of `p` (grid, range, seg_max, group, merge_path, embed_vec) for a
// launch of `grid` blocks from the sizes and pointers already in it, and the workspace size
// the caller must allocate on the device (no initialisation needed). Requires batch >= 1 and
// vocab >= 1. Host only, no CUDA calls: the emulator plans its small grids with it too.
template <typename EmbedT>
void plan_step_launch(StepParams& p, int grid, size_t* workspace_bytes) {
  p.grid = grid;
  const int64_t total = 2 * p.batch * p.vocab;
  p.range = (total + grid - 1) / grid;
  if (p.range < kMinRange) p.range = kMinRange;
  // A row of V elements meets at most (V - 1) / range + 2 ranges.
  p.seg_max = (p.vocab - 1) / p.range + 2;
  p.group = 1;
  while (p.group < 32 && p.group < p.seg_max) p.group *= 2;

  constexpr int kVec = kVecElems<EmbedT>;
  p.embed_vec = p.hidden % kVec == 0 && p.embed_row_stride % kVec == 0 && aligned16(p.embed) &&
                aligned16(p.next_in) && (p.weight == nullptr || aligned16(p.weight));
  if (p.weight == nullptr) {
    p.merge_path = kMergeCopy;
  } else if (p.embed_vec && p.hidden % kMmaFeatures == 0 && p.batch > kGemvMaxBatch) {
    p.merge_path = kMergeMma;
  } else {
    p.merge_path = kMergeGemv;
  }
  *workspace_bytes = static_cast<size_t>(2 * p.batch * p.seg_max) * sizeof(Acc);
}

#ifndef SUPERTHOUGHTS_CUDA_EMULATION
// Blocks of superthoughts_step_kernel<LogitT, EmbedT> that fit on the current device at once;
// cached per device (host-side queries only, no device sync).
template <typename LogitT, typename EmbedT>
cudaError_t resident_blocks(int* blocks) {
  static std::atomic<int> cache[kMaxDevices];
  int device = 0;
  cudaError_t err = cudaGetDevice(&device);
  if (err != cudaSuccess) return err;
  if (device < kMaxDevices && cache[device].load(std::memory_order_relaxed) > 0) {
    *blocks = cache[device].load(std::memory_order_relaxed);
    return cudaSuccess;
  }
  int cooperative = 0, sms = 0, per_sm = 0;
  if ((err = cudaDeviceGetAttribute(&cooperative, cudaDevAttrCooperativeLaunch, device)) != cudaSuccess) return err;
  if (!cooperative) return cudaErrorNotSupported;
  if ((err = cudaDeviceGetAttribute(&sms, cudaDevAttrMultiProcessorCount, device)) != cudaSuccess) return err;
  err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, superthoughts_step_kernel<LogitT, EmbedT>, kThreads, 0);
  if (err != cudaSuccess) return err;
  if (per_sm < 1) return cudaErrorInvalidConfiguration;
  *blocks = per_sm * sms;
  if (device < kMaxDevices) cache[device].store(*blocks, std::memory_order_relaxed);
  return cudaSuccess;
}

// plan_step_launch for a grid of every block that fits on the current device at once (the
// grid barrier needs them all resident).
template <typename LogitT, typename EmbedT>
cudaError_t plan_superthoughts_step(StepParams& p, size_t* workspace_bytes) {
  int grid = 0;
  const cudaError_t err = resident_blocks<LogitT, EmbedT>(&grid);
  if (err != cudaSuccess) return err;
  plan_step_launch<EmbedT>(p, grid, workspace_bytes);
  return cudaSuccess;
}

// One cooperative launch on `stream`; p must come from plan_superthoughts_step with
// p.workspace pointing at its workspace.
template <typename LogitT, typename EmbedT>
cudaError_t launch_superthoughts_step(const StepParams& p, cudaStream_t stream) {
  StepParams params = p;
  void* args[] = {&params};
  return cudaLaunchCooperativeKernel(reinterpret_cast<const void*>(&superthoughts_step_kernel<LogitT, EmbedT>),
                                     dim3(static_cast<unsigned>(p.grid)), dim3(kThreads), args, 0, stream);
}
#endif  // SUPERTHOUGHTS_CUDA_EMULATION

}  // namespace superthoughts::cuda_step
