// Phases 2 and 3 of the CUDA superthoughts_step: per-row outputs, and the next input
// next_in = W [E[t1]; E[second]] + bias (fp32 accumulation, rounded once to the embed dtype),
// or the raw pair when there is no weight. Plain CUDA: no torch.
#pragma once
#include <type_traits>

#include "step_mma.cuh"
#include "step_vocab.cuh"

namespace superthoughts::cuda_step {

// Batch rows per GEMV task; the GEMV path serves B <= kGemvMaxBatch (and every case the
// tensor-core path cannot take). Above it W would be re-read once per 8 rows.
constexpr int kGemvRows = 8;
constexpr int64_t kGemvMaxBatch = 16;
constexpr int kGemvChunks = SUPERTHOUGHTS_GEMV_CHUNKS;  // chunks of W in flight per lane
// Tensor-core task: kMmaM m16 tiles (features) x kMmaN n8 tiles (batch rows), the 8 warps
// splitting K. 32 x 32 keeps the accumulators and one K step of loads near 80 registers
// (2 blocks per SM) while halving the L2 re-reads of W and of the gathered pairs compared
// with a 16 x 32 or 32 x 16 tile.
constexpr int kMmaM = 2;
constexpr int kMmaN = 4;
constexpr int kMmaFeatures = 16 * kMmaM;
constexpr int kMmaRows = 8 * kMmaN;
constexpr int kMmaTileFloats = kMmaM * kMmaN * 4 * 32;  // one warp's accumulators
static_assert(kMmaRows <= kTileRows && kGemvRows <= kTileRows, "tile decisions must fit");

struct SharedState {
  union {
    Acc reduce[kWarps];                    // phase 1
    float partial_out[kWarps * kMmaTileFloats];  // tensor-core split-K reduction
  } u;
  HeadOut heads[2 * kTileRows];
  int32_t first[kTileRows], second[kTileRows];  // embedding rows of the current batch tile
};

template <typename T>
__device__ __forceinline__ T from_float(float x) {
  if constexpr (std::is_same_v<T, float>) {
    return x;
  } else if constexpr (std::is_same_v<T, __half>) {
    return __float2half_rn(x);
  } else {
    return __float2bfloat16_rn(x);
  }
}

// A GEMV chunk of kVec ? kVecElems<T> : 1 elements: raw load, then conversion to fp32. Split
// so that a lane can issue all its loads before it waits on the first.
template <typename T, bool kVec>
using Chunk = std::conditional_t<kVec, uint4, T>;

template <typename T, bool kVec>
__device__ __forceinline__ Chunk<T, kVec> load_chunk(const T* ptr) {
  if constexpr (kVec) {
    return __ldg(reinterpret_cast<const uint4*>(ptr));
  } else {
    return ptr[0];
  }
}

// `valid` false gives zeros: the chunk was loaded from a stand-in address past the end of K.
template <typename T, bool kVec, int N>
__device__ __forceinline__ void unpack_chunk(const Chunk<T, kVec>& raw, bool valid, float (&out)[N]) {
  if constexpr (kVec) {
    unpack16<T>(raw, out);
  } else {
    out[0] = to_float(raw);
  }
#pragma unroll
  for (int j = 0; j < N; ++j) out[j] = valid ? out[j] : 0.0f;
}

template <typename T>
__device__ __forceinline__ float bias_at(const StepParams& p, int64_t i) {
  return p.bias ? to_float(static_cast<const T*>(p.bias)[i]) : 0.0f;
}

// Phase 2: rows [j * R, (j + 1) * R) with j = grid - 1 - blockIdx.x, R = ceil(B / grid):
// tokens, n_new, conf, finished, and the raw pair when there is no merge weight. Counted from
// the last block because phase 3 deals its tasks from the first: at small B the rows go to
// blocks without a merge task (B = 1, H = 1536: 192 tasks, 264 blocks), so phase 2 runs beside
// phase 3 instead of in front of block 0's share of it.
template <typename T>
__device__ void write_rows(const StepParams& p, SharedState& sh) {
  const int64_t per_block = (p.batch + gridDim.x - 1) / gridDim.x;
  const int64_t begin = static_cast<int64_t>(gridDim.x - 1 - blockIdx.x) * per_block;
  const int64_t end = min64(p.batch, begin + per_block);
  const int tid = threadIdx.x, warp = tid / 32, lane = tid % 32;
  for (int64_t r0 = begin; r0 < end; r0 += kTileRows) {
    const int n = static_cast<int>(min64(kTileRows, end - r0));
    merge_heads(p, r0, n, sh.heads);
    __syncthreads();
    if (tid < n) {
      const int64_t b = r0 + tid;
      const RowDecision d = decide(p, sh.heads[2 * tid], sh.heads[2 * tid + 1]);
      p.tokens[2 * b] = d.t1;
      p.tokens[2 * b + 1] = d.t2;
      p.n_new[b] = d.n_new;
      p.conf[2 * b] = d.conf_main;
      p.conf[2 * b + 1] = d.conf_mtp;
      p.finished[b] = d.finished ? 1 : 0;  // nobody reads `finished` after the grid barrier
    }
    if (p.merge_path == kMergeCopy) {
      for (int j = warp; j < n; j += kWarps) {
        const RowDecision d = decide(p, sh.heads[2 * j], sh.heads[2 * j + 1]);
        const T* embed = static_cast<const T*>(p.embed);
        const T* halves[2] = {embed + d.t1 * p.embed_row_stride, embed + d.second * p.embed_row_stride};
        T* out = static_cast<T*>(p.next_in) + (r0 + j) * 2 * p.hidden;
        for (int h = 0; h < 2; ++h) {
          if (p.embed_vec) {
            const auto* src = reinterpret_cast<const uint4*>(halves[h]);
            auto* dst = reinterpret_cast<uint4*>(out + h * p.hidden);
            for (int64_t k = lane; k < p.hidden / kVecElems<T>; k += 32) dst[k] = __ldg(src + k);
          } else {
            for (int64_t k = lane; k < p.hidden; k += 32) out[h * p.hidden + k] = halves[h][k];
          }
        }
      }
    }
    __syncthreads();
  }
}

// Decisions of batch rows [b0, b0 + n) into sh.first / sh.second. Block-uniform.
__device__ __forceinline__ void load_tile(const StepParams& p, int64_t b0, int n, SharedState& sh) {
  __syncthreads();  // the previous tile's readers are done
  merge_heads(p, b0, n, sh.heads);
  __syncthreads();
  const int tid = threadIdx.x;
  if (tid < n) {
    const RowDecision d = decide(p, sh.heads[2 * tid], sh.heads[2 * tid + 1]);
    sh.first[tid] = d.t1;
    sh.second[tid] = d.second;
  }
  __syncthreads();
}

// One warp: out[b0 + b, i] for the nb <= kGemvRows rows of the tile, lanes striding over K in
// 16-byte chunks (kVec) or elements. The gathered embedding rows are shared by the block's
// 8 warps, so after the first warp they come from L1. A lane issues kGemvChunks loads of W,
// then of each pair row, before it waits on any: a plain strided loop waited one L2 round
// trip per chunk, and at B = 1 (12 chunks per lane for H = 1536) that chain is phase 3's
// critical path. Chunks past the end of K load from k0 (always in range) and count as zeros,
// so the loads need no branches.
template <typename T, bool kVec>
__device__ void gemv_feature(const StepParams& p, int64_t i, int64_t b0, int nb, const SharedState& sh) {
  constexpr int kV = kVec ? kVecElems<T> : 1;
  constexpr int64_t kStride = 32 * kV;
  const int lane = threadIdx.x % 32;
  const int64_t hidden = p.hidden, k_total = 2 * hidden;
  const T* wrow = static_cast<const T*>(p.weight) + i * k_total;
  const T* embed = static_cast<const T*>(p.embed);
  float acc[kGemvRows] = {};
  for (int64_t k0 = int64_t{lane} * kV; k0 < k_total; k0 += kGemvChunks * kStride) {
    int64_t k[kGemvChunks];
    bool valid[kGemvChunks];
    Chunk<T, kVec> w_raw[kGemvChunks];
#pragma unroll
    for (int c = 0; c < kGemvChunks; ++c) {
      valid[c] = k0 + c * kStride < k_total;
      k[c] = valid[c] ? k0 + c * kStride : k0;
      w_raw[c] = load_chunk<T, kVec>(wrow + k[c]);
    }
#pragma unroll
    for (int b = 0; b < kGemvRows; ++b) {
      if (b >= nb) break;  // block-uniform
      // Offsets of the pair's rows such that + k lands on column k of [E[t1]; E[second]].
      const int64_t lower = sh.first[b] * p.embed_row_stride;
      const int64_t upper = sh.second[b] * p.embed_row_stride - hidden;
      Chunk<T, kVec> x_raw[kGemvChunks];
#pragma unroll  // kV divides H on the vector path: no chunk straddles the two halves
      for (int c = 0; c < kGemvChunks; ++c) x_raw[c] = load_chunk<T, kVec>(embed + (k[c] < hidden ? lower : upper) + k[c]);
      // Same order of products as a plain loop over k: chunk by chunk, element by element.
#pragma unroll
      for (int c = 0; c < kGemvChunks; ++c) {
        float w[kV], x[kV];
        unpack_chunk<T, kVec>(w_raw[c], valid[c], w);
        unpack_chunk<T, kVec>(x_raw[c], valid[c], x);
#pragma unroll
        for (int j = 0; j < kV; ++j) acc[b] = fmaf(w[j], x[j], acc[b]);
      }
    }
  }
#pragma unroll
  for (int b = 0; b < kGemvRows; ++b) {
    for (int off = 16; off > 0; off /= 2) acc[b] += __shfl_xor_sync(0xffffffffu, acc[b], off);
  }
  const float bias = bias_at<T>(p, i);
  T* out = static_cast<T*>(p.next_in);
#pragma unroll
  for (int b = 0; b < kGemvRows; ++b) {
    if (b == lane && b < nb) out[(b0 + b) * hidden + i] = from_float<T>(acc[b] + bias);
  }
}

template <typename T>
__device__ void merge_gemv(const StepParams& p, SharedState& sh) {
  const int64_t ftiles = (p.hidden + kWarps - 1) / kWarps;
  const int64_t tasks = ftiles * ((p.batch + kGemvRows - 1) / kGemvRows);
  int64_t loaded = -1;
  // Batch-tile-major: blocks running at the same time share a tile, so its gathered
  // embedding rows stay hot in L2 while different blocks stream different rows of W.
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {
    const int64_t bt = task / ftiles, i = (task - bt * ftiles) * kWarps + threadIdx.x / 32;
    const int64_t b0 = bt * kGemvRows;
    const int nb = static_cast<int>(min64(kGemvRows, p.batch - b0));
    if (bt != loaded) {
      load_tile(p, b0, nb, sh);
      loaded = bt;
    }
    if (i < p.hidden) {
      if (p.embed_vec) {
        gemv_feature<T, true>(p, i, b0, nb, sh);
      } else {
        gemv_feature<T, false>(p, i, b0, nb, sh);
      }
    }
  }
}

// One block: features [i0, i0 + 32) x batch rows [b0, b0 + nb). Warp w takes the K slices
// w, w + 8, ... of 4 * kVec columns; lane (g, t) loads 16 bytes at column kc + kVec * t of W
// rows i0 + g (+8) and of its pair rows, multiplied by mma_chunk (step_mma.cuh), and the
// block sums the warps' partial tiles in shared memory. Requires H % 32 == 0 and 16-byte
// aligned rows.
template <typename T>
__device__ void mma_task(const StepParams& p, int64_t i0, int64_t b0, int nb, SharedState& sh) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32, g = lane / 4, t = lane % 4;
  const int64_t hidden = p.hidden, k_total = 2 * hidden;
  const T* weight = static_cast<const T*>(p.weight);
  const T* embed = static_cast<const T*>(p.embed);
  float acc[kMmaM][kMmaN][4] = {};
  constexpr int kVec = kVecElems<T>, kSlice = 4 * kVec;  // H % 32 == 0: no slice straddles H
  for (int64_t kc = int64_t{warp} * kSlice; kc < k_total; kc += kWarps * kSlice) {
    const bool upper = kc >= hidden;
    const int64_t k_in = (upper ? kc - hidden : kc) + kVec * t;
    uint4 a_lo[kMmaM], a_hi[kMmaM], b[kMmaN];
#pragma unroll
    for (int m = 0; m < kMmaM; ++m) {
      const T* row = weight + (i0 + 16 * m + g) * k_total + kc + kVec * t;
      a_lo[m] = __ldg(reinterpret_cast<const uint4*>(row));
      a_hi[m] = __ldg(reinterpret_cast<const uint4*>(row + 8 * k_total));
    }
#pragma unroll
    for (int n = 0; n < kMmaN; ++n) {
      const int r = 8 * n + g;
      b[n] = make_uint4(0u, 0u, 0u, 0u);
      if (r < nb) {
        const int32_t e = upper ? sh.second[r] : sh.first[r];
        b[n] = __ldg(reinterpret_cast<const uint4*>(embed + e * p.embed_row_stride + k_in));
      }
    }
#pragma unroll
    for (int n = 0; n < kMmaN; ++n) {
      if (8 * n >= nb) continue;  // warp-uniform: the whole n tile is past the batch
#pragma unroll
      for (int m = 0; m < kMmaM; ++m) mma_chunk<T>(acc[m][n], a_lo[m], a_hi[m], b[n]);
    }
  }
  float* red = sh.u.partial_out;
#pragma unroll
  for (int m = 0; m < kMmaM; ++m) {
#pragma unroll
    for (int n = 0; n < kMmaN; ++n) {
#pragma unroll
      for (int reg = 0; reg < 4; ++reg) red[warp * kMmaTileFloats + ((m * kMmaN + n) * 4 + reg) * 32 + lane] = acc[m][n][reg];
    }
  }
  __syncthreads();
  T* out = static_cast<T*>(p.next_in);
  for (int f = static_cast<int>(threadIdx.x); f < kMmaTileFloats; f += kThreads) {
    float sum = 0.0f;
#pragma unroll
    for (int w = 0; w < kWarps; ++w) sum += red[w * kMmaTileFloats + f];
    // Accumulator layout of m16n8: reg 0/1 -> row g, reg 2/3 -> row g + 8; column 2t + reg % 2.
    const int fl = f % 32, reg = (f / 32) % 4, n = (f / 128) % kMmaN, m = f / (128 * kMmaN);
    const int64_t i = i0 + 16 * m + fl / 4 + (reg >= 2 ? 8 : 0);
    const int r = 8 * n + 2 * (fl % 4) + (reg & 1);
    if (r < nb) out[(b0 + r) * hidden + i] = from_float<T>(sum + bias_at<T>(p, i));
  }
  __syncthreads();  // partial_out is reused by the next task
}

