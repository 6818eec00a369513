"""Decoding edge cases on the tiny random models of test_generate.py (CPU): thresholds that never
or always pair, EOS as the first token or inside a pair step, token budgets (one token, odd and
even limits in pairs mode, ignore_eos), the context limit, an empty batch, and bad input.

EOS is forced as test_generate.py's docstring describes: a token decoded at the wanted place
becomes the EOS id of a second decode.
"""
from __future__ import annotations

import copy
import warnings

import numpy as np
import pytest
import torch

import test_generate
import test_generate_io
from superthoughts_ext.generate import MODES, ContextStopWarning, NonFiniteLogitsWarning, generate
from test_generate import BOS, CONTEXT, EOS, MIXED_THRESHOLD, PROMPTS, VOCAB, check_stats, left_pad, until_eos
from test_generate_limits import KERNELS

# Tiny models: one CPU thread (see conftest.one_cpu_thread).
pytestmark = pytest.mark.usefixtures("one_cpu_thread")
backbone = test_generate.backbone  # qwen2 and llama (a parametrized fixture)
model = test_generate.model  # the SuperThoughts model around each backbone (a fixture)


def test_threshold_one_never_pairs_and_pairs_always_pair(model) -> None:
    ids, mask = left_pad(PROMPTS)
    never = generate(model, ids, mask, max_new_tokens=16, threshold=1.0, threshold_main=1.0)
    assert never.num_pair_steps == [0] * len(PROMPTS)
    assert never.num_steps == never.num_tokens
    always = generate(model, ids, mask, max_new_tokens=16, mode="pairs", ignore_eos=True)
    assert always.num_tokens == [16] * len(PROMPTS)
    assert always.num_steps == always.num_pair_steps == [8] * len(PROMPTS)
    assert always.num_forward_passes == 8  # the loop stops as soon as the budget is used up


@pytest.mark.parametrize("use_kernels", KERNELS, ids=["kernels", "reference"])
def test_threshold_one_never_pairs_on_a_confident_mtp_head(model, use_kernels: bool) -> None:
    # MTP logits scaled 30x: the runner-up sits 0-78 logits below the max, and on 20-29 of the
    # MTP rows decoded here a float32 softmax rounds the max probability to exactly 1 (the
    # other terms fall below half an ulp of it). Threshold 1.0 still keeps no pair, as the
    # exact rule of csrc/kernels/confidence.h says; 0.9999 keeps many.
    confident = copy.deepcopy(model)
    with torch.no_grad():
        confident.mtp.norm.weight.mul_(30.0)
    ids, mask = left_pad(PROMPTS)
    never = generate(confident, ids, mask, max_new_tokens=16, threshold=1.0, use_kernels=use_kernels)
    assert never.num_pair_steps == [0] * len(PROMPTS)
    often = generate(confident, ids, mask, max_new_tokens=16, threshold=0.9999, use_kernels=use_kernels)
    assert sum(often.num_pair_steps) >= len(PROMPTS)


def test_the_loop_stops_at_the_step_after_the_last_row_finishes_on_a_cpu(backbone) -> None:
    # A GPU reads `finished` every CHECK_EVERY steps (each read syncs it); a CPU every step, so no
    # forward pass runs on rows that are all done.
    prompt = torch.tensor([PROMPTS[0]])
    free = generate(backbone, prompt, max_new_tokens=16, mode="standard", ignore_eos=True).sequences[0]
    k = next(i for i in range(2, len(free)) if free[i] not in free[:i])  # its first appearance ends the output
    out = generate(backbone, prompt, max_new_tokens=16, mode="standard", eos_token_id=free[k])
    assert out.sequences == [free[: k + 1]]
    assert out.num_forward_passes == k + 1  # prefill (token 0) and one step per later token


def test_eos_as_first_token(model) -> None:
    prompt = torch.tensor([PROMPTS[0]])
    first = generate(model, prompt, max_new_tokens=5, mode="pairs").sequences[0][0]
    out = generate(model, prompt, max_new_tokens=5, mode="pairs", eos_token_id=first)
    assert (out.sequences, out.num_steps, out.num_pair_steps, out.num_forward_passes) == ([[first]], [1], [0], 1)


