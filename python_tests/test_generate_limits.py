"""Where decoding stops: the context limit per row, every EOS id of a model, bad arguments.

Tiny random models from test_generate (CPU, no weights downloaded).
"""
from __future__ import annotations

import copy
import re
import warnings

import pytest
import torch

from superthoughts_ext.generate import MODES, ContextStopWarning, generate
from test_generate import (BOS, CONTEXT, EOS, HAS_KERNELS, MIXED_THRESHOLD, PROMPTS, check_stats, left_pad,
                           superthoughts_model, tiny_backbone)

pytestmark = pytest.mark.usefixtures("one_cpu_thread")
KERNELS = [pytest.param(True, marks=pytest.mark.skipif(not HAS_KERNELS, reason="superthoughts_ext._C is not built")),
           False]


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def backbone(request) -> torch.nn.Module:
    return tiny_backbone(request.param)


@pytest.fixture(scope="module")
def model(backbone) -> torch.nn.Module:
    return superthoughts_model(backbone)


@pytest.mark.parametrize("use_kernels", KERNELS, ids=["kernels", "reference"])
@pytest.mark.parametrize("mode", MODES)
def test_context_limit_is_per_row(model, backbone, mode: str, use_kernels: bool) -> None:
    # A prompt near the context stops its own row early; the short rows still get their
    # max_new_tokens, as they would alone.
    prompts = [PROMPTS[2], [BOS, *([7] * (CONTEXT - 6))], PROMPTS[0]]
    ids, mask = left_pad(prompts)
    target = backbone if mode == "standard" else model
    kwargs = dict(max_new_tokens=30, mode=mode, threshold=MIXED_THRESHOLD, use_kernels=use_kernels, ignore_eos=True)
    with pytest.warns(ContextStopWarning, match=rf"rows \[1\] stopped at the model's context "
                                                rf"\(max_position_embeddings={CONTEXT}\) before max_new_tokens=30"):
        batch = generate(target, ids, mask, **kwargs)
    assert batch.stop_reasons == ["length", "context", "length"]
    for row, prompt in enumerate(prompts):
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", ContextStopWarning)
            alone = generate(target, torch.tensor([prompt]), **kwargs)
        assert alone.sequences[0] == batch.sequences[row], f"row {row}"
        assert (alone.num_steps[0], alone.num_pair_steps[0]) == (batch.num_steps[row], batch.num_pair_steps[row])
    assert batch.num_tokens[0] == batch.num_tokens[2] == 30
    assert batch.num_steps[1] == 1 + 5  # prefill's step, then positions CONTEXT - 5 .. CONTEXT - 1
    check_stats(batch, 30)
    # Without ignore_eos, too: the rows end where they end alone.
    kwargs["ignore_eos"] = False
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", ContextStopWarning)
        batch = generate(target, ids, mask, **kwargs)
        alone = [generate(target, torch.tensor([p]), **kwargs) for p in prompts]
    assert batch.sequences == [out.sequences[0] for out in alone]
    assert batch.stop_reasons == [out.stop_reasons[0] for out in alone]
    for sequence, reason in zip(batch.sequences, batch.stop_reasons):
        assert (reason == "eos") == (sequence[-1] == EOS)


@pytest.mark.parametrize("mode", MODES)
def test_a_budget_past_the_context_allocates_what_the_context_allows(model, backbone, mode: str) -> None:
    # max_new_tokens far past the context: the output is sized by the steps the context
    # leaves (an [B, 10**12] buffer would not fit in memory), and the tokens are the same.
    ids, mask = left_pad([PROMPTS[2], PROMPTS[0]])
    target = backbone if mode == "standard" else model
    kwargs = dict(mode=mode, threshold=MIXED_THRESHOLD, ignore_eos=True)
    huge = generate(target, ids, mask, max_new_tokens=10**12, **kwargs)
    enough = generate(target, ids, mask, max_new_tokens=2 * CONTEXT, **kwargs)
    assert huge.sequences == enough.sequences and huge.num_steps == enough.num_steps
    assert huge.num_pair_steps == enough.num_pair_steps
    assert max(huge.num_tokens) < 2 * CONTEXT  # the context stopped every row
    check_stats(huge, 10**12)