template <typename T>
__device__ void merge_mma(const StepParams& p, SharedState& sh) {
  const int64_t mtiles = p.hidden / kMmaFeatures;
  const int64_t tasks = mtiles * ((p.batch + kMmaRows - 1) / kMmaRows);
  int64_t loaded = -1;
  for (int64_t task = blockIdx.x; task < tasks; task += gridDim.x) {  // batch-tile-major
    const int64_t bt = task / mtiles, i0 = (task - bt * mtiles) * kMmaFeatures;
    const int64_t b0 = bt * kMmaRows;
    const int nb = static_cast<int>(min64(kMmaRows, p.batch - b0));
    if (bt != loaded) {
      load_tile(p, b0, nb, sh);
      loaded = bt;
    }
    mma_task<T>(p, i0, b0, nb, sh);
  }
}

// Phase 3 dispatch; the tensor-core path exists on sm_80+.
template <typename T>
__device__ void merge_projection(const StepParams& p, SharedState& sh) {
#if defined(SUPERTHOUGHTS_CUDA_EMULATION) || (defined(__CUDA_ARCH__) && __CUDA_ARCH__ >= 800)
  if (p.merge_path == kMergeMma) {
    merge_mma<T>(p, sh);
    return;
  }
#endif
  merge_gemv<T>(p, sh);
}

