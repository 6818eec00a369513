// The fiber scheduler behind cuda_emulation.h. One OS thread per block runs that block's
// threads as fibers, round-robin: a fiber runs until it must wait for others (a block or warp
// barrier) or returns. A round in which no fiber arrived anywhere, left a barrier or finished
// is a deadlock, reported instead of hanging.
#define SUPERTHOUGHTS_CUDA_EMULATION 1
#include "cuda_emulation.h"
#include "fiber_switch.h"

#include <algorithm>
#include <barrier>
#include <cstring>
#include <memory>
#include <mutex>
#include <random>
#include <string_view>
#include <thread>
#include <utility>
#include <vector>

namespace superthoughts::emulation {
namespace {

constexpr int kWarpSize = 32;
// The kernel's deepest fiber used 7.4 KB of stack, measured under ASan at -O1 (the largest
// frames). Where fibers switch with swapcontext (fiber_switch.h), ASan clears the shadow of
// the whole stack it switches to, so every extra KB costs on every switch. The lowest
// kStackGuard bytes (stacks grow down) hold a pattern checked when the block ends: a fiber
// that came that close fails the launch.
constexpr size_t kFiberStack = 64 * 1024;
constexpr size_t kStackGuard = 4 * 1024;
constexpr unsigned char kGuardByte = 0x5a;

struct Barrier {
  int expected = 0;
  int arrived = 0;
  uint64_t generation = 0;
  Site site;  // where the first thread of this generation waits
};

struct Warp {
  Barrier barrier;
  uint64_t words[kWarpSize];
  uint32_t a[kWarpSize][4], b[kWarpSize][2];
};

struct Grid;

struct Block {
  Grid* grid = nullptr;
  int index = 0, threads = 0;
  Barrier barrier;
  std::vector<Warp> warps;
  uint64_t progress = 0;  // arrivals, releases and finished fibers, for deadlock detection
  FiberContext scheduler;
  std::vector<FiberContext> fibers;
  std::vector<std::unique_ptr<char[]>> stacks;
  std::vector<bool> finished;
  int current = 0;
};

struct Grid {
  int blocks = 0;
  uint64_t schedule_seed = 0;
  const std::function<void()>* body = nullptr;
  std::barrier<> barrier;
  std::vector<Span> written;
  std::mutex error_lock;
  std::string error;
  explicit Grid(int n) : blocks(n), barrier(n) {}
  void fail(const std::string& what) {
    const std::lock_guard<std::mutex> hold(error_lock);
    if (error.empty()) error = what;
  }
};

thread_local Block* t_block = nullptr;

void yield_to_scheduler() { switch_fiber(t_block->fibers[t_block->current], t_block->scheduler); }

std::string where(const Site& site) {
  return std::string(site.file_name()) + ":" + std::to_string(site.line()) + ":" + std::to_string(site.column());
}

void wait_at(Barrier& b, const Site& site) {
  Block& block = *t_block;
  ++block.progress;
  if (b.arrived == 0) {
    b.site = site;
  } else if (b.site.line() != site.line() || b.site.column() != site.column() ||
             std::string_view(b.site.file_name()) != site.file_name()) {
    block.grid->fail("block " + std::to_string(block.index) + ": threads meet at different barriers, " +
                     where(b.site) + " and " + where(site) + " (thread " + std::to_string(block.current) + ")");
  }
  const uint64_t generation = b.generation;
  if (++b.arrived == b.expected) {
    b.arrived = 0;
    ++b.generation;
    return;
  }
  while (b.generation == generation) yield_to_scheduler();
}

void fiber_entry() {
  fiber_started(t_block->scheduler);
  (*t_block->grid->body)();
  t_block->finished[t_block->current] = true;
  ++t_block->progress;
  switch_fiber(t_block->fibers[t_block->current], t_block->scheduler, /*exits=*/true);  // never resumed
}

void run_block(Grid& grid, int index, int threads) {
  Block block;
  block.grid = &grid;
  block.index = index;
  block.threads = threads;
  block.barrier.expected = threads;
  block.warps.resize((threads + kWarpSize - 1) / kWarpSize);
  for (size_t w = 0; w < block.warps.size(); ++w) {
    block.warps[w].barrier.expected = std::min(kWarpSize, threads - static_cast<int>(w) * kWarpSize);
  }
  block.fibers.resize(threads);
  block.finished.assign(threads, false);
  t_block = &block;
  for (int t = 0; t < threads; ++t) {
    block.stacks.emplace_back(new char[kFiberStack]);
    std::memset(block.stacks.back().get(), kGuardByte, kStackGuard);
    start_fiber(block.fibers[t], block.stacks.back().get(), kFiberStack, fiber_entry);
  }
  // Order in which a round resumes the fibers: 0..n-1, or reshuffled every round. Threads that
  // wrongly rely on others having run first (a missing barrier) read stale data in one order
  // or another.
  std::vector<int> order(threads);
  for (int t = 0; t < threads; ++t) order[t] = t;
  std::mt19937_64 shuffle(grid.schedule_seed * 1000003u + static_cast<uint64_t>(index));
  int live = threads;
  while (live > 0) {
    const uint64_t before = block.progress;
    if (grid.schedule_seed != 0) std::shuffle(order.begin(), order.end(), shuffle);
    for (const int t : order) {
      if (block.finished[t]) continue;
      block.current = t;
      switch_fiber(block.scheduler, block.fibers[t]);
      if (block.finished[t]) --live;
    }
    if (live > 0 && block.progress == before) {
      int at_block = 0;
      for (int t = 0; t < threads; ++t) at_block += !block.finished[t];
      grid.fail("deadlock in block " + std::to_string(index) + ": " + std::to_string(at_block) +
                " of " + std::to_string(threads) + " threads wait, " +
                std::to_string(block.barrier.arrived) + " of them at __syncthreads");
      grid.barrier.arrive_and_drop();  // let the other blocks finish; this one is abandoned
      break;
    }
  }
  for (int t = 0; t < threads; ++t) {
    const char* guard = block.stacks[t].get();
    if (std::any_of(guard, guard + kStackGuard, [](char c) { return static_cast<unsigned char>(c) != kGuardByte; })) {
      grid.fail("block " + std::to_string(index) + ", thread " + std::to_string(t) + ": fiber stack overflow (" +
                std::to_string(kFiberStack - kStackGuard) + " bytes usable; raise kFiberStack)");
    }
  }
  t_block = nullptr;
}

}  // namespace

uint3 thread_index() { return uint3{static_cast<unsigned>(t_block->current), 0u, 0u}; }
uint3 block_index() { return uint3{static_cast<unsigned>(t_block->index), 0u, 0u}; }
dim3 grid_dim() { return dim3(static_cast<unsigned>(t_block->grid->blocks)); }

void sync_block(Site site) { wait_at(t_block->barrier, site); }

void sync_grid() {
  sync_block(Site::current());
  // Thread 0 stands for its block at the grid barrier; the block's other fibers are parked
  // in the second block barrier meanwhile (the OS thread is blocked, so they cannot run).
  if (t_block->current == 0) t_block->grid->barrier.arrive_and_wait();
  sync_block(Site::current());
}

void check_read_only(const void* p, size_t bytes, Site site) {
  const auto begin = reinterpret_cast<uintptr_t>(p);
  for (const Span& span : t_block->grid->written) {
    const auto span_begin = reinterpret_cast<uintptr_t>(span.data);
    if (begin < span_begin + span.bytes && span_begin < begin + bytes) {
      t_block->grid->fail("block " + std::to_string(t_block->index) + ": __ldg at " + where(site) +
                          " reads memory that the launch writes (on a GPU the read-only cache may return "
                          "stale data)");
      return;
    }
  }
}

uint64_t warp_exchange_xor(uint64_t value, int lane_mask, Site site) {
  Warp& warp = t_block->warps[t_block->current / kWarpSize];
  const int lane = t_block->current % kWarpSize;
  warp.words[lane] = value;
  wait_at(warp.barrier, site);
  const uint64_t out = warp.words[(lane ^ lane_mask) % kWarpSize];
  wait_at(warp.barrier, site);  // nobody overwrites a word before every lane has read
  return out;
}

namespace {

float half_bits_to_float(uint32_t bits, bool bf16) {
  if (bf16) return __uint_as_float(bits << 16);
  __half_raw raw;
  raw.x = static_cast<unsigned short>(bits);
  return __half2float(__half(raw));
}

// One mma.sync m16n8kK of the calling warp: every lane deposits its A and B registers, the
// matrices are assembled from all 32 lanes with the PTX fragment layout, and each lane adds
// its own four D elements (row g + 8 * (i >> 1), column 2t + (i & 1) for lane 4g + t).
// place_a(g, t, reg, e) / place_b(...) give the (row, column) of element e of a register;
// value(word, e) its value.
template <int K, int kPerReg, typename PlaceA, typename PlaceB, typename Value>
void warp_mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], PlaceA place_a, PlaceB place_b,
              Value value, const Site& site) {
  Warp& warp = t_block->warps[t_block->current / kWarpSize];
  const int lane = t_block->current % kWarpSize;
  std::memcpy(warp.a[lane], a, sizeof a);
  std::memcpy(warp.b[lane], b, sizeof b);
  wait_at(warp.barrier, site);
  float A[16][K], B[K][8];
  for (int l = 0; l < kWarpSize; ++l) {
    const int g = l / 4, t = l % 4;
    for (int e = 0; e < kPerReg; ++e) {
      for (int r = 0; r < 4; ++r) {
        const auto [row, col] = place_a(g, t, r, e);
        A[row][col] = value(warp.a[l][r], e);
      }
      for (int r = 0; r < 2; ++r) {
        const auto [row, col] = place_b(g, t, r, e);
        B[row][col] = value(warp.b[l][r], e);
      }
    }
  }
  const int g = lane / 4, t = lane % 4;
  for (int i = 0; i < 4; ++i) {
    const int row = g + 8 * (i >> 1), col = 2 * t + (i & 1);
    float sum = d[i];
    for (int k = 0; k < K; ++k) sum += A[row][k] * B[k][col];
    d[i] = sum;
  }
  wait_at(warp.barrier, site);  // the registers stay until every lane has computed
}

