"""Decoding tests on tiny random Qwen2 and Llama models (CPU, no weights downloaded).

Exactness: standard greedy == transformers' generate; compiled step == reference step (greedy
and sampled); the static-cache loop == a full recompute with no cache (greedy, and sampled with
threshold_main); a batch == its rows alone. The decode loop driving the CUDA kernel's source
emulated on the CPU is tested too. The torch.compile'd step (one compile per configuration:
slow on CPU, so few tests) must give the eager tokens. Edge cases (EOS placements, token
budgets, the context limit, an empty batch, bad input) are in test_generate_edge_cases.py,
which uses the models and helpers here, as test_generate_limits.py does; streamers and the
CUDA-graph path (GPU only) in test_generate_io.py, the CLI in test_generate_cli.py.

EOS is forced without touching weights: decode once, pick a token at the wanted place that
did not occur before it, and decode again with that token as EOS - the tokens up to it are
unchanged, since EOS only stops a row and vetoes pairs whose first token it is.
"""
from __future__ import annotations

import copy
import functools
import importlib.util

import pytest
import torch
from transformers import AutoModelForCausalLM, LlamaConfig, Qwen2Config

import cuda_emulation
import superthoughts_ext.ops
from superthoughts_ext.generate import MODES, generate
from superthoughts_ext.modeling import SuperThoughtsForCausalLM
from superthoughts_ext.reference import superthoughts_step_ref

VOCAB, PAD, BOS, EOS = 512, 0, 1, 2
CONTEXT = 96
# lm_head scaled so that confidences spread over (0, 1) and argmax has no near-ties.
SHARPEN = 20.0
MIXED_THRESHOLD = 0.3  # between the confidence quantiles: some pairs, some singles
PROMPTS = [[BOS, 17, 33, 190, 4, 77, 260], [BOS, *range(40, 51)], [BOS, 9, 300], [BOS, 5, 6, 7, 8, 480, 411, 12, 99]]
HAS_KERNELS = importlib.util.find_spec("superthoughts_ext._C") is not None


# Tiny models: one CPU thread (see conftest.one_cpu_thread).
pytestmark = pytest.mark.usefixtures("one_cpu_thread")


def tiny_backbone(arch: str) -> torch.nn.Module:
    torch.manual_seed(0)
    config_cls = {"qwen2": Qwen2Config, "llama": LlamaConfig}[arch]
    config = config_cls(vocab_size=VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                        num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=CONTEXT,
                        bos_token_id=BOS, eos_token_id=EOS, pad_token_id=PAD, tie_word_embeddings=False)
    model = AutoModelForCausalLM.from_config(config, attn_implementation="sdpa").eval()
    with torch.no_grad():
        model.lm_head.weight.mul_(SHARPEN)
    return model


@pytest.fixture(scope="module", params=["qwen2", "llama"])
def backbone(request) -> torch.nn.Module:
    return tiny_backbone(request.param)


@pytest.fixture(scope="module")
def model(backbone) -> SuperThoughtsForCausalLM:
    return superthoughts_model(backbone)


def superthoughts_model(backbone: torch.nn.Module) -> SuperThoughtsForCausalLM:
    torch.manual_seed(1)
    model = SuperThoughtsForCausalLM.from_base(copy.deepcopy(backbone)).eval()
    # A fresh MTP head starts as one more pass of the backbone's last layer, so untrained it
    # mostly repeats the main head's token; perturb it (and the compressor) so the two heads
    # disagree the way they do after training.
    with torch.no_grad():
        for param in [*model.mtp.parameters(), *model.compressor.parameters()]:
            param.add_(torch.randn_like(param) * 0.05)
    return model


def left_pad(prompts: list[list[int]]) -> tuple[torch.Tensor, torch.Tensor]:
    width = max(len(p) for p in prompts)
    ids = torch.full((len(prompts), width), PAD, dtype=torch.int64)
    mask = torch.zeros_like(ids)
    for row, prompt in enumerate(prompts):
        ids[row, width - len(prompt):] = torch.tensor(prompt)
        mask[row, width - len(prompt):] = 1
    return ids, mask


