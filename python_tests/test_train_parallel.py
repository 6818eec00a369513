"""Training across processes: pad-split draws independent across DataLoader workers and ranks,
replayed by a resumed run, and real 2-process torchrun (gloo) runs, of a script and of the documented command.

Tiny random Qwen2 models and the data of test_train.py, CPU.
"""
from __future__ import annotations

import json
import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import FAST, free_port, losses  # noqa: E402

from superthoughts_ext.train import TrainOptions, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)


# Identical tokenised rows (21 response tokens, 11 units unsplit): every difference between
# two batches is a difference of pad-split draws.
SAME_ROWS = [{"prompt_ids": [5, 6, 7], "response_ids": list(range(4, 25))}] * 8


@pytest.fixture
def recorded_splits(monkeypatch, tmp_path):
    """Makes `train` collate with a collator that appends (pid, worker id, layout) of every
    batch to a file (DataLoader workers included); returns a reader of that file."""
    from superthoughts_ext import data

    log = tmp_path / "splits.jsonl"

    class Recording(data.SuperThoughtsCollator):
        def __call__(self, features):
            batch = super().__call__(features)
            worker = torch.utils.data.get_worker_info()
            with open(log, "a") as f:
                f.write(json.dumps([os.getpid(), -1 if worker is None else worker.id,
                                    batch["first_ids"].tolist()]) + "\n")
            return batch

    monkeypatch.setattr(data, "SuperThoughtsCollator", Recording)

    def read() -> list[list]:
        rows = [json.loads(line) for line in log.read_text().splitlines()] if log.exists() else []
        log.unlink(missing_ok=True)
        return rows

    return read


def test_dataloader_workers_draw_their_own_splits(base_dirs, tmp_path, recorded_splits):
    opts = dict(model=base_dirs["qwen2"], data=SAME_ROWS, rho_max=1.0,
                **{**FAST, "max_steps": 4, "batch_size": 1, "dataloader_num_workers": 2})
    result = train(TrainOptions(output_dir=tmp_path / "a", **opts))
    assert all(map(torch.isfinite, torch.tensor(losses(result))))
    first = recorded_splits()
    by_worker = {w: [layout for pid, wid, layout in first if wid == w] for w in (0, 1)}
    assert len(by_worker[0]) >= 2 and len(by_worker[1]) >= 2, first
    assert by_worker[0][:2] != by_worker[1][:2]
    train(TrainOptions(output_dir=tmp_path / "b", **opts))
    again = recorded_splits()
    assert sorted(map(str, (row[1:] for row in again))) == sorted(map(str, (row[1:] for row in first)))


@pytest.mark.parametrize("stop", [2, 4])  # within the first epoch, and at its end
def test_resumed_run_collates_as_the_uninterrupted_run(base_dirs, tmp_path, recorded_splits, stop):
    # 8 rows in batches of 2: 4 steps an epoch, 6 steps in all. A resumed run drew fresh splits
    # (from a stream keyed on the global step), so an interrupted pad-split run could never be
    # reproduced; each row's index now keys its splits.
    opts = dict(model=base_dirs["qwen2"], data=SAME_ROWS, rho_max=1.0)
    fast = {**FAST, "batch_size": 2, "save_steps": stop}
    straight = train(TrainOptions(**opts, output_dir=tmp_path / "straight", **{**fast, "max_steps": 6}))
    # The loader collates a batch ahead of the steps: only the first ones of a run count.
    uninterrupted = [layout for _, _, layout in recorded_splits()][:6]
    assert len(uninterrupted) == 6 and uninterrupted[4:] != uninterrupted[:2]  # epoch 2 draws anew
    train(TrainOptions(**opts, output_dir=tmp_path / "r", **{**fast, "max_steps": stop}))
    assert [layout for _, _, layout in recorded_splits()][:stop] == uninterrupted[:stop]
    resumed = train(TrainOptions(**opts, output_dir=tmp_path / "r", resume_from_checkpoint=True,
                                 **{**fast, "max_steps": 6}))
    assert [layout for _, _, layout in recorded_splits()][:6 - stop] == uninterrupted[stop:]
    torch.testing.assert_close(losses(resumed)[stop:], losses(straight)[stop:], rtol=2e-3, atol=0)
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=1e-4, atol=1e-6, msg=name)