struct Index {
  int row, col;
};

}  // namespace

// PTX ISA, "Matrix fragments for mma.m16n8k16" (16-bit A/B): two values per register, the
// lower index in the low half. A register r: row g + 8 * (r & 1), columns 2t + 8 * (r >> 1) + e;
// B register r: rows (k) 2t + 8 * r + e, column g.
void mma_m16n8k16(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], bool bf16, Site site) {
  warp_mma<16, 2>(
      d, a, b, [](int g, int t, int r, int e) { return Index{g + 8 * (r & 1), 2 * t + 8 * (r >> 1) + e}; },
      [](int g, int t, int r, int e) { return Index{2 * t + 8 * r + e, g}; },
      [bf16](uint32_t word, int e) { return half_bits_to_float(e ? word >> 16 : word & 0xffffu, bf16); }, site);
}

// PTX ISA, "Matrix fragments for mma.m16n8k8" (.tf32): one value per register, read as tf32
// (the low 13 bits ignored). A register r: row g + 8 * (r & 1), column t + 4 * (r >> 1);
// B register r: row (k) t + 4 * r, column g.
void mma_m16n8k8_tf32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2], Site site) {
  warp_mma<8, 1>(
      d, a, b, [](int g, int t, int r, int) { return Index{g + 8 * (r & 1), t + 4 * (r >> 1)}; },
      [](int g, int t, int r, int) { return Index{t + 4 * r, g}; },
      [](uint32_t word, int) { return __uint_as_float(word & 0xffffe000u); }, site);
}

uint32_t round_to_tf32(float x) {
  uint32_t bits = __float_as_uint(x);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits += 0x1000u;  // half a tf32 ulp on the magnitude; inf/NaN kept
  return bits & 0xffffe000u;
}

const char* fiber_switch_kind() {
#if defined(SUPERTHOUGHTS_EMULATION_STACK_SWITCH)
  return "stack";
#else
  return "ucontext";
#endif
}

std::string launch(int grid_size, int block_size, const std::function<void()>& body, uint64_t schedule_seed,
                   std::vector<Span> written) {
  if (grid_size < 1 || block_size < 1) return "empty launch";
  Grid grid(grid_size);
  grid.schedule_seed = schedule_seed;
  grid.written = std::move(written);
  grid.body = &body;
  std::vector<std::thread> blocks;
  blocks.reserve(grid_size);
  for (int b = 0; b < grid_size; ++b) blocks.emplace_back(run_block, std::ref(grid), b, block_size);
  for (std::thread& t : blocks) t.join();
  return grid.error;
}

}  // namespace superthoughts::emulation