def first_new_token(tokens: list[int], start: int, parity: int | None = None, avoid: tuple[int, ...] = ()) -> int:
    """A token at index >= start (of the given index parity) that does not occur before it."""
    return next(t for i, t in enumerate(tokens) if i >= start and (parity is None or i % 2 == parity)
                and t not in tokens[:i] and t not in (EOS, *avoid))


@pytest.mark.parametrize("rows", [[0], [0, 1, 2, 3]], ids=["batch1", "batch4"])
def test_standard_stops_at_every_eos_of_the_generation_config(backbone, rows: list[int]) -> None:
    # Llama 3 Instruct lists <|end_of_text|> and <|eot_id|>: transformers stops at either.
    ids, mask = left_pad([PROMPTS[r] for r in rows])
    free = generate(backbone, ids[:1, -len(PROMPTS[rows[0]]):], max_new_tokens=30, mode="standard").sequences[0]
    several = copy.deepcopy(backbone)
    several.generation_config.eos_token_id = [EOS, first_new_token(free, 5)]
    ours = generate(several, ids, mask, max_new_tokens=30, mode="standard")
    theirs = several.generate(input_ids=ids, attention_mask=mask, max_new_tokens=30, do_sample=False, pad_token_id=0)
    stops = set(several.generation_config.eos_token_id)
    expected = [row[: next((i + 1 for i, t in enumerate(row) if t in stops), len(row))]
                for row in theirs[:, ids.shape[1]:].tolist()]
    assert ours.sequences == expected
    assert ours.sequences[0][-1] == several.generation_config.eos_token_id[1]
    check_stats(ours, 30)


@pytest.mark.parametrize("use_kernels", KERNELS, ids=["kernels", "reference"])
@pytest.mark.parametrize("mode", MODES)
def test_every_eos_id_stops_a_row(model, backbone, mode: str, use_kernels: bool) -> None:
    # The op stops on the first id only; the others end a row in the decode loop. Oracle: each
    # row alone with its first stop id as the op's single EOS (a first token of a pair vetoes
    # the pair, the step counts as one).
    ids, mask = left_pad(PROMPTS)
    target = backbone if mode == "standard" else model
    kwargs = dict(max_new_tokens=24, mode=mode, threshold=MIXED_THRESHOLD, use_kernels=use_kernels)
    free = generate(target, ids, mask, ignore_eos=True, **kwargs).sequences
    # In pairs mode even indices are first tokens of a pair, odd ones second tokens.
    first = first_new_token(free[0], 4, parity=0)
    second = first_new_token(free[1], 5, parity=1, avoid=(first,))
    stops = [EOS, first, second]
    out = generate(target, ids, mask, eos_token_id=stops, **kwargs)
    for row, prompt in enumerate(PROMPTS):
        stop = next((t for t in free[row] if t in stops), EOS)
        alone = generate(target, torch.tensor([prompt]), eos_token_id=stop, **kwargs)
        assert out.sequences[row] == alone.sequences[0], f"row {row}"
        assert (out.num_steps[row], out.num_pair_steps[row]) == (alone.num_steps[0], alone.num_pair_steps[0])
    assert out.sequences[0][-1] in stops and out.sequences[1][-1] in stops
    if mode == "pairs":  # a stop id as a first token cut a pair step short
        assert any(len(seq) % 2 == 1 for seq in out.sequences)
    check_stats(out, 24)
    # ignore_eos decodes past all of them.
    assert generate(target, ids, mask, eos_token_id=stops, ignore_eos=True, **kwargs).sequences == free


