// CUDA backend of superthoughts_step: validation and allocation shared with the CPU backend
// (step_common.h), CUDA checks, then one cooperative launch of the kernel in
// csrc/kernels/step.cuh on the current stream. No host sync: graph capturable.
#include <ATen/ATen.h>
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#include <torch/library.h>

#include "../kernels/step.cuh"
#include "../step_common.h"

namespace superthoughts {
namespace {

using cuda_step::StepParams;

template <typename LogitT, typename EmbedT>
void run_step(StepParams& params, const at::Tensor& logits) {
  size_t workspace_bytes = 0;
  cudaError_t err = cuda_step::plan_superthoughts_step<LogitT, EmbedT>(params, &workspace_bytes);
  // A failed runtime call also leaves CUDA's last error set; clear it, or the next unrelated
  // torch CUDA op would report it (e.g. "no kernel image" on a GPU outside the built archs).
  if (err != cudaSuccess) (void)cudaGetLastError();
  TORCH_CHECK(err == cudaSuccess, "superthoughts_step: cannot plan the CUDA launch on ",
              logits.device(), ": ", cudaGetErrorString(err),
              err == cudaErrorNotSupported ? " (the device lacks cooperative launch)" : "");
  // Scratch for the per-block partials; the caching allocator makes this free of syncs and
  // safe under graph capture. Every slot the kernel reads it has written in the same launch.
  const at::Tensor workspace = at::empty({static_cast<int64_t>(workspace_bytes)},
                                         logits.options().dtype(at::kByte));
  params.workspace = workspace.mutable_data_ptr();
  err = cuda_step::launch_superthoughts_step<LogitT, EmbedT>(params, c10::cuda::getCurrentCUDAStream());
  C10_CUDA_CHECK(err);
}

template <typename LogitT>
void dispatch_embed(StepParams& params, const at::Tensor& logits, at::ScalarType embed_type) {
  switch (embed_type) {
    case at::kFloat:
      return run_step<LogitT, float>(params, logits);
    case at::kHalf:
      return run_step<LogitT, __half>(params, logits);
    case at::kBFloat16:
      return run_step<LogitT, __nv_bfloat16>(params, logits);
    default:
      TORCH_CHECK(false, "superthoughts_step: unsupported embed dtype ", embed_type);
  }
}

std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor> superthoughts_step_cuda(
    const at::Tensor& logits, const at::Tensor& embed,
    const std::optional<at::Tensor>& merge_weight, const std::optional<at::Tensor>& merge_bias,
    at::Tensor& finished, int64_t pad_id, int64_t eos_id, double threshold,
    double threshold_main, double temperature, int64_t seed, int64_t offset,
    const std::optional<at::Tensor>& row_seeds) {
  const StepShapes s = check_step_inputs(logits, embed, merge_weight, merge_bias, finished, pad_id,
                                         eos_id, threshold, threshold_main, temperature, seed, row_seeds);
  TORCH_CHECK(logits.is_cuda(), "superthoughts_step: the CUDA kernel got logits on ",
              logits.device());
  const c10::cuda::CUDAGuard guard(logits.device());
  auto [tokens, n_new, conf, next_in] = allocate_step_outputs(s, logits, embed);
  if (s.batch == 0) return {tokens, n_new, conf, next_in};

  StepParams params{};
  params.logits = logits.const_data_ptr();
  params.logits_head_stride = logits.stride(0);
  params.logits_row_stride = logits.stride(1);
  params.embed = embed.const_data_ptr();
  params.embed_row_stride = embed.stride(0);
  params.weight = merge_weight.has_value() ? merge_weight->const_data_ptr() : nullptr;
  params.bias = merge_bias.has_value() ? merge_bias->const_data_ptr() : nullptr;
  params.finished = reinterpret_cast<uint8_t*>(finished.mutable_data_ptr<bool>());
  params.batch = s.batch;
  params.vocab = s.vocab;
  params.hidden = s.hidden;
  params.pad_id = pad_id;
  params.eos_id = eos_id;
  // Held in float32 by every backend (confidence.h compares against the float32 threshold).
  params.threshold = static_cast<float>(threshold);
  params.threshold_main = static_cast<float>(threshold_main);
  params.temperature = static_cast<float>(temperature);
  params.sample = samples_at(temperature);
  params.seed = static_cast<uint64_t>(seed);
  params.offset = static_cast<uint64_t>(offset);
  // Read by the kernel on the device (checked: int64 [B], contiguous, the logits' device): no
  // host copy, so a graph captured with it replays whatever seeds the tensor then holds.
  params.row_seeds = row_seeds.has_value() ? row_seeds->const_data_ptr<int64_t>() : nullptr;
  params.tokens = tokens.mutable_data_ptr<int64_t>();
  params.n_new = n_new.mutable_data_ptr<int32_t>();
  params.conf = conf.mutable_data_ptr<float>();
  params.next_in = next_in.mutable_data_ptr();

  switch (logits.scalar_type()) {
    case at::kFloat:
      dispatch_embed<float>(params, logits, embed.scalar_type());
      break;
    case at::kHalf:
      dispatch_embed<__half>(params, logits, embed.scalar_type());
      break;
    case at::kBFloat16:
      dispatch_embed<__nv_bfloat16>(params, logits, embed.scalar_type());
      break;
    default:
      TORCH_CHECK(false, "superthoughts_step: unsupported logits dtype ", logits.scalar_type());
  }
  return {tokens, n_new, conf, next_in};
}

}  // namespace

TORCH_LIBRARY_IMPL(superthoughts_ext, CUDA, m) {
  m.impl("superthoughts_step", &superthoughts_step_cuda);
}

}  // namespace superthoughts
