"""superthoughts_ext: SuperThoughts two-token latent chain-of-thought for Hugging Face LMs."""
from __future__ import annotations

__version__ = "0.1.0"

from superthoughts_ext import _C
from superthoughts_ext.ops import superthoughts_step
from superthoughts_ext.reference import superthoughts_step_ref

BUILD_INFO = {
    "version": _C.version,
    "torch_version": _C.torch_version,
    "with_cuda": _C.with_cuda,
    "cuda_archs": _C.cuda_archs,
}

__all__ = ["BUILD_INFO", "superthoughts_step", "superthoughts_step_ref", "__version__"]
