"""Evaluation edge cases: stop tokens, output and summary file names, summary fields, resume
safety checks. (The main flow: test_evaluation.py, whose tiny tokenizer and fake generate
are reused here; data files: test_eval_data.py; the CLI: test_eval_cli.py.)
"""
from __future__ import annotations

import json
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


# ---------------------------------------------------------------- output and summary files

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
    # Each records name has its own summary: st.json's went to st.summary.json, over st.jsonl's.
    assert summary_path("runs/st.jsonl") == Path("runs/st.summary.json")
    assert summary_path("runs/st.json") == Path("runs/st.json.summary.json")


def test_runs_named_st_jsonl_and_st_json_keep_their_own_summaries(tmp_path: Path) -> None:
    from superthoughts_ext.eval_compare import run_label
    from superthoughts_ext.evaluation import summary_path

    tokenizer = make_tokenizer()
    for name, mode in (("st.jsonl", "superthoughts"), ("st.json", "pairs")):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, mode=mode, output_jsonl=tmp_path / name,
                 progress=False, generate_fn=fake_generate(tokenizer, []))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st.json", "st.json.summary.json", "st.jsonl",
                                                          "st.summary.json"]
    assert run_label(tmp_path / "st.jsonl").startswith("st [superthoughts")  # was "st [pairs]": st.json's summary
    assert run_label(tmp_path / "st.json") == "st [pairs]"
    assert json.loads(summary_path(tmp_path / "st.jsonl").read_text())["records"] == str(tmp_path / "st.jsonl")


def test_a_summary_an_older_version_wrote_is_still_read_and_replaced(tmp_path: Path) -> None:
    from superthoughts_ext.eval_compare import run_label
    from superthoughts_ext.eval_files import existing_summary

    tokenizer = make_tokenizer()
    out = tmp_path / "st.json"
    evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, mode="pairs", output_jsonl=out,
             progress=False, generate_fn=fake_generate(tokenizer, []))
    legacy = tmp_path / "st.summary.json"
    (tmp_path / "st.json.summary.json").rename(legacy)  # where versions before kept st.json's summary
    assert existing_summary(out) == legacy and run_label(out) == "st [pairs]"
    # The old name is st.jsonl's too: a summary there that names st.jsonl is not st.json's.
    stranger = json.loads(legacy.read_text())
    legacy.write_text(json.dumps({**stranger, "records": str(tmp_path / "st.jsonl")}))
    assert existing_summary(out) is None and run_label(out) == "st"
    legacy.write_text(json.dumps(stranger))
    # A run starting over on the file removes the old summary (it would describe the earlier run
    # until the new one is written) and writes its own under the new name.
    evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, mode="standard", output_jsonl=out,
             overwrite=True, progress=False, generate_fn=fake_generate(tokenizer, []))
    assert not legacy.exists() and existing_summary(out) == tmp_path / "st.json.summary.json"
    assert run_label(out) == "st [standard]"


def test_an_older_versions_summary_of_st_json_is_not_st_jsonls(tmp_path: Path) -> None:
    # Versions before wrote both runs' summaries to st.summary.json: naming st.json (there beside
    # st.jsonl) it is st.json's, which st.jsonl's regrade rewrote and its run then replaced.
    from superthoughts_ext.eval_files import existing_summary

    tokenizer = make_tokenizer()
    for name in ("st.jsonl", "st.json"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS[:1], mode="standard",
                 output_jsonl=tmp_path / name, progress=False, generate_fn=fake_generate(tokenizer, []))
    legacy = tmp_path / "st.summary.json"
    (tmp_path / "st.json.summary.json").replace(legacy)  # st.json's, where versions before kept it
    assert existing_summary(tmp_path / "st.json") == legacy and existing_summary(tmp_path / "st.jsonl") is None
    with pytest.raises(ValueError, match=r"evaluate: .*/st.summary.json, the summary file of .*/st.jsonl, holds "
                                         r"the summary of .*/st.json \(where versions before kept it\); move it to "
                                         r".*/st.json.summary.json"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS[:1], mode="standard", overwrite=True,
                 output_jsonl=tmp_path / "st.jsonl", progress=False, generate_fn=fake_generate(tokenizer, []))
    assert json.loads(legacy.read_text())["records"] == str(tmp_path / "st.json")


