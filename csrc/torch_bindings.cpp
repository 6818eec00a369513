// Every op schema of superthoughts_ext lives here, in the one always-compiled file; the
// backend files (csrc/cpu/*.cpp, csrc/cuda/*.cu) only add TORCH_LIBRARY_IMPL blocks.
// The pybind11 module `_C` carries build information only: ops are reached through
// torch.ops.superthoughts_ext.* so they work under torch.compile and in CUDA graphs.
#include <Python.h>
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/core/dispatch/Dispatcher.h>
#include <torch/csrc/autograd/variable.h>
#include <torch/library.h>

#include <optional>
#include <string>
#include <tuple>
#include <vector>

#ifndef SUPERTHOUGHTS_VERSION
#define SUPERTHOUGHTS_VERSION "0.0.0"
#endif
#ifndef SUPERTHOUGHTS_TORCH_VERSION
#define SUPERTHOUGHTS_TORCH_VERSION "unknown"
#endif
#ifndef SUPERTHOUGHTS_CUDA_ARCHS
#define SUPERTHOUGHTS_CUDA_ARCHS ""
#endif

namespace superthoughts {
const char* cpu_vector_isa();                  // csrc/cpu/step.cpp
std::vector<std::string> cpu_16bit_matmul();  // csrc/cpu/step.cpp
}

TORCH_LIBRARY(superthoughts_ext, m) {
  // One SuperThoughts decode step for a batch, in one launch (semantics: reference.py):
  // per row, max / argmax (or Gumbel-max sample) / softmax denominator of both heads'
  // logits [2, B, V], the confidence rule that accepts the MTP token, and the compressed
  // input of the next unit, C(E[t1], E[accepted ? t2 : pad]). Updates `finished` [B] in place.
  // Returns tokens [B, 2] int64 (-1 = second token not accepted), n_new [B] int32,
  // conf [B, 2] float32, next_in [B, H] (or the raw pair [B, 2H] when merge_weight is None).
  // row_seeds (keyword only; int64 [B] on the logits' device, or None): row r samples with the
  // noise of a batch of one keyed by row_seeds[r], so per-row seeds cost one launch, not B; the
  // scalar seed must then be 0. A tensor, not a list of ints: it stays on the device, so the
  // launch needs no host copy and can be captured in a CUDA graph.
  m.def(
      "superthoughts_step(Tensor logits, Tensor embed, Tensor? merge_weight, "
      "Tensor? merge_bias, Tensor(a!) finished, int pad_id, int eos_id, float threshold, "
      "float threshold_main, float temperature, int seed, int offset, *, Tensor? row_seeds=None) "
      "-> (Tensor tokens, Tensor n_new, Tensor conf, Tensor next_in)");
}

namespace {

using StepOutputs = std::tuple<at::Tensor, at::Tensor, at::Tensor, at::Tensor>;

// The step is not differentiable (argmax / sampling pick the tokens; next_in gathers the rows
// they pick). Registered for the Autograd key so that, as for argmax, the outputs never require
// grad, and so that `finished`, written in place, has its version bumped like any in-place op:
// autograd then refuses a backward through a value saved from it before the step, where a
// backend-only op left the version alone and such a backward ran with stale values.
StepOutputs superthoughts_step_autograd(
    const at::Tensor& logits, const at::Tensor& embed,
    const std::optional<at::Tensor>& merge_weight, const std::optional<at::Tensor>& merge_bias,
    at::Tensor& finished, int64_t pad_id, int64_t eos_id, double threshold,
    double threshold_main, double temperature, int64_t seed, int64_t offset,
    const std::optional<at::Tensor>& row_seeds) {
  static const auto op = c10::Dispatcher::singleton()
                             .findSchemaOrThrow("superthoughts_ext::superthoughts_step", "")
                             .typed<decltype(superthoughts_step_autograd)>();
  StepOutputs outputs;
  {
    at::AutoDispatchBelowADInplaceOrView below_autograd;
    outputs = op.call(logits, embed, merge_weight, merge_bias, finished, pad_id, eos_id, threshold,
                      threshold_main, temperature, seed, offset, row_seeds);
  }
  torch::autograd::impl::bump_version(finished);
  return outputs;
}

}  // namespace

TORCH_LIBRARY_IMPL(superthoughts_ext, Autograd, m) {
  m.impl("superthoughts_step", &superthoughts_step_autograd);
}

PYBIND11_MODULE(_C, module) {
  module.doc() = "superthoughts_ext compiled core (build information; ops live in torch.ops)";
  module.attr("version") = SUPERTHOUGHTS_VERSION;
  module.attr("torch_version") = SUPERTHOUGHTS_TORCH_VERSION;
#ifdef SUPERTHOUGHTS_WITH_CUDA
  module.attr("with_cuda") = true;
#else
  module.attr("with_cuda") = false;
#endif
  module.attr("cuda_archs") = SUPERTHOUGHTS_CUDA_ARCHS;
  // at::parallel_for in the CPU kernel is an inline OpenMP region: without _OPENMP it is serial.
#ifdef _OPENMP
  module.attr("openmp") = true;
#else
  module.attr("openmp") = false;
#endif
  // A function, not an attribute: the variant is picked on first use from the CPU's features
  // (or SUPERTHOUGHTS_CPU_ISA), and a bad override must not break the import.
  module.def("cpu_vector_isa", [] { return std::string(superthoughts::cpu_vector_isa()); },
             "The vector instruction set the CPU kernel runs with (avx512, avx2_fma, avx_fma, baseline)");
  module.def("cpu_16bit_matmul", &superthoughts::cpu_16bit_matmul,
             "The 16-bit types the CPU multiplies in hardware: their larger merges (bf16 3+ rows, "
             "fp16 9+) use torch's GEMM");
}