@pytest.mark.parametrize("position", ["second", "first"])
def test_eos_inside_a_pair_step(model, position: str) -> None:
    prompt = torch.tensor([PROMPTS[1]])
    free = generate(model, prompt, max_new_tokens=40, mode="pairs", ignore_eos=True).sequences[0]
    parity = 1 if position == "second" else 0  # in pairs mode odd indices are second tokens
    j = next(i for i, t in enumerate(free) if i > 2 and i % 2 == parity and t not in free[:i])
    out = generate(model, prompt, max_new_tokens=40, mode="pairs", eos_token_id=free[j])
    assert out.sequences[0] == free[: j + 1]
    # EOS as a first token vetoes its pair: that last step emits one token.
    assert out.num_pair_steps[0] == (j + 1) // 2
    assert out.num_steps[0] == (j + 2) // 2


@pytest.mark.parametrize("mode", MODES)
def test_max_new_tokens_one(model, mode: str) -> None:
    ids, mask = left_pad(PROMPTS)
    out = generate(model, ids, mask, max_new_tokens=1, mode=mode, threshold=0.0)
    assert out.num_tokens == out.num_steps == [1] * len(PROMPTS)
    assert out.num_pair_steps == [0] * len(PROMPTS) and out.num_forward_passes == 1


def test_odd_and_even_limits_in_pairs_mode(model) -> None:
    ids, mask = left_pad(PROMPTS)
    odd = generate(model, ids, mask, max_new_tokens=7, mode="pairs", ignore_eos=True)
    even = generate(model, ids, mask, max_new_tokens=8, mode="pairs", ignore_eos=True)
    # With one slot left, the last pair step keeps only its first token.
    assert (odd.num_tokens, odd.num_steps, odd.num_pair_steps) == ([7] * 4, [4] * 4, [3] * 4)
    assert (even.num_tokens, even.num_steps, even.num_pair_steps) == ([8] * 4, [4] * 4, [4] * 4)
    assert [seq[:7] for seq in even.sequences] == odd.sequences
    # Without ignore_eos the cache is sized for the 3 decode steps pairs can need.
    capped = generate(model, ids, mask, max_new_tokens=7, mode="pairs")
    assert capped.sequences == [until_eos(seq, EOS) for seq in odd.sequences]


def test_thresholds_zero_size_the_cache_as_pairs(model, monkeypatch) -> None:
    # Thresholds 0 / 0 keep every pair: the cache pairs mode needs (3 decode steps for 7 tokens)
    # suffices, where a threshold that may refuse pairs needs one step per token.
    import superthoughts_ext.generate as generate_module

    decode_steps = []
    allocate = generate_module._allocate

    def spy(*args):
        decode_steps.append(args[5])
        return allocate(*args)

    monkeypatch.setattr(generate_module, "_allocate", spy)
    ids, mask = left_pad(PROMPTS)
    pairs = generate(model, ids, mask, max_new_tokens=7, mode="pairs")
    zero = generate(model, ids, mask, max_new_tokens=7, threshold=0.0, threshold_main=0.0)
    generate(model, ids, mask, max_new_tokens=7, threshold=MIXED_THRESHOLD)
    assert (zero.sequences, zero.num_pair_steps) == (pairs.sequences, pairs.num_pair_steps)
    assert decode_steps == [3, 3, 6]


@pytest.mark.parametrize("mode", MODES)
def test_ignore_eos_decodes_the_full_budget(model, mode: str) -> None:
    # pairs mode sizes its cache for a budget that EOS ends early; ignoring EOS it must not.
    ids, mask = left_pad(PROMPTS)
    first = generate(model, ids, mask, max_new_tokens=1, mode=mode).sequences[0][0]
    out = generate(model, ids, mask, max_new_tokens=13, eos_token_id=first, ignore_eos=True, mode=mode,
                   threshold=MIXED_THRESHOLD if mode == "superthoughts" else None)
    assert out.num_tokens == [13] * len(PROMPTS)
    check_stats(out, 13)


def test_rows_ending_at_other_steps_raise_no_warning(model) -> None:
    # A finished row's step gives confidence 0; counted as "no finite maximum", every batch whose
    # rows ended apart warned about main-head logits it never met.
    ids, mask = left_pad(PROMPTS)
    first = generate(model, ids, mask, max_new_tokens=1).sequences[0][0]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        out = generate(model, ids, mask, max_new_tokens=12, eos_token_id=first, threshold=MIXED_THRESHOLD)
    assert out.num_tokens[0] <= 2 and max(out.num_tokens) > 2, out.num_tokens


