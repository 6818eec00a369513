"""`superthoughts generate`: decode one prompt with a checkpoint, print the text and its statistics.

    superthoughts generate --model DIR "What is 3 + 4?" [--mode pairs] [--stream]
"""
from __future__ import annotations

import argparse
import math
import os
import sys
import warnings
from pathlib import Path
from typing import Any

import torch

from superthoughts_ext.cli import transformers_progress_bars, utf8_text
from superthoughts_ext.generate import ContextStopWarning, generate, model_context
from superthoughts_ext.generate_settings import MODES, samples
from superthoughts_ext.stop_tokens import is_superthoughts, stop_token_ids
from superthoughts_ext.eval_data import SYSTEM_PROMPT, build_prompt
from superthoughts_ext.reference import MIN_SAMPLING_TEMPERATURE


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Options of `superthoughts generate`."""
    parser.add_argument("prompt", type=utf8_text, help="user message (rendered with the tokenizer's chat template)")
    parser.add_argument("--model", required=True,
                        help="checkpoint directory (SuperThoughts or plain), or a Hugging Face repo id (org/name) in "
                             "the local hub cache")
    parser.add_argument("--tokenizer", help=TOKENIZER_HELP)
    parser.add_argument("--mode", choices=MODES, default=None,
                        help="default: superthoughts for a SuperThoughts checkpoint, else standard")
    parser.add_argument("--threshold", type=float, default=None, help="MTP confidence (default: the model's)")
    parser.add_argument("--threshold-main", type=float, default=None,
                        help="main-head confidence a pair step also needs (default: the model's)")
    parser.add_argument("--max-new-tokens", type=int, default=512, help="generated tokens at most")
    parser.add_argument("--temperature", type=float, default=0.0,
                        help="0 (or below 1e-5) = greedy, else Gumbel-max sampling")
    parser.add_argument("--seed", type=int, default=0, help="sampling noise seed")
    parser.add_argument("--no-kernels", action="store_true", help="use the plain-torch reference step")
    parser.add_argument("--no-cuda-graphs", action="store_true", help="launch each decode step eagerly on CUDA")
    parser.add_argument("--compile", action=argparse.BooleanOptionalAction, default=None,
                        help="torch.compile the decode step (default: on for greedy CUDA decoding)")
    parser.add_argument("--no-chat-template", action="store_true", help="feed the prompt as raw text")
    # One or the other (as in train): both write system_prompt, and the last given would win.
    system = parser.add_mutually_exclusive_group()
    system.add_argument("--system-prompt", default=SYSTEM_PROMPT, type=utf8_text, metavar="TEXT",
                        help="system message (default: the chain-of-thought prompt that train and eval use)")
    system.add_argument("--template-system-prompt", action="store_const", const=None, dest="system_prompt",
                        help="no system message of ours: the chat template writes its own default, if any")
    parser.add_argument("--stream", action="store_true", help="print tokens as they are decoded")
    parser.add_argument("--device", default=None, help="default: cuda when available, else cpu")
    parser.add_argument("--dtype", default="auto", choices=("auto", "float32", "bfloat16", "float16"),
                        help="weights dtype; auto = the checkpoint's")


def _stop_note(reason: str, max_new_tokens: int, model: Any) -> str:
    """What the CLI's statistics line adds when the output did not end at an EOS: the limit
    that stopped it (`GenerateOutput.stop_reasons`)."""
    if reason == "length":
        return f" (stopped by --max-new-tokens {max_new_tokens})"
    if reason == "context":
        return f" (stopped by the model's context, max_position_embeddings={model_context(model)})"
    return ""


TOKENIZER_HELP = "directory of the tokenizer (default: the checkpoint's own, which `superthoughts train` saves)"


def load_checkpoint(path: str, device: str | None, dtype: str, tokenizer: str | None = None) -> tuple[Any, Any, str]:
    """(model in eval mode, tokenizer, device) for `superthoughts generate` / `eval`. A missing
    directory, one without tokenizer files, an unknown device or a CUDA device on a torch
    without one is a ValueError / FileNotFoundError the commands print as a one-line error,
    not a traceback. ``tokenizer``: another directory to load the tokenizer from. Either may be a
    Hugging Face repo id in the local hub cache (`hub_cache.resolve_model_path`)."""
    from superthoughts_ext.checkpoint import has_tokenizer_files, read_model_dir
    from superthoughts_ext.hub_cache import resolve_model_path
    from superthoughts_ext.modeling import load_model, load_tokenizer

    # The snapshot folders from here on, so that the checks below see what will load.
    path = os.fspath(resolve_model_path(path, "--model")) if path else path
    tokenizer = os.fspath(resolve_model_path(tokenizer, "--tokenizer", weights=False)) if tokenizer else tokenizer
    if not path or (Path(path).exists() and not Path(path).is_dir()):  # "" is the current folder to Path
        raise FileNotFoundError(f"--model {path!r}: {'not a directory' if path else 'no such directory'}")
    tokenizer_path = tokenizer if tokenizer is not None else path
    if tokenizer is not None and not Path(tokenizer).is_dir():  # before the weights load (minutes for a 7B model)
        what = "not a directory" if Path(tokenizer).exists() and tokenizer else "no such directory"
        raise FileNotFoundError(f"--tokenizer {tokenizer!r}: {what}")
    if Path(tokenizer_path).is_dir() and not has_tokenizer_files(tokenizer_path):
        # Checked before the weights load; transformers would build an empty tokenizer here.
        hint = "" if tokenizer else "; pass --tokenizer DIR (the base model's directory, say)"
        if tokenizer is None:  # no model there either (a run's output before its final save): that said first
            read_model_dir(path, "--model")
        raise FileNotFoundError(f"no tokenizer files in {tokenizer_path!r}{hint}")

    device = device if device is not None else ("cuda" if torch.cuda.is_available() else "cpu")
    try:
        kind = torch.device(device).type
    except RuntimeError as error:
        raise ValueError(f"--device {device!r}: {error}") from None
    if kind == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device {device}: this torch has no CUDA device (torch.cuda.is_available() is False)")
    try:  # mps, xpu, hpu, ...: each fails in its own way (RuntimeError, AssertionError, ImportError)
        torch.empty(0, device=device)
    except Exception as error:  # noqa: BLE001 - any of them means the device cannot be used
        raise ValueError(f"--device {device}: not available in this torch ({type(error).__name__}: "
                         f"{str(error).splitlines()[0] if str(error) else 'no message'})") from None
    model = load_model(path, dtype=None if dtype == "auto" else getattr(torch, dtype), device=device)
    return model.eval(), load_tokenizer(tokenizer_path), device


def option_error(args: argparse.Namespace) -> str | None:
    """What is wrong with the options alone, checked before loading the model (minutes for a
    large one); None when nothing is."""
    if args.max_new_tokens < 1:
        return f"--max-new-tokens must be >= 1, got {args.max_new_tokens}"
    if not math.isfinite(args.temperature) or args.temperature < 0.0:
        return f"--temperature must be finite and >= 0, got {args.temperature}"
    for flag, value in (("--threshold", args.threshold), ("--threshold-main", args.threshold_main)):
        if value is not None and not 0.0 <= value <= 1.0:  # NaN fails too
            return f"{flag} must lie in [0, 1], got {value}"
    if args.mode not in (None, "superthoughts") and (args.threshold is not None or args.threshold_main is not None):
        return f"--threshold / --threshold-main apply to superthoughts mode, not {args.mode}"
    if args.compile and samples(args.temperature):
        # generate's own message names its compile='auto' argument, not this command's options.
        return (f"--compile needs greedy decoding (--temperature below {MIN_SAMPLING_TEMPERATURE:g}, got "
                f"{args.temperature}); sampled decoding runs uncompiled: leave out --compile")
    return None


def run(args: argparse.Namespace) -> int:
    """Runs `superthoughts generate`: prints the text, then one line of statistics."""
    from transformers import TextStreamer

    error = option_error(args)
    if error:
        print(f"superthoughts generate: error: {error}", file=sys.stderr)
        return 2
    try:
        # transformers' loading bar as whole lines when stderr is a log file, like train's and eval's.
        with transformers_progress_bars(True):
            model, tokenizer, device = load_checkpoint(args.model, args.device, args.dtype, args.tokenizer)
    except (ValueError, FileNotFoundError) as error:
        print(f"superthoughts generate: error: {error}", file=sys.stderr)
        return 2
    mode = args.mode or ("superthoughts" if is_superthoughts(model) else "standard")
    if mode != "superthoughts" and (args.threshold is not None or args.threshold_main is not None):
        # generate ignores them there: say so rather than print a run that did not use them.
        print(f"superthoughts generate: error: --threshold / --threshold-main apply to superthoughts mode, not {mode}",
              file=sys.stderr)
        return 2
    raw = args.no_chat_template or not getattr(tokenizer, "chat_template", None)
    try:
        text = args.prompt if raw else build_prompt(tokenizer, args.prompt, args.system_prompt)
    except ValueError as error:  # a template without a system turn
        print(f"superthoughts generate: error: {error}", file=sys.stderr)
        return 2
    # A chat template writes the BOS itself; raw text gets the tokenizer's (Llama: <|begin_of_text|>).
    prompt_ids = tokenizer(text, add_special_tokens=raw)["input_ids"]
    if not prompt_ids:
        print("superthoughts generate: error: empty prompt (it has no tokens)", file=sys.stderr)
        return 2
    input_ids = torch.tensor([prompt_ids], dtype=torch.long, device=device)
    # Special tokens hidden as in the non-streamed output (which decodes with skip_special_tokens).
    streamer = TextStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True) if args.stream else None
    compile_arg = "auto" if args.compile is None else args.compile
    try:
        eos_ids = stop_token_ids(model, tokenizer)  # the ids `superthoughts eval` stops on
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ContextStopWarning)  # the statistics line says so
            result = generate(model, input_ids, max_new_tokens=args.max_new_tokens, mode=mode, threshold=args.threshold,
                              threshold_main=args.threshold_main, temperature=args.temperature, seed=args.seed,
                              eos_token_id=eos_ids, use_kernels=not args.no_kernels,
                              cuda_graphs=False if args.no_cuda_graphs else "auto", compile=compile_arg,
                              streamer=streamer)
    except ValueError as error:
        print(f"superthoughts generate: error: {error}", file=sys.stderr)
        return 2
    if streamer is None:
        print(tokenizer.decode(result.sequences[0], skip_special_tokens=True))
    tokens, steps, pairs = result.num_tokens[0], result.num_steps[0], result.num_pair_steps[0]
    cut = _stop_note(result.stop_reasons[0], args.max_new_tokens, model)
    # One call per process: a compiled step is compiled in this very call (`superthoughts eval`
    # and `bench generate` time warm calls).
    compile_note = " (time includes compiling the decode step)" if result.compiled else ""
    print(f"[{mode}] tokens={tokens} steps={steps} pair_steps={pairs} "
          f"reduction={1 - steps / max(tokens, 1):.3f} time={result.wall_time:.3f}s "
          f"tokens/s={result.tokens_per_s:.1f}{compile_note}{cut}")
    return 0
