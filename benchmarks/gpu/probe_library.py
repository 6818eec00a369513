"""The probe library (phase_probe.cu) for phase_probe.py: nvcc build and ctypes wrapper."""
from __future__ import annotations

import ctypes
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

import torch

SOURCE = Path(__file__).resolve().with_name("phase_probe.cu")
KNOBS_HEADER = Path(__file__).resolve().parents[2] / "csrc" / "kernels" / "step_vocab.cuh"
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}  # phase_probe.cu DtypeCode

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
STAMPS = ["entry", "prefetch", "reduce_vocab", "grid_sync", "write_rows", "merge"]


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
        ("next_in", ctypes.c_void_p), ("merge_path", ctypes.c_int64), ("grid", ctypes.c_int64),
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


def tuning_knobs() -> dict[str, int]:
    """The kernel's tuning macros and their defaults, read off step_vocab.cuh's #ifndef blocks."""
    text = KNOBS_HEADER.read_text()
    return {name: int(value) for name, value in
            re.findall(r"#ifndef (SUPERTHOUGHTS_\w+)\n#define \1 (\d+)", text)}


def build_library(nvcc: str, arch: str, build_dir: Path, defines: list[str] = ()) -> tuple[Path, float]:
    """Compiles phase_probe.cu into build_dir; returns the .so path and the seconds it took.

    defines: NAME=VALUE macros for nvcc, e.g. the kernel's tuning knobs
    (SUPERTHOUGHTS_LOGIT_UNROLL=8, see csrc/kernels/step_vocab.cuh)."""
    lib = build_dir / "phase_probe.so"
    cmd = [nvcc, "-O3", "-std=c++20", f"-arch={arch}", "-shared", "-Xcompiler", "-fPIC",
           "--expt-relaxed-constexpr", *[f"-D{d}" for d in defines], str(SOURCE), "-o", str(lib)]
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
