"""What a sampled run (`--temperature T --samples N --seed S`) reports: avg@N and its spread,
pass@N and maj@N computed here from the records; option orders x samples; --compare, --plot and
--regrade of sampled runs beside greedy and older files; the CLI's options and refusals. A fake
generate whose answer follows each row's seed stands in for decoding (its determinism across
batches and resumes is tested with the real decode loop in test_eval_sampling.py).
"""
from __future__ import annotations

import json
import re
import statistics
import sys
from collections import Counter
from pathlib import Path
from types import SimpleNamespace

import pytest

pytest.importorskip("math_verify")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_evaluation import PROBLEMS, fake_generate, fake_model, make_tokenizer, read_jsonl, write_run  # noqa: E402

from superthoughts_ext.eval_data import Problem  # noqa: E402
from superthoughts_ext.eval_records import SAMPLING_FIELDS  # noqa: E402
from superthoughts_ext.eval_sampling import sample_seed  # noqa: E402
from superthoughts_ext.evaluation import (compare, compare_runs, evaluate, format_comparison, format_runs,  # noqa: E402
                                          format_summary, summary_path)

SAMPLED = dict(temperature=0.7, samples=4, seed=3)


def seeded_generate(tokenizer, calls: list | None = None):
    """A stand-in for generate whose answer to "what is a + b" follows the row's seed: right
    (seed % 5 < 3), one too many (3), or cut off with no box (4). Greedy calls (no seed) are right."""
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")

    def generate(model, input_ids, attention_mask, *, max_new_tokens, mode, threshold, eos_token_id, compile,
                 temperature=0.0, seed=0):
        seeds = seed if isinstance(seed, list) else [seed] * len(input_ids)
        if calls is not None:
            calls.append({"temperature": temperature, "seeds": seeds})
        sequences = []
        for ids, mask, row_seed in zip(input_ids.tolist(), attention_mask.tolist(), seeds):
            words = tokenizer.decode([t for t, m in zip(ids, mask) if m]).split()
            a, b = (int(w) for w in words[words.index("+") - 1 :: 2][:2])
            kind = row_seed % 5
            answer = ["so", "the", "answer", "is", f"\\boxed{{{a + b + (kind == 3)}}}"] if kind < 4 else ["so"]
            sequences.append(tokenizer.convert_tokens_to_ids(answer) + ([eos] if kind < 4 else []))
        tokens = [len(s) for s in sequences]
        return SimpleNamespace(sequences=sequences, num_tokens=tokens, num_steps=[(n + 1) // 2 for n in tokens],
                               num_pair_steps=[n // 2 for n in tokens], wall_time=0.5)

    return generate


def sampled_run(tmp_path: Path, name: str = "st.jsonl", **kwargs):
    tokenizer = make_tokenizer()
    out = tmp_path / name
    summary = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, mode="superthoughts", threshold=0.9,
                       batch_size=5, output_jsonl=out, progress=False, generate_fn=seeded_generate(tokenizer),
                       **{**SAMPLED, **kwargs})
    return out, summary


def majority_right(records: list[dict]) -> bool:
    votes = Counter(r["extracted"] for r in records if r["extracted"] is not None)
    if not votes:
        return False
    top = max(votes.values())
    return next(r for r in sorted(records, key=lambda r: r["sample"]) if votes.get(r["extracted"]) == top)["correct"]


def test_the_summary_is_the_mean_over_samples_with_its_spread(tmp_path: Path) -> None:
    out, summary = sampled_run(tmp_path)
    records = read_jsonl(out)
    per_sample = [sum(r["correct"] for r in records if r["sample"] == k) / len(PROBLEMS) for k in range(4)]
    groups = [[r for r in records if r["id"] == p.id] for p in PROBLEMS]
    assert len(records) == summary.n == 4 * len(PROBLEMS) and summary.n_problems == len(PROBLEMS)
    assert summary.accuracy_by_sample == pytest.approx(per_sample)
    assert summary.accuracy == pytest.approx(statistics.mean(per_sample))
    assert summary.accuracy_std == pytest.approx(statistics.stdev(per_sample)) and summary.accuracy_std > 0
    assert summary.pass_at_n == pytest.approx(sum(any(r["correct"] for r in g) for g in groups) / len(PROBLEMS))
    assert summary.maj_at_n == pytest.approx(sum(majority_right(g) for g in groups) / len(PROBLEMS))
    assert summary.pass_at_n >= summary.accuracy and summary.n_hit_limit == sum(r["hit_limit"] for r in records)
    assert summary.mean_tokens == pytest.approx(sum(r["tokens"] for r in records) / len(records))
    saved = json.loads(summary_path(out).read_text())
    assert (saved["accuracy_std"], saved["pass_at_n"], saved["maj_at_n"]) == \
        (summary.accuracy_std, summary.pass_at_n, summary.maj_at_n)
    line = format_summary(summary)
    assert f"accuracy avg@4 {summary.accuracy:.4f} ± {summary.accuracy_std:.4f} (std over samples)" in line
    assert f"pass@4 {summary.pass_at_n:.4f}, maj@4 {summary.maj_at_n:.4f}" in line and "temperature 0.7" in line


def test_a_greedy_summary_reads_as_before(tmp_path: Path) -> None:
    tokenizer = make_tokenizer()
    summary = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, progress=False,
                       generate_fn=fake_generate(tokenizer, []))
    assert (summary.temperature, summary.samples, summary.seed, summary.accuracy_std, summary.pass_at_n) == \
        (0.0, 1, None, None, None)
    assert format_summary(summary).startswith(f"math500 [superthoughts]: accuracy {summary.accuracy:.4f} (5/7), ")
    # Its summary file holds no sampling field, as before sampling existed; a sampled one holds them all.
    assert not set(SAMPLING_FIELDS) & set(summary.to_dict())
    assert set(SAMPLING_FIELDS) <= set(sampled_run(tmp_path)[1].to_dict())


def test_option_orders_are_each_sampled(tmp_path: Path) -> None:
    # --option-orders x --samples: every order of a question is a problem of its own, sampled N
    # times under seeds of its own id; the accuracy is the mean over orders and samples.
    tokenizer = make_tokenizer()
    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    problems = [Problem("a", "what is 3 + 4", "B", ("3", "7", "12", "5"), option_order=0),
                Problem("a#order1", "what is 3 + 4", "A", ("12", "7", "3", "5"), option_order=1)]

    def generate(model, input_ids, attention_mask, **kwargs):  # boxes "7" whatever the order
        sequences = [tokenizer.convert_tokens_to_ids(["so", "\\boxed{7}"]) + [eos] for _ in input_ids]
        return SimpleNamespace(sequences=sequences, num_tokens=[3] * len(sequences), num_steps=[2] * len(sequences),
                               num_pair_steps=[1] * len(sequences), wall_time=0.1)

    out = tmp_path / "gpqa.jsonl"
    summary = evaluate(fake_model(tokenizer), tokenizer, "gpqa_diamond", problems, mode="standard", output_jsonl=out,
                       progress=False, generate_fn=generate, temperature=1.0, samples=3)
    records = read_jsonl(out)
    assert sorted((r["id"], r["option_order"], r["sample"]) for r in records) == \
        [(p.id, p.option_order, k) for p in problems for k in range(3)]
    assert {r["sample_seed"] for r in records} == {sample_seed(0, p.id, k) for p in problems for k in range(3)}
    assert summary.accuracy == 0.5 and summary.accuracy_by_option_order == [1.0, 0.0]
    assert summary.accuracy_by_sample == [0.5] * 3 and summary.accuracy_std == 0.0 and summary.pass_at_n == 0.5


def test_compare_and_plot_show_avg_at_n_and_its_spread(tmp_path: Path, monkeypatch) -> None:
    pytest.importorskip("matplotlib")
    import matplotlib.pyplot as plt

    from superthoughts_ext.eval_compare import plot_tradeoff

    tokenizer = make_tokenizer()
    base = tmp_path / "greedy.jsonl"
    greedy = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, mode="standard", output_jsonl=base,
                      progress=False, generate_fn=fake_generate(tokenizer, []))
    out, summary = sampled_run(tmp_path)
    with pytest.warns(UserWarning, match=r"different temperature .*greedy.jsonl: 0.0.*st.jsonl: 0.7"):
        result = compare(base, out)
    assert (result["n"], result["accuracy_a"], result["samples_a"], result["accuracy_std_a"]) == \
        (7, greedy.accuracy, 1, None)
    assert result["accuracy_b"] == pytest.approx(summary.accuracy) and result["samples_b"] == 4
    assert result["accuracy_std_b"] == pytest.approx(summary.accuracy_std)
    assert result["mean_tokens_b"] == pytest.approx(summary.mean_tokens)
    assert result["hit_limit_b"] == pytest.approx(summary.n_hit_limit / 4)  # cut off per pass
    text = format_comparison(result)
    assert f"{summary.accuracy:.4f} ± {summary.accuracy_std:.4f}" in text and "solved more often here" in text
    assert "avg@N" in text
    with pytest.warns(UserWarning, match="different temperature"):
        results = compare_runs(base, [out])
    assert results[0]["label_b"] == "st [superthoughts 0.9, avg@4 T=0.7]" and "±" in format_runs(results)
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    plot_tradeoff(results, tmp_path / "plot.png")
    ax = closed[0].axes[0]
    assert len(ax.collections) == 1  # one error bar: the sampled run's
    assert "avg@N" in ax.get_ylabel()


