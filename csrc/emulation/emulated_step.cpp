// The CUDA superthoughts_step kernel (csrc/kernels/step.cuh) compiled for the CPU through
// cuda_emulation.h, behind a C entry point for ctypes. Test-only: the caller (python_tests/
// cuda_emulation.py) has validated and allocated everything as csrc/cuda/step.cu does, and
// picks the grid size, so that small grids reproduce what a GPU's hundreds of blocks do to
// one row (many partials per row, many rows per block).
#define SUPERTHOUGHTS_CUDA_EMULATION 1
#include "../kernels/step.cuh"

#include <string>
#include <utility>
#include <vector>

namespace {

using superthoughts::cuda_step::StepParams;

enum DType : int { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

thread_local std::string g_error;

template <typename LogitT, typename EmbedT>
const char* run(StepParams p, int grid, uint64_t schedule_seed) {
  size_t workspace_bytes = 0;
  superthoughts::cuda_step::plan_step_launch<EmbedT>(p, grid, &workspace_bytes);
  // Garbage, not zeros: the kernel must write every partial it reads.
  std::vector<unsigned char> workspace(workspace_bytes, 0xA5);
  p.workspace = workspace.data();
  const auto rows = static_cast<size_t>(p.batch);
  const size_t next_in_bytes = rows * static_cast<size_t>(p.weight ? p.hidden : 2 * p.hidden) * sizeof(EmbedT);
  std::vector<superthoughts::emulation::Span> written = {
      {workspace.data(), workspace_bytes}, {p.finished, rows * sizeof(uint8_t)},
      {p.tokens, rows * 2 * sizeof(int64_t)}, {p.n_new, rows * sizeof(int32_t)},
      {p.conf, rows * 2 * sizeof(float)},    {p.next_in, next_in_bytes}};
  g_error = superthoughts::emulation::launch(
      grid, superthoughts::cuda_step::kThreads,
      [&p] { superthoughts::cuda_step::superthoughts_step_kernel<LogitT, EmbedT>(p); }, schedule_seed,
      std::move(written));
  return g_error.empty() ? nullptr : g_error.c_str();
}

template <typename LogitT>
const char* dispatch_embed(const StepParams& p, int embed_dtype, int grid, uint64_t schedule_seed) {
  switch (embed_dtype) {
    case kFloat32: return run<LogitT, float>(p, grid, schedule_seed);
    case kFloat16: return run<LogitT, __half>(p, grid, schedule_seed);
    case kBFloat16: return run<LogitT, __nv_bfloat16>(p, grid, schedule_seed);
    default: return "unknown embed dtype code";
  }
}

}  // namespace

extern "C" {

// Sizes of StepParams as this build lays it out, so the caller can check its mirror.
size_t superthoughts_step_params_size() { return sizeof(StepParams); }

// Returns nullptr on success, else what went wrong (valid until the next call on this thread).
// schedule_seed: see emulation::launch.
const char* superthoughts_step_emulated(const StepParams* params, int logits_dtype, int embed_dtype, int grid,
                                        uint64_t schedule_seed) {
  if (grid < 1) return "grid must be >= 1";
  switch (logits_dtype) {
    case kFloat32: return dispatch_embed<float>(*params, embed_dtype, grid, schedule_seed);
    case kFloat16: return dispatch_embed<__half>(*params, embed_dtype, grid, schedule_seed);
    case kBFloat16: return dispatch_embed<__nv_bfloat16>(*params, embed_dtype, grid, schedule_seed);
    default: return "unknown logits dtype code";
  }
}

// A one-block launch whose threads write a 64-byte buffer and __ldg it, its first
// `written_bytes` declared as written (0: none): the emulator's read-only-path check, tested.
const char* superthoughts_emulation_ldg_check(int written_bytes) {
  float buffer[16] = {};
  g_error = superthoughts::emulation::launch(
      1, 32, [&buffer] { buffer[threadIdx.x % 16] = __ldg(&buffer[(threadIdx.x + 1) % 16]) + 1.0f; }, 0,
      {{buffer, static_cast<size_t>(written_bytes)}});
  return g_error.empty() ? nullptr : g_error.c_str();
}

const char* superthoughts_emulation_fiber_switch() { return superthoughts::emulation::fiber_switch_kind(); }

// The noise of every word (word >> 9 = k for k < 2^23) as the host computes it: exact[k] =
// gumbel_from_word, bound[k] = gumbel_upper_bound. Tests compare them with the reference.
void superthoughts_gumbel_table(float* exact, float* bound) {
  for (uint32_t k = 0; k < (1u << 23); ++k) {
    exact[k] = superthoughts::gumbel_from_word(k << 9);
    bound[k] = superthoughts::gumbel_upper_bound(k << 9);
  }
}

}  // extern "C"
