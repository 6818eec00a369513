// Counter-based Philox4x32-10 and the Gumbel noise of the step op, shared by the C++ CPU
// kernel and the CUDA kernel so both draw bit-identical numbers (see reference.py).
// Plain C++/CUDA: no torch headers.
#pragma once
#include <cmath>
#include <cstdint>

#include "host_device.h"

namespace superthoughts {

struct PhiloxWords {
  uint32_t w[4];
};

ST_HOST_DEVICE void mulhilo32(uint32_t a, uint32_t b, uint32_t& hi, uint32_t& lo) {
  const uint64_t product = static_cast<uint64_t>(a) * static_cast<uint64_t>(b);
  hi = static_cast<uint32_t>(product >> 32);
  lo = static_cast<uint32_t>(product);
}

ST_HOST_DEVICE PhiloxWords philox4x32_10(uint32_t c0, uint32_t c1, uint32_t c2, uint32_t c3,
                                         uint32_t k0, uint32_t k1) {
  constexpr uint32_t kM0 = 0xD2511F53u, kM1 = 0xCD9E8D57u;
  constexpr uint32_t kW0 = 0x9E3779B9u, kW1 = 0xBB67AE85u;
#if defined(__CUDA_ARCH__)
#pragma unroll
#endif
  for (int round = 0; round < 10; ++round) {
    uint32_t hi0, lo0, hi1, lo1;
    mulhilo32(kM0, c0, hi0, lo0);
    mulhilo32(kM1, c2, hi1, lo1);
    const uint32_t n0 = hi1 ^ c1 ^ k0, n2 = hi0 ^ c3 ^ k1;
    c0 = n0;
    c1 = lo1;
    c2 = n2;
    c3 = lo0;
    k0 += kW0;
    k1 += kW1;
  }
  return PhiloxWords{{c0, c1, c2, c3}};
}

// The four vocab entries 4*block .. 4*block+3 of stream (row, head) share one Philox call.
ST_HOST_DEVICE PhiloxWords step_noise_words(uint64_t seed, uint64_t offset, int64_t row, int head,
                                            int64_t block) {
  return philox4x32_10(static_cast<uint32_t>(block), static_cast<uint32_t>(2 * row + head),
                       static_cast<uint32_t>(offset), static_cast<uint32_t>(offset >> 32),
                       static_cast<uint32_t>(seed), static_cast<uint32_t>(seed >> 32));
}

// The Philox key and stream row of batch row `row`: the batch's seed and the row itself, or
// with per-row seeds (row_seeds [B], nullptr when absent) row_seeds[row] and row 0, the stream
// a batch of one keyed by that seed draws. Every backend keys its noise through this.
struct NoiseKey {
  uint64_t seed;
  int64_t row;
};

ST_HOST_DEVICE NoiseKey row_noise_key(uint64_t seed, const int64_t* row_seeds, int64_t row) {
  if (row_seeds == nullptr) return NoiseKey{seed, row};
  return NoiseKey{static_cast<uint64_t>(row_seeds[row]), 0};
}

// Gumbel(0, 1) from one 32-bit word: u = ((word >> 9) + 0.5) * 2^-23 lies in (0, 1) and is
// exact in float32 (23 bits + the half need 24 significant bits; one more would round the
// largest word up to u = 1, i.e. infinite noise). The largest noise, at u = 1 - 2^-24, is
// 16.636. The logs run in double and round once to float: float logf, std::log and
// torch.log disagree in the last bit for about one word in seven, double ones essentially
// never after the rounding, so every backend and the reference draw the same noise.
ST_HOST_DEVICE float gumbel_from_word(uint32_t word) {
  const double u = (static_cast<double>(word >> 9) + 0.5) * 1.1920928955078125e-07;
#if defined(__CUDA_ARCH__)
  return static_cast<float>(-log(-log(u)));
#else
  return static_cast<float>(-std::log(-std::log(u)));
#endif
}

// Above every gumbel_from_word value (<= 16.636): an element whose scaled logit cannot reach
// the best even with this added needs neither its Philox word nor its logs. Float addition
// is monotone, so skipping it never drops a winner.
constexpr float kGumbelBound = 17.0f;

// An upper bound of gumbel_from_word(word) from float logs: each is good to a few ulps, so the
// float noise is within 1e-5 of the exact one and the 1e-4 added makes it a bound. The
// kernels rule an element out when scaled + bound < best (rounding is monotone, so then the
// exact score is below best too) and pay for the double logs only for the rest.
ST_HOST_DEVICE float gumbel_upper_bound(uint32_t word) {
  const float u = (static_cast<float>(word >> 9) + 0.5f) * 1.1920928955078125e-07f;
#if defined(__CUDA_ARCH__)
  return -logf(-logf(u)) + 1e-4f;
#else
  return -std::log(-std::log(u)) + 1e-4f;
#endif
}

}  // namespace superthoughts
