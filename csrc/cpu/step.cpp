// CPU kernel of superthoughts_step (semantics: superthoughts_ext/reference.py).
// Phase 1 reduces every (head, row, vocab chunk) in parallel to a partial (max, argmax,
// softmax sum split into the max's own 1s and the rest, best Gumbel score); phase 2 merges
// the partials of each row in chunk order and applies the confidence rule; phase 3 gathers
// the two embeddings and applies the merge projection, parallel over output features so each
// weight row is read once per step (fp32 with more than 16 rows: one BLAS GEMM).
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/Parallel.h>
#include <torch/library.h>

#include <cmath>
#include <type_traits>
#include <limits>
#include <string>
#include <vector>

#include "../kernels/confidence.h"
#include "../kernels/philox.h"
#include "../step_common.h"
#include "vec_math.h"

namespace superthoughts {
namespace {

// Big enough to amortise the per-task overhead, small enough that a chunk of floats stays
// in L2 between the max pass and the exp pass (one pass over the logits in memory).
constexpr int64_t kVocabChunk = 16384;
// Reduction-dim tile of the merge projection: 8 batch rows x 1536 floats = 48 KiB stay in L1/L2
// while this thread's weight rows stream past.
constexpr int64_t kMergeTile = 1536;
// Above this many rows an fp32 merge goes through the BLAS GEMM (see library_gemm_is_faster).
constexpr int64_t kBlasMinBatch = 16;
constexpr float kNegInf = -std::numeric_limits<float>::infinity();

// The op's three floating types (check_step_inputs refuses others), so no double kernels.
#define SUPERTHOUGHTS_STEP_TYPES(...)                                             \
  AT_DISPATCH_CASE(at::kFloat, __VA_ARGS__) AT_DISPATCH_CASE(at::kBFloat16, __VA_ARGS__) \
  AT_DISPATCH_CASE(at::kHalf, __VA_ARGS__)

struct Partial {
  float max = kNegInf;
  int64_t argmax = -1;
  float ones = 0.0f;  // elements equal to max: each adds exactly exp(0) = 1 to the softmax sum
  float rest = 0.0f;  // sum of exp(x - max) over the other elements (see confidence.h)
  float best = kNegInf;
  int64_t best_index = -1;
};

struct SampleParams {
  bool enabled;
  float temperature;
  uint64_t seed;
  uint64_t offset;
  const int64_t* row_seeds;  // [B] per-row keys, nullptr: `seed` for every row (row_noise_key)
};

// Copies logits [begin, end) of one row into buf as float32 with NaN -> -inf; returns the max.
template <typename scalar_t>
float load_chunk(const scalar_t* row, int64_t begin, int64_t n, float* buf) {
  const cpu::VecKernels& vec = cpu::vec_kernels();
  if constexpr (std::is_same_v<scalar_t, float>) {
    return vec.copy_finite_max_f32(row + begin, buf, n);
  } else if constexpr (std::is_same_v<scalar_t, at::BFloat16>) {
    return vec.copy_finite_max_bf16(reinterpret_cast<const uint16_t*>(row + begin), buf, n);
  } else {
    static_assert(std::is_same_v<scalar_t, at::Half>);
    return vec.copy_finite_max_f16(reinterpret_cast<const cpu::Float16Bits*>(row + begin), buf, n);
  }
}

template <typename scalar_t>
Partial reduce_chunk(const scalar_t* row, int64_t begin, int64_t end, int64_t batch_row,
                     int head, const SampleParams& sample, float* buf) {
  const int64_t n = end - begin;
  Partial p;
  p.max = load_chunk(row, begin, n, buf);
  if (p.max == kNegInf) return p;
  const cpu::VecKernels& vec = cpu::vec_kernels();
  // Ties: lowest index, like torch.argmax.
  const int64_t first = vec.first_index_of(buf, n, p.max);
  p.argmax = begin + first;
  if (sample.enabled) {
    const NoiseKey key = row_noise_key(sample.seed, sample.row_seeds, batch_row);
    for (int64_t i = 0; i < n; ++i) {
      const int64_t v = begin + i;
      // As in the CUDA kernel: a -inf scaled logit never wins, and an element that cannot
      // reach the best with the largest noise added needs no Philox word and no logs.
      const float scaled = buf[i] / sample.temperature;
      if (!(scaled > kNegInf) || scaled + kGumbelBound < p.best) continue;
      const uint32_t word = step_noise_words(key.seed, sample.offset, key.row, head, v >> 2).w[v & 3];
      if (scaled + gumbel_upper_bound(word) < p.best) continue;
      const float score = scaled + gumbel_from_word(word);
      if (score > p.best) {
        p.best = score;
        p.best_index = v;
      }
    }
  }
  if (std::isfinite(p.max)) {
    // The maxima leave the sum as a count, so that the small terms of a near one-hot row are
    // not rounded away against their 1s.
    p.rest = vec.softmax_sum_parts(buf, n, p.max, &p.ones);
  }
  return p;
}

struct HeadResult {
  int64_t token;
  float conf;
  double ones = 0.0, rest = 0.0;  // the softmax sum's two parts (confidence.h)
  bool valid = false;             // the row had a finite max

