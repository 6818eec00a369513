"""The decode loop behind `superthoughts_ext.generate`: static buffers, prefill, decode_step, sample.

Every tensor the loop touches after prefill lives in a `DecodeState` allocated once per call, and
each step updates it in place (next input, position ids, emitted tokens, counters, `finished`).
That is what lets a whole step - backbone position, MTP, one lm_head GEMM, one
`superthoughts_step` launch, bookkeeping - be captured as a CUDA graph (one per attention
window span, `graph_window`) and replayed with no host work and no host-device sync; the host
only reads `finished` every few steps.
With `compile`, the step is first run through torch.compile (inductor fuses the many small
elementwise ops of RMSNorm, rotary, SiLU and the bookkeeping) and the compiled step is what
the CUDA graph captures.

Three steppers share that loop: `SuperThoughtsStepper` (unit inputs, both heads),
`next_token_mtp.NextTokenStepper` (its variant whose MTP head reads the main head's token) and
`BackboneStepper` (plain one-token decoding of an HF causal LM, for mode "standard").
"""
from __future__ import annotations

import contextlib
import functools
import inspect
from collections.abc import Callable
from dataclasses import dataclass

import torch

from superthoughts_ext import kv_cache

StepFn = Callable[..., tuple[torch.Tensor, torch.Tensor, torch.Tensor, torch.Tensor]]
# Compiled decode steps kept per code object: one per (stepper type, batch, scalar settings,
# dtype); cache length, attention window and max_new_tokens are dynamic sizes.
COMPILE_RECOMPILE_LIMIT = 64
# CUDA graphs per generate call: each covers an equal span of the decode columns, at least
# GRAPH_MIN_SPAN long, and attends up to its end. More spans read fewer unwritten columns; each
# costs one eager warm-up step and one capture, which a short span does not win back (at the
# benchmarks' 512 new tokens there is one graph, as before windows; at 2048, four).
GRAPH_WINDOWS = 4
GRAPH_MIN_SPAN = 512


@dataclass
class StepConfig:
    """Arguments of the step op (scalars, and the per-row seeds tensor) and of the bookkeeping,
    fixed for one generate call."""

    step_fn: StepFn  # ops.superthoughts_step or reference.superthoughts_step_ref
    pad_id: int
    eos_id: int
    threshold: float
    threshold_main: float
    temperature: float
    # One Philox key for the batch (0 with row_seeds): the op keys its noise by the batch row too.
    seed: int
    ignore_eos: bool
    # Position ids must stay below it (max_position_embeddings; None: no limit): a row whose
    # next position would reach it is finished, so rows of one batch hit it independently.
    context: int | None = None
    # [B] int64 on the model's device, one Philox key per row, or None: the op then samples
    # each row as a batch of one with its key, in the same single launch.
    row_seeds: torch.Tensor | None = None


