"""A training error under torchrun: printed once where every rank meets it, by the rank that met
it (named) where only some do. `train_ranks.report_error` against a store in this process, then
real 2-process torchrun (gloo) runs of `python -m superthoughts_ext.train` on a tiny Qwen2, CPU.
"""
from __future__ import annotations

import os
import subprocess
import sys
import time
from datetime import timedelta
from pathlib import Path

import pytest
from torch.distributed import TCPStore

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import free_port  # noqa: E402

from superthoughts_ext import train_ranks  # noqa: E402
from superthoughts_ext.train_ranks import error_line, report_error  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)
LINE = "error: train.jsonl:4: no field 'solution'"


def test_the_lowest_rank_that_met_an_error_prints_it() -> None:
    assert error_line(LINE, 0, []) == LINE
    assert error_line(LINE, 1, [LINE]) is None  # rank 0 prints it
    assert error_line(LINE, 2, ["error: another", LINE]) is None  # rank 1 prints it
    assert error_line(LINE, 1, ["error: another"]) == f"[rank 1] {LINE}"
    assert error_line(LINE, 3, []) == f"[rank 3] {LINE}"


@pytest.fixture
def agent_store(monkeypatch: pytest.MonkeyPatch) -> TCPStore:
    """A store as torchrun's agent keeps one, and the environment it gives a worker of 2 ranks."""
    store = TCPStore("127.0.0.1", 0, is_master=True, timeout=timedelta(seconds=10), wait_for_workers=False)
    for name, value in {"TORCHELASTIC_USE_AGENT_STORE": "True", "MASTER_ADDR": "127.0.0.1",
                        "MASTER_PORT": str(store.port), "WORLD_SIZE": "2", "TORCHELASTIC_RESTART_COUNT": "0"}.items():
        monkeypatch.setenv(name, value)
    monkeypatch.setattr(train_ranks, "AGREEMENT_WAIT", 1.0)
    return store


def _report_as(rank: int, text: str, monkeypatch: pytest.MonkeyPatch, **how: bool) -> float:
    """`report_error(text, **how)` as rank `rank`; the seconds it took."""
    monkeypatch.setenv("RANK", str(rank))
    start = time.monotonic()
    report_error(text, **how)
    return time.monotonic() - start


@pytest.mark.parametrize("rank_0s", [LINE, "error: another"], ids=["same", "other"])
def test_a_rank_leaves_rank_0s_error_to_it_and_prints_another(agent_store, monkeypatch, capsys, rank_0s: str) -> None:
    agent_store.set("superthoughts_train_error/0/0", rank_0s)
    took = _report_as(1, LINE, monkeypatch)
    assert capsys.readouterr().err == ("" if rank_0s == LINE else f"[rank 1] {LINE}\n")
    assert took < 0.5  # every rank has reported: no wait
    assert agent_store.get("superthoughts_train_error/0/1") == LINE.encode()


def test_an_error_of_one_rank_alone_is_printed_after_the_bounded_wait(agent_store, monkeypatch, capsys) -> None:
    took = _report_as(1, LINE, monkeypatch)  # rank 0 never fails
    assert capsys.readouterr().err == f"[rank 1] {LINE}\n"
    assert 1.0 <= took < 3.0


def test_rank_0_prints_at_once_and_waits_for_the_others_to_report(agent_store, monkeypatch, capsys) -> None:
    agent_store.set("superthoughts_train_error/0/1", LINE)
    took = _report_as(0, LINE, monkeypatch)
    assert capsys.readouterr().err == f"{LINE}\n" and took < 0.5


@pytest.mark.parametrize("rank", [0, 1])
def test_an_error_no_other_rank_can_meet_is_printed_at_once(agent_store, monkeypatch, capsys, rank: int) -> None:
    # Rank 0's output lock: waiting for the others, which never meet it, would only end the
    # command AGREEMENT_WAIT later.
    took = _report_as(rank, LINE, monkeypatch, this_rank_alone=True)
    assert took < 0.5
    assert capsys.readouterr().err == (f"{LINE}\n" if rank == 0 else f"[rank 1] {LINE}\n")


