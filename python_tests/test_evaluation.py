"""Evaluation tests: answer extraction, math-verify grading (real MATH500 / AMC23 answers),
the time guard, benchmark loading, evaluate() with an injected generate, compare() and the CLI.

CPU only, no model weights: evaluate() runs on a word-level ChatML tokenizer and a fake
generate that answers "what is a + b" problems.
"""
from __future__ import annotations

import argparse
import json
import threading
import time
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("math_verify")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from superthoughts_ext import grading  # noqa: E402
from superthoughts_ext.eval_data import (  # noqa: E402
    SYSTEM_PROMPT,
    Problem,
    build_prompt,
    format_answer,
    get_bench,
    gpqa_question,
    load_problems,
)
from superthoughts_ext.evaluation import (  # noqa: E402
    add_arguments,
    compare,
    evaluate,
    extract_answer,
    format_comparison,
    is_correct,
    run,
    summary_path,
)
from superthoughts_ext.grading import choice_letter, extract_choice  # noqa: E402

DATA = Path(__file__).resolve().parents[2] / "shared" / "data"


def read_jsonl(path: Path) -> list[dict]:
    with path.open(encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


# ---------------------------------------------------------------- extraction

@pytest.mark.parametrize(
    "text, expected",
    [
        ("so \\boxed{42}.", "42"),
        ("first \\boxed{1}, finally \\boxed{\\frac{1}{2}}", "\\frac{1}{2}"),
        ("\\boxed{\\frac{\\sqrt{3}}{2}}", "\\frac{\\sqrt{3}}{2}"),
        ("\\boxed{\\{1, 2\\}}", "\\{1, 2\\}"),  # escaped braces do not close the box
        ("\\boxed{\\left( 3, \\frac{\\pi}{2} \\right)}", "\\left( 3, \\frac{\\pi}{2} \\right)"),
        ("\\boxed {7}", "7"),
        ("$\\boxed 5$ apples", "5"),
        ("\\fbox{12}", "12"),
        ("\\boxed{a \\boxed{b}} end", "a \\boxed{b}"),  # a nested box belongs to its outer box
        ("row \\\\{x} then \\boxed{y}", "y"),  # \\ is a line break, its { opens a group
        ("\\fboxsep=2pt \\boxed{3}", "3"),
        ("no box at all", None),
        ("", None),
        ("\\boxed{}", None),
        ("\\boxed{\\frac{1}{2}", None),  # unbalanced: generation cut off
        ("\\boxed{1} and then \\boxed{2", None),  # the last box is unbalanced
        ("ends with \\boxed", None),
    ],
)
def test_extract_answer(text: str, expected: str | None) -> None:
    assert extract_answer(text) == expected


def test_extract_answer_rejects_non_text() -> None:
    with pytest.raises(TypeError, match="extract_answer expects a str"):
        extract_answer(None)  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "text, expected",
    [
        ("\\boxed{C}", "C"),
        ("\\boxed{(b)}", "B"),
        ("\\boxed{\\text{D}}", "D"),
        ("\\boxed{A) 42 meters}", "A"),
        ("no box, so the answer is (C).", "C"),
        ("The answer is: D", "D"),
        ("the answer is a number, 7", None),
        ("\\boxed{E}", None),
        ("I cannot decide.", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text) == expected


# ---------------------------------------------------------------- grading

@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("0.5", "\\frac{1}{2}", True),
        ("\\dfrac{3}{4}", "0.75", True),
        ("\\frac{1}{3}", "0.5", False),
        ("27", "27.0", True),
        ("28", "27.0", False),
        ("(1,2]", "(1, 2]", True),
        ("[1,2)", "(1,2)", False),  # interval ends matter
        ("(3, \\frac{\\pi}{2})", "\\left( 3, \\frac{\\pi}{2} \\right)", True),
        ("(2, 3)", "(3, 2)", False),  # ordered tuples
        ("\\{1, 2\\}", "\\{2, 1\\}", True),  # sets are not
        ("10\\text{ cm}", "10", True),
        ("50\\%", "50", True),
        ("x = 3", "3", True),
        ("\\text{Evelyn}", "\\text{Evelyn}", True),
        ("2\\sqrt{2}", "\\sqrt{8}", True),
        ("\\sqrt{2}", "\\sqrt{3}", False),
        ("", "3", False),
        (None, "3", False),
    ],
)
def test_is_correct_math(prediction: str | None, reference: str, expected: bool) -> None:
    assert is_correct(prediction, reference) is expected


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [("C", "C", True), ("(c)", "C", True), ("\\text{B}", "B", True), ("B", "C", False), ("42", "A", False)],
)
def test_is_correct_multiple_choice(prediction: str, reference: str, expected: bool) -> None:
    assert is_correct(prediction, reference, "gpqa_diamond") is expected
    assert choice_letter(reference) == reference


