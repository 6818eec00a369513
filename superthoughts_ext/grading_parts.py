"""The parts of a math answer that math-verify does not tell apart by itself: numeral bases
("52_8"), named values ("m=1, n=2"), column vectors and comma-separated tuples. `grading.is_correct`
compares these before (or instead of) math-verify.
"""
from __future__ import annotations

import re


# A numeral's base subscript ("52_8", "4210_{5}", "1A_{16}"); math-verify drops it, so "52_{9}"
# equalled "52_8". A "_1" after a variable ("a_1", "\\log_2") is no base.
_BASE_SUBSCRIPT = re.compile(r"(?<![\\A-Za-z0-9])(?=[0-9A-F]*\d)[0-9A-F]+_\{?\s*(\d+)\s*\}?")


def numeral_bases(answer: str) -> list[str]:
    return [base.lstrip("0") for base in _BASE_SUBSCRIPT.findall(answer)]


# The name on the left of an "=" in an answer: a symbol with subscripts, commands and arguments
# ("m_{\\max }", "\\angle B E A_{1}", "f(n)"), nothing computed ("2x - y + 3z + 8 = 0" is an equation).
_SUBSCRIPT = re.compile(r"_(?:\{[^{}]*\}|\w)")
_NAME = re.compile(r"^(?:\\[A-Za-z]+|[A-Za-z\s(),'])+$")


def top_level_parts(text: str) -> list[str]:
    """``text`` split at the commas outside brackets and braces."""
    parts, depth, start = [], 0, 0
    for i, char in enumerate(text):
        depth += char in "([{"
        depth -= char in ")]}"
        if char == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    return [*parts, text[start:]]


def assigned_values(answer: str) -> list[tuple[str, str]] | None:
    """The (name, value) pairs of an answer whose every part names what it gives, in its order:
    "m_{\\max }=n^2-n-1" -> [("m_{\\max}", "n^2-n-1")], "$\\angle A=90$,$\\angle B=45$" ->
    [("\\angleA", "90"), ("\\angleB", "45")] (names without spaces); None for any other answer.
    math-verify drops only a plain variable's name ("k=1")."""
    pairs = []
    for part in top_level_parts(answer.replace("$", "")):
        sides = part.split("=")
        if len(sides) != 2 or not _NAME.match(_SUBSCRIPT.sub("", sides[0]).strip() or "0") or not sides[1].strip():
            return None
        pairs.append((re.sub(r"\s+", "", sides[0]), sides[1].strip()))
    return pairs


def as_tuple(values: list[str]) -> str:
    """One value alone, several as a tuple: "x=2, y=1" must not equal "x=1, y=2" as the set {1, 2}."""
    return values[0] if len(values) == 1 else "(" + ", ".join(values) + ")"


# A column vector: one entry per row, no "&" ("\\begin{pmatrix} 1/5 \\\\ -18/5 \\end{pmatrix}").
_COLUMN_VECTOR = re.compile(r"^\s*\\begin\{([pbv]?matrix)\}([^&]*)\\end\{\1\}\s*$", re.DOTALL)


def column_vector_as_tuple(answer: str) -> str | None:
    """``(a, b, c)`` for a column vector answer, None for any other answer."""
    match = _COLUMN_VECTOR.match(answer.strip().strip("$"))
    if match is None:
        return None
    entries = [entry.strip() for entry in match.group(2).split("\\\\")]
    return "(" + ", ".join(entries) + ")" if len(entries) > 1 and all(entries) else None
