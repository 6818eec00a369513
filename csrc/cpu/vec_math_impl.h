// Body of the CPU vector kernels. Deliberately without include guard: vec_math.h includes it
// once per instruction set, inside a namespace and a `#pragma GCC target` region, with
// SUPERTHOUGHTS_VEC_LANES set to the float lanes of that set's registers (16 for AVX-512, 8
// otherwise), so the same source is compiled for AVX-512, AVX2+FMA, AVX+FMA and baseline
// x86-64. GCC vector extensions (vf) map onto zmm / ymm registers where available and onto
// several xmm registers elsewhere.

constexpr int64_t kLanes = SUPERTHOUGHTS_VEC_LANES;
typedef float vf __attribute__((vector_size(4 * kLanes)));
typedef int32_t vi __attribute__((vector_size(4 * kLanes)));
typedef uint32_t vu32 __attribute__((vector_size(4 * kLanes)));
typedef uint16_t vu16 __attribute__((vector_size(2 * kLanes)));

static inline vf load(const float* p) {
  vf v;
  std::memcpy(&v, p, sizeof(v));
  return v;
}

static inline void store(float* p, vf v) { std::memcpy(p, &v, sizeof(v)); }

static inline vf splat(float x) {
  vf v;
  for (int64_t k = 0; k < kLanes; ++k) v[k] = x;
  return v;
}

template <typename To, typename From>
static inline To bit_cast_vec(From v) {
  To out;
  std::memcpy(&out, &v, sizeof(out));
  return out;
}

// Lane-wise select with bit operations: GCC scalarises the vector `?:` on targets without
// blend instructions.
static inline vf select(vi mask, vf if_true, vf if_false) {
  return bit_cast_vec<vf>((mask & bit_cast_vec<vi>(if_true)) | (~mask & bit_cast_vec<vi>(if_false)));
}

static inline float horizontal_sum(vf v) {
  for (int64_t width = kLanes / 2; width >= 1; width /= 2) {  // pairwise: a fixed order per ISA
    for (int64_t k = 0; k < width; ++k) v[k] += v[k + width];
  }
  return v[0];
}

static inline float horizontal_max(vf v) {
  float m = v[0];
  for (int64_t i = 1; i < kLanes; ++i) m = v[i] > m ? v[i] : m;
  return m;
}

// exp(x) for x <= 0 (logits minus their maximum): Cephes-style polynomial, ~1e-7 relative
// error; exactly +0 where exp(x) is below float32's smallest normal (x < ~-87.34, flushed
// as the GPU flushes it: kSmallestTerm in kernels/confidence.h) and for -inf, so masked
// entries add nothing.
static inline vf exp_nonpositive(vf x) {
  const vi keep = x >= splat(-87.5f);  // 2^n stays a normal float: n >= -126
  const vf magic = splat(12582912.0f);  // 1.5 * 2^23: adding it rounds to an integer
  const vf t = x * splat(1.44269504088896341f) + magic;
  const vf n = t - magic;
  // Unsigned: for x in about (-1.7e7, -8.7e6) t is negative and the signed difference
  // overflowed (undefined behaviour, flagged by UBSan); those lanes are discarded by `keep`.
  const vu32 n_bits = bit_cast_vec<vu32>(t) - bit_cast_vec<vu32>(magic);
  const vf r = x - n * splat(0.693359375f) - n * splat(-2.12194440e-4f);
  vf p = splat(1.9875691500e-4f);
  p = p * r + splat(1.3981999507e-3f);
  p = p * r + splat(8.3334519073e-3f);
  p = p * r + splat(4.1665795894e-2f);
  p = p * r + splat(1.6666665459e-1f);
  p = p * r + splat(5.0000001201e-1f);
  const vf y = p * r * r + r + splat(1.0f);
  const vf scale = bit_cast_vec<vf>((n_bits + 127u) << 23);
  const vf e = y * scale;
  return select(keep & (e >= splat(std::numeric_limits<float>::min())), e, splat(0.0f));
}

static inline vf finite_or_neg_inf(vf x) {
  return select(x == x, x, splat(-std::numeric_limits<float>::infinity()));  // NaN -> -inf
}

// A bfloat16 is the top half of a float32: widening is a 16-bit shift, in registers.
static inline vf load_bf16(const uint16_t* p) {
  vu16 bits;
  std::memcpy(&bits, p, sizeof(bits));
  return bit_cast_vec<vf>(__builtin_convertvector(bits, vi) << 16);
}

static inline float bf16_to_float(uint16_t bits) {
  const uint32_t word = static_cast<uint32_t>(bits) << 16;
  float x;
  std::memcpy(&x, &word, sizeof(x));
  return x;
}

