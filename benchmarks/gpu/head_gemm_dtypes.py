"""The three GEMMs of one linear_cross_entropy chunk under bfloat16 autocast over float32 weights
(`superthoughts train --bf16`): the dtype each one runs in, and each timed in that dtype and in
bfloat16.

Per chunk of n rows (head_losses._LinearCrossEntropy): logits = h @ W.T [n, V], grad_hidden =
grad @ W [n, H], and grad_weight.addmm_(grad.T, h) [V, H]. The first two are out-of-place matmuls,
which autocast runs in bfloat16; the third is in place, which autocast leaves alone, so with
float32 weights it runs in float32 (no TF32 unless torch is told). This records the dtypes the
dispatcher sees (below autocast, so after its casts) and times each GEMM alone, so the float32
GEMM's share of a chunk is known on the device at hand.

    python benchmarks/gpu/head_gemm_dtypes.py                     # GPU: V=151936, H=1536, 441 rows
    python benchmarks/gpu/head_gemm_dtypes.py --output gemms.json
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path
from typing import Callable

import torch
from torch.utils._python_dispatch import TorchDispatchMode

from superthoughts_ext.head_losses import CE_CHUNK_ELEMENTS, linear_cross_entropy

GEMMS = {torch.ops.aten.mm.default: "mm", torch.ops.aten.addmm.default: "addmm",
         torch.ops.aten.addmm_.default: "addmm_"}


class GemmDtypes(TorchDispatchMode):
    """Records (op name, input dtypes) of every mm / addmm / addmm_ dispatched inside it."""

    def __init__(self) -> None:
        super().__init__()
        self.calls: list[tuple[str, tuple[str, ...]]] = []

    def __torch_dispatch__(self, func, types, args=(), kwargs=None):
        if func in GEMMS:
            self.calls.append((GEMMS[func], tuple(str(a.dtype).removeprefix("torch.")
                                                  for a in args if torch.is_tensor(a))))
        return func(*args, **(kwargs or {}))


def chunk_gemm_dtypes(rows: int, vocab: int, hidden: int, device: torch.device) -> list[tuple[str, tuple[str, ...]]]:
    """The GEMMs of one linear_cross_entropy chunk (rows <= its chunk size) with float32 hidden
    and weight under bfloat16 autocast, in call order: [logits, grad_hidden, grad_weight]."""
    g = torch.Generator(device=device).manual_seed(0)
    h = torch.randn(rows, hidden, device=device, generator=g).requires_grad_()
    w = (0.02 * torch.randn(vocab, hidden, device=device, generator=g)).requires_grad_()
    targets = torch.randint(0, vocab, (rows,), device=device, generator=g)
    weights = torch.full((rows,), 1.0 / rows, device=device)
    with torch.autocast(device.type, dtype=torch.bfloat16), GemmDtypes() as mode:
        linear_cross_entropy(h, w, targets, weights)
    return mode.calls


def median_seconds(fn: Callable[[], object], device: torch.device, iters: int) -> float:
    """Median seconds of fn: CUDA events on a GPU, torch.utils.benchmark on a CPU."""
    if device.type != "cuda":
        from torch.utils import benchmark
        timer = benchmark.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
        return timer.blocked_autorange(min_run_time=0.5).median
    fn()
    times = []
    for _ in range(iters):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        fn()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def time_gemms(rows: int, vocab: int, hidden: int, device: torch.device, iters: int) -> dict[str, dict[str, float]]:
    """ms of each chunk GEMM in float32 and in bfloat16, and achieved TFLOP/s."""
    out: dict[str, dict[str, float]] = {}
    flop = 2.0 * rows * vocab * hidden
    for dtype in (torch.float32, torch.bfloat16):
        h = torch.randn(rows, hidden, device=device, dtype=dtype)
        w = torch.randn(vocab, hidden, device=device, dtype=dtype)
        grad = torch.randn(rows, vocab, device=device, dtype=dtype)
        acc = torch.zeros(vocab, hidden, device=device, dtype=dtype)
        name = str(dtype).removeprefix("torch.")
        for gemm, fn in (("logits", lambda: h @ w.t()), ("grad_hidden", lambda: grad @ w),
                         ("grad_weight", lambda: acc.addmm_(grad.t(), h))):
            seconds = median_seconds(fn, device, iters)
            out.setdefault(gemm, {})[f"{name}_ms"] = round(seconds * 1e3, 3)
            out[gemm][f"{name}_tflops"] = round(flop / seconds / 1e12, 3)
    return out


def main() -> int:
    gpu = torch.cuda.is_available()
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--vocab", type=int, default=151936 if gpu else 12800)
    parser.add_argument("--hidden", type=int, default=1536 if gpu else 512)
    parser.add_argument("--rows", type=int, default=None, help="rows of the chunk (default: head_losses' chunk)")
    parser.add_argument("--iters", type=int, default=20, help="timed calls per GEMM on a GPU")
    parser.add_argument("--output", type=Path, default=None)
    args = parser.parse_args()
    device = torch.device("cuda" if gpu else "cpu")
    rows = args.rows or max(1, CE_CHUNK_ELEMENTS // args.vocab)
    calls = chunk_gemm_dtypes(rows, args.vocab, args.hidden, device)
    times = time_gemms(rows, args.vocab, args.hidden, device, args.iters)
    # The chunk as it runs today: the two autocast GEMMs in bfloat16, grad_weight in float32.
    today = times["logits"]["bfloat16_ms"] + times["grad_hidden"]["bfloat16_ms"] + times["grad_weight"]["float32_ms"]
    all_bf16 = sum(t["bfloat16_ms"] for t in times.values())
    report = {"device": torch.cuda.get_device_name() if gpu else "cpu", "torch_version": torch.__version__,
              "threads": torch.get_num_threads(), "rows": rows, "vocab": args.vocab, "hidden": args.hidden,
              "dispatched": [{"op": op, "dtypes": list(dtypes)} for op, dtypes in calls], "gemms": times,
              "chunk_ms_as_run": round(today, 3), "chunk_ms_all_bf16": round(all_bf16, 3)}
    for op, dtypes in calls:
        print(f"dispatched {op}: {', '.join(dtypes)}")
    for gemm, t in times.items():
        print(f"{gemm:>12}: float32 {t['float32_ms']:9.3f} ms ({t['float32_tflops']:.2f} TFLOP/s), "
              f"bfloat16 {t['bfloat16_ms']:9.3f} ms ({t['bfloat16_tflops']:.2f} TFLOP/s)")
    print(f"chunk GEMMs as run under autocast {today:.3f} ms, all in bfloat16 {all_bf16:.3f} ms "
          f"({rows} rows, V={args.vocab}, H={args.hidden})")
    if args.output:
        args.output.write_text(json.dumps(report, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
