"""Grading of answers that are sets: inequalities against the intervals they describe, and
inequalities joined by "or" against unions and by "and" against intervals
(`grading_sets.inequalities_as_sets`), both ways round
(MATH500's own or-joined answer is in test_grading_math.py with the other real answers).
"""
from __future__ import annotations

import pytest

pytest.importorskip("math_verify")

from superthoughts_ext.evaluation import is_correct  # noqa: E402
from superthoughts_ext.grading_sets import inequalities_as_sets  # noqa: E402


# Interval answers (MATH500 writes "(5,\\infty)", "x \\in [-2,7]") against the inequalities models
# write for them, both ways round; a bound's openness or side must still count.
@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("x > 5", "(5,\\infty)", True),
        ("(5,\\infty)", "x > 5", True),
        ("x \\ge 5", "(5,\\infty)", False),
        ("x < 5", "(5,\\infty)", False),
        ("x > 2", "[2, \\infty)", False),
        ("x > 2", "(-\\infty, 2)", False),
        ("x \\geq 2", "[2, \\infty)", True),
        ("2 < x", "(2, \\infty)", True),
        ("x \\in (2, \\infty)", "(2, \\infty)", True),
        ("y \\le 0", "(-\\infty, 0]", True),
        ("y < 0", "(-\\infty, 0]", False),
        ("-2 \\le x \\le 7", "x \\in [-2,7]", True),
        ("-2 < x \\le 7", "x \\in [-2,7]", False),
        ("[-2,7]", "x \\in [-2,7]", True),
        ("x \\in [-2,7]", "[-2,7]", True),
        ("-1 \\leq x \\leq 3", "[-1, 3]", True),
        ("[-1, 3]", "-1 \\le x \\le 3", True),
        ("\\frac{3}{5} < p \\le \\frac{8}{3}", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", True),
        ("\\frac{3}{5} \\le p \\le \\frac{8}{3}", "\\left(\\frac{3}{5},\\frac{8}{3}\\right]", False),
        ("-\\sqrt{3} < x < \\sqrt{3}", "(-\\sqrt{3}, \\sqrt{3})", True),
        ("x^2 > 4", "(-\\infty,-2) \\cup (2,\\infty)", True),
        ("x + y > 2", "(2, \\infty)", False),  # two unknowns: no interval of one
        ("x > 5", "5", False),
        ("x < 2 \\text{ or } x > 3", "(-\\infty, 2) \\cup (3, \\infty)", True),  # more below
    ],
)
def test_inequalities_and_intervals(prediction: str, reference: str, expected: bool) -> None:
    assert is_correct(prediction, reference) is expected


UNION = "(-\\infty, 2) \\cup (3, \\infty)"  # MATH500's answer to test/algebra/2043


