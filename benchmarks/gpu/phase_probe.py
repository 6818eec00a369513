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
        [--dtype fp32 bf16] [--output $OUT/phase_probe.json]

Exit status: 0 ok, 1 a correctness check (or a launch) failed, 2 no CUDA GPU, 3 nvcc failed.
"""
from __future__ import annotations

import argparse
import ctypes
import json
import os
import shutil
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
import bench_step  # noqa: E402  (the benchmark's input recipe)

SOURCE = Path(__file__).resolve().with_name("phase_probe.cu")
DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
MERGE_PATHS = {"auto": -1, "gemv": 1, "mma": 2}  # csrc/kernels/step_vocab.cuh MergePath
DTYPE_NAMES = {dtype: name for name, dtype in DTYPES.items()}
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # phase_probe.cu DtypeCode
PAD, EOS, THRESHOLD = 0, 2, 0.9  # bench_step.py's arguments
# Tolerances: conf as python_tests/test_step.py, next_in as bench_step.py for these shapes.
CONF_TOL = (1e-5, 1e-6)
NEXT_IN_TOL = {torch.float32: 1e-4, torch.bfloat16: 2e-2, torch.float16: 2e-3}

# phase_probe.cu's Variant: (number, key, description), in the order of the tables.
VARIANTS = [
    (6, "empty_normal", "empty kernel, <<<>>> launch"),
    (1, "empty_coop", "empty kernel, cooperative"),
    (9, "empty_smem_coop", "empty + 33 KB smem, cooperative"),
    (2, "sync_coop", "grid.sync only"),
    (3, "prefetch_coop", "phase 0: W prefetch only"),
    (4, "reduce_coop", "phase 1: reduce_vocab + sync"),
    (7, "phases01_coop", "phases 0-1 + sync"),
    (8, "phases012_coop", "phases 0-2 (no merge)"),
    (5, "real", "real kernel (launch_superthoughts_step)"),
    (0, "instrumented", "instrumented kernel (stamps)"),
]
INSTRUMENTED, REAL = 0, 5
STAMPS = ["entry", "prefetch", "reduce_vocab", "grid_sync", "write_rows", "merge"]
MODES = ["eager", "queued_warm", "queued_cold", "graph"]
MODE_HELP = {
    "eager": "launch, then sync, each time: host submission inside the events",
    "queued_warm": "queued behind a 50 us spin kernel (device time only), same inputs every time (L2 warm)",
    "queued_cold": "as queued_warm after writing a 256 MB buffer (L2 evicted)",
    "graph": "CUDA graph of 20 back-to-back launches (L2 warm), time per launch",
}
STAMP_MODES = ["queued_warm", "queued_cold", "graph"]
SPIN_NS = 50_000
FLUSH_BYTES = 256 * 2**20
GRAPH_LAUNCHES, GRAPH_REPLAYS, WARMUP = 20, 10, 5


# ---- the library -------------------------------------------------------------------------

class ProbeInputs(ctypes.Structure):
    """Mirror of phase_probe.cu's ProbeInputs (int64 and double only: no padding)."""

    _fields_ = [
        ("logits_dtype", ctypes.c_int64), ("embed_dtype", ctypes.c_int64),
        ("logits", ctypes.c_void_p), ("logits_head_stride", ctypes.c_int64), ("logits_row_stride", ctypes.c_int64),
        ("embed", ctypes.c_void_p), ("embed_row_stride", ctypes.c_int64),
        ("weight", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("finished", ctypes.c_void_p),
        ("batch", ctypes.c_int64), ("vocab", ctypes.c_int64), ("hidden", ctypes.c_int64),
        ("pad_id", ctypes.c_int64), ("eos_id", ctypes.c_int64),
        ("threshold", ctypes.c_double), ("threshold_main", ctypes.c_double), ("temperature", ctypes.c_double),
        ("seed", ctypes.c_int64), ("offset", ctypes.c_int64),
        ("tokens", ctypes.c_void_p), ("n_new", ctypes.c_void_p), ("conf", ctypes.c_void_p),
        ("next_in", ctypes.c_void_p), ("merge_path", ctypes.c_int64),
    ]


def nvcc_path(explicit: str | None) -> str:
    for candidate in (explicit, shutil.which("nvcc"), "/usr/local/cuda/bin/nvcc"):
        if candidate and Path(candidate).exists():
            return candidate
    raise FileNotFoundError("nvcc not found (pass --nvcc)")


def default_arch() -> str:
    major, minor = torch.cuda.get_device_capability()
    # sm_90a: the arch-specific Hopper target the extension builds for (session.sh).
    return "sm_90a" if (major, minor) == (9, 0) else f"sm_{major}{minor}"


def build_library(nvcc: str, arch: str, build_dir: Path) -> tuple[Path, float]:
    """Compiles phase_probe.cu into build_dir; returns the .so path and the seconds it took."""
    lib = build_dir / "phase_probe.so"
    cmd = [nvcc, "-O3", "-std=c++20", f"-arch={arch}", "-shared", "-Xcompiler", "-fPIC",
           "--expt-relaxed-constexpr", str(SOURCE), "-o", str(lib)]
    start = time.perf_counter()
    result = subprocess.run(cmd, capture_output=True, text=True)
    seconds = time.perf_counter() - start
    if result.returncode != 0:
        print(" ".join(cmd), file=sys.stderr)
        print(result.stdout + result.stderr, file=sys.stderr)
        raise RuntimeError(f"nvcc failed with status {result.returncode}")
    return lib, seconds


class Probe:
    """ctypes wrapper of phase_probe.so; every call raises on a CUDA error."""

    def __init__(self, path: Path):
        lib = ctypes.CDLL(str(path))
        inputs_p, i64_p = ctypes.POINTER(ProbeInputs), ctypes.POINTER(ctypes.c_int64)
        signatures = {
            "probe_num_variants": [], "probe_num_stamps": [], "probe_inputs_size": [],
            "probe_versions": [ctypes.POINTER(ctypes.c_int)],
            "probe_workspace_bytes": [inputs_p, ctypes.POINTER(ctypes.c_size_t)],
            "probe_plan": [inputs_p, i64_p],
            "probe_kernel_attrs": [ctypes.c_int, ctypes.c_int64, ctypes.c_int64, i64_p],
            "probe_run": [ctypes.c_int, inputs_p, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p, ctypes.c_void_p],
            "probe_spin": [ctypes.c_uint64, ctypes.c_void_p],
            "probe_timer_resolution": [ctypes.c_void_p, ctypes.c_int, ctypes.c_void_p],
        }
        for name, argtypes in signatures.items():
            getattr(lib, name).argtypes = argtypes
            getattr(lib, name).restype = ctypes.c_int
        lib.probe_error_string.argtypes = [ctypes.c_int]
        lib.probe_error_string.restype = ctypes.c_char_p
        self.lib = lib
        if lib.probe_inputs_size() != ctypes.sizeof(ProbeInputs):
            raise RuntimeError(f"ProbeInputs is {lib.probe_inputs_size()} bytes in C, "
                               f"{ctypes.sizeof(ProbeInputs)} in the ctypes mirror")
        if lib.probe_num_stamps() != len(STAMPS) or lib.probe_num_variants() != len(VARIANTS):
            raise RuntimeError("phase_probe.cu and phase_probe.py disagree on stamps or variants")

    def check(self, err: int, what: str) -> None:
        if err != 0:
            raise RuntimeError(f"{what}: CUDA error {err} ({self.lib.probe_error_string(err).decode()})")

    def versions(self) -> dict:
        out = (ctypes.c_int * 2)()
        self.check(self.lib.probe_versions(out), "probe_versions")
        return {"probe_cuda_runtime": out[0], "cuda_driver": out[1]}

    def plan(self, inputs: ProbeInputs) -> dict:
        out = (ctypes.c_int64 * 7)()
        self.check(self.lib.probe_plan(ctypes.byref(inputs), out), "probe_plan")
        keys = ["grid", "range", "seg_max", "group", "merge_path", "embed_vec", "workspace_bytes"]
        plan = dict(zip(keys, out))
        plan["merge_path"] = ["copy", "gemv", "mma"][plan["merge_path"]]
        return plan

    def kernel_attrs(self, variant: int, dtype: torch.dtype) -> dict:
        out = (ctypes.c_int64 * 4)()
        code = DTYPE_CODES[dtype]
        self.check(self.lib.probe_kernel_attrs(variant, code, code, out), "probe_kernel_attrs")
        return dict(zip(["registers", "local_bytes", "static_smem_bytes", "blocks_per_sm"], out))

    def run(self, variant: int, inputs: ProbeInputs, workspace: torch.Tensor, stamps_ptr: int = 0) -> None:
        err = self.lib.probe_run(variant, ctypes.byref(inputs), workspace.data_ptr(), workspace.numel(),
                                 stamps_ptr or None, torch.cuda.current_stream().cuda_stream)
        self.check(err, f"probe_run(variant {variant})")

    def spin(self, ns: int) -> None:
        self.check(self.lib.probe_spin(ns, torch.cuda.current_stream().cuda_stream), "probe_spin")

    def timer_resolution(self, reads: int = 200_000) -> dict:
        out = torch.zeros(3, dtype=torch.int64, device="cuda")
        self.check(self.lib.probe_timer_resolution(out.data_ptr(), reads, torch.cuda.current_stream().cuda_stream),
                   "probe_timer_resolution")
        min_step, steps, span = out.tolist()
        return {"min_step_ns": min_step if steps else None, "steps": steps, "span_ns": span,
                "mean_step_ns": span / steps if steps else None}


# ---- one configuration -------------------------------------------------------------------

def make_inputs(batch, vocab, hidden, dtype):
    """bench_step.py's inputs, on CUDA."""
    return bench_step.make_inputs(batch, vocab, hidden, dtype, torch.device("cuda"))


class Case:
    """Inputs, outputs, workspace and the ProbeInputs of one configuration. Each launch i of
    a timed run gets its own `finished` row (finished_pool[i]), zeroed before the run, so that
    a row that emits EOS cannot make later launches skip it."""

    def __init__(self, probe: Probe, batch: int, vocab: int, hidden: int, dtype: torch.dtype, pool: int,
                 merge_path: str = "auto"):
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
            next_in=self.next_in.data_ptr(), merge_path=MERGE_PATHS[merge_path])
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
        return f"{DTYPE_NAMES[self.dtype]} H={self.hidden} B={self.batch} merge={self.plan['merge_path']}"


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