  bool reaches(double threshold) const {
    const auto t = static_cast<float>(threshold);  // the float32 threshold every backend compares
    return valid ? reaches_threshold(ones, rest, t) : empty_head_reaches(t);
  }
};

// Merge the partials of one (head, row) in increasing chunk order: strict comparisons keep
// the lowest index on ties.
HeadResult merge_partials(const Partial* parts, int64_t chunks, bool sampling, int64_t pad_id) {
  float max = kNegInf;
  int64_t argmax = -1;
  float best = kNegInf;
  int64_t best_index = -1;
  for (int64_t c = 0; c < chunks; ++c) {
    if (parts[c].max > max) {
      max = parts[c].max;
      argmax = parts[c].argmax;
    }
    if (parts[c].best > best) {
      best = parts[c].best;
      best_index = parts[c].best_index;
    }
  }
  if (!std::isfinite(max)) return {pad_id, 0.0f};
  double ones = 0.0, rest = 0.0;
  for (int64_t c = 0; c < chunks; ++c) {
    const Partial& part = parts[c];
    if (part.max == max) {
      ones += part.ones;
      rest += part.rest;
    } else if (part.max != kNegInf) {
      // Rescaled to the row's max, the chunk's maxima join the rest; if even they fall below
      // the smallest term, every term of the chunk does.
      rest += (static_cast<double>(part.ones) + part.rest) * flush_tiny(std::exp(part.max - max));
    }
  }
  // Scores can all be -inf when logits / temperature overflows; torch.argmax then says 0.
  const int64_t token = sampling ? (best_index < 0 ? 0 : best_index) : argmax;
  return {token, confidence_of(ones, rest), ones, rest, true};
}

// Whether torch's GEMM computes this merge faster than the loop in merge_next_inputs. fp32:
// from 17 rows on its register blocking wins (B = 64, H = 1536 on a 2-core AVX2 VM: 8.8 ms vs
// 11.1 ms; B = 8: 1.53 ms vs 1.84 ms for the whole step the other way). bf16 / fp16: only where
// the CPU multiplies the type in hardware and torch hands it to oneDNN (elsewhere torch's own
// 16-bit GEMM is the slower one: B = 64 16 ms vs 8 ms), and only from these batch sizes on.
// Whole step, 2-core Xeon with AMX, H = 1536, GEMM vs loop: bf16 B = 2 0.48 vs 0.45 ms, B = 3
// 0.57 vs 0.60 ms, B = 8 0.97 vs 1.63 ms; fp16 (AVX512-FP16 there, no AMX) B = 2 0.68 vs
// 0.43 ms, B = 5 1.04 vs 0.82 ms, B = 6 to 8 even, B = 12 1.83 vs 1.97 ms.
constexpr int64_t kBf16GemmMinBatch = 3;
constexpr int64_t kFp16GemmMinBatch = 9;

template <typename embed_t>
bool library_gemm_is_faster(const cpu::VecKernels& vec, int64_t batch) {
  if constexpr (std::is_same_v<embed_t, float>) {
    return batch > kBlasMinBatch;
  } else if constexpr (std::is_same_v<embed_t, at::BFloat16>) {
    return vec.bf16_hardware && batch >= kBf16GemmMinBatch && at::globalContext().userEnabledMkldnn();
  } else {
    return vec.fp16_hardware && batch >= kFp16GemmMinBatch && at::globalContext().userEnabledMkldnn();
  }
}

// dst row b = [table row first[b], table row second[b]]: the merge's [B, 2H] input.
template <typename src_t, typename dst_t>
void gather_pairs(const src_t* table, int64_t row_stride, const int64_t* first, const int64_t* second,
                  int64_t batch, int64_t hidden, dst_t* dst) {
  for (int64_t b = 0; b < batch; ++b) {
    for (int64_t k = 0; k < hidden; ++k) {
      dst[b * 2 * hidden + k] = static_cast<dst_t>(table[first[b] * row_stride + k]);
      dst[b * 2 * hidden + hidden + k] = static_cast<dst_t>(table[second[b] * row_stride + k]);
    }
  }
}

template <typename embed_t>
void merge_next_inputs(const at::Tensor& embed, const std::optional<at::Tensor>& weight,
                       const std::optional<at::Tensor>& bias, const int64_t* first,
                       const int64_t* second, int64_t batch, at::Tensor& next_in) {
  const int64_t hidden = embed.size(1), row_stride = embed.stride(0);
  const embed_t* table = embed.const_data_ptr<embed_t>();
  embed_t* out = next_in.mutable_data_ptr<embed_t>();
  if (!weight.has_value()) {
    gather_pairs(table, row_stride, first, second, batch, hidden, out);
    return;
  }
  const cpu::VecKernels& vec = cpu::vec_kernels();
  if (library_gemm_is_faster<embed_t>(vec, batch)) {
    at::Tensor x = at::empty({batch, 2 * hidden}, embed.options());
    gather_pairs(table, row_stride, first, second, batch, hidden, x.mutable_data_ptr<embed_t>());
    // Below autograd, as a backend kernel runs: out= ops refuse weights that require grad
    // (a model's parameters outside no_grad), which the loop below takes as they are.
    const at::AutoDispatchBelowADInplaceOrView below_autograd;
    if (bias.has_value()) {
      at::addmm_out(next_in, *bias, x, weight->t());
    } else {
      at::mm_out(next_in, x, weight->t());
    }
    return;
  }
  std::vector<float> pairs(batch * 2 * hidden);  // [B, 2H] in fp32
  gather_pairs(table, row_stride, first, second, batch, hidden, pairs.data());
  const embed_t* w = weight->const_data_ptr<embed_t>();
  const embed_t* bias_ptr = bias.has_value() ? bias->const_data_ptr<embed_t>() : nullptr;
  const int64_t k2 = 2 * hidden;
  at::parallel_for(0, hidden, 16, [&](int64_t begin, int64_t end) {
    // Tiles of the reduction dim keep the batch's slice of `pairs` in L1 while this thread's
    // weight rows stream past it once.
    std::vector<float> acc((end - begin) * batch, 0.0f);
    // Row i of W from column k0, as the vector kernels take it: fp32 as it is, bf16 and fp16
    // as raw bits (widened in registers).
    auto weight_row = [&](int64_t i, int64_t k0) {
      if constexpr (std::is_same_v<embed_t, float>) {
        return w + i * k2 + k0;
      } else if constexpr (std::is_same_v<embed_t, at::BFloat16>) {
        return reinterpret_cast<const uint16_t*>(w) + i * k2 + k0;
      } else {
        static_assert(std::is_same_v<embed_t, at::Half>);
        return reinterpret_cast<const cpu::Float16Bits*>(w) + i * k2 + k0;
      }
    };
    for (int64_t k0 = 0; k0 < k2; k0 += kMergeTile) {
      const int64_t width = std::min(kMergeTile, k2 - k0);
      const float* x = pairs.data() + k0;
      int64_t i = begin;
      for (; i + 2 <= end; i += 2) {  // two output features per pass over the batch rows
        float* out0 = &acc[(i - begin) * batch];
        vec.dot2(weight_row(i, k0), weight_row(i + 1, k0), x, batch, width, k2, out0, out0 + batch);
      }
      if (i < end) vec.dot(weight_row(i, k0), x, batch, width, k2, &acc[(i - begin) * batch]);
    }
    for (int64_t i = begin; i < end; ++i) {
      const float add = bias_ptr ? static_cast<float>(bias_ptr[i]) : 0.0f;
      for (int64_t b = 0; b < batch; ++b) {
        out[b * hidden + i] = static_cast<embed_t>(acc[(i - begin) * batch + b] + add);
      }
    }
  });
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> superthoughts_step_cpu(
    const at::Tensor& logits, const at::Tensor& embed,
    const std::optional<at::Tensor>& merge_weight, const std::optional<at::Tensor>& merge_bias,
    at::Tensor& finished, int64_t pad_id, int64_t eos_id, double threshold,
    double threshold_main, double temperature, int64_t seed, int64_t offset,
    const std::optional<at::Tensor>& row_seeds) {
  const StepShapes s = check_step_inputs(logits, embed, merge_weight, merge_bias, finished, pad_id,
                                         eos_id, threshold, threshold_main, temperature, seed, row_seeds);
  cpu::vec_kernels();  // picks the vector ISA here, so a bad SUPERTHOUGHTS_CPU_ISA fails outside the parallel region
  auto [tokens, n_new, conf, next_in] = allocate_step_outputs(s, logits, embed);
  if (s.batch == 0) return {tokens, n_new, conf, next_in};

  const int64_t chunks = (s.vocab + kVocabChunk - 1) / kVocabChunk;
  const SampleParams sample{samples_at(temperature), static_cast<float>(temperature),
                            static_cast<uint64_t>(seed), static_cast<uint64_t>(offset),
                            row_seeds.has_value() ? row_seeds->const_data_ptr<int64_t>() : nullptr};
  // As bytes: a bool tensor made by a view of uint8 (or left uninitialised) may hold 2..255,
  // which a load as C++ bool leaves undefined; every nonzero byte counts as finished.
  uint8_t* done = reinterpret_cast<uint8_t*>(finished.mutable_data_ptr<bool>());
  std::vector<Partial> parts(2 * s.batch * chunks);  // [head, row, chunk]

  AT_DISPATCH_SWITCH(logits.scalar_type(), "superthoughts_step_cpu", SUPERTHOUGHTS_STEP_TYPES([&] {
    const scalar_t* base = logits.const_data_ptr<scalar_t>();
    const int64_t head_stride = logits.stride(0), row_stride = logits.stride(1);
    at::parallel_for(0, 2 * s.batch * chunks, 1, [&](int64_t begin, int64_t end) {
      std::vector<float> buf(kVocabChunk);
      for (int64_t task = begin; task < end; ++task) {
        const int64_t chunk = task % chunks, head_row = task / chunks;
        const int64_t head = head_row / s.batch, b = head_row % s.batch;
        if (done[b] != 0) continue;
        const scalar_t* row = base + head * head_stride + b * row_stride;
        const int64_t lo = chunk * kVocabChunk, hi = std::min(s.vocab, lo + kVocabChunk);
        parts[task] = reduce_chunk(row, lo, hi, b, static_cast<int>(head), sample, buf.data());
      }
    });
  }));

  int64_t* tok = tokens.mutable_data_ptr<int64_t>();
  int32_t* count = n_new.mutable_data_ptr<int32_t>();
  float* confidence = conf.mutable_data_ptr<float>();
  std::vector<int64_t> first(s.batch), second(s.batch);
  for (int64_t b = 0; b < s.batch; ++b) {
    if (done[b] != 0) {
      done[b] = 1;
      tok[2 * b] = pad_id;
      tok[2 * b + 1] = -1;
      count[b] = 0;
      confidence[2 * b] = confidence[2 * b + 1] = 0.0f;
      first[b] = second[b] = pad_id;
      continue;
    }
    const HeadResult main = merge_partials(&parts[b * chunks], chunks, sample.enabled, pad_id);
    const HeadResult mtp =
        merge_partials(&parts[(s.batch + b) * chunks], chunks, sample.enabled, pad_id);
    const bool accept = mtp.reaches(threshold) && main.reaches(threshold_main) && main.token != eos_id;
    tok[2 * b] = main.token;
    tok[2 * b + 1] = accept ? mtp.token : -1;
    count[b] = accept ? 2 : 1;
    confidence[2 * b] = main.conf;
    confidence[2 * b + 1] = mtp.conf;
    done[b] = (main.token == eos_id || (accept && mtp.token == eos_id)) ? 1 : 0;
    first[b] = main.token;
    second[b] = accept ? mtp.token : pad_id;
  }

  AT_DISPATCH_SWITCH(embed.scalar_type(), "superthoughts_step_cpu_merge", SUPERTHOUGHTS_STEP_TYPES([&] {
    merge_next_inputs<scalar_t>(embed, merge_weight, merge_bias, first.data(), second.data(),
                                s.batch, next_in);
  }));
  return {tokens, n_new, conf, next_in};
}

}  // namespace

const char* cpu_vector_isa() { return cpu::vec_kernels().name; }

std::vector<std::string> cpu_16bit_matmul() {
  const cpu::VecKernels& vec = cpu::vec_kernels();
  std::vector<std::string> types;
  if (vec.bf16_hardware) types.emplace_back("bfloat16");
  if (vec.fp16_hardware) types.emplace_back("float16");
  return types;
}

TORCH_LIBRARY_IMPL(superthoughts_ext, CPU, m) {
  m.impl("superthoughts_step", &superthoughts_step_cpu);
}

}  // namespace superthoughts