@dataclass
class DecodeState:
    """Static device buffers of one generate call (B rows, P cache positions, M = max_new_tokens,
    or the fewer tokens the context leaves room for)."""

    inputs: torch.Tensor  # [B, 1, H] next unit input, or [B, 1] int64 next token (standard)
    position_ids: torch.Tensor  # [B, 1] int64 position id of `inputs` per row
    attention_mask: torch.Tensor  # [B, P] int64: prompt mask, then ones for every decode column
    finished: torch.Tensor  # [B] bool: EOS emitted, M tokens reached or the context full
    out: torch.Tensor  # [B, M + 1] int64 emitted tokens; column M swallows dropped writes
    write_pos: torch.Tensor  # [B] int64 tokens emitted so far
    num_steps: torch.Tensor  # [B] int64 steps that emitted at least one token
    num_pair_steps: torch.Tensor  # [B] int64 steps that emitted two tokens
    slot: torch.Tensor  # [1, 2] int64 (0, 1): offsets of a step's two tokens
    # [B] bool: a step whose main-head logits had no finite maximum (NaN, all -inf, or +inf from
    # an overflowing float16 model): the op emitted pad_id there, which generate() warns about.
    unscored: torch.Tensor
    prompt_len: int  # T: cache columns the prompt fills; decode step s writes column T + s
    # [K] int64 EOS ids besides the op's one (a model may list several), or None.
    extra_eos: torch.Tensor | None = None

    @classmethod
    def allocate(cls, attention_mask: torch.Tensor, max_positions: int, max_new_tokens: int,
                 extra_eos: list[int] | tuple[int, ...] = ()) -> DecodeState:
        """Buffers for a left-padded prompt mask [B, T]; P = max_positions >= T; `extra_eos`:
        stop ids besides StepConfig.eos_id."""
        batch, prompt_len = attention_mask.shape
        device = attention_mask.device
        mask = torch.ones(batch, max_positions, dtype=torch.int64, device=device)
        mask[:, :prompt_len] = attention_mask
        zeros = torch.zeros(batch, dtype=torch.int64, device=device)
        return cls(
            inputs=torch.empty(0, device=device),
            # The last prompt position; each `sample` moves it one position on.
            position_ids=(attention_mask.sum(dim=1, keepdim=True) - 1).to(torch.int64),
            attention_mask=mask,
            finished=torch.zeros(batch, dtype=torch.bool, device=device),
            out=torch.zeros(batch, max_new_tokens + 1, dtype=torch.int64, device=device),
            write_pos=zeros.clone(),
            num_steps=zeros.clone(),
            num_pair_steps=zeros.clone(),
            slot=torch.arange(2, device=device).unsqueeze(0),
            unscored=torch.zeros(batch, dtype=torch.bool, device=device),
            prompt_len=prompt_len,
            extra_eos=torch.tensor(extra_eos, dtype=torch.int64, device=device) if extra_eos else None,
        )

    @property
    def max_new_tokens(self) -> int:
        """M, the tokens per row at most, from the width of `out` (a dynamic size, not a
        constant, in a compiled step)."""
        return self.out.shape[1] - 1

    def mark_sizes_dynamic(self) -> None:
        """For torch.compile: M is a symbolic size of the compiled step (with the cache length,
        kv_cache.mark_positions_dynamic), so one compile serves every max_new_tokens."""
        torch._dynamo.mark_dynamic(self.out, 1)


def prompt_position_ids(attention_mask: torch.Tensor) -> torch.Tensor:
    """Position ids [B, T] of a left-padded prompt, as transformers' generate computes them."""
    position_ids = attention_mask.long().cumsum(dim=-1) - 1
    return position_ids.masked_fill(attention_mask == 0, 1)


class _Stepper:
    """What both steppers share: a static cache (`self.cache`, made by the subclass) whose
    attention window follows the width of each call's mask."""

    def attend(self, mask: torch.Tensor) -> torch.Tensor:
        """`mask` [B, W] (the first W columns of the call's attention mask), after pointing the
        cache's attention at its first W positions. In a compiled step W is a symbolic size, so
        one compiled graph serves every window."""
        kv_cache.set_window(self.cache, mask.shape[1])
        return mask


class SuperThoughtsStepper(_Stepper):
    """Prompt positions, then one unit C(E[a], E[b]) per step; logits of both heads [2, B, V]."""

    def __init__(self, model, batch: int, max_positions: int) -> None:
        self.model = model
        self.embedding = model.backbone.get_input_embeddings()
        self.embed = self.embedding.weight  # [V, H]
        self.merge_weight = model.compressor.merge_weight  # [H, 2H] or None (MLP compressor)
        self.merge_bias = model.compressor.merge_bias if self.merge_weight is not None else None
        self.cache = model.new_cache(batch, max_positions, device=self.embed.device, dtype=self.embed.dtype)

    def prefill(self, input_ids: torch.Tensor, position_ids: torch.Tensor, state: DecodeState,
                cfg: StepConfig) -> torch.Tensor:
        """Runs the prompt [B, T] through backbone and MTP; logits [2, B, V] of its last position."""
        embeds = self.embedding(input_ids)  # [B, T, H]
        mask = self.attend(state.attention_mask[:, : input_ids.shape[1]])
        h, h_mtp = self.model.hidden_states(embeds, position_ids, mask, self.cache)
        # new_zeros, not zeros_like: at B = 1 that keeps the prompt's strides ((T * H, H, 1)),
        # which a compiled step guards on: one compile per prompt length.
        state.inputs = embeds.new_zeros(embeds.shape[0], 1, embeds.shape[2])  # [B, 1, H]
        return self.model.head_logits(h[:, -1], h_mtp[:, -1])

    def forward(self, state: DecodeState, mask: torch.Tensor, cfg: StepConfig, offset: int) -> torch.Tensor:
        """One unit position per row from `state.inputs`, attending over the columns of `mask`
        [B, W]; logits [2, B, V]. (`cfg` and the step `offset` serve steppers that sample before
        the step op, next_token_mtp.NextTokenStepper.)"""
        h, h_mtp = self.model.hidden_states(state.inputs, state.position_ids, self.attend(mask), self.cache)
        return self.model.head_logits(h[:, -1], h_mtp[:, -1])

    def next_inputs(self, tokens: torch.Tensor, next_in: torch.Tensor) -> torch.Tensor:
        """The op's merged unit [B, H] (or raw pair [B, 2H] for the MLP compressor) -> [B, 1, H]."""
        if self.merge_weight is None:
            next_in = self.model.compressor.merge_pair(next_in)
        return next_in.unsqueeze(1)


