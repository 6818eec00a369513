// The confidence rule shared by the C++ CPU kernel and the CUDA kernel (oracle:
// reference.confidence). Plain C++/CUDA: no torch headers.
//
// A head's softmax sum over its row is kept in two parts: `ones`, how many logits equal the
// row's max (each adds exactly exp(0) = 1), and `rest`, the sum of exp(x - max) over the
// others. A float32 sum that starts from the 1s rounds away terms below half an ulp of 1
// (~6e-8), so a near one-hot row (every other logit 17 or more below the max) would get a
// confidence of exactly 1 or not depending on the order of the additions. Kept apart, the
// rule below sees them, and threshold 1.0 is reached only when rest is 0.
#pragma once

#include "host_device.h"

namespace superthoughts {

// Terms of `rest` below float32's smallest normal (2^-126, logits ~87.3 below the max) count
// as 0: the GPU's exp flushes them, and every backend drops them the same way.
constexpr float kSmallestTerm = 1.17549435082228750797e-38f;

ST_HOST_DEVICE float flush_tiny(float term) { return term < kSmallestTerm ? 0.0f : term; }

// The head's max softmax probability, 1 / (ones + rest), rounded to float32 (the `conf` output).
ST_HOST_DEVICE float confidence_of(double ones, double rest) {
  return static_cast<float>(1.0 / (ones + rest));
}

// Whether 1 / (ones + rest) >= threshold, decided without rounding 1 / (ones + rest):
// 1 - threshold * ones is exact in double for a float32 threshold and ones < 2^29.
ST_HOST_DEVICE bool reaches_threshold(double ones, double rest, float threshold) {
  const double t = threshold;
  return 1.0 - t * ones >= t * rest;
}

// The same for a head with no finite max (confidence 0).
ST_HOST_DEVICE bool empty_head_reaches(float threshold) { return threshold <= 0.0f; }

}  // namespace superthoughts
