"""Math answer grading: boxed-answer extraction, math-verify grading on real MATH500 / AMC23
reference answers, decimals compared as finely as written, and the time guard against pathological
LaTeX. (Multiple-choice letters and GPQA options: test_grading_choices.py.)
"""
from __future__ import annotations

import json
import threading
import time
from pathlib import Path

import pytest

pytest.importorskip("math_verify")

from superthoughts_ext import grading, grading_worker  # noqa: E402
from superthoughts_ext.eval_data import format_answer  # noqa: E402
from superthoughts_ext.evaluation import extract_answer, is_correct  # noqa: E402

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
        ("\\boxed{3} with \\fboxsep=2pt", "3"),  # a command named like the box, after it
        ("\\boxed{f(x)=\\left\\{x \\right.}", "f(x)=\\left\\{x \\right."),  # an unbalanced escaped brace
        ("\\boxed{\\}}", "\\}"),
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
        ("90°", "90^\\circ", True),  # a Unicode degree sign, as models write it too
        ("91°", "90^\\circ", False),
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
    [
        # Floats compare at the finest decimal either answer is written to (at least 6): at a
        # fixed 6 places every small decimal equalled its neighbours (MATH500 number_theory/598).
        ("0.0000673", ".0000672", False),
        ("0.000067", ".0000672", False),
        ("0.0000672", ".0000672", True),
        ("\\frac{21}{312500}", ".0000672", True),
        ("0.0000673", "\\frac{21}{312500}", False),
        ("6.73 \\times 10^{-5}", "6.72 \\times 10^{-5}", False),
        ("6.72 \\times 10^{-5}", "0.0000672", True),
        ("0.5000001", "0.5", False),
        ("0.333333", "\\frac{1}{3}", True),  # a quotient written to 6 places still counts
        ("0.33333333", "\\frac{1}{3}", True),
        ("0.33333334", "\\frac{1}{3}", False),
        ("0.30000000000000004", "0.3", True),  # float noise past 15 places is not compared
        # Below 1e-15 every number equalled every other (math-verify's chopped difference, and
        # a place cap of 15): the 15 significant digits count wherever they are.
        ("1.5 \\times 10^{-20}", "1.6 \\times 10^{-20}", False),
        ("9.9 \\times 10^{-17}", "1.0 \\times 10^{-16}", False),
        ("1.50 \\times 10^{-20}", "1.5 \\times 10^{-20}", True),
        ("0.000000000000000000016", "1.5 \\times 10^{-20}", False),
        ("0.000000000000000000015", "1.5 \\times 10^{-20}", True),
        ("15 \\times 10^{-21}", "1.5 \\times 10^{-20}", True),
    ],
)
def test_is_correct_compares_decimals_as_finely_as_written(prediction: str, reference: str, expected: bool) -> None:
    assert is_correct(prediction, reference) is expected


@pytest.mark.parametrize(
    "answer, places",
    [(".0000672", 7), ("6.72 \\times 10^{-5}", 7), ("6.72e-5", 7), ("7 \\cdot 10^{-9}", 9), ("1.5", 1),
     ("12", 0), ("\\frac{1}{3}", 0), ("2 \\times 10^{3}", 0), ("x^2 + 0.25x", 2), ("1.5 \\times 10^{-20}", 21),
     ("0.30000000000000004", 15), ("123456.123456789012", 9), ("0.000", 3)],
)
def test_written_decimals(answer: str, places: int) -> None:
    assert grading_worker.written_decimals(answer) == places


def test_is_correct_bad_input() -> None:
    with pytest.raises(TypeError, match="reference must be a str"):
        is_correct("1", 1)  # type: ignore[arg-type]
    with pytest.raises(ValueError, match="timeout must be a finite number of seconds > 0"):
        is_correct("1", "2", timeout=0)
    with pytest.raises(ValueError, match="GPQA reference must be a letter"):
        is_correct("A", "forty", "gpqa_diamond")
    with pytest.raises(ValueError, match="at most 4 options"):
        is_correct("A", "A", "gpqa_diamond", options=("1", "2", "3", "4", "5"))


@pytest.mark.parametrize("prediction", ["9^{9^{9^{9}}}", "(x+1)^{100000}", "2^{2^{2^{2^{2^{2}}}}}"])
def test_pathological_input_returns_within_the_limit(prediction: str) -> None:
    # Without the guard each of these keeps sympy busy for minutes.
    is_correct("1", "1.0")  # start the worker outside the timed region
    started = time.perf_counter()
    assert is_correct(prediction, "3", timeout=1.0) is False
    assert time.perf_counter() - started < 1.0 + grading_worker._KILL_GRACE_S + 1.0
    assert is_correct("\\frac{1}{2}", "0.5")  # the worker still answers afterwards