# ---- stamp analysis ----------------------------------------------------------------------

def med(values: torch.Tensor) -> float:
    return values.double().median().item()


def phase_summary(stamps: torch.Tensor, back_to_back: bool) -> dict:
    """stamps [launches, grid, 6] globaltimer ns -> microseconds.

    end_us[k]: median over launches of (last block past stamp k) - (first block entry): the
    wall time of one launch up to the end of phase k. step_us[k]: end_us[k] - end_us[k-1].
    block_median_us / block_max_us[k]: time one block spends between stamps k-1 and k
    (median over launches of the median / max over blocks).
    """
    if (stamps == 0).any():
        return {"error": f"{int((stamps == 0).sum())} stamps not written"}
    # Subtract in int64 first: ~1.7e18 ns do not fit a double's mantissa at ns resolution.
    rel = stamps - stamps[:, :, 0].min(dim=1).values.view(-1, 1, 1)
    last = rel.max(dim=1).values  # [launches, 6]
    first = rel.min(dim=1).values
    end = [med(last[:, k]) / 1e3 for k in range(len(STAMPS))]
    per_block = (rel[:, :, 1:] - rel[:, :, :-1]).double()
    out = {
        "launches": stamps.shape[0],
        "entry_skew_us": med(last[:, 0]) / 1e3,
        "end_us": dict(zip(STAMPS, end)),
        "step_us": {STAMPS[k]: end[k] - (end[k - 1] if k else 0.0) for k in range(len(STAMPS))},
        "block_median_us": {STAMPS[k + 1]: med(per_block[:, :, k].median(dim=1).values) / 1e3 for k in range(5)},
        "block_max_us": {STAMPS[k + 1]: med(per_block[:, :, k].max(dim=1).values) / 1e3 for k in range(5)},
        # First block out of the barrier minus last block into it.
        "barrier_release_us": med(first[:, 3] - last[:, 2]) / 1e3,
        "wall_us": end[-1],
    }
    if back_to_back and stamps.shape[0] > 1:
        entry = stamps[:, :, 0].min(dim=1).values
        exit_ = stamps[:, :, 5].max(dim=1).values
        out["gap_to_next_launch_us"] = med(entry[1:] - exit_[:-1]) / 1e3
        out["launch_period_us"] = med(entry[1:] - entry[:-1]) / 1e3
    return out


