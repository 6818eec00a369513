"""Demo task tests: generator determinism, disjoint splits, arithmetic, ambiguity, tokenizer.

The ambiguity measure uses the generator's structure: each CoT line depends only on the
question and the line's own draws, so "which tokens can come next" is keyed by (line
index, tokens of the line so far) and estimated from many re-wordings of one question.
"""
from __future__ import annotations

import random
import re
import statistics
from collections import defaultdict

import pytest

pytest.importorskip("transformers")
from transformers import AutoTokenizer, PreTrainedTokenizerFast  # noqa: E402

from superthoughts_ext.demo import task  # noqa: E402
from superthoughts_ext.demo.task import (  # noqa: E402
    Problem,
    make_problem,
    make_split,
    parse_question,
    read_jsonl,
    render_solution,
    split_of,
    write_jsonl,
)
from superthoughts_ext.demo.tokenizer import build_tokenizer, vocabulary  # noqa: E402
from superthoughts_ext.eval_data import SYSTEM_PROMPT  # noqa: E402

N_ROUNDTRIP = 3000


@pytest.fixture(scope="module")
def tokenizer() -> PreTrainedTokenizerFast:
    return build_tokenizer()


@pytest.fixture(scope="module")
def problems() -> list[Problem]:
    return make_split("train", N_ROUNDTRIP, seed=7) + make_split("test", 500, seed=7)


def _solution_tokens(tokenizer: PreTrainedTokenizerFast, text: str) -> list[str]:
    return tokenizer.convert_ids_to_tokens(tokenizer(text, add_special_tokens=False)["input_ids"])


def test_make_problem_deterministic_by_rng():
    a = [make_problem(random.Random(3)) for _ in range(5)]
    b = [make_problem(random.Random(3)) for _ in range(5)]
    assert a == b
    assert make_problem(random.Random(3)) != make_problem(random.Random(4))


@pytest.mark.parametrize("name", ["train", "test"])
def test_make_split_deterministic_and_distinct(name):
    first = make_split(name, 300, seed=11)
    assert first == make_split(name, 300, seed=11)
    assert first != make_split(name, 300, seed=12)
    assert len({p.question for p in first}) == len(first) == 300
    assert all(split_of(p.question) == name for p in first)
    # A longer split extends a shorter one with the same seed: sizes can grow reproducibly.
    assert make_split(name, 100, seed=11) == first[:100]


def test_splits_disjoint_across_seeds():
    train = {p.question for seed in range(3) for p in make_split("train", 3000, seed)}
    test = {p.question for seed in range(3) for p in make_split("test", 1000, seed)}
    assert train.isdisjoint(test)
    assert 0.05 < len(test) / (len(train) + len(test)) < 0.5


def test_make_split_bad_input():
    with pytest.raises(ValueError, match="name must be one of"):
        make_split("valid", 10)
    with pytest.raises(ValueError, match="cannot draw"):
        make_split("test", 50, digits=1)
    with pytest.raises(ValueError, match="equal widths"):
        render_solution(123, 45, random.Random(0))


def test_solutions_end_with_correct_boxed_answer(problems):
    for p in problems:
        a, b = parse_question(p.question)
        assert len(str(a)) == len(str(b)) and len(str(a)) in task.DIGIT_COUNTS
        assert p.answer == str(a + b)
        assert p.solution.endswith(f"\\boxed{{{a + b}}}")
        assert p.solution.count("\\boxed") == 1


def test_cot_steps_are_arithmetically_right(problems):
    line = re.compile(r"^(\w+): (\d)\+(\d)(\+1)?=(\d+), [a-z ]+ (\d), ([a-z 01]+); [a-z ]+ (\d+)\.$")
    for p in problems[:500]:
        a, b = parse_question(p.question)
        lines = p.solution.split("\n")[1:-2]
        assert len(lines) == len(str(a))
        carry = 0
        for column, text in enumerate(lines):
            m = line.match(text)
            assert m, text
            assert m.group(1) == task.COLUMN_NAMES[column]
            assert sorted(m.group(2, 3)) == sorted([str(a)[-1 - column], str(b)[-1 - column]])
            assert bool(m.group(4)) == bool(carry)
            total = int(m.group(2)) + int(m.group(3)) + carry
            assert int(m.group(5)) == total and int(m.group(6)) == total % 10
            carry = total // 10
            assert (0 if m.group(7) == "no carry" else int(m.group(7)[-1])) == carry
            assert m.group(8) == f"{(a + b) % 10 ** (column + 1):0{column + 1}d}"
        assert p.solution.split("\n")[-2].endswith(f" is {a + b}.")


