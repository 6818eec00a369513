"""Held-out evaluation during training (--eval-data, --eval-steps): eval_loss and its parts in the
log and in each checkpoint's trainer_state.json at the eval steps, equal to the model's loss
computed directly on the held-out rows in their fixed layout; the same weights evaluated twice
score the same; evaluating leaves the training unchanged; bad held-out rows are named by line;
resumes; a 2-process torchrun (gloo) run. Tiny random Qwen2 models (test_train.py's), CPU.
"""
from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import textwrap
import warnings
from pathlib import Path

import pytest
import torch

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import FAST, ROWS, free_port, losses, make_tokenizer  # noqa: E402

from superthoughts_ext import train_data  # noqa: E402
from superthoughts_ext.data import SuperThoughtsCollator  # noqa: E402
from superthoughts_ext.eval_data import SYSTEM_PROMPT  # noqa: E402
from superthoughts_ext.train import TrainOptions, add_arguments, options_from_args, train  # noqa: E402
from superthoughts_ext.train_args import training_arguments  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)
# Sums the training rows do not hold.
HELD_OUT = [
    {"problem": f"what is {a} + {b}", "solution": f"{a} + {b} = {a + b} so the answer is {a + b}"}
    for a, b in [(5, 2), (1, 7), (8, 1), (0, 3), (2, 6)]
]


def write_rows(path: Path, rows: list) -> Path:
    path.write_text("".join((r if isinstance(r, str) else json.dumps(r)) + "\n" for r in rows))
    return path


def evals(log_history: list[dict]) -> list[dict]:
    return [entry for entry in log_history if "eval_loss" in entry]


def direct_eval_loss(model: torch.nn.Module, path: Path, batch_size: int, *, baseline: bool,
                     rho_max: float = 0.25) -> float:
    """The loss of `model` on the rows of `path` computed without Trainer: batches of `batch_size`
    in file order, each held-out row laid out by its line, the batch losses weighted by rows."""
    tok = make_tokenizer()
    examples = train_data.load_examples(path, tok, problem_field="problem", solution_field="solution",
                                        system_prompt=SYSTEM_PROMPT, max_length=None)
    pad = tok.pad_token_id if baseline else model.pad_token_id
    # Another seed and epoch than the run's: a held-out row's layout depends on neither.
    collator = SuperThoughtsCollator(pad, tok.eos_token_id, rho_max=rho_max, baseline=baseline, seed=99)
    collator.set_epoch(3)
    model.eval()
    total = 0.0
    with torch.no_grad():
        for start in range(0, len(examples), batch_size):
            rows = range(start, min(start + batch_size, len(examples)))
            batch = collator([{**examples[i], "eval_row": examples.numbers[i]} for i in rows])
            total += model(**batch).loss.item() * len(rows)
    return total / len(examples)


@pytest.mark.parametrize("kind", ["superthoughts", "baseline", "lora-accum"])
def test_eval_loss_and_parts_are_logged_at_the_eval_steps(base_dirs, tmp_path, kind):
    held_out = write_rows(tmp_path / "held_out.jsonl", HELD_OUT)
    baseline = kind == "baseline"
    extra = {"lora_r": 4, "grad_accum": 2, "batch_size": 2} if kind == "lora-accum" else {"batch_size": 3}
    out = tmp_path / "out"
    # No --eval-steps: every --save-steps, and after the last step (5).
    result = train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], eval_data=held_out, output_dir=out,
                                baseline=baseline, **{**FAST, "max_steps": 5, "save_steps": 2, **extra}))
    logged = evals(result.log_history)
    assert [entry["step"] for entry in logged] == [2, 4, 5] and result.num_eval_examples == len(HELD_OUT)
    saved = evals(json.loads((out / "checkpoint-4" / "trainer_state.json").read_text())["log_history"])
    assert saved == logged[:2]
    parts = {name for entry in logged for name in entry if name.startswith("eval_loss_")}
    if baseline:
        assert not parts
    else:
        assert parts == {"eval_loss_main", "eval_loss_mtp"}  # eval_loss_distill only with --distill-weight
        weight = result.model.config.lambda_mtp
        for entry in logged:
            assert entry["eval_loss"] == pytest.approx(entry["eval_loss_main"] + weight * entry["eval_loss_mtp"],
                                                       rel=1e-5), entry
        assert {"loss_main", "loss_mtp"} <= set(result.log_history[0])  # the training parts, as before
    assert logged[-1]["eval_loss"] < logged[0]["eval_loss"]  # it learns the task, held-out sums too
    # The last evaluation scored the final weights (a LoRA run's before merging them).
    direct = direct_eval_loss(result.model, held_out, extra["batch_size"], baseline=baseline)
    assert logged[-1]["eval_loss"] == pytest.approx(direct, rel=1e-4 if "lora_r" in extra else 1e-5)


