"""Microbenchmark of the fused step op vs the eager reference chain vs torch.compile(reference).

Correctness first (every output of the fused op, greedy and sampled, against the reference, for
every configuration), then timing: CPU with torch.utils.benchmark (median of blocked_autorange);
GPU twice, with CUDA events around each call (median; host dispatch included, as an eager caller pays it) and as
device time from replays of a CUDA graph over rotating input copies (what generate()'s graphed
decode step pays; the bandwidth targets use this one). Prints time, achieved GB/s for the bytes the step must move
(both heads' logits + the merge weight + the gathered rows) and, on GPU, % of the measured
device-to-device copy bandwidth. Writes JSON to benchmarks/results/step_<device>.json.

    python benchmarks/bench_step.py [--batch 1 8 64 256] [--hidden 1536 3584] [--dtype fp32 bf16] [--threads 2]
"""
from __future__ import annotations

import argparse
import json
import statistics
from pathlib import Path

import torch
import torch.utils.benchmark as tbench

import superthoughts_ext
from superthoughts_ext.file_writes import replace_text
from superthoughts_ext.reference import superthoughts_step_ref
from superthoughts_ext.run_info import (add_output_arguments, add_threads_argument, apply_threads, device_name, distinct,
                                        git_commit, held_results_file, int_at_least)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
PAD, EOS, THRESHOLD = 0, 2, 0.9


def add_arguments(parser: argparse.ArgumentParser) -> None:
    on_gpu = torch.cuda.is_available()
    parser.add_argument("--batch", type=int_at_least(1), nargs="+", action=distinct(),
                        default=[1, 8, 64, 256] if on_gpu else [1, 8, 64], help="rows B per step")
    # make_inputs masks the EOS logit, so the vocabulary must hold it.
    parser.add_argument("--vocab", type=int_at_least(EOS + 1), default=151936, help="vocabulary size V")
    parser.add_argument("--hidden", type=int_at_least(1), nargs="+", action=distinct(),
                        default=[1536, 3584] if on_gpu else [1536], help="hidden sizes H (1536: 1.5B, 3584: 7B)")
    parser.add_argument("--dtype", nargs="+", action=distinct(), choices=sorted(DTYPES), default=["fp32", "bf16"],
                        metavar="DTYPE", help=f"logits and embedding dtypes ({', '.join(sorted(DTYPES))})")
    parser.add_argument("--no-compile", action="store_true", help="skip torch.compile(reference)")
    add_threads_argument(parser)
    add_output_arguments(parser, "benchmarks/results/step_<device>.json")


def make_inputs(batch, vocab, hidden, dtype, device):
    gen = torch.Generator(device=device).manual_seed(0)
    scale = torch.linspace(0.5, 12.0, batch, device=device).view(1, batch, 1)
    logits = torch.randn(2, batch, vocab, generator=gen, device=device, dtype=dtype) * scale.to(dtype)
    # EOS never wins, so no row finishes and `finished` stays all False over every timed call:
    # the timings need no reset of it (a fill kernel would add its launch to the op's time).
    logits[:, :, EOS] = -1e4
    embed = torch.randn(vocab, hidden, generator=gen, device=device, dtype=dtype)
    weight = torch.randn(hidden, 2 * hidden, generator=gen, device=device, dtype=dtype) / hidden**0.5
    bias = torch.randn(hidden, generator=gen, device=device, dtype=dtype)
    finished = torch.zeros(batch, dtype=torch.bool, device=device)
    return logits, embed, weight, bias, finished


def step_bytes(batch, vocab, hidden, dtype) -> int:
    size = torch.empty((), dtype=dtype).element_size()
    logits = 2 * batch * vocab * size
    weight = (2 * hidden * hidden + hidden) * size
    rows_and_outputs = 2 * batch * hidden * size + batch * hidden * size + batch * (16 + 4 + 8 + 1)
    return logits + weight + rows_and_outputs


