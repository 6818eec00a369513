"""Where one launch of the CUDA step kernel spends its time: phase stamps and ablations.

Builds benchmarks/gpu/phase_probe.cu with nvcc into a temporary folder, loads it with ctypes
and, for every configuration (dtype x H x B, bench_step.py's inputs, V = 151936):

1. Correctness first: the instrumented kernel (the real kernel's body with %globaltimer stamps)
   and the real kernel, both launched by the probe, against superthoughts_step_ref (tokens,
   n_new, finished exact; conf and next_in within tolerance), against each other (bit for
   bit: same code, same grid) and against the compiled op when the extension has CUDA.
2. Timing of each variant (phase_probe.cu's Variant), median of CUDA events, in four modes:
     eager        launch, then sync, each time: host submission included (bench_step's fused_s)
     queued_warm  queued behind a 50 us spin kernel, so the host has submitted the launch before
                  the GPU reaches it: device time only; the same inputs every time, so what fits
                  stays in L2 (50 MB on H100)
     queued_cold  the same after writing a 256 MB buffer, which evicts L2
     graph        one CUDA graph of 20 back-to-back launches (warm L2), time per launch
3. From the instrumented kernel's stamps (queued_warm, queued_cold, graph): per phase, the
   median over launches of (last block done with the phase) - (first block entry), i.e. where
   the wall time inside one launch goes; the spread of block entry times (launch skew); the
   barrier release time; and in graph mode the gap between one launch's last block and the
   next launch's first block (the device-side cost between two cooperative launches).

    python benchmarks/gpu/phase_probe.py [--batch 1 8 64 256] [--hidden 1536 3584]
        [--dtype fp32 bf16] [--grid 0 66 132] [--define SUPERTHOUGHTS_LOGIT_UNROLL=8 ...]
        [--output $OUT/phase_probe.json]

--define builds the probe with other values of the kernel's tuning knobs (macros at the top of
csrc/kernels/step_vocab.cuh); they change no result bit, so the op comparison still holds.

Exit status: 0 ok, 1 a correctness check (or a launch) failed, 2 no CUDA GPU, 3 nvcc failed.
"""
from __future__ import annotations

import argparse
import json
import os
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import torch

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:  # run as a script: make the package importable without PYTHONPATH
    sys.path.insert(0, str(REPO))
sys.path.insert(0, str(REPO / "benchmarks"))
sys.path.insert(0, str(Path(__file__).resolve().parent))  # probe_library, probe_report
import bench_step  # noqa: E402  (the benchmark's input recipe)
from probe_library import (  # noqa: E402
    DTYPE_CODES, SOURCE, STAMPS, VARIANTS, Probe, ProbeInputs, build_library, default_arch, nvcc_path, tuning_knobs)
from probe_report import MODES, STAMP_MODES, fmt, phase_summary, print_config, print_summary  # noqa: E402
from superthoughts_ext.run_info import git_commit  # noqa: E402

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MERGE_PATHS = {"auto": -1, "gemv": 1, "mma": 2}  # csrc/kernels/step_vocab.cuh MergePath
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
PAD, EOS, THRESHOLD = 0, 2, 0.9  # bench_step.py's arguments
# Tolerances: conf as python_tests/test_step.py, next_in as bench_step.py for these shapes.
CONF_TOL = (1e-5, 1e-6)
NEXT_IN_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}

INSTRUMENTED, REAL = 0, 5
MODE_HELP = {
    "eager": "launch, then sync, each time: host submission inside the events",
    "queued_warm": "queued behind a 50 us spin kernel (device time only), same inputs every time (L2 warm)",
    "queued_cold": "as queued_warm after writing a 256 MB buffer (L2 evicted)",
    "graph": "CUDA graph of 20 back-to-back launches (L2 warm), time per launch",
}
SPIN_NS = 50_000
FLUSH_BYTES = 256 * 2**20
GRAPH_LAUNCHES, GRAPH_REPLAYS, WARMUP = 20, 10, 5


# ---- one configuration -------------------------------------------------------------------

def make_inputs(batch, vocab, hidden, dtype):
    """bench_step.py's inputs, on CUDA."""
    return bench_step.make_inputs(batch, vocab, hidden, dtype, torch.device("cuda"))