# Inequalities joined by "or" (however written) against the union they describe, both ways round;
# an end's openness, its side, and the connective still count.
@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("x < 2 \\text{ or } x > 3", UNION, True),
        ("x<2 or x>3", UNION, True),
        ("x < 2 \\lor x > 3", UNION, True),
        ("x<2 \\vee x>3", UNION, True),
        ("x < 2 \\quad \\text{or} \\quad x > 3", UNION, True),
        (UNION, "x < 2 \\text{ or } x > 3", True),
        ("x > 3 \\text{ or } x < 2", UNION, True),
        ("2 > x \\text{ or } 3 < x", UNION, True),
        ("x \\le -1 \\text{ or } x \\ge 4", "(-\\infty, -1] \\cup [4, \\infty)", True),
        ("x \\leq -1 \\text{ or } x > 4", "(-\\infty, -1] \\cup [4, \\infty)", False),
        ("0 < x < 9 \\text{ or } 9 < x < 36", "(0,9) \\cup (9,36)", True),
        ("2 < x < 12 \\text{ or } 12 < x < 102", "(2,12) \\cup (12,102)", True),
        ("0 < x < 9 \\text{ or } 9 < x < 36", "(0,36)", False),  # 9 is left out
        ("x < -1, -1 < x < 2, \\text{ or } x > 5", "(-\\infty,-1) \\cup (-1,2) \\cup (5,\\infty)", True),
        ("x < -\\sqrt{2} \\text{ or } x > 0.5", "(-\\infty, -\\sqrt{2}) \\cup (\\frac{1}{2}, \\infty)", True),
        ("x<2 or x>3", "(-\\infty,2] \\cup (3,\\infty)", False),
        ("x<2 or x>3", "(-\\infty,3) \\cup (2,\\infty)", False),
        ("x<2 or x>3", "(-\\infty,2) \\cup (4,\\infty)", False),
        ("x<2 \\text{ and } x>3", UNION, False),
        ("x<2 \\text{ and } x>3", "x<2 \\text{ or } x>3", False),
        ("x < 2 \\text{ or } y > 3", UNION, False),  # two unknowns
        ("(x<2) or (x>3)", UNION, True),  # each side in parentheses
        ("(x < 2) \\text{ or } (x > 3)", UNION, True),
        ("\\left(x < 2\\right) \\lor \\left(x > 3\\right)", UNION, True),
        (UNION, "(x < 2) \\text{ or } (x > 3)", True),
        ("(x \\le 2) \\text{ or } (x > 3)", UNION, False),
    ],
)
def test_or_joined_inequalities_as_unions(prediction: str, reference: str, expected: bool) -> None:
    assert is_correct(prediction, reference) is expected


# Two inequalities joined by "and" against the interval between them, both ways round.
@pytest.mark.parametrize(
    "prediction, reference, expected",
    [
        ("x > 2 \\text{ and } x < 5", "(2,5)", True),
        ("x<5 and x>2", "(2, 5)", True),
        ("x \\ge 2 \\land x < 5", "[2,5)", True),
        ("x > 2 \\wedge x < 5", "2 < x < 5", True),
        ("(2,5)", "x > 2 \\text{ and } x < 5", True),
        ("x > 2 \\text{ and } x < 5", "[2,5)", False),
        ("x > 2 \\text{ and } x < 5", "(2,6)", False),
        ("x > 2 \\text{ and } x < 5", "(-\\infty, 2) \\cup (5, \\infty)", False),
        ("(x>2) and (x<5)", "(2,5)", True),  # each side in parentheses
        ("(x > 2) \\text{ and } (x < 5)", "(2, 5)", True),
        ("(2,5)", "(x > 2) \\text{ and } (x < 5)", True),
        ("(x > 2) \\text{ and } (x \\le 5)", "(2,5)", False),
    ],
)
def test_and_joined_inequalities_as_intervals(prediction: str, reference: str, expected: bool) -> None:
    assert is_correct(prediction, reference) is expected


# math-verify cannot read \\lor, \\vee, \\land or \\wedge and falls back on the last number in the
# answer ("x < 2 \\lor x > 3" read as 3): a connective of statements must never equal a number.
@pytest.mark.parametrize(
    "prediction",
    [
        "x < 2 \\lor x > 3",
        "x<2 \\vee x>3",
        "x < 2 \\text{ or } x > 3",
        "x < 2 \\lor y > 3",
        "x = 1 \\lor x = 3",
        "x < 2 \\land x > 3",
        "x<2 \\wedge x>3",
    ],
)
def test_connectives_never_equal_a_number(prediction: str) -> None:
    assert is_correct(prediction, "3") is False
    assert is_correct(prediction, "2") is False