def test_a_row_at_the_context_of_learned_positions() -> None:
    # GPT-2's positions are an embedding table: a row held at the context's last position while
    # another decodes on must not index past it (an IndexError without the clamp).
    from transformers import GPT2Config, GPT2LMHeadModel

    torch.manual_seed(0)
    gpt2 = GPT2LMHeadModel(GPT2Config(vocab_size=64, n_positions=24, n_embd=32, n_layer=2, n_head=2,
                                      bos_token_id=1, eos_token_id=2, pad_token_id=0)).eval()
    ids = torch.tensor([[0] * 19 + [5], list(range(3, 23))])
    mask = torch.ones_like(ids)
    mask[0, :19] = 0
    out = generate(gpt2, ids, mask, max_new_tokens=10, mode="standard", ignore_eos=True)
    assert out.num_tokens == [10, 5]  # the long row: prefill's token and its 4 positions left
    alone = gpt2.generate(ids[:1, 19:], max_new_tokens=10, do_sample=False, eos_token_id=None, pad_token_id=0)
    assert out.sequences[0] == alone[0, 1:].tolist()


def test_empty_batch(model) -> None:
    out = generate(model, torch.zeros(0, 5, dtype=torch.int64), max_new_tokens=4)
    assert (out.sequences, out.num_tokens, out.num_steps, out.num_pair_steps) == ([], [], [], [])
    # A streamer is ended (a TextIteratorStreamer's reader waits for that) ...
    from transformers import TextIteratorStreamer

    streamer = TextIteratorStreamer(test_generate_io.TOKENIZER, timeout=5.0)
    generate(model, torch.zeros(0, 5, dtype=torch.int64), max_new_tokens=4, streamer=streamer)
    assert "".join(streamer) == ""  # raised queue.Empty after the timeout when never ended
    # ... and a 1-D tensor is not a batch, even an empty one.
    with pytest.raises(ValueError, match=r"input_ids must be \[B, T\] int64 or int32, got \(0,\)"):
        generate(model, torch.zeros(0, dtype=torch.int64), max_new_tokens=4)


@pytest.mark.parametrize("mode", MODES)
def test_context_limit(model, mode: str) -> None:
    with pytest.raises(ValueError, match="max_position_embeddings=96"):
        generate(model, torch.full((1, CONTEXT + 1), 7), max_new_tokens=4, mode=mode)
    # Two positions are left after a 94-token prompt: prefill's step plus two decode steps.
    out = generate(model, torch.full((1, CONTEXT - 2), 7), max_new_tokens=50, mode=mode, threshold=0.0,
                   ignore_eos=True)
    assert out.num_steps == [3] and out.num_tokens == [3 if mode == "standard" else 6]
    # A prompt that fills the context still gets prefill's step.
    full = generate(model, torch.full((1, CONTEXT), 7), max_new_tokens=50, mode=mode, threshold=0.0, ignore_eos=True)
    assert full.num_steps == [1] and full.num_tokens == [1 if mode == "standard" else 2]


def test_padded_batch_without_its_mask_is_warned_about(model, backbone) -> None:
    # The pads would be read as prompt tokens (transformers' generate infers the mask instead).
    ids, mask = left_pad(PROMPTS[:2])
    for m in (model, backbone):
        with pytest.warns(UserWarning, match=r"generate: rows \[0\] start with the pad id 0 but no attention_mask"):
            generate(m, ids, max_new_tokens=2, mode="standard")
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model, ids, mask, max_new_tokens=2)
        generate(model, ids[1:], max_new_tokens=2)  # the longest row has no pad
    # Beyond ten rows the message says how many more, not a silently cut list.
    ids, _ = left_pad([PROMPTS[0]] * 12 + [PROMPTS[1]])
    with pytest.warns(UserWarning, match=r"rows \[0, 1, .*, 9\] and 2 more start with the pad id"):
        generate(model, ids, max_new_tokens=1, mode="standard")
    # Right padding (a tokenizer's default) decoded on after the pads without a word.
    ids, _ = left_pad(PROMPTS[:2])
    right = torch.stack([torch.cat([row[row != 0], row[row == 0]]) for row in ids])
    with pytest.warns(UserWarning, match=r"rows \[0\] end with the pad id 0 but no attention_mask was given: .* "
                                         r"a right-padded batch continues after its pads: tokenize with "
                                         r"padding_side='left'"):
        generate(model, right, max_new_tokens=2)
    with warnings.catch_warnings():  # a pad that is an EOS id may end a prompt on purpose, once
        warnings.simplefilter("error")
        generate(model, torch.cat([right[1:, :-1], torch.zeros(1, 1, dtype=right.dtype)], 1), max_new_tokens=2,
                 eos_token_id=[EOS, 0])
    assert (right[0, -2:] == 0).all()  # ... but two of them are padding
    with pytest.warns(UserWarning, match=r"rows \[0\] end with the pad id 0"):
        generate(model, right, max_new_tokens=2, eos_token_id=[EOS, 0])