class Case:
    """Inputs, outputs, workspace and the ProbeInputs of one configuration. Each launch i of
    a timed run gets its own `finished` row (finished_pool[i]), zeroed before the run, so that
    a row that emits EOS cannot make later launches skip it."""

    def __init__(self, probe: Probe, batch: int, vocab: int, hidden: int, dtype: torch.dtype, pool: int,
                 merge_path: str = "auto", grid: int = 0):
        self.batch, self.vocab, self.hidden, self.dtype = batch, vocab, hidden, dtype
        self.logits, self.embed, self.weight, self.bias, self.finished = make_inputs(batch, vocab, hidden, dtype)
        dev = self.logits.device
        self.tokens = torch.empty(batch, 2, dtype=torch.int64, device=dev)
        self.n_new = torch.empty(batch, dtype=torch.int32, device=dev)
        self.conf = torch.empty(batch, 2, dtype=torch.float32, device=dev)
        self.next_in = torch.empty(batch, hidden, dtype=dtype, device=dev)
        self.finished_pool = torch.zeros(pool, batch, dtype=torch.bool, device=dev)
        code = DTYPE_CODES[dtype]
        self.inputs = ProbeInputs(
            logits_dtype=code, embed_dtype=code, logits=self.logits.data_ptr(),
            logits_head_stride=self.logits.stride(0), logits_row_stride=self.logits.stride(1),
            embed=self.embed.data_ptr(), embed_row_stride=self.embed.stride(0),
            weight=self.weight.data_ptr(), bias=self.bias.data_ptr(), finished=self.finished.data_ptr(),
            batch=batch, vocab=vocab, hidden=hidden, pad_id=PAD, eos_id=EOS,
            threshold=THRESHOLD, threshold_main=0.0, temperature=0.0, seed=0, offset=0,
            tokens=self.tokens.data_ptr(), n_new=self.n_new.data_ptr(), conf=self.conf.data_ptr(),
            next_in=self.next_in.data_ptr(), merge_path=MERGE_PATHS[merge_path], grid=grid)
        self.plan = probe.plan(self.inputs)
        self.workspace = torch.empty(self.plan["workspace_bytes"], dtype=torch.uint8, device=dev)
        self.probe = probe

    @property
    def grid(self) -> int:
        return self.plan["grid"]

    def launch(self, variant: int, i: int = 0, stamps: torch.Tensor | None = None) -> None:
        """Launch i of a run: finished row i, stamps[i] when given."""
        self.inputs.finished = self.finished_pool[i].data_ptr()
        self.probe.run(variant, self.inputs, self.workspace, 0 if stamps is None else stamps[i].data_ptr())

    def outputs(self, finished: torch.Tensor) -> dict:
        return {"tokens": self.tokens.clone(), "n_new": self.n_new.clone(), "conf": self.conf.clone(),
                "next_in": self.next_in.clone(), "finished": finished.clone()}

    def run_once(self, variant: int) -> dict:
        """One launch on a fresh finished row; the outputs it wrote. The outputs are poisoned
        first, so that a value the launch failed to write cannot pass for the previous one's."""
        self.finished_pool[0].zero_()
        for t in (self.tokens, self.n_new):
            t.fill_(-7)
        for t in (self.conf, self.next_in):
            t.fill_(float("nan"))
        stamps = self.new_stamps(1) if variant == INSTRUMENTED else None
        self.launch(variant, 0, stamps)
        torch.cuda.synchronize()
        return self.outputs(self.finished_pool[0])

    def new_stamps(self, launches: int) -> torch.Tensor:
        return torch.zeros(launches, self.grid, len(STAMPS), dtype=torch.int64, device=self.logits.device)

    def label(self) -> str:
        return (f"{DTYPE_NAMES[self.dtype]} H={self.hidden} B={self.batch} merge={self.plan['merge_path']} "
                f"grid={self.grid}")


# ---- correctness -------------------------------------------------------------------------

def compare(got: dict, want: dict, dtype: torch.dtype, name: str) -> list[str]:
    """Mismatches of `got` against `want` with the probe's tolerances."""
    errors = []
    for key in ("tokens", "n_new", "finished"):
        if not torch.equal(got[key], want[key]):
            bad = (got[key] != want[key]).nonzero()[:3].tolist()
            errors.append(f"{name}: {key} differ (first at {bad})")
    checks = [("conf", *CONF_TOL), ("next_in", NEXT_IN_TOL[dtype], NEXT_IN_TOL[dtype])]
    for key, rtol, atol in checks:
        try:
            torch.testing.assert_close(got[key], want[key], rtol=rtol, atol=atol)
        except AssertionError as exc:
            detail = " ".join(line.strip() for line in str(exc).splitlines()[1:4])
            errors.append(f"{name}: {key} not close: {detail}")
    return errors


def bitwise_equal(a: dict, b: dict) -> bool:
    return all(torch.equal(a[k], b[k]) for k in a)