class BackboneStepper(_Stepper):
    """Plain one-token decoding of an HF causal LM through the same step op.

    The op sees logits [2, B, V] whose MTP row is all -inf (confidence 0), so with threshold 1
    it never accepts a second token and reduces to argmax / Gumbel-max sampling of the main
    head; the next input goes in as a token id, exactly as in transformers' generate.
    """

    def __init__(self, backbone, batch: int, max_positions: int) -> None:
        self.backbone = backbone
        self.embed = backbone.get_input_embeddings().weight
        self.merge_weight = None
        self.merge_bias = None
        self.cache = kv_cache.static_cache(backbone.config, batch, max_positions, self.embed.device, self.embed.dtype)
        self.logits: torch.Tensor | None = None  # [2, B, V], allocated by prefill

    def _both_heads(self, logits: torch.Tensor) -> torch.Tensor:
        last = logits[:, -1]  # [B, V]
        if self.logits is None:
            self.logits = torch.full((2, *last.shape), float("-inf"), dtype=last.dtype, device=last.device)
        self.logits[0].copy_(last)
        return self.logits

    def prefill(self, input_ids: torch.Tensor, position_ids: torch.Tensor, state: DecodeState,
                cfg: StepConfig) -> torch.Tensor:
        """Runs the prompt [B, T]; logits [2, B, V] of its last position (MTP row -inf)."""
        mask = self.attend(state.attention_mask[:, : input_ids.shape[1]])
        out = self.backbone(input_ids=input_ids, attention_mask=mask, position_ids=position_ids,
                            use_cache=True, logits_to_keep=1, **{kv_cache.CACHE_ARG: self.cache})
        state.inputs = input_ids.new_zeros(input_ids.shape[0], 1)  # [B, 1], contiguous (see above)
        return self._both_heads(out.logits)

    def forward(self, state: DecodeState, mask: torch.Tensor, cfg: StepConfig, offset: int) -> torch.Tensor:
        """One token per row from `state.inputs`, attending over the columns of `mask` [B, W];
        logits [2, B, V]."""
        out = self.backbone(input_ids=state.inputs, attention_mask=self.attend(mask),
                            position_ids=state.position_ids, use_cache=True, **{kv_cache.CACHE_ARG: self.cache})
        return self._both_heads(out.logits)

    def next_inputs(self, tokens: torch.Tensor, next_in: torch.Tensor) -> torch.Tensor:
        """The emitted token ids [B, 1] (the op's merged pair is not used)."""
        return tokens[:, :1]


def stop_at_extra_eos(state: DecodeState, tokens: torch.Tensor, n_new: torch.Tensor, cfg: StepConfig) -> torch.Tensor:
    """n_new [B] of a step, cut after the first emitted token from `state.extra_eos`, whose rows
    are finished: the op stops on one EOS id only, a model may list several (Llama 3 Instruct:
    <|end_of_text|>, <|eot_id|>).

    As the op does with its own EOS, a stop id as the first token of a pair ends the step there:
    its second token is dropped and the step counts as a single one.
    """
    if state.extra_eos is None or cfg.ignore_eos:
        return n_new
    emitted = state.slot < n_new.unsqueeze(1)  # [B, 2]; n_new is 0 for rows finished before
    # A comparison against the few ids, not torch.isin: its sorting path (many ids) syncs.
    hit = (tokens.unsqueeze(-1) == state.extra_eos).any(dim=-1) & emitted  # [B, 2]
    state.finished.logical_or_(hit.any(dim=1))
    return torch.where(hit[:, 0], n_new.clamp(max=1), n_new)


