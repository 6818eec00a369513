"""The `superthoughts eval` command: a plain checkpoint evaluated end to end, usage errors,
threshold sweeps (one model load, one output file per threshold), --resume under other
spellings and dtypes, and --compare / --plot. (CPU only: a fake checkpoint loader and the
tiny tokenizer and fake generate of test_evaluation.py.)
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("math_verify")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_evaluation import (  # noqa: E402
    PROBLEMS,
    fake_generate,
    fake_model,
    hf_generate,
    make_tokenizer,
    read_jsonl,
    write_run,
)

from superthoughts_ext.eval_cli import add_arguments, run  # noqa: E402
from superthoughts_ext.evaluation import summary_path  # noqa: E402


def parse_cli(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(prog="superthoughts eval")
    add_arguments(parser)
    return parser.parse_args(argv)


def run_cli(argv: list[str]) -> int:
    return run(parse_cli(argv))


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


# ---------------------------------------------------------------- evaluating a checkpoint

def test_cli_evaluates_a_plain_checkpoint(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    # load_model and generate are stand-ins here: the CLI wiring (data, tokenizer, mode
    # choice, output files) is what is under test.
    from transformers import AutoModelForCausalLM, Qwen2Config

    from superthoughts_ext import evaluation

    tokenizer = make_tokenizer()
    tokenizer.save_pretrained(tmp_path / "ckpt")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=1,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128)
    loaded = []

    def load_model(path, dtype=None, device=None):
        loaded.append((path, dtype, device))
        model = AutoModelForCausalLM.from_config(config)
        model.generation_config.eos_token_id = tokenizer.convert_tokens_to_ids("<|im_end|>")
        return model

    from superthoughts_ext.modeling import load_tokenizer

    fake_modeling = SimpleNamespace(load_model=load_model, load_tokenizer=load_tokenizer,
                                    SuperThoughtsForCausalLM=type("ST", (), {}))
    monkeypatch.setitem(sys.modules, "superthoughts_ext.modeling", fake_modeling)
    monkeypatch.setattr(evaluation, "_default_generate", lambda: hf_generate)
    data = tmp_path / "amc.jsonl"
    data.write_text("".join(json.dumps({"id": i, "problem": f"what is {i} + 1", "answer": float(i + 1)}) + "\n"
                            for i in range(5)))
    out = tmp_path / "plain.jsonl"
    argv = ["--model", str(tmp_path / "ckpt"), "--bench", "amc23", "--data", str(data), "--limit", "3",
            "--max-new-tokens", "4", "--device", "cpu", "--dtype", "float32", "--output", str(out), "--no-progress"]
    assert run(parse_cli(argv)) == 0
    assert loaded == [(str(tmp_path / "ckpt"), torch.float32, "cpu")]
    assert len(read_jsonl(out)) == 3
    summary = json.loads(summary_path(out).read_text())
    assert summary["mode"] == "standard" and summary["n"] == 3 and summary["model"] == str(tmp_path / "ckpt")
    assert "amc23 [standard]" in capsys.readouterr().out
    assert run(parse_cli(argv + ["--mode", "superthoughts", "--overwrite"])) == 2
    assert "use --mode standard" in capsys.readouterr().err


def test_no_progress_hides_transformers_bars_while_it_runs(fake_cli, tmp_path: Path,
                                                          monkeypatch: pytest.MonkeyPatch) -> None:
    # transformers' "Loading weights" bar still went into the log of a --no-progress run.
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()  # transformers' default, whatever ran before
    fake_modeling, shown = sys.modules["superthoughts_ext.modeling"], []
    load_model = fake_modeling.load_model
    monkeypatch.setattr(fake_modeling, "load_model", lambda *args, **kwargs: shown.append(
        transformers_logging.is_progress_bar_enabled()) or load_model(*args, **kwargs))
    assert run_cli([*fake_cli.argv, "--output", str(tmp_path / "run.jsonl")]) == 0
    assert shown == [False] and transformers_logging.is_progress_bar_enabled()  # restored afterwards


def test_cli_usage_errors(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    assert run(parse_cli(["--bench", "math500"])) == 2
    assert "--model and --bench are required" in capsys.readouterr().err
    missing = tmp_path / "missing.jsonl"
    assert run(parse_cli(["--model", str(tmp_path), "--bench", "math500", "--data", str(missing)])) == 2
    assert "missing.jsonl" in capsys.readouterr().err
    assert run(parse_cli(["--compare", str(missing), str(missing)])) == 2
    with pytest.raises(SystemExit):
        parse_cli(["--bench", "gsm8k"])
    assert "invalid choice: 'gsm8k'" in capsys.readouterr().err


def test_cli_gpqa_option_orders_and_their_regrade(
    tmp_path: Path, fake_cli: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    data = tmp_path / "gpqa.jsonl"
    data.write_text("".join(json.dumps({"Record ID": f"r{i}", "Question": f"what is {i} + 4",
                                        "Correct Answer": str(i + 4), "Incorrect Answer 1": "0",
                                        "Incorrect Answer 2": "1", "Incorrect Answer 3": "2"}) + "\n" for i in (3, 5)))
    argv = [*fake_cli.argv[:2], "--bench", "gpqa_diamond", "--data", str(data), *fake_cli.argv[6:]]
    out = tmp_path / "gpqa-run.jsonl"
    assert run_cli([*argv, "--option-orders", "3", "--output", str(out)]) == 0
    assert sorted(r["id"] for r in read_jsonl(out)) == ["r3", "r3#order1", "r3#order2", "r5", "r5#order1", "r5#order2"]
    summary = json.loads(summary_path(out).read_text())
    assert summary["n"] == 6 and summary["accuracy_by_option_order"] == [1.0, 1.0, 1.0]
    assert "accuracy per option order 1.0000, 1.0000, 1.0000" in capsys.readouterr().out

    # The records name their bench, data file and option orders: a regrade needs none of them.
    assert run_cli(["--regrade", str(out), "--no-progress"]) == 0
    assert "accuracy 1.0000 -> 1.0000 (n=6; 0 records changed" in capsys.readouterr().out
    regrade = ["--regrade", str(out), "--bench", "gpqa_diamond", "--data", str(data), "--no-progress"]
    assert run_cli([*regrade, "--option-orders", "2"]) == 2  # order 2's records name problems it lacks
    assert "--option-orders at least 3" in capsys.readouterr().err
    # Typed, the default is asked for too: it was taken for "not given", and the records' 3 replaced it.
    assert run_cli([*regrade, "--option-orders", "1"]) == 2
    assert "--option-orders at least 2) the run used" in capsys.readouterr().err
    assert run_cli(["--regrade", str(out), "--bench", "math500", "--no-progress"]) == 2  # not the records' bench
    assert "the records were evaluated on 'gpqa_diamond', not 'math500'" in capsys.readouterr().err
    assert run_cli([*argv, "--output", str(out), "--resume"]) == 2  # one order asked, three in the file
    assert "(give --option-orders 3)" in capsys.readouterr().err  # the file's highest order, not its first unknown one
    data.rename(tmp_path / "moved.jsonl")
    assert run_cli(["--regrade", str(out), "--no-progress"]) == 2
    assert f"evaluated on {data}, which is not there now; give --data" in capsys.readouterr().err

    assert run_cli([*fake_cli.argv, "--option-orders", "2", "--output", str(tmp_path / "m.jsonl")]) == 2
    assert "math500 has no answer options to shuffle" in capsys.readouterr().err


def test_cli_refuses_to_replace_a_finished_run_before_decoding(
    tmp_path: Path, fake_cli: SimpleNamespace, capsys: pytest.CaptureFixture[str]
) -> None:
    from superthoughts_ext.eval_cli import sweep_output

    out = tmp_path / "st.jsonl"
    sweep_output(out, 0.99).write_text('{"id": "earlier"}\n')  # the second threshold's file exists
    assert run_cli([*fake_cli.argv, "--threshold", "0.9", "0.99", "--output", str(out)]) == 2
    assert "holds the records of an earlier run" in capsys.readouterr().err
    assert fake_cli.calls == [] and not sweep_output(out, 0.9).exists()  # nothing decoded or written
    assert fake_cli.loaded == []  # refused before the weights load
    assert run_cli([*fake_cli.argv, "--threshold", "0.9", "0.99", "--output", str(out), "--overwrite"]) == 0
    assert len(read_jsonl(sweep_output(out, 0.99))) == len(PROBLEMS)


def test_superthoughts_cli_dispatches_eval(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    from superthoughts_ext.cli import main

    a = write_run(tmp_path / "a.jsonl", [("1", True, 10, 10)])
    assert main(["eval", "--compare", str(a), str(a)]) == 0
    assert "matched problems: 1" in capsys.readouterr().out


# ---------------------------------------------------------------- threshold sweeps

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


def test_cli_threshold_sweep_loads_the_model_once(fake_cli: SimpleNamespace, tmp_path: Path,
                                                  capsys: pytest.CaptureFixture[str]) -> None:
    from superthoughts_ext.evaluation import summary_path

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
    assert run_cli(argv + ["0.9", "--mode", "pairs", "--overwrite"]) == 2
    assert "applies to superthoughts mode, not pairs" in capsys.readouterr().err


# ---------------------------------------------------------------- resume

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


# ---------------------------------------------------------------- compare

def test_cli_compare(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    a = write_run(tmp_path / "a.jsonl", [("1", True, 100, 100), ("2", False, 100, 100)])
    b = write_run(tmp_path / "b.jsonl", [("1", True, 100, 50), ("2", True, 100, 50)])
    assert run(parse_cli(["--compare", str(a), str(b)])) == 0
    out = capsys.readouterr().out
    assert "matched problems: 2" in out and "50.00%" in out


def test_cli_compare_several_runs_and_plot(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    base = write_run(tmp_path / "base.jsonl", [("1", True, 100, 100), ("2", False, 100, 100)])
    runs = [write_run(tmp_path / f"t{t}.jsonl", [("1", True, 100, 100 - t), ("2", t < 40, 100, 100 - t)])
            for t in (20, 40, 60)]
    png = tmp_path / "tradeoff.png"
    assert run(parse_cli(["--compare", str(base), *map(str, runs), "--plot", str(png)])) == 0
    out = capsys.readouterr().out
    assert "problems present in every file: 2" in out and "60.00%" in out and f"plot: {png}" in out
    assert png.is_file()
    assert run(parse_cli(["--compare", str(base)])) == 2
    assert "at least one more result file, got 1" in capsys.readouterr().err
    assert run(parse_cli(["--bench", "math500", "--model", str(tmp_path), "--plot", str(png)])) == 2
    assert "--plot goes with --compare" in capsys.readouterr().err
