"""End-to-end decoding throughput: transformers generate vs our standard / pairs / superthoughts.

Methods (greedy; the model never emits EOS, so every run emits exactly --new-tokens per row):
    hf_dynamic         transformers generate, dynamic cache
    hf_static_compile  transformers generate, static cache + torch.compile (by default on GPU only;
                       on a CPU when named in --methods)
    standard           ours, one token per step from the backbone alone
    pairs              ours, two tokens per step (threshold 0)
    st@T               ours, adaptive with MTP threshold T
Ours run their decode step through torch.compile per --compile/--no-compile (default: generate's
"auto", on for CUDA), then replay it as a CUDA graph on GPU; the JSON records it per row.
The model is random (from a config, no download): a tiny Qwen2 on CPU (--shape 1.5b-mini: bench
train's 28-layer one), a Qwen2.5-Math-1.5B shaped bf16 one on GPU. A random MTP head is
unconfident (its logits spread ~0.2-0.8 around their mean), so st@T would never take a pair
step. --mtp-logit-std (default 30) scales the MTP head's final norm so that its logits spread
that much: then its confidence crosses 0.9 / 0.99 / 0.999 on 66-71% / 41-49% / 23-36% of steps
on both shapes (a trained model's range: the paper's 20-30% shorter CoT is 25-43% pair steps),
and rows of a batch take different numbers of steps, as they do with a trained model. Every row
reports the pair-step share it measured. --mtp-logit-std 0 keeps the random head (st@T = all
fallback steps: the adaptive path's cost); `pairs` shows the two-token ceiling. Tokens do not
change with the scale (argmax is scale-free).

Correctness first: our standard greedy (uncompiled) == transformers greedy on a short prompt.
Timing: median wall time of --repeats calls after one warm-up, device synced around each call (a
call is seconds long; per-call overhead such as CUDA-graph capture is included, torch.compile's
compilation is not: the warm-up pays it once per configuration). Also reported: steps
(forward passes) per second and KV-cache bytes per generated token
(positions x layers x 2 x kv_heads x head_dim x dtype bytes / tokens, the MTP layer included
for SuperThoughts modes). Writes benchmarks/results/generate_<device>.json and a PNG plot.

    python benchmarks/bench_generate.py [--batch 1 8 32] [--prompt-len 128] [--new-tokens 512] [--no-compile]
"""
from __future__ import annotations

import argparse
import copy
import json
import statistics
import time
from pathlib import Path

import torch
import transformers
from transformers import AutoModelForCausalLM, CompileConfig, Qwen2Config

from superthoughts_ext import decode_loop
from superthoughts_ext.eval_compare import threshold_label
from superthoughts_ext.file_writes import replace_text
from superthoughts_ext.generate import generate, resolve_compile
from superthoughts_ext.modeling_config import MTP_INPUTS
from superthoughts_ext.plot_style import PALETTE, fit_texts_above, pyplot, save_figure
from superthoughts_ext.run_info import (add_output_arguments, add_threads_argument, apply_threads, device_name, distinct,
                                        git_commit, int_at_least,
                                        held_results_file, non_negative_float, unit_float)