def test_is_correct_bad_input() -> None:
    with pytest.raises(TypeError, match="reference must be a str"):
        is_correct("1", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be positive"):
        is_correct("1", "2", timeout=0)
    with pytest.raises(ValueError, match="GPQA reference must be a letter"):
        is_correct("A", "forty", "gpqa_diamond")


@pytest.mark.parametrize("prediction", ["9^{9^{9^{9}}}", "(x+1)^{100000}", "2^{2^{2^{2^{2^{2}}}}}"])
def test_pathological_input_returns_within_the_limit(prediction: str) -> None:
    # Without the guard each of these keeps sympy busy for minutes.
    is_correct("1", "1.0")  # start the worker outside the timed region
    started = time.perf_counter()
    assert is_correct(prediction, "3", timeout=1.0) is False
    assert time.perf_counter() - started < 1.0 + grading._KILL_GRACE_S + 1.0
    assert is_correct("\\frac{1}{2}", "0.5")  # the worker still answers afterwards


def test_grading_off_the_main_thread() -> None:
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda p=p: results.append(is_correct(p, "0.25", timeout=1.0)))
        for p in ["\\frac{1}{4}", "9^{9^{9^{9}}}", "0.25"]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=30)
    assert sorted(results) == [False, True, True]


def test_grading_worker_restarts_after_dying() -> None:
    is_correct("1", "1.0")
    process = grading._WORKER._process
    assert process is not None
    process.kill()
    process.wait()
    assert is_correct("\\frac{2}{4}", "0.5")


# ---------------------------------------------------------------- real reference answers

@pytest.mark.skipif(not (DATA / "math500.jsonl").is_file(), reason="shared benchmark data absent")
def test_math500_reference_answers_grade_correct() -> None:
    rows = read_jsonl(DATA / "math500.jsonl")
    predictions = [extract_answer(row["solution"]) for row in rows]
    started = time.perf_counter()
    right = sum(is_correct(p, row["answer"]) for p, row in zip(predictions, rows)) / len(rows)
    # The same pairs through math-verify alone, without the exact-string fast path.
    verified = sum(grading._WORKER.grade(p or "", row["answer"], 5.0) for p, row in zip(predictions, rows)) / len(rows)
    # Rotating by one pairs each answer with another problem's.
    wrong = sum(is_correct(predictions[i - 1], row["answer"]) for i, row in enumerate(rows)) / len(rows)
    elapsed = time.perf_counter() - started
    print(f"math500: right {right:.3f}, math-verify only {verified:.3f}, rotated {wrong:.3f}, {elapsed:.1f} s")
    assert right >= 0.99 and verified >= 0.99
    assert wrong < 0.02
    assert elapsed < 60


