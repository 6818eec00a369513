"""Sampled evaluation with the real decode loop (`evaluate(temperature=..., samples=N, seed=S)`):
N records per problem with seeds of their own, a run repeated or resumed decodes the same
samples, and a problem's samples do not depend on --batch-size; a resume may grow --samples
(decoding only the new samples), while one that shrinks it or changes the temperature or seed is
refused. Tiny random Qwen2 / SuperThoughts models and the word-level tokenizer of
test_evaluation.py, on the CPU. (Summaries, compare, regrade and the CLI of sampled runs:
test_eval_sampling_summary.py.)
"""
from __future__ import annotations

import copy
import json
from pathlib import Path

import pytest

pytest.importorskip("math_verify")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_evaluation import PROBLEMS, make_tokenizer, read_jsonl  # noqa: E402

from superthoughts_ext.eval_sampling import sample_seed  # noqa: E402
from superthoughts_ext.evaluation import evaluate, summary_path  # noqa: E402

pytestmark = pytest.mark.usefixtures("one_cpu_thread")

SAMPLED = dict(temperature=1.0, samples=3, seed=5)
# The fields that make a record what it is; "time" is a share of a batch's wall time.
DECODED = ("id", "sample", "sample_seed", "output", "extracted", "correct", "tokens", "steps", "pair_steps",
           "hit_limit")


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


