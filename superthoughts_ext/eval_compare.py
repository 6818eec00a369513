"""Compare two evaluation result files (baseline A vs candidate B), matched by problem id.

The paper's chain-of-thought reduction of a SuperThoughts model is measured against its
token-by-token baseline: 1 - decode steps of B / generated tokens of A.
"""
from __future__ import annotations

import json
from pathlib import Path
from typing import Any


def _read_records(path: str | Path) -> dict[str, dict[str, Any]]:
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"evaluation results not found: {path}")
    records: dict[str, dict[str, Any]] = {}
    with path.open(encoding="utf-8") as f:
        for number, line in enumerate(f, 1):
            if not line.strip():
                continue
            record = json.loads(line)
            missing = {"id", "correct", "tokens", "steps"} - record.keys()
            if missing:
                raise ValueError(f"{path}:{number}: record lacks {', '.join(sorted(missing))}")
            records[str(record["id"])] = record
    return records


def compare(a_jsonl: str | Path, b_jsonl: str | Path) -> dict[str, Any]:
    """Compare two `evaluate` outputs (A = baseline, B = candidate) on their common problems.

    Returns n (matched problems), only_in_a / only_in_b (unmatched counts), accuracy_a,
    accuracy_b, accuracy_diff (B - A), wins_b / wins_a (problems only one of them solved),
    mean_tokens_a/b, mean_steps_a/b, and cot_reduction = 1 - steps(B) / tokens(A): how much
    shorter B's decode is than A's token-by-token chain of thought.
    """
    a, b = _read_records(a_jsonl), _read_records(b_jsonl)
    common = [key for key in a if key in b]
    if not common:
        raise ValueError(f"compare: {a_jsonl} and {b_jsonl} share no problem ids")
    n = len(common)

    def mean(records: dict[str, dict[str, Any]], field: str) -> float:
        return sum(float(records[key][field]) for key in common) / n

    tokens_a = sum(float(a[key]["tokens"]) for key in common)
    steps_b = sum(float(b[key]["steps"]) for key in common)
    return {
        "a": str(a_jsonl),
        "b": str(b_jsonl),
        "n": n,
        "only_in_a": len(a) - n,
        "only_in_b": len(b) - n,
        "accuracy_a": mean(a, "correct"),
        "accuracy_b": mean(b, "correct"),
        "accuracy_diff": mean(b, "correct") - mean(a, "correct"),
        "wins_a": sum(bool(a[k]["correct"]) and not b[k]["correct"] for k in common),
        "wins_b": sum(bool(b[k]["correct"]) and not a[k]["correct"] for k in common),
        "mean_tokens_a": mean(a, "tokens"),
        "mean_tokens_b": mean(b, "tokens"),
        "mean_steps_a": mean(a, "steps"),
        "mean_steps_b": mean(b, "steps"),
        "cot_reduction": 1.0 - steps_b / tokens_a if tokens_a else 0.0,
    }


def format_comparison(result: dict[str, Any]) -> str:
    """`compare`'s result as a plain-text table."""
    rows = [
        ("", "A", "B", "B - A"),
        ("accuracy", f"{result['accuracy_a']:.4f}", f"{result['accuracy_b']:.4f}", f"{result['accuracy_diff']:+.4f}"),
        ("solved only here", str(result["wins_a"]), str(result["wins_b"]), ""),
        ("mean tokens", f"{result['mean_tokens_a']:.1f}", f"{result['mean_tokens_b']:.1f}", ""),
        ("mean decode steps", f"{result['mean_steps_a']:.1f}", f"{result['mean_steps_b']:.1f}", ""),
    ]
    widths = [max(len(row[col]) for row in rows) for col in range(4)]
    lines = [f"A: {result['a']}", f"B: {result['b']}", f"matched problems: {result['n']}"]
    if result["only_in_a"] or result["only_in_b"]:
        lines.append(f"unmatched: {result['only_in_a']} only in A, {result['only_in_b']} only in B")
    lines += ["  ".join(cell.rjust(width) for cell, width in zip(row, widths)) for row in rows]
    lines.append(f"CoT length reduction of B vs A (1 - steps_B / tokens_A): {result['cot_reduction']:.2%}")
    return "\n".join(lines)
