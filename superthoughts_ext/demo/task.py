"""Synthetic reasoning task: column addition with explicit carries and a running partial sum.

A problem is ``What is 4827 + 1596?`` (both operands have the same number of digits, 3 or
4). The chain of thought works the columns right to left, one line per column, and ends
with the answer in ``\\boxed{}``::

    Add the columns from right to left.
    ones: 7+6=13, write 3, carry 1; so far 3.
    tens: 2+9+1=12, write 2, carry the 1; so far 23.
    hundreds: 8+5+1=14, put down 4, carry 1; partial 423.
    thousands: 4+1+1=6, write 6, no carry; so far 6423.
    so the sum is 6423.
    \\boxed{6423}

Why a tiny Qwen2 (2-4 layers, hidden 128-256, minutes on a CPU) can learn it to >= 90%:
every token is either a copy from a fixed, nearby place or a lookup in a tiny table.
- Equal-width operands make "the tens digit of the first number" a fixed offset before the
  ``+`` of the question, so reading a column's digits is a positional lookup keyed by the
  column name that opens the line.
- The arithmetic per line is one-digit addition with carry-in <= 1 (a 10 x 10 x 2 table);
  the written digit and the carry are read off the sum just written.
- The running partial sum ("so far 423") is the digit just written followed by a copy of
  the previous line's partial sum, so the final answer is one induction-style copy of the
  last partial sum (plus the final carry), never a long-range reassembly of scattered digits.
- Lines are 22-28 tokens and a response 91-144 tokens (mean ~117: ~102 for 3-digit, ~131
  for 4-digit operands; the prompt is 41 tokens), long enough that emitting two tokens per
  decode step halves something worth halving, short enough for CPU training.

Where the ambiguity is (what the MTP confidence rule must detect). Equivalent wordings are
drawn at random, with skewed weights so that confidences spread out instead of sitting at
exactly 1/2 or 1/3:
- the write verb after ``13, `` ("write" / "put down" / "keep");
- the carry phrase ("carry 1" / "carry the 1" / "with carry 1"; "carry 0" / "no carry"):
  after ``carry`` the next token is still open (``1`` or ``the``);
- the partial-sum label after ``; `` ("so far" / "partial" / "now");
- the operand order inside a column (``7+6`` or ``6+7``: the first digit is a choice);
- the opening sentence, the final connective ("so" / "thus" / "hence") and, after the
  deterministic ``the``, its subject ("sum" / "answer").
Almost every choice point directly follows a deterministic token (``,``, ``;``, a space,
``the``, ``carry``): when the pair boundary puts that deterministic token first, the MTP head
(which predicts b without seeing a) faces an irreducible choice and must fall back. The
alternatives differ in token count ("write" vs "put down", "carry 1" vs "carry the 1"), so
the parity of everything after the first choice is random: across problems each choice
point is the second token of a static pair about half of the time. Everything else (digits,
sums, carries, copies, punctuation, column names) is deterministic given the question.

Splits: a question belongs to train or test by a stable hash of its text, so the two splits
are disjoint for every seed and size; ``make_split`` draws with a seeded RNG and keeps only
questions of the requested split (without repeats).
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from collections.abc import Iterable, Sequence
from dataclasses import dataclass
from pathlib import Path

from superthoughts_ext.eval_data import SYSTEM_PROMPT

COLUMN_NAMES = ("ones", "tens", "hundreds", "thousands")
DIGIT_COUNTS = (3, 4)
QUESTION_TEMPLATE = "What is {a} + {b}?"

# (wording, weight) alternatives. Weights are skewed on purpose: a 60/25/15 choice gives the
# MTP head a max probability of ~0.6, a 50/50 one ~0.5, so a threshold sweep sees a spread.
INTROS = (
    ("Add the columns from right to left.", 0.6),
    ("Add column by column, starting from the ones.", 0.4),
)
WRITE_VERBS = (("write", 0.6), ("put down", 0.25), ("keep", 0.15))
CARRY_ONE = (("carry 1", 0.5), ("carry the 1", 0.3), ("with carry 1", 0.2))
CARRY_ZERO = (("carry 0", 0.6), ("no carry", 0.4))
PARTIAL_LABELS = (("so far", 0.5), ("partial", 0.3), ("now", 0.2))
CONNECTIVES = (("so", 0.5), ("thus", 0.3), ("hence", 0.2))
SUBJECTS = (("the sum", 0.6), ("the answer", 0.4))
# Probability of writing the second operand's digit first in a column.
SWAP_OPERANDS_P = 0.3

SPLITS = ("train", "test")
# One question in TEST_MODULUS goes to the test split (by hash), the rest to train.
TEST_MODULUS = 10


@dataclass(frozen=True)
class Problem:
    """One problem: the user's question, the chain of thought and the reference answer.

    ``solution`` ends with ``\\boxed{answer}``; ``answer`` is the sum in decimal.
    """

    question: str
    solution: str
    answer: str


def _pick(rng: random.Random, options: Sequence[tuple[str, float]]) -> str:
    return rng.choices([text for text, _ in options], weights=[w for _, w in options])[0]


def make_question(a: int, b: int) -> str:
    """The user's question for ``a + b``."""
    return QUESTION_TEMPLATE.format(a=a, b=b)


def parse_question(question: str) -> tuple[int, int]:
    """Inverse of `make_question`: the two operands of a question."""
    prefix, suffix = QUESTION_TEMPLATE.split("{a}")[0], QUESTION_TEMPLATE.split("{b}")[1]
    if not (question.startswith(prefix) and question.endswith(suffix)):
        raise ValueError(f"not a demo question: {question!r}")
    a, b = question[len(prefix):len(question) - len(suffix)].split(" + ")
    return int(a), int(b)


