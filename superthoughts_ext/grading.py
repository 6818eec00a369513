"""Answer extraction and grading for the evaluation benchmarks.

The final answer of a chain of thought is its last ``\\boxed{...}`` (brace-matched: `grading_boxes`).
Math answers are graded with math-verify (parse + verify, in a worker process under a
deadline: `grading_worker`), multiple-choice answers (GPQA-Diamond) by comparing the option
letter (an answer boxed as an option's text counts as that option's letter).
"""
from __future__ import annotations

import math
import re
import time
from collections.abc import Sequence
from numbers import Real

from superthoughts_ext.eval_data import BENCHES
from superthoughts_ext.grading_boxes import extract_answer
from superthoughts_ext.grading_parts import (as_tuple, assigned_values, column_vector_as_tuple, numeral_bases,
                                            top_level_parts)
from superthoughts_ext.grading_numbers import (braced_exponents, repeating_decimal_as_fraction, scientific_as_decimal,
                                              spaced_ellipsis, uses_euler)
from superthoughts_ext.grading_worker import math_equal, worker_held

DEFAULT_TIMEOUT_S = 5.0

# "The answer is (B)", also "Answer: B", "**Answer:** (B)", "Final answer: B", "the answer is
# option C" and "The correct option is B" ("option is" / "choice is" only after correct, right,
# best or final: "another option is D" names none). A lowercase letter only counts in
# parentheses: "the answer is a number" names no choice, nor does the article "A" before a word
# ("the answer is A bit larger"), nor a letter opening a formula or a word on its line
# ("A = 4-methylcyclohexan-1-ol and B = ...", "D-glucose", "C++"). A "*" after the letter is Markdown bold ("Answer: **A**"), a dash before a space a dash
# ("B - it doubles"), and a double backslash a LaTeX line break.
_ANSWER_IS = re.compile(r"(?i:answer\s+is\s*:?|(?:correct|right|best|final)\s+(?:option|choice)\s+is\s*:?|"
                        r"answer\s*:)[\s*]*(?i:(?:option|choice)\s*)?"
                        r"(?:\(\s*([A-Da-d])\s*\)|(A(?!\s+[a-z])|[B-D])\b(?![ \t]*(?:[=<>+/^_]|\\(?!\\)|-(?=\w)))|"
                        # A lowercase letter ending its sentence and line ("The answer is b."); not
                        # "the answer is a\nfunction" or a truncated "the answer is a". Quantifiers
                        # that cannot share a character keep it linear in a run of spaces.
                        r"([a-d])(?=[ \t*]*[.!][ \t*]*(?:\n|\Z)))")
# ... or ending the output after "Answer:" ("Answer: b", "Answer: **b**").
_ANSWER_COLON_AT_END = re.compile(r"(?i:answer)[ \t]*:[\s*]*([a-d])[ \t*]*\Z")
# "(C) ...", "C) ...", "C. ...", "C: ...", "C ..." or "C" alone; a letter followed by an operator or a
# command opens an equation or a product ("B = 2 T", "a \cdot b", "d \approx 4"): a quantity, no choice.
# "Option D", "Choice (D)" and "[D]" too, though not a concentration "[A] = 0.1 M" or "[B]_0 / 2".
_LETTER = re.compile(r"^(?:(?:option|choice)\s*)?(?:\(\s*([A-D])\s*\)|\[\s*([A-D])\s*\](?!\s*[=<>+\-*/^_\\])|"
                     r"([A-D])(?:\s*[.:)]|\s*$|\s+(?![\s=<>+\-*/^_\\])))", re.IGNORECASE)


# "B or C", "(A) and (C)", "A/C": a second letter after a conjunction hedges between choices.
_SECOND_CHOICE = re.compile(
    r"^\s*(?:(?i:or|and)\b|,|/|&|\\(?:lor|land|vee|wedge)\b)\s*(?:\(\s*[A-Ea-e]\s*\)|[A-E](?![A-Za-z]))")

# "A single sharp peak": the article opening a sentence, no choice.
_ARTICLE = re.compile(r"^[Aa]\s+[a-z]")


# The opening of a font wrapper around a letter or a word: "\\text{D}", "\\textbf{(B)}", "\\texttt{D}".
_FONT_OPEN = re.compile(r"\\(?:text|textbf|textit|texttt|textrm|textsf|emph|mathrm|mathbf|mathit|mathsf|mathtt)"
                        r"\s*\{")
