"""Rows of chat messages as training and held-out data (--messages-field, chat_rows.py): the
examples their problem/solution copy gives, through the same encode path and so the same checks
and drops; system turns, multi-turn rows, missing roles and content that is not a string, each
refused naming the file and line (or row, or parquet row index). The option's own checks, and one
step of a real run on parquet rows of messages with held-out rows of them.
"""
from __future__ import annotations

import re
from pathlib import Path

import pytest

pytest.importorskip("transformers")
from test_data_jsonl import word_tokenizer, write_jsonl  # noqa: E402
from test_train import ONE_STEP, make_model, make_tokenizer  # noqa: E402
from test_train import ROWS as SUM_ROWS  # noqa: E402

from superthoughts_ext import cli, train_data  # noqa: E402
from superthoughts_ext.train import TrainOptions, options_from_args, train  # noqa: E402
from superthoughts_ext.train_run_settings import run_settings  # noqa: E402

SYSTEM = "what is"
ROWS = [{"problem": "what is two", "solution": "so four"}, {"problem": "what", "solution": "four"}]


def chat(problem: str, solution: str, system: str | None = None) -> list[dict[str, str]]:
    turns = [{"role": "user", "content": problem}, {"role": "assistant", "content": solution}]
    return ([{"role": "system", "content": system}] if system is not None else []) + turns


def as_messages(rows: list[dict[str, str]], system: str | None = None) -> list[dict]:
    return [{"messages": chat(row["problem"], row["solution"], system), "source": "x"} for row in rows]


def load(data, *, system_prompt: str | None = SYSTEM, **kwargs):
    return train_data.load_examples(data, word_tokenizer(), problem_field="problem", solution_field="solution",
                                    system_prompt=system_prompt, max_length=kwargs.pop("max_length", None),
                                    messages_field=kwargs.pop("messages_field", "messages"), **kwargs)


def test_message_rows_give_the_examples_of_their_problem_solution_copy(tmp_path: Path) -> None:
    expected = list(load(ROWS, messages_field=None))
    assert list(load(as_messages(ROWS))) == expected
    assert list(load(write_jsonl(tmp_path / "m.jsonl", as_messages(ROWS)))) == expected
    pa = pytest.importorskip("pyarrow", reason="pyarrow writes the parquet file (pip install pyarrow)")
    import pyarrow.parquet as pq

    pq.write_table(pa.Table.from_pylist(as_messages(ROWS)), tmp_path / "m.parquet")
    examples = load(tmp_path / "m.parquet")
    assert list(examples) == expected and examples.numbers == [0, 1]


def test_rows_from_pandas_hold_their_messages_as_arrays(tmp_path: Path) -> None:
    # pd.read_parquet(...).to_dict("records"): a list column's cells are numpy arrays of dicts.
    np = pytest.importorskip("numpy")
    rows = [{**row, "messages": np.array(row["messages"], dtype=object)} for row in as_messages(ROWS)]
    assert list(load(rows)) == list(load(ROWS, messages_field=None))
    with pytest.raises(ValueError, match=r"train: row 1: 'messages' holds the turns user; "):
        load([{"messages": np.array(chat("what", "four")[:1], dtype=object)}])


def test_a_system_turn_is_taken_only_when_it_is_the_runs_system_prompt(tmp_path: Path) -> None:
    expected = list(load(ROWS, messages_field=None))
    assert list(load(as_messages(ROWS, system=SYSTEM + "\n"))) == expected  # whitespace around it aside
    other = write_jsonl(tmp_path / "m.jsonl", as_messages(ROWS[:1]) + as_messages(ROWS[1:], system="two"))
    with pytest.raises(ValueError, match=r"m\.jsonl:2: messages\[0\] is the system turn 'two', and the run's "
                                         r"--system-prompt is 'what is': .*pass this text as --system-prompt"):
        load(other)
    # Both texts whole and quoted (the default prompt is 70 characters), a long one cut with "...".
    default = "Please reason step by step, and put your final answer within \\boxed{}."
    with pytest.raises(ValueError, match=r"system turn 'z+'\.\.\., and the run's --system-prompt is "
                                         + re.escape(repr(default)) + ":"):
        load(as_messages(ROWS, system="z" * 100), system_prompt=default)
    # --template-system-prompt: the template writes its default, which no row can be said to match.
    with pytest.raises(ValueError, match=r"row 1: messages\[0\] is the system turn 'what is', and the run sends "
                                         r"none of its own \(--template-system-prompt\)"):
        load(as_messages(ROWS, system=SYSTEM), system_prompt=None)


@pytest.mark.parametrize(("messages", "message"), [
    (chat("what", "four") + chat("two", "four"), r"'messages' holds the turns user, assistant, user, assistant; a row "
                                                 r"is one exchange: \[system,\] user, assistant \(evaluation asks one"),
    (chat("what", "four")[:1], r"'messages' holds the turns user; a row is one exchange"),
    (chat("what", "four")[::-1], r"'messages' holds the turns assistant, user; a row is one exchange"),
    ([], r"'messages' holds the turns none"),
    ([{"content": "what"}], r"messages\[0\] has no 'role'; it has 'content'"),
    ([{"role": "user"}], r"messages\[0\] has no 'content'; it has 'role'"),
    ([{"role": "tool", "content": "4"}], r"messages\[0\] has the role 'tool'; roles are system, user, assistant"),
    ([{"role": "user", "content": [{"type": "text", "text": "what"}]}], r"messages\[0\] \(user\) content is list, "
                                                                          r"not a string"),
    (["what", "four"], r"messages\[0\] is str, not a message"),
    ('[{"role": "user", "content": "what"}]', r"field 'messages' is str, not a list of messages.*JSON-encoded"),
    ([{"role": "user", "content": "what"}, {"role": "assistant", "content": "\ud83d"}],
     r"messages assistant turn holds an unpaired UTF-16 surrogate"),
], ids=["multi-turn", "no-assistant", "order", "empty", "no-role", "no-content", "other-role", "content-parts",
        "not-messages", "json-string", "surrogate"])