@pytest.mark.skipif(not (DATA / "amc23.jsonl").is_file(), reason="shared benchmark data absent")
def test_amc23_boxed_integers_grade_correct() -> None:
    rows = read_jsonl(DATA / "amc23.jsonl")
    values = [row["answer"] for row in rows]
    predictions = [extract_answer(f"So the answer is $\\boxed{{{int(v)}}}$.") for v in values]
    right = sum(is_correct(p, str(v)) for p, v in zip(predictions, values)) / len(rows)
    right_formatted = sum(is_correct(p, format_answer(v)) for p, v in zip(predictions, values)) / len(rows)
    # Rotating by one: 3 of the 40 neighbours share an answer (9/9, 7/7, 7/7) and must match.
    rotated = sum(is_correct(predictions[i - 1], str(v)) for i, v in enumerate(values)) / len(rows)
    same = sum(values[i - 1] == v for i, v in enumerate(values)) / len(rows)
    # Every other pairing with a different answer must grade wrong.
    mismatched = [(predictions[i - shift], str(v)) for shift in range(1, len(rows), 7)
                  for i, v in enumerate(values) if values[i - shift] != v]
    false_positive = sum(is_correct(p, ref) for p, ref in mismatched) / len(mismatched)
    print(f"amc23: right {right:.3f} (formatted {right_formatted:.3f}), rotated {rotated:.3f} "
          f"(equal answers {same:.3f}), false positives {false_positive:.3f} of {len(mismatched)}")
    assert right == 1.0 and right_formatted == 1.0
    assert rotated == pytest.approx(same)
    assert false_positive < 0.02


@pytest.mark.skipif(not (DATA / "amc23.jsonl").is_file(), reason="shared benchmark data absent")
def test_load_amc23_from_file() -> None:
    problems = load_problems("amc23", DATA / "amc23.jsonl", limit=5)
    assert len(problems) == 5 and problems[0].id == "0" and problems[0].answer == "27"


# ---------------------------------------------------------------- benchmark loading

def test_unknown_bench_lists_the_known_ones() -> None:
    with pytest.raises(ValueError, match="amc23, gpqa_diamond, math500, olympiadbench"):
        get_bench("gsm8k")


def test_missing_data_file_names_the_path(tmp_path: Path) -> None:
    missing = tmp_path / "nope.jsonl"
    with pytest.raises(FileNotFoundError, match="nope.jsonl"):
        load_problems("math500", missing)


def test_offline_hub_says_to_pass_data(monkeypatch: pytest.MonkeyPatch) -> None:
    datasets = pytest.importorskip("datasets")

    def offline(*args: object, **kwargs: object) -> None:
        raise ConnectionError("no network")

    monkeypatch.setattr(datasets, "load_dataset", offline)
    with pytest.raises(RuntimeError, match="pass --data FILE"):
        load_problems("math500")


