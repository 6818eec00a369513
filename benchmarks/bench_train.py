"""Training throughput: SuperThoughts vs plain SFT on the same backbone, data and optimizer.

Response tokens per second of a full training step (forward + backward + AdamW). The
SuperThoughts backbone sees about half as many positions per sequence (two response tokens
per unit), so its steps should run >= 1.6x the baseline's tokens/s.

CPU: a tiny Qwen2-shaped model (hidden 256, 4 layers, vocab 2048, seq 512), timed with
torch.utils.benchmark. GPU: Qwen2.5-Math-1.5B and -7B shaped random models in bf16, timed
with CUDA events, with peak memory per GPU. A correctness check runs first: the loss over
the warmup steps (the same batch, so it must fall) is finite and decreasing.

    python benchmarks/bench_train.py                 # writes benchmarks/results/train_<device>.json
    python benchmarks/bench_train.py --shapes 1.5b 7b --batch-size 4 --seq-len 2048   # on a GPU
"""
from __future__ import annotations

import argparse
import json
import platform
import statistics
import subprocess
from pathlib import Path
from typing import Any, Callable

import torch
from transformers import AutoModelForCausalLM, Qwen2Config

RESULTS = Path(__file__).resolve().parent / "results"
# Qwen2.5-Math shapes (random weights: the hub is out of reach, and throughput does not
# depend on the values).
SHAPES: dict[str, dict[str, Any]] = {
    # lm_head + loss cost the same in both modes (two heads over half the positions), so
    # vocab 2048 keeps their share of the step small, as in the 1.5B model (~15% there).
    "tiny": dict(vocab_size=2048, hidden_size=256, intermediate_size=1536, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}
PAD_ID, EOS_ID = 0, 1


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `superthoughts bench train` (also this script's own)."""
    gpu = torch.cuda.is_available()
    parser.add_argument("--shapes", nargs="+", choices=sorted(SHAPES),
                        default=["1.5b", "7b"] if gpu else ["tiny"])
    parser.add_argument("--batch-size", type=int, default=4 if gpu else 8)
    parser.add_argument("--seq-len", type=int, default=2048 if gpu else 512, help="prompt + response")
    parser.add_argument("--prompt-len", type=int, default=64)
    parser.add_argument("--warmup", type=int, default=5, help="untimed steps (loss must fall over them)")
    parser.add_argument("--steps", type=int, default=10, help="timed steps on GPU")
    parser.add_argument("--min-time", type=float, default=10.0, help="seconds per mode on CPU")
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--gradient-checkpointing", action="store_true")
    parser.add_argument("--output", type=Path, default=None, help="JSON path (default: results/train_<device>.json)")


def make_features(batch: int, seq_len: int, prompt_len: int, vocab: int, seed: int) -> list[dict]:
    """Random {"prompt_ids", "response_ids"} rows; each response ends with EOS."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        ids = torch.randint(2, vocab, (seq_len,), generator=g).tolist()
        rows.append({"prompt_ids": ids[:prompt_len], "response_ids": ids[prompt_len:-1] + [EOS_ID]})
    return rows


def build(shape: str, superthoughts: bool, device: torch.device, dtype: torch.dtype, ckpt: bool):
    """Fresh model (same seed for both modes) and the batch builder for its mode."""
    from superthoughts_ext.data import SuperThoughtsCollator
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    config = Qwen2Config(max_position_embeddings=32768, **SHAPES[shape])
    torch.manual_seed(0)
    backbone = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if ckpt:
        backbone.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
    model = SuperThoughtsForCausalLM.from_base(backbone, pad_token_id=PAD_ID) if superthoughts else backbone
    model = model.to(device=device, dtype=dtype).train()
    collator = SuperThoughtsCollator(PAD_ID, EOS_ID, baseline=not superthoughts, seed=0)
    return model, collator


def make_step(model: torch.nn.Module, batch: dict, lr: float) -> tuple[Callable[[], float], Any]:
    """One training step closure (forward, backward, AdamW, zero_grad) returning the loss."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, foreach=True)

    def step() -> torch.Tensor:
        loss = model(**batch).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, optimizer


def time_step(step: Callable[[], torch.Tensor], device: torch.device, steps: int, min_time: float) -> float:
    """Median seconds per step: CUDA events on GPU, torch.utils.benchmark on CPU."""
    if device.type == "cuda":
        times = []
        for _ in range(steps):
            start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
            start.record()
            step()
            end.record()
            torch.cuda.synchronize()
            times.append(start.elapsed_time(end) / 1e3)
        return statistics.median(times)
    from torch.utils import benchmark

    return benchmark.Timer(stmt="step()", globals={"step": step}).blocked_autorange(min_run_time=min_time).median


def checkpointing(shape: str, args: argparse.Namespace) -> bool:
    # 7B full fine-tuning (bf16 weights, grads, AdamW states: ~61 GB) leaves too little of
    # an 80 GB GPU for stored activations.
    return args.gradient_checkpointing or shape == "7b"


def bench_mode(shape: str, superthoughts: bool, args: argparse.Namespace, device: torch.device) -> dict:
    """Correctness check over the warmup, then timed steps; tokens/s and peak memory."""
    dtype = torch.bfloat16 if device.type == "cuda" else torch.float32
    model, collator = build(shape, superthoughts, device, dtype, checkpointing(shape, args))
    features = make_features(args.batch_size, args.seq_len, args.prompt_len, SHAPES[shape]["vocab_size"], 0)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator(features).items()}
    response_tokens = sum(len(f["response_ids"]) for f in features)
    positions = int(batch["attention_mask"].sum()) if "attention_mask" in batch else None
    step, _ = make_step(model, batch, args.lr)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = [float(step()) for _ in range(args.warmup)]
    if not all(torch.isfinite(torch.tensor(warm))) or not warm[-1] < warm[0]:
        raise RuntimeError(f"{shape} {'superthoughts' if superthoughts else 'baseline'}: loss not falling: {warm}")
    seconds = time_step(step, device, args.steps, args.min_time)
    result = {
        "step_ms": round(seconds * 1e3, 3),
        "response_tokens_per_step": response_tokens,
        "backbone_positions_per_step": positions,
        "response_tokens_per_s": round(response_tokens / seconds, 1),
        "warmup_loss": [round(x, 4) for x in warm],
        "params": sum(p.numel() for p in model.parameters()),
    }
    if device.type == "cuda":
        result["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    del model, step
    if device.type == "cuda":
        torch.cuda.empty_cache()
    return result


def device_name(device: torch.device) -> str:
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    for line in Path("/proc/cpuinfo").read_text().splitlines() if Path("/proc/cpuinfo").exists() else []:
        if line.startswith("model name"):
            return line.split(":", 1)[1].strip()
    return platform.processor() or platform.machine()


def git_commit() -> str:
    try:
        return subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True,
                              cwd=Path(__file__).parent, check=True).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"


def main(args: argparse.Namespace) -> int:
    """Run every shape in both modes, print a table and write the JSON; returns an exit code."""
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    report: dict[str, Any] = {
        "benchmark": "train", "device": device_name(device), "device_type": device.type,
        "torch": torch.__version__, "commit": git_commit(), "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "seq_len": args.seq_len, "prompt_len": args.prompt_len,
        "optimizer": "AdamW",
        "dtype": "bfloat16" if device.type == "cuda" else "float32", "shapes": {},
    }
    for shape in args.shapes:
        row: dict[str, Any] = {}
        for mode in ("baseline", "superthoughts"):
            try:
                row[mode] = bench_mode(shape, mode == "superthoughts", args, device)
            except torch.cuda.OutOfMemoryError as exc:
                row[mode] = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
                torch.cuda.empty_cache()
        if all("response_tokens_per_s" in row[m] for m in ("baseline", "superthoughts")):
            row["speedup"] = round(row["superthoughts"]["response_tokens_per_s"]
                                   / row["baseline"]["response_tokens_per_s"], 3)
        row["gradient_checkpointing"] = checkpointing(shape, args)
        report["shapes"][shape] = row
        for mode in ("baseline", "superthoughts"):
            r = row[mode]
            extra = f"  peak {r['peak_memory_gib']} GiB" if "peak_memory_gib" in r else ""
            shown = f"{r['response_tokens_per_s']:>10.1f} tok/s  {r['step_ms']:>9.1f} ms/step{extra}" \
                if "step_ms" in r else r["error"]
            print(f"{shape:>5} {mode:>13}: {shown}")
        if "speedup" in row:
            print(f"{shape:>5} speedup superthoughts / baseline: {row['speedup']:.2f}x")
    out = args.output or RESULTS / f"train_{device.type}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