RESULTS_DIR = Path(__file__).resolve().parent / "results"
SHAPES = {
    # Deep and narrow: like the real models, the MTP's one extra layer is a small share of a step.
    "tiny": dict(vocab_size=8192, hidden_size=128, intermediate_size=352, num_hidden_layers=8,
                 num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=False),
    # bench_train's shape of the same name: Qwen2.5-Math-1.5B's 28 layers and proportions (lm_head
    # worth about 5 layers) at hidden 128, so that a CPU times a step made up like the real one's.
    "1.5b-mini": dict(vocab_size=12800, hidden_size=128, intermediate_size=768, num_hidden_layers=28,
                      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True),
    "qwen2.5-math-1.5b": dict(vocab_size=151936, hidden_size=1536, intermediate_size=8960, num_hidden_layers=28,
                              num_attention_heads=12, num_key_value_heads=2, tie_word_embeddings=True,
                              rope_theta=10000.0),
}
PAD, EOS = 0, 2
HF_METHODS = ("hf_dynamic", "hf_static_compile")


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `superthoughts bench generate` (defaults depend on the device)."""
    on_gpu = torch.cuda.is_available()
    parser.add_argument("--device", default="cuda" if on_gpu else "cpu", help="where to run")
    parser.add_argument("--shape", choices=sorted(SHAPES), default=None,
                        help="model shape (default: qwen2.5-math-1.5b on GPU, tiny on CPU)")
    parser.add_argument("--dtype", choices=("float32", "bfloat16"), default=None,
                        help="default: bfloat16 on GPU, float32 on CPU")
    parser.add_argument("--batch", type=int_at_least(1), nargs="+", action=distinct(), default=[1, 8, 32],
                        help="batch sizes")
    parser.add_argument("--prompt-len", type=int_at_least(1), default=128, help="longest prompt (rows spread down to half)")
    parser.add_argument("--new-tokens", type=int_at_least(1), default=None, help="default: 512 on GPU, 256 on CPU")
    parser.add_argument("--thresholds", type=unit_float, nargs="+", action=distinct(), default=[0.9, 0.99, 0.999],
                        help="MTP confidence thresholds of the st@T rows")
    parser.add_argument("--mtp-input", choices=MTP_INPUTS, default="unit",
                        help="what the MTP head reads besides h (docs/models.md, 'MTP input'): 'next_token' "
                             "steps with a second lm_head GEMM and a second op launch")
    parser.add_argument("--mtp-logit-std", type=non_negative_float, default=30.0,
                        help="spread of the MTP head's logits, which sets how often st@T pairs (0 = random head)")
    parser.add_argument("--repeats", type=int_at_least(1), default=3, help="timed calls per method (the median is reported)")
    parser.add_argument("--methods", nargs="+", action=distinct(), default=None,
                        help="subset to run (hf_dynamic hf_static_compile standard pairs st@T); default: all")
    parser.add_argument("--no-hf-compile", action="store_true", help="skip hf_static_compile")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile our decode step (default: generate's 'auto', on for CUDA)")
    parser.add_argument("--graph-windows", type=int_at_least(1), default=decode_loop.GRAPH_WINDOWS,
                        help=f"CUDA graphs per call at most, one per span of >= {decode_loop.GRAPH_MIN_SPAN} decode "
                             "columns (1: every step attends over the whole cache)")
    add_threads_argument(parser, "; 1 avoids OpenMP barrier stalls on a shared machine")
    add_output_arguments(parser, "benchmarks/results/generate_<device>.json (and its .png)")


def check_method_names(args: argparse.Namespace) -> None:
    """Refuses unknown --methods names before any model is built (a 1.5B build and its checks
    take minutes on a GPU)."""
    hf = [name for name in HF_METHODS if not (args.no_hf_compile and name == "hf_static_compile")]
    known = {*hf, "standard", "pairs", *(f"st@{threshold_label(t)}" for t in args.thresholds)}
    if unknown := sorted(set(args.methods or ()) - known):
        raise SystemExit(f"bench generate: unknown method(s) {unknown}; known with these --thresholds: {sorted(known)}")


def build_models(shape: str, dtype: torch.dtype, device: torch.device, context: int, mtp_logit_std: float = 0.0,
                 mtp_input: str = "unit"):
    """Random backbone and its SuperThoughts model (of `mtp_input`); EOS is never produced, so every
    method decodes the full budget: its lm_head row is zero (logit 0), below the max of thousands of
    random logits. mtp_logit_std > 0 scales the MTP's final norm so that its logits have about that spread."""
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    config = Qwen2Config(**SHAPES[shape], max_position_embeddings=context, bos_token_id=1, eos_token_id=EOS,
                         pad_token_id=PAD)
    torch.manual_seed(0)
    with torch.device(device):
        backbone = AutoModelForCausalLM.from_config(config, dtype=dtype, attn_implementation="sdpa").eval()
    with torch.no_grad():
        backbone.get_output_embeddings().weight[EOS] = 0.0
    backbone.generation_config.eos_token_id = EOS
    backbone.generation_config.pad_token_id = PAD
    # from_base(dtype=) keeps the RoPE frequencies float32, as a checkpoint loaded in bf16 has them.
    superthoughts = SuperThoughtsForCausalLM.from_base(copy.deepcopy(backbone), dtype=dtype, device=device,
                                                       mtp_input=mtp_input).eval()
    if mtp_logit_std > 0:
        # The final RMSNorm's output has unit RMS per unit of norm weight, so a logit of the
        # (freshly initialised) lm_head spreads by std(W) * sqrt(H) per unit of norm weight.
        weight = backbone.get_output_embeddings().weight.detach().float()
        unit_std = weight.std().item() * weight.shape[1] ** 0.5
        with torch.no_grad():
            superthoughts.mtp.norm.weight.mul_(mtp_logit_std / unit_std)
    return backbone, superthoughts


