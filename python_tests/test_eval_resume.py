"""evaluate run again into its records file: a rerun into a finished run's file needs resume or
overwrite, an interrupted rerun leaves no stale summary, and an interrupted run resumes to the
records and summary of an uninterrupted one, refusing records of other settings or problems. On the
tiny tokenizer and fake generate of test_evaluation.py. (The main flow: test_evaluation.py; what a
resume refuses besides: test_eval_io.py and test_eval_safety.py.)
"""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("math_verify")
pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_evaluation import PROBLEMS, fake_generate, fake_model, make_tokenizer, read_jsonl  # noqa: E402

from superthoughts_ext.eval_compare import run_label  # noqa: E402
from superthoughts_ext.evaluation import evaluate, format_summary, summary_path  # noqa: E402


def test_an_interrupted_rerun_leaves_no_stale_summary(tmp_path: Path) -> None:
    """A rerun into a finished run's file that dies must not leave the old summary beside the
    new records: --compare labels a run with its summary's mode and threshold."""
    tokenizer = make_tokenizer()
    model = fake_model(tokenizer)
    out = tmp_path / "st.jsonl"
    kwargs = dict(mode="superthoughts", batch_size=3, output_jsonl=out, progress=False)
    evaluate(model, tokenizer, "math500", PROBLEMS, threshold=0.9, generate_fn=fake_generate(tokenizer, []), **kwargs)
    assert json.loads(summary_path(out).read_text())["threshold"] == 0.9

    def crash(*args, **kwargs):
        raise RuntimeError("CUDA out of memory (simulated)")

    with pytest.raises(RuntimeError, match="simulated"):
        evaluate(model, tokenizer, "math500", PROBLEMS, threshold=0.5, generate_fn=crash, overwrite=True, **kwargs)
    assert not summary_path(out).exists()
    assert run_label(out) == "st"


def test_a_rerun_into_a_finished_runs_file_needs_resume_or_overwrite(tmp_path: Path) -> None:
    tokenizer = make_tokenizer()
    out = tmp_path / "st.jsonl"
    kwargs = dict(mode="superthoughts", threshold=0.9, batch_size=3, output_jsonl=out, progress=False)
    evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS[:2], generate_fn=fake_generate(tokenizer, []), **kwargs)
    records, summary = out.read_text(), summary_path(out).read_text()
    calls: list[dict] = []
    with pytest.raises(FileExistsError, match="st.jsonl holds the records of an earlier run; resume .* overwrite"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=fake_generate(tokenizer, calls),
                 **kwargs)
    assert (out.read_text(), summary_path(out).read_text(), calls) == (records, summary, [])  # untouched, no decoding
    with pytest.raises(ValueError, match="give one"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=fake_generate(tokenizer, calls),
                 resume=True, overwrite=True, **kwargs)
    replaced = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=fake_generate(tokenizer, calls),
                        overwrite=True, **kwargs)
    assert replaced.n == len(PROBLEMS) == len(read_jsonl(out)) and replaced.n_resumed == 0


def test_resume_into_a_file_not_written_yet_starts_the_run(tmp_path: Path) -> None:
    # The first run of a requeued job, whose command holds --resume from the start (docs/evaluation.md).
    tokenizer = make_tokenizer()
    out = tmp_path / "st.jsonl"
    result = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, mode="superthoughts", threshold=0.9,
                      batch_size=3, output_jsonl=out, progress=False, generate_fn=fake_generate(tokenizer, []),
                      resume=True)
    assert (result.n, result.n_resumed) == (len(PROBLEMS), 0) and len(read_jsonl(out)) == len(PROBLEMS)


def test_evaluate_resumes_an_interrupted_run(tmp_path: Path) -> None:
    tokenizer = make_tokenizer()
    model = fake_model(tokenizer)
    full = evaluate(model, tokenizer, "math500", PROBLEMS, mode="superthoughts", threshold=0.9, batch_size=3,
                    output_jsonl=tmp_path / "full.jsonl", progress=False, generate_fn=fake_generate(tokenizer, []))

    calls: list[dict] = []
    solve = fake_generate(tokenizer, calls)

    def crash_after_one_batch(*args, **kwargs):
        if calls:
            raise RuntimeError("CUDA out of memory (simulated)")
        return solve(*args, **kwargs)

    out = tmp_path / "st.jsonl"
    kwargs = dict(mode="superthoughts", threshold=0.9, batch_size=3, output_jsonl=out, progress=False)
    with pytest.raises(RuntimeError, match="simulated"):
        evaluate(model, tokenizer, "math500", PROBLEMS, generate_fn=crash_after_one_batch, **kwargs)
    assert len(read_jsonl(out)) == 3
    with out.open("a", encoding="utf-8") as f:
        f.write('{"index": 6, "id": "p00", "pro')  # a line torn by the crash
    calls.clear()
    resumed = evaluate(model, tokenizer, "math500", PROBLEMS, generate_fn=solve, resume=True, **kwargs)
    assert [c["batch"] for c in calls] == [3, 1]  # only the 4 problems not done yet
    by_id = {r["id"]: r for r in read_jsonl(out)}
    assert len(by_id) == len(PROBLEMS) == resumed.n
    expected = {r["id"]: r for r in read_jsonl(tmp_path / "full.jsonl")}
    for key in ("output", "correct", "tokens", "steps", "hit_limit", "mode", "threshold", "max_new_tokens"):
        assert {i: r[key] for i, r in by_id.items()} == {i: r[key] for i, r in expected.items()}, key
    assert (resumed.accuracy, resumed.mean_tokens, resumed.cot_reduction) == \
        (full.accuracy, full.mean_tokens, full.cot_reduction)
    assert resumed.generation_time == pytest.approx(full.generation_time)
    assert (full.n_resumed, resumed.n_resumed) == (0, 3)
    assert format_summary(resumed).endswith("(3 records kept from the earlier run)")
    assert json.loads(summary_path(out).read_text())["n_resumed"] == 3
    # Nothing left to do: the summary comes from the file alone.
    calls.clear()
    again = evaluate(model, tokenizer, "math500", PROBLEMS, generate_fn=solve, resume=True, **kwargs)
    assert calls == [] and again.accuracy == full.accuracy
    # Records of other settings or other problems are refused, not mixed in.
    with pytest.raises(ValueError, match="threshold=0.9, this run has threshold=0.99"):
        evaluate(model, tokenizer, "math500", PROBLEMS, generate_fn=solve, resume=True,
                 **{**kwargs, "threshold": 0.99})
    with pytest.raises(ValueError, match="not among the 2 problems"):
        evaluate(model, tokenizer, "math500", PROBLEMS[:2], generate_fn=solve, resume=True, **kwargs)
    with pytest.raises(ValueError, match="resume needs the output_jsonl"):
        evaluate(model, tokenizer, "math500", PROBLEMS, generate_fn=solve, resume=True, progress=False)
    # A problem recorded twice (files joined by hand) would count twice in the summary.
    lines = out.read_text(encoding="utf-8").splitlines()
    out.write_text("\n".join(lines[:3] + lines[:1]) + "\n", encoding="utf-8")
    first = json.loads(lines[0])["id"]
    with pytest.raises(ValueError, match=rf"st.jsonl:4 repeats problem '{first}' of line 1"):
        evaluate(model, tokenizer, "math500", PROBLEMS, generate_fn=solve, resume=True, **kwargs)
