// Phase-timing probe of the CUDA superthoughts_step kernel (csrc/kernels/step.cuh), loaded by
// benchmarks/gpu/phase_probe.py through ctypes. Plain CUDA, no torch: the Python side owns
// every buffer and passes raw device pointers.
//
// Question it answers: where do the ~30 us that every launch pays at any batch size go? Two
// tools, both launched on the grid the real kernel plans (every resident block):
//   - an instrumented copy of the kernel body: the same device functions in the same order,
//     with thread 0 of each block writing %globaltimer after a __syncthreads() at entry and
//     after each phase, so per launch one gets when each block finished each phase;
//   - ablation kernels that run a prefix or a piece of the kernel (empty, grid barrier only,
//     prefetch only, vocab reduction + barrier, ...), timed by the caller.
// The instrumented kernel's results are those of the real kernel (same code, same grid: the
// probe checks this bit for bit); only its timing carries the cost of the stamps and their
// block barriers.
//
// Build (phase_probe.py does this): nvcc -O3 -std=c++20 -arch=sm_90a -shared -Xcompiler -fPIC
#include <cuda_runtime.h>

#include <cstddef>
#include <cstdint>

#include "../../csrc/kernels/step.cuh"

// Everything csrc/cuda/step.cu reads from its tensors and arguments. Integers are int64 and
// reals double so that the ctypes mirror in phase_probe.py has no padding to get wrong.
struct ProbeInputs {
  int64_t logits_dtype, embed_dtype;  // 0 fp32, 1 fp16, 2 bf16 (equal: see DtypeCode)
  const void* logits;                 // [2, B, V], vocab dim contiguous
  int64_t logits_head_stride, logits_row_stride;
  const void* embed;                  // [V, H], hidden dim contiguous
  int64_t embed_row_stride;
  const void* weight;                 // [H, 2H] or nullptr
  const void* bias;                   // [H] or nullptr
  uint8_t* finished;                  // [B] bools as bytes (see StepParams)
  int64_t batch, vocab, hidden;
  int64_t pad_id, eos_id;
  double threshold, threshold_main, temperature;
  int64_t seed, offset;
  int64_t* tokens;                    // [B, 2]
  int32_t* n_new;                     // [B]
  float* conf;                        // [B, 2]
  void* next_in;                      // [B, H] or [B, 2H]
  int64_t merge_path;                 // -1: the planner's; 1 GEMV or 2 tensor cores forced (A/B)
  int64_t grid;                       // 0: the planner's (every resident block); else fewer blocks
};

