"""Embedded synthetic reasoning task for the ``superthoughts demo`` pipeline.

`task` generates column-addition problems with a worded chain of thought (and train/test
splits, JSONL rows for the training CLI); `tokenizer` builds a tiny Qwen-style chat
tokenizer over the task's closed vocabulary, so a small Qwen2 can be trained from scratch.
"""
from __future__ import annotations

from superthoughts_ext.demo.task import (
    Problem,
    chat_messages,
    make_problem,
    make_split,
    read_jsonl,
    render_solution,
    split_of,
    write_jsonl,
)


def __getattr__(name: str):
    # transformers is heavy; the generator alone should not pay for importing it.
    if name == "build_tokenizer":
        from superthoughts_ext.demo.tokenizer import build_tokenizer

        return build_tokenizer
    raise AttributeError(f"module 'superthoughts_ext.demo' has no attribute {name!r}")


__all__ = [
    "Problem",
    "build_tokenizer",
    "chat_messages",
    "make_problem",
    "make_split",
    "read_jsonl",
    "render_solution",
    "split_of",
    "write_jsonl",
]