def test_a_model_in_training_mode_with_dropout_is_warned_about(backbone) -> None:
    # Dropout stayed on: greedy decoding gave other tokens on every call.
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    dropped = copy.deepcopy(backbone)
    for module in dropped.modules():
        if hasattr(module, "attention_dropout"):
            module.attention_dropout = 0.5
    model = SuperThoughtsForCausalLM.from_base(dropped).train()
    ids, mask = left_pad(PROMPTS[:2])
    with pytest.warns(UserWarning, match=r"generate: the model is in training mode with dropout \(p=\[0\.5\]\): "
                                         r"every call decodes differently; call model.eval\(\) first"):
        generate(model, ids, mask, max_new_tokens=2)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        generate(model.eval(), ids, mask, max_new_tokens=2)
        generate(SuperThoughtsForCausalLM.from_base(copy.deepcopy(backbone)).train(), ids, mask, max_new_tokens=2)


def test_wrappers_lists_and_devices_are_named(model) -> None:
    ids, mask = left_pad(PROMPTS[:2])
    # A DataParallel model was "not a SuperThoughts model"; a list of ids an AttributeError.
    with pytest.raises(ValueError, match=r"generate: got a DataParallel wrapper; pass the model it wraps \(.module\)"):
        generate(torch.nn.DataParallel(model), ids, mask, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"generate: input_ids must be a torch.Tensor \[B, T\] .*got list"):
        generate(model, ids.tolist(), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"generate: attention_mask must be a torch.Tensor .*got list"):
        generate(model, ids, mask.tolist(), max_new_tokens=2)
    # Meta inputs or weights failed deep inside autocast or on a .item().
    with pytest.raises(ValueError, match=r"generate: cannot decode on the meta device \(input_ids on meta, the model "
                                         r"on cpu, attention_mask on meta\)"):
        generate(model, ids.to("meta"), mask.to("meta"), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"the model on meta"):
        generate(copy.deepcopy(model).to("meta"), ids, mask, max_new_tokens=2)
    with pytest.raises(ValueError, match=r"empty"):
        generate(model, ids, mask, max_new_tokens=2, eos_token_id=torch.tensor([], dtype=torch.long))