@pytest.mark.skipif(not HAS_KERNELS, reason="superthoughts_ext._C is not built")
def test_limits_in_the_compiled_step() -> None:
    # The per-row context check, the position clamp and the extra EOS ids run inside the
    # compiled step.
    model = superthoughts_model(tiny_backbone("qwen2"))
    ids, mask = left_pad([PROMPTS[2], [BOS, *([7] * (CONTEXT - 6))], PROMPTS[1]])
    kwargs = dict(max_new_tokens=30, threshold=MIXED_THRESHOLD, ignore_eos=True)
    free = generate(model, ids, mask, compile=False, **kwargs)
    assert free.num_tokens[0] == 30 and free.num_steps[1] == 6
    kwargs["eos_token_id"] = [EOS, first_new_token(free.sequences[2], 4)]
    for ignore_eos in (True, False):
        kwargs["ignore_eos"] = ignore_eos
        compiled = generate(model, ids, mask, compile=True, **kwargs)
        eager = generate(model, ids, mask, compile=False, **kwargs)
        assert compiled.sequences == eager.sequences
        assert (compiled.num_steps, compiled.num_pair_steps) == (eager.num_steps, eager.num_pair_steps)
    assert eager.sequences[2][-1] == kwargs["eos_token_id"][1]


@pytest.mark.parametrize("temperature", [float("nan"), float("inf"), -1.0])
def test_bad_temperature_is_rejected(model, temperature: float) -> None:
    with pytest.raises(ValueError, match="temperature"):
        generate(model, torch.tensor([PROMPTS[0]]), max_new_tokens=4, temperature=temperature)


@pytest.mark.parametrize("temperature", ["0.7", True, None])
def test_temperature_must_be_a_number(model, temperature) -> None:
    # A string reached math.isfinite: "must be real number, not str", naming no argument.
    with pytest.raises(ValueError, match=rf"generate: temperature must be a number, got \w+ {re.escape(repr(temperature))}"):
        generate(model, torch.tensor([PROMPTS[0]]), max_new_tokens=4, temperature=temperature)


@pytest.mark.parametrize("temperature", [0.0, 0.7])
@pytest.mark.parametrize("seed", [1.5, None, "abc", True])
def test_seed_must_be_an_integer(model, seed, temperature: float) -> None:
    # Sampling said "'float' object cannot be interpreted as an integer", True sampled as seed 1,
    # and greedy decoding never looked at the seed.
    with pytest.raises(ValueError, match=rf"generate: seed must be an integer, got \w+ {re.escape(repr(seed))}"):
        generate(model, torch.tensor([PROMPTS[0]]), max_new_tokens=4, temperature=temperature, seed=seed)


@pytest.mark.parametrize("use_kernels", KERNELS, ids=["kernels", "reference"])
def test_seeds_count_modulo_2_to_the_64(model, use_kernels: bool) -> None:
    # The op takes an int64 seed and keys Philox with its 64 bits: larger or more negative
    # seeds fold onto the int64 of the same bits (the reference's key for them).
    ids, mask = left_pad(PROMPTS[:2])
    kwargs = dict(max_new_tokens=12, mode="pairs", temperature=1.0, use_kernels=use_kernels)
    for seed, same in ((7, 2**64 + 7), (-3, 2**64 - 3), (-(2**63) + 5, 2**63 + 5), (9, -(2**64) + 9)):
        expected = generate(model, ids, mask, seed=seed, **kwargs).sequences
        assert generate(model, ids, mask, seed=same, **kwargs).sequences == expected, same
    assert generate(model, ids, mask, seed=8, **kwargs).sequences != generate(model, ids, mask, seed=7, **kwargs).sequences


