"""Runs the CUDA step kernel once per configuration, for Nsight Compute:

    ncu --kernel-name regex:superthoughts_step --section SpeedOfLight python benchmarks/gpu/profile_step.py

Configurations: (batch, hidden, dtype) given as B:H:dtype arguments, default the bench's bf16
B = 1 / 64 / 256 at H = 1536 and fp32 B = 8.
"""
from __future__ import annotations

import sys

import torch

from superthoughts_ext.ops import superthoughts_step

DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}
DEFAULT = ["1:1536:bf16", "64:1536:bf16", "256:1536:bf16", "8:1536:fp32"]


def main(configs: list[str]) -> None:
    for spec in configs:
        batch, hidden, dtype = spec.split(":")
        batch, hidden, dtype = int(batch), int(hidden), DTYPES[dtype]
        logits = torch.randn(2, batch, 151936, device="cuda").to(dtype) * 4
        embed = torch.randn(151936, hidden, device="cuda").to(dtype)
        weight = (torch.randn(hidden, 2 * hidden, device="cuda") / hidden**0.5).to(dtype)
        bias = torch.randn(hidden, device="cuda").to(dtype)
        finished = torch.zeros(batch, dtype=torch.bool, device="cuda")
        superthoughts_step(logits, embed, weight, bias, finished, 0, 2, 0.9)
        torch.cuda.synchronize()
        print(f"ran {spec}", flush=True)


if __name__ == "__main__":
    main(sys.argv[1:] or DEFAULT)