def until_eos(tokens: list[int], eos: int) -> list[int]:
    return tokens[: tokens.index(eos) + 1] if eos in tokens else tokens


def check_stats(out, max_new_tokens: int) -> None:
    for row, seq in enumerate(out.sequences):
        assert out.num_tokens[row] == len(seq) == out.num_steps[row] + out.num_pair_steps[row]
        assert 1 <= len(seq) <= max_new_tokens
        # A row that neither ended at EOS nor filled the budget stopped at the context.
        assert out.stop_reasons[row] == "length" if len(seq) == max_new_tokens and out.stop_reasons[row] != "eos" \
            else out.stop_reasons[row] in ("eos", "context")


def slow_decode(model, prompt: list[int], max_new_tokens: int, threshold: float, eos: int, *,
                threshold_main: float = 0.0, temperature: float = 0.0, seed: int = 0, row: int = 0,
                batch: int = 1) -> list[int]:
    """One row, no cache: the whole compressed sequence is recomputed at every step. Sampling
    draws the noise of row `row` of a batch of `batch` at offset = step (prefill's is 0).

    An mtp_input "next_token" model's MTP head reads E[each next position's first token], as its
    training forward feeds it: p_2..p_m, a_1..a_k, then t1, picked from the main head alone."""
    embedding = model.backbone.get_input_embeddings()
    prompt_embeds = embedding(torch.tensor([prompt]))  # [1, L, H]
    units: list[tuple[int, int]] = []
    out: list[int] = []
    # The row at its batch index (the noise is keyed by it), the other rows finished.
    finished = torch.ones(batch, dtype=torch.bool).index_fill_(0, torch.tensor([row]), False)

    def step(logits: torch.Tensor, thresholds: tuple[float, float], finished: torch.Tensor) -> list[int]:
        wide = logits.new_zeros(2, batch, logits.shape[-1]).index_copy_(1, torch.tensor([row]), logits)
        tokens, _, _, _ = superthoughts_step_ref(wide, embedding.weight, None, None, finished, PAD, eos, *thresholds,
                                                 temperature, seed, len(units))
        return tokens[row].tolist()

    while True:
        inputs = prompt_embeds
        if units:
            a, b = torch.tensor([[u[0] for u in units]]), torch.tensor([[u[1] for u in units]])
            inputs = torch.cat([prompt_embeds, model.embed_units(a, b)], dim=1)
        length = inputs.shape[1]
        positions, mask = torch.arange(length)[None], torch.ones(1, length, dtype=torch.int64)
        mtp_inputs = None
        if model.config.mtp_input == "next_token":
            main = model.get_output_embeddings()(model.backbone_hidden(inputs, positions, mask)[:, -1])  # [1, V]
            picked = step(torch.stack([main, torch.full_like(main, float("-inf"))]), (1.0, 0.0), finished.clone())[0]
            mtp_inputs = embedding(torch.tensor([[*prompt[1:], *(u[0] for u in units), picked]]))
        h, h_mtp = model.hidden_states(inputs, positions, mask, mtp_inputs=mtp_inputs)
        first, second = step(model.head_logits(h[:, -1], h_mtp[:, -1]), (threshold, threshold_main), finished)
        assert mtp_inputs is None or first == picked  # the real launch draws the t1 the MTP head read
        out.extend([first] if second < 0 else [first, second])
        if bool(finished[row]) or len(out) >= max_new_tokens or length >= CONTEXT:
            return out[:max_new_tokens]
        units.append((first, PAD if second < 0 else second))