namespace probe {

using superthoughts::cuda_step::kThreads;
using superthoughts::cuda_step::SharedState;
using superthoughts::cuda_step::StepParams;
namespace cs = superthoughts::cuda_step;

// Stamps per block and launch: entry, after prefetch, after reduce_vocab, after the grid
// barrier, after write_rows, after the merge.
constexpr int kStamps = 6;

// Variants of probe_run; phase_probe.py mirrors these numbers.
enum Variant : int {
  kInstrumented = 0,   // the kernel body with stamps (needs `stamps`)
  kEmptyCoop = 1,      // empty kernel, cooperative launch
  kSyncCoop = 2,       // grid barrier only
  kPrefetchCoop = 3,   // phase 0 only
  kReduceCoop = 4,     // phase 1 + grid barrier
  kReal = 5,           // the real kernel through launch_superthoughts_step
  kEmptyNormal = 6,    // empty kernel, ordinary <<<>>> launch
  kPhases01Coop = 7,   // phases 0 and 1 + grid barrier, as the real kernel runs them
  kPhases012Coop = 8,  // phases 0, 1, barrier, 2: the real kernel without the merge
  kEmptySmemCoop = 9,  // empty kernel holding the real kernel's static shared memory
  kNumVariants = 10,
};

// Nanoseconds of the GPU-wide global timer: one clock for all SMs, so stamps of different
// blocks compare (clock64 is per SM).
__device__ __forceinline__ uint64_t global_ns() {
  uint64_t t;
  asm volatile("mov.u64 %0, %%globaltimer;" : "=l"(t));
  return t;
}

// The block has finished everything before this point when the stamp is taken.
__device__ __forceinline__ void stamp(uint64_t* stamps, int k) {
  __syncthreads();
  if (threadIdx.x == 0) stamps[static_cast<int64_t>(blockIdx.x) * kStamps + k] = global_ns();
}

// ---- kernels -----------------------------------------------------------------------------
// All carry the real kernel's __launch_bounds__ and its parameter block, so that register
// allocation and the launch's parameter copy match it as closely as possible.

template <typename LogitT, typename EmbedT>
__global__ void __launch_bounds__(kThreads, 2)
    instrumented_kernel(const __grid_constant__ StepParams p, uint64_t* stamps) {
  __shared__ SharedState sh;
  stamp(stamps, 0);
  cs::prefetch_first_weights<EmbedT>(p);
  stamp(stamps, 1);
  cs::reduce_vocab<LogitT>(p, sh.u.reduce);
  stamp(stamps, 2);
  cooperative_groups::this_grid().sync();
  stamp(stamps, 3);
  cs::write_rows<EmbedT>(p, sh);
  stamp(stamps, 4);
  if (p.merge_path != cs::kMergeCopy) cs::merge_projection<EmbedT>(p, sh);
  stamp(stamps, 5);
}

__global__ void __launch_bounds__(kThreads, 2) empty_kernel(const __grid_constant__ StepParams p) { (void)p; }

// Empty, but it allocates the real kernel's static shared memory (~33 KB), so the SMs need the
// same shared-memory carveout as for the real kernel: compared with empty_kernel it shows
// whether switching the carveout between kernels costs time.
__global__ void __launch_bounds__(kThreads, 2) empty_smem_kernel(const __grid_constant__ StepParams p) {
  __shared__ SharedState sh;
  if (p.batch < 0) {  // never (batch >= 1), but the compiler cannot drop `sh`
    sh.first[threadIdx.x % cs::kTileRows] = 0;
    __syncthreads();
    p.n_new[0] = sh.first[1];
  }
}

// The real kernel's phases in its order, each one switched on or off, for the ablations.
template <typename LogitT, typename EmbedT, bool kPrefetch, bool kReduce, bool kSync, bool kRows>
__global__ void __launch_bounds__(kThreads, 2) phases_kernel(const __grid_constant__ StepParams p) {
  __shared__ SharedState sh;
  if constexpr (kPrefetch) cs::prefetch_first_weights<EmbedT>(p);
  if constexpr (kReduce) cs::reduce_vocab<LogitT>(p, sh.u.reduce);
  if constexpr (kSync) cooperative_groups::this_grid().sync();
  if constexpr (kRows) cs::write_rows<EmbedT>(p, sh);
}

// One thread spins until `ns` nanoseconds have passed: queued ahead of a timed launch, it lets
// the host submit that launch before the GPU gets to it, so host overhead drops out of the
// event time.
__global__ void spin_kernel(uint64_t ns) {
  const uint64_t start = global_ns();
  while (global_ns() - start < ns) {
  }
}

// Resolution of %globaltimer as this GPU runs it: out[0] smallest non-zero step, out[1]
// number of steps seen, out[2] nanoseconds covered.
__global__ void timer_resolution_kernel(uint64_t* out, int reads) {
  const uint64_t first = global_ns();
  uint64_t prev = first, min_step = ~uint64_t{0}, steps = 0;
  for (int i = 0; i < reads; ++i) {
    const uint64_t t = global_ns();
    if (t != prev) {
      min_step = t - prev < min_step ? t - prev : min_step;
      ++steps;
      prev = t;
    }
  }
  out[0] = min_step;
  out[1] = steps;
  out[2] = prev - first;
}

// ---- host side ---------------------------------------------------------------------------

// Fills `p` exactly like csrc/cuda/step.cu does from its tensors.
inline void fill_params(StepParams& p, const ProbeInputs* in) {
  p = StepParams{};
  p.logits = in->logits;
  p.logits_head_stride = in->logits_head_stride;
  p.logits_row_stride = in->logits_row_stride;
  p.embed = in->embed;
  p.embed_row_stride = in->embed_row_stride;
  p.weight = in->weight;
  p.bias = in->bias;
  p.finished = in->finished;
  p.batch = in->batch;
  p.vocab = in->vocab;
  p.hidden = in->hidden;
  p.pad_id = in->pad_id;
  p.eos_id = in->eos_id;
  // Compared in float32, as step.cu does.
  p.threshold = static_cast<float>(in->threshold);
  p.threshold_main = static_cast<float>(in->threshold_main);
  p.temperature = static_cast<float>(in->temperature);
  p.sample = in->temperature > 0.0;
  p.seed = static_cast<uint64_t>(in->seed);
  p.offset = static_cast<uint64_t>(in->offset);
  p.tokens = in->tokens;
  p.n_new = in->n_new;
  p.conf = in->conf;
  p.next_in = in->next_in;
}

// fill_params + plan_superthoughts_step for the dtype pair; *bytes gets the workspace size.
template <typename LogitT, typename EmbedT>
cudaError_t plan(const ProbeInputs* in, StepParams& p, size_t* bytes) {
  if (in->batch < 1 || in->vocab < 1) return cudaErrorInvalidValue;
  fill_params(p, in);
  const cudaError_t err = cs::plan_superthoughts_step<LogitT, EmbedT>(p, bytes);
  if (err != cudaSuccess) return err;
  // A smaller grid (any size up to the resident blocks keeps the cooperative launch legal):
  // fewer partials per row and fewer blocks at the barrier, against less bandwidth in phase 1.
  if (in->grid > p.grid || in->grid < 0) return cudaErrorInvalidValue;
  if (in->grid > 0) cs::plan_step_launch<EmbedT>(p, static_cast<int>(in->grid), bytes);
  if (in->merge_path < 0 || p.merge_path == cs::kMergeCopy) return cudaSuccess;
  // A forced merge path, to compare GEMV and tensor cores at the batch sizes between them.
  const bool mma_possible = p.embed_vec && p.hidden % cs::kMmaFeatures == 0;
  if (in->merge_path == cs::kMergeGemv || (in->merge_path == cs::kMergeMma && mma_possible)) {
    p.merge_path = static_cast<int>(in->merge_path);
    return cudaSuccess;
  }
  return cudaErrorInvalidValue;
}

template <typename LogitT, typename EmbedT>
const void* variant_function(int variant) {
  switch (variant) {
    case kInstrumented: return reinterpret_cast<const void*>(&instrumented_kernel<LogitT, EmbedT>);
    case kEmptyCoop: return reinterpret_cast<const void*>(&empty_kernel);
    case kSyncCoop: return reinterpret_cast<const void*>(&phases_kernel<LogitT, EmbedT, false, false, true, false>);
    case kPrefetchCoop: return reinterpret_cast<const void*>(&phases_kernel<LogitT, EmbedT, true, false, false, false>);
    case kReduceCoop: return reinterpret_cast<const void*>(&phases_kernel<LogitT, EmbedT, false, true, true, false>);
    case kReal: return reinterpret_cast<const void*>(&cs::superthoughts_step_kernel<LogitT, EmbedT>);
    case kEmptyNormal: return reinterpret_cast<const void*>(&empty_kernel);
    case kPhases01Coop: return reinterpret_cast<const void*>(&phases_kernel<LogitT, EmbedT, true, true, true, false>);
    case kPhases012Coop: return reinterpret_cast<const void*>(&phases_kernel<LogitT, EmbedT, true, true, true, true>);
    case kEmptySmemCoop: return reinterpret_cast<const void*>(&empty_smem_kernel);
    default: return nullptr;
  }
}

template <typename LogitT, typename EmbedT>
cudaError_t run_variant(int variant, const StepParams& p, uint64_t* stamps, cudaStream_t stream) {
  const void* kernel = variant_function<LogitT, EmbedT>(variant);
  if (kernel == nullptr) return cudaErrorInvalidValue;
  StepParams params = p;
  void* args[] = {&params, &stamps};
  const dim3 grid(static_cast<unsigned>(p.grid)), block(kThreads);
  switch (variant) {
    case kInstrumented:
      if (stamps == nullptr) return cudaErrorInvalidValue;
      return cudaLaunchCooperativeKernel(kernel, grid, block, args, 0, stream);
    case kReal:
      return cs::launch_superthoughts_step<LogitT, EmbedT>(p, stream);
    case kEmptyNormal:
      return cudaLaunchKernel(kernel, grid, block, args, 0, stream);
    default:  // the ablations take the parameter block only
      return cudaLaunchCooperativeKernel(kernel, grid, block, args, 0, stream);
  }
}

// The probe's inputs use the same element type for logits and embed (as the benchmarks do):
// 3 instantiations of each kernel instead of 9 keep the build short on the GPU machine.
enum DtypeCode : int64_t { kFloat32 = 0, kFloat16 = 1, kBFloat16 = 2 };

// Calls fn.template operator()<LogitT, EmbedT>() for the dtype pair, or returns
// cudaErrorInvalidValue for an unknown or mixed pair.
template <typename Fn>
cudaError_t dispatch_dtypes(int64_t logits_dtype, int64_t embed_dtype, Fn&& fn) {
  if (logits_dtype != embed_dtype) return cudaErrorInvalidValue;
  switch (logits_dtype) {
    case kFloat32: return fn.template operator()<float, float>();
    case kFloat16: return fn.template operator()<__half, __half>();
    case kBFloat16: return fn.template operator()<__nv_bfloat16, __nv_bfloat16>();
    default: return cudaErrorInvalidValue;
  }
}

}  // namespace probe

