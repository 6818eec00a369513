// Vocab reduction and per-row decision of the CUDA superthoughts_step (see step.cuh for the
// launch structure, superthoughts_ext/reference.py for the semantics). Plain CUDA: no torch.
#pragma once
#include <cuda_bf16.h>
#include <cuda_fp16.h>
#include <cuda_runtime.h>

#include <cstdint>

#include "confidence.h"
#include "philox.h"

namespace superthoughts::cuda_step {

constexpr int kThreads = 256;
constexpr int kWarps = kThreads / 32;
// Rows whose decisions one block holds in shared memory at a time (the mma batch tile).
constexpr int kTileRows = 32;
// Tuning knobs. Each is a macro so that benchmarks/gpu/phase_probe.py --define can build and
// time other values without an edit; none of them changes a result bit (each thread still
// meets its elements, chunks and partials in the same order).
#ifndef SUPERTHOUGHTS_LOGIT_UNROLL
#define SUPERTHOUGHTS_LOGIT_UNROLL 4
#endif
#ifndef SUPERTHOUGHTS_PARTIAL_BATCH
#define SUPERTHOUGHTS_PARTIAL_BATCH 4
#endif
#ifndef SUPERTHOUGHTS_GEMV_CHUNKS
#define SUPERTHOUGHTS_GEMV_CHUNKS 4
#endif

// Independent 16-byte logit loads in flight per thread: with 2 blocks of 256 threads per SM
// that is 32 KiB per SM, above the ~20 KiB that Little's law asks for at 3 TB/s on H100.
constexpr int kLogitUnroll = SUPERTHOUGHTS_LOGIT_UNROLL;
// Partials a lane of merge_heads loads before it merges them (one L2 round trip per batch).
constexpr int kPartialBatch = SUPERTHOUGHTS_PARTIAL_BATCH;
constexpr int32_t kNone = 0x7fffffff;  // "no index yet": loses every lowest-index tie
constexpr float kNegInf = -__builtin_huge_valf();

// Everything the kernel reads: raw pointers, sizes in elements, and the launch plan.
struct StepParams {
  const void* logits;  // [2, B, V], vocab dim contiguous
  int64_t logits_head_stride, logits_row_stride;
  const void* embed;  // [V, H], hidden dim contiguous
  int64_t embed_row_stride;
  const void* weight;  // [H, 2H] contiguous, nullptr: next_in is the raw pair
  const void* bias;    // [H], nullptr when absent
  uint8_t* finished;   // [B] bools as bytes (nonzero: finished), read before the grid barrier, written after it
  int64_t batch, vocab, hidden;
  int64_t pad_id, eos_id;
  float threshold, threshold_main, temperature;
  bool sample;
  uint64_t seed, offset;
  const int64_t* row_seeds;  // [B] per-row Philox keys, nullptr: `seed` for every row (row_noise_key)
  int64_t* tokens;  // [B, 2]
  int32_t* n_new;   // [B]
  float* conf;      // [B, 2]
  void* next_in;    // [B, H] or [B, 2H], contiguous
  void* workspace;  // partials [2B, seg_max]
  // Filled by plan_superthoughts_step.
  int grid;
  int64_t range;    // flattened (head, row, vocab) elements reduced by one block
  int64_t seg_max;  // partial slots per (head, row)
  int group;        // lanes that merge the partials of one (head, row)
  int merge_path;   // MergePath
  bool embed_vec;   // embed, weight and next_in rows allow 16-byte accesses
};

enum MergePath : int { kMergeCopy = 0, kMergeGemv = 1, kMergeMma = 2 };

// Partial result of one block over one piece of one (head, row).
struct Acc {
  float max;            // NaN counted as -inf
  int32_t ones;         // elements equal to max (each adds exactly 1 to the softmax sum); an
                        // integer: a float count stops being exact past 2^24 ties
  float rest;           // sum of exp(x - max) over the other elements (confidence.h)
  float best;           // best Gumbel score (sampling only)
  int32_t argmax;       // lowest index attaining max
  int32_t best_index;   // lowest index attaining best
  int32_t finished;     // the row's finished flag as read before the grid barrier
};

__device__ __forceinline__ int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }

__device__ __forceinline__ Acc acc_empty() { return Acc{kNegInf, 0, 0.0f, kNegInf, kNone, kNone, 0}; }

