"""Multiple-choice grading: the letter a model chose (`extract_choice`, `choice_letter`), option
letters as MATH500 and GPQA references, hedges between letters, and GPQA option text graded as
its letter. (Boxed math answers, math-verify and real reference answers: test_grading_math.py.)
"""
from __future__ import annotations

import pytest

pytest.importorskip("math_verify")

from superthoughts_ext import grading  # noqa: E402
from superthoughts_ext.evaluation import is_correct  # noqa: E402
from superthoughts_ext.grading import choice_letter, extract_choice  # noqa: E402


# ---------------------------------------------------------------- extraction

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
        # A boxed quantity named by a letter is no choice; the stated letter, if any, counts.
        ("\\boxed{B = 2 T}", None),
        ("\\boxed{a \\cdot b}", None),
        ("\\boxed{d \\approx 4.2}", None),
        ("\\boxed{c - v}", None),
        ("\\boxed{C 42 eV}", "C"),
        ("so \\boxed{a = 2g}, and the answer is (C).", "C"),
        ("I cannot decide.", None),
        # A hedge after "the answer is" names none, as in a box; the article "A" is no choice.
        ("The answer is (B) or (C).", None),
        ("The answer is B and C.", None),
        ("The answer is B or C, so \\boxed{B \\text{ or } C}", None),
        ("The answer is A bit larger than 3 eV", None),
        ("\\boxed{A single sharp peak}", None),
        ("The answer is A.", "A"),
        ("Answer: B", "B"),
        ("**Answer:** (c)", "C"),
        ("Final answer: D", "D"),
        ("Answer: a lot of energy", None),
        ("\\boxed{A}", "A"),
        # A letter opening a formula or a word after "the answer is" names no choice either.
        ("The answer is A = 4-methylcyclohexan-1-ol and B = 5-methylhexan-2-one.", None),
        ("Answer: B = 2 T", None),
        ("Answer: D-glucose", None),
        ("The answer is B-cell mediated.", None),
        ("the answer is C++", None),
        ("**Answer: A**", "A"),  # Markdown bold is no operator
        ("The answer is **B**.", "B"),
        # ... but a dash before a space, the next line and a LaTeX line break are no formula.
        ("The answer is B - the field doubles.", "B"),
        ("The correct answer is B -- it increases.", "B"),
        ("Answer: C\n- because the rate doubles", "C"),
        ("**Answer:** D\n\\[ E = mc^2 \\]", "D"),
        ("Answer: B\\\\", "B"),
        # "option is" names the choice only as the correct / best one.
        ("The answer is B. Another option is D, but it ignores spin.", "B"),
        ("So the answer is (A). The tempting choice is D, which is wrong.", "A"),
        ("The best choice is C.", "C"),
        # Other phrasings and wrappers.
        ("The correct option is A.", "A"),
        ("The answer is $\\text{A}$", "A"),
        ("Answer: \\textbf{C}", "C"),
        # Boxes: a word before the letter, brackets, nested or other font wrappers, LaTeX spaces.
        ("\\boxed{Option D}", "D"),
        ("\\boxed{\\text{Choice (B)}}", "B"),
        ("\\boxed{[D]}", "D"),
        ("\\boxed{[A] = 0.1\\,\\text{M}}", None),  # a concentration
        ("\\boxed{[B]_0/2}", None),
        ("\\boxed{\\textit{D}}", "D"),
        ("\\boxed{\\texttt{C}}", "C"),
        ("\\boxed{\\text{\\textbf{D}}}", "D"),
        ("\\boxed{\\text{D}\\ \\text{It increases}}", "D"),
        ("\\boxed{\\ D}", "D"),
        ("\\boxed{\\quad D}", "D"),
        ("\\boxed{Optional}", None),
    ],
)
def test_extract_choice(text: str, expected: str | None) -> None:
    assert extract_choice(text) == expected


# ---------------------------------------------------------------- grading

@pytest.mark.parametrize(
    "prediction, reference, expected",
    [("C", "C", True), ("(c)", "C", True), ("\\text{B}", "B", True), ("B", "C", False), ("42", "A", False)],
)
def test_is_correct_multiple_choice(prediction: str, reference: str, expected: bool) -> None:
    assert is_correct(prediction, reference, "gpqa_diamond") is expected
    assert choice_letter(reference) == reference


@pytest.mark.parametrize(
    "prediction, expected",
    # MATH500's option-letter answers (precalculus/819: "\\text{(C)}"): the letter decides, with
    # or without the option's text; a hedge between two letters is wrong.
    [("C", True), ("\\text{(C)}", True), ("\\text{(C) Plane}", True), ("(C)\\ \\text{Plane}", True),
     ("C.", True), ("\\text{(A) Line}", False), ("E", False), ("\\text{(C), (A)}", False), ("(C) or (E)", False),
     ("\\text{(A), (C)}", False), ("\\text{(C)}\\quad\\text{or}\\quad\\text{(D)}", False)],
)
def test_math_option_letter_answers(prediction: str, expected: bool) -> None:
    assert is_correct(prediction, "\\text{(C)}") is expected