// A float16 widens through the conversion instruction where the variant has one (F16C for
// 8 lanes, AVX-512F for 16), lane by lane in the baseline variant.
static inline vf load_f16(const Float16Bits* p) {
#if defined(SUPERTHOUGHTS_VEC_F16C) && SUPERTHOUGHTS_VEC_LANES == 16
  __m256i bits;
  std::memcpy(&bits, p, sizeof(bits));
  // The zero-masked form with every lane selected is the same vcvtph2ps; the plain one starts
  // from _mm512_undefined_ps, which GCC 12 reports as maybe-uninitialized wherever it inlines.
  return bit_cast_vec<vf>(_mm512_maskz_cvtph_ps(static_cast<__mmask16>(0xffff), bits));
#elif defined(SUPERTHOUGHTS_VEC_F16C) && SUPERTHOUGHTS_VEC_LANES == 8
  __m128i bits;
  std::memcpy(&bits, p, sizeof(bits));
  return bit_cast_vec<vf>(_mm256_cvtph_ps(bits));
#else
  vf v;
  for (int64_t k = 0; k < kLanes; ++k) v[k] = half_bits_to_float(p[k].bits);
  return v;
#endif
}

// Inputs of the kernels below: float32, or bfloat16 / float16 as raw bits widened in
// registers, so 16-bit logits and weights stream from memory at half the bytes.
static inline vf load_as_float(const float* p) { return load(p); }
static inline vf load_as_float(const uint16_t* p) { return load_bf16(p); }
static inline vf load_as_float(const Float16Bits* p) { return load_f16(p); }
static inline float value_at(const float* p, int64_t i) { return p[i]; }
static inline float value_at(const uint16_t* p, int64_t i) { return bf16_to_float(p[i]); }
static inline float value_at(const Float16Bits* p, int64_t i) { return half_bits_to_float(p[i].bits); }

// dst = src as float32 with NaN mapped to -inf; returns max(dst).
template <typename Src>
static float copy_finite_max(const Src* src, float* dst, int64_t n) {
  vf acc = splat(-std::numeric_limits<float>::infinity());
  int64_t i = 0;
  for (; i + kLanes <= n; i += kLanes) {
    const vf x = finite_or_neg_inf(load_as_float(src + i));
    store(dst + i, x);
    acc = select(x > acc, x, acc);
  }
  float m = horizontal_max(acc);
  for (; i < n; ++i) {
    float x = value_at(src, i);
    x = x == x ? x : -std::numeric_limits<float>::infinity();
    dst[i] = x;
    m = x > m ? x : m;
  }
  return m;
}

static inline bool any_lane(vi mask) {
  vi m = mask;
  int32_t folded = 0;
  for (int64_t k = 0; k < kLanes; ++k) folded |= m[k];
  return folded != 0;
}

// Lowest i with buf[i] == value (the argmax once the max is known), n if none. Compares four
// vectors per branch instead of one float.
static int64_t first_index_of(const float* buf, int64_t n, float value) {
  const vf v = splat(value);
  int64_t i = 0;
  for (; i + 4 * kLanes <= n; i += 4 * kLanes) {
    const vi hit = (load(buf + i) == v) | (load(buf + i + kLanes) == v) | (load(buf + i + 2 * kLanes) == v) |
                   (load(buf + i + 3 * kLanes) == v);
    if (any_lane(hit)) break;
  }
  for (; i < n; ++i) {
    if (buf[i] == value) return i;
  }
  return n;
}

// Loop iterations (two vectors each) a lane's float32 sum runs before it moves into a double:
// a float32 running sum of ~1000 like terms drifts by up to ~1e-5 relative (a 16384-element
// chunk of equal terms on 8 lanes: 1.5e-5), 32 terms keep it below ~2e-6.
static constexpr int64_t kSumBlock = 32;

// The softmax sum of a chunk in two parts, shift = its maximum (finite, >= every buf[i]):
// returns the sum of exp(buf[i] - shift) over the elements below the maximum and writes to
// `ones` how many equal it (each adds exactly 1; confidence.h keeps them apart). One pass, so
// a row of many tied maxima costs no more than any other.
static float softmax_sum_parts(const float* buf, int64_t n, float shift, float* ones) {
  vf acc0 = splat(0.0f), acc1 = splat(0.0f);
  double total = 0.0;
  vi ties{};  // per lane: how many elements equal the maximum
  const vf s = splat(shift), zero = splat(0.0f);
  auto below_max = [&](vf x) {
    const vi at_max = x == s;
    ties -= at_max;  // a true lane is -1
    return select(at_max, zero, exp_nonpositive(x - s));
  };
  int64_t i = 0;
  for (int64_t block = 0; i + 2 * kLanes <= n; i += 2 * kLanes) {
    acc0 += below_max(load(buf + i));
    acc1 += below_max(load(buf + i + kLanes));
    if (++block == kSumBlock) {
      total += horizontal_sum(acc0 + acc1);
      acc0 = acc1 = zero;
      block = 0;
    }
  }
  for (; i + kLanes <= n; i += kLanes) acc0 += below_max(load(buf + i));
  float tail[kLanes];
  for (int64_t k = 0; k < kLanes; ++k) tail[k] = i + k < n ? buf[i + k] : -std::numeric_limits<float>::infinity();
  acc1 += below_max(load(tail));
  int64_t count = 0;
  for (int64_t k = 0; k < kLanes; ++k) count += ties[k];
  *ones = static_cast<float>(count);
  return static_cast<float>(total + horizontal_sum(acc0 + acc1));
}