def make_model(tokenizer):
    """A tiny random SuperThoughts model over the tokenizer's vocabulary whose steps mix pairs and
    single tokens at its threshold 0.1 (lm_head sharpened, MTP and compressor perturbed, as in
    test_generate.py)."""
    from transformers import AutoModelForCausalLM, Qwen2Config

    from superthoughts_ext.modeling import SuperThoughtsForCausalLM

    eos = tokenizer.convert_tokens_to_ids("<|im_end|>")
    config = Qwen2Config(vocab_size=len(tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, max_position_embeddings=128,
                         eos_token_id=eos, pad_token_id=tokenizer.pad_token_id)
    torch.manual_seed(0)
    backbone = AutoModelForCausalLM.from_config(config).eval()
    backbone.generation_config.eos_token_id = eos
    with torch.no_grad():
        backbone.lm_head.weight.mul_(8.0)
    model = SuperThoughtsForCausalLM.from_base(copy.deepcopy(backbone), threshold=0.1).eval()
    with torch.no_grad():
        for param in [*model.mtp.parameters(), *model.compressor.parameters()]:
            param.add_(torch.randn_like(param) * 0.05)
    return model


@pytest.fixture(scope="module")
def model(tokenizer):
    return make_model(tokenizer)


def run(model, tokenizer, out: Path, **kwargs):
    options = dict(mode="superthoughts", batch_size=4, max_new_tokens=10, output_jsonl=out, progress=False,
                   compile=False, **SAMPLED)
    return evaluate(model, tokenizer, "math500", PROBLEMS[:4], **{**options, **kwargs})


def decoded(path: Path) -> list[tuple]:
    """The records' decoded fields, in (problem, sample) order."""
    records = sorted(read_jsonl(path), key=lambda r: (r["id"], r["sample"]))
    return [tuple(record[key] for key in DECODED) for record in records]


def test_a_sampled_run_writes_every_sample_with_its_own_seed(model, tokenizer, tmp_path: Path) -> None:
    out = tmp_path / "st.jsonl"
    summary = run(model, tokenizer, out)
    records = read_jsonl(out)
    assert len(records) == 4 * 3 == summary.n and summary.n_problems == 4
    for problem in PROBLEMS[:4]:
        mine = sorted((r for r in records if r["id"] == problem.id), key=lambda r: r["sample"])
        assert [r["sample"] for r in mine] == [0, 1, 2]
        assert [r["sample_seed"] for r in mine] == [sample_seed(5, problem.id, k) for k in range(3)]
    assert len({r["sample_seed"] for r in records}) == len(records)
    # The run's sampling is a setting of every record (what a resume checks).
    assert {(r["temperature"], r["samples"], r["seed"]) for r in records} == {(1.0, 3, 5)}
    # Samples of a problem differ, and the steps mix pairs and single tokens.
    assert all(len({r["output"] for r in records if r["id"] == p.id}) > 1 for p in PROBLEMS[:4])
    assert 0 < sum(r["pair_steps"] for r in records) < sum(r["steps"] for r in records)
    saved = json.loads(summary_path(out).read_text())
    assert (saved["temperature"], saved["samples"], saved["seed"]) == (1.0, 3, 5)


def test_a_record_is_what_generate_decodes_alone_with_its_seed(model, tokenizer, tmp_path: Path) -> None:
    # What the records promise: `superthoughts generate --seed <sample_seed> --temperature T` on
    # the prompt alone gives the sample's output.
    from superthoughts_ext.generate import generate, stop_token_ids

    out = tmp_path / "st.jsonl"
    run(model, tokenizer, out, batch_size=5)
    stops = stop_token_ids(model, tokenizer)
    for record in read_jsonl(out)[:5]:
        ids = torch.tensor([tokenizer(record["prompt"], add_special_tokens=False)["input_ids"]])
        alone = generate(model, ids, max_new_tokens=10, temperature=1.0, seed=record["sample_seed"], eos_token_id=stops)
        assert (alone.num_tokens[0], alone.num_steps[0]) == (record["tokens"], record["steps"])
        sequence = alone.sequences[0]
        end = next((i for i, token in enumerate(sequence) if token in stops), len(sequence))
        assert tokenizer.decode(sequence[:end], skip_special_tokens=True) == record["output"]


def test_the_same_command_twice_decodes_the_same_records(model, tokenizer, tmp_path: Path) -> None:
    first, second = tmp_path / "a.jsonl", tmp_path / "b.jsonl"
    run(model, tokenizer, first)
    run(model, tokenizer, second)
    # The lines match but for their wall-time shares, order included.
    strip = [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(first)]
    assert strip == [{k: v for k, v in r.items() if k != "time"} for r in read_jsonl(second)]
    # Another seed samples otherwise.
    other = tmp_path / "c.jsonl"
    run(model, tokenizer, other, seed=6)
    assert [r[3] for r in decoded(other)] != [r[3] for r in decoded(first)]


def test_samples_do_not_depend_on_the_batch_size(model, tokenizer, tmp_path: Path) -> None:
    runs = {}
    for batch_size in (1, 2, 5, 12):
        out = tmp_path / f"b{batch_size}.jsonl"
        run(model, tokenizer, out, batch_size=batch_size)
        runs[batch_size] = decoded(out)
    assert runs[1] == runs[2] == runs[5] == runs[12]
    # And not on which other problems share the run (--limit).
    fewer = tmp_path / "two.jsonl"
    evaluate(model, tokenizer, "math500", PROBLEMS[2:4], mode="superthoughts", batch_size=4, max_new_tokens=10,
             output_jsonl=fewer, progress=False, compile=False, **SAMPLED)
    assert decoded(fewer) == [r for r in runs[1] if r[0] in {p.id for p in PROBLEMS[2:4]}]


def test_a_resumed_run_decodes_what_an_uninterrupted_one_does(model, tokenizer, tmp_path: Path) -> None:
    from superthoughts_ext.generate import generate

    whole = tmp_path / "whole.jsonl"
    full = run(model, tokenizer, whole, batch_size=2)
    calls = []

    def cut_off(*args, **kwargs):  # killed after two batches: 4 of 12 samples, one problem half done
        calls.append(len(kwargs["seed"]))
        if len(calls) > 2:
            raise RuntimeError("preempted (simulated)")
        return generate(*args, **kwargs)

    out = tmp_path / "st.jsonl"
    with pytest.raises(RuntimeError, match="simulated"):
        run(model, tokenizer, out, batch_size=2, generate_fn=cut_off)
    kept = read_jsonl(out)
    assert len(kept) == 4 and len({r["id"] for r in kept}) == 2  # 3 + 1 samples of two problems
    # Resumed with another batch size: only the 8 missing samples decode, as they did before.
    counted = []

    def counting(*args, **kwargs):
        counted.append(len(kwargs["seed"]))
        return generate(*args, **kwargs)

    resumed = run(model, tokenizer, out, batch_size=3, resume=True, generate_fn=counting)
    assert sum(counted) == 8 and resumed.n_resumed == 4
    assert decoded(out) == decoded(whole)
    assert (resumed.accuracy, resumed.accuracy_by_sample, resumed.mean_tokens, resumed.pass_at_n) == \
        (full.accuracy, full.accuracy_by_sample, full.mean_tokens, full.pass_at_n)


def test_a_resume_can_grow_the_samples(model, tokenizer, tmp_path: Path) -> None:
    # Sample k's seed does not depend on N: an N=2 file resumed with N=4 holds what a fresh N=4
    # run writes, having decoded samples 2 and 3 alone.
    from superthoughts_ext.generate import generate

    fresh = tmp_path / "fresh.jsonl"
    whole = run(model, tokenizer, fresh, samples=4)
    out = tmp_path / "st.jsonl"
    run(model, tokenizer, out, samples=2)
    rows = []

    def counting(*args, **kwargs):
        rows.extend(kwargs["seed"])
        return generate(*args, **kwargs)

    grown = run(model, tokenizer, out, samples=4, resume=True, generate_fn=counting)
    assert sorted(rows) == sorted(sample_seed(5, p.id, k) for p in PROBLEMS[:4] for k in (2, 3))

    def lines(path):
        return sorted(({k: v for k, v in r.items() if k != "time"} for r in read_jsonl(path)),
                      key=lambda r: (r["id"], r["sample"]))

    # Every field but the wall-time share, the kept records' samples included (now 4).
    assert lines(out) == lines(fresh) and {r["samples"] for r in read_jsonl(out)} == {4}
    timings = ("generation_time", "wall_time", "tokens_per_s", "n_resumed", "warmup_time")
    assert {k: v for k, v in vars(grown).items() if k not in timings} == \
        {k: v for k, v in vars(whole).items() if k not in timings}
    assert (grown.n, grown.n_resumed, grown.samples, len(grown.accuracy_by_sample)) == (16, 8, 4, 4)
    saved = json.loads(summary_path(out).read_text())
    assert (saved["samples"], saved["n"], saved["pass_at_n"]) == (4, 16, whole.pass_at_n)


@pytest.mark.parametrize("change, message", [
    (dict(temperature=0.7), r"was written with temperature=1, samples=3, seed=5, this run has temperature=0.7"),
    (dict(seed=6), r"this run has temperature=1, samples=3, seed=6"),
    # Growing N does not let another seed through.
    (dict(samples=4, seed=6), r"this run has temperature=1, samples=4, seed=6"),
    (dict(temperature=0.0, samples=1), r"seed=5, this run has greedy decoding"),
    # Shrinking N would keep records in the file that the summary leaves out (or drop them).
    (dict(samples=2), r"holds sample 2 \(of a run of samples=3\), this run has samples=2: a resume can add samples, "
                      r"not drop them .* resume with samples=3 or more, or copy the records with sample < 2 to "
                      r"another file and resume that"),
])
def test_a_resume_with_other_sampling_is_refused(tokenizer, tmp_path: Path, change: dict, message: str) -> None:
    from test_evaluation import fake_model
    from test_eval_sampling_summary import seeded_generate

    out = tmp_path / "st.jsonl"
    kwargs = dict(mode="standard", output_jsonl=out, progress=False, generate_fn=seeded_generate(tokenizer))
    evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, **kwargs, **SAMPLED)
    before = out.read_text(), summary_path(out).read_text()
    with pytest.raises(ValueError, match=rf"resume: .*st.jsonl:\d+ .*{message}"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, resume=True, **kwargs, **{**SAMPLED, **change})
    assert (out.read_text(), summary_path(out).read_text()) == before  # refused before touching the run


def test_a_greedy_file_is_not_resumed_as_a_sampled_run(tokenizer, tmp_path: Path) -> None:
    from test_evaluation import fake_generate, fake_model

    out = tmp_path / "greedy.jsonl"
    kwargs = dict(mode="standard", output_jsonl=out, progress=False, generate_fn=fake_generate(tokenizer, []))
    evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, **kwargs)
    assert not any(key in read_jsonl(out)[0] for key in ("sample", "sample_seed", "temperature", "samples", "seed"))
    # Named as greedy, not as "written by an older version" (a greedy record has no such keys).
    with pytest.raises(ValueError, match=r"greedy.jsonl:1 was written with greedy decoding, this run has "
                                         r"temperature=0.5, samples=2, seed=0"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, resume=True, temperature=0.5, samples=2,
                 **kwargs)
