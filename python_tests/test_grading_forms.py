"""Grading of answers written otherwise than their reference: numerals in a base, GPQA options in
plain-text exponents, OlympiadBench's named values, AMC option labels, vectors as tuples, and a
full stop after a number. Each case is a form found in real benchmark files or model outputs.
"""
from __future__ import annotations

import pytest

pytest.importorskip("math_verify")

from superthoughts_ext import grading  # noqa: E402
from superthoughts_ext.evaluation import is_correct  # noqa: E402


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("52_8", "52_8", True),
        ("52_{8}", "52_8", True),
        ("4210_5", "4210_{5}", True),
        ("52", "52_8", True),  # the question names the base; the digits are compared
        ("52_{9}", "52_8", False),  # math-verify drops the subscript: 52 in base 9 "equalled" 52_8
        ("52_{10}", "52_8", False),
        ("42", "52_8", False),
        ("52_{10}", "52", True),
        ("a_1 + 2", "a_1+2", True),  # a variable's index is no base
        ("\\log_2 8", "3", True),
    ],
)
def test_numerals_in_another_base_are_wrong(prediction: str, reference: str, expected: bool) -> None:
    assert is_correct(prediction, reference) is expected


def test_gpqa_plain_text_exponents_read_as_powers() -> None:
    # GPQA's CSV writes "10^-4 eV", which math-verify reads as 10: no LaTeX answer named B.
    plain = ("10^-8 eV", "10^-4 eV", "10^-9 eV", "10^-11 eV")
    for answer in ("10^{-4} \\text{ eV}", "10^{-4}\\,\\text{eV}", "0.0001 eV", "10^{-4} eV", "10^-4 eV"):
        assert grading.option_letter(answer, plain) == "B", answer
    assert grading.option_letter("10^{-5} eV", plain) is None


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        # OlympiadBench names its values; math-verify drops only a plain variable's name.
        ("n^2-n-1", "m_{\\max }=n^{2}-n-1", True),
        ("m = n^2-n-1", "m_{\\max }=n^{2}-n-1", True),
        ("n^2-n", "m_{\\max }=n^{2}-n-1", False),
        ("90^\\circ, 90^\\circ", "$\\angle B E A_{1}=90$,$\\angle A E B_{1}=90$", True),
        ("90, 45", "$\\angle A=90$,$\\angle B=45$", True),
        ("\\angle A = 45, \\angle B = 90", "$\\angle A=90$,$\\angle B=45$", False),
        # Bare values stand in the reference's order (math-verify compared them as a set).
        ("45, 90", "$\\angle A=90$,$\\angle B=45$", False),
        ("2, 1", "x=1, y=2", False),
        ("(2, 1)", "x=1, y=2", False),
        ("(1, 2)", "x=1, y=2", True),
        ("y=2, x=1", "x=1, y=2", True),  # named values in another order are the same answer
        ("y=1, x=2", "x=1, y=2", False),  # ... but each name keeps its value
        ("\\angle B=90, \\angle A=45", "$\\angle A=90$,$\\angle B=45$", False),
        ("p=90, q=45", "$\\angle A=90$,$\\angle B=45$", True),  # other names: the values in order
        ("a = 2 \\text{ and } b = 3", "a=2, b=3", True),  # equations, no list: math-verify reads them
        ("a = 3 \\text{ and } b = 2", "a=2, b=3", False),
        # The values of one name are its solutions: a set.
        ("3, -3", "x=-3, x=3", True),
        ("\\pm 3", "x=3, x=-3", True),
        ("3, 4", "x=-3, x=3", False),
        ("n", "f(n)=n", True),
        ("0", "2x - y + 3z + 8 = 0", False),  # an equation names nothing
    ],
)
def test_named_values_equal_their_values(prediction: str, reference: str, expected: bool) -> None:
    assert is_correct(prediction, reference, "olympiadbench") is expected


@pytest.mark.parametrize(
    "prediction, expected",
    [("\\textbf{(B) } 27", True), ("(B) 27", True), ("\\textbf{(B) } 28", False), ("\\textbf{(B)}", False),
     ("(B) \\frac{54}{2}", True), ("\\textbf{(B)}~27", True), ("\\textbf{B.} 27", True), ("\\textbf{B.} 28", False)],
)
def test_an_amc_option_label_before_the_value_is_dropped(prediction: str, expected: bool) -> None:
    # Models trained on contest solutions box "\\textbf{(B) } 27"; amc23 keeps the value alone.
    assert is_correct(prediction, "27", "amc23") is expected