// Adds a's softmax sum, rescaled to the max m >= a.max, to (ones, rest). Below m, a's maxima
// join the rest; if even they fall below the smallest term, every term of a does.
__device__ __forceinline__ void add_sum_at(const Acc& a, float m, int32_t& ones, float& rest) {
  if (a.max == m) {
    ones += a.ones;
    rest += a.rest;
  } else if (a.max > kNegInf) {  // an empty side contributes nothing (and -inf - -inf would be NaN)
    rest += (a.rest + static_cast<float>(a.ones)) * flush_tiny(expf(a.max - m));
  }
}

// The online-softmax merge; on equal maxima (or scores) the lower index wins, as torch.argmax.
__device__ __forceinline__ void acc_merge(Acc& a, const Acc& b) {
  const float m = fmaxf(a.max, b.max);
  int32_t ones = 0;
  float rest = 0.0f;
  if (m > kNegInf) {
    add_sum_at(a, m, ones, rest);
    add_sum_at(b, m, ones, rest);
  }
  a.argmax = a.max > b.max ? a.argmax : (b.max > a.max ? b.argmax : min(a.argmax, b.argmax));
  a.max = m;
  a.ones = ones;
  a.rest = rest;
  if (b.best > a.best || (b.best == a.best && b.best_index < a.best_index)) {
    a.best = b.best;
    a.best_index = b.best_index;
  }
  a.finished |= b.finished;
}

// Butterfly over aligned groups of `width` lanes (a power of two <= 32); every lane of the
// warp must call it. Afterwards every lane holds its group's result.
__device__ __forceinline__ Acc group_reduce(Acc a, int width) {
  for (int off = width / 2; off > 0; off /= 2) {
    Acc b;
    b.max = __shfl_xor_sync(0xffffffffu, a.max, off);
    b.ones = __shfl_xor_sync(0xffffffffu, a.ones, off);
    b.rest = __shfl_xor_sync(0xffffffffu, a.rest, off);
    b.best = __shfl_xor_sync(0xffffffffu, a.best, off);
    b.argmax = __shfl_xor_sync(0xffffffffu, a.argmax, off);
    b.best_index = __shfl_xor_sync(0xffffffffu, a.best_index, off);
    b.finished = __shfl_xor_sync(0xffffffffu, a.finished, off);
    acc_merge(a, b);
  }
  return a;
}

// Result valid in thread 0. `scratch` holds kWarps entries.
__device__ __forceinline__ Acc block_reduce(Acc a, Acc* scratch) {
  const int warp = threadIdx.x / 32, lane = threadIdx.x % 32;
  a = group_reduce(a, 32);
  if (lane == 0) scratch[warp] = a;
  __syncthreads();
  if (warp == 0) {
    a = lane < kWarps ? scratch[lane] : acc_empty();
    a = group_reduce(a, 32);
  }
  __syncthreads();
  return a;
}

// ---- element access ----------------------------------------------------------------------

template <typename T>
constexpr int kVecElems = 16 / static_cast<int>(sizeof(T));

__device__ __forceinline__ float bits_to_float(uint32_t bits, float*) { return __uint_as_float(bits); }
__device__ __forceinline__ float bits_to_float(uint32_t bits, __half*) {
  return __half2float(__ushort_as_half(static_cast<unsigned short>(bits)));
}
__device__ __forceinline__ float bits_to_float(uint32_t bits, __nv_bfloat16*) {
  return __uint_as_float(bits << 16);  // exact: bf16 is the top half of a float
}

__device__ __forceinline__ float to_float(float x) { return x; }
__device__ __forceinline__ float to_float(__half x) { return __half2float(x); }
__device__ __forceinline__ float to_float(__nv_bfloat16 x) { return __bfloat162float(x); }

// Eight (bf16/half) or four (float) values from one 16-byte word.
template <typename T>
__device__ __forceinline__ void unpack16(const uint4& raw, float (&out)[kVecElems<T>]) {
  const uint32_t words[4] = {raw.x, raw.y, raw.z, raw.w};
#pragma unroll
  for (int i = 0; i < 4; ++i) {
    if constexpr (sizeof(T) == 4) {
      out[i] = __uint_as_float(words[i]);
    } else {
      out[2 * i] = bits_to_float(words[i] & 0xffffu, static_cast<T*>(nullptr));
      out[2 * i + 1] = bits_to_float(words[i] >> 16, static_cast<T*>(nullptr));
    }
  }
}