def check_case(case: Case, ext_step) -> tuple[list[str], dict]:
    """Instrumented and real kernel (via the probe) against the reference, each other and
    the compiled op. Returns the mismatches and a summary for the JSON."""
    from superthoughts_ext.reference import superthoughts_step_ref

    name = case.label()
    instrumented = case.run_once(INSTRUMENTED)
    real = case.run_once(REAL)
    fin_ref = case.finished.clone()
    ref = superthoughts_step_ref(case.logits, case.embed, case.weight, case.bias, fin_ref,
                                 PAD, EOS, THRESHOLD, 0.0, 0.0, 0, 0)
    want = {"tokens": ref[0], "n_new": ref[1], "conf": ref[2], "next_in": ref[3], "finished": fin_ref}
    errors = compare(instrumented, want, case.dtype, f"{name} instrumented vs reference")
    errors += compare(real, want, case.dtype, f"{name} real vs reference")
    same = bitwise_equal(instrumented, real)
    if not same:
        errors.append(f"{name}: instrumented and real kernel differ bitwise (same code and grid must agree)")
    summary = {"instrumented_equals_real_bitwise": same, "vs_op": None,
               "rows_finished": int(fin_ref.sum()),
               "next_in_max_abs_err": (instrumented["next_in"].float() - want["next_in"].float()).abs().max().item()}
    if ext_step is not None:
        fin_op = case.finished.clone()
        out = ext_step(case.logits, case.embed, case.weight, case.bias, fin_op, PAD, EOS, THRESHOLD)
        op = {"tokens": out[0], "n_new": out[1], "conf": out[2], "next_in": out[3], "finished": fin_op}
        errors += compare(instrumented, op, case.dtype, f"{name} instrumented vs op")
        # Bitwise agreement needs the op's grid to equal the probe's (the op's build flags may
        # change register use); reported, not required.
        summary["vs_op"] = "bitwise equal" if bitwise_equal(instrumented, op) else "close, not bitwise"
    return errors, summary


# ---- timing ------------------------------------------------------------------------------

def median_us(pairs, per: int = 1) -> float:
    return statistics.median(s.elapsed_time(e) for s, e in pairs) * 1e3 / per


def new_events(n: int):
    return [(torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)) for _ in range(n)]


def time_eager(case: Case, variant: int, iters: int, stamps) -> float:
    """Launch and wait each time: host submission is inside the events."""
    case.finished_pool.zero_()
    events = new_events(iters)
    for i, (start, end) in enumerate(events):
        torch.cuda.synchronize()
        start.record()
        case.launch(variant, i, stamps)
        end.record()
    torch.cuda.synchronize()
    return median_us(events)


def time_queued(case: Case, variant: int, iters: int, stamps, flush: torch.Tensor | None) -> float:
    """Each launch queued behind a spin kernel (and an L2 flush when `flush` is given), so the
    events see device time only. One sync at the end: the host stays ahead of the GPU."""
    case.finished_pool.zero_()
    events = new_events(iters)
    for i, (start, end) in enumerate(events):
        if flush is not None:
            flush.zero_()
        case.probe.spin(SPIN_NS)
        start.record()
        case.launch(variant, i, stamps)
        end.record()
    torch.cuda.synchronize()
    return median_us(events)


def time_graph(case: Case, variant: int, stamps) -> tuple[float | None, str | None]:
    """Per-launch time of a CUDA graph of GRAPH_LAUNCHES back-to-back launches; (None, why)
    when the launches cannot be captured. `stamps` end up holding the last replay's."""
    graph = torch.cuda.CUDAGraph()
    try:
        with torch.cuda.graph(graph):
            for i in range(GRAPH_LAUNCHES):
                case.launch(variant, i, stamps)
    except Exception as exc:  # capture refused: report it, the other modes still count
        try:
            torch.cuda.synchronize()
        except Exception:
            pass
        return None, f"{type(exc).__name__}: {str(exc).splitlines()[0][:200]}"
    for _ in range(3):
        case.finished_pool.zero_()
        graph.replay()
    events = new_events(GRAPH_REPLAYS)
    for start, end in events:
        case.finished_pool.zero_()
        start.record()
        graph.replay()
        end.record()
    torch.cuda.synchronize()
    del graph
    return median_us(events, per=GRAPH_LAUNCHES), None