def record(state: DecodeState, tokens: torch.Tensor, n_new: torch.Tensor) -> None:
    """Appends a step's tokens [B, 2] to `state.out` at each row's write position, capped at M.

    A row with one slot left keeps only the first token of a pair step; the row is then
    finished (length limit, `advance`), so the dropped second token never resurfaces.
    """
    limit = state.max_new_tokens
    room = (limit - state.write_pos).clamp(min=0)
    emitted = torch.minimum(n_new.to(torch.int64), room)  # [B] in {0, 1, 2}
    keep = state.slot < emitted.unsqueeze(1)  # [B, 2]
    # Dropped tokens (second token not accepted, row finished, no room) all go to column M.
    columns = torch.where(keep, state.write_pos.unsqueeze(1) + state.slot, limit)
    state.out.scatter_(1, columns, tokens)
    state.write_pos.add_(emitted)
    state.num_steps.add_((emitted > 0).to(torch.int64))
    state.num_pair_steps.add_((emitted == 2).to(torch.int64))


def advance(state: DecodeState, cfg: StepConfig) -> None:
    """Moves every row to its next position and finishes the rows that reached a limit.

    A row whose next position would reach the context is finished; finished rows keep
    stepping with the batch, so their position ids are held at context - 1: the model never
    sees a position past its context (learned or dynamically scaled position embeddings).
    """
    state.position_ids.add_(1)
    stop = state.write_pos >= state.max_new_tokens  # [B]
    if cfg.context is not None:
        stop = stop | (state.position_ids[:, 0] >= cfg.context)
        state.position_ids.clamp_(max=cfg.context - 1)
    if cfg.ignore_eos:
        state.finished.copy_(stop)
    else:
        state.finished.logical_or_(stop)


def sample(stepper, state: DecodeState, logits: torch.Tensor, cfg: StepConfig, offset: int) -> None:
    """One `superthoughts_step` on logits [2, B, V]: tokens, bookkeeping, next input and position.
    With per-row seeds (cfg.row_seeds) the same one launch samples each row as it would alone."""
    tokens, n_new, conf, next_in = cfg.step_fn(
        logits, stepper.embed, stepper.merge_weight, stepper.merge_bias, state.finished, cfg.pad_id, cfg.eos_id,
        cfg.threshold, cfg.threshold_main, cfg.temperature, cfg.seed, offset, row_seeds=cfg.row_seeds)
    # A scored row's confidence is at least 1 / V; the op gives 0 to a head with no finite maximum.
    state.unscored.logical_or_((conf[:, 0] == 0) & (n_new > 0))
    record(state, tokens, stop_at_extra_eos(state, tokens, n_new, cfg))
    state.inputs.copy_(stepper.next_inputs(tokens, next_in))
    advance(state, cfg)


def decode_step(stepper, state: DecodeState, cfg: StepConfig, offset: int, mask: torch.Tensor) -> None:
    """Feeds the pending unit (one position per row), attending over the cache columns of
    `mask` (from `window_mask`), and samples from its heads."""
    sample(stepper, state, stepper.forward(state, mask, cfg, offset), cfg, offset)


def window_mask(state: DecodeState, columns: int, compiled: bool) -> torch.Tensor:
    """The attention mask [B, columns] of a step that reads the first `columns` cache positions.

    Compiled, its width is marked dynamic: one compiled step then serves every window. It is
    a copy then: a view is contiguous only once the window reaches the last column, and
    transformers' mask code branches on contiguity, which would compile a second step.
    """
    mask = state.attention_mask[:, :columns]
    if compiled:
        mask = mask.contiguous()
        torch._dynamo.mark_dynamic(mask, 1)
    return mask