COLUMN = "\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}"  # MATH500 writes vectors as columns
COLUMN3 = "\\begin{pmatrix} -2 \\\\ -14 \\\\ -7 \\end{pmatrix}"
SQUARE = "\\begin{pmatrix} -1 & 0 \\\\ 0 & -1 \\end{pmatrix}"


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("(\\frac15, -\\frac{18}{5})", COLUMN, True),  # math-verify compares a tuple with no matrix
        ("(1/5, 18/5)", COLUMN, False),
        ("(-2, -14, -7)", COLUMN3, True),
        ("(-2, -7, -14)", COLUMN3, False),
        (COLUMN3, "(-2, -14, -7)", True),
        (COLUMN, COLUMN, True),
        ("(-1, 0, 0, -1)", SQUARE, False),  # only a column is a vector
    ],
)
def test_a_vector_as_a_tuple_equals_its_column(prediction: str, reference: str, expected: bool) -> None:
    assert is_correct(prediction, reference) is expected


@pytest.mark.parametrize("reference", ["27", "27.0"])
def test_a_full_stop_after_the_number_is_punctuation(reference: str) -> None:
    # An export storing AMC's float answer as the text "27.0" graded "\\boxed{27.}" wrong.
    assert is_correct("27.", reference, "amc23")
    assert not is_correct("28.", reference, "amc23")


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        # math-verify read "6.02e23" as 6.02 * e * 23, and a float mantissa times 10^23 missed the
        # integer by its binary rounding: written out as exact decimals.
        ("1.2e3", "1200", True),
        ("6.02e23", "6.02 \\times 10^{23}", True),
        ("1.5e-4", "1.5 \\times 10^{-4}", True),
        ("1.5e-04", "1.5 \\times 10^{-4}", True),
        ("1e-5", "0.00001", True),
        ("1e6", "1,000,000", True),
        ("602000000000000000000000", "6.02 \\times 10^{23}", True),
        ("60.2 \\times 10^{22}", "6.02 \\times 10^{23}", True),
        ("6.03 \\times 10^{23}", "6.02 \\times 10^{23}", False),
        ("1.6e-4", "1.5 \\times 10^{-4}", False),
        # A plain-text power (math-verify read "10^-4" as 10) and a times sign "x".
        ("1.5 \\times 10^-4", "1.5 \\times 10^{-4}", True),
        ("1.5 \\cdot 10^-4", "0.00015", True),
        # Wherever the number stands: beside a unit or a name, on either side.
        ("6.02 \\times 10^{23} \\text{ mol}^{-1}", "6.02 \\times 10^{23}", True),
        ("N_A = 6.02 \\times 10^{23}", "6.02 \\times 10^{23}", True),
        ("5.97 \\times 10^{24}", "5.97 \\times 10^{24} \\text{ kg}", True),
        ("\\frac{1}{2} \\times 10^3", "500", True),
        # The sign before it stays a sum's ("f(x)+2000" became "f(x)2000"); a digit after a
        # braced power is no part of it.
        ("f(x)+2\\times10^{3}", "f(x)+2000", True),
        ("n!+3\\times10^2", "n!+300", True),
        ("-2.5 \\times 10^{-3}", "-0.0025", True),
        ("3 \\times 10^{2}0", "300", False),
        # In a math answer an x is a variable, not a times sign.
        ("2x10^n", "2x \\cdot 10^{n}", True),
        ("3 \\times 10^{2}", "3x10^2", False),
        ("2^10", "1024", True),
        # Euler's e: a reference holding it keeps "2e-1" as 2e - 1, and references are LaTeX.
        ("2e-1", "2e - 1", True),
        ("0.2", "2e - 1", False),
        ("0.2", "2e-1", False),
        # An ellipsis without a space was dropped: the open list equalled the finite set.
        ("1,3,5,\\ldots", "1,3,5", False),
        ("150,\\ldots", "150", False),
        ("1,3,5,\\ldots", "1, 3, 5, \\ldots", True),
    ],
)
def test_scientific_notation_powers_and_ellipses(prediction: str, reference: str, expected: bool) -> None:
    assert is_correct(prediction, reference, "olympiadbench") is expected