@pytest.mark.parametrize(
    "answer, union",
    [
        ("x < 2 \\text{ or } x > 3", "(-\\infty, 2) \\cup (3, \\infty)"),
        ("$x<2$ or $x>3$", "(-\\infty, 2) \\cup (3, \\infty)"),
        ("x \\le -\\frac{1}{2} \\lor x \\geq \\sqrt{3}", "(-\\infty, -\\frac{1}{2}] \\cup [\\sqrt{3}, \\infty)"),
        ("5 > t > 1 \\vee t \\ge 7", "(1, 5) \\cup [7, \\infty)"),
        ("-1 \\le x < 0 \\textrm{or} 2 \\leq x", "[-1, 0) \\cup [2, \\infty)"),
        ("x < -1, -1 < x < 2, \\text{ or } x > 5", "(-\\infty, -1) \\cup (-1, 2) \\cup (5, \\infty)"),
        ("(x < 2) \\text{ or } (x > 3)", "(-\\infty, 2) \\cup (3, \\infty)"),
        ("\\left( x<2 \\right) or ((3 < x \\le 5))", "(-\\infty, 2) \\cup (3, 5]"),
    ],
)
def test_inequalities_as_sets_rewrites(answer: str, union: str) -> None:
    assert inequalities_as_sets(answer) == union


@pytest.mark.parametrize(
    "answer, interval",
    [
        ("x > 2 \\text{ and } x < 5", "(2, 5)"),
        ("x<\\frac{1}{2} \\land x \\ge -1", "[-1, \\frac{1}{2})"),
        ("(x > 2) \\text{ and } (x < 5)", "(2, 5)"),
    ],
)
def test_inequalities_as_sets_intersects_two_joined_by_and(answer: str, interval: str) -> None:
    assert inequalities_as_sets(answer) == interval


@pytest.mark.parametrize(
    "answer",
    [
        "x > 2 \\text{ and } x > 5",  # both bounded below
        "x > 2 \\text{ and } y < 5",
        "0 < x < 9 \\text{ and } x > 3",  # a chain
        "x > 1 \\text{ and } x < 4 \\text{ and } x < 3",
        "2 \\text{ and } 5",
        "x < 2 \\text{ and } x > 3",  # holds nowhere: no interval, no union
        "x \\le 2 \\text{ and } x \\ge 2",
    ],
)
def test_inequalities_as_sets_leaves_other_and_answers(answer: str) -> None:
    assert inequalities_as_sets(answer) == answer


@pytest.mark.parametrize(
    "answer",
    [
        "x < 2",  # no "or": math-verify reads one inequality itself
        "x < 2, x > 3",  # commas alone may list conditions that hold together
        "x < 2 \\text{ or } y > 3",  # two unknowns
        "x < y \\text{ or } x > 3",  # an end that is no constant
        "x < 2 \\text{ or } x \\in (3, \\infty)",
        "(x < 2) \\text{ or } (3, \\infty)",  # an interval's comma is no separator of parts
        "(x < 2)(x > 3) \\text{ or } x > 5",  # the parentheses do not wrap one part
        "(1) < x < (2) \\text{ or } x > 5",
        "1 < x > 3 \\text{ or } x < 0",  # a chain that turns
        "x = 1 \\text{ or } x = 3",  # equations: math-verify's set of solutions
        "x < 1,000 \\text{ or } x > 2,000",  # thousands separators
        "x > 2 \\text{ or more}",
        "(-\\infty, 2) \\cup (3, \\infty)",
    ],
)
def test_inequalities_as_sets_leaves_other_answers(answer: str) -> None:
    assert inequalities_as_sets(answer) == answer


def test_inequalities_as_sets_spells_out_logical_symbols() -> None:
    # Left as symbols, math-verify would read each as its last number.
    assert inequalities_as_sets("x < 2 \\lor y > 3") == "x < 2 \\text{ or } y > 3"
    assert inequalities_as_sets("x = 1 \\vee x = 3") == "x = 1 \\text{ or } x = 3"
    assert inequalities_as_sets("x > 2 \\land y < 5") == "x > 2 \\text{ and } y < 5"
    assert inequalities_as_sets("a \\wedge b") == "a \\text{ and } b"
    assert inequalities_as_sets("\\veebar \\landup") == "\\veebar \\landup"  # longer commands are left alone