def test_grading_off_the_main_thread() -> None:
    # Only the runaway answer gets a short deadline: the others must not lose theirs to a busy
    # machine or to a worker restarted after the runaway one (the threads run in any order).
    results: list[bool] = []
    threads = [
        threading.Thread(target=lambda p=p, t=t: results.append(is_correct(p, "0.25", timeout=t)))
        for p, t in [("\\frac{1}{4}", 30.0), ("9^{9^{9^{9}}}", 1.0), ("0.25", 30.0)]
    ]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join(timeout=120)
    assert not any(thread.is_alive() for thread in threads)
    assert sorted(results) == [False, True, True]


def test_grading_worker_restarts_after_dying() -> None:
    is_correct("1", "1.0")
    process = grading_worker._WORKER._process
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
    verified = sum(grading_worker.math_equal(p or "", row["answer"], 5.0) for p, row in zip(predictions, rows)) / len(rows)
    # Rotating by one pairs each answer with another problem's.
    wrong = sum(is_correct(predictions[i - 1], row["answer"]) for i, row in enumerate(rows)) / len(rows)
    elapsed = time.perf_counter() - started
    print(f"math500: right {right:.3f}, math-verify only {verified:.3f}, rotated {wrong:.3f}, {elapsed:.1f} s")
    assert right >= 0.99 and verified >= 0.99
    assert wrong < 0.02
    assert elapsed < 60


@pytest.mark.skipif(not (DATA / "math500.jsonl").is_file(), reason="shared benchmark data absent")
def test_math500_or_inequality_grades_as_its_union() -> None:
    # The solution states the domain both ways: "$x<2 \text{ or } x>3$, or $x \in \boxed{...}$".
    row = next(row for row in read_jsonl(DATA / "math500.jsonl") if row["unique_id"] == "test/algebra/2043.json")
    stated = next(span for span in row["solution"].split("$") if "\\text{ or }" in span)
    assert stated == "x<2 \\text{ or } x>3"
    assert is_correct(stated, row["answer"]) and is_correct(row["answer"], stated)
    assert not is_correct(stated.replace("<", "\\le"), row["answer"])


MIDPOINT = ("Find the midpoint of the line segment between $(-5,5)$ and $(3,7)$. Express your answer as an "
            "ordered pair, $(x,y)$.")  # MATH500 test/algebra/864, answer (-1,6)
INTERVAL = ("For what real values of $x$ is $-4<x^{4}+4x^{2}<21$ satisfied? Express your answer in interval "
            "notation.")  # MATH500 test/algebra/1078, answer (-\\sqrt{3}, \\sqrt{3})


@pytest.mark.parametrize("prediction", ["-1<x<6", "x > -1 \\text{ and } x < 6"])
def test_point_question_takes_no_inequality_for_its_pair(prediction: str) -> None:
    # Math-verify reads "(-1,6)" as an interval: only the question says it is a point.
    assert is_correct(prediction, "(-1,6)")
    assert not is_correct(prediction, "(-1,6)", question=MIDPOINT)
    assert is_correct("\\left( -1, 6 \\right)", "(-1,6)", question=MIDPOINT)


def test_interval_question_still_takes_its_inequality() -> None:
    assert is_correct("-\\sqrt{3}<x<\\sqrt{3}", "(-\\sqrt{3}, \\sqrt{3})", question=INTERVAL)
    assert is_correct("x > 2", "(2, \\infty)", question="Solve $x - 2 > 0$.")


@pytest.mark.parametrize(("question", "expected"), [
    (MIDPOINT, True),
    ("Convert the point $(0,3)$ in rectangular coordinates to polar coordinates.", True),
    ("Enter the ordered triple $(p,q,r)$.", True),
    (INTERVAL, False),
    ("Find all points where $f(x) > 0$; give the interval.", False),  # an interval question names it
    ("What is the domain of $f$?", False),
    ("Find the endpoints of the segment's length.", False),  # "endpoint" is no point question
    (None, False),
])
def test_asks_for_point(question: str | None, expected: bool) -> None:
    assert grading.asks_for_point(question) is expected


@pytest.mark.skipif(not (DATA / "math500.jsonl").is_file(), reason="shared benchmark data absent")
def test_math500_point_questions_have_point_answers() -> None:
    # On the real data the question rule must not take an interval answer for a point: every
    # flagged question's answer is free of interval marks, and every reference still grades
    # correct with its question.
    rows = read_jsonl(DATA / "math500.jsonl")
    flagged = [row for row in rows if grading.asks_for_point(row["problem"])]
    interval_marks = ("\\infty", "\\cup", "[", "]", "<", "\\le ", "\\ge ")
    assert len(flagged) > 20
    assert [row["answer"] for row in flagged if any(mark in row["answer"] for mark in interval_marks)] == []
    pairs = [row for row in flagged if row["answer"].replace("\\left", "").startswith("(")]
    assert len(pairs) >= 8  # the midpoint, polar coordinates, ordered triples, ...
    for row in pairs:
        assert is_correct(extract_answer(row["solution"]), row["answer"], question=row["problem"]), row["unique_id"]


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