def test_a_refused_output_lock_is_printed_at_once(base_dirs, agent_store, monkeypatch, capsys, tmp_path) -> None:
    from superthoughts_ext import train
    from superthoughts_ext.run_info import output_lock

    monkeypatch.setattr(train_ranks, "AGREEMENT_WAIT", 5.0)
    monkeypatch.setenv("RANK", "0")
    out = tmp_path / "out"
    with output_lock(out, "train"):  # another run's
        start = time.monotonic()
        status = train.main(["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]),
                             "--output", str(out)])
        took = time.monotonic() - start
    assert status == 2 and took < 4.0, took
    assert capsys.readouterr().err.count("is being written by") == 1


def test_without_torchruns_store_every_rank_prints_as_before(monkeypatch, capsys) -> None:
    monkeypatch.delenv("TORCHELASTIC_USE_AGENT_STORE", raising=False)
    monkeypatch.setenv("WORLD_SIZE", "2")
    _report_as(1, LINE, monkeypatch)
    assert capsys.readouterr().err == f"{LINE}\n"


# Runs the training command with the arguments given, each "RANK" in them replaced by this
# process's rank (a rank-specific --data), a failing rank waiting 3 s for the others.
BY_RANK_SCRIPT = """
import os, sys
from superthoughts_ext import train, train_ranks
train_ranks.AGREEMENT_WAIT = 3.0
sys.exit(train.main([arg.replace("RANK", os.environ["RANK"]) for arg in sys.argv[1:]]))
"""


def torchrun_train(tmp_path: Path, *args: str, script: Path | None = None) -> subprocess.CompletedProcess[str]:
    """`torchrun --nproc_per_node 2 -m superthoughts_ext.train ARGS` (or `script ARGS`) on CPU."""
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), *([str(script)] if script else ["-m", "superthoughts_ext.train"]),
           "--max-steps", "2", "--batch-size", "2", "--no-progress", *args]
    return subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)


def _bad_data(base_dirs, path: Path) -> Path:
    """The test rows with a fourth row lacking its solution."""
    lines = Path(base_dirs["data"]).read_text().splitlines(keepends=True)
    path.write_text("".join(lines[:3]) + '{"problem": "what is 1 + 1"}\n')
    return path


@pytest.mark.parametrize("error", ["row", "option"])
def test_an_error_every_rank_meets_is_printed_once(base_dirs, tmp_path: Path, error: str) -> None:
    # Each rank read the same bad row, or parsed the same bad --dtype, and printed it: twice.
    data = _bad_data(base_dirs, tmp_path / "bad.jsonl") if error == "row" else base_dirs["data"]
    proc = torchrun_train(tmp_path, "--model", str(base_dirs["qwen2"]), "--data", str(data),
                          "--output", str(tmp_path / "out"), *(["--dtype", "float64"] if error == "option" else []))
    assert proc.returncode == 1, proc.stderr[-3000:]  # torchrun's status for a failed worker
    said = f"error: {data}:4: no field 'solution'" if error == "row" else "error: argument --dtype: invalid choice"
    assert proc.stderr.count(said) == 1, proc.stderr[-3000:]
    assert "exitcode  : 2" in proc.stderr and "terminated (SIGTERM)" not in proc.stderr, proc.stderr[-3000:]


def test_an_error_of_one_rank_is_printed_by_that_rank_naming_it(base_dirs, tmp_path: Path) -> None:
    script = tmp_path / "train_by_rank.py"
    script.write_text(BY_RANK_SCRIPT)
    (tmp_path / "data0.jsonl").write_text(Path(base_dirs["data"]).read_text())
    _bad_data(base_dirs, tmp_path / "data1.jsonl")
    proc = torchrun_train(tmp_path, "--model", str(base_dirs["qwen2"]), "--data", "dataRANK.jsonl",
                          "--output", str(tmp_path / "out"), script=script)
    assert proc.returncode == 1, proc.stderr[-3000:]
    errors = [line for line in proc.stderr.splitlines() if "no field 'solution'" in line]
    assert errors == [("[rank 1] error: data1.jsonl:4: no field 'solution'; the row has 'problem' "
                       "(--problem-field / --solution-field name others)")], proc.stderr[-3000:]
