"""Build and call the CUDA step kernel compiled for the CPU (csrc/emulation/).

The same kernel source that nvcc compiles for the GPU, built with g++ against the CUDA
toolkit's headers (for the bf16/fp16 types), with blocks as OS threads and CUDA threads as
fibers. `emulated_step` mirrors what csrc/cuda/step.cu does around the launch: allocate the
outputs, fill the parameter struct, launch on `grid` blocks.
"""
from __future__ import annotations

import ctypes
import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

import torch

from superthoughts_ext.reference import MIN_SAMPLING_TEMPERATURE

ROOT = Path(__file__).resolve().parents[1]
SOURCES = [ROOT / "csrc/emulation/emulated_step.cpp", ROOT / "csrc/emulation/cuda_emulation.cpp"]
HEADERS = [*sorted((ROOT / "csrc/kernels").glob("*.cuh")), *sorted((ROOT / "csrc/kernels").glob("*.h")),
           *sorted((ROOT / "csrc/emulation").glob("*.h"))]
DTYPE_CODES = {torch.float32: 0, torch.float16: 1, torch.bfloat16: 2}


class StepParams(ctypes.Structure):
    """Mirror of superthoughts::cuda_step::StepParams (csrc/kernels/step_vocab.cuh), field for field."""

    _fields_ = [
        ("logits", ctypes.c_void_p), ("logits_head_stride", ctypes.c_int64), ("logits_row_stride", ctypes.c_int64),
        ("embed", ctypes.c_void_p), ("embed_row_stride", ctypes.c_int64),
        ("weight", ctypes.c_void_p), ("bias", ctypes.c_void_p), ("finished", ctypes.c_void_p),
        ("batch", ctypes.c_int64), ("vocab", ctypes.c_int64), ("hidden", ctypes.c_int64),
        ("pad_id", ctypes.c_int64), ("eos_id", ctypes.c_int64),
        ("threshold", ctypes.c_float), ("threshold_main", ctypes.c_float), ("temperature", ctypes.c_float),
        ("sample", ctypes.c_bool), ("seed", ctypes.c_uint64), ("offset", ctypes.c_uint64),
        ("row_seeds", ctypes.c_void_p), ("tokens", ctypes.c_void_p), ("n_new", ctypes.c_void_p), ("conf", ctypes.c_void_p),
        ("next_in", ctypes.c_void_p), ("workspace", ctypes.c_void_p),
        ("grid", ctypes.c_int), ("range", ctypes.c_int64), ("seg_max", ctypes.c_int64), ("group", ctypes.c_int),
        ("merge_path", ctypes.c_int), ("embed_vec", ctypes.c_bool),
    ]


def cuda_include_dir() -> Path | None:
    """The CUDA toolkit's include folder (for cuda_bf16.h), or None when there is no toolkit."""
    candidates = [os.environ.get("CUDA_HOME"), os.environ.get("CUDA_PATH")]
    nvcc = shutil.which("nvcc")
    if nvcc:
        candidates.append(str(Path(nvcc).resolve().parents[1]))
    candidates.append("/usr/local/cuda")
    for base in filter(None, candidates):
        if (Path(base) / "include/cuda_bf16.h").is_file():
            return Path(base) / "include"
    return None