# ---- report ------------------------------------------------------------------------------

def fmt(value, width: int = 9) -> str:
    return f"{value:{width}.1f}" if isinstance(value, (int, float)) else f"{'-':>{width}}"


def print_config(row: dict) -> None:
    plan = row["plan"]
    regs = {k: row.get("kernels", {}).get(k, {}) for k in ("real", "instrumented")}
    regs_text = "/".join(f"{r.get('registers', '?')}r{'+spill' if r.get('local_bytes') else ''}" for r in regs.values())
    print(f"\n== {row['label']}: grid {plan['grid']}, range {plan['range']}, seg_max {plan['seg_max']}, "
          f"merge {plan['merge_path']}, registers real/instrumented {regs_text}; "
          f"check {'ok' if not row['errors'] else 'FAILED'} (vs op: {row['check'].get('vs_op') or 'not run'})")
    print(f"   {'variant (us, median)':<42}" + "".join(f"{m:>13}" for m in MODES))
    for _, key, label in VARIANTS:
        times = row["variants"].get(key, {})
        print(f"   {label:<42}" + "".join(f"{fmt(times.get(m), 13)}" for m in MODES))
    phases = row.get("phases", {})
    if not phases:
        return
    print(f"   {'instrumented: us since first block entry':<42}" + "".join(f"{m:>13}" for m in STAMP_MODES))
    for k, name in enumerate(STAMPS):
        cells = []
        for m in STAMP_MODES:
            p = phases.get(m)
            ok = p is not None and "end_us" in p
            cells.append(f"{p['end_us'][name]:6.1f} +{p['step_us'][name]:5.1f}" if ok else f"{'-':>13}")
        label = "entry (last block in)" if k == 0 else f"after {name}"
        print(f"   {label:<42}" + "".join(f"{c:>13}" for c in cells))
    for key, label in [("barrier_release_us", "barrier release (first out - last in)"),
                       ("gap_to_next_launch_us", "graph: last block out -> next launch in")]:
        print(f"   {label:<42}" + "".join(fmt(phases.get(m, {}).get(key), 13) for m in STAMP_MODES))
    outside = {m: row["variants"]["instrumented"].get(m) for m in STAMP_MODES}
    print(f"   {'event time - stamped wall (launch + drain)':<42}" + "".join(
        fmt(outside[m] - phases[m]["wall_us"]
            if outside[m] is not None and "wall_us" in phases.get(m, {}) else None, 13) for m in STAMP_MODES))