def test_bad_input_is_rejected(model, backbone) -> None:
    ids, mask = left_pad(PROMPTS[:2])
    with pytest.raises(ValueError, match="left-padded"):
        generate(model, ids, mask.flip(1), max_new_tokens=4)
    with pytest.raises(ValueError, match="no prompt token"):
        generate(model, ids, mask * torch.tensor([[0], [1]]), max_new_tokens=4)
    with pytest.raises(ValueError, match="needs a SuperThoughts model"):
        generate(backbone, ids, mask, max_new_tokens=4, mode="pairs")
    with pytest.raises(ValueError, match="mode must be one of"):
        generate(model, ids, mask, max_new_tokens=4, mode="greedy")
    with pytest.raises(ValueError, match="max_new_tokens"):
        generate(model, ids, mask, max_new_tokens=0)
    if not torch.cuda.is_available():
        with pytest.raises(ValueError, match="cuda_graphs=True"):
            generate(model, ids, mask, max_new_tokens=4, cuda_graphs=True)
    with pytest.raises(ValueError, match="cuda_graphs must be"):
        generate(model, ids, mask, max_new_tokens=4, cuda_graphs="yes")
    with pytest.raises(ValueError, match="compile=True needs greedy decoding"):
        generate(model, ids, mask, max_new_tokens=4, compile=True, temperature=1.0)
    with pytest.raises(ValueError, match="compile must be"):
        generate(model, ids, mask, max_new_tokens=4, compile="yes")
    # Refused before prefill, by the reference path too (the kernels raised a RuntimeError at
    # the first step, the reference took any value).
    for use_kernels in (True, False):
        # float() took True, numpy's and torch's bools and "0.5".
        for bad in (dict(threshold=2.0), dict(threshold=float("nan")), dict(threshold_main=-0.1), dict(threshold=True),
                    dict(threshold=np.True_), dict(threshold_main=torch.tensor(True)), dict(threshold="0.5")):
            with pytest.raises(ValueError, match=f"{next(iter(bad))} must lie in \\[0, 1\\]"):
                generate(model, ids, mask, max_new_tokens=4, use_kernels=use_kernels, **bad)
        # The step op's EOS must be a token (the kernels raised a RuntimeError after prefill, the
        # reference decoded on); the other EOS ids are only compared with the output.
        for eos, named in ((-1, -1), (VOCAB, VOCAB), ([VOCAB, EOS], VOCAB)):
            with pytest.raises(ValueError, match=rf"eos_token_id {named} \(the EOS the step op stops on\) is "
                                                 rf"outside the vocabulary \[0, {VOCAB}\)"):
                generate(model, ids, mask, max_new_tokens=4, use_kernels=use_kernels, eos_token_id=eos)
        assert generate(model, ids, mask, max_new_tokens=4, use_kernels=use_kernels, eos_token_id=[EOS, -1]).sequences \
            == generate(model, ids, mask, max_new_tokens=4, use_kernels=use_kernels, eos_token_id=EOS).sequences
    assert generate(model, ids, mask, max_new_tokens=4, eos_token_id=torch.tensor([EOS, 5])).sequences \
        == generate(model, ids, mask, max_new_tokens=4, eos_token_id=[EOS, 5]).sequences
    with pytest.raises(ValueError, match="eos_token_id is empty"):
        generate(model, ids, mask, max_new_tokens=4, eos_token_id=[])
    with pytest.raises(ValueError, match="max_new_tokens must be an int, got float 4.0"):
        generate(model, ids, mask, max_new_tokens=4.0)
    # A bool tensor is no count (it decoded one token), nor a seed.
    for bad in (dict(max_new_tokens=torch.tensor(True)), dict(max_new_tokens=4, seed=torch.tensor(True))):
        with pytest.raises(ValueError, match="must be an int(eger)?, got Tensor"):
            generate(model, ids, mask, **bad)
    # Integers of other types pass, as for the seed.
    assert generate(model, ids, mask, max_new_tokens=np.int64(4)).sequences \
        == generate(model, ids, mask, max_new_tokens=torch.tensor(4)).sequences \
        == generate(model, ids, mask, max_new_tokens=4).sequences
    with pytest.raises(ValueError, match=r"rows \[0, 1\] have no prompt token"):  # no mask to infer from
        generate(model, ids[:, :0], max_new_tokens=4)


def test_bad_ids_mask_values_and_eos_values_are_named(model) -> None:
    ids, mask = left_pad(PROMPTS[:2])
    # The embedding lookup's bare IndexError named neither the id nor where it sat.
    for bad, named in ((VOCAB, rf"{VOCAB} at \[1, 2\]"), (-100, r"-100 at \[1, 2\]")):
        wrong = ids.clone()
        wrong[1, 2] = bad
        with pytest.raises(ValueError, match=rf"input_ids hold ids outside the model's vocabulary \[0, {VOCAB}\): "
                                             rf"{named}"):
            generate(model, wrong, mask, max_new_tokens=2)
    # A float mask's 1.5 and 0.7 were cast to 1 and 0 before the 0/1 check.
    fractional = mask.float()
    fractional[1, -1] = 1.5
    with pytest.raises(ValueError, match=r"attention_mask must hold 0/1 values, got \[1.5\]"):
        generate(model, ids, fractional, max_new_tokens=2)
    assert generate(model, ids, mask.bool(), max_new_tokens=2).sequences == \
        generate(model, ids, mask.float(), max_new_tokens=2).sequences
    # int() turned 5.7 into 5 and "7" into 7.
    for bad in (5.7, "7", [EOS, 2.0], True):
        with pytest.raises(ValueError, match="eos_token_id must be token ids \\(ints\\)"):
            generate(model, ids, mask, max_new_tokens=2, eos_token_id=bad)


