"""Training throughput: SuperThoughts vs plain SFT on the same backbone, data and optimizer.

Response tokens per second of a full training step (forward + backward + AdamW), and the
step's matmul FLOPs (a load-independent cost). The SuperThoughts backbone sees about half
the positions (two response tokens per unit) but adds the MTP decoder layer, the compressor,
and pad-split singles (rho_max; each SuperThoughts run is measured at every --rho-max value,
0.25 being the training default; `--mtp-types decoder mlp` adds the MLP MTP option at each).
Target: >= 1.6x the baseline's tokens/s.

Two plain-SFT references: "baseline" is the stock transformers model and loss (what
`superthoughts train --baseline` trains: lm_head + cross-entropy over every position), and
"baseline_chunked_ce" is the same backbone scored like SuperThoughts (head + cross-entropy on
the labelled positions only, chunked, `head_losses.linear_cross_entropy`). SuperThoughts' speedup
over the first is what a user sees; over the second it is the part owed to the method alone.

CPU: "tiny" (hidden 256, 4 layers, vocab 2048) and "1.5b-mini" (Qwen2.5-Math-1.5B's
proportions at hidden 128, 28 layers), seq 512, timed with torch.utils.benchmark in
alternating rounds on --threads intra-op threads (default: torch's). GPU: Qwen2.5-Math-1.5B
and -7B shaped random models, timed with CUDA events, with peak memory per GPU. --precision:
float32 weights on CPU and bfloat16 weights on GPU by default; bf16-autocast is float32
weights under bfloat16 autocast, as `superthoughts train --bf16` trains (accelerate wraps the
model's forward, loss included, in torch.autocast; backward and AdamW run outside it). A
correctness check runs first: the loss over the warmup steps (the same batch, so it must fall)
is finite and decreasing. Each mode's line is printed, and the JSON rewritten, as soon as the
mode is measured.

    python benchmarks/bench_train.py                 # writes benchmarks/results/train_<device>.json
    python benchmarks/bench_train.py --threads 2 --output mine.json   # docs/benchmarks.md's CPU figures' threads
    python benchmarks/bench_train.py --shapes 1.5b 7b --batch-size 4 --seq-len 2048   # on a GPU
    python benchmarks/bench_train.py --shapes 1.5b --precision bf16-autocast   # as train --bf16 trains
"""
from __future__ import annotations

import argparse
import json
import os
import statistics
from pathlib import Path
from types import SimpleNamespace
from typing import Any, Callable, NamedTuple

import torch
from superthoughts_ext.file_writes import replace_text
from superthoughts_ext.run_info import (add_output_arguments, add_threads_argument, apply_threads, device_name, distinct,
                                        git_commit, int_at_least, positive_float,
                                        held_results_file, unit_float)
from torch.utils.flop_counter import FlopCounterMode
from transformers import AutoModelForCausalLM, Qwen2Config

