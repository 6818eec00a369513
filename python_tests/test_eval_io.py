"""Evaluation edge cases: stop tokens, output file names, resume and compare safety checks,
summary fields, data file formats. (The main flow: test_evaluation.py, whose tiny
tokenizer and fake generate are reused here.)
"""
from __future__ import annotations

import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("math_verify")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_evaluation import PROBLEMS, fake_generate, fake_model, make_tokenizer, read_jsonl  # noqa: E402
from tokenizers import Tokenizer, models, pre_tokenizers  # noqa: E402
from transformers import PreTrainedTokenizerFast  # noqa: E402

from superthoughts_ext.eval_data import Problem  # noqa: E402
from superthoughts_ext.evaluation import evaluate  # noqa: E402


# ---------------------------------------------------------------- stop tokens

def silent_backbone(tokenizer: PreTrainedTokenizerFast, **config: object) -> torch.nn.Module:
    """A tiny Qwen2 whose logits are all equal: greedy decoding emits id 0 (<|endoftext|>) at
    once. Its generation_config lists <|im_end|> and <|endoftext|>, as Qwen2.5 instruct's does."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    cfg = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                      num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=256, **config)
    torch.manual_seed(0)
    model = AutoModelForCausalLM.from_config(cfg).eval()
    with torch.no_grad():
        model.lm_head.weight.zero_()
    model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids(["<|im_end|>", "<|endoftext|>"])
    return model


def recording(calls: list[list[int]]):
    from superthoughts_ext.generate import generate

    def generate_fn(*args, eos_token_id, **kwargs):
        calls.append(eos_token_id)
        return generate(*args, eos_token_id=eos_token_id, **kwargs)

    return generate_fn


def test_plain_model_stops_at_its_second_eos(tmp_path: Path) -> None:
    tokenizer, calls = make_tokenizer(), []
    out = tmp_path / "plain.jsonl"
    summary = evaluate(silent_backbone(tokenizer), tokenizer, "math500", PROBLEMS[:2], mode="standard",
                       max_new_tokens=20, output_jsonl=out, progress=False, compile=False,
                       generate_fn=recording(calls))
    assert calls == [[2, 0]]  # <|im_end|> first: generate's step op stops on it
    assert [r["tokens"] for r in read_jsonl(out)] == [1, 1]
    assert summary.n_hit_limit == 0 and summary.mean_tokens == 1.0


def test_superthoughts_model_stops_at_its_backbones_eos(tmp_path: Path) -> None:
    # SuperThoughtsForCausalLM is a plain nn.Module: the stop ids live in its backbone's
    # generation_config (checkpoint.py saves them there).
    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    tokenizer, calls = make_tokenizer(), []
    eot = tokenizer.convert_tokens_to_ids("<|endoftext|>")
    backbone = silent_backbone(tokenizer, eos_token_id=eot, pad_token_id=eot)
    model = SuperThoughtsForCausalLM.from_base(backbone).eval()
    out = tmp_path / "st.jsonl"
    summary = evaluate(model, tokenizer, "math500", PROBLEMS[:2], mode="superthoughts", max_new_tokens=20,
                       output_jsonl=out, progress=False, compile=False, generate_fn=recording(calls))
    assert calls == [[2, 0]]
    assert [(r["tokens"], r["steps"], r["hit_limit"]) for r in read_jsonl(out)] == [(1, 1, False)] * 2
    assert summary.mean_steps == 1.0


LLAMA_WORDS = ["<|end_of_text|>", "<|start_header_id|>", "<|eot_id|>", "[UNK]", "system", "user", "assistant",
               "what", "is", "1", "+", "2", "so", "\\boxed{3}", "\\boxed{7}", "again"]


def llama3_tokenizer() -> PreTrainedTokenizerFast:
    """Word-level tokenizer with Llama-3 style specials: the turn ends with <|eot_id|>, the text
    with <|end_of_text|>, and there is no ChatML <|im_end|>."""
    backend = Tokenizer(models.WordLevel(vocab={w: i for i, w in enumerate(LLAMA_WORDS)}, unk_token="[UNK]"))
    backend.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(
        tokenizer_object=backend, unk_token="[UNK]", eos_token="<|eot_id|>",
        additional_special_tokens=["<|start_header_id|>", "<|end_of_text|>"],
        chat_template="{% for m in messages %}<|start_header_id|> {{ m['role'] }} {{ m['content'] }} <|eot_id|> "
                      "{% endfor %}<|start_header_id|> assistant ",
    )


def run_on_generate(tokenizer: PreTrainedTokenizerFast, calls: list[list[int]]):
    """Like generate, stops a row at any of the ids it is given; without the turn end the model
    runs on into a new turn with another boxed answer."""
    script = tokenizer.convert_tokens_to_ids(
        ["so", "\\boxed{3}", "<|eot_id|>"] + ["<|start_header_id|>", "assistant", "again", "\\boxed{7}"] * 20)

    def generate(model, input_ids, attention_mask, *, max_new_tokens, eos_token_id, **kwargs):
        calls.append(eos_token_id)
        sequence = []
        for token in script[:max_new_tokens]:
            sequence.append(token)
            if token in eos_token_id:
                break
        rows = len(input_ids)
        return SimpleNamespace(sequences=[sequence] * rows, num_tokens=[len(sequence)] * rows,
                               num_steps=[len(sequence)] * rows, num_pair_steps=[0] * rows, wall_time=0.1)

    return generate


def test_llama3_style_stop_ids_end_the_turn(tmp_path: Path) -> None:
    tokenizer, calls = llama3_tokenizer(), []
    end_of_text, eot = tokenizer.convert_tokens_to_ids(["<|end_of_text|>", "<|eot_id|>"])
    # Llama-3.x instruct order: <|end_of_text|> first, the turn end <|eot_id|> after it.
    model = SimpleNamespace(device=torch.device("cpu"),
                            generation_config=SimpleNamespace(eos_token_id=[end_of_text, eot]))
    out = tmp_path / "llama.jsonl"
    evaluate(model, tokenizer, "math500", [Problem("p", "what is 1 + 2", "3")], mode="standard",
             max_new_tokens=40, output_jsonl=out, progress=False, generate_fn=run_on_generate(tokenizer, calls))
    assert calls == [[end_of_text, eot]]
    record = read_jsonl(out)[0]
    assert (record["extracted"], record["correct"], record["tokens"], record["hit_limit"]) == ("3", True, 3, False)


def test_stop_ids_fall_back_to_the_tokenizer() -> None:
    # No EOS in any model config: the tokenizer's EOS leads, the chat stop tokens follow.
    tokenizer, calls = make_tokenizer(), []
    model = SimpleNamespace(device=torch.device("cpu"))
    evaluate(model, tokenizer, "math500", PROBLEMS[:1], mode="standard", progress=False,
             generate_fn=fake_generate(tokenizer, calls))
    assert calls[0]["eos"] == [2, 0]
    with_config = fake_model(tokenizer)
    with_config.generation_config.eos_token_id = 0  # the model's own EOS stays first
    calls.clear()
    evaluate(with_config, tokenizer, "math500", PROBLEMS[:1], mode="standard", progress=False,
             generate_fn=fake_generate(tokenizer, calls))
    assert calls[0]["eos"] == [0, 2]


# ---------------------------------------------------------------- output file names

def test_summary_names_keep_the_dots_of_run_names(tmp_path: Path) -> None:
    from superthoughts_ext.eval_compare import run_label
    from superthoughts_ext.evaluation import summary_path

    tokenizer = make_tokenizer()
    base, st = tmp_path / "qwen2.5-math-baseline", tmp_path / "qwen2.5-math-st"
    for path, mode in ((base, "standard"), (st, "superthoughts")):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, mode=mode, output_jsonl=path,
                 progress=False, generate_fn=fake_generate(tokenizer, []))
    assert summary_path(base).name == "qwen2.5-math-baseline.summary.json"
    assert run_label(base) == "qwen2.5-math-baseline [standard]"
    assert run_label(st).startswith("qwen2.5-math-st [superthoughts")
    assert summary_path("runs/st.jsonl") == summary_path("runs/st.json") == Path("runs/st.summary.json")


@pytest.fixture
def fake_cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """`superthoughts eval` over a fake SuperThoughts checkpoint and the fake generate: argv
    (up to --output, which the test adds), the generate calls and the loaded model paths."""
    from superthoughts_ext import evaluation
    from superthoughts_ext.modeling import load_tokenizer

    tokenizer, calls, loaded = make_tokenizer(), [], []
    tokenizer.save_pretrained(tmp_path / "ckpt")

    class FakeSuperThoughts(SimpleNamespace):
        def eval(self):
            return self

    def load_model(path, dtype=None, device=None):
        loaded.append(path)
        # The checkpoint's weights are float32: dtype None ("auto") loads them so.
        return FakeSuperThoughts(**vars(fake_model(tokenizer)), dtype=dtype or torch.float32)

    fake_modeling = SimpleNamespace(load_model=load_model, load_tokenizer=load_tokenizer,
                                    SuperThoughtsForCausalLM=FakeSuperThoughts)
    monkeypatch.setitem(sys.modules, "superthoughts_ext.modeling", fake_modeling)
    monkeypatch.setattr(evaluation, "_default_generate", lambda: fake_generate(tokenizer, calls))
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "problem": p.question, "answer": p.answer}) + "\n"
                            for p in PROBLEMS))
    argv = ["--model", str(tmp_path / "ckpt"), "--bench", "math500", "--data", str(data), "--device", "cpu",
            "--no-progress"]
    return SimpleNamespace(argv=argv, calls=calls, loaded=loaded)


def run_cli(argv: list[str]) -> int:
    import argparse

    from superthoughts_ext.eval_cli import add_arguments, run

    parser = argparse.ArgumentParser(prog="superthoughts eval")
    add_arguments(parser)
    return run(parser.parse_args(argv))


def test_sweep_file_names_keep_every_threshold_apart() -> None:
    from superthoughts_ext.eval_cli import sweep_output

    for a, b in [(0.9999995, 1.0), (0.12345671, 0.12345674)]:
        assert sweep_output("st.jsonl", a) != sweep_output("st.jsonl", b)
    assert sweep_output("st.jsonl", 0.9999995) == Path("st-t0.9999995.jsonl")
    assert sweep_output("st.jsonl", 1.0) == Path("st-t1.jsonl")  # short names where they are exact
    assert sweep_output("runs/qwen2.5-st", 0.99) == Path("runs/qwen2.5-st-t0.99.jsonl")
    assert sweep_output("st.json", 0.9) == Path("st-t0.9.json")
    assert sweep_output("out/.jsonl", 0.9) == Path("out/.jsonl-t0.9.jsonl")  # as run_name(".jsonl") == ".jsonl"


def test_cli_sweep_refuses_a_repeated_threshold(fake_cli: SimpleNamespace, tmp_path: Path,
                                                capsys: pytest.CaptureFixture[str]) -> None:
    from superthoughts_ext.eval_compare import run_label

    argv = fake_cli.argv + ["--output", str(tmp_path / "st.jsonl"), "--threshold"]
    assert run_cli(argv + ["0.9999995", "1.0"]) == 0
    assert sorted(p.name for p in tmp_path.glob("st-t*.jsonl")) == ["st-t0.9999995.jsonl", "st-t1.jsonl"]
    assert run_label(tmp_path / "st-t0.9999995.jsonl") == "st-t0.9999995 [superthoughts 0.9999995]"
    capsys.readouterr()
    fake_cli.loaded.clear()
    assert run_cli(argv + ["0.9", "0.5", "0.90"]) == 2
    assert "--threshold 0.9 given more than once" in capsys.readouterr().err
    assert fake_cli.loaded == []  # refused before loading the model
    for option in ("--batch-size", "--max-new-tokens"):
        assert run_cli(fake_cli.argv + [option, "0"]) == 2
        assert f"{option} (0)" in capsys.readouterr().err and fake_cli.loaded == []


# ---------------------------------------------------------------- resume

def crash_after_one_batch(tokenizer: PreTrainedTokenizerFast):
    solve, calls = fake_generate(tokenizer, []), []

    def generate(*args, **kwargs):
        calls.append(1)
        if len(calls) > 1:
            raise RuntimeError("preempted (simulated)")
        return solve(*args, **kwargs)

    return generate


RUN_A = {"model": "ckpt-A", "dtype": "auto", "data": "m.jsonl"}


@pytest.mark.parametrize("change, message", [
    ({"metadata": {**RUN_A, "model": "ckpt-B"}}, "model='ckpt-A', this run has model='ckpt-B'"),
    ({"metadata": {**RUN_A, "dtype": "float32"}}, "dtype='auto', this run has dtype='float32'"),
    ({"metadata": {**RUN_A, "data": "n.jsonl"}}, "data='m.jsonl', this run has data='n.jsonl'"),
    ({"config": SimpleNamespace(threshold=0.8, threshold_main=0.0)}, "threshold=0.7, this run has threshold=0.8"),
    ({"config": SimpleNamespace(threshold=0.7, threshold_main=0.5)}, "threshold_main=0.0, this run has threshold_main"),
])
def test_resume_refuses_records_of_another_model(tmp_path: Path, change: dict, message: str) -> None:
    tokenizer, out = make_tokenizer(), tmp_path / "st.jsonl"
    model = fake_model(tokenizer)
    model.config = SimpleNamespace(threshold=0.7, threshold_main=0.0)  # threshold None: the model's own
    metadata = RUN_A
    kwargs = dict(batch_size=3, output_jsonl=out, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        evaluate(model, tokenizer, "math500", PROBLEMS, generate_fn=crash_after_one_batch(tokenizer),
                 metadata=metadata, **kwargs)
    assert [(r["model"], r["threshold"], r["threshold_main"]) for r in read_jsonl(out)] == [("ckpt-A", 0.7, 0.0)] * 3
    if "config" in change:
        model.config = change["config"]
    with pytest.raises(ValueError, match=message.replace("(", r"\(")):
        evaluate(model, tokenizer, "math500", PROBLEMS, generate_fn=fake_generate(tokenizer, []), resume=True,
                 metadata=change.get("metadata", metadata), **kwargs)
    # The same model again (its threshold given explicitly now) continues the run.
    model.config = SimpleNamespace(threshold=0.5, threshold_main=0.0)
    summary = evaluate(model, tokenizer, "math500", PROBLEMS, generate_fn=fake_generate(tokenizer, []), resume=True,
                       threshold=0.7, metadata=metadata, **kwargs)
    assert summary.n == len(PROBLEMS)


def test_cli_resume_with_another_dtype_is_refused(fake_cli: SimpleNamespace, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    argv = fake_cli.argv + ["--output", str(tmp_path / "st.jsonl"), "--threshold", "0.9"]
    assert run_cli(argv) == 0
    assert {r["dtype"] for r in read_jsonl(tmp_path / "st.jsonl")} == {"float32"}  # as loaded, not "auto"
    capsys.readouterr()
    assert run_cli(argv + ["--resume", "--dtype", "bfloat16"]) == 2
    assert "dtype='float32', this run has dtype='bfloat16'" in capsys.readouterr().err
    fake_cli.calls.clear()
    assert run_cli(argv + ["--resume"]) == 0 and fake_cli.calls == []
    # The checkpoint's own dtype named explicitly is the same run.
    assert run_cli(argv + ["--resume", "--dtype", "float32"]) == 0 and fake_cli.calls == []


def test_cli_resume_accepts_the_same_checkpoint_under_another_spelling(
        fake_cli: SimpleNamespace, tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    out = tmp_path / "st.jsonl"
    argv = fake_cli.argv + ["--output", str(out), "--threshold", "0.9"]
    assert run_cli(argv) == 0
    assert {r["model"] for r in read_jsonl(out)} == {str((tmp_path / "ckpt").resolve())}
    monkeypatch.chdir(tmp_path)
    fake_cli.calls.clear()
    for model, data in (("ckpt/", "math.jsonl"), ("./ckpt", str(tmp_path / "math.jsonl")),
                        (str(tmp_path / "ckpt") + "/", "./math.jsonl")):
        spelled = [model if a == str(tmp_path / "ckpt") else data if a == str(tmp_path / "math.jsonl") else a
                   for a in argv]
        assert run_cli(spelled + ["--resume"]) == 0, (model, data)
    assert fake_cli.calls == []  # every problem was done: nothing decoded again


# ---------------------------------------------------------------- summary

def test_summary_states_the_budget_and_the_thresholds_used(tmp_path: Path) -> None:
    from superthoughts_ext.eval_compare import run_label
    from superthoughts_ext.evaluation import summary_path

    tokenizer = make_tokenizer()
    model = fake_model(tokenizer)
    model.config = SimpleNamespace(threshold=0.7, threshold_main=0.2)
    out = tmp_path / "st.jsonl"
    summary = evaluate(model, tokenizer, "math500", PROBLEMS, max_new_tokens=777, batch_size=3, output_jsonl=out,
                       progress=False, generate_fn=fake_generate(tokenizer, []))
    saved = json.loads(summary_path(out).read_text())
    assert (saved["threshold"], saved["threshold_main"]) == (0.7, 0.2) == (summary.threshold, summary.threshold_main)
    assert (saved["max_new_tokens"], saved["batch_size"]) == (777, 3)
    assert run_label(out) == "st [superthoughts 0.7]"
    given = evaluate(model, tokenizer, "math500", PROBLEMS, threshold=0.95, progress=False,
                     generate_fn=fake_generate(tokenizer, []))
    assert (given.threshold, given.threshold_main) == (0.95, 0.2)
    standard = evaluate(model, tokenizer, "math500", PROBLEMS, mode="standard", progress=False,
                        generate_fn=fake_generate(tokenizer, []))
    assert (standard.threshold, standard.threshold_main, standard.max_new_tokens) == (None, None, 2048)


# ---------------------------------------------------------------- data files

def test_dollar_signs_are_stripped_from_single_span_answers_only(tmp_path: Path) -> None:
    import csv

    from superthoughts_ext.eval_data import format_answer, load_problems

    assert format_answer("$4$") == "4" and format_answer(" $\\frac{1}{2}$ ") == "\\frac{1}{2}"
    assert format_answer("$x$ and $y$") == "$x$ and $y$" and format_answer("$5") == "$5"
    math = tmp_path / "m.jsonl"
    math.write_text(json.dumps({"problem": "$x^2 = 4$", "answer": "$2$"}) + "\n")
    assert load_problems("math500", math) == [Problem("0", "$x^2 = 4$", "2")]  # the question as written

    gpqa = tmp_path / "gpqa.csv"
    with gpqa.open("w", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["Record ID", "Question", "Correct Answer", "Incorrect Answer 1", "Incorrect Answer 2",
                         "Incorrect Answer 3"])
        writer.writerow(["r1", "$X$ reacts with $Y$?", "$A_2$ and $B$", "$C$ and $D$", "$E$", "$F$"])
        writer.writerow(["r2", "$Z$", "$G$", "$H$", "$I$", "$J$"])
    first, second = load_problems("gpqa_diamond", gpqa)
    assert first.question.startswith("$X$ reacts with $Y$?\n\n")
    assert f"{first.answer}) $A_2$ and $B$\n" in first.question and ") $E$\n" in first.question + "\n"
    # The correct option keeps its "$" like the others: nothing tells it apart.
    assert second.question.startswith("$Z$\n\n") and f"{second.answer}) $G$\n" in second.question


@pytest.mark.parametrize("limit", [0, -3])
def test_limit_below_one_is_refused(tmp_path: Path, limit: int, capsys: pytest.CaptureFixture[str]) -> None:
    from superthoughts_ext.eval_data import load_problems

    data = tmp_path / "m.jsonl"
    data.write_text("".join(json.dumps({"problem": p.question, "answer": p.answer}) + "\n" for p in PROBLEMS))
    with pytest.raises(ValueError, match=f"limit must be >= 1 .*got {limit}"):
        load_problems("math500", data, limit=limit)
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match="limit must be >= 1"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, limit=limit, progress=False,
                 generate_fn=fake_generate(tokenizer, []))
    assert run_cli(["--model", str(tmp_path), "--bench", "math500", "--data", str(data), "--limit", str(limit)]) == 2
    assert f"limit must be >= 1 (or left out for every problem), got {limit}" in capsys.readouterr().err


def test_data_files_with_a_bom_or_json_lines_under_json(tmp_path: Path) -> None:
    from superthoughts_ext.eval_data import load_problems

    rows = "".join(json.dumps({"id": i, "problem": f"q{i}", "answer": float(i + 1)}) + "\n" for i in range(3))
    (tmp_path / "amc.json").write_text(rows)  # datasets' Dataset.to_json("amc.json") writes JSON Lines
    (tmp_path / "amc.jsonl").write_text("\ufeff" + rows, encoding="utf-8")
    expected = [Problem(str(i), f"q{i}", str(i + 1)) for i in range(3)]
    assert load_problems("amc23", tmp_path / "amc.json") == load_problems("amc23", tmp_path / "amc.jsonl") == expected
    (tmp_path / "g.csv").write_text("\ufeffQuestion,Correct Answer,Incorrect Answer 1,Incorrect Answer 2,"
                                    "Incorrect Answer 3\nq,a,b,c,d\n", encoding="utf-8")
    assert load_problems("gpqa_diamond", tmp_path / "g.csv")[0].question.startswith("q\n\n")


@pytest.mark.parametrize("separator", ["\u2028", "\u2029", "\u0085"])
def test_json_lines_keep_raw_line_separators_inside_strings(tmp_path: Path, separator: str) -> None:
    # JSON allows these raw inside strings and json.dumps(ensure_ascii=False) writes them so;
    # str.splitlines would cut the row in two.
    from superthoughts_ext.eval_data import load_problems

    rows = [{"problem": f"a{separator}b", "answer": "1"}, {"problem": "c", "answer": "2"}]
    text = "".join(json.dumps(row, ensure_ascii=False) + "\r\n" for row in rows)
    assert separator in text
    for name in ("rows.jsonl", "rows.json"):
        (tmp_path / name).write_text(text, encoding="utf-8", newline="")
        expected = [Problem("0", f"a{separator}b", "1"), Problem("1", "c", "2")]
        assert load_problems("math500", tmp_path / name) == expected


def test_resume_reads_records_holding_a_raw_line_separator(tmp_path: Path) -> None:
    # evaluate writes records with ensure_ascii=False: a U+2028 in a prompt or an output stays raw.
    tokenizer, out = make_tokenizer(), tmp_path / "st.jsonl"
    problems = [Problem(p.id, p.question + " \u2028", p.answer) for p in PROBLEMS]
    kwargs = dict(batch_size=3, output_jsonl=out, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", problems, generate_fn=crash_after_one_batch(tokenizer),
                 **kwargs)
    assert "\u2028" in out.read_text(encoding="utf-8")
    calls: list[dict] = []
    summary = evaluate(fake_model(tokenizer), tokenizer, "math500", problems, resume=True,
                       generate_fn=fake_generate(tokenizer, calls), **kwargs)
    assert [c["batch"] for c in calls] == [3, 1] and summary.n == len(problems)


def test_json_file_of_one_row_and_a_list_followed_by_junk(tmp_path: Path) -> None:
    from superthoughts_ext.eval_data import load_problems

    # datasets' to_json of a one-row dataset: JSON Lines of one line, i.e. one object.
    (tmp_path / "one.json").write_text(json.dumps({"problem": "q", "answer": "1"}) + "\n")
    assert load_problems("math500", tmp_path / "one.json") == [Problem("0", "q", "1")]
    # A list and then more: broken JSON, said so with the line of the junk (not JSON Lines errors).
    (tmp_path / "junk.json").write_text('[{"problem": "q", "answer": "1"}]\n]\n')
    with pytest.raises(ValueError, match=r"junk.json:2: not valid JSON \(Extra data"):
        load_problems("math500", tmp_path / "junk.json")
    (tmp_path / "scalar.json").write_text("3\n")
    with pytest.raises(ValueError, match=r"scalar.json: expected a JSON list of objects"):
        load_problems("math500", tmp_path / "scalar.json")


def test_data_parse_errors_name_the_file_and_line(tmp_path: Path) -> None:
    from superthoughts_ext.eval_data import load_problems

    (tmp_path / "bad.jsonl").write_text('{"problem": "q", "answer": "1"}\n{"problem": "q2", "answer": \n')
    with pytest.raises(ValueError, match=r"bad.jsonl:2: not a JSON object"):
        load_problems("math500", tmp_path / "bad.jsonl")
    (tmp_path / "bad.json").write_text('[\n  {"problem": "q", "answer": "1"},\n  {"problem": "q2",}\n]\n')
    with pytest.raises(ValueError, match=r"bad.json:3: not valid JSON"):
        load_problems("math500", tmp_path / "bad.json")
    (tmp_path / "list.jsonl").write_text('["q", "1"]\n')
    with pytest.raises(ValueError, match=r"list.jsonl:1: expected a JSON object, got list"):
        load_problems("math500", tmp_path / "list.jsonl")


def test_printed_summary_does_not_call_its_own_ratio_the_cot_reduction() -> None:
    from superthoughts_ext.evaluation import format_summary

    tokenizer = make_tokenizer()
    summary = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, threshold=0.9, progress=False,
                       generate_fn=fake_generate(tokenizer, []))
    line = format_summary(summary)
    assert "CoT reduction" not in line  # the paper's metric is against the baseline: `compare`
    assert f"steps saved vs tokens (this run) {summary.cot_reduction:.2%}" in line
    # Cut off by the token budget or by the model's context (generate ends a row at either).
    assert f"cut off (token budget or context) {summary.n_hit_limit}," in line and "max_new_tokens" not in line


def test_cli_threshold_sweep_loads_the_model_once(fake_cli: SimpleNamespace, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from superthoughts_ext.eval_compare import summary_path

    out = tmp_path / "runs" / "st.jsonl"
    argv = [*fake_cli.argv, "--output", str(out), "--threshold"]
    calls = fake_cli.calls
    assert run_cli(argv + ["0.9", "0.999"]) == 0
    assert fake_cli.loaded == [str(tmp_path / "ckpt")]
    assert sorted({c["threshold"] for c in calls}) == [0.9, 0.999]
    assert {c["compile"] for c in calls} == {"auto"}
    outputs = [tmp_path / "runs" / "st-t0.9.jsonl", tmp_path / "runs" / "st-t0.999.jsonl"]
    for path, threshold in zip(outputs, (0.9, 0.999)):
        assert len(read_jsonl(path)) == len(PROBLEMS)
        assert json.loads(summary_path(path).read_text())["threshold"] == threshold
    assert not out.exists()
    printed = capsys.readouterr().out
    assert f"--compare BASELINE.jsonl {outputs[0]} {outputs[1]} --plot" in printed
    # One threshold keeps the plain output name; --compile reaches generate.
    calls.clear()
    assert run_cli(argv + ["0.99", "--compile"]) == 0 and out.is_file()
    assert {c["compile"] for c in calls} == {True}
    # --resume finds every problem done; with other settings it refuses the file.
    calls.clear()
    assert run_cli(argv + ["0.99", "--resume"]) == 0 and calls == []
    capsys.readouterr()
    assert run_cli(argv + ["0.5", "--resume"]) == 2
    assert "threshold=0.99, this run has threshold=0.5" in capsys.readouterr().err
    assert run_cli(argv + ["0.9", "1.5"]) == 2
    assert "must lie in [0, 1], got 0.9 1.5" in capsys.readouterr().err
    assert run_cli(argv + ["0.9", "--mode", "pairs"]) == 2
    assert "applies to superthoughts mode, not pairs" in capsys.readouterr().err