def prompts(batch: int, length: int, vocab: int, device: torch.device) -> tuple[torch.Tensor, torch.Tensor]:
    """Left-padded prompts of lengths spread over [length / 2, length]."""
    gen = torch.Generator().manual_seed(batch)
    ids = torch.randint(3, vocab, (batch, length), generator=gen)
    mask = torch.ones_like(ids)
    for row in range(batch):
        pad = (row * length) // (2 * max(batch, 1))
        ids[row, :pad], mask[row, :pad] = PAD, 0
    return ids.to(device), mask.to(device)


def check_standard(backbone, device: torch.device) -> dict:
    """Our standard greedy vs transformers greedy (static caches, both uncompiled) on a short prompt.

    Runs on a float32 copy: in bf16 the two attention paths (different cache lengths, hence
    kernels) may flip an argmax between the near-tied logits of a random model.
    """
    if backbone.dtype != torch.float32:
        backbone = copy.deepcopy(backbone).float()
    ids, mask = prompts(2, 16, backbone.config.vocab_size, device)
    ours = generate(backbone, ids, mask, max_new_tokens=16, mode="standard", eos_token_id=EOS, compile=False)
    theirs = backbone.generate(input_ids=ids, attention_mask=mask, max_new_tokens=16, do_sample=False,
                               cache_implementation="static", disable_compile=True)
    expected = theirs[:, ids.shape[1]:].tolist()
    if ours.sequences != expected:
        raise SystemExit(f"bench generate: standard decoding differs from transformers:\n{ours.sequences}\n{expected}")
    return {"tokens_compared": sum(len(s) for s in expected), "equal": True}


def check_fused_step(superthoughts, device: torch.device, compiled: bool, threshold: float) -> dict:
    """Each of our modes as timed (the fused op, compiled where the timed runs are) vs the
    plain-torch reference step, uncompiled, on a short prompt: the same tokens, steps and pair
    steps (`standard` on the backbone alone: check_standard compares it with transformers
    uncompiled, this its compiled step).

    float32 copy for the reason check_standard gives."""
    dtype = next(superthoughts.parameters()).dtype
    model = copy.deepcopy(superthoughts).float() if dtype != torch.float32 else superthoughts
    ids, mask = prompts(2, 16, model.vocab_size, device)
    compared = 0
    for mode in ("standard", "pairs", "superthoughts"):
        decoder = model.backbone if mode == "standard" else model
        kwargs = dict(max_new_tokens=16, mode=mode, eos_token_id=EOS,
                      threshold=threshold if mode == "superthoughts" else None)
        fused = generate(decoder, ids, mask, use_kernels=True, compile=compiled, **kwargs)
        plain = generate(decoder, ids, mask, use_kernels=False, compile=False, **kwargs)
        for name in ("sequences", "num_steps", "num_pair_steps"):
            if getattr(fused, name) != getattr(plain, name):
                raise SystemExit(f"bench generate: {mode} {name} through the fused step differ from the reference "
                                 f"step:\n{getattr(fused, name)}\n{getattr(plain, name)}")
        compared += sum(len(s) for s in plain.sequences)
    return {"tokens_compared": compared, "equal": True}