def graph_window(state: DecodeState, columns: int) -> int:
    """The window a CUDA-graphed step reads when it needs `columns` positions: the decode columns
    are cut into at most GRAPH_WINDOWS equal spans of at least GRAPH_MIN_SPAN, one captured
    graph each."""
    width = state.attention_mask.shape[1]
    span = max(GRAPH_MIN_SPAN, -(-(width - state.prompt_len) // GRAPH_WINDOWS))
    return min(width, state.prompt_len + span * -(-(columns - state.prompt_len) // span))


@functools.cache
def compiled_decode_step() -> Callable[..., None]:
    """`decode_step` through torch.compile: one graph per static configuration, no graph break.

    Static shapes (dynamic=False), but for three sizes marked dynamic: the attention window's
    width (`window_mask`; it changes every step), the cache length and max_new_tokens (they
    change between calls). One compile then serves every step and every prompt length; the
    other sizes (batch, hidden, vocab) stay static for kernel quality. The step offset must be
    the constant 0: it is an `int` in the op's schema, which torch.compile specializes on, so a
    changing offset would recompile every step; compiled decoding is therefore greedy only (as
    for graphs).
    """
    options = dict(fullgraph=True, dynamic=False)
    if "recompile_limit" in inspect.signature(torch.compile).parameters:
        compiled = torch.compile(decode_step, recompile_limit=COMPILE_RECOMPILE_LIMIT, **options)
        limit = contextlib.nullcontext
    else:
        compiled = torch.compile(decode_step, **options)
        # Older torch has only the global limit (8; fullgraph raises past it): raised per call.
        limit = functools.partial(torch._dynamo.config.patch, recompile_limit=COMPILE_RECOMPILE_LIMIT)

    def step(*args, **kwargs) -> None:
        try:
            with limit():
                compiled(*args, **kwargs)
        except torch._dynamo.exc.FailOnRecompileLimitHit as error:
            # dynamo's own message names its config, not what to do in generate().
            raise RuntimeError(
                f"generate: compile=True has compiled the decode step {COMPILE_RECOMPILE_LIMIT} times in this "
                "process (one graph per batch size, mode, thresholds, dtype, use_kernels and model shape), "
                "torch.compile's limit; decode this configuration with compile=False, or run fewer "
                "configurations per process") from error

    return step


def step_function(compiled: bool) -> Callable[..., None]:
    """The step to run (looked up at call time): compiled, or the plain `decode_step`."""
    return compiled_decode_step() if compiled else decode_step


class CudaGraphStep:
    """`decode_step` (or its compiled form) captured as CUDA graphs, one per attention window
    (`graph_window`), and replayed on the static buffers.

    Per window, call 1 runs the step eagerly on a side stream (warm-up: cuBLAS handles, lazy
    allocations, torch.compile's compilation); call 2 captures it (capture records, it does
    not run) and replays; later calls replay. The graphs share one memory pool: they run one
    at a time, in the order they were captured. The op's integer arguments are baked in at
    capture, so the step offset (the sampling counter) is frozen: graphs are for greedy
    decoding only, which `generate` enforces.
    """

    def __init__(self, stepper, state: DecodeState, cfg: StepConfig, compiled: bool = False) -> None:
        self.run = lambda window: step_function(compiled)(stepper, state, cfg, 0, window_mask(state, window, compiled))
        self.graphs: dict[int, torch.cuda.CUDAGraph | None] = {}  # window -> graph (None: warmed up)
        self.pool = None

    def __call__(self, window: int) -> None:
        if window not in self.graphs:
            self.graphs[window] = None
            side = torch.cuda.Stream()
            side.wait_stream(torch.cuda.current_stream())
            with torch.cuda.stream(side):
                self.run(window)
            torch.cuda.current_stream().wait_stream(side)
            return
        graph = self.graphs[window]
        if graph is None:
            graph = self.graphs[window] = torch.cuda.CUDAGraph()
            with torch.cuda.graph(graph, pool=self.pool):
                self.run(window)
            self.pool = graph.pool()
        graph.replay()


def decode(stepper, state: DecodeState, cfg: StepConfig, max_steps: int, *, cuda_graph: bool, compiled: bool,
           check_every: int, check_at: int, on_step: Callable[[], None] | None) -> int:
    """Runs up to `max_steps` decode steps after prefill; returns how many ran.

    Step s attends over the cache positions written so far (the prompt's and s + 1 units);
    a graphed step over the end of its `graph_window` (kv_cache.py says why). The host reads
    `finished` only every `check_every` steps and once after `check_at` steps (each read is a
    device sync), so up to check_every - 1 steps may run on finished rows: they emit nothing.
    `check_at` is the first step count at which every row can have reached max_new_tokens,
    which makes a pairs run without EOS stop exactly. `on_step` (the streamer hook) is called
    after every step and may sync. `compiled` runs the torch.compile'd step with offset 0
    (greedy only, see `compiled_decode_step`).
    """
    graph_step = CudaGraphStep(stepper, state, cfg, compiled) if cuda_graph else None
    if compiled:
        state.mark_sizes_dynamic()
        kv_cache.mark_positions_dynamic(stepper.cache)
    for step in range(max_steps):
        # A streamer syncs every step anyway, so the check is free then.
        check = step % check_every == 0 or step == check_at or on_step is not None
        if check and bool(state.finished.all()):
            return step
        columns = state.prompt_len + step + 1
        if graph_step is not None:
            graph_step(graph_window(state, columns))
        else:
            step_function(compiled)(stepper, state, cfg, 0 if compiled else step + 1,
                                    window_mask(state, columns, compiled))
        if on_step is not None:
            on_step()
    return max_steps
