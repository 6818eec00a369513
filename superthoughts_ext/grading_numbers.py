"""Spellings of numbers that math-verify misreads, rewritten before grading (`grading.py`).

- Scientific notation: math-verify keeps "6.02 \\times 10^{23}" as a float mantissa times a
  power, which then differs from the integer 602000000000000000000000 (and from
  "60.2 \\times 10^{22}") by the mantissa's binary rounding; such a number, wherever it stands
  ("6.02 \\times 10^{23} \\text{ mol}^{-1}", "N_A = ..."), is written out as the exact decimal it
  names. It reads "6.02e23" as 6.02 * e * 23 (Euler's e): a prediction that is one number in
  e-notation is read as a power of ten where its reference holds no Euler's e.
- Plain-text exponents: "10^-4" (GPQA's options, and models) means 10^{-4}, which math-verify
  reads as 10^{-} 4. GPQA's options also write "x" as the times sign ("1.2 x 10^3"); in math
  answers an x is a variable ("2x10^n").
- Repeating decimals: "1.\\overline{3}" (a model's spelling of 4/3) it reads as 1 followed by
  an unknown; such a number is written as the exact fraction it names.
- "1,3,5,\\ldots": math-verify dropped an ellipsis written without a space (so that open list
  equalled the finite set {1, 3, 5}), while "1, 3, 5, \\ldots" it keeps.
"""
from __future__ import annotations

import math
import re
from decimal import Decimal

# Not a digit of a subscript, power, fraction or longer number ("a_1", "x^2", "\\frac{1}{2}",
# "1,500"); its sign stays outside ("f(x)+2 \\times 10^3" keeps its sum).
_MANTISSA = r"(?<![\w.,^_{}])(\d+(?:\.\d*)?|\.\d+)"
# A braced power, or a bare one not running on into more digits; no two whitespace runs side
# by side (their backtracking was quadratic in a run of spaces).
_POWER = r"\s*10\s*\^\s*(?:\{\s*([+-]?\d+)\s*\}|([+-]?\d+)(?![\d.]))"
_TIMES_POWER = re.compile(_MANTISSA + r"\s*(?:\\times|\\cdot|\*|×)" + _POWER)
_E_NOTATION = re.compile(r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))[eE]([+-]?\d+)")
# Euler's e in an answer ("2e-1", "e^2 - 1"): e-notation is then not read as a power of ten.
_EULER = re.compile(r"(?<![A-Za-z\\])e(?![A-Za-z])")
# Larger powers stay as they are: their decimal would be that many digits long.
_MAX_POWER = 100
_PLAIN_EXPONENT = re.compile(r"\^\s*([+-]?\d+(?:\.\d+)?)")
_X_TIMES = re.compile(r"(?<=\d)\s*[x×]\s*(?=10\s*\^)")
# A whole number (not the tail of another, nor in another base: "0.\\overline{3}_{7}" is 1/2)
# with a repeating block: "0.\\overline{3}", "1.2\\overline{45}", "0.\\overline3", also under
# \\bar or \\dot.
_REPEATING = re.compile(r"(?<![\d.])(\d*)\.(\d*)\s*\\(?:overline|bar|dot)\s*(?:\{\s*(\d+)\s*\}|(\d))(?![\d._])")
# Longer ones stay as they are: Python refuses int() of a 4300-digit string.
_MAX_REPEATING_DIGITS = 100
_TIGHT_ELLIPSIS = re.compile(r",\s*(\\(?:l|c)?dots)(?![A-Za-z])")


def braced_exponents(text: str, *, x_times: bool = False) -> str:
    """Plain-text powers braced ("10^-4" -> "10^{-4}", "2^10" -> "2^{10}"); with ``x_times``
    (GPQA's plain-text options) an "x" or "×" before a power of ten made "\\times"."""
    if x_times:
        text = _X_TIMES.sub(r" \\times ", text)
    return _PLAIN_EXPONENT.sub(r"^{\1}", text)


def _decimal(mantissa: str, power: str) -> str | None:
    return None if abs(int(power)) > _MAX_POWER else format(Decimal(mantissa).scaleb(int(power)), "f")


def scientific_as_decimal(answer: str, *, e_notation: bool = False) -> str:
    """Every number times a power of ten in ``answer`` as the exact decimal it names
    ("1.5 \\times 10^{-4}" -> "0.00015"). With ``e_notation`` an answer that is one number in
    e-notation too ("6.02e23" -> "602000000000000000000000")."""
    answer = _TIMES_POWER.sub(lambda m: _decimal(m.group(1), m.group(2) or m.group(3)) or m.group(0), answer)
    if e_notation and (whole := _E_NOTATION.fullmatch(answer.strip().strip("$").strip())) is not None:
        return _decimal(whole.group(1), whole.group(2)) or answer
    return answer


def _repeating_fraction(match: re.Match[str]) -> str:
    whole, fixed, block = match.group(1) or "0", match.group(2), match.group(3) or match.group(4)
    if len(whole) + len(fixed) + len(block) > _MAX_REPEATING_DIGITS:
        return match.group(0)
    # whole.fixed(block)... = (whole fixed block - whole fixed) / (10^|fixed| (10^|block| - 1))
    numerator = int(whole + fixed + block) - int(whole + fixed)
    denominator = 10 ** len(fixed) * (10 ** len(block) - 1)
    common = math.gcd(numerator, denominator)
    return f"\\frac{{{numerator // common}}}{{{denominator // common}}}"


def repeating_decimal_as_fraction(answer: str) -> str:
    """Every repeating decimal in ``answer`` as its exact fraction ("1.\\overline{3}" ->
    "\\frac{4}{3}"); a sign before it stays where it is."""
    return _REPEATING.sub(_repeating_fraction, answer)


def uses_euler(answer: str) -> bool:
    """Whether an answer holds Euler's e (a lone letter e, not part of a word or command)."""
    return _EULER.search(answer) is not None


def spaced_ellipsis(answer: str) -> str:
    """"1,3,5,\\ldots" -> "1,3,5, \\ldots", the spelling math-verify keeps the ellipsis of."""
    return _TIGHT_ELLIPSIS.sub(r", \1", answer)