def time_fn(fn, device: torch.device) -> float:
    """Median seconds per call."""
    if device.type == "cuda":
        for _ in range(10):
            fn()
        torch.cuda.synchronize()
        samples = []
        for _ in range(100):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            fn()
            end.record()
            torch.cuda.synchronize()
            samples.append(start.elapsed_time(end) / 1e3)
        return statistics.median(samples)
    fn()
    # Timer defaults to one thread; every variant gets the process's full intra-op pool.
    timer = tbench.Timer(stmt="fn()", globals={"fn": fn}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=1.0).median


def graph_time(calls, device: torch.device) -> float | None:
    """Median device seconds per call, from replays of one CUDA graph holding every call once.

    The graph takes host dispatch out of the number (generate() replays the step in a graph
    too), and `calls` go over different input copies so that L2 does not hold the bytes a
    step must move. None when the callable cannot be captured.
    """
    side = torch.cuda.Stream(device)
    side.wait_stream(torch.cuda.current_stream(device))
    with torch.cuda.stream(side):
        for _ in range(3):
            for call in calls:
                call()
    torch.cuda.current_stream(device).wait_stream(side)
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for call in calls:
                call()
    except RuntimeError as exc:  # e.g. a host sync inside the callable
        print(f"  (not capturable: {str(exc).splitlines()[0][:100]})")
        return None
    for _ in range(3):
        graph.replay()
    samples = []
    for _ in range(20):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        graph.replay()
        end.record()
        torch.cuda.synchronize(device)
        samples.append(start.elapsed_time(end) / 1e3 / len(calls))
    del graph
    return statistics.median(samples)


def copy_bandwidth(device: torch.device) -> float | None:
    """Measured device-to-device copy bandwidth in bytes/s (read + write), GPU only."""
    if device.type != "cuda":
        return None
    src = torch.empty(512 * 2**20, dtype=torch.uint8, device=device)
    dst = torch.empty_like(src)
    seconds = time_fn(lambda: dst.copy_(src), device)
    return 2 * src.numel() / seconds


def fused_step():
    """The compiled op, imported when first needed: benchmarks/gpu/phase_probe.py takes this
    file's inputs (make_inputs) also where the extension did not build."""
    from superthoughts_ext.ops import superthoughts_step

    return superthoughts_step


def check_correct(inputs, dtype, step=None, temperatures=(0.0, 1.0)) -> None:
    """`step` (the fused op by default, or the compiled reference) against the eager reference,
    greedy and sampled, at the timed threshold and at 0 (every row takes a pair: the timed
    inputs accept none at B = 1): exact tokens, n_new and updated `finished`, conf to float32
    rounding, next_in to the dtype's tolerance."""
    step = step or fused_step()
    logits, embed, weight, bias, finished = inputs
    tol = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}[dtype]
    batch, hidden = logits.shape[1], embed.shape[1]
    for threshold, temperature in ((t, temperature) for t in (THRESHOLD, 0.0) for temperature in temperatures):
        got_finished, want_finished = finished.clone(), finished.clone()
        got = step(logits, embed, weight, bias, got_finished, PAD, EOS, threshold, 0.0, temperature, 0, 0)
        want = superthoughts_step_ref(logits, embed, weight, bias, want_finished, PAD, EOS, threshold,
                                      0.0, temperature, 0, 0)
        for name, g, w, rtol, atol in (("tokens", got[0], want[0], 0, 0), ("n_new", got[1], want[1], 0, 0),
                                       ("conf", got[2], want[2], 1e-5, 1e-6), ("next_in", got[3], want[3], tol, tol),
                                       ("finished", got_finished, want_finished, 0, 0)):
            # Named, so that a failure says which configuration and output disagreed.
            torch.testing.assert_close(g, w, rtol=rtol, atol=atol, msg=lambda m, name=name: (
                f"bench step: {name} of the checked step != the reference (B={batch}, H={hidden}, "
                f"{str(dtype).removeprefix('torch.')}, threshold {threshold}, temperature {temperature}):\n{m}\n"
                f"{recheck(step, inputs, threshold, temperature, got, want)}"))