@pytest.mark.parametrize(
    "answer",
    ["B \\text{ or } C", "A \\text{ and } C", "\\text{B or D}", "(A) or (B)", "A or B", "A, C", "A/C", "B \\lor C"],
)
def test_gpqa_hedge_between_letters_names_none(answer: str) -> None:
    assert choice_letter(answer) is None
    assert extract_choice(f"Both look right, so \\boxed{{{answer}}}.", ("1", "2", "3", "4")) is None
    assert not any(is_correct(answer, gold, "gpqa_diamond") for gold in "ABCD")


# GPQA-style options in letter order A-D, as eval_data.gpqa_options lists them; models often box
# an option's text instead of its letter.
ENERGIES = ("10^{-8} eV", "10^{-4} eV", "10^{-11} eV", "10^{-9} eV")
HALVES = ("\\frac{\\sqrt{3}}{2}", "\\frac{1}{2}", "\\sqrt{2}", "1")
WORDS = ("An increase in entropy", "No change", "A decrease in entropy", "It oscillates")
ELEMENTS = ("C", "N", "O", "B")  # options that read like letters
PROSE_NUMBERS = ("2 and 3", "Only 2", "1 and 4", "3")


@pytest.mark.parametrize(
    "prediction, options, reference, expected",
    [
        ("10^{-4} eV", ENERGIES, "B", True),
        ("10^{-4}\\,\\text{eV}", ENERGIES, "B", True),
        ("$10^{-4}$ eV", ENERGIES, "B", True),
        ("0.0001 eV", ENERGIES, "B", True),  # the same quantity, written otherwise (math-verify)
        ("10^{-4}", ENERGIES, "B", True),  # the unit left out: the value alone picks one option
        ("10^{-4} J", ENERGIES, "B", False),  # another unit
        ("10^{-5} eV", ENERGIES, "B", False),  # no option
        ("10^{-8} eV", ENERGIES, "B", False),  # another option
        ("B) 10^{-4} eV", ENERGIES, "B", True),
        ("(b)", ENERGIES, "B", True),
        ("\\sqrt{3}/2", HALVES, "A", True),
        ("0.5", HALVES, "B", True),
        ("\\dfrac{1}{2}", HALVES, "B", True),
        ("\\sqrt{2}/2", HALVES, "B", False),  # equals none of the options
        ("a decrease in entropy.", WORDS, "C", True),  # not the letter A of its first word
        ("\\text{No change}", WORDS, "B", True),
        ("A", WORDS, "A", True),
        ("entropy decreases", WORDS, "C", False),  # a paraphrase matches no option
        ("C", ELEMENTS, "A", False),  # a letter answer names that letter, even when an option reads so
        ("C", ELEMENTS, "C", True),
        ("N", ELEMENTS, "B", True),
        ("3", PROSE_NUMBERS, "D", True),
        ("2", PROSE_NUMBERS, "B", False),  # no number is read out of prose options
        ("2", PROSE_NUMBERS, "A", False),
    ],
)
def test_gpqa_option_text_grades_as_its_letter(
    prediction: str, options: tuple[str, ...], reference: str, expected: bool
) -> None:
    assert is_correct(prediction, reference, "gpqa_diamond", options=options) is expected


def test_gpqa_small_quantities_pick_their_own_option() -> None:
    # At 1e-26 every quantity equalled every other: a wrong value picked the right option, and
    # the right one matched two options and so named none.
    joules = ("3.0 J", "4.6 \\times 10^{-26} J", "1.2 \\times 10^{-3} J", "7 J")
    assert grading.option_letter("9.9 \\times 10^{-26}\\,\\text{J}", joules) is None
    close = ("2.3 \\times 10^{-26} J", "4.6 \\times 10^{-26} J", "1 J", "2 J")
    assert grading.option_letter("4.60 \\times 10^{-26}\\,\\text{J}", close) == "B"


@pytest.mark.parametrize(
    "prediction, options",
    [
        ("10 eV", ("10 eV", "10\\,\\text{eV}", "5 eV", "1 eV")),  # two options equal after normalisation
        ("1/2", ("0.5", "\\frac{1}{2}", "2", "3")),  # two options equal to the answer (math-verify)
        ("10^{-4}", ("10^{-4} eV", "10^{-4} J", "1 eV", "1 J")),  # the value fits two units
    ],
)
def test_gpqa_option_text_matching_two_options_names_none(prediction: str, options: tuple[str, ...]) -> None:
    assert grading.option_letter(prediction, options) is None
    assert not any(is_correct(prediction, letter, "gpqa_diamond", options=options) for letter in "ABCD")


def test_gpqa_runaway_answer_skips_the_value_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    # A degenerate box must not cost seconds per row: only short answers go to math-verify.
    def no_comparison(*args: object) -> bool:
        raise AssertionError("a long answer reached the value comparison")

    monkeypatch.setattr(grading, "_same_quantity", no_comparison)
    assert grading.option_letter("a/" * 5000 + "!", ENERGIES) is None
    assert grading.option_letter("1 " * 10000, ENERGIES) is None
    monkeypatch.undo()
    assert grading.option_letter("0.0001 eV", ENERGIES) == "B"  # a short one still does


def test_extract_choice_maps_a_boxed_option_text() -> None:
    assert extract_choice("so the gap is \\boxed{10^{-4}\\text{ eV}}.", ENERGIES) == "B"
    assert extract_choice("so the gap is \\boxed{10^{-4}\\text{ eV}}.") is None  # without the options
    assert extract_choice("\\boxed{10^{-7} eV}, so the answer is (B).", ENERGIES) == "B"