def print_summary(rows: list[dict]) -> None:
    print("\n== summary (us). real/empty/sync: graph mode (queued_cold for real in brackets); "
          "phases: step times of the instrumented kernel, queued_cold")
    head = ["config", "real", "[cold]", "empty", "e.coop", "sync", "skew", "prefet", "reduce", "g.sync",
            "write", "merge", "wall", "outside"]
    print(f"{head[0]:<24}" + "".join(f"{h:>8}" for h in head[1:]))
    for row in rows:
        v, p = row["variants"], row.get("phases", {}).get("queued_cold", {})
        cells = [v.get("real", {}).get("graph"), v.get("real", {}).get("queued_cold"),
                 v.get("empty_normal", {}).get("graph"), v.get("empty_coop", {}).get("graph"),
                 v.get("sync_coop", {}).get("graph"), p.get("entry_skew_us")]
        cells += [p.get("step_us", {}).get(s) for s in STAMPS[1:]]
        inst = v.get("instrumented", {}).get("queued_cold")
        cells += [p.get("wall_us"), inst - p["wall_us"] if inst is not None and "wall_us" in p else None]
        print(f"{row['label']:<24}" + "".join(fmt(c, 8) for c in cells))


# ---- main --------------------------------------------------------------------------------

def git_commit() -> str:
    try:
        out = subprocess.run(["git", "rev-parse", "--short", "HEAD"], cwd=REPO, capture_output=True,
                             text=True, timeout=10)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


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


def run_config(probe: Probe, batch, vocab, hidden, dtype, args, ext_step, flush) -> dict:
    case = Case(probe, batch, vocab, hidden, dtype, pool=max(args.iters, GRAPH_LAUNCHES, WARMUP),
                merge_path=args.merge_path)
    row = {"label": case.label(), "batch": batch, "vocab": vocab, "hidden": hidden,
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
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--batch", type=int, nargs="+", default=[1, 8, 64, 256])
    parser.add_argument("--vocab", type=int, default=151936)
    parser.add_argument("--hidden", type=int, nargs="+", default=[1536, 3584])
    parser.add_argument("--dtype", nargs="+", choices=sorted(DTYPES), default=["bf16", "fp32"])
    parser.add_argument("--merge-path", choices=sorted(MERGE_PATHS), default="auto",
                        help="force the merge projection's path (GEMV or tensor cores) to compare them")
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
              "arch": args.arch or default_arch(), "modes": MODE_HELP, "stamps": STAMPS,
              "variants": {key: label for _, key, label in VARIANTS}, "rows": [], "skipped": [], "errors": []}
    with tempfile.TemporaryDirectory(prefix="phase_probe_") as build_dir:
        try:
            lib, result["build_s"] = build_library(nvcc, result["arch"], Path(build_dir))
        except RuntimeError as exc:
            print(f"phase_probe: {exc}", file=sys.stderr)
            return 3
        print(f"phase_probe: built {SOURCE.name} for {result['arch']} in {result['build_s']:.0f} s "
              f"({result['nvcc']}) on {result['device']}, commit {result['commit']}", flush=True)
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
    configs = [(DTYPES[d], h, b) for d in args.dtype for h in args.hidden for b in args.batch]
    for dtype, hidden, batch in configs:
        if result["rows"] and time.perf_counter() - start > args.max_seconds:
            result["skipped"].append(f"{DTYPE_NAMES[dtype]} H={hidden} B={batch}")
            continue
        row = run_config(probe, batch, args.vocab, hidden, dtype, args, ext_step, flush)
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