# LaTeX spaces: "\\ ", "\\,", "\\;", "\\:", "\\quad", "\\qquad" and the tie "~".
_LATEX_SPACE = re.compile(r"\\(?:[ ,;:]|q?quad\b)|~")


def _unwrap_text(answer: str) -> str:
    """``answer`` with font wrappers (nested ones too) and ``$`` removed and LaTeX spaces made
    spaces, stripped: "\\text{\\textbf{D}}\\ \\text{It increases}" -> "D It increases"."""
    # Spaces first: "\\quad\\text{or}" unwrapped first would read "\\quador".
    return _drop_font_wrappers(_LATEX_SPACE.sub(" ", answer)).replace("$", "").strip()


def _drop_font_wrappers(text: str) -> str:
    """``text`` without the font wrappers whose content, once inner wrappers are gone, holds no
    brace: "\\text{\\textbf{D}}" -> "D", while "\\text{a{b}}" stays. One pass with a stack of
    open groups (unwrapping the innermost group per pass took a pass per nesting level: minutes
    on a looping output nested 30k deep)."""
    pieces: list[str] = []
    # Per open group: the index of its opening in pieces (None for a plain "{"), and whether
    # a brace stays inside it.
    groups: list[tuple[int | None, bool]] = []
    i = 0
    while i < len(text):
        opening = _FONT_OPEN.match(text, i) if text[i] == "\\" else None
        if opening is not None or text[i] == "{":
            if groups:
                groups[-1] = (groups[-1][0], groups[-1][1] or opening is None)
            groups.append((len(pieces) if opening else None, False))
            pieces.append(opening.group(0) if opening else "{")
            i = opening.end() if opening else i + 1
            continue
        if text[i] == "}" and groups:
            start, holds_brace = groups.pop()
            if start is not None and not holds_brace:
                pieces[start] = ""  # unwrapped: its opening and this "}" go
                i += 1
                continue
            if groups:  # a group that stays is a brace inside its parent
                groups[-1] = (groups[-1][0], True)
        pieces.append(text[i])
        i += 1
    return "".join(pieces)


def _choice(answer: str) -> tuple[str | None, bool]:
    """The letter a boxed answer names, and whether the answer is that letter alone ("C", "(C)").
    An answer hedging between two letters ("B or C") names none."""
    text = _unwrap_text(answer)
    match = _LETTER.match(text)
    if match is None or _SECOND_CHOICE.match(text[match.end():]) or _ARTICLE.match(text):
        return None, False
    return next(letter for letter in match.groups() if letter).upper(), match.end() == len(text)


def choice_letter(answer: str | None) -> str | None:
    """Normalise a boxed multiple-choice answer ("C", "(C)", "\\text{C}", "C) 42") to a letter."""
    return None if answer is None else _choice(answer)[0]


def extract_choice(text: str, options: Sequence[str] = ()) -> str | None:
    """The chosen letter of a multiple-choice output.

    Prefers the last boxed answer (its letter, or with ``options`` the letter of the option
    whose text it is, see `option_letter`); falls back to the last "answer is (X)" or "Answer: X" phrase
    (a lowercase one where a full stop ends its line, "The answer is b.", or it ends the output
    after a colon, "Answer: b") for outputs that name the letter without boxing it.
    """
    letter = option_letter(extract_answer(text), options)
    if letter is not None:
        return letter
    text = _unwrap_text(text)  # "Answer: \\textbf{A}", "the answer is $\\text{A}$"
    matches = list(_ANSWER_IS.finditer(text))
    at_end = _ANSWER_COLON_AT_END.search(text)
    if at_end is not None and (not matches or at_end.start() >= matches[-1].start()):
        return at_end.group(1).upper()
    if not matches or _SECOND_CHOICE.match(text[matches[-1].end():]):
        return None  # "the answer is (B) or (C)" hedges, like such a box
    return "".join(matches[-1].groups("")).upper()


def _normalize(answer: str) -> str:
    """Cheap canonical form for an exact-match fast path (and for non-math text answers)."""
    text = answer.strip().strip("$").strip()
    text = re.sub(r"\\(?:left|right)\b", "", text)
    text = re.sub(r"\\[,;:! ]", "", text)
    text = text.replace("\\dfrac", "\\frac").replace("\\tfrac", "\\frac")
    text = re.sub(r"\\text\s*\{([^{}]*)\}", r"\1", text)
    return re.sub(r"\s+", "", text).rstrip(".").lower()