@pytest.mark.parametrize("rows", [[0], [0, 1, 2, 3]], ids=["batch1", "batch4"])
@pytest.mark.parametrize("forced_eos", [False, True], ids=["free", "eos"])
def test_standard_greedy_matches_transformers(backbone, rows: list[int], forced_eos: bool) -> None:
    ids, mask = left_pad([PROMPTS[r] for r in rows])
    eos = EOS
    if forced_eos:  # a token that row 0 emits 6th and not before
        free = generate(backbone, ids[:1, -len(PROMPTS[rows[0]]):], max_new_tokens=30, mode="standard").sequences[0]
        eos = next(t for i, t in enumerate(free) if i >= 5 and t not in free[:i])
    ours = generate(backbone, ids, mask, max_new_tokens=30, mode="standard", eos_token_id=eos)
    theirs = backbone.generate(input_ids=ids, attention_mask=mask, max_new_tokens=30, do_sample=False,
                               eos_token_id=eos, pad_token_id=PAD)
    assert ours.sequences == [until_eos(row, eos) for row in theirs[:, ids.shape[1]:].tolist()]
    assert ours.num_pair_steps == [0] * len(rows)
    check_stats(ours, 30)


def test_standard_on_superthoughts_model_is_the_backbone(model, backbone) -> None:
    ids, mask = left_pad(PROMPTS)
    expected = generate(backbone, ids, mask, max_new_tokens=20, mode="standard")
    assert generate(model, ids, mask, max_new_tokens=20, mode="standard").sequences == expected.sequences


@pytest.mark.skipif(not HAS_KERNELS, reason="superthoughts_ext._C is not built")
@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
@pytest.mark.parametrize("mode", MODES)
def test_kernels_match_reference(model, mode: str, temperature: float) -> None:
    ids, mask = left_pad(PROMPTS)
    kwargs = dict(max_new_tokens=25, mode=mode, threshold=MIXED_THRESHOLD, temperature=temperature, seed=7)
    fast = generate(model, ids, mask, use_kernels=True, **kwargs)
    ref = generate(model, ids, mask, use_kernels=False, **kwargs)
    assert fast.sequences == ref.sequences
    assert (fast.num_steps, fast.num_pair_steps) == (ref.num_steps, ref.num_pair_steps)
    if temperature > 0:
        greedy = generate(model, ids, mask, use_kernels=True, **{**kwargs, "temperature": 0.0})
        assert fast.sequences != greedy.sequences
        assert generate(model, ids, mask, use_kernels=True, **{**kwargs, "seed": 8}).sequences != fast.sequences


@pytest.mark.skipif(not HAS_KERNELS, reason="superthoughts_ext._C is not built")
@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16], ids=["bf16", "fp16"])
def test_16bit_models_kernels_match_reference_and_transformers(model, backbone, dtype) -> None:
    # A model loaded in bf16 / fp16 (--dtype, or a GPU's default): the step op reads 16-bit
    # logits and merges in the embeddings' type, on the CPU through the vector kernels or,
    # where the CPU multiplies that type in hardware, torch's GEMM. Same tokens as the
    # reference step in every mode, and standard decoding still equals transformers'.
    ids, mask = left_pad(PROMPTS)
    low, low_backbone = copy.deepcopy(model).to(dtype), copy.deepcopy(backbone).to(dtype)
    for mode in MODES:
        kwargs = dict(max_new_tokens=40, mode=mode, threshold=MIXED_THRESHOLD)
        fast = generate(low, ids, mask, use_kernels=True, **kwargs)
        assert fast.sequences == generate(low, ids, mask, use_kernels=False, **kwargs).sequences, mode
        check_stats(fast, 40)
        if mode == "pairs":  # every step a pair but a last one that ends in EOS
            assert all(pairs >= steps - 1 for pairs, steps in zip(fast.num_pair_steps, fast.num_steps))
    ours = generate(low_backbone, ids, mask, max_new_tokens=40, mode="standard")
    theirs = low_backbone.generate(input_ids=ids, attention_mask=mask, max_new_tokens=40, do_sample=False,
                                   eos_token_id=EOS, pad_token_id=PAD)
    assert ours.sequences == [until_eos(row, EOS) for row in theirs[:, ids.shape[1]:].tolist()]