// Streaming (evict-first) scalar load: logits are read exactly once.
template <typename T>
__device__ __forceinline__ float load_logit(const T* p) {
  if constexpr (sizeof(T) == 4) {
    return __ldcs(reinterpret_cast<const float*>(p));
  } else {
    return bits_to_float(__ldcs(reinterpret_cast<const unsigned short*>(p)), static_cast<T*>(nullptr));
  }
}

__device__ __forceinline__ float finite_or_neg_inf_nan(float x) { return x != x ? kNegInf : x; }

constexpr float kLog2e = 1.4426950408889634f;

// 2^x on the special-function unit (relative error ~2^-22, results below 2^-126 flushed to
// 0, as confidence.h's rule asks): one instruction where the accurate expf takes several,
// inside the loop that touches every logit. Only the softmax sum uses it, and that only feeds
// conf (the reference's is matched to 1e-5); tokens and the Gumbel scores never go through it.
__device__ __forceinline__ float fast_exp2(float x) {
#if defined(SUPERTHOUGHTS_CUDA_EMULATION)
  return flush_tiny(exp2f(x));
#else
  float y;
  asm("ex2.approx.ftz.f32 %0, %1;" : "=f"(y) : "f"(x));
  return y;
#endif
}

// ---- one thread's share of a piece -------------------------------------------------------

struct NoiseCtx {
  uint64_t seed;  // the row's Philox key and stream row (row_noise_key)
  int64_t row;
  int head;
  int64_t block = -1;  // Philox block (v >> 2) whose words are cached
  uint32_t w0 = 0, w1 = 0, w2 = 0, w3 = 0;
};

template <bool kSample, int N>
__device__ __forceinline__ void consume(Acc& acc, float (&x)[N], int64_t v0, const StepParams& p,
                                        NoiseCtx& noise) {
  float m = kNegInf;
#pragma unroll
  for (int i = 0; i < N; ++i) {
    x[i] = finite_or_neg_inf_nan(x[i]);
    m = fmaxf(m, x[i]);
  }
  if (m > acc.max) {  // the old maxima join the rest
    acc.rest = acc.max > kNegInf ? (acc.rest + static_cast<float>(acc.ones)) * flush_tiny(expf(acc.max - m)) : 0.0f;
    acc.ones = 0;
    acc.max = m;
    acc.argmax = kNone;
  }
  if (m < acc.max) {  // most chunks: no element equals the running max, all are terms
#pragma unroll
    for (int i = 0; i < N; ++i) acc.rest += fast_exp2((x[i] - acc.max) * kLog2e);
  } else if (acc.max > kNegInf) {
    // The chunk holds the running max: its maxima are counted, not summed, and, as elements
    // arrive in increasing index, it may hold the max's lowest index.
#pragma unroll
    for (int i = 0; i < N; ++i) {
      if (x[i] == m) {
        acc.ones += 1;
        acc.argmax = min(acc.argmax, static_cast<int32_t>(v0 + i));
      } else {
        acc.rest += fast_exp2((x[i] - m) * kLog2e);
      }
    }
  }
  if constexpr (kSample) {
#pragma unroll
    for (int i = 0; i < N; ++i) {
      // A -inf scaled logit (a masked logit, or x / T overflowing) never wins a draw: its
      // score stays -inf whatever the noise.
      const float scaled = x[i] / p.temperature;
      if (!(scaled > kNegInf) || scaled + kGumbelBound < acc.best) continue;
      const int64_t v = v0 + i;
      if ((v >> 2) != noise.block) {
        noise.block = v >> 2;
        const PhiloxWords w = step_noise_words(noise.seed, p.offset, noise.row, noise.head, noise.block);
        noise.w0 = w.w[0];
        noise.w1 = w.w[1];
        noise.w2 = w.w[2];
        noise.w3 = w.w[3];
      }
      const int lane = static_cast<int>(v & 3);
      const uint32_t word = lane == 0 ? noise.w0 : lane == 1 ? noise.w1 : lane == 2 ? noise.w2 : noise.w3;
      if (scaled + gumbel_upper_bound(word) < acc.best) continue;
      const float score = scaled + gumbel_from_word(word);
      if (score > acc.best || (score == acc.best && v < acc.best_index)) {
        acc.best = score;
        acc.best_index = static_cast<int32_t>(v);
      }
    }
  }
}