def test_older_greedy_files_still_compare(tmp_path: Path) -> None:
    # Records as the first versions wrote them (id, correct, tokens, steps): against each other
    # exactly as before, against a sampled run too.
    old_a = write_run(tmp_path / "a.jsonl", [(p.id, True, 10, 10) for p in PROBLEMS])
    old_b = write_run(tmp_path / "b.jsonl", [(p.id, i % 2 == 0, 10, 6) for i, p in enumerate(PROBLEMS)])
    result = compare(old_a, old_b)
    assert (result["wins_a"], result["hit_limit_a"], result["samples_b"], result["accuracy_std_b"]) == (3, 0, 1, None)
    assert "±" not in format_comparison(result) and "solved only here" in format_comparison(result)
    out, summary = sampled_run(tmp_path)
    with pytest.warns(UserWarning, match="different temperature"):
        assert compare(old_a, out)["accuracy_b"] == pytest.approx(summary.accuracy)


def test_a_repeated_sample_is_refused_by_compare(tmp_path: Path) -> None:
    out, _ = sampled_run(tmp_path)
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join(lines + lines[:1]) + "\n", encoding="utf-8")
    first = json.loads(lines[0])
    with pytest.raises(ValueError, match=rf"problem id '{first['id']}' \(sample {first['sample']}\) appears twice"):
        compare(out, out)