DDP_SCRIPT = textwrap.dedent("""
    import os, sys
    from superthoughts_ext.train import TrainOptions, train
    from superthoughts_ext.train_utils import state_dict_digest
    model, data, out, lora_r, steps, resume = sys.argv[1:7]
    # A constant schedule: the resume below extends a 3-step run to 4 (train refuses that for a
    # schedule shaped by the run's length).
    result = train(TrainOptions(model=model, data=data, output_dir=out, max_steps=int(steps), batch_size=2,
                                learning_rate=1e-3, warmup_ratio=0.0, lr_scheduler="constant", save_steps=2,
                                logging_steps=1, progress_bar=False,
                                lora_r=int(lora_r), resume_from_checkpoint=True if resume == "1" else None))
    rank = os.environ["RANK"]
    # The same rows collated on each rank: the pad-split draws must differ between ranks.
    from superthoughts_ext.data import SuperThoughtsCollator
    splits = SuperThoughtsCollator(0, 2, rho_max=1.0)([{"prompt_ids": [5], "response_ids": list(range(4, 25))}] * 4)
    with open(os.path.join(out, f"digest_rank{rank}.txt"), "w") as f:
        f.write(" ".join([state_dict_digest(result.model), str(result.global_step), os.environ["WORLD_SIZE"],
                          str(hash(tuple(splits["first_ids"].flatten().tolist())))]))
    # gloo can abort in interpreter teardown ("terminate called without an active exception"),
    # after all the work is written (seen once here, as in test_train_fsdp.py): leave without it.
    import torch.distributed
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
""")


def run_ddp(script: Path, base_dirs, out: Path, lora_r: int, steps: int, resume: bool) -> list[list[str]]:
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2",
           "--master_addr", "127.0.0.1", "--master_port", str(free_port()),
           str(script), str(base_dirs["qwen2"]), str(base_dirs["data"]), str(out), str(lora_r), str(steps),
           "1" if resume else "0"]
    proc = subprocess.run(cmd, env=env, cwd=script.parent, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-4000:]
    return [(out / f"digest_rank{r}.txt").read_text().split() for r in (0, 1)]


@pytest.mark.parametrize("lora_r", [0, 4], ids=["full", "lora"])
def test_torchrun_two_processes(base_dirs, tmp_path, lora_r):
    script = tmp_path / "ddp_train.py"
    script.write_text(DDP_SCRIPT)
    out = tmp_path / "ddp"
    digests = run_ddp(script, base_dirs, out, lora_r, steps=3, resume=False)
    assert digests[0][:3] == digests[1][:3], digests
    assert digests[0][1:3] == ["3", "2"]
    assert digests[0][3] != digests[1][3], "both ranks drew the same pad-split pattern"
    assert (out / "config.json").is_file() and (out / "tokenizer_config.json").is_file()
    if lora_r == 0:
        # Resume the 2-process run from its last checkpoint (optimizer state included) for one more step.
        resumed = run_ddp(script, base_dirs, out, lora_r, steps=4, resume=True)
        assert resumed[0][:3] == resumed[1][:3] and resumed[0][1:3] == ["4", "2"], resumed


def test_torchrun_cli_command(base_dirs, tmp_path):
    """The documented multi-process command itself: `torchrun -m superthoughts_ext.train ...`. Its
    progress, into a pipe as into a log file, is whole lines from the first process alone."""
    out = tmp_path / "cli_ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), "-m", "superthoughts_ext.train", "--model", str(base_dirs["qwen2"]),
           "--data", str(base_dirs["data"]), "--output", str(out), "--max-steps", "2", "--batch-size", "2"]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout[-2000:] + proc.stderr[-4000:]
    assert proc.stdout.count(f"saved {out} after 2 steps") == 1, proc.stdout[-2000:]  # rank 0 only
    assert "\r" not in proc.stderr, proc.stderr[-2000:]
    for done in (f"tokenizing {base_dirs['data']}: 100% 8/8 [", "Loading weights: 100% ", "training: 100% 2/2 ["):
        assert sum(line.startswith(done) for line in proc.stderr.splitlines()) == 1, (done, proc.stderr[-2000:])
    from superthoughts_ext.modeling import load_model

    assert load_model(out).config.pad_token_id is not None
