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
