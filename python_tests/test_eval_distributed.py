"""`superthoughts eval` over several processes (`superthoughts_ext.eval_ranks`): 2-process torchrun
runs (gloo, CPU) whose records and summary are those of one process, a cut-off 2-process run
finished by one process with --resume, a lock rank 0 is refused stopping both ranks, and the
split / part-file / merge logic and the CLI's refusals on their own. A tiny random SuperThoughts
checkpoint (test_eval_sampling.py's model) over test_evaluation.py's tokenizer.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest

pytest.importorskip("math_verify")
torch = pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_eval_cli import parse_cli  # noqa: E402
from test_eval_sampling import make_model  # noqa: E402
from test_evaluation import PROBLEMS, fake_generate, fake_model, make_tokenizer, read_jsonl  # noqa: E402
from test_train import free_port  # noqa: E402

from superthoughts_ext.eval_cli import run  # noqa: E402
from superthoughts_ext.eval_ranks import (Ranks, ReportedByAnotherRank, gathered_records, on_every_rank,  # noqa: E402
                                          part_files, part_path, rank_device, rank_share, ranks_from_env)
from superthoughts_ext.evaluation import check_records_file, evaluate, summary_path  # noqa: E402
from superthoughts_ext.run_info import output_lock  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
# What differs between two runs of the same records: each record's share of its batch's wall
# time, and the summary's times (and the processes that ran it).
TIMES = {"time", "generation_time", "wall_time", "tokens_per_s", "warmup_time", "processes"}


@pytest.fixture(scope="module")
def tokenizer():
    return make_tokenizer()


@pytest.fixture(scope="module")
def checkpoint(tmp_path_factory, tokenizer) -> dict[str, Path]:
    """The tiny SuperThoughts checkpoint (model + tokenizer) and an AMC23-style data file of 9
    "what is a + b" problems."""
    root = tmp_path_factory.mktemp("eval_distributed")
    make_model(tokenizer).save_pretrained(root / "st")
    tokenizer.save_pretrained(root / "st")
    data = root / "amc.jsonl"
    data.write_text("".join(json.dumps({"id": f"q{i}", "problem": f"what is {i} + {i % 4}" + " +" * (i % 3),
                                        "answer": str(i + i % 4)}) + "\n" for i in range(9)))
    return {"model": root / "st", "data": data}


def eval_argv(checkpoint: dict[str, Path], out: Path, *extra: str) -> list[str]:
    return ["--model", str(checkpoint["model"]), "--bench", "amc23", "--data", str(checkpoint["data"]),
            "--max-new-tokens", "12", "--batch-size", "2", "--device", "cpu", "--dtype", "float32",
            "--no-progress", "--output", str(out), *extra]


def torchrun_command(argv: list[str], target: list[str] | None = None) -> tuple[list[str], dict[str, str]]:
    """The command line and environment of ``torchrun --nproc-per-node 2 -m superthoughts_ext.eval_cli
    ARGV`` (or ``TARGET ARGV``, a script and its own arguments) on the CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc-per-node", "2", "--master-addr", "127.0.0.1",
           "--master-port", str(free_port()), *(target or ["-m", "superthoughts_ext.eval_cli"]), *argv]
    return cmd, env


def torchrun(argv: list[str], cwd: Path, script: Path | None = None) -> subprocess.CompletedProcess:
    """``torchrun --nproc-per-node 2 -m superthoughts_ext.eval_cli ARGV`` (or ``script ARGV``) on the CPU."""
    cmd, env = torchrun_command(argv, [str(script)] if script else None)
    return subprocess.run(cmd, env=env, cwd=cwd, capture_output=True, text=True, timeout=240)


def by_key(path: Path) -> dict[tuple[str, int], dict]:
    return {(r["id"], r.get("sample", 0)): {k: v for k, v in r.items() if k not in TIMES} for r in read_jsonl(path)}


def summary_of(path: Path) -> dict:
    return {k: v for k, v in json.loads(summary_path(path).read_text()).items() if k not in TIMES | {"records"}}


