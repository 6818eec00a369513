// Small float kernels for the CPU step op, written with GCC/Clang vector extensions so the
// same source becomes AVX2+FMA code where the CPU has it and SSE2 code elsewhere
// or AVX (target_clones picks at load time). Plain C++, no torch headers.
#pragma once
#include <cstdint>
#include <cstring>
#include <limits>

namespace superthoughts::cpu {

typedef float v8f __attribute__((vector_size(32)));
typedef int32_t v8i __attribute__((vector_size(32)));

#define ST_CPU_CLONES __attribute__((target_clones("arch=haswell", "avx", "default")))
// Inlined into each clone so they are compiled for that clone's instruction set.
#define ST_ALWAYS_INLINE static inline __attribute__((always_inline))

ST_ALWAYS_INLINE v8f load8(const float* p) {
  v8f v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

ST_ALWAYS_INLINE v8f splat(float x) { return v8f{x, x, x, x, x, x, x, x}; }

// Lane-wise select written with bit operations: the vector `?:` is scalarised by GCC on
// targets without blend instructions.
ST_ALWAYS_INLINE v8f select(v8i mask, v8f if_true, v8f if_false) {
  v8i t, f;
  std::memcpy(&t, &if_true, sizeof(t));
  std::memcpy(&f, &if_false, sizeof(f));
  const v8i bits = (mask & t) | (~mask & f);
  v8f out;
  std::memcpy(&out, &bits, sizeof(out));
  return out;
}

// exp(x) for x <= 0 (the only inputs here: logits minus their maximum); ~1e-7 relative
// error, and exactly 0 below -87 (and for -inf) so masked entries add nothing.
ST_ALWAYS_INLINE v8f exp_nonpositive(v8f x) {
  const v8i keep = x >= splat(-87.0f);
  const v8f magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const v8f t = x * splat(1.44269504088896341f) + magic;
  const v8f n = t - magic;
  v8i t_bits, magic_bits;
  std::memcpy(&t_bits, &t, sizeof(t));
  std::memcpy(&magic_bits, &magic, sizeof(magic));
  const v8i n_int = t_bits - magic_bits;
  const v8f r = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
  v8f p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  const v8f y = p * r * r + r + splat(1.0f);
  const v8i scale_bits = (n_int + 127) << 23;
  v8f scale;
  std::memcpy(&scale, &scale_bits, sizeof(scale));
  // Lanes below -87 (including -inf, whose arithmetic above produced NaN) become +0.
  return select(keep, y * scale, splat(0.0f));
}

ST_ALWAYS_INLINE float horizontal_sum(v8f v) {
  return ((v[0] + v[1]) + (v[2] + v[3])) + ((v[4] + v[5]) + (v[6] + v[7]));
}

ST_ALWAYS_INLINE float horizontal_max(v8f v) {
  float m = v[0];
  for (int i = 1; i < 8; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// Max of buf[0, n) (no NaN: the caller has mapped NaN to -inf).
ST_CPU_CLONES static float max_of(const float* buf, int64_t n) {
  v8f acc = splat(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + 8 <= n; i += 8) {
    const v8f x = load8(buf + i);
    acc = select(x > acc, x, acc);
  }
  float m = horizontal_max(acc);
  for (; i < n; ++i) m = buf[i] > m ? buf[i] : m;
  return m;
}

// sum_i exp(buf[i] - shift), shift finite and >= every buf[i].
ST_CPU_CLONES static float sum_exp(const float* buf, int64_t n, float shift) {
  v8f acc0 = splat(0.0f), acc1 = splat(0.0f);
  const v8f s = splat(shift);
  int64_t i = 0;
  for (; i + 16 <= n; i += 16) {
    acc0 += exp_nonpositive(load8(buf + i) - s);
    acc1 += exp_nonpositive(load8(buf + i + 8) - s);
  }
  for (; i + 8 <= n; i += 8) acc0 += exp_nonpositive(load8(buf + i) - s);
  float tail[8] = {0, 0, 0, 0, 0, 0, 0, 0};
  const int64_t rest = n - i;
  v8f last = splat(-std::numeric_limits<float>::infinity());
  std::memcpy(tail, buf + i, rest * sizeof(float));
  for (int64_t k = rest; k < 8; ++k) tail[k] = -std::numeric_limits<float>::infinity();
  last = load8(tail);
  acc0 += exp_nonpositive(last - s);
  return horizontal_sum(acc0 + acc1);
}

// out[r] = dot(weight_row, pairs + r * k) for r < rows: one weight row against every batch row,
// so each weight element is read from memory once per step whatever the batch size. Four
// batch rows share each weight load (register blocking), which keeps this load-light.
ST_CPU_CLONES static void dot_against_rows(const float* weight_row, const float* pairs, int64_t rows,
                                          int64_t k, float* out) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) {
    const float* x0 = pairs + r * k;
    const float *x1 = x0 + k, *x2 = x1 + k, *x3 = x2 + k;
    v8f a0 = splat(0.0f), a1 = splat(0.0f), a2 = splat(0.0f), a3 = splat(0.0f);
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) {
      const v8f w = load8(weight_row + i);
      a0 += w * load8(x0 + i);
      a1 += w * load8(x1 + i);
      a2 += w * load8(x2 + i);
      a3 += w * load8(x3 + i);
    }
    float t0 = horizontal_sum(a0), t1 = horizontal_sum(a1), t2 = horizontal_sum(a2), t3 = horizontal_sum(a3);
    for (; i < k; ++i) {
      t0 += weight_row[i] * x0[i];
      t1 += weight_row[i] * x1[i];
      t2 += weight_row[i] * x2[i];
      t3 += weight_row[i] * x3[i];
    }
    out[r] = t0;
    out[r + 1] = t1;
    out[r + 2] = t2;
    out[r + 3] = t3;
  }
  for (; r < rows; ++r) {
    const float* x = pairs + r * k;
    v8f acc = splat(0.0f);
    int64_t i = 0;
    for (; i + 8 <= k; i += 8) acc += load8(weight_row + i) * load8(x + i);
    float total = horizontal_sum(acc);
    for (; i < k; ++i) total += weight_row[i] * x[i];
    out[r] = total;
  }
}

}  // namespace superthoughts::cpu