def _option_key(text: str) -> str:
    # Options keep the "$" of their inline math ("$10^{-4}$ eV"), which a boxed answer lacks.
    return _normalize(text.replace("$", ""))


# A trailing unit ("eV", "km/s", "GeV/c^2", "M"): letters not continuing a word or a LaTeX command.
_UNIT = re.compile(r"(?<![A-Za-z\\])[A-Za-z]+(?:\s*/\s*[A-Za-z]+)*(?:\^\{?-?\d+\}?)?\s*$")
# A quantity is short. A longer answer (a runaway box such as "a/a/a/...") skips the value
# comparison: the unit split above is quadratic in it (seconds at 10k characters) and each
# option would cost the worker up to its timeout.
_QUANTITY_CHARS = 200


def _value_and_unit(text: str) -> tuple[str, str]:
    """Split "10^{-4}\\,\\text{eV}" into ("10^{-4}\\,", "eV"); the unit is "" when there is none."""
    # LaTeX spaces first: "10^{-4}\\ \\mathrm{eV}" kept a "\\" in its value.
    text = re.sub(r"\\(?:text|mathrm)\s*\{([^{}]*)\}", r" \1", _LATEX_SPACE.sub(" ", text.replace("$", ""))).strip()
    match = _UNIT.search(text)
    if match is None:
        return text, ""
    return text[: match.start()].strip(), re.sub(r"\s+", "", match.group(0))


def _pure_math(value: str) -> bool:
    # math-verify reads words as products of symbols (an anagram "equals" its word) and pulls
    # numbers out of prose ("Only 2"): only letterless values, LaTeX commands aside, go to it.
    return bool(value) and re.search(r"[A-Za-z]", re.sub(r"\\[A-Za-z]+", "", value)) is None


def _same_quantity(answer: str, option: str, timeout_s: float) -> bool:
    """Whether an answer is an option's quantity written otherwise ("0.0001 eV", "10^{-4} eV").
    An answer without a unit is compared by its value alone."""
    value, unit = _value_and_unit(answer)
    option_value, option_unit = _value_and_unit(option)
    if unit and unit != option_unit:
        return False
    # GPQA's options are plain text: e-notation there is a power of ten on both sides.
    value, option_value = (scientific_as_decimal(text, e_notation=True) for text in (value, option_value))
    return _pure_math(value) and _pure_math(option_value) and math_equal(value, option_value, timeout_s)


def option_letter(answer: str | None, options: Sequence[str] = (), *, timeout: float = DEFAULT_TIMEOUT_S) -> str | None:
    """The letter a boxed multiple-choice answer names, given the options in letter order A-D.

    A letter ("C", "(C)", "\\text{C}") names itself, even when an option reads like a letter.
    Otherwise an answer that is one option's text ("10^{-4}\\,\\text{eV}" for "B) 10^{-4} eV",
    compared after `_normalize`) names that option, else a leading letter ("C) 42 eV") names
    its own, else a short math answer equal to one option's value by math-verify ("0.0001 eV",
    "\\sqrt{3}/2") names that option. None when no option, or more than one, matches.
    """
    if len(options) > 4:
        raise ValueError(f"option_letter: at most 4 options (letters A-D), got {len(options)}")
    if answer is None:
        return None
    letter, bare = _choice(answer)
    if bare or not options:
        return letter
    # GPQA's options are plain text: "10^-4 eV" means 10^{-4}, which math-verify reads as 10.
    answer = braced_exponents(answer, x_times=True)
    options = [braced_exponents(option, x_times=True) for option in options]
    key = _option_key(answer)
    same = [i for i, option in enumerate(options) if _option_key(option) == key]
    if not same:
        if letter is not None:
            return letter
        if len(answer) <= _QUANTITY_CHARS:
            # One deadline for all the options: an answer that keeps math-verify busy took the
            # timeout once per option (20 s for four).
            deadline = time.monotonic() + timeout
            for i, option in enumerate(options):
                left = deadline - time.monotonic()
                if left <= 0:
                    return None
                if _same_quantity(answer, option, left):
                    same.append(i)
    return "ABCD"[same[0]] if len(same) == 1 else None


