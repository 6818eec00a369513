// Switching between the emulation's fibers (cuda_emulation.cpp): each warp shuffle, warp
// barrier and __syncthreads switches through all of a block's threads, so the emulated tests
// spend most of their time here.
//
// glibc's swapcontext makes a system call on every switch (it saves and restores the signal
// mask), which was 85% of an emulated sampling test's time. On x86-64 a fiber is instead a
// saved stack pointer, and a switch saves the callee-saved registers on the old stack and pops
// them from the new one: no system call, no signal mask (the fibers never change it).
// ucontext stays where this is not safe: other architectures (x32 too), and control-flow-
// enforcement builds (a shadow stack would reject the `ret` into another fiber). Builds with
// AddressSanitizer tell it about each switch either way (its fiber API), so that it knows
// which stack is live.
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

// SUPERTHOUGHTS_EMULATION_UCONTEXT: the fallback on x86-64 too (its test).
#if defined(__x86_64__) && !defined(__ILP32__) && !(defined(__CET__) && (__CET__ & 2)) && \
    !defined(SUPERTHOUGHTS_EMULATION_UCONTEXT)
#define SUPERTHOUGHTS_EMULATION_STACK_SWITCH 1
#else
#include <ucontext.h>
#endif
#if defined(SUPERTHOUGHTS_EMULATION_ASAN)
#include <sanitizer/common_interface_defs.h>
#endif

namespace superthoughts::emulation {

#if defined(SUPERTHOUGHTS_EMULATION_STACK_SWITCH)

// Pushes rbp, rbx, r12-r15 on the current stack, stores the stack pointer in *save_sp, loads
// load_sp and pops the same registers from there; `ret` then resumes the other fiber where it
// last switched (or, the first time, enters it; see start_fiber). The x87 and SSE control words
// are callee-saved too, but no fiber changes them.
extern "C" void superthoughts_emulation_switch(void** save_sp, void* load_sp);
asm(R"(
  .pushsection .text
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
  .popsection
)");

#endif

struct FiberContext {
#if defined(SUPERTHOUGHTS_EMULATION_STACK_SWITCH)
  void* sp = nullptr;
#else
  ucontext_t context{};
#endif
  // For AddressSanitizer: the stack this context runs on (a thread's own stack is learned when
  // it first switches to a fiber) and ASan's fake stack while the context is switched away.
  const void* stack = nullptr;
  size_t stack_size = 0;
  void* fake_stack = nullptr;
};

#if defined(SUPERTHOUGHTS_EMULATION_STACK_SWITCH)
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
  fiber.stack = stack;
  fiber.stack_size = size;
}
#else
inline void start_fiber(FiberContext& fiber, char* stack, size_t size, void (*entry)()) {
  getcontext(&fiber.context);
  fiber.context.uc_stack.ss_sp = stack;
  fiber.context.uc_stack.ss_size = size;
  fiber.context.uc_link = nullptr;  // entry never returns
  makecontext(&fiber.context, entry, 0);
  fiber.stack = stack;
  fiber.stack_size = size;
}
#endif

// `exits`: `from` is never resumed (ASan then drops its fake stack). ASan is told of every
// switch, with either mechanism: on its own it follows swapcontext only in part (it warns of
// false positives) and our stack switch not at all.
inline void switch_fiber(FiberContext& from, FiberContext& to, bool exits = false) {
#if defined(SUPERTHOUGHTS_EMULATION_ASAN)
  __sanitizer_start_switch_fiber(exits ? nullptr : &from.fake_stack, to.stack, to.stack_size);
#endif
#if defined(SUPERTHOUGHTS_EMULATION_STACK_SWITCH)
  superthoughts_emulation_switch(&from.sp, to.sp);
#else
  swapcontext(&from.context, &to.context);
#endif
#if defined(SUPERTHOUGHTS_EMULATION_ASAN)
  __sanitizer_finish_switch_fiber(from.fake_stack, nullptr, nullptr);
#endif
  (void)exits;
}

// First thing a fiber's entry does: completes the switch that started it, and records the
// stack of the context that switched (the scheduler's thread stack) for the switches back.
inline void fiber_started(FiberContext& caller) {
#if defined(SUPERTHOUGHTS_EMULATION_ASAN)
  __sanitizer_finish_switch_fiber(nullptr, &caller.stack, &caller.stack_size);
#endif
  (void)caller;
}

}  // namespace superthoughts::emulation