def test_regrade_of_a_sampled_run_restores_its_summary(tmp_path: Path) -> None:
    from superthoughts_ext.eval_data import load_problems
    from superthoughts_ext.eval_regrade import regrade_runs

    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "problem": p.question, "answer": p.answer}) + "\n"
                            for p in PROBLEMS))
    out, summary = sampled_run(tmp_path)
    records = read_jsonl(out)
    flipped = next(r for r in records if r["correct"])
    flipped["correct"] = False  # an older grader's verdict
    out.write_text("".join(json.dumps(r) + "\n" for r in records))
    saved = json.loads(summary_path(out).read_text())
    summary_path(out).write_text(json.dumps({**saved, "accuracy_std": 0.5, "pass_at_n": 0.0}))
    [result] = regrade_runs([out], "math500", load_problems("math500", str(data)), progress=False)
    assert result.changed_ids == [f"{flipped['id']}#sample{flipped['sample']}"]
    restored = json.loads(summary_path(out).read_text())
    assert (restored["accuracy"], restored["accuracy_std"], restored["pass_at_n"]) == \
        (summary.accuracy, summary.accuracy_std, summary.pass_at_n)


# ---------------------------------------------------------------- the command line

@pytest.fixture
def cli(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> SimpleNamespace:
    """`superthoughts eval` over a fake SuperThoughts checkpoint and `seeded_generate`."""
    import argparse

    from superthoughts_ext import evaluation
    from superthoughts_ext.eval_cli import add_arguments, run
    from superthoughts_ext.modeling import load_tokenizer

    tokenizer, calls = make_tokenizer(), []
    tokenizer.save_pretrained(tmp_path / "ckpt")

    class FakeSuperThoughts(SimpleNamespace):
        def eval(self):
            return self

    def load_model(path, dtype=None, device=None):
        return FakeSuperThoughts(**vars(fake_model(tokenizer)), dtype=dtype or torch.float32)

    monkeypatch.setitem(sys.modules, "superthoughts_ext.modeling", SimpleNamespace(
        load_model=load_model, load_tokenizer=load_tokenizer, SuperThoughtsForCausalLM=FakeSuperThoughts))
    monkeypatch.setattr(evaluation, "_default_generate", lambda: seeded_generate(tokenizer, calls))
    data = tmp_path / "math.jsonl"
    data.write_text("".join(json.dumps({"id": p.id, "problem": p.question, "answer": p.answer}) + "\n"
                            for p in PROBLEMS))
    argv = ["--model", str(tmp_path / "ckpt"), "--bench", "math500", "--data", str(data), "--device", "cpu",
            "--no-progress", "--output", str(tmp_path / "st.jsonl")]

    def run_cli(extra: list[str]) -> int:
        parser = argparse.ArgumentParser()
        add_arguments(parser)
        return run(parser.parse_args(argv + extra))

    return SimpleNamespace(run=run_cli, calls=calls)


@pytest.mark.parametrize("extra, message", [
    (["--samples", "2"], r"--samples 2 needs --temperature > 0"),
    (["--temperature", "0.6", "--samples", "0"], r"--samples must be an integer >= 1, got 0"),
    (["--temperature", "1e-6"], r"--temperature 1e-06 is below 1e-05, where generate decodes greedily"),
    (["--temperature", "-1"], r"--temperature must be finite and >= 0"),
    (["--temperature", "0.6", "--compile"], r"--compile goes with greedy decoding"),
])
def test_cli_refuses_sampling_it_cannot_run(cli: SimpleNamespace, capsys, extra: list[str], message: str) -> None:
    assert cli.run(extra) == 2
    assert re.search(message, capsys.readouterr().err)
    assert cli.calls == []


def test_cli_threshold_sweep_of_sampled_runs(cli: SimpleNamespace, tmp_path: Path, capsys) -> None:
    assert cli.run(["--threshold", "0.9", "0.99", "--temperature", "0.6", "--samples", "2", "--seed", "4"]) == 0
    printed = capsys.readouterr().out
    assert printed.count("accuracy avg@2") == 2
    files = [tmp_path / "st-t0.9.jsonl", tmp_path / "st-t0.99.jsonl"]
    runs = [sorted((r["id"], r["sample"], r["sample_seed"], r["threshold"]) for r in read_jsonl(f)) for f in files]
    assert [len(r) for r in runs] == [2 * len(PROBLEMS)] * 2
    # Both thresholds draw the same seeds: their difference is the threshold's, not the noise's.
    assert [r[:3] for r in runs[0]] == [r[:3] for r in runs[1]]
    assert {r[3] for r in runs[0]} == {0.9} and all(c["temperature"] == 0.6 for c in cli.calls)
    # A resume with another seed is refused, naming it.
    assert cli.run(["--threshold", "0.9", "--output", str(files[0]), "--temperature", "0.6", "--samples", "2",
                    "--resume"]) == 2
    assert "seed=4, this run has temperature=0.6, samples=2, seed=0" in capsys.readouterr().err


def test_cli_resume_grows_the_samples_and_refuses_fewer(cli: SimpleNamespace, tmp_path: Path, capsys) -> None:
    assert cli.run(["--temperature", "0.6", "--samples", "2"]) == 0
    cli.calls.clear()
    assert cli.run(["--temperature", "0.6", "--samples", "3", "--resume"]) == 0
    assert "accuracy avg@3" in capsys.readouterr().out
    # Only sample 2 of each problem decoded; the file now reads as a run of 3 samples.
    assert sorted(seed for call in cli.calls for seed in call["seeds"]) == \
        sorted(sample_seed(0, p.id, 2) for p in PROBLEMS)
    records = read_jsonl(tmp_path / "st.jsonl")
    assert len(records) == 3 * len(PROBLEMS) and {r["samples"] for r in records} == {3}
    assert json.loads(summary_path(tmp_path / "st.jsonl").read_text())["samples"] == 3
    assert cli.run(["--temperature", "0.6", "--samples", "2", "--resume"]) == 2
    assert "holds sample 2 (of a run of samples=3), this run has samples=2" in capsys.readouterr().err
    # What the refusal suggests: the records of samples 0-1 in a file of their own resume as a
    # finished run of 2 samples, with nothing to decode.
    first_two = tmp_path / "first-two.jsonl"
    first_two.write_text("".join(json.dumps(r) + "\n" for r in records if r["sample"] < 2))
    cli.calls.clear()
    assert cli.run(["--temperature", "0.6", "--samples", "2", "--resume", "--output", str(first_two)]) == 0
    assert cli.calls == [] and "accuracy avg@2" in capsys.readouterr().out
    assert {r["samples"] for r in read_jsonl(first_two)} == {2}


def test_cli_regrade_takes_no_sampling_options(cli: SimpleNamespace, tmp_path: Path, capsys) -> None:
    assert cli.run(["--temperature", "0.6", "--samples", "2"]) == 0
    import argparse

    from superthoughts_ext.eval_cli import add_arguments, run

    parser = argparse.ArgumentParser()
    add_arguments(parser)
    assert run(parser.parse_args(["--regrade", str(tmp_path / "st.jsonl"), "--samples", "2"])) == 2
    assert "--regrade does not go with --samples" in capsys.readouterr().err
    assert run(parser.parse_args(["--regrade", str(tmp_path / "st.jsonl"), "--no-progress"])) == 0
    assert "0 records changed" in capsys.readouterr().out


def test_a_problem_whose_samples_met_non_finite_logits_is_named_once(recwarn: pytest.WarningsRecorder) -> None:
    # Every sample of a problem is a row of its own: the warning counted and named the problem
    # once per sample ("28 problems met ...: 1, 1, 1, 1, 2, ...") for a run of 7 problems.
    from superthoughts_ext.generate import NonFiniteLogitsWarning

    tokenizer = make_tokenizer()
    solve = seeded_generate(tokenizer)

    def overflowing(*args, **kwargs):  # every row met them
        result = solve(*args, **kwargs)
        result.nonfinite_rows = list(range(len(result.sequences)))
        return result

    evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, mode="standard", batch_size=3, progress=False,
             generate_fn=overflowing, **SAMPLED)
    warned = [str(w.message) for w in recwarn if w.category is NonFiniteLogitsWarning]
    assert len(warned) == 1 and warned[0].startswith(f"evaluate: {len(PROBLEMS)} problems met"), warned
    named = warned[0].split(" got the pad id there: ", 1)[1].split("; load the model")[0].split(", ")
    assert sorted(named) == sorted(p.id for p in PROBLEMS), named
