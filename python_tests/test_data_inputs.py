"""Training data as other tools leave it: files that are not UTF-8 (Latin-1 text, arrow),
`datasets` folders, and chat templates that refuse a system message. Each must fail naming the
file and line and saying what to do. (The JSONL reader itself: test_data_jsonl.py.)
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("transformers")
from test_data_jsonl import CHATML, word_tokenizer, write_jsonl  # noqa: E402

from superthoughts_ext import train_data  # noqa: E402
from superthoughts_ext.data_jsonl import load_jsonl_examples  # noqa: E402

# Gemma-style: a template that raises on a system turn instead of writing one.
NO_SYSTEM = ("{% for m in messages %}{% if m['role'] == 'system' %}"
             "{{ raise_exception('System role not supported') }}{% endif %}{% endfor %}" + CHATML)


@pytest.mark.parametrize("progress", [False, True], ids=["no-bar", "bar"])
def test_non_utf8_file_names_its_line(tmp_path: Path, progress: bool) -> None:
    # The bar counts the rows first: that read must name the line too.
    path = tmp_path / "latin1.jsonl"
    rows = [{"problem": "what", "solution": "four"}, {"problem": "what café", "solution": "four"}]
    path.write_bytes("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows).encode("latin-1"))
    with pytest.raises(ValueError, match=r"latin1\.jsonl:2: not UTF-8 text \(byte 0xe9\); the data must be JSON Lines"):
        load_jsonl_examples(path, word_tokenizer(), progress=progress)


def test_binary_file_is_named_with_the_way_to_convert_it(tmp_path: Path) -> None:
    # An Arrow stream, as save_to_disk writes its shards (parquet is read: test_data_parquet.py).
    path = tmp_path / "data-00000-of-00001.arrow"
    path.write_bytes(b"\xff\xff\xff\xff\x10\x01\x00\x00\x10\x00\x00\x00\n" * 4)
    with pytest.raises(ValueError, match=r"00001\.arrow:1: not UTF-8 text .*JSON Lines in UTF-8 or parquet, "
                                         r"not another binary format such as arrow .*Dataset\.to_parquet\(path\)"):
        train_data.load_examples(path, word_tokenizer(), problem_field="problem", solution_field="solution",
                                 system_prompt=None, max_length=None)


def test_a_directory_without_data_files_is_named_as_such(tmp_path: Path) -> None:
    # A directory is read as its .jsonl / .parquet files (test_data_shards.py); save_to_disk leaves Arrow files.
    def load(path: Path):
        return train_data.load_examples(path, word_tokenizer(), problem_field="problem", solution_field="solution",
                                        system_prompt=None, max_length=None)

    (tmp_path / "saved").mkdir()
    for name in ("data-00000-of-00001.arrow", "dataset_info.json", "state.json"):
        (tmp_path / "saved" / name).write_text("{}")
    with pytest.raises(ValueError, match=r"saved' is a `datasets` save_to_disk folder \(Arrow files\); train reads "
                                         r"JSON Lines or parquet: .*Dataset\.to_parquet\(path\)"):
        load(tmp_path / "saved")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"empty' holds no \.jsonl or \.parquet file \(it holds nothing\)"):
        load(tmp_path / "empty")


def test_template_refusing_a_system_message_names_the_line_and_the_flag(tmp_path: Path) -> None:
    tok = word_tokenizer()
    tok.chat_template = NO_SYSTEM
    path = write_jsonl(tmp_path / "d.jsonl", [{"problem": "what", "solution": "four"}])
    with pytest.raises(ValueError, match=r"d\.jsonl:1: the chat template refuses a system message "
                                         r"\(System role not supported\); train with --template-system-prompt"):
        load_jsonl_examples(path, tok, system_prompt="system")
    rows = [{"problem": "what", "solution": "four"}]
    with pytest.raises(ValueError, match=r"train: row 1: the chat template refuses a system message"):
        train_data.load_examples(rows, tok, problem_field="problem", solution_field="solution",
                                 system_prompt="system", max_length=None)
    # Without a system message of ours the template renders.
    assert load_jsonl_examples(path, tok, system_prompt=None)[0]["response_ids"] == tok.convert_tokens_to_ids(
        ["four", "<|im_end|>"])


@pytest.mark.parametrize("solution", ["so <|endoftext|> four", "four <|endoftext|>"])
def test_a_solution_holding_another_stop_token_names_it(tmp_path: Path, solution: str) -> None:
    # Decoding also stops on <|endoftext|> (stop_token_ids): trained on, the model learnt to stop mid-answer.
    rows = [{"problem": "what", "solution": "four"}, {"problem": "what", "solution": solution}]
    with pytest.raises(ValueError, match=r"stop\.jsonl:2: the solution holds the stop token '<\|endoftext\|>', on "
                                         "which decoding ends"):
        load_jsonl_examples(write_jsonl(tmp_path / "stop.jsonl", rows), word_tokenizer())


@pytest.mark.parametrize("name, text, hint", [
    ("rows.csv", "problem,solution\n1+1,2\n", "training data is JSON Lines (.jsonl), one object per line"),
    ("one_line.jsonl", '[{"problem": "a", "solution": "b"}]\n', "expected a JSON object, got list; expected JSON Lines"),
])
def test_training_files_of_another_format_say_so(tmp_path: Path, name: str, text: str, hint: str) -> None:
    path = tmp_path / name
    path.write_text(text)
    with pytest.raises(ValueError, match=hint.replace("(", r"\(").replace(")", r"\)").replace(".", r"\.")):
        load_jsonl_examples(path, word_tokenizer())
