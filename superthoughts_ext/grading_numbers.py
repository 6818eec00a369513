"""Spellings of numbers that math-verify misreads, rewritten before grading (`grading.py`).

- Scientific notation: math-verify reads "6.02e23" as 6.02 * e * 23 (Euler's e), and keeps
  "6.02 \\times 10^{23}" as a float mantissa times a power, which then differs from the integer
  602000000000000000000000 by the mantissa's binary rounding. A whole answer in either form is
  written out as the exact decimal it names.
- Plain-text exponents: "10^-4" (GPQA's options, and models) means 10^{-4}, which math-verify
  reads as 10^{-} 4; "x" or "×" as the times sign before a power of ten.
- "1,3,5,\\ldots": math-verify dropped an ellipsis written without a space (so that open list
  equalled the finite set {1, 3, 5}), while "1, 3, 5, \\ldots" it keeps.
"""
from __future__ import annotations

import re
from decimal import Decimal

# A number times a power of ten ("6.02 \\times 10^{23}", "1.5 \\cdot 10^-4", "2*10^5"), or in
# e-notation ("6.02e23", "1.5E-4"), as a whole answer.
_MANTISSA = r"([+-]?(?:\d+(?:\.\d*)?|\.\d+))"
_TIMES_POWER = re.compile(_MANTISSA + r"\s*(?:\\times|\\cdot|\*|x|×)\s*10\s*\^\s*\{?\s*([+-]?\d+)\s*\}?")
_E_NOTATION = re.compile(_MANTISSA + r"[eE]([+-]?\d+)")
# Euler's e in an answer ("2e-1", "e^2 - 1"): e-notation is then not read as a power of ten.
_EULER = re.compile(r"(?<![A-Za-z\\])e(?![A-Za-z])")
# Larger powers stay as they are: their decimal would be that many digits long.
_MAX_POWER = 100
_PLAIN_EXPONENT = re.compile(r"\^\s*([+-]?\d+(?:\.\d+)?)")
_TIMES_SIGN = re.compile(r"(?<=\d)\s*(?:x|×)\s*(?=10\s*\^)")
_TIGHT_ELLIPSIS = re.compile(r",\s*(\\(?:l|c)?dots)(?![A-Za-z])")


def braced_exponents(text: str) -> str:
    """Plain-text powers braced ("10^-4" -> "10^{-4}", "2^10" -> "2^{10}") and an "x" / "×"
    times sign before a power of ten made "\\times"."""
    return _PLAIN_EXPONENT.sub(r"^{\1}", _TIMES_SIGN.sub(r" \\times ", text))


def scientific_as_decimal(answer: str, *, e_notation: bool = True) -> str:
    """A whole answer in scientific notation as the exact decimal it names ("6.02e23" ->
    "602000000000000000000000", "1.5 \\times 10^{-4}" -> "0.00015"); any other answer as it is.
    ``e_notation=False`` (the other answer uses Euler's e) leaves "2e-1" alone."""
    text = answer.strip().strip("$").strip()
    match = _TIMES_POWER.fullmatch(text) or (_E_NOTATION.fullmatch(text) if e_notation else None)
    if match is None or abs(int(match.group(2))) > _MAX_POWER:
        return answer
    return format(Decimal(match.group(1)).scaleb(int(match.group(2))), "f")


def uses_euler(answer: str) -> bool:
    """Whether an answer holds Euler's e (a lone letter e, not part of a word or command)."""
    return _EULER.search(answer) is not None


def spaced_ellipsis(answer: str) -> str:
    """"1,3,5,\\ldots" -> "1,3,5, \\ldots", the spelling math-verify keeps the ellipsis of."""
    return _TIGHT_ELLIPSIS.sub(r", \1", answer)