def test_jsonl_round_trip(tmp_path, problems):
    path = write_jsonl(problems[:50], tmp_path / "sub" / "train.jsonl")
    text = path.read_text().splitlines()
    assert len(text) == 50 and '"problem"' in text[0] and '"solution"' in text[0] and '"answer"' in text[0]
    assert read_jsonl(path) == problems[:50]


def _branching(tokenizer: PreTrainedTokenizerFast, a: int, b: int, samples: int) -> list[list[bool]]:
    """Per re-wording of ``a + b``: for each response token, whether other tokens could come there."""
    seqs = [_solution_tokens(tokenizer, render_solution(a, b, random.Random(s))) for s in range(samples)]
    nexts: dict[tuple, set[str]] = defaultdict(set)
    keyed = []
    for seq in seqs:
        keys, line, start = [], 0, 0
        for i, token in enumerate(seq):
            keys.append((line, tuple(seq[start:i])))
            nexts[keys[-1]].add(token)
            if token == "\n":
                line, start = line + 1, i + 1
        keyed.append(keys)
    return [[len(nexts[key]) > 1 for key in keys] for keys in keyed]


def test_ambiguous_choice_points_exist_and_sit_on_second_tokens(tokenizer):
    rng = random.Random(5)
    flags = []
    for _ in range(6):
        flags += _branching(tokenizer, *parse_question(make_problem(rng).question), samples=400)
    choices = [i for seq in flags for i, amb in enumerate(seq) if amb]
    fraction = len(choices) / sum(map(len, flags))
    # Enough choice points for the fallback rule to matter, few enough for pairs to dominate.
    assert 0.08 < fraction < 0.3, fraction
    # Wordings of different lengths shuffle the pair parity: choices land on b about half the time.
    odd = sum(i % 2 for i in choices) / len(choices)
    assert 0.3 < odd < 0.7, odd


def test_choice_points_follow_deterministic_tokens(tokenizer):
    a, b = parse_question(make_problem(random.Random(9), digits=4).question)
    flags = _branching(tokenizer, a, b, samples=400)
    choices = [(seq[i], seq[i - 1]) for seq in flags for i in range(1, len(seq)) if seq[i]]
    assert min(sum(seq) for seq in flags) >= 8
    # The MTP head sees the pair's context but not its first token: a choice right after a
    # deterministic token is exactly the case it cannot resolve and must fall back on.
    assert sum(not before for _, before in choices) / len(choices) > 0.6


def test_vocabulary_small_and_deterministic(tokenizer):
    assert len(tokenizer) == len(vocabulary()) < 200
    assert build_tokenizer().get_vocab() == tokenizer.get_vocab()
    assert len(set(vocabulary())) == len(vocabulary())


def test_tokenizer_round_trip(tokenizer, problems):
    unk = tokenizer.unk_token_id
    for p in problems:
        for text in (p.question, p.solution):
            ids = tokenizer(text, add_special_tokens=False)["input_ids"]
            assert unk not in ids, text
            assert tokenizer.decode(ids) == text
    digits = _solution_tokens(tokenizer, "ones: 17+26=43")
    assert digits == ["ones", ":", " ", "1", "7", "+", "2", "6", "=", "4", "3"]
    assert _solution_tokens(tokenizer, " carry the 1") == [" carry", " the", " ", "1"]


def test_tokenizer_unknown_text_maps_to_unk(tokenizer):
    ids = tokenizer("What is \u03c0 + zebra?", add_special_tokens=False)["input_ids"]
    assert ids.count(tokenizer.unk_token_id) == 2