extern "C" {

// Number of variants (probe_run's `variant` is below it) and stamps per block and launch.
int probe_num_variants() { return probe::kNumVariants; }
int probe_num_stamps() { return probe::kStamps; }
// sizeof(ProbeInputs), to check the ctypes mirror.
int probe_inputs_size() { return static_cast<int>(sizeof(ProbeInputs)); }

// out[0] CUDA runtime version this library was built with, out[1] driver version.
int probe_versions(int* out) {
  const cudaError_t err = cudaRuntimeGetVersion(&out[0]);
  return static_cast<int>(err != cudaSuccess ? err : cudaDriverGetVersion(&out[1]));
}

// Workspace bytes the launch plan needs; allocate them on the device before probe_run.
int probe_workspace_bytes(const ProbeInputs* in, size_t* bytes) {
  return static_cast<int>(probe::dispatch_dtypes(in->logits_dtype, in->embed_dtype, [&]<typename L, typename E>() {
    probe::StepParams p;
    return probe::plan<L, E>(in, p, bytes);
  }));
}

// The plan the real kernel gets: out[0] grid, [1] range, [2] seg_max, [3] group,
// [4] merge_path (0 copy, 1 gemv, 2 mma), [5] embed_vec, [6] workspace bytes.
int probe_plan(const ProbeInputs* in, int64_t* out) {
  return static_cast<int>(probe::dispatch_dtypes(in->logits_dtype, in->embed_dtype, [&]<typename L, typename E>() {
    probe::StepParams p;
    size_t bytes = 0;
    const cudaError_t err = probe::plan<L, E>(in, p, &bytes);
    if (err != cudaSuccess) return err;
    const int64_t values[7] = {p.grid, p.range, p.seg_max, p.group, p.merge_path, p.embed_vec ? 1 : 0,
                               static_cast<int64_t>(bytes)};
    for (int i = 0; i < 7; ++i) out[i] = values[i];
    return cudaSuccess;
  }));
}

// Compiled resources of one variant's kernel: out[0] registers per thread, [1] local memory
// bytes per thread (spills), [2] static shared bytes, [3] resident blocks per SM at 256 threads.
int probe_kernel_attrs(int variant, int64_t logits_dtype, int64_t embed_dtype, int64_t* out) {
  return static_cast<int>(probe::dispatch_dtypes(logits_dtype, embed_dtype, [&]<typename L, typename E>() {
    const void* fn = probe::variant_function<L, E>(variant);
    if (fn == nullptr) return cudaErrorInvalidValue;
    cudaFuncAttributes attr{};
    cudaError_t err = cudaFuncGetAttributes(&attr, fn);
    if (err != cudaSuccess) return err;
    int per_sm = 0;
    err = cudaOccupancyMaxActiveBlocksPerMultiprocessor(&per_sm, fn, probe::kThreads, 0);
    if (err != cudaSuccess) return err;
    out[0] = attr.numRegs;
    out[1] = static_cast<int64_t>(attr.localSizeBytes);
    out[2] = static_cast<int64_t>(attr.sharedSizeBytes);
    out[3] = per_sm;
    return cudaSuccess;
  }));
}

// One launch of `variant` on `stream`, planned like the real op (same grid for every variant).
// `workspace` must hold probe_workspace_bytes bytes; `stamps` ([grid, 6] uint64, written by
// the instrumented variant only) may be null for the other variants. Returns a cudaError_t.
int probe_run(int variant, const ProbeInputs* in, void* workspace, size_t workspace_bytes, uint64_t* stamps,
              void* stream) {
  return static_cast<int>(probe::dispatch_dtypes(in->logits_dtype, in->embed_dtype, [&]<typename L, typename E>() {
    probe::StepParams p;
    size_t bytes = 0;
    const cudaError_t err = probe::plan<L, E>(in, p, &bytes);
    if (err != cudaSuccess) return err;
    if (workspace == nullptr || workspace_bytes < bytes) return cudaErrorInvalidValue;
    p.workspace = workspace;
    return probe::run_variant<L, E>(variant, p, stamps, static_cast<cudaStream_t>(stream));
  }));
}

// Queues a one-thread kernel that busy-waits `ns` nanoseconds on `stream`.
int probe_spin(uint64_t ns, void* stream) {
  probe::spin_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(ns);
  return static_cast<int>(cudaGetLastError());
}

// Measures %globaltimer (see timer_resolution_kernel) into out[0..2] (device memory) on `stream`.
int probe_timer_resolution(uint64_t* out, int reads, void* stream) {
  probe::timer_resolution_kernel<<<1, 1, 0, static_cast<cudaStream_t>(stream)>>>(out, reads);
  return static_cast<int>(cudaGetLastError());
}

const char* probe_error_string(int err) { return cudaGetErrorString(static_cast<cudaError_t>(err)); }

}  // extern "C"