@pytest.mark.skipif(cuda_emulation.cuda_include_dir() is None, reason="the CUDA emulation needs the CUDA toolkit's headers")
@pytest.mark.parametrize("temperature", [0.0, 1.0], ids=["greedy", "sampled"])
@pytest.mark.parametrize("mode", MODES)
def test_emulated_cuda_kernel_drives_generate(model, mode: str, temperature: float, monkeypatch) -> None:
    # The CUDA step kernel's source, run on the CPU (python_tests/cuda_emulation.py), in place of
    # the op: the decode loop's buffers and offsets and the kernel's outputs must fit together
    # as on a GPU, step after step, down to the sampled tokens.
    ids, mask = left_pad(PROMPTS)
    kwargs = dict(max_new_tokens=25, mode=mode, threshold=MIXED_THRESHOLD, temperature=temperature, seed=7)
    ref = generate(model, ids, mask, use_kernels=False, **kwargs)
    monkeypatch.setattr(superthoughts_ext.ops, "superthoughts_step", functools.partial(cuda_emulation.emulated_step, grid=3))
    emulated = generate(model, ids, mask, use_kernels=True, **kwargs)
    assert emulated.sequences == ref.sequences
    assert (emulated.num_steps, emulated.num_pair_steps) == (ref.num_steps, ref.num_pair_steps)


@pytest.mark.parametrize("mode", ["superthoughts", "pairs"])
def test_fast_loop_matches_full_recompute(model, mode: str) -> None:
    ids, mask = left_pad(PROMPTS)
    threshold = MIXED_THRESHOLD if mode == "superthoughts" else 0.0
    fast = generate(model, ids, mask, max_new_tokens=21, mode=mode, threshold=threshold, use_kernels=False)
    for row, prompt in enumerate(PROMPTS):
        assert fast.sequences[row] == slow_decode(model, prompt, 21, threshold, EOS), f"row {row}"
    check_stats(fast, 21)
    if mode == "superthoughts":  # the threshold really mixes one- and two-token steps
        assert 0 < sum(fast.num_pair_steps) < sum(fast.num_steps)


def test_sampled_steps_and_threshold_main_match_full_recompute(model) -> None:
    # Each step draws fresh noise (offset 0 at prefill, then one more per step) keyed by the
    # row's batch index; kernels and reference share the loop, so only an oracle outside it
    # pins that schedule. threshold_main 0.3 also vetoes some pairs that the MTP head keeps.
    ids, mask = left_pad(PROMPTS)
    kwargs = dict(threshold_main=0.3, temperature=1.0, seed=11)
    fast = generate(model, ids, mask, max_new_tokens=19, threshold=MIXED_THRESHOLD, use_kernels=HAS_KERNELS, **kwargs)
    for row, prompt in enumerate(PROMPTS):
        assert fast.sequences[row] == slow_decode(model, prompt, 19, MIXED_THRESHOLD, EOS, row=row,
                                                  batch=len(PROMPTS), **kwargs), f"row {row}"
    check_stats(fast, 19)
    assert 0 < sum(fast.num_pair_steps) < sum(fast.num_steps)