// Reduces logits[v0, v1) of one (head, row) with the whole block: a scalar prologue up to the
// first 16-byte boundary, 16-byte streaming loads (kLogitUnroll in flight), a scalar tail.
// Every thread visits its elements in increasing v, so strict comparisons keep lowest indices.
template <bool kSample, typename T>
__device__ Acc reduce_piece(const T* row, int64_t v0, int64_t v1, const StepParams& p,
                            NoiseCtx noise) {
  constexpr int kVec = kVecElems<T>;
  Acc acc = acc_empty();
  const T* start = row + v0;
  const int64_t len = v1 - v0;
  const auto misalign = static_cast<int64_t>(reinterpret_cast<uintptr_t>(start) & 15u);
  const int64_t head = min64(len, ((16 - misalign) & 15) / static_cast<int64_t>(sizeof(T)));
  const int tid = threadIdx.x;
  if (tid < head) {
    float x[1] = {load_logit(start + tid)};
    consume<kSample>(acc, x, v0 + tid, p, noise);
  }
  const int64_t nvec = (len - head) / kVec;
  const uint4* body = reinterpret_cast<const uint4*>(start + head);
  for (int64_t base = tid; base < nvec; base += int64_t{kThreads} * kLogitUnroll) {
    uint4 raw[kLogitUnroll];
#pragma unroll
    for (int u = 0; u < kLogitUnroll; ++u) {
      const int64_t idx = base + int64_t{u} * kThreads;
      if (idx < nvec) raw[u] = __ldcs(body + idx);
    }
#pragma unroll
    for (int u = 0; u < kLogitUnroll; ++u) {
      const int64_t idx = base + int64_t{u} * kThreads;
      if (idx < nvec) {
        float x[kVec];
        unpack16<T>(raw[u], x);
        consume<kSample>(acc, x, v0 + head + idx * kVec, p, noise);
      }
    }
  }
  for (int64_t j = head + nvec * kVec + tid; j < len; j += kThreads) {
    float x[1] = {load_logit(start + j)};
    consume<kSample>(acc, x, v0 + j, p, noise);
  }
  return acc;
}

// Phase 1. Block j reduces the flattened elements [j * range, (j + 1) * range) of the logits
// seen as [2B * V] (head-major), so every block streams the same number of bytes whatever B
// is; the pieces it meets (one per (head, row) its range touches) become partials in slot
// (head * B + row, j - first block of that row).
template <typename T>
__device__ void reduce_vocab(const StepParams& p, Acc* scratch) {
  const int64_t total = 2 * p.batch * p.vocab;
  const int64_t begin = static_cast<int64_t>(blockIdx.x) * p.range;
  const int64_t end = min64(total, begin + p.range);
  Acc* partials = static_cast<Acc*>(p.workspace);
  for (int64_t f = begin; f < end;) {
    const int64_t r = f / p.vocab, v0 = f - r * p.vocab;
    const int64_t v1 = min64(p.vocab, v0 + (end - f));
    const int head = static_cast<int>(r / p.batch);
    const int64_t b = r - head * p.batch;
    const bool done = p.finished[b] != 0;
    Acc acc = acc_empty();
    if (!done) {  // uniform across the block: every thread reads the same flag
      const T* row = static_cast<const T*>(p.logits) + head * p.logits_head_stride + b * p.logits_row_stride;
      if (p.sample) {  // greedy steps draw no noise: they never load a row seed
        const NoiseKey key = row_noise_key(p.seed, p.row_seeds, b);
        acc = reduce_piece<true>(row, v0, v1, p, NoiseCtx{key.seed, key.row, head});
      } else {
        acc = reduce_piece<false>(row, v0, v1, p, NoiseCtx{p.seed, b, head});
      }
      acc = block_reduce(acc, scratch);
    }
    if (threadIdx.x == 0) {
      acc.finished = done;
      partials[r * p.seg_max + (blockIdx.x - (r * p.vocab) / p.range)] = acc;
    }
    f += v1 - v0;
  }
}

