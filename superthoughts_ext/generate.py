"""SuperThoughts decoding: `generate` (the `superthoughts generate` command is in generate_cli).

A step feeds ONE position per row (a unit C(E[a], E[b]), or a token in "standard" mode), runs
the backbone and the MTP, ONE lm_head GEMM for both heads and ONE `superthoughts_step`, and
appends 1 or 2 tokens per row on the device (a model with mtp_input "next_token" runs two lm_head
GEMMs and two launches: its MTP head reads the main head's token, `next_token_mtp`). The loop
itself is in `decode_loop`.

Modes:
    superthoughts  adaptive: the second token is kept when both heads are confident enough;
    pairs          threshold 0: every step emits two tokens (until EOS or the token limit);
    standard       one token per step from the backbone alone (also for a plain HF model);
                   greedy output equals transformers' `generate` token for token.
"""
from __future__ import annotations

import operator
import sys
import time
import types
import warnings
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

import torch

from superthoughts_ext import attention, decode_loop
from superthoughts_ext.generate_checks import (check_model_and_inputs, check_prompt, check_seed, warn_training_mode,
                                               warn_unmasked_pads)
from superthoughts_ext.generate_settings import (_check_args, _check_autocast, _context_steps, _decode_budget,
                                                 _graphs_and_compile, _thresholds, samples)
# Re-exported: tests and benchmarks/bench_generate.py import them from here.
from superthoughts_ext.generate_settings import MODES, resolve_compile  # noqa: F401
from superthoughts_ext.next_token_mtp import NextTokenStepper
from superthoughts_ext.reference import int64_of_low_64_bits
# stop_token_ids is re-exported: docs/evaluation.md names it as superthoughts_ext.generate.stop_token_ids.
from superthoughts_ext.stop_tokens import pad_id, resolve_eos_ids, stop_token_ids, vocab_size  # noqa: F401

# Decode steps between host reads of `finished` on a GPU (each read syncs the device, and
# stalls the queue of launches behind it). On a CPU a read costs nothing: every step checks,
# so no step runs after the last row finished.
CHECK_EVERY = 8


@dataclass
class GenerateOutput:
    """Result of `generate`, one list entry per batch row.

    sequences: generated token ids without padding, EOS included when emitted.
    num_tokens: len(sequences[row]) (= num_steps + num_pair_steps).
    num_steps: decode steps that emitted a token for the row (prefill's step included).
    num_pair_steps: steps of the row that emitted two tokens.
    wall_time: seconds from prefill to the end of decoding (one device sync, at the end).
    num_forward_passes: model passes run for the whole batch (prefill + decode steps).
    compiled, cuda_graph: whether the decode step ran through torch.compile / a CUDA graph
        (what the `compile` and `cuda_graphs` arguments resolved to for this model and call).
    stop_reasons: why each row ended: "eos" (it emitted a stop token), "length" (max_new_tokens)
        or "context" (its next position would pass max_position_embeddings; warned about).
    nonfinite_rows: rows that met main-head logits with no finite maximum (NaN, all -inf, +inf:
        a float16 model that overflows) and emitted the pad id there (warned about).
    """

    sequences: list[list[int]]
    num_tokens: list[int]
    num_steps: list[int]
    num_pair_steps: list[int]
    wall_time: float
    num_forward_passes: int
    compiled: bool = False
    cuda_graph: bool = False
    stop_reasons: list[str] = field(default_factory=list)
    nonfinite_rows: list[int] = field(default_factory=list)

    @property
    def tokens_per_s(self) -> float:
        """Generated tokens of all rows per second of wall time."""
        return sum(self.num_tokens) / self.wall_time if self.wall_time > 0 else 0.0

    @property
    def steps_per_s(self) -> float:
        """Batch-wide forward passes per second of wall time."""
        return self.num_forward_passes / self.wall_time if self.wall_time > 0 else 0.0


class ContextStopWarning(UserWarning):
    """Rows of a `generate` call stopped at the model's context before their token budget."""


class NonFiniteLogitsWarning(UserWarning):
    """Rows of a `generate` call met main-head logits with no finite maximum (GenerateOutput.nonfinite_rows)."""


def model_context(model: Any) -> int | None:
    """The positions a model (a SuperThoughts model: its backbone) can take
    (max_position_embeddings; None: not said)."""
    backbone = getattr(model, "backbone", model)
    return getattr(getattr(backbone, "config", None), "max_position_embeddings", None)