def test_a_row_that_is_not_one_exchange_is_refused_naming_it(tmp_path: Path, messages, message: str) -> None:
    path = write_jsonl(tmp_path / "m.jsonl", as_messages(ROWS) + [{"messages": "x"}])
    rows = as_messages(ROWS) + [{"messages": messages}]
    with pytest.raises(ValueError, match=rf"^train: row 3: {message}"):
        load(rows)
    if "surrogate" not in message:  # json.dumps writes a lone surrogate as an escape; the file says the same
        path = write_jsonl(tmp_path / "m.jsonl", rows)
        with pytest.raises(ValueError, match=rf"m\.jsonl:3: {message}"):
            load(path, held_out=True)


def test_message_rows_meet_every_check_of_problem_solution_rows() -> None:
    # The same encode path: an empty answer and a long row are dropped and named, EOS inside is an error.
    rows = as_messages(ROWS) + [{"messages": chat("what", "  ")}] + as_messages([{"problem": "what is two",
                                                                                  "solution": "so so so four"}])
    with pytest.warns(UserWarning) as caught:
        examples = load(rows, max_length=16)
    assert examples.numbers == [1, 2]
    said = [str(w.message) for w in caught]
    assert any("dropped 1 row(s) with an empty assistant turn (rows [3])" in text for text in said)
    assert any("dropped 1 row(s) longer than max_length=16 tokens (rows [4])" in text for text in said)
    with pytest.raises(ValueError, match=r"train: row 1: the solution holds the EOS token '<\|im_end\|>' before"):
        load([{"messages": chat("what", "four <|im_end|> two")}])
    with pytest.raises(ValueError, match=r"train: row 1: no field 'messages'; the row has 'problem', 'solution' "
                                         r"\(--messages-field names another\)"):
        load(ROWS)


def test_messages_field_is_refused_with_the_fields_it_replaces_and_with_tokenised_rows() -> None:
    common = dict(model="m", data="d.jsonl", output_dir="o")
    with pytest.raises(ValueError, match=r"TrainOptions: problem_field applies to problem/solution rows, not to "
                                         r"messages_field rows"):
        TrainOptions(**common, messages_field="messages", problem_field="question")
    with pytest.raises(ValueError, match=r"messages_field must name a field"):
        TrainOptions(**common, messages_field="")
    tokenised = [{"prompt_ids": [1, 2], "response_ids": [2]}]
    with pytest.raises(ValueError, match=r"train: messages_field applies to text rows; these rows are already"):
        train_data.load_examples(tokenised, word_tokenizer(), problem_field="problem", solution_field="solution",
                                 system_prompt=None, max_length=None, text_options=["messages_field"])


def test_messages_flag_sets_the_option_and_the_resume_record() -> None:
    args = cli.build_parser(["train"]).parse_args(["train", "--model", "m", "--data", "d.parquet", "--output", "o",
                                                   "--messages-field", "conversation"])
    options = options_from_args(args)
    assert options.messages_field == "conversation"
    # A resume with other fields would read other texts: recorded with the data's digest.
    assert run_settings(options, world_size=1)["--messages-field"] == "conversation"
    with pytest.raises(ValueError, match=r"train: --solution-field applies to problem/solution rows, not to "
                                         r"--messages-field rows"):
        options_from_args(cli.build_parser(["train"]).parse_args(
            ["train", "--model", "m", "--data", "d", "--output", "o", "--messages-field", "m",
             "--solution-field", "answer"]))


def test_a_run_trains_on_parquet_message_rows_as_on_problem_solution_rows(tmp_path: Path) -> None:
    pa = pytest.importorskip("pyarrow", reason="pyarrow writes the parquet files (pip install pyarrow)")
    import pyarrow.parquet as pq

    tok = make_tokenizer()
    pq.write_table(pa.Table.from_pylist(as_messages(SUM_ROWS)), tmp_path / "train.parquet")
    pq.write_table(pa.Table.from_pylist(as_messages(SUM_ROWS[:3])), tmp_path / "val.parquet")
    losses = []
    for name, data, eval_data, field in (("messages", tmp_path / "train.parquet", tmp_path / "val.parquet",
                                          "messages"), ("fields", SUM_ROWS, SUM_ROWS[:3], None)):
        result = train(TrainOptions(model=make_model("llama", len(tok)), tokenizer=tok, data=data, eval_data=eval_data,
                                    messages_field=field, output_dir=tmp_path / name, **ONE_STEP))
        assert (result.num_examples, result.num_eval_examples) == (len(SUM_ROWS), 3)
        losses.append([(e.get("loss"), e.get("eval_loss")) for e in result.log_history])
    assert losses[0] == losses[1]