@pytest.mark.parametrize("forced_eos", [False, True], ids=["free", "eos"])
@pytest.mark.parametrize("mode", MODES)
def test_batch_rows_match_rows_alone(model, mode: str, forced_eos: bool) -> None:
    ids, mask = left_pad(PROMPTS)
    eos = EOS
    if forced_eos:  # row 2's first token (a next_token model's first launch finishes it; the real one emits it)
        eos = generate(model, ids[2:3, -len(PROMPTS[2]):], max_new_tokens=1, mode=mode).sequences[0][0]
    batch = generate(model, ids, mask, max_new_tokens=17, mode=mode, threshold=MIXED_THRESHOLD, eos_token_id=eos)
    for row, prompt in enumerate(PROMPTS):
        alone = generate(model, torch.tensor([prompt]), max_new_tokens=17, mode=mode, threshold=MIXED_THRESHOLD,
                         eos_token_id=eos)
        assert alone.sequences[0] == batch.sequences[row]
        assert (alone.num_steps[0], alone.num_pair_steps[0]) == (batch.num_steps[row], batch.num_pair_steps[row])
    assert batch.sequences[2] == [eos] or not forced_eos


@pytest.mark.parametrize("variant", [dict(compressor_type="mlp"), dict(mtp_type="mlp"),
                                     dict(compressor_type="mlp", mtp_type="mlp", mtp_input="next_token")],
                         ids=["mlp-compressor", "mlp-mtp", "mlp-both-next-token"])
def test_mlp_compressor_and_mlp_mtp(backbone, variant: dict) -> None:
    # The MLP compressor has no merge weight: the op returns the raw pair and the model merges it.
    # A next_token model's MLP head (no cache) reads E[t1] after the first launch picks it.
    torch.manual_seed(2)
    model = SuperThoughtsForCausalLM.from_base(copy.deepcopy(backbone), **variant).eval()
    with torch.no_grad():
        for param in [*model.mtp.parameters(), *model.compressor.parameters()]:
            param.add_(torch.randn_like(param) * 0.05)
    ids, mask = left_pad(PROMPTS)
    kwargs = dict(max_new_tokens=15, threshold=MIXED_THRESHOLD)
    fast = generate(model, ids, mask, use_kernels=HAS_KERNELS, **kwargs)
    assert fast.sequences == generate(model, ids, mask, use_kernels=False, **kwargs).sequences
    for row, prompt in enumerate(PROMPTS):
        assert fast.sequences[row] == slow_decode(model, prompt, 15, MIXED_THRESHOLD, EOS), f"row {row}"
    check_stats(fast, 15)


@pytest.mark.parametrize("mode", MODES)
def test_eager_steps_attend_over_the_written_positions(model, backbone, mode: str, monkeypatch) -> None:
    """Eager steps read only the cache columns written so far (kv_cache.WindowedStaticLayer), and
    decode the same tokens as steps over the whole static cache."""
    from superthoughts_ext import decode_loop, kv_cache

    lengths: list[int] = []
    real_update = kv_cache.WindowedStaticLayer.update

    def update(self, *args, **kwargs):
        keys, values = real_update(self, *args, **kwargs)
        lengths.append(keys.shape[2])
        return keys, values

    monkeypatch.setattr(kv_cache.WindowedStaticLayer, "update", update)
    ids, mask = left_pad(PROMPTS)
    target = backbone if mode == "standard" else model
    kwargs = dict(max_new_tokens=21, mode=mode, threshold=MIXED_THRESHOLD)
    windowed = generate(target, ids, mask, **kwargs)
    width = ids.shape[1]
    assert lengths == sorted(lengths)
    assert sorted(set(lengths)) == list(range(width, width + windowed.num_forward_passes))  # prefill, steps
    lengths.clear()
    monkeypatch.setattr(decode_loop, "window_mask", lambda state, columns, compiled: state.attention_mask)
    whole = generate(target, ids, mask, **kwargs)
    # Prefill reads the prompt's columns, every step the whole cache.
    assert set(lengths) == {width, lengths[-1]} and lengths[-1] >= width + whole.num_forward_passes - 1
    assert (whole.sequences, whole.num_steps) == (windowed.sequences, windowed.num_steps)


@pytest.fixture(scope="module")
def qwen2_pair() -> tuple[torch.nn.Module, SuperThoughtsForCausalLM]:
    """One architecture only for the compiled tests: each configuration compiles (seconds on CPU)."""
    backbone = tiny_backbone("qwen2")
    return backbone, superthoughts_model(backbone)