class _StreamFeed:
    """Feeds a streamer (transformers' TextStreamer protocol: put(tensor) then end()).

    Batch 1 gets 1-D LongTensors of new tokens, like transformers' generate; a larger batch
    gets a list of per-row 1-D tensors (possibly empty). Each feed syncs the device.
    """

    def __init__(self, streamer: Any, state: decode_loop.DecodeState, prompts: list[torch.Tensor]) -> None:
        from transformers import TextStreamer

        if isinstance(streamer, TextStreamer) and len(prompts) > 1:
            # It would fail on the first per-row list with an AttributeError on `shape`.
            raise ValueError(f"generate: {type(streamer).__name__} streams batch 1 only (as in transformers' "
                             f"generate), got a batch of {len(prompts)}; pass a streamer whose put() takes "
                             "a list of per-row tensors")
        self.streamer, self.state = streamer, state
        self.sent = [0] * len(prompts)
        streamer.put(prompts[0].unsqueeze(0) if len(prompts) == 1 else prompts)

    def __call__(self) -> None:
        written = self.state.write_pos.tolist()
        out = self.state.out.cpu()
        new = [out[row, self.sent[row] : written[row]] for row in range(len(written))]
        self.sent = written
        if len(new) > 1:
            self.streamer.put(new)
        elif new[0].numel() > 0:
            self.streamer.put(new[0])


def _step_config(model: Any, eos: int, thresholds: tuple[float, float], temperature: float,
                 seed: int | Sequence[int], use_kernels: bool, ignore_eos: bool,
                 context: int | None, device: torch.device) -> decode_loop.StepConfig:
    """The constants of every decode step: the step op (kernels or reference), ids, thresholds,
    sampling (per-row seeds as a [B] int64 tensor on `device`, where the op reads them)."""
    if use_kernels:
        from superthoughts_ext.ops import superthoughts_step as step_fn
    else:
        from superthoughts_ext.reference import superthoughts_step_ref as step_fn
    # Greedy steps ignore the seed and the temperature: constants keep them from keying a new
    # compiled step.
    sampled = samples(temperature)
    key, row_keys = 0, None
    if sampled and isinstance(seed, (list, tuple)):  # one key per row, all read by one launch
        row_keys = torch.tensor([int64_of_low_64_bits(value) for value in seed], dtype=torch.int64, device=device)
    elif sampled:
        key = int64_of_low_64_bits(seed)
    return decode_loop.StepConfig(step_fn, pad_id(model, eos), eos, *thresholds,
                                  float(temperature) if sampled else 0.0, key, ignore_eos, context, row_keys)


def _allocate(model: Any, backbone: Any, mode: str, attention_mask: torch.Tensor, max_new_tokens: int,
              max_steps: int, eos_ids: list[int]) -> tuple[decode_loop.DecodeState, Any]:
    """The output buffers and the stepper with its static KV cache, sized for prefill + max_steps."""
    batch, prompt_len = attention_mask.shape
    positions = prompt_len + max_steps
    # The output holds what prefill's step and max_steps more can emit, not a budget that the
    # context cuts short (max_new_tokens=10**9 must not allocate 8 GB per row); rows reaching
    # that width have run every step already, so the limit it sets never ends a row early.
    width = min(max_new_tokens, (1 + max_steps) * (1 if mode == "standard" else 2))
    state = decode_loop.DecodeState.allocate(attention_mask, positions, width, extra_eos=eos_ids[1:])
    stepper_cls = decode_loop.BackboneStepper if mode == "standard" else decode_loop.SuperThoughtsStepper
    if mode != "standard" and model.config.mtp_input == "next_token":
        stepper_cls = NextTokenStepper
    return state, stepper_cls(backbone if mode == "standard" else model, batch, positions)


def _prefill(stepper: Any, state: decode_loop.DecodeState, cfg: decode_loop.StepConfig, input_ids: torch.Tensor,
             attention_mask: torch.Tensor, feed: _StreamFeed | None) -> None:
    """Runs the prompts through the model and emits each row's first token(s) (the op's step offset 0)."""
    logits = stepper.prefill(input_ids, decode_loop.prompt_position_ids(attention_mask), state, cfg)
    decode_loop.sample(stepper, state, logits, cfg, offset=0)
    if feed is not None:
        feed()


def _stop_reason(sequence: list[int], eos_ids: list[int], ignore_eos: bool, max_new_tokens: int) -> str:
    """Why a row ended (`GenerateOutput.stop_reasons`): a row that neither emitted a stop token
    nor filled its budget ended at the context (`decode_loop.advance`)."""
    if sequence and sequence[-1] in eos_ids and not ignore_eos:
        return "eos"
    return "length" if len(sequence) >= max_new_tokens else "context"