# A question naming a point or an ordered tuple wants "(a, b)" as a point, not an interval
# (MATH500: every such question's pair answer is a point, every interval question says so).
_POINT_QUESTION = re.compile(r"ordered (pair|triple)|\b(mid)?points?\b|coordinates", re.IGNORECASE)
_SET_QUESTION = re.compile(r"interval|\brange\b|inequalit|domain|set of all", re.IGNORECASE)


def asks_for_point(question: str | None) -> bool:
    """Whether a question asks for a point / ordered tuple rather than a set of values."""
    return bool(question) and bool(_POINT_QUESTION.search(question)) and not _SET_QUESTION.search(question)


# A MATH reference that is an option letter alone, "\\text{(C)}" (MATH500 has (B), (C), (E)), and
# the option letter a prediction opens with: "(C)", "C", "(C) Plane", "C."
_MATH_OPTION = re.compile(r"^\(\s*([A-E])\s*\)$")
_MATH_OPTION_LEAD = re.compile(r"^\(?\s*([A-E])\s*\)?(?=[\s.:),\\]|$)")


# An option label before a value: "(B) 27", "B. 27" (after `_unwrap_text`: "\\textbf{(B)}~27").
_OPTION_LABEL = re.compile(r"^(?:\(\s*[A-E]\s*\)|[A-E]\.)\s*(\S.*)$", re.DOTALL)


def _math_option_letter(reference: str) -> str | None:
    match = _MATH_OPTION.match(_unwrap_text(reference))
    return match.group(1) if match else None


def _check_grading_input(
    prediction: object, reference: object, bench: object, timeout: object, options: object
) -> None:
    if prediction is not None and not isinstance(prediction, str):
        raise TypeError(f"is_correct: prediction must be a str or None, got {type(prediction).__name__}")
    if not isinstance(reference, str):
        raise TypeError(f"is_correct: reference must be a str, got {type(reference).__name__}")
    if bench not in BENCHES:
        # A misspelt "gpqa" was graded as math, quietly.
        raise ValueError(f"is_correct: unknown bench {bench!r}; known: {', '.join(sorted(BENCHES))}")
    # NaN and inf passed a "> 0" check and then failed inside the worker's select().
    if isinstance(timeout, bool) or not isinstance(timeout, Real) or not (0 < timeout < math.inf):
        raise ValueError(f"is_correct: timeout must be a finite number of seconds > 0, got {timeout!r}")
    if options is not None and not all(isinstance(option, str) for option in options):
        raise TypeError(f"is_correct: options must be strs, got {[type(o).__name__ for o in options]}")


def _numbers_spelled_out(answer: str, *, e_notation: bool = False) -> str:
    """``answer`` with scientific notation as exact decimals, repeating decimals as fractions,
    plain-text powers braced and "1,3,\\ldots" spaced (grading_numbers): the spellings
    math-verify compares. ``e_notation``: as `scientific_as_decimal`'s."""
    return spaced_ellipsis(braced_exponents(repeating_decimal_as_fraction(
        scientific_as_decimal(answer, e_notation=e_notation))))