def test_records_that_would_share_a_summary_are_refused_naming_both(tmp_path: Path) -> None:
    from superthoughts_ext.eval_files import existing_summary

    tokenizer = make_tokenizer()

    def run(name: str, overwrite: bool = False) -> None:
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS[:1], mode="standard", overwrite=overwrite,
                 output_jsonl=tmp_path / name, progress=False, generate_fn=fake_generate(tokenizer, []))

    run("st.jsonl")
    with pytest.raises(ValueError, match=r"evaluate: .*/st and .*/st.jsonl would share the summary file "
                                         r".*/st.summary.json; give this run's records another name"):
        run("st")
    with pytest.raises(ValueError, match=r"evaluate: .*/st.summary.json is named like a summary file \(of st.jsonl\)"):
        run("st.summary.json")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["st.jsonl", "st.summary.json"]
    (tmp_path / "model").mkdir()  # a folder named like the records' stem is no records file
    run("model.jsonl")
    # A link st -> st.jsonl is that file, not another: the summary is its own under either name.
    (tmp_path / "st").symlink_to("st.jsonl")
    run("st.jsonl", overwrite=True)
    run("st", overwrite=True)
    assert existing_summary(tmp_path / "st") == tmp_path / "st.summary.json" == existing_summary(tmp_path / "st.jsonl")


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
    # An interrupted run has no summary yet: its records carry the same settings.
    summary_path(out).unlink()
    records = {str(i): json.loads(line) for i, line in enumerate(out.read_text().splitlines())}
    assert run_label(out) == "st" and run_label(out, records) == "st [superthoughts 0.7]"
    given = evaluate(model, tokenizer, "math500", PROBLEMS, threshold=0.95, progress=False,
                     generate_fn=fake_generate(tokenizer, []))
    assert (given.threshold, given.threshold_main) == (0.95, 0.2)
    standard = evaluate(model, tokenizer, "math500", PROBLEMS, mode="standard", progress=False,
                        generate_fn=fake_generate(tokenizer, []))
    assert (standard.threshold, standard.threshold_main, standard.max_new_tokens) == (None, None, 2048)
    # A config without threshold_main: generate decodes with 0.0, and the summary says so.
    model.config = SimpleNamespace(threshold=0.7)
    older = evaluate(model, tokenizer, "math500", PROBLEMS, progress=False, generate_fn=fake_generate(tokenizer, []))
    assert (older.threshold, older.threshold_main) == (0.7, 0.0)


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
    ({"system_prompt": None}, "system_prompt='Please reason step by step, .*', this run has system_prompt=None"),
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
                 metadata=change.get("metadata", metadata), **{key: change[key] for key in change
                                                                if key == "system_prompt"}, **kwargs)
    # The same model again (its threshold given explicitly now) continues the run.
    model.config = SimpleNamespace(threshold=0.5, threshold_main=0.0)
    summary = evaluate(model, tokenizer, "math500", PROBLEMS, generate_fn=fake_generate(tokenizer, []), resume=True,
                       threshold=0.7, metadata=metadata, **kwargs)
    assert summary.n == len(PROBLEMS)


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


def test_resume_drops_a_last_line_torn_inside_a_character(tmp_path: Path) -> None:
    # The crash can cut the last record inside a character ("π" is two bytes in UTF-8): reading the
    # file failed with a bare UnicodeDecodeError, and the run could not be resumed.
    tokenizer, out = make_tokenizer(), tmp_path / "st.jsonl"
    kwargs = dict(batch_size=3, output_jsonl=out, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=crash_after_one_batch(tokenizer),
                 **kwargs)
    with out.open("ab") as f:
        f.write('{"index": 6, "id": "p00", "output": "so π'.encode()[:-1])
    calls: list[dict] = []
    summary = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, resume=True,
                       generate_fn=fake_generate(tokenizer, calls), **kwargs)
    assert [c["batch"] for c in calls] == [3, 1] and summary.n == len(PROBLEMS)


def test_resume_keeps_the_earlier_records_on_disk_before_decoding(tmp_path: Path) -> None:
    # Resuming truncates the file and writes the kept records back: a process killed (SIGKILL, OOM,
    # preemption) in the warm-up or the first batch must still leave them there.
    tokenizer, out = make_tokenizer(), tmp_path / "st.jsonl"
    kwargs = dict(batch_size=3, output_jsonl=out, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=crash_after_one_batch(tokenizer),
                 **kwargs)
    kept = read_jsonl(out)
    on_disk = []

    def killed(*args, **kwargs):
        on_disk.append(read_jsonl(out))
        raise KeyboardInterrupt  # stands in for the kill: nothing after this point may matter

    with pytest.raises(KeyboardInterrupt):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=killed, resume=True, **kwargs)
    assert len(kept) == 3 and on_disk == [kept]