@pytest.mark.skipif(not HAS_KERNELS, reason="superthoughts_ext._C is not built")
@pytest.mark.parametrize("mode", MODES)
def test_compiled_step_matches_eager_and_compiles_once(qwen2_pair, mode: str) -> None:
    from torch._dynamo.utils import counters

    backbone, model = qwen2_pair
    ids, mask = left_pad(PROMPTS)
    kwargs = dict(max_new_tokens=21, mode=mode, threshold=MIXED_THRESHOLD)
    eager = generate(backbone if mode == "standard" else model, ids, mask, compile=False, **kwargs)
    # Dynamo's compiled code lives for the process: an earlier test that compiled this very step
    # (test_temperatures_below_the_sampling_floor_decode_greedily_and_compile, on the same model)
    # left nothing to compile here, whatever the order the tests run in.
    torch._dynamo.reset()
    before = counters["stats"]["unique_graphs"]
    compiled = generate(backbone if mode == "standard" else model, ids, mask, compile=True, **kwargs)
    assert compiled.sequences == eager.sequences
    assert (compiled.num_steps, compiled.num_pair_steps) == (eager.num_steps, eager.num_pair_steps)
    assert compiled.num_forward_passes > 5  # many steps ...
    assert counters["stats"]["unique_graphs"] - before == 1  # ... one compile
    if mode == "superthoughts":
        assert 0 < sum(compiled.num_pair_steps) < sum(compiled.num_steps)
        # A new generate call with the same batch and settings (a fresh cache) reuses the
        # compiled step whatever its prompt length and max_new_tokens: they are dynamic sizes.
        for prompts, max_new_tokens in (([PROMPTS[0], PROMPTS[1][:-2], *PROMPTS[2:]], 21),
                                        ([PROMPTS[0], [*PROMPTS[1], *range(60, 110)], *PROMPTS[2:]], 21),
                                        (PROMPTS, 40)):
            other_ids, other_mask = left_pad(prompts)
            other = dict(kwargs, max_new_tokens=max_new_tokens)
            with torch._dynamo.config.patch(error_on_recompile=True):
                again = generate(model, other_ids, other_mask, compile=True, **other)
            assert again.sequences == generate(model, other_ids, other_mask, compile=False, **other).sequences


@pytest.mark.skipif(not HAS_KERNELS, reason="superthoughts_ext._C is not built")
def test_temperatures_below_the_sampling_floor_decode_greedily_and_compile(qwen2_pair) -> None:
    # The step op decodes greedily below MIN_SAMPLING_TEMPERATURE: generate treats such a
    # temperature as 0 (compile=True accepted, CUDA graphs allowed), not as sampling.
    from superthoughts_ext.generate import resolve_compile, samples
    from superthoughts_ext.reference import MIN_SAMPLING_TEMPERATURE

    assert not samples(0.0) and not samples(1e-6) and samples(MIN_SAMPLING_TEMPERATURE) and samples(1.0)
    cuda = torch.device("cuda")
    assert resolve_compile("auto", cuda, 1e-6) and not resolve_compile("auto", cuda, MIN_SAMPLING_TEMPERATURE)
    _, model = qwen2_pair
    ids, mask = left_pad(PROMPTS)
    kwargs = dict(max_new_tokens=9, mode="superthoughts", threshold=MIXED_THRESHOLD)
    greedy = generate(model, ids, mask, compile=False, **kwargs)
    assert generate(model, ids, mask, compile=False, temperature=1e-6, seed=5, **kwargs).sequences == greedy.sequences
    compiled = generate(model, ids, mask, compile=True, temperature=1e-6, seed=5, **kwargs)
    assert compiled.sequences == greedy.sequences
    assert compiled.num_pair_steps == greedy.num_pair_steps