def time_variant(case: Case, variant: int, iters: int, flush: torch.Tensor) -> tuple[dict, dict, str | None]:
    """Median microseconds per mode, the instrumented variant's stamps per mode, and why the
    graph mode failed (or None)."""
    instrumented = variant == INSTRUMENTED
    sizes = {"eager": max(iters, WARMUP), "queued_warm": iters, "queued_cold": iters, "graph": GRAPH_LAUNCHES}
    stamps = {m: case.new_stamps(sizes[m]) if instrumented else None for m in MODES}
    for i in range(WARMUP):
        case.launch(variant, i, stamps["eager"])
    torch.cuda.synchronize()
    times = {
        "eager": time_eager(case, variant, iters, stamps["eager"]),
        "queued_warm": time_queued(case, variant, iters, stamps["queued_warm"], None),
        "queued_cold": time_queued(case, variant, iters, stamps["queued_cold"], flush),
    }
    times["graph"], graph_error = time_graph(case, variant, stamps["graph"])
    if graph_error is not None:
        stamps["graph"] = None
    cpu_stamps = {m: stamps[m].cpu() for m in STAMP_MODES if stamps[m] is not None} if instrumented else {}
    return times, cpu_stamps, graph_error


# ---- main --------------------------------------------------------------------------------

def nvcc_version(nvcc: str) -> str:
    out = subprocess.run([nvcc, "--version"], capture_output=True, text=True)
    return (out.stdout.strip().splitlines() or ["unknown"])[-1]


def load_extension_op():
    """(the compiled op, why not) when the extension is built with CUDA."""
    try:
        import superthoughts_ext

        info = superthoughts_ext.build_info()
        if not info["with_cuda"]:
            return None, "extension built without CUDA"
        from superthoughts_ext.ops import superthoughts_step

        return superthoughts_step, None
    except Exception as exc:  # not built, or built for another torch: the probe works without it
        return None, f"extension not loadable: {str(exc).splitlines()[0][:200]}"


def run_config(probe: Probe, batch, vocab, hidden, dtype, grid, args, ext_step, flush) -> dict:
    case = Case(probe, batch, vocab, hidden, dtype, pool=max(args.iters, GRAPH_LAUNCHES, WARMUP),
                merge_path=args.merge_path, grid=grid)
    row = {"label": case.label(), "batch": batch, "vocab": vocab, "hidden": hidden, "grid": case.grid,
           "dtype": DTYPE_NAMES[dtype], "plan": case.plan}
    row["kernels"] = {key: probe.kernel_attrs(num, dtype) for num, key, _ in VARIANTS}
    row["errors"], row["check"] = check_case(case, ext_step)
    row["variants"], row["phases"], row["graph_errors"] = {}, {}, {}
    for num, key, _ in VARIANTS:
        times, stamps, graph_error = time_variant(case, num, args.iters, flush)
        row["variants"][key] = times
        if graph_error:
            row["graph_errors"][key] = graph_error
        for mode, s in stamps.items():
            row["phases"][mode] = phase_summary(s, back_to_back=mode == "graph")
    return row


def parse_args(argv=None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, nargs="+", default=[1536, 3584])
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"])
    parser.add_argument("--merge-path", choices=sorted(MERGE_PATHS), default="auto",
                        help="force the merge projection's path (GEMV or tensor cores) to compare them")
    parser.add_argument("--grid", type=int, nargs="+", default=[0],
                        help="blocks per launch; 0 = the planner's (every resident block), else at most that")
    parser.add_argument("--define", action="append", default=[], metavar="NAME=VALUE",
                        help="a tuning macro for the probe's build (repeatable), e.g. SUPERTHOUGHTS_GEMV_CHUNKS=2")
    parser.add_argument("--iters", type=int, default=50, help="timed launches per variant and mode (>= 5)")
    parser.add_argument("--output", type=Path,
                        default=Path(os.environ.get("OUT", "gpu_out")) / "phase_probe.json")
    parser.add_argument("--nvcc", default=None, help="nvcc to build with (default: PATH, /usr/local/cuda)")
    parser.add_argument("--arch", default=None, help="nvcc -arch (default: sm_90a on H100/H200)")
    parser.add_argument("--max-seconds", type=float, default=80.0,
                        help="start no new configuration after this many seconds of measuring")
    args = parser.parse_args(argv)
    if args.iters < WARMUP:
        parser.error(f"--iters must be >= {WARMUP}")
    knobs = tuning_knobs()
    for define in args.define:
        name, sep, value = define.partition("=")
        if not (sep and name in knobs and value.isdigit() and int(value) > 0):
            parser.error(f"--define wants KNOB=<positive integer> with KNOB one of {sorted(knobs)}, got {define!r}")
    if min(args.grid) < 0:
        parser.error(f"--grid sizes must be >= 0 (0 = the planner's), got {args.grid}")
    return args