def build(out_dir: Path, sanitize: bool = False, ucontext: bool = False) -> ctypes.CDLL:
    """Compiles the emulated kernel into out_dir (reused while the sources are unchanged).

    sanitize: with AddressSanitizer and UBSan (the process must preload libasan, see
    test_step_cuda_memcheck.py): every out-of-bounds read or write of the kernel then aborts.
    ucontext: fibers switch with swapcontext, as off x86-64 (csrc/emulation/fiber_switch.h)."""
    include = cuda_include_dir()
    if include is None:
        raise FileNotFoundError("no CUDA toolkit headers (cuda_bf16.h) under CUDA_HOME, nvcc's folder or /usr/local/cuda")
    cxx = os.environ.get("CXX", "g++")
    flags = (["-O1", "-g", "-fsanitize=address,undefined", "-fno-sanitize-recover=all", "-fno-omit-frame-pointer"]
             if sanitize else ["-O2"]) + (["-DSUPERTHOUGHTS_EMULATION_UCONTEXT"] if ucontext else [])
    key = b"".join(p.read_bytes() for p in SOURCES + HEADERS) + " ".join([cxx, *flags, str(include)]).encode()
    path = out_dir / f"libstep_emulated_{hashlib.sha256(key).hexdigest()[:16]}.so"
    if not path.exists():
        partial = path.with_suffix(f".{os.getpid()}.tmp")  # renamed when complete: parallel runs never load half a file
        command = [cxx, "-std=c++20", *flags, "-shared", "-fPIC", "-pthread", f"-I{include}",
                   *map(str, SOURCES), "-o", str(partial)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            raise RuntimeError(f"building the emulated CUDA kernel failed:\n{' '.join(command)}\n{result.stderr[-6000:]}")
        partial.replace(path)
    lib = ctypes.CDLL(str(path))
    lib.superthoughts_step_params_size.restype = ctypes.c_size_t
    lib.superthoughts_step_emulated.restype = ctypes.c_char_p
    lib.superthoughts_step_emulated.argtypes = [ctypes.POINTER(StepParams), ctypes.c_int, ctypes.c_int, ctypes.c_int,
                                                ctypes.c_uint64]
    lib.superthoughts_emulation_ldg_check.restype = ctypes.c_char_p
    lib.superthoughts_emulation_ldg_check.argtypes = [ctypes.c_int]
    lib.superthoughts_emulation_fiber_switch.restype = ctypes.c_char_p
    lib.superthoughts_gumbel_table.restype = None
    lib.superthoughts_gumbel_table.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
    size = lib.superthoughts_step_params_size()
    if size != ctypes.sizeof(StepParams):
        raise RuntimeError(f"StepParams mirror is {ctypes.sizeof(StepParams)} bytes, the kernel's is {size}: update it")
    return lib


@functools.cache
def library() -> ctypes.CDLL:
    """The emulated kernel, built once per source version in the temp folder; sanitized when
    SUPERTHOUGHTS_EMULATION_SANITIZE=1, with ucontext fibers when SUPERTHOUGHTS_EMULATION_UCONTEXT=1."""
    out_dir = Path(tempfile.gettempdir()) / "superthoughts_cuda_emulation"
    out_dir.mkdir(exist_ok=True)
    return build(out_dir, sanitize=os.environ.get("SUPERTHOUGHTS_EMULATION_SANITIZE") == "1",
                 ucontext=os.environ.get("SUPERTHOUGHTS_EMULATION_UCONTEXT") == "1")


def emulated_step(logits, embed, merge_weight, merge_bias, finished, pad_id, eos_id, threshold,
                  threshold_main=0.0, temperature=0.0, seed=0, offset=0, *, row_seeds=None, grid: int,
                  schedule_seed: int = 0):
    """superthoughts_step through the CUDA kernel on `grid` emulated blocks (CPU tensors in,
    the op's four outputs out; `finished` is updated in place; row_seeds [B] int64 or None, as
    the op takes them). schedule_seed 0 resumes each block's threads in index order after every
    wait, anything else in a reshuffled order."""
    batch, vocab = logits.shape[1], logits.shape[2]
    hidden = embed.shape[1]
    tokens = torch.empty(batch, 2, dtype=torch.long)
    n_new = torch.empty(batch, dtype=torch.int32)
    conf = torch.empty(batch, 2, dtype=torch.float32)
    next_in = torch.empty(batch, hidden if merge_weight is not None else 2 * hidden, dtype=embed.dtype)
    if batch == 0:
        return tokens, n_new, conf, next_in
    assert logits.stride(2) == 1 and embed.stride(1) == 1 and finished.is_contiguous()
    assert all(t is None or t.is_contiguous() for t in (merge_weight, merge_bias, row_seeds))
    assert row_seeds is None or (row_seeds.dtype == torch.int64 and row_seeds.shape == (batch,) and seed == 0)
    mask64 = (1 << 64) - 1
    params = StepParams(
        logits=logits.data_ptr(), logits_head_stride=logits.stride(0), logits_row_stride=logits.stride(1),
        embed=embed.data_ptr(), embed_row_stride=embed.stride(0),
        weight=merge_weight.data_ptr() if merge_weight is not None else None,
        bias=merge_bias.data_ptr() if merge_bias is not None else None,
        finished=finished.data_ptr(), batch=batch, vocab=vocab, hidden=hidden, pad_id=pad_id, eos_id=eos_id,
        threshold=threshold, threshold_main=threshold_main, temperature=temperature, sample=temperature >= MIN_SAMPLING_TEMPERATURE,
        seed=seed & mask64, offset=offset & mask64,
        row_seeds=row_seeds.data_ptr() if row_seeds is not None else None, tokens=tokens.data_ptr(), n_new=n_new.data_ptr(),
        conf=conf.data_ptr(), next_in=next_in.data_ptr(),
    )
    error = library().superthoughts_step_emulated(ctypes.byref(params), DTYPE_CODES[logits.dtype],
                                            DTYPE_CODES[embed.dtype], grid, schedule_seed)
    if error is not None:
        raise RuntimeError(f"emulated CUDA step kernel: {error.decode()}")
    return tokens, n_new, conf, next_in


def gumbel_table() -> tuple[torch.Tensor, torch.Tensor]:
    """(exact, bound) [2^23] float32: the host's gumbel_from_word / gumbel_upper_bound (philox.h)
    of every word, indexed by word >> 9."""
    exact, bound = torch.empty(1 << 23), torch.empty(1 << 23)
    library().superthoughts_gumbel_table(exact.data_ptr(), bound.data_ptr())
    return exact, bound


def ldg_check(written_bytes: int) -> str | None:
    """The emulator's error for a launch whose threads __ldg a buffer they write, the first
    `written_bytes` of it declared as written (None: no error)."""
    error = library().superthoughts_emulation_ldg_check(written_bytes)
    return None if error is None else error.decode()