def test_rows_without_answer_are_skipped_with_a_count(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    rows = [{"problem": "p1", "answer": "1"}, {"problem": "p2", "answer": ""}, {"problem": "p3", "answer": None}]
    path.write_text("\n".join(json.dumps(r) for r in rows) + "\n")
    with pytest.warns(UserWarning, match="skipped 2 row"):
        problems = load_problems("math500", path)
    assert problems == [Problem("0", "p1", "1")]


def test_missing_column_and_field_override(tmp_path: Path) -> None:
    path = tmp_path / "m.jsonl"
    path.write_text(json.dumps({"q": "what", "sol": "$4$"}) + "\n")
    with pytest.raises(ValueError, match="columns: q, sol"):
        load_problems("math500", path)
    assert load_problems("math500", path, problem_field="q", answer_field="sol") == [Problem("0", "what", "4")]


def test_gpqa_csv_choices_are_shuffled_deterministically(tmp_path: Path) -> None:
    path = tmp_path / "gpqa.csv"
    header = "Record ID,Question,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,Incorrect Answer 3\n"
    lines = [f"rec{i},Question number {i}?,right{i},wrong{i}a,wrong{i}b,wrong{i}c\n" for i in range(12)]
    path.write_text(header + "".join(lines))
    problems = load_problems("gpqa_diamond", path)
    assert [p.id for p in problems] == [f"rec{i}" for i in range(12)]
    for i, problem in enumerate(problems):
        assert f"{problem.answer}) right{i}\n" in problem.question
        assert "\\boxed{" in problem.question
    assert len({p.answer for p in problems}) > 1  # the correct letter moves around
    again = gpqa_question("Question number 3?", "right3", ["wrong3a", "wrong3b", "wrong3c"])
    assert again == (problems[3].question, problems[3].answer)
    with pytest.raises(ValueError, match="three incorrect"):
        gpqa_question("q", "a", ["b"])


# ---------------------------------------------------------------- evaluate / compare / CLI

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

    def generate(model, input_ids, attention_mask, *, max_new_tokens, mode, threshold, eos_token_id):
        # Left padding: every row's real tokens end at the last column.
        assert bool(attention_mask[:, -1].all())
        assert bool((input_ids[attention_mask == 0] == pad).all())
        calls.append({"batch": input_ids.shape[0], "mode": mode, "threshold": threshold, "eos": eos_token_id})
        sequences = []
        for ids, mask in zip(input_ids.tolist(), attention_mask.tolist()):
            words = tokenizer.decode([t for t, m in zip(ids, mask) if m]).split()
            a, b = (int(w) for w in words[words.index("+") - 1 :: 2][:2])
            total = a + b if a != 9 else a + b + 1  # "9 + b" problems get a wrong answer
            answer = ["so", "the", "answer", "is", f"\\boxed{{{total}}}"] if a != 8 else ["so"]
            # Text after the turn end must not be graded.
            sequences.append(tokenizer.convert_tokens_to_ids(answer) + [eos] + tokenizer.convert_tokens_to_ids(["\\boxed{0}"]))
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
    assert prompt == f"<|im_start|>system\n{SYSTEM_PROMPT}<|im_end|>\n<|im_start|>user\nwhat is 1 + 2<|im_end|>\n<|im_start|>assistant\n"


def test_evaluate_writes_records_and_summary(tmp_path: Path) -> None:
    tokenizer, calls = make_tokenizer(), []
    out = tmp_path / "runs" / "st.jsonl"
    summary = evaluate(
        fake_model(tokenizer), tokenizer, "math500", PROBLEMS, mode="superthoughts", threshold=0.9,
        batch_size=3, output_jsonl=out, progress=False, generate_fn=fake_generate(tokenizer, calls),
        metadata={"model": "fake"},
    )
    assert [c["batch"] for c in calls] == [3, 3, 1]
    assert all(c["mode"] == "superthoughts" and c["threshold"] == 0.9 and c["eos"] == 2 for c in calls)
    records = sorted(read_jsonl(out), key=lambda r: r["index"])
    assert [r["id"] for r in records] == [p.id for p in PROBLEMS]
    assert [r["correct"] for r in records] == [True, True, False, True, False, True, True]
    assert records[4]["extracted"] is None and records[2]["extracted"] == "11"
    assert records[0]["output"] == "so the answer is \\boxed{3}" and records[0]["prompt"].endswith("assistant\n")
    assert records[0]["tokens"] == 6 + 1 and records[0]["steps"] == 4 and records[0]["time"] == pytest.approx(0.5 / 3)
    assert summary.n == 7 and summary.n_correct == 5 and summary.accuracy == pytest.approx(5 / 7)
    assert summary.n_no_box == 1
    tokens = [r["tokens"] for r in records]
    steps = [r["steps"] for r in records]
    assert summary.mean_tokens == pytest.approx(sum(tokens) / 7)
    assert summary.cot_reduction == pytest.approx(1 - sum(steps) / sum(tokens))
    assert summary.generation_time == pytest.approx(1.5)
    assert summary.tokens_per_s == pytest.approx(sum(tokens) / 1.5)
    saved = json.loads(summary_path(out).read_text())
    assert saved["accuracy"] == summary.accuracy and saved["model"] == "fake"
    assert summary_path(out).name == "st.summary.json"


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


def parse_cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="superthoughts eval")
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path / "a.jsonl", [("1", True, 100, 100), ("2", False, 100, 100)])
    b = write_run(tmp_path / "b.jsonl", [("1", True, 100, 50), ("2", True, 100, 50)])
    assert run(parse_cli(["--compare", str(a), str(b)])) == 0
    out = capsys.readouterr().out
    assert "matched problems: 2" in out and "50.00%" in out


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse_cli(["--bench", "math500"])) == 2
    assert "--model and --bench are required" in capsys.readouterr().err
    missing = tmp_path / "missing.jsonl"
    assert run(parse_cli(["--model", str(tmp_path), "--bench", "math500", "--data", str(missing)])) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert run(parse_cli(["--compare", str(missing), str(missing)])) == 2
    with pytest.raises(SystemExit):
        parse_cli(["--bench", "gsm8k"])