def _collect(state: decode_loop.DecodeState, wall_time: float, steps_run: int, compiled: bool,
             cuda_graph: bool, eos_ids: list[int], ignore_eos: bool, max_new_tokens: int,
             context: int | None) -> GenerateOutput:
    """Reads the per-row tokens and step counts back to the host, once decoding is done."""
    written = state.write_pos.tolist()
    out = state.out.cpu()
    sequences = [out[row, : written[row]].tolist() for row in range(len(written))]
    reasons = [_stop_reason(sequence, eos_ids, ignore_eos, max_new_tokens) for sequence in sequences]
    cut = [row for row, reason in enumerate(reasons) if reason == "context"]
    if cut:
        # transformers' generate warns too; a caller reading only `sequences` would not know.
        warnings.warn(f"generate: rows {cut[:10]}{' ...' if len(cut) > 10 else ''} stopped at the model's context "
                      f"(max_position_embeddings={context}) before max_new_tokens={max_new_tokens} and without a "
                      "stop token (GenerateOutput.stop_reasons)", ContextStopWarning, stacklevel=4)
    unscored = state.unscored.nonzero().flatten().tolist()
    if unscored:
        warnings.warn(f"generate: rows {unscored[:10]}{' ...' if len(unscored) > 10 else ''} met main-head logits "
                      "with no finite maximum (NaN, all -inf, or +inf, as from a float16 model that overflows) "
                      "and emitted the pad id there; load the model in bfloat16 or float32", NonFiniteLogitsWarning,
                      stacklevel=4)
    return GenerateOutput(
        sequences=sequences,
        num_tokens=written,
        num_steps=state.num_steps.tolist(),
        num_pair_steps=state.num_pair_steps.tolist(),
        wall_time=wall_time,
        num_forward_passes=1 + steps_run,
        compiled=compiled,
        cuda_graph=cuda_graph,
        stop_reasons=reasons,
        nonfinite_rows=unscored,
    )