def test_special_tokens(tokenizer):
    assert tokenizer.eos_token == "<|im_end|>" and tokenizer.pad_token == "<|endoftext|>"
    assert tokenizer.bos_token is None
    assert tokenizer.convert_tokens_to_ids("<|im_start|>") != tokenizer.unk_token_id
    ids = tokenizer("<|im_start|>user\nWhat is 12 + 34?<|im_end|>", add_special_tokens=True)["input_ids"]
    assert ids[0] == tokenizer.convert_tokens_to_ids("<|im_start|>")
    assert ids[-1] == tokenizer.eos_token_id
    assert tokenizer.decode(ids, skip_special_tokens=True) == "user\nWhat is 12 + 34?"


def test_chat_template_structure(tokenizer):
    question = "What is 482 + 159?"
    with_system = [{"role": "system", "content": SYSTEM_PROMPT}, {"role": "user", "content": question}]
    text = tokenizer.apply_chat_template(with_system, tokenize=False, add_generation_prompt=True)
    assert text == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        f"<|im_start|>user\n{question}<|im_end|>\n<|im_start|>assistant\n"
    )
    # Qwen2.5-Math's template adds its CoT system prompt when the caller gives none.
    user_only = [{"role": "user", "content": question}]
    assert tokenizer.apply_chat_template(user_only, tokenize=False, add_generation_prompt=True) == text
    closed = tokenizer.apply_chat_template(user_only, tokenize=False, add_generation_prompt=False)
    assert closed == text[: -len("<|im_start|>assistant\n")]
    ids = tokenizer.apply_chat_template(task.chat_messages(question), add_generation_prompt=True, return_dict=False)
    assert ids == tokenizer(text, add_special_tokens=False)["input_ids"]
    assert tokenizer.unk_token_id not in ids
    assert tokenizer.decode(ids) == text
    answer = "\\boxed{641}"
    full = tokenizer.apply_chat_template(with_system + [{"role": "assistant", "content": answer}], tokenize=False)
    assert full == text + answer + "<|im_end|>\n"


def test_save_load_round_trip(tmp_path, tokenizer, problems):
    tokenizer.save_pretrained(tmp_path)
    loaded = AutoTokenizer.from_pretrained(tmp_path)
    assert loaded.get_vocab() == tokenizer.get_vocab()
    assert (loaded.eos_token, loaded.pad_token) == (tokenizer.eos_token, tokenizer.pad_token)
    messages = task.chat_messages(problems[0])
    assert loaded.apply_chat_template(messages, tokenize=False, add_generation_prompt=True) == \
        tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
    for p in problems[:200]:
        ids = loaded(p.solution, add_special_tokens=False)["input_ids"]
        assert ids == tokenizer(p.solution, add_special_tokens=False)["input_ids"]
        assert loaded.decode(ids) == p.solution


def test_token_lengths(tokenizer, problems):
    lengths = [len(tokenizer(p.solution, add_special_tokens=False)["input_ids"]) for p in problems]
    assert 40 <= min(lengths) and max(lengths) <= 150
    assert 90 <= statistics.mean(lengths) <= 130
    prompt = tokenizer.apply_chat_template(task.chat_messages(problems[0]), add_generation_prompt=True,
                                           return_dict=False)
    assert len(prompt) < 64


def test_saved_tokenizer_reloads_from_a_qwen2_model_directory(tmp_path):
    from transformers import Qwen2Config

    from superthoughts_ext.modeling import load_tokenizer

    tokenizer = build_tokenizer()
    tokenizer.save_pretrained(tmp_path)
    # A model directory of model_type qwen2 makes AutoTokenizer pick Qwen2Tokenizer, which
    # would rebuild a BPE pipeline and map the demo's words to <unk>.
    Qwen2Config(vocab_size=len(tokenizer)).save_pretrained(tmp_path)
    reloaded = load_tokenizer(tmp_path)
    text = "ones: 7+6=13, write 3, carry 1; so far 3."
    assert reloaded.tokenize(text) == tokenizer.tokenize(text)
    assert reloaded(text).input_ids == tokenizer(text).input_ids