@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        # math-verify read "1.\\overline{3}" as 1 and an unknown: graded wrong for 4/3.
        ("1.\\overline{3}", "\\frac43", True),
        ("0.\\overline{3}", "\\frac{1}{3}", True),
        ("-0.1\\overline{6}", "-\\frac{1}{6}", True),
        ("0.\\overline{142857}", "\\frac17", True),
        ("0.\\bar{27}", "\\frac{3}{11}", True),
        ("0.\\overline3", "\\frac{1}{3}", True),
        ("x = 0.\\overline{27}", "\\frac{3}{11}", True),
        ("\\frac{5}{33}", "0.1\\overline{51}", True),
        ("0.\\overline{3}", "\\frac{1}{4}", False),
        ("0.3", "\\frac{1}{3}", False),
        ("0.\\overline{33}4", "\\frac{1}{3}", False),
        # A bar over letters is a segment, left alone; a repeating decimal in another base or
        # one too long to read stays as written.
        ("\\overline{AB}", "AB", False),
        ("\\frac{1}{3}", "0.\\overline{3}_{7}", False),
        ("0.\\overline{" + "3" * 5000 + "}", "\\frac{1}{3}", False),
    ],
)
def test_repeating_decimals_equal_their_fractions(prediction: str, reference: str, expected: bool) -> None:
    assert is_correct(f"\\boxed{{{prediction}}}", reference, "math500") is expected


@pytest.mark.parametrize(
    "output, expected",
    [
        ("So the answer: b", "B"),  # a lowercase letter ending the output after "answer:"
        ("Answer: **c**", "C"),
        ("Answer:\nb", "B"),
        ("The answer is b.", "B"),  # ... or its sentence and line
        ("The answer is a function of the field.", None),  # the article, not a choice
        ("The answer is a\nfunction of the temperature.", None),
        ("So the answer is a", None),  # cut off by the token budget
        ("answer: b\nbecause the field doubles", None),
        # No phrase naming the choice: an output ending in a list of options, or cut off.
        ("The choices:\nA) 10 eV\nB) 20 eV\nC) 30 eV\nD)", None),
        ("We compute the energy.\n\nA", None),
        ("A single sharp peak appears.", None),
        ("\\boxed{10^{-4}\\ \\mathrm{eV}}", "B"),  # a LaTeX space before the unit stayed in the value
        ("\\boxed{10^{-4}~\\text{eV}}", "B"),
        ("\\boxed{1e-4 eV}", "B"),  # e-notation
    ],
)
def test_gpqa_letters_and_values_written_otherwise(output: str, expected: str | None) -> None:
    assert grading.extract_choice(output, ("10^-3 eV", "10^-4 eV", "10^-5 eV", "10^-6 eV")) == expected


def test_gpqa_options_with_x_as_the_times_sign() -> None:
    options = ("1 x 10^3 s^-1", "1.1 x 10^3 s^-1", "1.3 x 10^3 s^-1", "1.2 x 10^3 s^-1")
    for answer in ("1.2 \\times 10^{3}\\ \\text{s}^{-1}", "1.2 \\times 10^{3}", "1200"):
        assert grading.option_letter(answer, options) == "D", answer
    assert grading.option_letter("1.25 \\times 10^{3}", options) is None


def test_gpqa_options_in_e_notation() -> None:
    options = ("1.5e-4 eV", "3.0e-4 eV", "6.0e-4 eV", "1.2e-3 eV")
    for answer, letter in (("1.5 \\times 10^{-4} eV", "A"), ("0.00015 eV", "A"), ("3 \\times 10^{-4}\\ \\text{eV}", "B"),
                           ("1.2 x 10^-3 eV", "D")):
        assert grading.option_letter(answer, options) == letter, answer


def test_gpqa_value_comparisons_share_one_deadline(monkeypatch) -> None:
    # An answer that keeps math-verify busy took the timeout once per option (20 s for four).
    import time

    calls = []

    def busy(value, option_value, timeout_s):
        calls.append(timeout_s)
        time.sleep(timeout_s)
        return False

    monkeypatch.setattr(grading, "math_equal", busy)
    started = time.perf_counter()
    assert grading.option_letter("9^{9^{9^{9}}}", ("1", "2", "3", "4"), timeout=0.3) is None
    assert time.perf_counter() - started < 0.6 and len(calls) == 1, calls