def test_held_out_rows_have_one_layout_whatever_the_seed_and_epoch():
    # rho_max 1: most draws split a different number of pairs, at different places.
    rows = [{"prompt_ids": [5, 6], "response_ids": list(range(4, 40)), "eval_row": n} for n in (1, 2, 3, 4)]
    first = SuperThoughtsCollator(0, 2, rho_max=1.0, seed=0)(rows)
    other = SuperThoughtsCollator(0, 2, rho_max=1.0, seed=7)
    other.set_epoch(5)
    for name, value in other(rows).items():
        torch.testing.assert_close(value, first[name], msg=name)
    # Keyed by each row's number: the same tokens are laid out differently in each row, and
    # otherwise than the training draws them.
    assert len({tuple(r.tolist()) for r in first["first_ids"]}) == len(rows)
    alone = SuperThoughtsCollator(0, 2, rho_max=1.0)(rows[:1])["first_ids"]
    training_row = {"prompt_ids": [5, 6], "response_ids": list(range(4, 40)), "row": 0}
    training = SuperThoughtsCollator(0, 2, rho_max=1.0)([training_row])["first_ids"]
    assert training.tolist() != alone.tolist()


@pytest.fixture
def trainers(monkeypatch) -> list:
    """The SuperThoughtsTrainer each `train` call builds, kept."""
    import superthoughts_ext.train as train_module

    made = []

    class Kept(train_module.SuperThoughtsTrainer):
        def __init__(self, *args, **kwargs):
            super().__init__(*args, **kwargs)
            made.append(self)

    monkeypatch.setattr(train_module, "SuperThoughtsTrainer", Kept)
    return made


def test_the_same_weights_evaluate_to_the_same_loss(base_dirs, tmp_path, trainers, monkeypatch):
    held_out = write_rows(tmp_path / "held_out.jsonl", HELD_OUT)
    result = train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], eval_data=held_out,
                                output_dir=tmp_path / "out", rho_max=1.0, eval_steps=2,
                                **{**FAST, "max_steps": 2, "batch_size": 2}))
    trainer = trainers[-1]
    logged = evals(result.log_history)[-1]

    def no_logits(*args, **kwargs):
        raise AssertionError("the evaluation built the [B, T, V] logits it does not read")

    monkeypatch.setattr(type(result.model), "head_logits", no_logits)
    again = trainer.evaluate()
    # Another epoch and seed of the training's pad-split draws, and another fork of the random state.
    trainer.data_collator.set_epoch(4)
    trainer.data_collator.seed = 1234
    torch.manual_seed(1234)
    third = trainer.evaluate()
    for scored in (again, third):
        assert {name: scored[name] for name in ("eval_loss", "eval_loss_main", "eval_loss_mtp")} == {
            name: logged[name] for name in ("eval_loss", "eval_loss_main", "eval_loss_mtp")}