// Issued before phase 1 so that the rows of W this block multiplies first stream into L2
// while the logits are reduced: at B = 1 the weight (9.4 MB for H = 1536) is most of the
// bytes, and this takes it off the critical path after the grid barrier.
template <typename T>
__device__ void prefetch_first_weights(const StepParams& p) {
  if (p.merge_path == kMergeCopy) return;
  if (p.hidden == 0) return;
  int64_t first_row, rows, tasks;
  if (p.merge_path == kMergeMma) {
    const int64_t mtiles = p.hidden / kMmaFeatures;
    tasks = mtiles * ((p.batch + kMmaRows - 1) / kMmaRows);
    first_row = (blockIdx.x % mtiles) * kMmaFeatures;
    rows = kMmaFeatures;
  } else {
    const int64_t ftiles = (p.hidden + kWarps - 1) / kWarps;
    tasks = ftiles * ((p.batch + kGemvRows - 1) / kGemvRows);
    first_row = (blockIdx.x % ftiles) * kWarps;
    rows = min64(kWarps, p.hidden - first_row);
  }
  if (blockIdx.x >= tasks) return;  // this block gets no merge task
  const char* base = reinterpret_cast<const char*>(static_cast<const T*>(p.weight) + first_row * 2 * p.hidden);
  const int64_t bytes = rows * 2 * p.hidden * static_cast<int64_t>(sizeof(T));
  for (int64_t off = int64_t{threadIdx.x} * 128; off < bytes; off += int64_t{kThreads} * 128) {
#ifndef SUPERTHOUGHTS_CUDA_EMULATION
    asm volatile("prefetch.global.L2 [%0];" ::"l"(base + off));
#endif
  }
}

}  // namespace superthoughts::cuda_step
