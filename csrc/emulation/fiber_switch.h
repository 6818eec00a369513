// Switching between the emulation's fibers (cuda_emulation.cpp): each warp shuffle, warp
// barrier and __syncthreads switches through all of a block's threads, so the emulated tests
// spend most of their time here.
//
// glibc's swapcontext makes a system call on every switch (it saves and restores the signal
// mask), which was 85% of an emulated sampling test's time. On x86-64 a fiber is instead a
// saved stack pointer, and a switch saves the callee-saved registers on the old stack and pops
// them from the new one: no system call, no signal mask (the fibers never change it).
// ucontext stays where that is not safe: other architectures; AddressSanitizer builds (ASan
// follows swapcontext's stack changes, not ours); and control-flow-enforcement builds (a
// shadow stack would reject the `ret` into another fiber).
// Included by cuda_emulation.cpp alone: it defines the switch's symbol.
#pragma once

#include <cstddef>
#include <cstdint>

#if defined(__has_feature)
#if __has_feature(address_sanitizer)
#define SUPERTHOUGHTS_EMULATION_ASAN 1
#endif
#endif
#if defined(__SANITIZE_ADDRESS__)
#define SUPERTHOUGHTS_EMULATION_ASAN 1
#endif

#if defined(__x86_64__) && !defined(SUPERTHOUGHTS_EMULATION_ASAN) && !(defined(__CET__) && (__CET__ & 2))
#define SUPERTHOUGHTS_EMULATION_STACK_SWITCH 1
#else
#include <ucontext.h>
#endif

namespace superthoughts::emulation {

#if defined(SUPERTHOUGHTS_EMULATION_STACK_SWITCH)

// Pushes rbp, rbx, r12-r15 on the current stack, stores the stack pointer in *save_sp, loads
// load_sp and pops the same registers from there; `ret` then resumes the other fiber where it
// last switched (or, the first time, enters it; see start_fiber). The x87 and SSE control words
// are callee-saved too, but no fiber changes them.
extern "C" void superthoughts_emulation_switch(void** save_sp, void* load_sp);
asm(R"(
  .text
  .globl superthoughts_emulation_switch
  .hidden superthoughts_emulation_switch
  .type superthoughts_emulation_switch, @function
superthoughts_emulation_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
  .size superthoughts_emulation_switch, .-superthoughts_emulation_switch
)");

struct FiberContext {
  void* sp = nullptr;
};

// Lays out the frame a switch pops: six zero registers, then `entry` as the return address,
// then a dummy return address for `entry` itself (it must never return), so that `entry`
// starts with the stack aligned as after a call (rsp = 8 mod 16).
inline void start_fiber(FiberContext& fiber, char* stack, size_t size, void (*entry)()) {
  auto top = reinterpret_cast<uintptr_t>(stack + size) & ~uintptr_t{15};
  auto* slots = reinterpret_cast<void**>(top);
  slots[-1] = nullptr;
  slots[-2] = reinterpret_cast<void*>(entry);
  for (int r = 3; r <= 8; ++r) slots[-r] = nullptr;
  fiber.sp = slots - 8;
}

inline void switch_fiber(FiberContext& from, FiberContext& to) { superthoughts_emulation_switch(&from.sp, to.sp); }

#else

struct FiberContext {
  ucontext_t context{};
};

inline void start_fiber(FiberContext& fiber, char* stack, size_t size, void (*entry)()) {
  getcontext(&fiber.context);
  fiber.context.uc_stack.ss_sp = stack;
  fiber.context.uc_stack.ss_size = size;
  fiber.context.uc_link = nullptr;  // entry never returns
  makecontext(&fiber.context, entry, 0);
}

inline void switch_fiber(FiberContext& from, FiberContext& to) { swapcontext(&from.context, &to.context); }

#endif

}  // namespace superthoughts::emulation