def test_evaluating_leaves_the_training_unchanged(base_dirs, tmp_path):
    # LoRA dropout draws from torch's global generator, as each evaluation's DataLoader did: an
    # evaluation in between changed every later step's dropout masks.
    held_out = write_rows(tmp_path / "held_out.jsonl", HELD_OUT)
    opts = dict(model=base_dirs["qwen2"], data=base_dirs["data"], lora_r=4, lora_dropout=0.3,
                **{**FAST, "max_steps": 5, "batch_size": 3})
    plain = train(TrainOptions(output_dir=tmp_path / "plain", **opts))
    evaluated = train(TrainOptions(output_dir=tmp_path / "eval", eval_data=held_out, eval_steps=2, **opts))
    assert [entry["step"] for entry in evals(evaluated.log_history)] == [2, 4, 5]
    assert losses(evaluated) == losses(plain)


def test_bad_held_out_rows_are_named(base_dirs, tmp_path):
    opts = dict(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=tmp_path / "o",
                **{**FAST, "max_steps": 1})
    bad = write_rows(tmp_path / "bad.jsonl", [HELD_OUT[0], HELD_OUT[1], {"problem": "what is 1 + 1"}])
    with pytest.raises(ValueError, match=rf"^{re.escape(str(bad))}:3: no field 'solution'; the row has 'problem'"):
        train(TrainOptions(eval_data=bad, **opts))
    with pytest.raises(ValueError, match=r"^eval_data: row 2: no field 'solution'"):
        train(TrainOptions(eval_data=[HELD_OUT[0], {"problem": "what is 1 + 1"}], **opts))
    with pytest.raises(FileNotFoundError, match=r"^train: eval data file '.*nope\.jsonl' does not exist$"):
        train(TrainOptions(eval_data=tmp_path / "nope.jsonl", **opts))
    empty = write_rows(tmp_path / "empty.jsonl", [{"problem": "what is 1 + 1", "solution": " "}] * 2)
    with pytest.warns(UserWarning, match="dropped 2 row"), pytest.raises(
            ValueError, match=rf"^train: no evaluation examples in {re.escape(str(empty))}: every row was dropped, "
                              r"2 row\(s\) with an empty 'solution' \(lines \[1, 2\]\)$"):
        train(TrainOptions(eval_data=empty, **opts))
    # Rows dropped while loading and past the model's context (256 positions) are named by line;
    # the rest is scored.
    long = {"problem": "what is 1 + 2", "solution": " ".join(["step"] * 600)}
    mixed = write_rows(tmp_path / "mixed.jsonl", [HELD_OUT[0], "", {"problem": "what", "solution": ""}, long,
                                                  HELD_OUT[1]])
    with warnings.catch_warnings(record=True) as record:
        warnings.simplefilter("always")
        result = train(TrainOptions(eval_data=mixed, **opts))
    said = [str(w.message) for w in record if str(w.message).startswith(str(mixed))]
    assert said == [f"{mixed}: dropped 1 row(s) with an empty 'solution' (lines [3])",
                    f"{mixed}: dropped 1 row(s) longer than the model's context, max_position_embeddings=256, "
                    f"up to {said[1].split('up to ')[1].split(' ')[0]} positions (lines [4])"]
    assert result.num_eval_examples == 2 and len(evals(result.log_history)) == 1


def test_a_missing_held_out_file_fails_before_the_training_rows_are_tokenised(base_dirs, tmp_path, monkeypatch):
    calls = []
    monkeypatch.setattr(train_data, "load_jsonl_examples", lambda *a, **k: calls.append(a) or pytest.fail("tokenised"))
    with pytest.raises(FileNotFoundError, match=r"^train: eval data file '.*nope\.jsonl' does not exist$"):
        train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=tmp_path / "o",
                           eval_data=tmp_path / "nope.jsonl", **{**FAST, "max_steps": 1}))
    assert calls == []


