"""The final answer of a chain of thought: the content of its last ``\\boxed{...}``
(brace-matched: `extract_answer`), read from a text without the invisible characters a model's
tokens can hold (`visible_text`).

Kept apart from grading.py, which compares answers once they are found: finding one needs no
grading rule and no math-verify. The letter of a multiple-choice output (`grading.extract_choice`)
is read there, next to the rules that read letters.
"""
from __future__ import annotations

import re

_BOX_COMMAND = re.compile(r"\\(?:boxed|fbox)")


def _match_braces(text: str, open_index: int) -> int | None:
    """Index just past the ``}`` closing the ``{`` at ``open_index``; None if unbalanced."""
    depth = 0
    i = open_index
    while i < len(text):
        char = text[i]
        if char == "\\":
            # Skips escaped braces (\{ \}) and the LaTeX line break \\ alike.
            i += 2
            continue
        if char == "{":
            depth += 1
        elif char == "}":
            depth -= 1
            if depth == 0:
                return i + 1
        i += 1
    return None


def _next_box(text: str, start: int) -> tuple[bool, str | None, int] | None:
    """Find the next box command at or after ``start``.

    Returns ``(is_box, content, end)``: ``is_box`` is False for a command that only shares
    the prefix (``\\fboxsep``), content is None when the box is unbalanced or empty, and
    ``end`` is where scanning resumes. Returns None when no box command is left.
    """
    # One search for both commands: a find per command rescanned the text to its end for the
    # absent one at every box (seconds on a looping output of 10k boxes).
    found = _BOX_COMMAND.search(text, start)
    if found is None:
        return None
    cmd, after = found.group(0), found.end()
    if after < len(text) and text[after].isalpha():
        return False, None, after
    rest = after
    while rest < len(text) and text[rest].isspace():
        rest += 1
    if rest < len(text) and text[rest] == "{":
        end = _match_braces(text, rest)
        if end is None:
            return True, None, len(text)
        return True, text[rest + 1 : end - 1].strip() or None, end
    if cmd == "\\boxed" and (rest > after or (rest < len(text) and text[rest].isdigit())):
        # "\\boxed 5$", "\\boxed5": the unbraced form takes one token, up to whitespace or "$".
        match = re.match(r"[^\s$]+", text[rest:])
        if match:
            return True, match.group(0), rest + match.end()
    # A bare "\\boxed" at the end of a truncated output: a box without an answer.
    return True, None, after


# Characters that render as nothing: zero-width space and joiners, direction marks, embeddings and
# overrides, the word joiner, a byte order mark, the soft hyphen (Unicode format characters, Cf).
_INVISIBLE = re.compile("[\u00ad\u200b-\u200f\u202a-\u202e\u2060-\u2064\u2066-\u2069\ufeff]")


def visible_text(text: str) -> str:
    """``text`` without invisible format characters, which a model's tokens can hold: in
    "\\boxed{2\u200b7}" math-verify read no 27, nor the letter rules an A in "\u200b(A)". Text
    keeps the order it is written in, not the one direction overrides show."""
    return _INVISIBLE.sub("", text)


def extract_answer(text: str) -> str | None:
    """The content of the last ``\\boxed{...}`` / ``\\boxed ...`` / ``\\fbox{...}`` in text.

    Braces are matched (nested groups and escaped ``\\{``/``\\}`` are handled). A box
    nested inside another counts as part of the outer one. Returns None when there is no
    box, or when the last box is unbalanced or empty (for example a generation cut off
    inside its answer).
    """
    if not isinstance(text, str):
        raise TypeError(f"extract_answer expects a str, got {type(text).__name__}")
    answer: str | None = None
    start = 0
    while (hit := _next_box(text, start)) is not None:
        is_box, content, start = hit
        if is_box:
            answer = content
    return answer
