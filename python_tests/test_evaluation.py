"""Evaluation tests: prompts, evaluate() with an injected generate (records, summary, batching with
left padding) and compare(). (Extraction and grading: test_grading_math.py and
test_grading_choices.py; data files: test_eval_data.py; the CLI: test_eval_cli.py; edge cases:
test_eval_io.py; the progress bar: test_eval_progress.py; reruns and resumes: test_eval_resume.py;
compiled decoding: test_eval_compile.py.)

CPU only, no model weights: evaluate() runs on a word-level ChatML tokenizer and a fake
generate that answers "what is a + b" problems; the other evaluation test files reuse both.
"""
from __future__ import annotations

import json
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("math_verify")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from superthoughts_ext.eval_data import SYSTEM_PROMPT, Problem, build_prompt  # noqa: E402
from superthoughts_ext.evaluation import (  # noqa: E402
    compare,
    compare_runs,
    evaluate,
    format_comparison,
    format_runs,
    plot_tradeoff,
    summary_path,
)


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------- evaluate

SPECIALS = ["<|endoftext|>", "<|im_start|>", "<|im_end|>", "[UNK]"]
WORDS = ["system", "user", "assistant", "what", "is", "+", "so", "the", "answer"]
BOXES = [f"\\boxed{{{n}}}" for n in range(20)]
CHATML = (
    "{% for m in messages %}<|im_start|>{{ m['role'] }}\n{{ m['content'] }}<|im_end|>\n{% endfor %}"
    "{% if add_generation_prompt %}<|im_start|>assistant\n{% endif %}"
)