def test_two_processes_write_the_records_and_summary_of_one(checkpoint, tmp_path, capsys):
    one, two = tmp_path / "one.jsonl", tmp_path / "two.jsonl"
    assert run(parse_cli(eval_argv(checkpoint, one))) == 0
    capsys.readouterr()
    proc = torchrun(eval_argv(checkpoint, two), tmp_path)
    assert proc.returncode == 0, proc.stderr[-4000:]
    # Greedy: every problem decodes to the same tokens in another batch on another rank.
    assert by_key(two) == by_key(one) and len(by_key(one)) == 9
    assert summary_of(two) == summary_of(one)
    assert json.loads(summary_path(two).read_text())["processes"] == 2
    # One file in problem order; no part or lock file left; the result printed once (rank 0).
    assert [r["id"] for r in read_jsonl(two)] == [f"q{i}" for i in range(9)]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["one.jsonl", "one.summary.json", "two.jsonl",
                                                          "two.summary.json"]
    assert proc.stdout.count("amc23 [superthoughts]: accuracy") == 1 and proc.stdout.count("records: ") == 1
    # The steps mix pairs and single tokens: the adaptive decoding is what was compared.
    records = read_jsonl(two)
    assert 0 < sum(r["pair_steps"] for r in records) < sum(r["steps"] for r in records)


# Each rank decodes one batch, then both meet and are interrupted (Ctrl-C reaches every process
# of the job at once): the parts keep the first batch of each.
CUT_OFF = textwrap.dedent("""
    import sys
    import torch.distributed as dist
    from superthoughts_ext import eval_cli, evaluation
    from superthoughts_ext.generate import generate
    calls = []
    def cut_off(*args, **kwargs):
        if calls:
            dist.barrier()
            raise KeyboardInterrupt
        calls.append(1)
        return generate(*args, **kwargs)
    evaluation._default_generate = lambda: cut_off
    sys.exit(eval_cli.main(sys.argv[1:]))
""")


def test_a_cut_off_two_process_run_is_finished_by_one_process(checkpoint, tmp_path, capsys):
    sampled = ("--temperature", "1.0", "--samples", "2", "--seed", "3")
    one, cut = tmp_path / "one.jsonl", tmp_path / "cut.jsonl"
    assert run(parse_cli(eval_argv(checkpoint, one, *sampled))) == 0
    script = tmp_path / "cut_off.py"
    script.write_text(CUT_OFF)
    proc = torchrun(eval_argv(checkpoint, cut, *sampled), tmp_path, script)
    assert proc.returncode != 0 and proc.stderr.count("superthoughts eval: interrupted") == 2, proc.stderr[-4000:]
    parts = part_files(cut)
    assert [p.name for p in parts] == ["cut.jsonl.rank0.part", "cut.jsonl.rank1.part"]
    assert [len(read_jsonl(p)) for p in parts] == [2, 2] and read_jsonl(cut) == []
    capsys.readouterr()
    # Without --resume the parts are an earlier run's records, as a records file would be.
    assert run(parse_cli(eval_argv(checkpoint, cut, *sampled))) == 2
    assert "cut.jsonl.rank0.part holds the records of an earlier run" in capsys.readouterr().err
    # One process finishes it: the 4 records of the parts are kept, the other 14 decoded.
    assert run(parse_cli(eval_argv(checkpoint, cut, *sampled, "--resume"))) == 0
    assert "(4 records kept from the earlier run)" in capsys.readouterr().out
    assert part_files(cut) == [] and by_key(cut) == by_key(one) and len(by_key(one)) == 18
    assert summary_of(cut) == {**summary_of(one), "n_resumed": 4}


