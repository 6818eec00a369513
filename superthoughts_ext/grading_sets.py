"""Rewrites of math answers that math-verify misreads, applied before it compares them.

math-verify turns "or" into a comma, so ``x < 2 \\text{ or } x > 3`` becomes a set of two
inequalities that never equals the union ``(-\\infty, 2) \\cup (3, \\infty)`` it describes;
and it cannot read ``\\lor`` / ``\\vee`` / ``\\land`` / ``\\wedge`` at all, falling back on
the last number in the answer (``x < 2 \\lor x > 3`` would equal 3). Two inequalities joined
by "and" (``x > 2 \\text{ and } x < 5``) are likewise spelled as their intersection.
"""
from __future__ import annotations

import re

# The word "or" bare ("x<2 or x>3") or in a text command, and the logical symbols for it.
_OR = re.compile(r"\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{\s*or\s*\}|\\(?:lor|vee)(?![A-Za-z])|\bor\b")
_OR_SYMBOL = re.compile(r"\\(?:lor|vee)(?![A-Za-z])")
_AND_SYMBOL = re.compile(r"\\(?:land|wedge)(?![A-Za-z])")
_AND = re.compile(r"\\(?:text|textrm|textnormal|mbox|mathrm)\s*\{\s*and\s*\}|\\(?:land|wedge)(?![A-Za-z])|\band\b")
_SPACING = re.compile(r"\\(?:quad|qquad|left|right)(?![A-Za-z])|\\[,;:! ]|~|\$")
# The lookahead keeps \le from matching the start of a longer command (\left, \lessgtr).
_RELATION = re.compile(r"(\\(?:leqslant|geqslant|leq?|geq?|lt|gt)(?![A-Za-z])|<=|>=|[<>≤≥])")
# Each relation as (+1 for "less", -1 for "greater"; whether it includes equality).
_OPS = {
    "<": (1, False), "\\lt": (1, False), ">": (-1, False), "\\gt": (-1, False),
    **{op: (1, True) for op in ("<=", "≤", "\\le", "\\leq", "\\leqslant")},
    **{op: (-1, True) for op in (">=", "≥", "\\ge", "\\geq", "\\geqslant")},
}
_UNKNOWN = re.compile(r"[A-Za-z]")


def _is_end(text: str) -> bool:
    # A constant kept as written: no letter outside LaTeX commands (so not the unknown), and
    # nothing that would break the interval's "(a, b)" (a comma, a bracket, unbalanced braces).
    bare = re.sub(r"\\[A-Za-z]+", "", text)
    return bool(text) and not re.search(r"[A-Za-z,;=()\[\]]", bare) and bare.count("{") == bare.count("}")


def _unwrapped(part: str) -> str:
    """``part`` without parentheses around all of it: ``(x < 2)`` is ``x < 2``, while
    ``(1) < x < (2)`` keeps its own."""
    part = part.strip()
    while part.startswith("(") and part.endswith(")"):
        depth = 0
        for i, char in enumerate(part):
            depth += {"(": 1, ")": -1}.get(char, 0)
            if depth == 0:
                break
        if i != len(part) - 1:
            break
        part = part[1:-1].strip()
    return part


def _interval(part: str) -> tuple[str, str, bool, str, bool] | None:
    """``(unknown, low, low closed, high, high closed)`` for ``x < b``, ``b \\ge x``,
    ``a < x \\le b`` or ``b > x > a``, each also in parentheses (an open side is ``-\\infty`` /
    ``\\infty``); None for anything else."""
    pieces = [piece.strip() for piece in _RELATION.split(_unwrapped(part))]
    ends, ops = pieces[0::2], [_OPS[op] for op in pieces[1::2]]
    if ops and all(sign < 0 for sign, _ in ops):
        # "b > x > a" reads as "a < x < b".
        ends, ops = ends[::-1], [(1, closed) for _, closed in ops[::-1]]
    if not ops or any(sign < 0 for sign, _ in ops):
        return None
    # "x < b" is "-oo < x < b", "a < x" is "a < x < oo".
    if _UNKNOWN.fullmatch(ends[0]):
        ends, ops = ["-\\infty", *ends], [(1, False), *ops]
    if _UNKNOWN.fullmatch(ends[-1]):
        ends, ops = [*ends, "\\infty"], [*ops, (1, False)]
    if len(ends) != 3 or not _UNKNOWN.fullmatch(ends[1]) or not (_is_end(ends[0]) and _is_end(ends[2])):
        return None
    return ends[1], ends[0], ops[0][1], ends[2], ops[1][1]


def _latex(low: str, low_closed: bool, high: str, high_closed: bool) -> str:
    return f"{'[' if low_closed else '('}{low}, {high}{']' if high_closed else ')'}"


def _and_as_interval(answer: str) -> str | None:
    """``x > a \\text{ and } x < b`` (either order, any of the "and" spellings) as ``(a, b)``;
    None unless the answer is two one-sided inequalities in one unknown, one bounding each side
    (and, for numeric ends, a < b)."""
    parts = _AND.split(_SPACING.sub(" ", answer))
    sides = [_interval(part) for part in parts]
    if len(parts) != 2 or not all(sides) or sides[0][0] != sides[1][0]:
        return None
    lower, upper = sorted(sides, key=lambda side: side[1] == "-\\infty")  # the bounded-below one first
    if lower[3] != "\\infty" or upper[1] != "-\\infty" or _empty(lower[1], upper[3]):
        return None
    return _latex(lower[1], lower[2], upper[3], upper[4])


def _empty(low: str, high: str) -> bool:
    # "x < 2 and x > 3" holds nowhere: written "(3, 2)" it would read as the point (3, 2).
    try:
        return float(low) >= float(high)
    except ValueError:
        return False  # LaTeX ends (\frac, \sqrt) are left to math-verify's interval


def inequalities_as_sets(answer: str) -> str:
    """An answer of inequalities in one unknown joined by "or" as the union of their intervals,
    and two joined by "and" as their intersection (`_and_as_interval`).

    ``x < 2 \\text{ or } x > 3`` (or ``x<2 or x>3``, ``x < 2 \\lor x > 3``, ``x \\vee ...``)
    becomes ``(-\\infty, 2) \\cup (3, \\infty)``; each part is ``x < b``, ``b > x`` or a chain
    ``a < x \\le b`` (or any of these in parentheses: ``(x < 2) \\text{ or } (x > 3)``), ends
    kept as written; with an "or" present commas separate parts too
    (``x < -1, 0 < x < 2, or x > 5``). Any other answer comes back with ``\\lor`` / ``\\vee``
    spelled ``\\text{ or }`` and ``\\land`` / ``\\wedge`` spelled ``\\text{ and }``, which
    math-verify reads as a set of the parts: never a number.
    """
    parts = _OR.split(_SPACING.sub(" ", answer))
    if len(parts) > 1:
        parts = [piece for part in parts for piece in part.split(",") if piece.strip()]
        intervals = [_interval(part) for part in parts]
        # One part alone would read "(1, 2)" as a point; two unknowns make no set of one.
        if len(parts) > 1 and all(intervals) and len({side[0] for side in intervals}) == 1:
            return " \\cup ".join(_latex(*side[1:]) for side in intervals)
    elif (intersection := _and_as_interval(answer)) is not None:
        return intersection
    answer = _OR_SYMBOL.sub(lambda _: "\\text{ or }", answer)
    return _AND_SYMBOL.sub(lambda _: "\\text{ and }", answer)