def render_solution(a: int, b: int, rng: random.Random) -> str:
    """Chain of thought for ``a + b`` with wording drawn from ``rng``; ends with ``\\boxed{a+b}``.

    ``a`` and ``b`` must have the same number of digits (1 to ``len(COLUMN_NAMES)``).
    Each line depends only on (a, b, column) and its own draws, never on earlier wording.
    """
    xs, ys = str(a), str(b)
    if len(xs) != len(ys) or not 1 <= len(xs) <= len(COLUMN_NAMES) or a < 0 or b < 0:
        raise ValueError(f"operands need equal widths of 1..{len(COLUMN_NAMES)} digits: {a}, {b}")
    lines = [_pick(rng, INTROS)]
    carry, partial = 0, ""
    for column, (x, y) in enumerate(zip(reversed(xs), reversed(ys))):
        first, second = (y, x) if rng.random() < SWAP_OPERANDS_P else (x, y)
        total = int(x) + int(y) + carry
        terms = f"{first}+{second}" + ("+1" if carry else "")
        carry, digit = divmod(total, 10)
        partial = f"{digit}{partial}"
        carry_text = _pick(rng, CARRY_ONE if carry else CARRY_ZERO)
        lines.append(
            f"{COLUMN_NAMES[column]}: {terms}={total}, {_pick(rng, WRITE_VERBS)} {digit}, "
            f"{carry_text}; {_pick(rng, PARTIAL_LABELS)} {partial}."
        )
    answer = f"{carry}{partial}" if carry else partial
    lines.append(f"{_pick(rng, CONNECTIVES)} {_pick(rng, SUBJECTS)} is {answer}.")
    lines.append(f"\\boxed{{{answer}}}")
    return "\n".join(lines)


def make_problem(rng: random.Random, digits: int | None = None) -> Problem:
    """Draw operands (``digits`` wide, else 3 or 4 at random) and a worded solution from ``rng``."""
    n = rng.choice(DIGIT_COUNTS) if digits is None else digits
    if not 1 <= n <= len(COLUMN_NAMES):
        raise ValueError(f"digits must be in 1..{len(COLUMN_NAMES)}, got {n}")
    low = 10 ** (n - 1) if n > 1 else 0
    a, b = rng.randint(low, 10**n - 1), rng.randint(low, 10**n - 1)
    return Problem(make_question(a, b), render_solution(a, b, rng), str(a + b))


def split_of(question: str) -> str:
    """The split ("train" or "test") a question belongs to: a stable hash, not a seed."""
    digest = hashlib.blake2b(question.encode("utf-8"), digest_size=8).digest()
    return "test" if int.from_bytes(digest, "little") % TEST_MODULUS == 0 else "train"


def make_split(name: str, n: int, seed: int = 0, digits: int | None = None) -> list[Problem]:
    """``n`` distinct problems of split ``name`` ("train" or "test"), deterministic in ``seed``.

    Test questions never occur in any train split (membership is `split_of`), whatever the
    seeds and sizes; within a split questions do not repeat.
    """
    if name not in SPLITS:
        raise ValueError(f"make_split: name must be one of {SPLITS}, got {name!r}")
    if n < 0:
        raise ValueError(f"make_split: n must be >= 0, got {n}")
    # A str seed is hashed with SHA-512 by `random`, so this is stable across processes.
    rng = random.Random(f"superthoughts-demo/{name}/{seed}")
    problems: list[Problem] = []
    seen: set[str] = set()
    budget = 50 * n + 1000
    while len(problems) < n:
        budget -= 1
        if budget < 0:
            raise ValueError(f"make_split: cannot draw {n} distinct {name} problems (digits={digits})")
        problem = make_problem(rng, digits)
        if problem.question in seen or split_of(problem.question) != name:
            continue
        seen.add(problem.question)
        problems.append(problem)
    return problems


def chat_messages(problem: Problem | str, system_prompt: str | None = SYSTEM_PROMPT) -> list[dict[str, str]]:
    """Chat messages of a problem's prompt: the Qwen2.5-Math CoT system turn and the question."""
    question = problem.question if isinstance(problem, Problem) else problem
    messages = [] if system_prompt is None else [{"role": "system", "content": system_prompt}]
    return messages + [{"role": "user", "content": question}]


def write_jsonl(problems: Iterable[Problem], path: str | os.PathLike[str]) -> Path:
    """Write {"problem", "solution", "answer"} rows (the training CLI's input format), through a
    temporary file: a run cut off mid-write leaves no partial file for a later run to trust."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    with partial.open("w", encoding="utf-8") as f:
        for p in problems:
            f.write(json.dumps({"problem": p.question, "solution": p.solution, "answer": p.answer}) + "\n")
    os.replace(partial, path)
    return path


def read_jsonl(path: str | os.PathLike[str]) -> list[Problem]:
    """Read rows written by `write_jsonl` back into problems."""
    with Path(path).open(encoding="utf-8") as f:
        rows = [json.loads(line) for line in f if line.strip()]
    return [Problem(r["problem"], r["solution"], r["answer"]) for r in rows]


def vocabulary_texts() -> list[str]:
    """Every literal text the task can show a model: wordings, question, system prompt.

    The tokenizer derives its closed vocabulary from these (plus digits), so a wording added
    here is all it takes to keep encode/decode lossless.
    """
    options = (INTROS, WRITE_VERBS, CARRY_ONE, CARRY_ZERO, PARTIAL_LABELS, CONNECTIVES, SUBJECTS)
    texts = [text for group in options for text, _ in group]
    texts += list(COLUMN_NAMES)
    texts += [QUESTION_TEMPLATE.format(a=0, b=0), SYSTEM_PROMPT, "+=:,;. is \\boxed{}"]
    return texts