def synced_time(fn, device: torch.device) -> tuple[float, object]:
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    result = fn()
    if device.type == "cuda":
        torch.cuda.synchronize(device)
    return time.perf_counter() - start, result


def kv_bytes_per_token(config, positions: int, tokens: int, extra_layers: int, dtype: torch.dtype) -> float:
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    per_position = (config.num_hidden_layers + extra_layers) * 2 * config.num_key_value_heads * head_dim
    return positions * per_position * torch.finfo(dtype).bits / 8 / max(tokens, 1)


def methods(args, backbone, superthoughts, new_tokens: int, device: torch.device, compiled: bool) -> dict:
    """name -> fn(ids, mask) returning (tokens, forward passes, pair steps, decode steps of the slowest
    row, whether the step ran compiled, whether in a CUDA graph; None: transformers' choice)."""

    def hf(static_compile: bool):
        def run(ids, mask):
            kwargs = dict(cache_implementation="static") if static_compile else dict(disable_compile=True)
            if static_compile and device.type != "cuda":
                # transformers compiles generate's forward only on accelerators unless told to
                # (a flag of theirs meant for testing); on a CPU it is the like-for-like
                # baseline of our compiled step.
                kwargs["compile_config"] = CompileConfig()
                kwargs["compile_config"]._compile_all_devices = True
            out = backbone.generate(input_ids=ids, attention_mask=mask, max_new_tokens=new_tokens, do_sample=False,
                                    **kwargs)
            generated = out[:, ids.shape[1]:]
            tokens = 0 if bool((generated == EOS).any()) else generated.numel()
            return tokens, new_tokens, 0, new_tokens, static_compile, None
        return run

    def ours(mode: str, threshold: float | None = None):
        model = backbone if mode == "standard" else superthoughts

        def run(ids, mask):
            out = generate(model, ids, mask, max_new_tokens=new_tokens, mode=mode, threshold=threshold,
                           eos_token_id=EOS, compile=compiled)
            # What ran, not what was asked: generate decodes some models eagerly (host_state).
            return (sum(out.num_tokens), out.num_forward_passes, sum(out.num_pair_steps),
                    max(out.num_steps), out.compiled, out.cuda_graph)
        return run

    table = {"hf_dynamic": hf(False)}
    if (device.type == "cuda" or "hf_static_compile" in (args.methods or ())) and not args.no_hf_compile:
        table["hf_static_compile"] = hf(True)
    table["standard"] = ours("standard")
    table["pairs"] = ours("pairs")
    for threshold in args.thresholds:
        table[f"st@{threshold_label(threshold)}"] = ours("superthoughts", threshold)
    if args.methods:
        unknown = sorted(set(args.methods) - set(table))
        if unknown:
            raise SystemExit(f"bench generate: unknown method(s) {unknown}; available here: {sorted(table)}")
        table = {name: fn for name, fn in table.items() if name in args.methods}
    return table


# Fixed per method, so that one method keeps its look across plots set side by side: greys for
# transformers, the palette's blue for our standard decoding, vermillion for pairs; the st@T
# rows take the remaining colours in threshold order. Hatches tell them apart in greyscale.
METHOD_STYLES = {"hf_dynamic": ("#BBBBBB", "//"), "hf_static_compile": ("#777777", "\\\\"),
                 "standard": (PALETTE[0], ""), "pairs": (PALETTE[3], "xx")}