def make_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level ChatML tokenizer whose vocabulary includes boxed answers 0..19."""
    vocab = {w: i for i, w in enumerate(SPECIALS + WORDS + [str(d) for d in range(10)] + BOXES)}
    backend = Tokenizer(models.WordLevel(vocab=vocab, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", pad_token="<|endoftext|>",
        eos_token="<|im_end|>", chat_template=CHATML, additional_special_tokens=["<|im_start|>"],
    )


def fake_generate(tokenizer: PreTrainedTokenizerFast, calls: list[dict]):
    """A stand-in for superthoughts_ext.generate.generate that solves "what is a + b"."""
    pad, eos = tokenizer.pad_token_id, tokenizer.convert_tokens_to_ids("<|im_end|>")

    def generate(model, input_ids, attention_mask, *, max_new_tokens, mode, threshold, eos_token_id, compile):
        # Left padding: every row's real tokens end at the last column.
        assert bool(attention_mask[:, -1].all())
        assert bool((input_ids[attention_mask == 0] == pad).all())
        calls.append({"batch": input_ids.shape[0], "new_tokens": max_new_tokens, "mode": mode, "threshold": threshold,
                      "eos": eos_token_id,
                      "compile": compile})
        sequences = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            words = tokenizer.decode([t for t, m in zip(ids, mask) if m]).split()
            a, b = (int(w) for w in words[words.index("+") - 1 :: 2][:2])
            total = a + b if a != 9 else a + b + 1  # "9 + b" problems get a wrong answer
            answer = ["so", "the", "answer", "is", f"\\boxed{{{total}}}"] if a != 8 else ["so"]
            # Text after the turn end must not be graded.
            trailer = tokenizer.convert_tokens_to_ids(["\\boxed{0}"])
            # "8 + b" problems run out of tokens: no box and no turn end.
            end = [eos] + trailer if a != 8 else []
            sequences.append(tokenizer.convert_tokens_to_ids(answer) + end)
        tokens = [len(s) for s in sequences]
        return SimpleNamespace(
            sequences=sequences, num_tokens=tokens, num_steps=[(n + 1) // 2 for n in tokens],
            num_pair_steps=[n // 2 for n in tokens], wall_time=0.5,
        )

    return generate


PROBLEMS = [Problem(f"p{a}{b}", f"what is {a} + {b}" + " +" * (a % 3), str(a + b)) for a, b in
            [(1, 2), (3, 4), (9, 1), (2, 2), (8, 1), (5, 4), (0, 0)]]


def fake_model(tokenizer: PreTrainedTokenizerFast) -> SimpleNamespace:
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    return SimpleNamespace(device=torch.device("cpu"), generation_config=SimpleNamespace(eos_token_id=[eos, 0]))


def test_build_prompt_uses_the_chat_template() -> None:
    prompt = build_prompt(make_tokenizer(), "what is 1 + 2")
    assert prompt == (
        f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n"
        "<|im_start|>user\nwhat is 1 + 2<|im_end|>\n<|im_start|>assistant\n"
    )


def test_evaluate_writes_records_and_summary(tmp_path: Path) -> None:
    tokenizer, calls = make_tokenizer(), []
    out = tmp_path / "runs" / "st.jsonl"
    summary = evaluate(
        fake_model(tokenizer), tokenizer, "math500", PROBLEMS, mode="superthoughts", threshold=0.9,
        batch_size=3, output_jsonl=out, progress=False, generate_fn=fake_generate(tokenizer, calls),
        metadata={"model": "fake"},
    )
    assert [c["batch"] for c in calls] == [3, 3, 1]
    assert all(c["mode"] == "superthoughts" and c["threshold"] == 0.9 and c["eos"] == [2, 0] for c in calls)
    records = sorted(read_jsonl(out), key=lambda r: r["index"])
    assert [r["id"] for r in records] == [p.id for p in PROBLEMS]
    assert [r["correct"] for r in records] == [True, True, False, True, False, True, True]
    assert records[4]["extracted"] is None and records[2]["extracted"] == "11"
    assert records[0]["output"] == "so the answer is \\boxed{3}" and records[0]["prompt"].endswith("assistant\n")
    assert records[0]["tokens"] == 6 + 1 and records[0]["steps"] == 4 and records[0]["time"] == pytest.approx(0.5 / 3)
    assert summary.n == 7 and summary.n_correct == 5 and summary.accuracy == pytest.approx(5 / 7)
    assert summary.n_no_box == 1 and summary.n_hit_limit == 1
    assert [r["hit_limit"] for r in records] == [False, False, False, False, True, False, False]
    tokens = [r["tokens"] for r in records]
    steps = [r["steps"] for r in records]
    assert summary.mean_tokens == pytest.approx(sum(tokens) / 7)
    assert summary.cot_reduction == pytest.approx(1 - sum(steps) / sum(tokens))
    assert summary.generation_time == pytest.approx(1.5)
    assert summary.tokens_per_s == pytest.approx(sum(tokens) / 1.5)
    saved = json.loads(summary_path(out).read_text())
    assert saved["accuracy"] == summary.accuracy and saved["model"] == "fake"
    assert summary_path(out).name == "st.summary.json"


def test_gpqa_answer_boxed_as_an_option_text_counts_as_its_letter(tmp_path: Path) -> None:
    tokenizer = make_tokenizer()
    options = ("3", "7", "12", "5")  # the model boxes "7", the text of option B
    problems = [Problem("right", "what is 3 + 4", "B", options), Problem("wrong", "what is 3 + 4", "C", options),
                Problem("no options", "what is 3 + 4", "B")]
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def generate(model, input_ids, attention_mask, **kwargs):
        sequences = [tokenizer.convert_tokens_to_ids(["so", "\\boxed{7}"]) + [eos] for _ in input_ids]
        return SimpleNamespace(sequences=sequences, num_tokens=[3] * len(sequences), num_steps=[2] * len(sequences),
                               num_pair_steps=[1] * len(sequences), wall_time=0.1)

    out = tmp_path / "gpqa.jsonl"
    evaluate(fake_model(tokenizer), tokenizer, "gpqa_diamond", problems, mode="standard", output_jsonl=out,
             progress=False, generate_fn=generate)
    records = {r["id"]: r for r in read_jsonl(out)}
    assert [records[p.id]["extracted"] for p in problems] == ["B", "B", None]
    assert [records[p.id]["correct"] for p in problems] == [True, False, False]


def test_gpqa_accuracy_per_option_order(tmp_path: Path) -> None:
    from superthoughts_ext.evaluation import format_summary

    tokenizer = make_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    # The model boxes "7" whatever the order: right where 7 is the answer's option, wrong in order 1
    # of question "a", where the answer is option A ("12").
    problems = [Problem("a", "what is 3 + 4", "B", ("3", "7", "12", "5"), option_order=0),
                Problem("a#order1", "what is 3 + 4", "A", ("12", "7", "3", "5"), option_order=1),
                Problem("b", "what is 3 + 4", "D", ("3", "12", "5", "7"), option_order=0),
                Problem("b#order1", "what is 3 + 4", "C", ("3", "12", "7", "5"), option_order=1)]

    def generate(model, input_ids, attention_mask, **kwargs):
        sequences = [tokenizer.convert_tokens_to_ids(["so", "\\boxed{7}"]) + [eos] for _ in input_ids]
        return SimpleNamespace(sequences=sequences, num_tokens=[3] * len(sequences), num_steps=[2] * len(sequences),
                               num_pair_steps=[1] * len(sequences), wall_time=0.1)

    out = tmp_path / "gpqa.jsonl"
    summary = evaluate(fake_model(tokenizer), tokenizer, "gpqa_diamond", problems, mode="standard", output_jsonl=out,
                       progress=False, generate_fn=generate)
    assert {r["id"]: r["option_order"] for r in read_jsonl(out)} == {"a": 0, "a#order1": 1, "b": 0, "b#order1": 1}
    assert summary.accuracy == 0.75 and summary.accuracy_by_option_order == [1.0, 0.5]
    assert json.loads(summary_path(out).read_text())["accuracy_by_option_order"] == [1.0, 0.5]
    assert format_summary(summary).endswith("; accuracy per option order 1.0000, 0.5000")
    # Records of an older version (no option_order) resumed into a run of several orders: order 0's.
    from superthoughts_ext.eval_records import grade_fields

    older = [{k: v for k, v in r.items() if k != "option_order"} for r in read_jsonl(out) if "#" not in r["id"]]
    newer = [r for r in read_jsonl(out) if "#" in r["id"]]
    assert grade_fields(older + newer)["accuracy_by_option_order"] == [1.0, 0.5]
    # One order, or no options at all: no per-order list.
    one = evaluate(fake_model(tokenizer), tokenizer, "gpqa_diamond", problems[::2], mode="standard",
                   progress=False, generate_fn=generate)
    assert one.accuracy_by_option_order is None and "option order" not in format_summary(one)


@pytest.mark.parametrize("mode", ["pairs", "standard", "superthoughts"])
def test_only_superthoughts_runs_record_a_threshold(tmp_path: Path, mode: str) -> None:
    # pairs and standard decode without one: recording the model's default mislabels the run
    # (--compare) and makes a resume demand it.
    tokenizer = make_tokenizer()
    model = fake_model(tokenizer)
    model.config = SimpleNamespace(threshold=0.97, threshold_main=0.1)
    out = tmp_path / f"{mode}.jsonl"
    evaluate(model, tokenizer, "math500", PROBLEMS[:2], mode=mode, batch_size=2, output_jsonl=out, progress=False,
             generate_fn=fake_generate(tokenizer, []))
    summary = json.loads(summary_path(out).read_text())
    records = [json.loads(line) for line in out.read_text().splitlines()]
    expected = 0.97 if mode == "superthoughts" else None
    assert summary["threshold"] == expected and {r["threshold"] for r in records} == {expected}


def test_evaluate_limit_and_bad_arguments() -> None:
    tokenizer, calls = make_tokenizer(), []
    model, gen = fake_model(tokenizer), fake_generate(tokenizer, calls)
    summary = evaluate(model, tokenizer, "amc23", PROBLEMS, mode="standard", limit=2, progress=False, generate_fn=gen)
    assert summary.n == 2 and calls[0]["mode"] == "standard"
    with pytest.raises(ValueError, match="mode must be one of"):
        evaluate(model, tokenizer, "math500", PROBLEMS, mode="greedy", generate_fn=gen)
    with pytest.raises(ValueError, match="batch_size"):
        evaluate(model, tokenizer, "math500", PROBLEMS, batch_size=0, generate_fn=gen)
    with pytest.raises(ValueError, match="unknown benchmark"):
        evaluate(model, tokenizer, "gsm8k", PROBLEMS, generate_fn=gen)
    with pytest.raises(ValueError, match="no problems"):
        evaluate(model, tokenizer, "math500", [], generate_fn=gen)
    # generate would refuse the batch naming only a length; the problems are named, before any decoding.
    short = SimpleNamespace(**vars(model), backbone=SimpleNamespace(config=SimpleNamespace(max_position_embeddings=26)))
    calls.clear()
    with pytest.raises(ValueError, match=r"evaluate: 3 prompt\(s\) longer than the model's context \("
                                         r"max_position_embeddings=26\): 'p22' \(27 tokens\), 'p81' \(27 tokens\), "
                                         r"'p54' \(27 tokens\)$"):
        evaluate(short, tokenizer, "math500", PROBLEMS, progress=False, generate_fn=gen)
    assert calls == []


def hf_generate(model, input_ids, attention_mask, *, max_new_tokens, mode, threshold, eos_token_id, compile):
    """Standard-mode stand-in built on transformers' greedy generate (no padding in the result)."""
    assert mode == "standard"
    out = model.generate(input_ids=input_ids, attention_mask=attention_mask, max_new_tokens=max_new_tokens,
                         do_sample=False, eos_token_id=eos_token_id, pad_token_id=eos_token_id[0])
    sequences = []
    for row in out[:, input_ids.shape[1]:].tolist():
        end = next((i for i, token in enumerate(row) if token in eos_token_id), None)
        sequences.append(row if end is None else row[: end + 1])
    return SimpleNamespace(sequences=sequences, num_tokens=[len(s) for s in sequences],
                           num_steps=[len(s) for s in sequences], num_pair_steps=[0] * len(sequences), wall_time=0.1)