def test_a_lock_refused_to_rank_0_stops_every_rank(checkpoint, tmp_path):
    out = tmp_path / "st.jsonl"
    with output_lock(out, "evaluate"):  # another run writing the same output
        proc = torchrun(eval_argv(checkpoint, out), tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("is being written by") == 1 and "(rank 1)" not in proc.stderr, proc.stderr[-4000:]
    assert not out.exists() and part_files(out) == []


def test_an_error_every_rank_meets_is_printed_once(checkpoint, tmp_path):
    data = tmp_path / "long.jsonl"
    data.write_text(json.dumps({"id": "long", "problem": "what is" + " 1 +" * 80 + " 1", "answer": "81"}) + "\n"
                    + checkpoint["data"].read_text())
    out = tmp_path / "st.jsonl"
    proc = torchrun(eval_argv({**checkpoint, "data": data}, out), tmp_path)
    assert proc.returncode != 0
    assert proc.stderr.count("prompt(s) longer than the model's context") == 1, proc.stderr[-4000:]
    assert "superthoughts eval: error: evaluate: 1 prompt(s)" in proc.stderr and "(rank 1)" not in proc.stderr
    # No records written, nor an empty output left by the ranks' checks that it can be written.
    assert not out.exists() and part_files(out) == []


# ---------------------------------------------------------------- the pieces, one process


def test_ranks_share_the_items_strided_each_once():
    items = list(range(11))
    shares = [rank_share(items, Ranks(rank, 4)) for rank in range(4)]
    assert shares[1] == [1, 5, 9] and sorted(sum(shares, [])) == items
    assert {len(share) for share in shares} == {2, 3}
    assert rank_share(items, Ranks()) == items


def test_ranks_come_from_torchruns_environment():
    assert ranks_from_env({}) == Ranks(0, 1, 0) and not Ranks().distributed
    ranks = ranks_from_env({"RANK": "3", "WORLD_SIZE": "4", "LOCAL_RANK": "1"})
    assert ranks == Ranks(3, 4, 1) and ranks.distributed and not ranks.main
    with pytest.raises(ValueError, match="must be integers"):
        ranks_from_env({"RANK": "one"})
    with pytest.raises(ValueError, match=r"RANK=4 does not lie in \[0, WORLD_SIZE=4\)"):
        ranks_from_env({"RANK": "4", "WORLD_SIZE": "4"})


def test_part_files_are_found_by_rank_beside_their_output(tmp_path):
    out = tmp_path / "st.jsonl"
    assert part_path(out, 3) == tmp_path / "st.jsonl.rank3.part"
    for name in ["st.jsonl.rank10.part", "st.jsonl.rank2.part", "st.jsonl.rankx.part", "st.jsonl.partial",
                 "other.jsonl.rank0.part"]:
        (tmp_path / name).write_text("")
    assert [p.name for p in part_files(out)] == ["st.jsonl.rank2.part", "st.jsonl.rank10.part"]
    assert part_files(tmp_path / "none" / "st.jsonl") == []


def test_part_files_of_an_output_named_like_a_glob_pattern(tmp_path):
    # Globbed, "st[1].jsonl.rank*.part" found st1.jsonl's part and not its own: the merge left the
    # records in the parts and summarised none.
    for name in ["st[1].jsonl.rank0.part", "st1.jsonl.rank1.part", "st*.jsonl.rank2.part"]:
        (tmp_path / name).write_text("")
    assert [p.name for p in part_files(tmp_path / "st[1].jsonl")] == ["st[1].jsonl.rank0.part"]
    assert [p.name for p in part_files(tmp_path / "st*.jsonl")] == ["st*.jsonl.rank2.part"]


def write_lines(path: Path, records: list[dict], torn: str = "") -> None:
    path.write_text("".join(json.dumps(r) + "\n" for r in records) + torn, encoding="utf-8")


def full_run(tmp_path: Path) -> tuple[Path, list[dict]]:
    """One finished single-process run of the fake generate: its records file and records."""
    tokenizer = make_tokenizer()
    path = tmp_path / "full.jsonl"
    evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, mode="standard", batch_size=3,
             output_jsonl=path, progress=False, generate_fn=fake_generate(tokenizer, []))
    return path, read_jsonl(path)