def test_streamer_is_ended_when_generate_raises(model) -> None:
    from transformers import TextIteratorStreamer

    ids, mask = left_pad(PROMPTS[:1])
    streamer = TextIteratorStreamer(test_generate_io.TOKENIZER, timeout=5.0)
    with pytest.raises(ValueError, match="threshold must lie in"):
        generate(model, ids, mask, max_new_tokens=2, threshold=2.0, streamer=streamer)
    assert "".join(streamer) == ""  # raised queue.Empty after the timeout when never ended


def test_streamer_is_ended_once_and_its_errors_do_not_hide_the_first(model) -> None:
    # A put() that fails (a closed pipe) and an end() that fails again: the caller gets put()'s
    # error; end() ran twice when the error came after the success path had ended the stream.
    class Failing(test_generate_io.RecordingStreamer):
        def put(self, value) -> None:
            super().put(value)
            if len(self.puts) == 3:
                raise BrokenPipeError("put")

        def end(self) -> None:
            super().end()
            raise BrokenPipeError("end")

    ids, mask = left_pad(PROMPTS[:1])
    streamer = Failing()
    with pytest.raises(BrokenPipeError, match="^put$"):
        generate(model, ids, mask, max_new_tokens=8, ignore_eos=True, streamer=streamer)
    assert streamer.ended == 1
    # An error after decoding (a warning made an error) ends the stream once too.
    streamer = test_generate_io.RecordingStreamer()
    with warnings.catch_warnings():
        warnings.simplefilter("error", ContextStopWarning)
        with pytest.raises(ContextStopWarning):
            generate(model, torch.tensor([[BOS] * (CONTEXT - 2)]), max_new_tokens=8, ignore_eos=True,
                     streamer=streamer)
    assert streamer.ended == 1 and len(streamer.puts) > 1


@pytest.mark.parametrize("mode", MODES)
def test_logits_with_no_finite_maximum_are_warned_about(model, mode) -> None:
    # A float16 model whose top logit overflows to +inf: the step op's rule emits the pad id
    # (transformers' argmax picks the +inf token); it did so without a word.
    ids, mask = left_pad(PROMPTS)
    overflowing = copy.deepcopy(model)
    backbone_model = overflowing.backbone
    head = torch.nn.Linear(backbone_model.lm_head.in_features, VOCAB, bias=True)
    with torch.no_grad():
        head.weight.copy_(backbone_model.lm_head.weight)
        head.bias.zero_()
        head.bias[5] = float("inf")
    backbone_model.lm_head = head
    with pytest.warns(NonFiniteLogitsWarning, match=r"^generate: rows \[0, 1, 2, 3\] met main-head logits with no "
                                                   r"finite maximum \(NaN, all -inf, or \+inf, as from a float16 "
                                                   r"model that overflows\) and emitted the pad id there"):
        out = generate(overflowing, ids, mask, max_new_tokens=4, mode=mode, ignore_eos=True)
    assert out.sequences == [[overflowing.pad_token_id] * len(row) for row in out.sequences]
    assert out.nonfinite_rows == [0, 1, 2, 3]
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        # finite logits: no warning
        assert generate(model, ids, mask, max_new_tokens=4, mode=mode).nonfinite_rows == []


def test_generate_under_autocast_is_refused(model) -> None:
    # Autocast made bfloat16 keys and values for the float32 static cache: an index_copy_ dtype
    # error from inside transformers' cache update.
    ids, mask = left_pad(PROMPTS)
    for mode in MODES:
        with torch.autocast("cpu", dtype=torch.bfloat16), pytest.raises(
                ValueError, match=r"generate: torch.autocast \(torch.bfloat16\) is on over a torch.float32 model; "
                                  r"decoding runs in the model's own dtype: load the model in torch.bfloat16"):
            generate(model, ids, mask, max_new_tokens=4, mode=mode)
    # Autocast to the model's own dtype changes nothing: it decodes as outside autocast.
    half = copy.deepcopy(model).to(torch.bfloat16)
    plain = generate(half, ids, mask, max_new_tokens=4)
    with torch.autocast("cpu", dtype=torch.bfloat16):
        assert generate(half, ids, mask, max_new_tokens=4).sequences == plain.sequences