def test_pad_id_of_a_plain_model() -> None:
    # The generation config's pad id (the first of a list), else the config's, else the EOS.
    from types import SimpleNamespace

    from superthoughts_ext.stop_tokens import pad_id

    def plain(generation_pad=None, config_pad=None):  # a model of vocabulary 10
        head = SimpleNamespace(weight=torch.empty(10, 1))
        return SimpleNamespace(generation_config=SimpleNamespace(pad_token_id=generation_pad),
                               config=SimpleNamespace(pad_token_id=config_pad), get_output_embeddings=lambda: head)

    assert pad_id(plain([7, 3], 4), 1) == 7
    assert pad_id(plain(None, 4), 1) == 4
    assert pad_id(plain(None, []), 1) == 1
    # Llama 1's configs say -1 for "no pad", and a pad beyond the vocabulary is no token either
    # (the step op would refuse both as token ids; transformers decodes such models).
    assert pad_id(plain(-1, -1), 1) == 1
    assert pad_id(plain(10, 4), 1) == 4


def test_host_state_features_are_found() -> None:
    from transformers import AutoModelForCausalLM, LlamaConfig, MistralConfig, Qwen2Config

    from superthoughts_ext.host_state import host_planned_rope, host_state_reason, sliding_window

    common = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4,
                  num_key_value_heads=2, vocab_size=64)
    mistral = MistralConfig(**common, sliding_window=8)
    full = Qwen2Config(**common)  # sliding_window set, use_sliding_window off: every layer full
    sliding = Qwen2Config(**common, use_sliding_window=True, sliding_window=8, max_window_layers=1)
    assert sliding_window([mistral]) == 8 and sliding_window([full]) is None and sliding_window([full, sliding]) == 8
    plain = AutoModelForCausalLM.from_config(LlamaConfig(**common))
    assert host_planned_rope(plain) is None and host_state_reason(plain, [plain.config]) is None
    for rope in ({"rope_type": "dynamic", "factor": 2.0}, {"rope_type": "longrope", "short_factor": [1.0] * 4,
                                                         "long_factor": [2.0] * 4, "original_max_position_embeddings": 16}):
        scaled = AutoModelForCausalLM.from_config(LlamaConfig(**common, rope_scaling=rope, max_position_embeddings=64))
        assert host_planned_rope(scaled) == rope["rope_type"]
        assert "RoPE" in host_state_reason(scaled, [scaled.config])
    assert "sliding-window attention (window 8)" in host_state_reason(plain, [full, sliding])


def test_models_with_host_state_decode_eagerly() -> None:
    # Their decode step reads host-side state: a replayed CUDA graph would freeze it (a sliding
    # layer's mask then hides every key written after the capture) and torch.compile would
    # recompile every step. "auto" decodes eagerly, True is refused.
    from transformers import AutoModelForCausalLM, MistralConfig

    from superthoughts_ext.generate_settings import _graphs_and_compile

    torch.manual_seed(0)
    mistral = AutoModelForCausalLM.from_config(MistralConfig(
        hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=4, num_key_value_heads=2,
        vocab_size=64, sliding_window=4096, eos_token_id=1)).eval()
    cuda, cpu = torch.device("cuda"), torch.device("cpu")
    assert _graphs_and_compile(mistral, mistral, "standard", "auto", "auto", cuda, 0.0) == (False, False)
    plain = tiny_backbone("qwen2")
    assert _graphs_and_compile(plain, plain, "standard", "auto", "auto", cuda, 0.0) == (True, True)
    with pytest.raises(ValueError, match="cuda_graphs=True cannot run this model's decode step: its sliding-window"):
        _graphs_and_compile(mistral, mistral, "standard", True, False, cuda, 0.0)
    with pytest.raises(ValueError, match="compile=True cannot run"):
        generate(mistral, torch.tensor([[3, 4, 5]]), max_new_tokens=4, mode="standard", compile=True)
    out = generate(mistral, torch.tensor([[3, 4, 5]]), max_new_tokens=4, mode="standard", compile="auto")
    assert len(out.sequences[0]) == 4 and not out.compiled and not out.cuda_graph
    assert _graphs_and_compile(plain, plain, "standard", "auto", True, cpu, 0.0) == (False, True)
