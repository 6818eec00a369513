// Input validation and output allocation of superthoughts_step, shared by the CPU and CUDA
// glue so that both backends reject the same bad input with the same message.
#pragma once
#include <ATen/ATen.h>

#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <optional>
#include <string>
#include <tuple>

namespace superthoughts {

struct StepShapes {
  int64_t batch;
  int64_t vocab;
  int64_t hidden;
  bool has_weight;
  bool has_bias;
};

// Temperatures below this decode greedily, as temperature 0 does: a deliberate floor (vLLM
// keeps one too). Sampling scores logits / T in float32; as T shrinks those overflow to +-inf
// (every positive logit then ties at +inf) and below 1.4e-45 T itself rounds to 0 in float.
// Above 1e-5 that takes logits beyond 3e33. Mirrored in reference.py.
constexpr double kMinSamplingTemperature = 1e-5;

inline bool samples_at(double temperature) { return temperature >= kMinSamplingTemperature; }

// The shortest decimal that reads back as `value`: a stream's 6 digits printed a refused
// threshold of 1.0000001 as "threshold=1 outside [0, 1]". (std::to_chars would need the
// libstdc++ of GCC 11 at run time, newer than torch's own.)
inline std::string exact(double value) {
  char text[32];
  for (int digits = 1; digits <= 17; ++digits) {
    std::snprintf(text, sizeof(text), "%.*g", digits, value);
    if (std::strtod(text, nullptr) == value) break;  // NaN never does: "nan" at 17 digits
  }
  return text;
}

inline bool is_float_dtype(at::ScalarType t) {
  return t == at::kFloat || t == at::kBFloat16 || t == at::kHalf;
}

// Per-row Philox keys: int64 [B] on the logits' device. Every int64 is a valid key (a scalar
// seed is any integer folded to its low 64 bits, so every 64-bit pattern already is one), hence
// no check of the values, which would cost a device-to-host copy. The scalar seed must be 0:
// a nonzero one next to them would be silently unused.
inline void check_row_seeds(const std::optional<at::Tensor>& row_seeds, const at::Tensor& logits,
                            int64_t batch, int64_t seed) {
  if (!row_seeds.has_value()) return;
  const at::Tensor& keys = *row_seeds;
  TORCH_CHECK(keys.scalar_type() == at::kLong, "superthoughts_step: row_seeds must be int64, got ",
              keys.scalar_type());
  TORCH_CHECK(keys.dim() == 1 && keys.size(0) == batch,
              "superthoughts_step: row_seeds must be [B] with B=", batch, ", got ", keys.sizes());
  TORCH_CHECK(keys.device() == logits.device(), "superthoughts_step: row_seeds on ", keys.device(),
              " but logits on ", logits.device());
  TORCH_CHECK(keys.is_contiguous(), "superthoughts_step: row_seeds must be contiguous, got strides ",
              keys.strides());
  TORCH_CHECK(seed == 0, "superthoughts_step: seed=", seed,
              " given with row_seeds, which replace it; pass seed=0");
}

inline StepShapes check_step_inputs(const at::Tensor& logits, const at::Tensor& embed,
                                    const std::optional<at::Tensor>& merge_weight,
                                    const std::optional<at::Tensor>& merge_bias,
                                    const at::Tensor& finished, int64_t pad_id, int64_t eos_id,
                                    double threshold, double threshold_main, double temperature,
                                    int64_t seed, const std::optional<at::Tensor>& row_seeds) {
  TORCH_CHECK(logits.dim() == 3 && logits.size(0) == 2,
              "superthoughts_step: logits must be [2, B, V] (main, mtp), got ", logits.sizes());
  TORCH_CHECK(is_float_dtype(logits.scalar_type()),
              "superthoughts_step: logits dtype must be float32, bfloat16 or float16, got ",
              logits.scalar_type());
  TORCH_CHECK(embed.dim() == 2, "superthoughts_step: embed must be [V, H], got ", embed.sizes());
  TORCH_CHECK(is_float_dtype(embed.scalar_type()),
              "superthoughts_step: embed dtype must be float32, bfloat16 or float16, got ",
              embed.scalar_type());
  const int64_t batch = logits.size(1), vocab = logits.size(2), hidden = embed.size(1);
  TORCH_CHECK(vocab > 0, "superthoughts_step: logits have an empty vocab dim (V=0), shape ",
              logits.sizes());
  TORCH_CHECK(embed.size(0) == vocab, "superthoughts_step: logits vocab size V=", vocab,
              " does not match embed rows ", embed.size(0));
  TORCH_CHECK(vocab < (int64_t{1} << 31), "superthoughts_step: vocab size ", vocab,
              " exceeds 2^31");
  TORCH_CHECK(logits.stride(2) == 1 || vocab == 1,
              "superthoughts_step: logits must be contiguous along the vocab dim, got strides ",
              logits.strides());
  TORCH_CHECK(embed.stride(1) == 1 || hidden == 1,
              "superthoughts_step: embed must be contiguous along the hidden dim, got strides ",
              embed.strides());
  TORCH_CHECK(finished.dim() == 1 && finished.size(0) == batch,
              "superthoughts_step: finished must be [B] with B=", batch, ", got ", finished.sizes());
  TORCH_CHECK(finished.scalar_type() == at::kBool,
              "superthoughts_step: finished must be bool, got ", finished.scalar_type());
  TORCH_CHECK(finished.is_contiguous(), "superthoughts_step: finished must be contiguous");
  TORCH_CHECK(embed.device() == logits.device() && finished.device() == logits.device(),
              "superthoughts_step: tensors on different devices: logits ", logits.device(),
              ", embed ", embed.device(), ", finished ", finished.device());
  TORCH_CHECK(pad_id >= 0 && pad_id < vocab, "superthoughts_step: pad_id=", pad_id,
              " outside [0, V=", vocab, ")");
  TORCH_CHECK(eos_id >= 0 && eos_id < vocab, "superthoughts_step: eos_id=", eos_id,
              " outside [0, V=", vocab, ")");
  TORCH_CHECK(threshold >= 0.0 && threshold <= 1.0, "superthoughts_step: threshold=", exact(threshold),
              " outside [0, 1]");
  TORCH_CHECK(threshold_main >= 0.0 && threshold_main <= 1.0,
              "superthoughts_step: threshold_main=", exact(threshold_main), " outside [0, 1]");
  TORCH_CHECK(std::isfinite(temperature) && temperature >= 0.0,
              "superthoughts_step: temperature must be finite and >= 0, got ", exact(temperature));

  const bool has_weight = merge_weight.has_value();
  const bool has_bias = merge_bias.has_value();
  TORCH_CHECK(!has_bias || has_weight,
              "superthoughts_step: merge_bias given without merge_weight");
  if (has_weight) {
    const at::Tensor& w = *merge_weight;
    TORCH_CHECK(w.dim() == 2 && w.size(0) == hidden && w.size(1) == 2 * hidden,
                "superthoughts_step: merge_weight must be [H, 2H] with H=", hidden, ", got ",
                w.sizes());
    TORCH_CHECK(w.scalar_type() == embed.scalar_type(), "superthoughts_step: merge_weight dtype ",
                w.scalar_type(), " differs from embed dtype ", embed.scalar_type());
    TORCH_CHECK(w.is_contiguous(), "superthoughts_step: merge_weight must be contiguous");
    TORCH_CHECK(w.device() == logits.device(), "superthoughts_step: merge_weight on ", w.device(),
                " but logits on ", logits.device());
  }
  if (has_bias) {
    const at::Tensor& b = *merge_bias;
    TORCH_CHECK(b.dim() == 1 && b.size(0) == hidden, "superthoughts_step: merge_bias must be [H]",
                " with H=", hidden, ", got ", b.sizes());
    TORCH_CHECK(b.scalar_type() == embed.scalar_type(), "superthoughts_step: merge_bias dtype ",
                b.scalar_type(), " differs from embed dtype ", embed.scalar_type());
    TORCH_CHECK(b.is_contiguous(), "superthoughts_step: merge_bias must be contiguous");
    TORCH_CHECK(b.device() == logits.device(), "superthoughts_step: merge_bias on ", b.device(),
                " but logits on ", logits.device());
  }
  check_row_seeds(row_seeds, logits, batch, seed);
  return StepShapes{batch, vocab, hidden, has_weight, has_bias};
}

// tokens [B, 2] int64, n_new [B] int32, conf [B, 2] float32, next_in [B, H or 2H] embed dtype.
inline std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> allocate_step_outputs(
    const StepShapes& s, const at::Tensor& logits, const at::Tensor& embed) {
  auto tokens = at::empty({s.batch, 2}, logits.options().dtype(at::kLong));
  auto n_new = at::empty({s.batch}, logits.options().dtype(at::kInt));
  auto conf = at::empty({s.batch, 2}, logits.options().dtype(at::kFloat));
  auto next_in = at::empty({s.batch, s.has_weight ? s.hidden : 2 * s.hidden}, embed.options());
  return {tokens, n_new, conf, next_in};
}

}  // namespace superthoughts
