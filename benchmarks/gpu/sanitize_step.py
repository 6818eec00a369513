"""Drives the CUDA step kernel over a spread of shapes for compute-sanitizer.

Each case runs the kernel on fresh random inputs (greedy and sampled, with and without the
merge weight, one row already finished; sampled without the merge weight: per-row seeds, the
kernel's reads of row_seeds), checks tokens/n_new exactly and next_in within a
loose tolerance against the CPU reference, and exits non-zero on any mismatch, so that a run
under `compute-sanitizer --tool memcheck|racecheck|synccheck` checks both memory safety and
results.

    compute-sanitizer --tool memcheck python benchmarks/gpu/sanitize_step.py [--small]
"""
from __future__ import annotations

import argparse
import sys

import torch

from superthoughts_ext.ops import superthoughts_step
from superthoughts_ext.reference import superthoughts_step_ref

SHAPES = [(1, 7, 8), (3, 1000, 64), (64, 1000, 8), (5, 32003, 1536), (1, 151936, 1536), (64, 151936, 64)]
SMALL_SHAPES = [(1, 7, 8), (3, 1000, 64), (17, 4099, 96)]


def run_case(batch, vocab, hidden, dtype, merge, temperature, seed) -> list[str]:
    gen = torch.Generator().manual_seed(seed)
    scale = torch.linspace(0.5, 12.0, batch).view(1, batch, 1)
    logits = (torch.randn(2, batch, vocab, generator=gen) * scale).to(dtype)
    embed = torch.randn(vocab, hidden, generator=gen).to(dtype)
    weight = (torch.randn(hidden, 2 * hidden, generator=gen) / hidden**0.5).to(dtype) if merge else None
    bias = torch.randn(hidden, generator=gen).to(dtype) if merge else None
    finished = torch.zeros(batch, dtype=torch.bool)
    finished[batch // 2] = batch > 1
    args = dict(pad_id=0, eos_id=2, threshold=0.5, threshold_main=0.0, temperature=temperature,
                seed=seed, offset=3)
    row_seeds = None
    if temperature > 0 and not merge:
        row_seeds = torch.randint(-(2**63), 2**63 - 1, (batch,), generator=gen)
        args["seed"] = 0
    cuda = [t.cuda() if t is not None else None for t in (logits, embed, weight, bias, finished)]
    got = superthoughts_step(*cuda, **args, row_seeds=None if row_seeds is None else row_seeds.cuda())
    fin_ref = finished.clone()
    want = superthoughts_step_ref(logits.float(), embed.float(), None if weight is None else weight.float(),
                                  None if bias is None else bias.float(), fin_ref, **args, row_seeds=row_seeds)
    torch.cuda.synchronize()
    name = f"B={batch} V={vocab} H={hidden} {dtype} merge={merge} T={temperature} row_seeds={row_seeds is not None}"
    errors = []
    if not torch.equal(got[0].cpu(), want[0]):
        errors.append(f"{name}: tokens differ")
    if not torch.equal(got[1].cpu(), want[1]):
        errors.append(f"{name}: n_new differ")
    if not torch.equal(cuda[4].cpu(), fin_ref):
        errors.append(f"{name}: finished differs")
    if not torch.allclose(got[2].cpu(), want[2], atol=2e-3, rtol=2e-3):
        errors.append(f"{name}: conf max err {(got[2].cpu() - want[2]).abs().max():.3g}")
    tol = 1e-3 if dtype == torch.float32 else 5e-2
    next_err = (got[3].float().cpu() - want[3].float()).abs().max().item()
    if not next_err <= tol * max(1.0, want[3].abs().max().item()):
        errors.append(f"{name}: next_in max err {next_err:.3g}")
    return errors


def main() -> int:
    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0])
    parser.add_argument("--small", action="store_true", help="small shapes only (racecheck is slow)")
    args = parser.parse_args()
    errors, cases = [], 0
    for batch, vocab, hidden in SMALL_SHAPES if args.small else SHAPES:
        for dtype in (torch.float32, torch.bfloat16):
            for merge in (True, False):
                for temperature in (0.0, 0.7):
                    errors += run_case(batch, vocab, hidden, dtype, merge, temperature, seed=cases)
                    cases += 1
    print(f"sanitize_step: {cases} cases, {len(errors)} mismatches")
    for line in errors:
        print("  " + line)
    return 1 if errors else 0


if __name__ == "__main__":
    sys.exit(main())