RESULTS = Path(__file__).resolve().parent / "results"
# Qwen2.5-Math shapes (random weights: the hub is out of reach, and throughput does not
# depend on the values).
SHAPES: dict[str, dict[str, Any]] = {
    # lm_head + loss cost the same in both modes (two heads over half the positions), so
    # vocab 2048 keeps their share of the step small, as in the 1.5B model (~15% there).
    "tiny": dict(vocab_size=2048, hidden_size=256, intermediate_size=1536, num_hidden_layers=4,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    # Qwen2.5-Math-1.5B's proportions at hidden 128: 28 layers, MLP 6x hidden, lm_head worth
    # about 5 layers, so the extra MTP layer weighs what it weighs at full size.
    "1.5b-mini": dict(vocab_size=12800, hidden_size=128, intermediate_size=768, num_hidden_layers=28,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                 num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True),
    "7b": dict(vocab_size=152064, hidden_size=3584, intermediate_size=18944, num_hidden_layers=28,
               num_attention_heads=28, num_key_value_heads=4, tie_word_embeddings=False),
}
PAD_ID, EOS_ID = 0, 1
# --precision -> (weight dtype, bfloat16 autocast over the forward). The names are those of
# python_tests/test_modeling_precision.py: bf16-weights is `train --dtype bfloat16`,
# bf16-autocast is `train --bf16` (float32 weights, the recommended mode).
PRECISIONS: dict[str, tuple[torch.dtype, bool]] = {
    "fp32": (torch.float32, False),
    "bf16-weights": (torch.bfloat16, False),
    "bf16-autocast": (torch.float32, True),
}


def precision_of(args: argparse.Namespace, device: torch.device) -> str:
    """--precision, or the device's default: bf16-weights on a GPU, fp32 on a CPU."""
    return args.precision or ("bf16-weights" if device.type == "cuda" else "fp32")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Flags of `superthoughts bench train` (also this script's own)."""
    gpu = torch.cuda.is_available()
    parser.add_argument("--shapes", nargs="+", action=distinct(), choices=sorted(SHAPES),
                        default=["1.5b", "7b"] if gpu else ["tiny", "1.5b-mini"], metavar="SHAPE",
                        help=f"model shapes ({', '.join(sorted(SHAPES))})")
    parser.add_argument("--batch-size", type=int_at_least(1), default=4 if gpu else 8, help="sequences per step")
    parser.add_argument("--seq-len", type=int_at_least(2), default=2048 if gpu else 512, help="prompt + response")
    parser.add_argument("--prompt-len", type=int_at_least(1), default=64, help="prompt tokens of each sequence")
    parser.add_argument("--warmup", type=int_at_least(2), default=5, help="untimed steps (loss must fall over them)")
    parser.add_argument("--steps", type=int_at_least(1), default=10, help="timed steps on GPU")
    parser.add_argument("--min-time", type=positive_float, default=12.0, help="seconds per mode on CPU")
    parser.add_argument("--rounds", type=int_at_least(1), default=3, help="alternating timing rounds per mode on CPU")
    add_threads_argument(parser)
    parser.add_argument("--lr", type=positive_float, default=1e-3, help="AdamW learning rate")
    # Distinct as the mode names print them ("superthoughts_rho0.1"): 0.1 and 0.1000001 were one mode.
    parser.add_argument("--rho-max", type=unit_float, nargs="+", action=distinct(key=lambda r: f"{r:g}"),
                        default=[0.25, 0.0],
                        help="pad-split rho_max of each SuperThoughts run (0.25: train's own; 0: no split)")
    parser.add_argument("--mtp-types", nargs="+", action=distinct(), choices=("decoder", "mlp"),
                        default=["decoder"],
                        help="MTP module of the SuperThoughts runs (decoder: train's own; mlp: the lighter "
                             "option); every type is measured at every --rho-max")
    parser.add_argument("--gradient-checkpointing", action="store_true", help="recompute activations in backward")
    parser.add_argument("--precision", choices=sorted(PRECISIONS), default=None,
                        help="fp32: float32 weights; bf16-weights: bfloat16 weights (train --dtype bfloat16); "
                             "bf16-autocast: float32 weights under bfloat16 autocast (train --bf16). "
                             "Default: bf16-weights on a GPU, fp32 on a CPU")
    add_output_arguments(parser, "benchmarks/results/train_<device>.json")


def make_features(batch: int, seq_len: int, prompt_len: int, vocab: int, seed: int) -> list[dict]:
    """Random {"prompt_ids", "response_ids"} rows; each response ends with EOS."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for _ in range(batch):
        ids = torch.randint(2, vocab, (seq_len,), generator=g).tolist()
        rows.append({"prompt_ids": ids[:prompt_len], "response_ids": ids[prompt_len:-1] + [EOS_ID]})
    return rows


class ChunkedLossSFT(torch.nn.Module):
    """Plain SFT scored like SuperThoughts: lm_head + cross-entropy on the labelled positions only,
    through the chunked `linear_cross_entropy` (the "baseline_chunked_ce" reference)."""

    def __init__(self, backbone: torch.nn.Module) -> None:
        super().__init__()
        self.backbone = backbone

    def forward(self, input_ids: torch.Tensor, attention_mask: torch.Tensor, labels: torch.Tensor) -> SimpleNamespace:
        from superthoughts_ext.head_losses import linear_cross_entropy

        h = self.backbone.model(input_ids=input_ids, attention_mask=attention_mask).last_hidden_state  # [B, T, H]
        targets = labels[:, 1:].reshape(-1)  # position t predicts token t + 1
        rows = torch.nonzero(targets != -100).squeeze(1)
        weights = torch.full((rows.numel(),), 1.0 / max(rows.numel(), 1), device=h.device)
        hidden = h[:, :-1].reshape(-1, h.shape[-1]).index_select(0, rows)
        loss, _ = linear_cross_entropy(hidden, self.backbone.lm_head.weight, targets[rows], weights)
        return SimpleNamespace(loss=loss)


class Mode(NamedTuple):
    """One measured configuration: plain SFT when rho_max is None, else SuperThoughts."""

    rho_max: float | None  # pad-split rho_max of a SuperThoughts run
    chunked: bool  # loss over the labelled rows only, chunked (always so for SuperThoughts)
    mtp_type: str = "decoder"


def build(shape: str, mode: Mode, device: torch.device, dtype: torch.dtype, ckpt: bool):
    """Fresh model (same seed in every mode) and its batch builder for a `mode_table` entry."""
    from superthoughts_ext.data import SuperThoughtsCollator
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM
    from superthoughts_ext.train_utils import enable_activation_checkpointing

    rho_max, chunked = mode.rho_max, mode.chunked
    superthoughts = rho_max is not None
    config = Qwen2Config(max_position_embeddings=32768, **SHAPES[shape])
    torch.manual_seed(0)
    # Initialised where it runs: a 7B random init on the host alone takes minutes.
    with device:
        backbone = AutoModelForCausalLM.from_config(config, dtype=dtype)
    if ckpt:
        enable_activation_checkpointing(backbone)
    if superthoughts:
        # from_base(dtype=) keeps the RoPE frequencies float32 (module.to would round them).
        model = SuperThoughtsForCausalLM.from_base(backbone, pad_token_id=PAD_ID, mtp_type=mode.mtp_type,
                                                   dtype=dtype, device=device)
    else:
        model = ChunkedLossSFT(backbone) if chunked else backbone
    model = model.train()
    collator = SuperThoughtsCollator(PAD_ID, EOS_ID, rho_max=rho_max or 0.0, baseline=not superthoughts, seed=0)
    return model, collator


def make_step(model: torch.nn.Module, batch: dict, lr: float,
              autocast: bool = False) -> tuple[Callable[[], torch.Tensor], Any]:
    """One training step closure (forward, backward, AdamW, zero_grad) returning the loss.
    autocast: the forward (loss included) under bfloat16 autocast, as accelerate wraps the
    model's forward under `train --bf16`; backward and the optimizer step run outside it."""
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(params, lr=lr, foreach=True)
    # The SuperThoughts loss alone, as the trainer asks for it (no [B, T, V] logits).
    extra = {"return_logits": False} if "labels_main" in batch else {}
    device_type = params[0].device.type

    def step() -> torch.Tensor:
        with torch.autocast(device_type, dtype=torch.bfloat16, enabled=autocast):
            loss = model(**batch, **extra).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        return loss.detach()

    return step, optimizer


def time_cuda(step: Callable[[], torch.Tensor], steps: int) -> float:
    """Median seconds per step from CUDA events (no host timer around async work)."""
    times = []
    for _ in range(steps):
        start, end = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        start.record()
        step()
        end.record()
        torch.cuda.synchronize()
        times.append(start.elapsed_time(end) / 1e3)
    return statistics.median(times)


def time_cpu(step: Callable[[], torch.Tensor], min_time: float) -> float:
    """Median seconds per step from torch.utils.benchmark, on all of torch's threads (its Timer
    runs one thread unless told otherwise)."""
    from torch.utils import benchmark

    timer = benchmark.Timer(stmt="step()", globals={"step": step}, num_threads=torch.get_num_threads())
    return timer.blocked_autorange(min_run_time=min_time).median


def checkpointing(shape: str, args: argparse.Namespace) -> bool:
    # 7B full fine-tuning (bf16 weights, grads, AdamW states: ~61 GB) leaves too little of
    # an 80 GB GPU for stored activations.
    return args.gradient_checkpointing or shape == "7b"


def prepare(shape: str, name: str, mode: Mode, args: argparse.Namespace,
            device: torch.device) -> tuple[Callable[[], torch.Tensor], dict[str, Any]]:
    """Model, batch and step closure for the mode `name`, after the warmup correctness check."""
    dtype, autocast = PRECISIONS[precision_of(args, device)]
    model, collator = build(shape, mode, device, dtype, checkpointing(shape, args))
    features = make_features(args.batch_size, args.seq_len, args.prompt_len, SHAPES[shape]["vocab_size"], 0)
    batch = {k: v.to(device) if torch.is_tensor(v) else v for k, v in collator(features).items()}
    step, _ = make_step(model, batch, args.lr, autocast)
    if device.type == "cuda":
        torch.cuda.reset_peak_memory_stats(device)
    warm = [float(step()) for _ in range(args.warmup)]
    if not all(torch.isfinite(torch.tensor(warm))) or not warm[-1] < warm[0]:
        # A step that does not train would time a broken model: no numbers from it.
        raise SystemExit(f"bench train: {shape} {name}: the loss did not fall over the {args.warmup} warmup steps "
                         f"({', '.join(f'{x:.4g}' for x in warm)}); try a smaller --lr (got {args.lr:g}) or "
                         "more --warmup steps")
    # Matmul FLOPs of one step: a machine-independent cost next to the (load-sensitive) timings.
    counter = FlopCounterMode(display=False)
    try:
        with counter:
            step()
        gflop = round(counter.get_total_flops() / 1e9, 2)
    except AssertionError:
        # torch's SDPA FLOP formula asserts equal query and key/value head counts, so it
        # rejects the grouped-query attention that the CUDA SDPA path runs natively.
        gflop = None
    info = {
        "matmul_gflop_per_step": gflop,
        "response_tokens_per_step": sum(len(f["response_ids"]) for f in features),
        "backbone_positions_per_step": int(batch["attention_mask"].sum()),
        "warmup_loss": [round(x, 4) for x in warm],
        "params": sum(p.numel() for p in model.parameters()),
    }
    return step, info


def finish(info: dict[str, Any], seconds: float, device: torch.device) -> dict[str, Any]:
    """Adds step time, tokens/s and (GPU) peak memory to a mode's record."""
    info.update(step_ms=round(seconds * 1e3, 3),
                response_tokens_per_s=round(info["response_tokens_per_step"] / seconds, 1))
    if device.type == "cuda":
        info["peak_memory_gib"] = round(torch.cuda.max_memory_allocated(device) / 2**30, 2)
    return info


BASELINES = ("baseline", "baseline_chunked_ce")


def mode_table(args: argparse.Namespace) -> dict[str, Mode]:
    """Mode name -> Mode; the default decoder MTP keeps the plain "superthoughts_rho<r>" names."""
    modes = {"baseline": Mode(None, False), "baseline_chunked_ce": Mode(None, True)}
    for mtp_type in args.mtp_types:
        prefix = "superthoughts" if mtp_type == "decoder" else f"superthoughts_{mtp_type}"
        modes.update({f"{prefix}_rho{r:g}": Mode(r, True, mtp_type) for r in args.rho_max})
    return modes


def bench_shape(shape: str, args: argparse.Namespace, device: torch.device,
                measured: Callable[[str, dict[str, Any]], None] = lambda mode, row: None) -> dict[str, Any]:
    """Every mode of one shape: one after the other on GPU (memory), interleaved on CPU.
    `measured(mode, row so far)` follows each mode as soon as its time is known: on GPU after
    its own steps (minutes each at the 7B shape), on CPU in the last round."""
    modes = mode_table(args)
    row: dict[str, Any] = {}
    if device.type == "cuda":
        for mode in modes:
            try:
                step, info = prepare(shape, mode, modes[mode], args, device)
                row[mode] = finish(info, time_cuda(step, args.steps), device)
            except torch.cuda.OutOfMemoryError as exc:
                row[mode] = {"error": f"out of memory: {str(exc).splitlines()[0]}"}
            step = None
            torch.cuda.empty_cache()
            measured(mode, row)
        return row
    # Alternating rounds spread load from other processes on a shared CPU over both modes.
    prepared = {}
    for mode, spec in modes.items():
        prepared[mode] = prepare(shape, mode, spec, args, device)
        # Building and warming up every mode takes minutes at the defaults, before any timing.
        warm = prepared[mode][1]["warmup_loss"]
        print(f"{shape:>9} {mode:>20}: built, loss {warm[0]} -> {warm[-1]} over {len(warm)} warmup steps",
              flush=True)
    rounds: dict[str, list[float]] = {mode: [] for mode in modes}
    for round_index in range(args.rounds):
        for mode in modes:
            rounds[mode].append(time_cpu(prepared[mode][0], args.min_time / args.rounds))
            if round_index == args.rounds - 1:
                row[mode] = finish(prepared[mode][1], statistics.median(rounds[mode]), device)
                measured(mode, row)
    return row


def throughput_ratio(r: dict[str, Any], base: dict[str, Any]) -> float:
    """r's response tokens/s over base's, from the step times: the recorded tokens/s are
    rounded to 0.1, which skews ratios of small throughputs (1.2 for 1.195)."""
    return (r["response_tokens_per_step"] / r["step_ms"]) / (base["response_tokens_per_step"] / base["step_ms"])


def add_ratios(row: dict[str, dict[str, Any]]) -> None:
    """Adds to every measured mode of a shape its speedup (and FLOP ratio) over the plain
    baseline, and to the SuperThoughts modes their speedup over the chunked-CE baseline (the
    same loss code)."""
    base, same_loss = row["baseline"], row["baseline_chunked_ce"]
    for mode, r in row.items():
        if "error" in r:
            continue
        if mode != "baseline" and "error" not in base:
            r["speedup"] = round(throughput_ratio(r, base), 3)
            if r.get("matmul_gflop_per_step") and base.get("matmul_gflop_per_step"):
                r["flop_ratio"] = round(base["matmul_gflop_per_step"] / r["matmul_gflop_per_step"], 3)
        if mode not in BASELINES and "error" not in same_loss:
            r["speedup_same_loss"] = round(throughput_ratio(r, same_loss), 3)


def describe(r: dict[str, Any]) -> str:
    """One mode's result as a table cell: throughput, step time, FLOPs, memory, ratios."""
    if "error" in r:
        return r["error"]
    gflop = r.get("matmul_gflop_per_step")
    shown = (f"{r['response_tokens_per_s']:>9.1f} tok/s {r['step_ms']:>9.1f} ms/step "
             + (f"{gflop:>8.1f} GFLOP" if gflop else "   (FLOPs not counted)"))
    if "peak_memory_gib" in r:
        shown += f"  peak {r['peak_memory_gib']} GiB"
    if "speedup" in r:
        shown += f"  speedup {r['speedup']:.2f}x"
    if "flop_ratio" in r:
        shown += f" (FLOPs {r['flop_ratio']:.2f}x)"
    if "speedup_same_loss" in r:
        shown += f", {r['speedup_same_loss']:.2f}x same loss"
    return shown


def progress(shape: str, mode: str, row: dict[str, dict[str, Any]]) -> str:
    """A mode's line as soon as it is measured, with its speedup over the plain baseline once
    that is known (the other ratios come with the shape's table, add_ratios)."""
    r, base = row[mode], row.get("baseline")
    shown = f"{shape:>9} {mode:>20}: {describe(r)}"
    if mode != "baseline" and base and "error" not in base and "error" not in r:
        shown += f"  speedup {throughput_ratio(r, base):.2f}x"
    return shown


def plan(args: argparse.Namespace, device: torch.device) -> str:
    """The run's first line: what it will measure, and how long each mode is timed."""
    if device.type == "cuda":
        timing = f"{args.steps} timed steps per mode"
    else:
        timing = (f"{args.rounds} alternating round(s) of >= {args.min_time / args.rounds:g} s per mode "
                  f"(--min-time {args.min_time:g} s in all), {torch.get_num_threads()} threads")
    return (f"bench train: shapes {' '.join(args.shapes)}; modes {' '.join(mode_table(args))}; "
            f"batch {args.batch_size} x {args.seq_len} tokens; precision {precision_of(args, device)}; "
            f"{args.warmup} warmup steps, then {timing}")


def main(args: argparse.Namespace) -> int:
    """Run every shape in both modes, print a table and write the JSON; returns an exit code."""
    if args.prompt_len >= args.seq_len:
        # make_features would cut every response down to its EOS and time that.
        raise SystemExit(f"bench train: --prompt-len ({args.prompt_len}) must be below --seq-len ({args.seq_len}), "
                         "which counts prompt and response")
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    with held_results_file(args.output, RESULTS / f"train_{device.type}.json", args.overwrite, "bench train") as out:
        return measure(args, device, out)


def measure(args: argparse.Namespace, device: torch.device, out: Path) -> int:
    """Every shape of ``args`` on ``device``, written to ``out`` after each mode; returns 0."""
    apply_threads(args)
    precision = precision_of(args, device)
    dtype, autocast = PRECISIONS[precision]
    report: dict[str, Any] = {
        "benchmark": "train", "device": device_name(device), "device_type": device.type,
        "torch_version": torch.__version__, "commit": git_commit(), "threads": torch.get_num_threads(),
        "batch_size": args.batch_size, "seq_len": args.seq_len, "prompt_len": args.prompt_len,
        "optimizer": "AdamW",
        # dtype: the weights' (and gradients', AdamW states') dtype; autocast: the forward's
        # compute dtype under torch.autocast, null without it.
        "precision": precision, "dtype": str(dtype).removeprefix("torch."),
        "autocast": "bfloat16" if autocast else None,
        "complete": False, "shapes": {},
    }
    print(plan(args, device), flush=True)
    for shape in args.shapes:
        def measured(mode: str, row: dict[str, Any], shape: str = shape) -> None:
            # A run stopped by a time limit (a GPU session stage) or by Ctrl-C keeps every mode
            # it measured.
            print(progress(shape, mode, row), flush=True)
            report["shapes"][shape] = dict(row)
            replace_text(out, json.dumps(report, indent=2) + "\n")

        row = bench_shape(shape, args, device, measured)
        add_ratios(row)
        for mode, r in row.items():
            print(f"{shape:>9} {mode:>20}: {describe(r)}")
        row["gradient_checkpointing"] = checkpointing(shape, args)
        report["shapes"][shape] = row
        # After every shape: a run stopped by a time limit (a GPU session stage) keeps what it measured.
        replace_text(out, json.dumps(report, indent=2) + "\n")
    if device.type == "cpu":
        # Timings on a shared CPU move with its load; recorded so readers can judge them.
        report["load_average_after"] = [round(x, 2) for x in os.getloadavg()]
    report["complete"] = True
    replace_text(out, json.dumps(report, indent=2) + "\n")
    print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    from superthoughts_ext.cli import HelpFormatter  # shows each flag's default, as `superthoughts bench` does

    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0], formatter_class=HelpFormatter)
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