@pytest.mark.parametrize("line", ["5", "[1, 2]", '{"bench": "math500", "id": [1]}', '{"bench": "math500"}'])
def test_resume_names_a_line_that_is_no_record(tmp_path: Path, line: str) -> None:
    # Another file given as the output (a number per line, lists): a bare TypeError before.
    tokenizer, out = make_tokenizer(), tmp_path / "st.jsonl"
    out.write_text(line + "\n" + line + "\n", encoding="utf-8")  # not the last line: not taken for a torn one
    with pytest.raises(ValueError, match=r"st.jsonl:1 is not a record of `superthoughts eval` \(a JSON object "):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=fake_generate(tokenizer, []),
                 resume=True, batch_size=3, output_jsonl=out, progress=False)


def test_resume_takes_a_record_with_a_number_as_its_id_for_a_record(tmp_path: Path) -> None:
    # An int id is a record's (of a problem not in this run): named as such, not as "no record".
    tokenizer, out = make_tokenizer(), tmp_path / "st.jsonl"
    out.write_text('{"bench": "math500", "id": 5}\n{"bench": "math500", "id": 5}\n', encoding="utf-8")
    with pytest.raises(ValueError) as caught:
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=fake_generate(tokenizer, []),
                 resume=True, batch_size=3, output_jsonl=out, progress=False)
    assert "st.jsonl:1" in str(caught.value) and "is not a record of" not in str(caught.value)


def test_resume_names_records_of_an_older_version_as_such(tmp_path: Path) -> None:
    # A record as c3ca857 (2026-11-24) wrote it: threshold None for the model's own (the thresholds
    # used were not recorded yet), no threshold_main, model, dtype, data or system_prompt. The
    # refusal said "written with threshold=None, this run has threshold=0.7", taking the same
    # command for a run of another threshold; the version difference comes first.
    tokenizer, out = make_tokenizer(), tmp_path / "st.jsonl"
    model = fake_model(tokenizer)
    model.config = SimpleNamespace(threshold=0.7, threshold_main=0.0)
    problem = PROBLEMS[0]
    out.write_text(json.dumps({
        "index": 0, "id": problem.id, "prompt": "p", "output": "\\boxed{1}", "extracted": "1",
        "reference": problem.answer, "correct": False, "tokens": 4, "steps": 3, "pair_steps": 1, "hit_limit": False,
        "time": 0.1, "bench": "math500", "mode": "superthoughts", "threshold": None, "max_new_tokens": 2048}) + "\n")
    with pytest.raises(ValueError, match=r"st.jsonl:1 has no threshold_main \(written by an older version\?\)"):
        evaluate(model, tokenizer, "math500", PROBLEMS, generate_fn=fake_generate(tokenizer, []), resume=True,
                 batch_size=3, output_jsonl=out, progress=False)


def test_problems_that_met_non_finite_logits_are_named_once(recwarn: pytest.WarningsRecorder) -> None:
    # generate's warning named rows of a batch (meaningless to an eval) and came once per batch,
    # on the progress bar's line: the run names the problems, once, after the bar.
    from superthoughts_ext.generate import NonFiniteLogitsWarning

    tokenizer = make_tokenizer()
    solve = fake_generate(tokenizer, [])

    def overflowing(*args, **kwargs):  # the batch's last row met them
        result = solve(*args, **kwargs)
        result.nonfinite_rows = [len(result.sequences) - 1]
        return result

    evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS[:5], batch_size=2, progress=False,
             generate_fn=overflowing)
    warned = [str(w.message) for w in recwarn if w.category is NonFiniteLogitsWarning]
    assert len(warned) == 1 and warned[0].startswith("evaluate: 3 problems met main-head logits"), warned
    named = warned[0].split(" got the pad id there: ", 1)[1].split("; load the model in bfloat16 or float32")[0]
    assert len(named.split(", ")) == 3 and set(named.split(", ")) <= {p.id for p in PROBLEMS[:5]}, named