ST_STYLES = [(PALETTE[i], hatch) for i, hatch in ((1, ".."), (2, "oo"), (4, "--"), (5, "++"), (6, "||"))]
METHOD_NAMES = {"hf_dynamic": "transformers generate, dynamic cache",
                "hf_static_compile": "transformers generate, static cache + torch.compile",
                "standard": "ours, standard (1 token / step)", "pairs": "ours, pairs (2 tokens / step)"}


def method_style(name: str, st_index: int) -> tuple[str, str]:
    """(colour, hatch) of a method's bars; ``st_index``: its place among the st@T methods."""
    return METHOD_STYLES.get(name) or ST_STYLES[st_index % len(ST_STYLES)]


def method_label(name: str) -> str:
    """A method's legend entry: its --methods name and what it runs."""
    if name.startswith("st@"):
        return f"{name}: ours, adaptive, MTP confidence threshold {name[3:]}"
    return f"{name}: {METHOD_NAMES[name]}" if name in METHOD_NAMES else name


def plot_title(report: dict) -> str:
    """What the plot shows (greedy decode throughput) and on what: the random model's shape and
    dtype, the device, the lengths, whether our step was compiled, the MTP logit spread that
    sets how often st@T pairs, an MTP input other than "unit". Reads older result JSONs too (keys
    they lack are left out)."""
    compiled = {True: "our step compiled", False: "our step eager"}.get(report.get("compile"))
    spread = report.get("mtp_logit_std")
    setup = ", ".join(part for part in (
        f"prompt {report['prompt_len']}", f"{report['new_tokens']} new tokens", compiled,
        f"MTP logit std {spread:g}" if spread is not None else None,
        f"MTP input {report['mtp_input']}" if report.get("mtp_input", "unit") != "unit" else None,
        None if report.get("complete", True) else "INCOMPLETE run") if part)
    return (f"greedy decode throughput: random-weight {report['shape']} {report['dtype']}\n"
            f"on {report['device']}\n{setup}")


def plot(results: list[dict], path: Path, title: str) -> Path:
    """Generated tokens/s per method (bars) and batch size (groups), on a log axis (the batch
    sizes span an order of magnitude of throughput), every bar labelled with its tokens/s (st@T:
    and its share of pair steps); a method not measured at a batch size is marked so, not drawn
    as an empty gap. Writes ``path``; returns it."""
    plt = pyplot()
    from matplotlib.ticker import FuncFormatter, LogLocator

    names = list(dict.fromkeys(r["method"] for r in results))
    batches = sorted({r["batch"] for r in results})
    width = 0.84 / len(names)
    fig, ax = plt.subplots(figsize=(10, 6))
    rows = {(r["method"], r["batch"]): r for r in results}
    st_names = [name for name in names if name.startswith("st@")]
    lowest = min(r["tokens_per_s"] for r in results)
    labels = []
    for i, name in enumerate(names):
        colour, hatch = method_style(name, st_names.index(name) if name in st_names else 0)
        xs = [b_i + (i - (len(names) - 1) / 2) * width for b_i in range(len(batches))]
        cells = [rows.get((name, b)) for b in batches]
        ax.bar([x for x, r in zip(xs, cells) if r], [r["tokens_per_s"] for r in cells if r], width, color=colour,
               hatch=hatch, edgecolor="black", linewidth=0.6, label=method_label(name))
        for x, r in zip(xs, cells):
            if r is None:  # e.g. a run cut short: not a zero-height bar a reader takes for 0 tokens/s
                ax.text(x, lowest / 2, "not run", rotation=90, ha="center", va="bottom", fontsize=7, color="dimgray")
                continue
            text = f"{r['tokens_per_s']:.0f}"
            if name.startswith("st@"):  # how often it paired, which its tokens/s rests on
                text += f", {r['pair_step_fraction']:.0%} pairs"
            labels.append(ax.text(x, r["tokens_per_s"] * 1.04, text, rotation=90, ha="center", va="bottom",
                                  fontsize=7))
    ax.set_xticks(range(len(batches)), [f"batch {b}" for b in batches])
    ax.set_xlabel("batch size (rows decoded together)")
    ax.set_ylabel("generated tokens / s (log scale)")
    ax.set_yscale("log")
    # Room below the lowest bar for "not run"; above the tallest one for its label (fitted below).
    ax.set_ylim(lowest / 2.5, max(r["tokens_per_s"] for r in results) * 1.5)
    # Plain numbers at 1-2-5 steps: "6 x 10^3" ticks had to be decoded to be read.
    ax.yaxis.set_major_locator(LogLocator(subs=(1.0, 2.0, 5.0)))
    ax.yaxis.set_minor_locator(LogLocator(subs="auto"))
    ax.yaxis.set_major_formatter(FuncFormatter(lambda value, _: f"{value:g}"))
    ax.yaxis.set_minor_formatter(FuncFormatter(lambda value, _: ""))
    ax.grid(axis="y", alpha=0.3)
    ax.set_title(title, fontsize=10)
    fit_texts_above(ax, labels)
    # Under the axes: inside, the upper corners are where the tallest bars' labels go.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=2, fontsize=8, frameon=False, title_fontsize=8,
              title="over each bar: tokens/s; over st@T bars also the share of decode steps that emitted 2 tokens")
    return save_figure(fig, path)