def test_left_padded_batches_match_single_prompts(tmp_path: Path) -> None:
    # A real (tiny, random) causal LM: batching with left padding must not change what it decodes.
    from transformers import AutoModelForCausalLM, Qwen2Config

    tokenizer = make_tokenizer()
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(config).eval()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
    runs = {}
    for batch_size in (1, 4):
        out = tmp_path / f"b{batch_size}.jsonl"
        evaluate(model, tokenizer, "math500", PROBLEMS, mode="standard", batch_size=batch_size, max_new_tokens=6,
                 output_jsonl=out, progress=False, generate_fn=hf_generate)
        runs[batch_size] = {r["id"]: (r["output"], r["tokens"]) for r in read_jsonl(out)}
    assert runs[1] == runs[4]
    assert compare(tmp_path / "b1.jsonl", tmp_path / "b4.jsonl")["cot_reduction"] == 0.0


# ---------------------------------------------------------------- compare

def write_run(path: Path, rows: list[tuple[str, bool, int, int]]) -> Path:
    path.write_text("".join(
        json.dumps({"id": i, "correct": c, "tokens": t, "steps": s}) + "\n" for i, c, t, s in rows
    ))
    return path


def test_compare_matches_problems(tmp_path: Path) -> None:
    a = write_run(tmp_path / "a.jsonl", [("1", True, 100, 100), ("2", False, 200, 200), ("3", True, 100, 100)])
    b = write_run(tmp_path / "b.jsonl", [("2", True, 180, 100), ("1", True, 100, 60), ("4", False, 10, 5)])
    result = compare(a, b)
    assert result["n"] == 2 and result["only_in_a"] == 1 and result["only_in_b"] == 1
    assert result["accuracy_a"] == 0.5 and result["accuracy_b"] == 1.0 and result["accuracy_diff"] == 0.5
    assert result["wins_b"] == 1 and result["wins_a"] == 0
    assert result["cot_reduction"] == pytest.approx(1 - 160 / 300)
    table = format_comparison(result)
    assert "+0.5000" in table and "46.67%" in table
    with pytest.raises(ValueError, match="share no problem ids"):
        compare(a, write_run(tmp_path / "c.jsonl", [("9", True, 1, 1)]))
    (tmp_path / "bad.jsonl").write_text(json.dumps({"id": "1"}) + "\n")
    with pytest.raises(ValueError, match="lacks correct, steps, tokens"):
        compare(a, tmp_path / "bad.jsonl")