@torch.inference_mode()
def generate(
    model: Any,
    input_ids: torch.Tensor,
    attention_mask: torch.Tensor | None = None,
    *,
    max_new_tokens: int,
    mode: str = "superthoughts",
    threshold: float | None = None,
    threshold_main: float | None = None,
    temperature: float = 0.0,
    seed: int | Sequence[int] = 0,
    eos_token_id: int | list[int] | None = None,
    use_kernels: bool = True,
    cuda_graphs: bool | str = "auto",
    compile: bool | str = "auto",
    streamer: Any = None,
    ignore_eos: bool = False,
) -> GenerateOutput:
    """Decodes a left-padded batch of prompts.

    Args:
        model: a SuperThoughtsForCausalLM, or a plain HF causal LM (mode "standard" only).
        input_ids: [B, T] prompt ids, left-padded (rows of different lengths).
        attention_mask: [B, T] 0/1, zeros only before each row's first token; None = all ones.
        max_new_tokens: tokens per row at most (>= 1); a pair step with one slot left keeps
            only its first token. A row also stops when its next position would pass the
            context (max_position_embeddings), whatever the other rows' lengths.
        mode: "superthoughts", "pairs" (threshold 0) or "standard" (backbone alone).
        threshold, threshold_main: MTP / main-head confidence needed to keep the second token
            in mode "superthoughts" (None: model.config.threshold / threshold_main, or 0);
            the other modes ignore them. Compared without rounding the confidence
            (`reference.confidence`): 1.0 keeps a pair only when every other MTP probability
            underflows float32. The op takes thresholds as float32: 0.99999999 rounds to 1.0.
        temperature: 0 greedy; >= 1e-5 (`samples`) Gumbel-max sampling from a Philox stream
            keyed by `seed` and counted by (step, row, head): reproducible, but with one seed a
            row's samples depend on its index in the batch; below 1e-5 greedy as well.
        seed: any integer; only its low 64 bits count (seeds equal modulo 2**64 sample alike).
            A list of B integers gives each row its own: row r then samples exactly as it would
            alone (batch 1) with seed[r], wherever it stands in the batch (still one step op
            launch per step; `superthoughts eval --samples` relies on it).
        eos_token_id: stop token, or several: any of them ends a row (None: the model's
            generation config / config).
        use_kernels: the compiled step op; False runs the plain-torch reference.
        cuda_graphs: "auto" (on for greedy CUDA decoding), True (greedy only) or False.
        compile: run the decode step through torch.compile (fullgraph) before it is captured
            in the CUDA graph: "auto" (on for greedy CUDA decoding), True (greedy only: the
            sampling counter would recompile every step) or False. The first call per
            (batch, mode / thresholds, dtype) compiles; later calls reuse that step whatever
            their prompt length and max_new_tokens (dynamic sizes of the compiled step).
        streamer: gets put(new tokens) after every step (this syncs every step) and end(), once,
            also when generate raises (a consumer thread would wait for it forever).
        ignore_eos: decode exactly max_new_tokens per row (benchmarks): EOS does not stop a row.
            The first EOS id as a step's first token still refuses that step's second token (the
            step op's rule); the other EOS ids do not (benchmarks keep EOS from winning at all).

    Returns:
        GenerateOutput with per-row sequences and step statistics.
    """
    failed = True
    try:
        check_model_and_inputs(model, input_ids, attention_mask)
        superthoughts = _check_args(model, mode, max_new_tokens, temperature, seed)
        max_new_tokens = operator.index(max_new_tokens)  # a numpy int or a 0-dim tensor passed the check
        warn_training_mode(model)
        _check_autocast(model.backbone if superthoughts else model, input_ids.device)
        eos_ids = resolve_eos_ids(model, eos_token_id)
        eos = eos_ids[0]
        vocab = vocab_size(model)
        if not 0 <= eos < vocab:  # checked before prefill, for the reference path too
            raise ValueError(f"generate: eos_token_id {eos} (the EOS the step op stops on) is outside the vocabulary "
                             f"[0, {vocab})")
        if attention_mask is None:
            warn_unmasked_pads(input_ids, pad_id(model, eos), eos_ids)
            attention_mask = torch.ones_like(input_ids)
        lengths = check_prompt(input_ids, attention_mask, vocab)  # an empty batch too: [0, T], not any empty tensor
        check_seed(seed, input_ids.shape[0])
        if input_ids.shape[0] == 0:
            failed = False
            return GenerateOutput([], [], [], [], 0.0, 0)
        backbone = model.backbone if superthoughts else model
        context = model_context(backbone)
        max_steps = _context_steps(context, lengths, max_new_tokens)
        device = input_ids.device
        graphs, compiled = _graphs_and_compile(model, backbone, mode, cuda_graphs, compile, device, temperature)
        thresholds = _thresholds(model, mode, threshold, threshold_main)
        # Thresholds 0 / 0 keep every pair, as mode "pairs" does: its shorter cache suffices.
        always_pairs = mode == "pairs" or (mode == "superthoughts" and thresholds == (0.0, 0.0))
        check_at, max_steps = _decode_budget(mode, max_new_tokens, max_steps, ignore_eos, always_pairs)
        cfg = _step_config(model, eos, thresholds, temperature, seed, use_kernels, ignore_eos, context, device)

        input_ids = input_ids.to(torch.int64)
        attention_mask = attention_mask.to(torch.int64)
        state, stepper = _allocate(model, backbone, mode, attention_mask, max_new_tokens, max_steps, eos_ids)
        feed = None
        if streamer is not None:
            prompt_len = input_ids.shape[1]
            prompts = [input_ids[row, prompt_len - int(lengths[row]) :].cpu() for row in range(input_ids.shape[0])]
            feed = _StreamFeed(streamer, state, prompts)

        if device.type == "cuda":
            torch.cuda.synchronize(device)
        start = time.perf_counter()
        # Decode steps attend without copying the KV cache per query head (attention.py); on GPUs
        # only on request until its speed and its agreement with transformers in bf16 are measured.
        with attention.folded_gqa_decoding(model, enabled=attention.folded_by_default(device)):
            _prefill(stepper, state, cfg, input_ids, attention_mask, feed)
            steps_run = decode_loop.decode(stepper, state, cfg, max_steps, cuda_graph=graphs, compiled=compiled,
                                           check_every=CHECK_EVERY if device.type == "cuda" else 1, check_at=check_at,
                                           on_step=feed)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        wall_time = time.perf_counter() - start
        result = _collect(state, wall_time, steps_run, compiled, graphs, eos_ids, ignore_eos, max_new_tokens, context)
        failed = False
        return result
    finally:
        if streamer is not None:
            _end_stream(streamer, failed)


def _end_stream(streamer: Any, failed: bool) -> None:
    """Ends the stream once, whether `generate` returns or raises (bad arguments included): a
    TextIteratorStreamer's consumer waits for end() forever. After a failure, an error of end()
    itself (the closed pipe that failed put() again) must not replace the one being raised."""
    if not failed:
        streamer.end()
        return
    try:
        streamer.end()
    except Exception:  # noqa: BLE001 - the error that stopped decoding is the one to report
        pass


class _CallableModule(types.ModuleType):
    """This module, callable as `generate`: the package attribute `superthoughts_ext.generate` is
    this module once it is imported (Python binds submodules onto their package), and the docs
    both call `superthoughts_ext.generate(model, ...)` (README.md, docs/generation.md) and name
    `superthoughts_ext.generate.stop_token_ids` (docs/evaluation.md)."""

    def __call__(self, *args: Any, **kwargs: Any) -> GenerateOutput:
        return generate(*args, **kwargs)


sys.modules[__name__].__class__ = _CallableModule