def recheck(step, inputs, threshold, temperature, got, want) -> str:
    """After a failed check: whether the step and the reference give the same outputs again, and
    each one's conf against a float64 computation, so a report says which side moved (a
    one-off conf mismatch was once seen on the CPU and never reproduced)."""
    logits, embed, weight, bias, finished = inputs
    args = (PAD, EOS, threshold, 0.0, temperature, 0, 0)
    again = step(logits, embed, weight, bias, finished.clone(), *args)
    want_again = superthoughts_step_ref(logits, embed, weight, bias, finished.clone(), *args)
    exact = torch.softmax(logits.double(), dim=-1).amax(dim=-1).t().to(got[2].device)
    same = [all(torch.equal(a, b) for a, b in zip(first, second)) for first, second in ((got, again), (want, want_again))]
    errors = [(out[2].double() - exact).abs().max().item() for out in (got, want)]
    return (f"rerun: the checked step repeats its outputs: {same[0]}, the reference: {same[1]}; "
            f"max |conf - float64 softmax max|: checked step {errors[0]:.3g}, reference {errors[1]:.3g}")


def bench_config(batch, vocab, hidden, dtype, device, use_compile) -> dict:
    inputs = make_inputs(batch, vocab, hidden, dtype, device)
    logits, embed, weight, bias, finished = inputs
    check_correct(inputs, dtype)
    args = (PAD, EOS, THRESHOLD, 0.0, 0.0, 0, 0)

    superthoughts_step = fused_step()

    def fused():
        return superthoughts_step(logits, embed, weight, bias, finished, *args)

    def eager():
        return superthoughts_step_ref(logits, embed, weight, bias, finished, *args)

    row = {"batch": batch, "vocab": vocab, "hidden": hidden, "dtype": str(dtype).replace("torch.", ""),
           "bytes": step_bytes(batch, vocab, hidden, dtype)}
    row["fused_s"] = time_fn(fused, device)
    row["eager_s"] = time_fn(eager, device)
    if use_compile:
        torch._dynamo.reset()  # a fresh compile per shape instead of hitting the recompile limit
        compiled_ref = torch.compile(superthoughts_step_ref, dynamic=False)
        check_correct(inputs, dtype, compiled_ref, temperatures=(0.0,))  # the timed (greedy) call

        def compiled():
            return compiled_ref(logits, embed, weight, bias, finished, *args)

        row["compiled_s"] = time_fn(compiled, device)
        row["speedup_vs_compiled"] = row["compiled_s"] / row["fused_s"]
    row["speedup_vs_eager"] = row["eager_s"] / row["fused_s"]
    row["fused_gb_s"] = row["bytes"] / row["fused_s"] / 1e9
    if device.type == "cuda":
        row.update(graph_rows(inputs, args, row["bytes"], compiled_ref if use_compile else None, device))
    if bool(finished.any()):
        raise RuntimeError("bench step: a row finished during timing, so later calls skipped it")
    return row


def rotated_copy(inputs, index: int):
    """Another input set for the graph replays: its own logits, merge weight and bias (what a step
    reads in full) but the same embedding table, of which a step reads only 2B rows (a copy per set
    would cost up to 16 x 2 GB for V = 151936, H = 3584 in fp32). The logits are rolled along the
    vocabulary so that each set picks other tokens, and so gathers other embedding rows."""
    logits, embed, weight, bias, finished = inputs
    rolled = logits.roll(shifts=index * 7919, dims=-1)
    rolled[:, :, EOS] = -1e4  # as in make_inputs: no row may finish during the replays
    return rolled, embed, weight.clone(), bias.clone(), finished.clone()