def main(args: argparse.Namespace) -> int:
    """Runs the benchmark; writes the JSON and the PNG; returns 0."""
    try:
        device = torch.device(args.device)
    except RuntimeError as error:
        raise SystemExit(f"bench generate: --device {args.device!r}: {error}") from None
    if device.type not in ("cpu", "cuda"):  # "meta" failed at the first .item(), in a traceback
        raise SystemExit(f"bench generate: --device {args.device}: only cpu and cuda are measured")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise SystemExit(f"bench generate: --device {args.device}: this torch sees no GPU "
                         f"(torch {torch.__version__}, CUDA {torch.version.cuda})")
    if args.output is not None and args.output.suffix.lower() == ".png":
        raise SystemExit(f"bench generate: --output {args.output} names the plot; give the JSON path "
                         "(the plot is written beside it, as .png)")
    check_method_names(args)
    default = RESULTS_DIR / f"generate_{device.type}.json"
    with held_results_file(args.output, default, args.overwrite, "bench generate") as out:
        return measure(args, device, out)


def measure(args: argparse.Namespace, device: torch.device, out: Path) -> int:
    """Every method and batch of ``args`` on ``device``, written to ``out`` (and its PNG) after each
    batch; returns 0."""
    on_gpu = device.type == "cuda"
    commit = git_commit()  # what runs: a commit made in this checkout during the run did not
    apply_threads(args)
    if args.graph_windows < 1:
        raise ValueError(f"bench generate: --graph-windows must be >= 1, got {args.graph_windows}")
    decode_loop.GRAPH_WINDOWS = args.graph_windows
    shape = args.shape or ("qwen2.5-math-1.5b" if on_gpu else "tiny")
    dtype = getattr(torch, args.dtype or ("bfloat16" if on_gpu else "float32"))
    new_tokens = args.new_tokens or (512 if on_gpu else 256)
    backbone, superthoughts = build_models(shape, dtype, device, max(args.prompt_len, 16) + max(new_tokens, 16) + 16,
                                           args.mtp_logit_std, args.mtp_input)
    compiled = resolve_compile("auto" if args.compile is None else args.compile, device, 0.0)
    # Each check exits the benchmark when it fails: "equal" is only ever written as True.
    check = {"equal": True, "standard_vs_transformers": check_standard(backbone, device),
             "fused_vs_reference_step": check_fused_step(superthoughts, device, compiled, args.thresholds[0])}
    print(f"check: our standard greedy == transformers greedy "
          f"({check['standard_vs_transformers']['tokens_compared']} tokens); each of our modes through the "
          f"fused step == the reference step ({check['fused_vs_reference_step']['tokens_compared']} tokens)")

    results = []

    def write_report(complete: bool) -> None:
        report = {
            "device": device_name(device), "torch_version": torch.__version__,
            "transformers_version": transformers.__version__,
            "commit": commit, "shape": shape, "dtype": str(dtype).removeprefix("torch."),
            "prompt_len": args.prompt_len, "new_tokens": new_tokens, "repeats": args.repeats, "check": check,
            "threads": torch.get_num_threads(), "compile": compiled, "mtp_logit_std": args.mtp_logit_std,
            "mtp_input": args.mtp_input,
            "graph_windows": args.graph_windows, "complete": complete, "results": results,
        }
        replace_text(out, json.dumps(report, indent=2) + "\n")
        plot(results, out.with_suffix(".png"), plot_title(report))
        print(f"wrote {out} and {out.with_suffix('.png')}")

    for index, batch in enumerate(args.batch):
        ids, mask = prompts(batch, args.prompt_len, backbone.config.vocab_size, device)
        for name, fn in methods(args, backbone, superthoughts, new_tokens, device, compiled).items():
            fn(ids, mask)  # warm-up (and torch.compile compilation where it applies)
            runs = [synced_time(lambda: fn(ids, mask), device) for _ in range(args.repeats)]
            seconds = statistics.median(t for t, _ in runs)
            tokens, passes, pair_steps, positions, ran_compiled, ran_in_graph = runs[0][1]
            if tokens != batch * new_tokens:  # EOS after all: the counts would not compare
                raise SystemExit(f"bench generate: {name} emitted {tokens} tokens, expected {batch * new_tokens}")
            uses_mtp = name not in (*HF_METHODS, "standard")
            extra = int(uses_mtp and getattr(superthoughts.mtp, "has_cache", False))  # MTP layer's own KV
            row = {
                "method": name, "batch": batch, "seconds": seconds, "tokens": tokens, "forward_passes": passes,
                "compiled": ran_compiled, "cuda_graph": ran_in_graph,
                "tokens_per_s": tokens / seconds, "steps_per_s": passes / seconds,
                "pair_step_fraction": pair_steps / max(tokens - pair_steps, 1),
                # A batch decodes until its slowest row is done: what tokens/s pays for.
                "mean_row_steps": (tokens - pair_steps) / batch, "slowest_row_steps": positions,
                # The last step's input is never written to the cache: prompt + steps - 1 positions.
                "kv_bytes_per_token": kv_bytes_per_token(backbone.config, args.prompt_len + positions - 1,
                                                         tokens // batch, extra, dtype),
            }
            results.append(row)
            print(f"batch {batch:3d} {name:18s} {row['tokens_per_s']:10.1f} tok/s {row['steps_per_s']:8.1f} steps/s "
                  f"pairs {row['pair_step_fraction']:.2f} row steps {row['mean_row_steps']:.0f} mean / "
                  f"{row['slowest_row_steps']} max kv {row['kv_bytes_per_token'] / 1024:.1f} KiB/token"
                  f"{' compiled' if row['compiled'] else ''}{' graph' if row['cuda_graph'] else ''}")
        # After every batch: a run cut short keeps the batches it finished ("complete" false).
        write_report(complete=index == len(args.batch) - 1)

    return 0


if __name__ == "__main__":
    from superthoughts_ext.cli import HelpFormatter  # shows each flag's default, as `superthoughts bench` does

    parser = argparse.ArgumentParser(description=(__doc__ or "").partition("\n")[0], formatter_class=HelpFormatter)
    add_arguments(parser)
    raise SystemExit(main(parser.parse_args()))