def test_eval_flags(tmp_path):
    import argparse

    parser = argparse.ArgumentParser()
    add_arguments(parser)

    def options(*flags: str) -> TrainOptions:
        return options_from_args(parser.parse_args(["--model", "m", "--data", "d", "--output", str(tmp_path / "o"),
                                                    *flags]))

    given = options("--eval-data", "v.jsonl", "--eval-steps", "7", "--batch-size", "3")
    args = training_arguments(given)
    assert (given.eval_data, args.eval_strategy, args.eval_steps, args.per_device_eval_batch_size) == (
        "v.jsonl", "steps", 7, 3)
    assert options("--eval-data", "v.jsonl").eval_interval == 500  # --save-steps
    assert options("--eval-data", "v.jsonl", "--save-steps", "0", "--logging-steps", "4").eval_interval == 4
    assert training_arguments(options()).eval_strategy == "no"
    for flags, message in [
        (["--eval-steps", "5"], "train: --eval-steps applies to runs with --eval-data"),
        (["--eval-data", "v.jsonl", "--eval-steps", "0"], "train: --eval-steps must be >= 1 (unset: --save-steps, "
                                                         "or --logging-steps without checkpoints), got 0"),
        (["--lr-scheduler", "reduce_lr_on_plateau"], "train: --lr-scheduler reduce_lr_on_plateau steps on the "
                                                     "held-out loss: give --eval-data"),
        (["--eval-data", "v.jsonl", "--lr-scheduler", "reduce_lr_on_plateau", "--warmup-ratio", "0.1"],
         "train: --warmup-ratio 0.1 needs a schedule with a warmup (constant_with_warmup), not reduce_lr_on_plateau"),
    ]:
        with pytest.raises(ValueError, match=f"^{re.escape(message)}"):
            options(*flags)


@pytest.mark.parametrize("progress_bar", [True, False], ids=["bars", "no-bars"])
def test_evaluation_progress_follows_progress_bar(base_dirs, tmp_path, capsys, progress_bar):
    held_out = write_rows(tmp_path / "held_out.jsonl", HELD_OUT)
    train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], eval_data=held_out,
                       output_dir=tmp_path / "o", **{**FAST, "max_steps": 3, "batch_size": 3,
                                                     "progress_bar": progress_bar}))
    err = capsys.readouterr().err
    # Tokenising the held-out file, and the evaluation loop's bar over its 2 batches (Trainer's, as
    # the lines of a log: pytest's stderr is no terminal).
    assert (f"tokenizing {held_out}: 100%" in err) == progress_bar
    assert ("evaluating:   0% 0/2 [" in err and "evaluating: 100% 2/2 [" in err) == progress_bar


def test_resume_takes_this_runs_eval_steps_and_says_when_the_held_out_set_changes(base_dirs, tmp_path):
    first = write_rows(tmp_path / "first.jsonl", HELD_OUT)
    second = write_rows(tmp_path / "second.jsonl", HELD_OUT[:3])
    out = tmp_path / "o"
    opts = dict(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=out,
                **{**FAST, "batch_size": 4, "save_steps": 2})
    train(TrainOptions(**{**opts, "max_steps": 2}))
    # The checkpoint's trainer_state.json holds TrainerState's eval_steps, 500: Trainer evaluated at
    # step 4 alone.
    resumed = train(TrainOptions(**{**opts, "max_steps": 4}, eval_data=first, eval_steps=1,
                                 resume_from_checkpoint=True))
    assert [entry["step"] for entry in evals(resumed.log_history)] == [3, 4]
    with pytest.warns(UserWarning, match=r"was evaluated on --eval-data sha256 \w+\.\.\. \(this run: sha256 "
                                         r"\w+\.\.\.\): the eval_loss entries from here on score this run's "
                                         r"held-out rows"):
        again = train(TrainOptions(**{**opts, "max_steps": 6}, eval_data=second, resume_from_checkpoint=True))
    assert [entry["step"] for entry in evals(again.log_history)] == [3, 4, 6]


def test_resume_logs_and_saves_at_this_runs_intervals(base_dirs, tmp_path):
    # Trainer kept the checkpoint's logging and save intervals (only a log line said so).
    out = tmp_path / "o"
    opts = dict(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=out,
                **{**FAST, "batch_size": 4, "save_steps": 2, "logging_steps": 2, "save_total_limit": 0})
    train(TrainOptions(**{**opts, "max_steps": 2}))
    resumed = train(TrainOptions(**{**opts, "max_steps": 5, "save_steps": 1, "logging_steps": 1},
                                 resume_from_checkpoint=True))
    assert [entry["step"] for entry in resumed.log_history if "loss" in entry] == [1, 2, 3, 4, 5]  # 1: the first step
    assert sorted(path.name for path in out.glob("checkpoint-*")) == [f"checkpoint-{n}" for n in (2, 3, 4, 5)]