def write_json(result: dict, path: Path) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(result, indent=2) + "\n")


def main(argv=None) -> int:
    args = parse_args(argv)
    if not torch.cuda.is_available():
        print("phase_probe: needs a CUDA GPU (torch.cuda.is_available() is False); nothing measured",
              file=sys.stderr)
        return 2
    try:
        nvcc = nvcc_path(args.nvcc)
    except FileNotFoundError as exc:
        print(f"phase_probe: {exc}", file=sys.stderr)
        return 3
    # A stage timeout sends SIGTERM: leave through `finally`, which writes what was measured.
    signal.signal(signal.SIGTERM, lambda *_: sys.exit(124))
    props = torch.cuda.get_device_properties(0)
    result = {"probe": "phase_probe", "device": torch.cuda.get_device_name(0), "sms": props.multi_processor_count,
              "l2_bytes": getattr(props, "L2_cache_size", None), "torch_version": torch.__version__,
              "torch_cuda": torch.version.cuda, "commit": git_commit(), "nvcc": nvcc_version(nvcc),
              "arch": args.arch or default_arch(), "defines": args.define, "modes": MODE_HELP, "stamps": STAMPS,
              "variants": {key: label for _, key, label in VARIANTS}, "rows": [], "skipped": [], "errors": []}
    with tempfile.TemporaryDirectory(prefix="phase_probe_") as build_dir:
        try:
            lib, result["build_s"] = build_library(nvcc, result["arch"], Path(build_dir), args.define)
        except RuntimeError as exc:
            print(f"phase_probe: {exc}", file=sys.stderr)
            return 3
        print(f"phase_probe: built {SOURCE.name} for {result['arch']} in {result['build_s']:.0f} s "
              f"({result['nvcc']}) on {result['device']}, commit {result['commit']}"
              + (f", defines {' '.join(args.define)}" if args.define else ""), flush=True)
        try:
            return measure(Probe(lib), args, result)
        except Exception as exc:  # a launch error or a crash: keep what was measured
            result["errors"].append(f"aborted: {type(exc).__name__}: {exc}")
            print(f"phase_probe: aborted: {type(exc).__name__}: {exc}", file=sys.stderr)
            return 1
        finally:
            write_json(result, args.output)
            print(f"phase_probe: wrote {args.output}")


def measure(probe: Probe, args, result: dict) -> int:
    result.update(probe.versions())
    result["timer"] = timer = probe.timer_resolution()
    print(f"globaltimer: mean step {fmt(timer['mean_step_ns'], 0)} ns, smallest {timer['min_step_ns']} ns "
          f"over {timer['span_ns'] / 1e3:.0f} us")
    ext_step, why = load_extension_op()
    result["op_check"] = why or "compared with superthoughts_ext.ops.superthoughts_step"
    print(f"op comparison: {result['op_check']}")
    flush = torch.empty(FLUSH_BYTES, dtype=torch.uint8, device="cuda")
    start = time.perf_counter()
    configs = [(DTYPES[d], h, b, g) for d in args.dtype for h in args.hidden for b in args.batch for g in args.grid]
    for dtype, hidden, batch, grid in configs:
        if result["rows"] and time.perf_counter() - start > args.max_seconds:
            result["skipped"].append(f"{DTYPE_NAMES[dtype]} H={hidden} B={batch} grid={grid or 'planned'}")
            continue
        row = run_config(probe, batch, args.vocab, hidden, dtype, grid, args, ext_step, flush)
        result["rows"].append(row)
        result["errors"] += row["errors"]
        print_config(row)
        for why in sorted(set(row["graph_errors"].values())):
            keys = [k for k, w in row["graph_errors"].items() if w == why]
            print(f"   graph capture failed for {', '.join(keys)}: {why}")
        write_json(result, args.output)  # a timeout later keeps this row
        torch.cuda.empty_cache()
    result["measure_s"] = time.perf_counter() - start
    print_summary(result["rows"])
    print(f"\nphase_probe: {len(result['rows'])} configurations in {result['measure_s']:.0f} s"
          + (f"; skipped after --max-seconds {args.max_seconds:.0f}: {', '.join(result['skipped'])}"
             if result["skipped"] else ""))
    if result["errors"]:
        print(f"\nphase_probe: CORRECTNESS FAILED ({len(result['errors'])} mismatches); timings above are "
              "of kernels that disagree with the reference:", file=sys.stderr)
        for line in result["errors"]:
            print("  " + line, file=sys.stderr)
        return 1
    print("phase_probe: all correctness checks passed")
    return 0


if __name__ == "__main__":
    sys.exit(main())