def settings_and_prompts(records: list[dict]) -> tuple[dict, list[str]]:
    keys = ("bench", "mode", "threshold", "threshold_main", "max_new_tokens", "system_prompt", "model", "dtype",
            "data")
    prompt_of = {r["id"]: r["prompt"] for r in records}
    return {key: records[0][key] for key in keys}, [prompt_of[p.id] for p in PROBLEMS]


def test_gathered_records_merge_the_output_and_the_parts_in_problem_order(tmp_path):
    _, records = full_run(tmp_path)
    settings, prompts = settings_and_prompts(records)
    out = tmp_path / "st.jsonl"
    shuffled = records[::-1]
    write_lines(out, shuffled[:2])
    write_lines(part_path(out, 0), shuffled[2:5], torn='{"index": 1, "id": "p3')  # torn by the cut-off
    # A record both in the output and a part: a merge stopped before it removed the parts.
    write_lines(part_path(out, 1), shuffled[5:6] + shuffled[:1])
    merged = gathered_records(out, PROBLEMS, settings, prompts)
    assert [r["id"] for r in merged] == [p.id for p in PROBLEMS if p.id in {r["id"] for r in shuffled[:6]}]
    # Two different records of one problem are not one run's.
    write_lines(part_path(out, 1), shuffled[5:6] + [{**shuffled[0], "output": "another"}])
    with pytest.raises(ValueError, match=r"st.jsonl and .*st.jsonl.rank1.part hold different records of problem"):
        gathered_records(out, PROBLEMS, settings, prompts)
    # Each part is checked as a resume checks a records file.
    write_lines(part_path(out, 1), [{**shuffled[5], "max_new_tokens": 7}])
    with pytest.raises(ValueError, match=r"rank1.part:1 was written with max_new_tokens=7"):
        gathered_records(out, PROBLEMS, settings, prompts)


def test_one_process_resumes_from_part_files_and_overwrite_drops_them(tmp_path):
    path, records = full_run(tmp_path)
    tokenizer, calls = make_tokenizer(), []
    out = tmp_path / "st.jsonl"
    write_lines(part_path(out, 0), records[:2])
    write_lines(part_path(out, 1), records[2:3])
    with pytest.raises(FileExistsError, match="st.jsonl.rank0.part holds the records of an earlier run"):
        check_records_file(out, resume=False, overwrite=False)
    options = dict(mode="standard", batch_size=3, output_jsonl=out, progress=False)
    summary = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=fake_generate(tokenizer, calls),
                       resume=True, **options)
    assert [c["batch"] for c in calls] == [3, 1] and summary.n_resumed == 3 and part_files(out) == []
    strip = {"time"}
    assert sorted(({k: v for k, v in r.items() if k not in strip} for r in read_jsonl(out)), key=lambda r: r["id"]) \
        == sorted(({k: v for k, v in r.items() if k not in strip} for r in records), key=lambda r: r["id"])
    write_lines(part_path(out, 0), records[:2])
    calls.clear()
    summary = evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, generate_fn=fake_generate(tokenizer, calls),
                       overwrite=True, **options)
    assert summary.n_resumed == 0 and len(read_jsonl(out)) == len(PROBLEMS) and part_files(out) == []


def test_readers_of_result_files_are_refused_under_torchrun(tmp_path, monkeypatch, capsys):
    monkeypatch.setenv("WORLD_SIZE", "2")
    monkeypatch.setenv("RANK", "0")
    argv = ["--compare", str(tmp_path / "a.jsonl"), str(tmp_path / "b.jsonl")]
    assert run(parse_cli(argv)) == 2
    assert "--compare reads finished result files and decodes nothing: run it as one process" in \
        capsys.readouterr().err
    monkeypatch.setenv("RANK", "1")  # what every rank meets alike, rank 0 alone prints
    assert run(parse_cli(argv)) == 2 and capsys.readouterr().err == ""