def test_a_schedule_on_the_held_out_loss_resumes_only_with_its_held_out_set(base_dirs, tmp_path):
    first = write_rows(tmp_path / "first.jsonl", HELD_OUT)
    second = write_rows(tmp_path / "second.jsonl", HELD_OUT[:3])
    out = tmp_path / "o"
    opts = dict(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=out, eval_data=first,
                **{**FAST, "batch_size": 4, "save_steps": 2, "lr_scheduler": "reduce_lr_on_plateau"})
    result = train(TrainOptions(**{**opts, "max_steps": 2}))
    assert len(evals(result.log_history)) == 1
    for change, flag in [({"eval_data": second}, "--eval-data"), ({"eval_steps": 1}, "--eval-steps 2")]:
        with pytest.raises(ValueError, match=f"was trained with {flag}"):
            train(TrainOptions(**{**opts, "max_steps": 4, **change}, resume_from_checkpoint=True))
    resumed = train(TrainOptions(**{**opts, "max_steps": 4}, resume_from_checkpoint=True))
    assert [entry["step"] for entry in evals(resumed.log_history)] == [2, 4]


DDP_SCRIPT = textwrap.dedent("""
    import json, os, sys
    from superthoughts_ext.train import TrainOptions, train
    model, data, held_out, out = sys.argv[1:5]
    result = train(TrainOptions(model=model, data=data, eval_data=held_out, output_dir=out, max_steps=2,
                                batch_size=1, eval_steps=1, save_steps=0, learning_rate=1e-3, warmup_ratio=0.0,
                                lr_scheduler="constant", logging_steps=1, progress_bar=False))
    evals = [entry for entry in result.log_history if "eval_loss" in entry]
    with open(os.path.join(out, f"evals_rank{os.environ['RANK']}.json"), "w") as f:
        json.dump(evals, f)
    # gloo can abort in interpreter teardown (test_train_parallel.py): leave without it.
    import torch.distributed
    if torch.distributed.is_initialized():
        torch.distributed.barrier()
    sys.stdout.flush()
    sys.stderr.flush()
    os._exit(0)
""")


def test_torchrun_two_processes_score_every_held_out_row_once(base_dirs, tmp_path):
    # 5 rows, one per process and batch: the last batch of rank 1 repeats a row (accelerate evens
    # the batches), which the gather cuts, so the loss is the mean over the 5 rows.
    held_out = write_rows(tmp_path / "held_out.jsonl", HELD_OUT)
    script = write_rows(tmp_path / "ddp_eval.py", [DDP_SCRIPT])
    out = tmp_path / "ddp"
    env = {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
           "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])}
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), str(base_dirs["qwen2"]), str(base_dirs["data"]),
           str(held_out), str(out)]
    proc = subprocess.run(cmd, env=env, cwd=tmp_path, capture_output=True, text=True, timeout=180)
    assert proc.returncode == 0, proc.stderr[-4000:]
    ranks = [json.loads((out / f"evals_rank{rank}.json").read_text()) for rank in (0, 1)]
    metrics = [[{k: v for k, v in entry.items() if "runtime" not in k and "per_second" not in k} for entry in rank]
               for rank in ranks]
    assert metrics[0] == metrics[1] and [entry["step"] for entry in metrics[0]] == [1, 2]
    from superthoughts_ext.modeling import load_model

    model = load_model(out)
    last = metrics[0][-1]
    assert last["eval_loss"] == pytest.approx(direct_eval_loss(model, held_out, 1, baseline=False), rel=1e-5)
    # The parts are gathered as the loss is: they add up to it.
    parts = last["eval_loss_main"] + model.config.lambda_mtp * last["eval_loss_mtp"]
    assert last["eval_loss"] == pytest.approx(parts, rel=1e-5)