def graph_rows(inputs, args, step_bytes_: int, compiled_ref, device: torch.device) -> dict:
    """Device time per step (CUDA-graph replay over rotating input copies, ~256 MB in all)."""
    copies = max(1, min(16, -(-256 * 2**20 // step_bytes_)))
    sets = [inputs] + [rotated_copy(inputs, i) for i in range(1, copies)]

    def calls(fn):
        return [lambda s=s: fn(*s, *args) for s in sets]

    out = {"graph_copies": copies, "fused_graph_s": graph_time(calls(fused_step()), device),
           "eager_graph_s": graph_time(calls(superthoughts_step_ref), device)}
    if compiled_ref is not None:
        out["compiled_graph_s"] = graph_time(calls(compiled_ref), device)
    if any(bool(s[4].any()) for s in sets):
        raise RuntimeError("bench step: a row finished during the graph replays")
    fused = out["fused_graph_s"]
    if fused:
        out["fused_graph_gb_s"] = step_bytes_ / fused / 1e9
        for name in ("eager", "compiled"):
            if out.get(f"{name}_graph_s"):
                out[f"graph_speedup_vs_{name}"] = out[f"{name}_graph_s"] / fused
    return out


def main(args: argparse.Namespace) -> dict:
    """Measures every configuration into the results JSON, held by this run alone; returns the report."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    slug = "cuda" if device.type == "cuda" else "cpu"
    with held_results_file(args.output, RESULTS_DIR / f"step_{slug}.json", args.overwrite, "bench step") as out:
        return measure(args, device, out)


def measure(args: argparse.Namespace, device: torch.device, out: Path) -> dict:
    """Every configuration of ``args`` on ``device``, written to ``out`` after each; the report."""
    apply_threads(args)
    copy_bw = copy_bandwidth(device)
    rows = []
    result = {
        "benchmark": "step",
        "device": device_name(device),
        "torch_version": torch.__version__,
        "commit": git_commit(),
        "build": superthoughts_ext.build_info(),
        # CPU times scale with it: a shared machine's figures compare only at the same count.
        "threads": torch.get_num_threads(),
        "copy_bandwidth_gb_s": None if copy_bw is None else copy_bw / 1e9,
        "complete": False,  # True once every configuration ran
        "rows": rows,
    }
    # Hidden size outermost: a run cut short by a time limit (a GPU session stage) has still
    # measured every dtype and batch at the first hidden size (1536, Qwen2.5-Math-1.5B's).
    for hidden in args.hidden:
        for dtype_name in args.dtype:
            for batch in args.batch:
                row = bench_config(batch, args.vocab, hidden, DTYPES[dtype_name], device, not args.no_compile)
                if copy_bw:
                    row["pct_of_copy_bw"] = 100 * row["bytes"] / row["fused_s"] / copy_bw
                    if row.get("fused_graph_s"):
                        row["graph_pct_of_copy_bw"] = 100 * row["bytes"] / row["fused_graph_s"] / copy_bw
                rows.append(row)
                print(format_row(row), flush=True)
                # Written after every configuration: a run stopped by a time limit (a GPU
                # session stage) keeps what it measured.
                replace_text(out, json.dumps(result, indent=2) + "\n")
    result["complete"] = True
    replace_text(out, json.dumps(result, indent=2) + "\n")
    print(f"wrote {out}")
    return result


def format_row(row: dict) -> str:
    text = (f"B={row['batch']:<4} H={row['hidden']:<5} {row['dtype']:<8} fused {row['fused_s'] * 1e6:9.1f} us "
            f"({row['fused_gb_s']:6.1f} GB/s)  eager {row['eager_s'] * 1e6:9.1f} us (x{row['speedup_vs_eager']:.2f})")
    if "compiled_s" in row:
        text += f"  compiled {row['compiled_s'] * 1e6:9.1f} us (x{row['speedup_vs_compiled']:.2f})"
    if "pct_of_copy_bw" in row:
        text += f"  {row['pct_of_copy_bw']:.0f}% of copy bw"
    if row.get("fused_graph_s"):
        text += (f"\n    graph: fused {row['fused_graph_s'] * 1e6:8.1f} us "
                 f"({row.get('graph_pct_of_copy_bw', 0):.0f}% of copy bw)")
        for name in ("eager", "compiled"):
            if row.get(f"{name}_graph_s"):
                text += f"  {name} {row[f'{name}_graph_s'] * 1e6:8.1f} us (x{row[f'graph_speedup_vs_{name}']:.2f})"
    return text


if __name__ == "__main__":
    from superthoughts_ext.cli import HelpFormatter  # shows each flag's default, as `superthoughts bench` does

    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0], formatter_class=HelpFormatter)
    add_arguments(parser)
    main(parser.parse_args())
