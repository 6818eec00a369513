"""superthoughts_ext: SuperThoughts two-token latent chain-of-thought for Hugging Face LMs.

Pure-Python parts (reference, modeling, data, evaluation) import without the compiled core;
the ops load `superthoughts_ext._C` on first use.
"""
from __future__ import annotations

import importlib

__version__ = "0.1.0"


REBUILD = "rebuild it against this torch: pip install --no-build-isolation ."


def load_core():
    """The compiled core `superthoughts_ext._C` (loading it registers the ops), refused with
    a message saying so when it was built against another torch release than the installed one:
    torch's C++ ABI changes between releases, and a mismatch ends in an `undefined symbol` or,
    worse, a crash inside a kernel."""
    import torch  # loads libtorch, which _C links against

    try:
        from superthoughts_ext import _C
    except ImportError as error:
        if error.name in ("superthoughts_ext._C", "superthoughts_ext") and "_C" in str(error):
            raise ImportError("superthoughts_ext._C, the compiled core, is not built here; build it with "
                              "`pip install --no-build-isolation -e .` in the source checkout (or `make build`). "
                              "Without it the pure-Python parts work, and generate(..., use_kernels=False)") from error
        if "undefined symbol" in str(error):
            raise ImportError(f"superthoughts_ext._C does not match the installed torch {torch.__version__} "
                              f"({error}); {REBUILD}") from error
        raise
    built, installed = _C.torch_version.split(".")[:2], torch.__version__.split(".")[:2]
    if built != installed:
        raise ImportError(f"superthoughts_ext._C was built against torch {_C.torch_version}, but torch "
                          f"{torch.__version__} is installed; {REBUILD}")
    return _C


def build_info() -> dict[str, object]:
    """How the compiled core was built: package and torch versions, CUDA on/off, CUDA archs,
    whether OpenMP was on (the CPU kernel's at::parallel_for is serial without it), the
    vector instruction set the CPU kernel runs with on this machine (`cpu_vector_isa`), and
    the 16-bit types this CPU multiplies in hardware (`cpu_16bit_matmul`: the CPU kernel hands
    their larger merge projections, bf16 from 3 rows and fp16 from 9, to torch's GEMM, which is
    then the faster one)."""
    _C = load_core()
    return {
        "version": _C.version,
        "torch_version": _C.torch_version,
        "with_cuda": bool(_C.with_cuda),
        "cuda_archs": _C.cuda_archs,
        "openmp": bool(_C.openmp),
        "cpu_vector_isa": _C.cpu_vector_isa(),
        "cpu_16bit_matmul": list(_C.cpu_16bit_matmul()),
    }


def __getattr__(name: str):
    # Lazy public API: keeps `import superthoughts_ext` cheap and usable before a build.
    if name == "superthoughts_step":
        from superthoughts_ext.ops import superthoughts_step

        return superthoughts_step
    if name == "superthoughts_step_ref":
        from superthoughts_ext.reference import superthoughts_step_ref

        return superthoughts_step_ref
    if name in ("generate", "GenerateOutput", "ContextStopWarning"):
        # importlib, not `from superthoughts_ext import generate`: that asks this package for the
        # attribute first, which lands here again before the submodule exists. The module itself
        # is callable as generate() (importing it binds it onto this package anyway).
        generate_module = importlib.import_module("superthoughts_ext.generate")
        return generate_module if name == "generate" else getattr(generate_module, name)
    if name in ("SuperThoughtsConfig", "SuperThoughtsForCausalLM"):
        from superthoughts_ext import modeling

        return getattr(modeling, name)
    raise AttributeError(f"module 'superthoughts_ext' has no attribute {name!r}")


__all__ = [
    "ContextStopWarning",
    "GenerateOutput",
    "SuperThoughtsConfig",
    "SuperThoughtsForCausalLM",
    "build_info",
    "generate",
    "superthoughts_step",
    "superthoughts_step_ref",
    "__version__",
]