// out[r] += dot(weight_row[0, k), pairs + r * ldx) for r < rows: one weight row against every
// batch row, so each weight element is read from memory once per step whatever the batch
// size. Up to four batch rows share each weight load (register blocking); a batch of 4n + m
// rows takes n blocks of 4 and one of m, so no row makes a pass over the weights of its own
// (B = 3 was slower than B = 4 when each leftover row had one).
static constexpr int64_t kPrefetchElements = 512;

// The dot products of one weight row with N batch rows (x0, x0 + ldx, ...), added to out[0, N).
template <int N, typename W>
static void dot_row_block(const W* weight_row, const float* x0, int64_t k, int64_t ldx, float* out) {
  vf acc[N];
  for (int j = 0; j < N; ++j) acc[j] = splat(0.0f);
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    // The weight streams from DRAM once; prefetching well ahead hides its latency, but for a
    // single batch row the prefetch costs more than it saves (fp32 B = 1: 0.58 vs 0.47 ms a step).
    if constexpr (N > 1) __builtin_prefetch(weight_row + i + kPrefetchElements);
    const vf w = load_as_float(weight_row + i);
    for (int j = 0; j < N; ++j) acc[j] += w * load(x0 + j * ldx + i);
  }
  float total[N];
  for (int j = 0; j < N; ++j) total[j] = horizontal_sum(acc[j]);
  for (; i < k; ++i) {
    const float w = value_at(weight_row, i);
    for (int j = 0; j < N; ++j) total[j] += w * x0[j * ldx + i];
  }
  for (int j = 0; j < N; ++j) out[j] += total[j];
}

// The same for two weight rows at once: each batch-row load now feeds two FMAs (6 loads per
// 8 FMAs instead of 5 per 4 at N = 4), which is what bounds this loop on a small batch.
template <int N, typename W>
static void dot2_row_block(const W* w0, const W* w1, const float* x0, int64_t k, int64_t ldx, float* out0,
                           float* out1) {
  vf acc0[N], acc1[N];
  for (int j = 0; j < N; ++j) acc0[j] = acc1[j] = splat(0.0f);
  int64_t i = 0;
  for (; i + kLanes <= k; i += kLanes) {
    if constexpr (N > 1) {  // as in dot_row_block
      __builtin_prefetch(w0 + i + kPrefetchElements);
      __builtin_prefetch(w1 + i + kPrefetchElements);
    }
    const vf u = load_as_float(w0 + i), v = load_as_float(w1 + i);
    for (int j = 0; j < N; ++j) {
      const vf x = load(x0 + j * ldx + i);
      acc0[j] += u * x;
      acc1[j] += v * x;
    }
  }
  float total0[N], total1[N];
  for (int j = 0; j < N; ++j) {
    total0[j] = horizontal_sum(acc0[j]);
    total1[j] = horizontal_sum(acc1[j]);
  }
  for (; i < k; ++i) {
    const float u = value_at(w0, i), v = value_at(w1, i);
    for (int j = 0; j < N; ++j) {
      total0[j] += u * x0[j * ldx + i];
      total1[j] += v * x0[j * ldx + i];
    }
  }
  for (int j = 0; j < N; ++j) {
    out0[j] += total0[j];
    out1[j] += total1[j];
  }
}

// Calls block<N>(first row, out offset) over blocks of 4 rows and one block of the rest.
template <typename Block>
static void for_row_blocks(int64_t rows, Block&& block) {
  int64_t r = 0;
  for (; r + 4 <= rows; r += 4) block(std::integral_constant<int, 4>{}, r);
  switch (rows - r) {
    case 3: block(std::integral_constant<int, 3>{}, r); break;
    case 2: block(std::integral_constant<int, 2>{}, r); break;
    case 1: block(std::integral_constant<int, 1>{}, r); break;
    default: break;
  }
}

template <typename W>
static void dot_against_rows(const W* weight_row, const float* pairs, int64_t rows, int64_t k, int64_t ldx,
                             float* out) {
  for_row_blocks(rows, [&](auto n, int64_t r) {
    dot_row_block<decltype(n)::value>(weight_row, pairs + r * ldx, k, ldx, out + r);
  });
}

template <typename W>
static void dot2_against_rows(const W* w0, const W* w1, const float* pairs, int64_t rows, int64_t k,
                              int64_t ldx, float* out0, float* out1) {
  for_row_blocks(rows, [&](auto n, int64_t r) {
    dot2_row_block<decltype(n)::value>(w0, w1, pairs + r * ldx, k, ldx, out0 + r, out1 + r);
  });
}