def test_compare_runs_use_the_problems_of_every_file(tmp_path: Path) -> None:
    base = write_run(tmp_path / "base.jsonl", [("1", True, 100, 100), ("2", False, 100, 100), ("3", True, 50, 50)])
    st = write_run(tmp_path / "st.jsonl", [("1", True, 100, 60), ("2", True, 100, 60), ("3", False, 50, 30)])
    pairs = write_run(tmp_path / "pairs.jsonl", [("1", False, 90, 45), ("2", False, 100, 50)])
    summary_path(st).write_text(json.dumps({"mode": "superthoughts", "threshold": 0.99}))
    results = compare_runs(base, [st, pairs])
    # Problem 3 is missing from pairs.jsonl: every comparison leaves it out, not only that one.
    assert [r["n"] for r in results] == [2, 2]
    assert [r["dropped_a"] for r in results] == [1, 1] and [r["dropped_b"] for r in results] == [1, 0]
    assert results[0]["accuracy_a"] == 0.5 and results[0]["accuracy_b"] == 1.0 and results[1]["accuracy_b"] == 0.0
    assert results[0]["cot_reduction"] == pytest.approx(0.4) and results[1]["cot_reduction"] == pytest.approx(0.525)
    assert results[0]["label_b"] == "st [superthoughts 0.99]" and results[1]["label_b"] == "pairs"
    table = format_runs(results)
    assert "problems present in every file: 2" in table and "base: 1, st [superthoughts 0.99]: 1" in table
    lines = table.splitlines()
    assert lines[3].startswith("A: base") and "0.5000" in lines[3]
    assert lines[4].split()[-5:] == ["+0.5000", "100.0", "60.0", "40.00%", "0"]
    assert lines[5].split()[-5:] == ["-0.5000", "95.0", "47.5", "52.50%", "0"]
    with pytest.raises(ValueError, match="no problem id is present in all"):
        compare_runs(base, [st, write_run(tmp_path / "other.jsonl", [("9", True, 1, 1)])])
    with pytest.raises(ValueError, match="at least one candidate"):
        compare_runs(base, [])

    png = plot_tradeoff(results, tmp_path / "plots" / "sweep.png")
    assert png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n" and png.stat().st_size > 10_000