def is_correct(
    prediction: str | None,
    reference: str,
    bench: str = "math500",
    *,
    timeout: float = DEFAULT_TIMEOUT_S,
    options: Sequence[str] | None = None,
    question: str | None = None,
) -> bool:
    """Whether an extracted answer matches the reference answer.

    Args:
        prediction: the model's answer (the content of its last box), or None if it gave none.
        reference: the benchmark's answer; for ``gpqa_diamond`` the correct letter A-D.
        bench: benchmark name; ``gpqa_diamond`` compares choice letters, every other
            benchmark compares mathematically with math-verify (numbers, fractions vs
            decimals, intervals, tuples, sets, LaTeX, ``\\text{}`` units, percentages, and
            an inequality in one unknown against its interval: ``x > 2`` vs ``(2, \\infty)``,
            except where ``question`` asks for a point).
        timeout: seconds allowed for the math-verify comparisons (one deadline for all of
            them); past it the answer counts as wrong. Safe to call from any thread.
        options: ``gpqa_diamond`` only: the option texts in letter order A-D
            (`Problem.options`), so that an answer boxed as an option's text counts as that
            option's letter (`option_letter`).
        question: the problem text, if known. Math-verify reads a pair ``(a, b)`` with
            ``a < b`` as an open interval; when the question asks for a point, an ordered pair
            or coordinates (`asks_for_point`), inequalities are not compared as the sets they
            describe, so ``-1 < x < 6`` does not equal the midpoint ``(-1, 6)``.
    """
    _check_grading_input(prediction, reference, bench, timeout, options)
    timeout = float(timeout)  # a numpy number would not pass to the worker (JSON)
    if prediction is None:
        return False
    if bench == "gpqa_diamond":
        gold = choice_letter(reference)
        if gold is None:
            raise ValueError(f"is_correct: GPQA reference must be a letter A-D, got {reference!r}")
        return option_letter(prediction, options or (), timeout=timeout) == gold
    if not prediction.strip():
        return False
    if _normalize(prediction) == _normalize(reference):
        return True
    if (letter := _math_option_letter(reference)) is not None:
        # MATH's "enter the letter of the correct option" answers: the letter decides, with or
        # without the option's text after it ("\\text{(C) Plane}" for "\\text{(C)}").
        text = _unwrap_text(prediction)
        if (chosen := _MATH_OPTION_LEAD.match(text)) is not None:
            return chosen.group(1) == letter and not _SECOND_CHOICE.match(text[chosen.end():])
    elif (labelled := _OPTION_LABEL.match(_unwrap_text(prediction))) is not None:
        # An AMC answer boxed with its contest option, "\\textbf{(B) } 27": the value decides.
        prediction = labelled.group(1)
    # E-notation only in a prediction, and only where the reference has no Euler's e: references
    # are LaTeX ("2e-1" is 2e - 1), float cells decimals.
    prediction = _numbers_spelled_out(prediction, e_notation=not uses_euler(reference))
    reference = _numbers_spelled_out(reference)
    predicted_bases, wanted_bases = numeral_bases(prediction), numeral_bases(reference)
    # A numeral in another base is wrong; a bare "52" for "52_8" is still compared, and so is
    # "52_{10}" for a bare "52".
    if predicted_bases and predicted_bases != wanted_bases and (wanted_bases or set(predicted_bases) != {"10"}):
        return False
    # A vector written as a tuple, "(1/5, -18/5)", for a column vector (MATH writes them as
    # pmatrix), or the other way round: math-verify compares a tuple with no matrix.
    vectors = column_vector_as_tuple(prediction), column_vector_as_tuple(reference)
    if (vectors[0] is None) != (vectors[1] is None):
        prediction, reference = vectors[0] or prediction, vectors[1] or reference
    # The shared worker held for all of this call's comparisons: their deadline then counts them
    # alone, not the wait for other threads' grades.
    with worker_held():
        return _math_verified(prediction, reference, timeout, as_sets=not asks_for_point(question))


def _math_verified(prediction: str, reference: str, timeout: float, *, as_sets: bool) -> bool:
    """The math-verify comparisons of `is_correct`, within `timeout` seconds in all."""
    # One deadline for every comparison below: against a reference that names its value ("x=5",
    # MATH500 test/algebra/2193) an answer is compared as written and then as its bare value,
    # and one that kept math-verify busy took the timeout twice (10 s at 5).
    deadline = time.monotonic() + timeout

    def equal(guessed: str, wanted: str) -> bool:
        left = deadline - time.monotonic()
        return left > 0 and math_equal(guessed, wanted, left, as_sets=as_sets)

    # OlympiadBench names its values ("m_{\\max }=n^{2}-n-1"): the value alone, or under
    # another name, is the answer too.
    wanted, guess = assigned_values(reference), assigned_values(prediction)
    if wanted is not None:
        wanted_values = as_tuple([value for _, value in wanted])
        # Bare values: a list reads as the tuple the reference's values make.
        guessed_values = as_tuple([value for _, value in guess] if guess is not None else
                                  [part.strip() for part in top_level_parts(prediction.replace("$", ""))])
        # Several values under distinct names are a tuple, while math-verify compares the SET of
        # their values ("45, 90" and "\\angle B=90, \\angle A=45" equalled "\\angle A=90, \\angle B=45"):
        # values named alike are compared name by name, bare ones in the reference's order. Values
        # of one name ("x=3, x=-3": the solutions) stay a set.
        names = [name for name, _ in wanted]
        if len(names) > 1 and len(set(names)) == len(names):
            if guess is not None and sorted(name for name, _ in guess) == sorted(names):
                given = dict(guess)
                return all(equal(given[name], value) for name, value in wanted)
            if guess is None and "=" not in prediction:  # bare values (equations go to math-verify)
                return equal(guessed_values, wanted_values)
    if equal(prediction, reference):
        return True
    return wanted is not None and equal(guessed_values, wanted_values)