def test_on_every_rank_raises_an_error_where_it_is_printed_once(monkeypatch):
    from superthoughts_ext import eval_ranks

    def fail(message: str):
        def work():
            raise ValueError(message)
        return work

    def others(*errors):  # what the other ranks' work ended in, as gather brings it
        monkeypatch.setattr(eval_ranks, "gather", lambda ranks, mine: [mine if e is ... else e for e in errors])

    others(..., None)
    assert on_every_rank(Ranks(0, 2, 0), lambda: 7) == 7
    # Met alike by every rank: rank 0 raises it, the others stop quietly.
    others(..., "ValueError: no model")
    with pytest.raises(ValueError, match="no model"):
        on_every_rank(Ranks(0, 2, 0), fail("no model"))
    others("ValueError: no model", ...)
    with pytest.raises(ReportedByAnotherRank):
        on_every_rank(Ranks(1, 2, 1), fail("no model"))
    # One rank's own error: raised there (printed, naming the rank); the others stop quietly.
    others("ValueError: no model", ...)
    with pytest.raises(ValueError, match="out of memory"):
        on_every_rank(Ranks(1, 2, 1), fail("out of memory"))
    others(None, ..., "RuntimeError: out of memory")
    with pytest.raises(ReportedByAnotherRank, match="rank 2 stopped: RuntimeError: out of memory"):
        on_every_rank(Ranks(1, 3, 1), lambda: 7)
    assert on_every_rank(Ranks(), lambda: 7) == 7


def test_only_rank_0_warns_of_the_data(checkpoint, tmp_path, monkeypatch, capsys):
    data = tmp_path / "repeats.jsonl"
    data.write_text(checkpoint["data"].read_text() + json.dumps({"id": "q1", "problem": "what is 9 + 9",
                                                                  "answer": "18"}) + "\n")
    argv = eval_argv({**checkpoint, "data": data}, tmp_path / "st.jsonl")
    monkeypatch.setenv("WORLD_SIZE", "2")
    for name in ("MASTER_ADDR", "MASTER_PORT"):  # each rank stops where it would join the others
        monkeypatch.delenv(name, raising=False)
    for rank, warned in [("0", True), ("1", False)]:
        monkeypatch.setenv("RANK", rank)
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            assert run(parse_cli(argv)) == 2
        assert any("the 'id' column repeats ['q1']" in str(w.message) for w in caught) == warned
        assert "MASTER_ADDR and MASTER_PORT unset" in capsys.readouterr().err


def test_each_rank_decodes_on_its_own_device():
    assert rank_device("cuda:1", Ranks()) == "cuda:1" and rank_device(None, Ranks()) is None
    assert rank_device("cpu", Ranks(1, 2, 1)) == "cpu"
    with pytest.raises(ValueError, match="--device cuda:1: under torchrun each process decodes on its own GPU"):
        rank_device("cuda:1", Ranks(1, 2, 1))
    if not torch.cuda.is_available():
        assert rank_device(None, Ranks(1, 2, 1)) == "cpu"
        with pytest.raises(ValueError, match="this torch has no CUDA device"):
            rank_device("cuda", Ranks(1, 2, 1))


def test_several_processes_need_a_process_group_and_an_output(tmp_path):
    tokenizer = make_tokenizer()
    with pytest.raises(ValueError, match="no torch.distributed process group"):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS, output_jsonl=tmp_path / "st.jsonl",
                 progress=False, ranks=Ranks(0, 2, 0))


def test_several_processes_need_torchruns_rendezvous(monkeypatch):
    from superthoughts_ext.eval_ranks import start_process_group

    for name in ("MASTER_ADDR", "MASTER_PORT"):
        monkeypatch.delenv(name, raising=False)
    with pytest.raises(ValueError, match="WORLD_SIZE=2 but MASTER_ADDR and MASTER_PORT unset: launch the processes "
                                         "with torchrun"):
        start_process_group(Ranks(0, 2, 0))
    assert start_process_group(Ranks()) is False  # one process alone joins nothing