// ---- phase 2: decisions ------------------------------------------------------------------

// Partials were written by other blocks before the grid barrier: read them through L2 (.cg),
// never through a possibly stale L1 line or the read-only path.
__device__ __forceinline__ Acc load_partial(const Acc* a) {
  return Acc{__ldcg(&a->max), __ldcg(&a->ones), __ldcg(&a->rest), __ldcg(&a->best),
             __ldcg(&a->argmax), __ldcg(&a->best_index), __ldcg(&a->finished)};
}

struct HeadOut {
  int32_t token;
  float conf;
  int32_t reaches;   // the confidence reaches the head's threshold (confidence.h)
  int32_t finished;
};

// Merges the partials of rows [r0, r0 + n), n <= kTileRows, both heads, into out[2 * i + head].
// `group` lanes per (row, head): wide enough that one pass of loads covers a row's partials.
// The caller synchronises the block before reading `out`.
__device__ void merge_heads(const StepParams& p, int64_t r0, int n, HeadOut* out) {
  const Acc* partials = static_cast<const Acc*>(p.workspace);
  const int per_pass = kThreads / p.group;
  for (int item0 = 0; item0 < 2 * n; item0 += per_pass) {
    const int item = item0 + static_cast<int>(threadIdx.x) / p.group;
    const int sub = static_cast<int>(threadIdx.x) % p.group;
    Acc acc = acc_empty();
    if (item < 2 * n) {
      const int64_t r = (item & 1) * p.batch + r0 + item / 2;
      const int64_t first = (r * p.vocab) / p.range, last = (r * p.vocab + p.vocab - 1) / p.range;
      const Acc* row = partials + r * p.seg_max;
      // kPartialBatch predicated loads are issued before any merge, so a lane waits one L2
      // round trip per batch rather than one per partial (B = 1: ~5 partials per lane).
      for (int64_t s0 = sub; s0 <= last - first; s0 += int64_t{kPartialBatch} * p.group) {
        Acc batch[kPartialBatch];
#pragma unroll
        for (int j = 0; j < kPartialBatch; ++j) {
          const int64_t s = s0 + int64_t{j} * p.group;
          batch[j] = s <= last - first ? load_partial(row + s) : acc_empty();
        }
#pragma unroll
        for (int j = 0; j < kPartialBatch; ++j) acc_merge(acc, batch[j]);
      }
    }
    acc = group_reduce(acc, p.group);
    if (item < 2 * n && sub == 0) {
      const bool valid = isfinite(acc.max);
      int32_t token = static_cast<int32_t>(p.pad_id);
      // With sampling a valid row whose every score is -inf (x / T overflowed) takes index
      // 0, as torch.argmax does on an all -inf row.
      if (valid) token = p.sample ? (acc.best_index == kNone ? 0 : acc.best_index) : acc.argmax;
      const float threshold = (item & 1) ? p.threshold : p.threshold_main;
      const bool reaches = valid ? reaches_threshold(acc.ones, acc.rest, threshold) : empty_head_reaches(threshold);
      out[item] = HeadOut{token, valid ? confidence_of(acc.ones, acc.rest) : 0.0f, reaches, acc.finished};
    }
  }
}

struct RowDecision {
  int32_t t1, t2;    // t2 = -1 when the MTP token is not accepted
  int32_t second;    // embedding row of the second slot: t2 if accepted, else pad
  int32_t n_new;
  float conf_main, conf_mtp;
  bool finished;     // after this step
};

__device__ __forceinline__ RowDecision decide(const StepParams& p, const HeadOut& main, const HeadOut& mtp) {
  const auto pad = static_cast<int32_t>(p.pad_id);
  if (main.finished) return RowDecision{pad, -1, pad, 0, 0.0f, 0.0f, true};
  const bool accept = mtp.reaches && main.reaches && main.token != p.eos_id;
  const bool ends = main.token == p.eos_id || (accept && mtp.token == p.eos_id);
  return RowDecision{main.token, accept ? mtp.token : -1, accept ? mtp.token : pad,
                     accept ? 2 : 1, main.conf, mtp.conf, ends};
}

}  // namespace superthoughts::cuda_step
