"""Preemption: SIGTERM during training finishes the optimizer step under way, saves a checkpoint
at it and ends the run with exit status 143 (train_preemption.py), in one process, with its
DataLoader workers signalled too (as SLURM signals a job), and across 2 torchrun processes
(gloo); a second SIGTERM (after REPEAT_WINDOW_S) or Ctrl-C stops at once, as Ctrl-C alone always
did; a SIGTERM once training has returned lets the final save finish, then stops (under FSDP also
one in or after the last step), and `--resume auto` then ends at once with the uninterrupted run's
weights. Tiny random Qwen2 models on CPU (test_train.py's fixtures). (`--resume auto`'s choice of a
checkpoint or a new run: test_train_resume_auto.py.)
"""
from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import textwrap
import time
from pathlib import Path
from types import SimpleNamespace

import pytest
import torch

pytest.importorskip("transformers")
import test_train  # noqa: E402
from test_train import FAST, ROWS, free_port, losses  # noqa: E402

from superthoughts_ext import train_preemption  # noqa: E402
from superthoughts_ext.modeling import load_model  # noqa: E402
from superthoughts_ext.trainer import SuperThoughtsTrainer  # noqa: E402
from superthoughts_ext.train import TrainOptions, main, train  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
base_dirs = test_train.base_dirs  # the saved tiny base checkpoints (a fixture)

# FAST as `superthoughts train` flags, without pad-split draws (a resumed run matches an
# uninterrupted one), saving every 2 of 6 steps.
FLAGS = ["--max-steps", "6", "--save-steps", "2", "--learning-rate", "3e-3", "--batch-size", "8",
         "--warmup-ratio", "0", "--lr-scheduler", "constant", "--logging-steps", "1", "--no-progress",
         "--rho-max", "0", "--seed", "0"]
RESUMED_TO_6 = {**FAST, "max_steps": 6, "save_steps": 2, "rho_max": 0.0}


def signal_during_step(monkeypatch, step: int, *signals: int) -> None:
    """Makes the run send itself `signals` during the forward of step `step` (once)."""
    original = SuperThoughtsTrainer.training_step
    sent = []

    def training_step(self, *args, **kwargs):
        if self.state.global_step == step - 1 and not sent:
            sent.append(step)
            for signum in signals:
                os.kill(os.getpid(), signum)
        return original(self, *args, **kwargs)

    monkeypatch.setattr(SuperThoughtsTrainer, "training_step", training_step)


def checkpoints(out: Path) -> list[str]:
    return sorted(p.name for p in out.glob("checkpoint-*"))


def test_sigterm_saves_the_step_reached_and_resume_goes_on_as_the_uninterrupted_run(base_dirs, tmp_path,
                                                                                     monkeypatch, capsys):
    straight = train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=tmp_path / "straight",
                                  **RESUMED_TO_6))
    out = tmp_path / "out"
    argv = ["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out), *FLAGS]
    # Twice at once, as a worker under torchrun in a SLURM job gets it (SLURM's, then torchrun's).
    signal_during_step(monkeypatch, 3, signal.SIGTERM, signal.SIGTERM)
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "train: SIGTERM: step 3 done, saving checkpoint-3, then stopping" in err
    assert err.endswith("superthoughts train: terminated (SIGTERM): checkpoint-3 saved; the same command with "
                        "--resume continues from the last checkpoint in --output, if one was saved\n"), err
    # Past the periodic checkpoint-2, and no final model: the run is not finished.
    assert checkpoints(out) == ["checkpoint-2", "checkpoint-3"] and not (out / "config.json").exists()
    assert json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())["global_step"] == 3
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.undo()
    resumed = train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=out,
                                 resume_from_checkpoint=True, **RESUMED_TO_6))
    assert resumed.global_step == 6 and [e["step"] for e in resumed.log_history if "loss" in e] == [1, 2, 3, 4, 5, 6]
    torch.testing.assert_close(losses(resumed)[3:], losses(straight)[3:], rtol=2e-3, atol=0)
    for name, value in straight.model.state_dict().items():
        torch.testing.assert_close(resumed.model.state_dict()[name], value, rtol=1e-4, atol=1e-6, msg=name)


def test_sigterm_during_a_periodic_save_stops_at_that_checkpoint(base_dirs, tmp_path, monkeypatch, capsys):
    # The run went on into another step and another save, both within the grace period.
    import transformers.trainer

    straight = train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=tmp_path / "straight",
                                  **RESUMED_TO_6))
    out = tmp_path / "out"
    argv = ["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out), *FLAGS,
            "--resume", "auto"]
    saved_rng_state = transformers.trainer.Trainer._save_rng_state

    def signalled_in_the_save(self, output_dir):
        if self.state.global_step == 2:
            os.kill(os.getpid(), signal.SIGTERM)
        saved_rng_state(self, output_dir)

    monkeypatch.setattr(transformers.trainer.Trainer, "_save_rng_state", signalled_in_the_save)
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "train: SIGTERM: checkpoint-2 saved, the step reached: stopping there" in err
    assert "terminated (SIGTERM): checkpoint-2 saved; the same command continues" in err
    assert checkpoints(out) == ["checkpoint-2"] and not (out / "config.json").exists()
    monkeypatch.undo()
    assert main(argv) == 0
    assert_same_weights(load_model(out), straight.model)


def test_a_second_sigterm_cuts_the_save_off_and_ctrl_c_stops_at_once(base_dirs, tmp_path, monkeypatch, capsys):
    import transformers.trainer

    out = tmp_path / "out"
    argv = ["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out), *FLAGS]
    # A second SIGTERM past the repeat window, while checkpoint-3 is written: a stop at once, and
    # the half-written folder removed (trainer.SuperThoughtsTrainer._save_checkpoint).
    monkeypatch.setattr(train_preemption, "REPEAT_WINDOW_S", 0.0)
    signal_during_step(monkeypatch, 3, signal.SIGTERM)
    saved_rng_state = transformers.trainer.Trainer._save_rng_state

    def signalled_again(self, output_dir):
        if self.state.global_step == 3:
            os.kill(os.getpid(), signal.SIGTERM)
        saved_rng_state(self, output_dir)

    monkeypatch.setattr(transformers.trainer.Trainer, "_save_rng_state", signalled_again)
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "train: SIGTERM: step 3 done, saving checkpoint-3" in err  # the first one: a save begun
    assert err.endswith("superthoughts train: terminated (SIGTERM); the same command with --resume continues from "
                        "the last checkpoint in --output, if one was saved\n"), err
    assert checkpoints(out) == ["checkpoint-2"]
    monkeypatch.undo()
    # Ctrl-C stops where it finds the run, without a save: a person asks for a stop now.
    signal_during_step(monkeypatch, 5, signal.SIGINT)
    assert main([*argv, "--resume"]) == 130
    assert capsys.readouterr().err.endswith("superthoughts train: interrupted; the same command with --resume "
                                            "continues from the last checkpoint in --output, if one was saved\n")
    assert checkpoints(out) == ["checkpoint-2", "checkpoint-4"]
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_sigterm_during_the_last_steps_evaluation_without_checkpoints_saves_one_to_resume_from(
        base_dirs, tmp_path, monkeypatch, capsys):
    # --save-steps 0: the run saves no checkpoint, and a SIGTERM after the last step's end (here in
    # its evaluation) stopped it before the final save with nothing on disk: every step was lost.
    straight = train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=tmp_path / "straight",
                                  **{**RESUMED_TO_6, "max_steps": 4, "save_steps": 0}))
    evaluate = SuperThoughtsTrainer.evaluate

    def signalled_in_the_last_evaluation(self, *args, **kwargs):
        if self.state.global_step == 4:
            os.kill(os.getpid(), signal.SIGTERM)
        return evaluate(self, *args, **kwargs)

    monkeypatch.setattr(SuperThoughtsTrainer, "evaluate", signalled_in_the_last_evaluation)
    out = tmp_path / "out"
    argv = ["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out),
            *FLAGS, "--max-steps", "4", "--save-steps", "0", "--eval-data", str(base_dirs["data"]),
            "--eval-steps", "2", "--resume", "auto"]
    assert main(argv) == 143
    err = capsys.readouterr().err
    assert "train: SIGTERM after the last step: saving checkpoint-4, then stopping before the final save" in err
    assert "terminated (SIGTERM): after the last step, before the final save (checkpoint-4 holds that step)" in err
    assert checkpoints(out) == ["checkpoint-4"] and not (out / "config.json").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    monkeypatch.undo()
    # The requeued command: the checkpoint's model saved as the final one, no step trained again;
    # a SIGTERM during that save lets it finish too.
    signal_during_final_save(monkeypatch, signal.SIGTERM)
    with pytest.warns(UserWarning, match=r"checkpoint-4' is the last step of its run .* no step trained"):
        assert main(argv) == 143
    assert capsys.readouterr().err.endswith(f"{FINAL_SAVE_WENT_ON} saved in '{out}'\n")
    assert (out / "config.json").is_file()
    assert_same_weights(load_model(out), straight.model)
    monkeypatch.undo()
    assert main(argv) == 0 and capsys.readouterr().out.endswith(f"saved after 4 steps, is in '{out}'; nothing to "
                                                                 "train\n")


# How a run whose final save a SIGTERM came during ends (no resume hint: nothing is left to resume).
FINAL_SAVE_WENT_ON = ("superthoughts train: terminated (SIGTERM): after training: the final save went on, the run is "
                      "finished and its model")


def signal_during_final_save(monkeypatch, *signals: int) -> None:
    """Makes the run send itself `signals` while it writes the final model (into .final-save)."""
    save = SuperThoughtsTrainer._save

    def signalled_save(self, output_dir=None, state_dict=None):
        if output_dir is not None and Path(output_dir).name == ".final-save":
            for signum in signals:
                os.kill(os.getpid(), signum)
        return save(self, output_dir, state_dict)

    monkeypatch.setattr(SuperThoughtsTrainer, "_save", signalled_save)


def assert_same_weights(model: torch.nn.Module, expected: torch.nn.Module) -> None:
    trained = expected.state_dict()
    for name, value in model.state_dict().items():
        torch.testing.assert_close(value, trained[name], rtol=1e-4, atol=1e-6, msg=name)


@pytest.mark.parametrize("when", ["as training returns", "in the final save"])
def test_sigterm_after_training_lets_the_final_save_finish_and_resume_auto_then_ends_at_once(
        base_dirs, tmp_path, monkeypatch, capsys, when):
    # --save-steps 0 keeps no checkpoint: a SIGTERM that cut the final save off lost every step.
    # From the moment training returns (its handler handed over, not given back) the save goes on.
    straight = train(TrainOptions(model=base_dirs["qwen2"], data=base_dirs["data"], output_dir=tmp_path / "straight",
                                  **{**RESUMED_TO_6, "max_steps": 4, "save_steps": 0}))
    out = tmp_path / "out"
    argv = ["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out),
            *FLAGS, "--max-steps", "4", "--save-steps", "0", "--resume", "auto"]
    if when == "in the final save":
        signal_during_final_save(monkeypatch, signal.SIGTERM)
    else:
        trained = SuperThoughtsTrainer.train

        def signalled_on_return(self, *args, **kwargs):
            output = trained(self, *args, **kwargs)
            os.kill(os.getpid(), signal.SIGTERM)
            return output

        monkeypatch.setattr(SuperThoughtsTrainer, "train", signalled_on_return)
    assert main(argv) == 143
    assert capsys.readouterr().err.endswith(f"{FINAL_SAVE_WENT_ON} saved in '{out}'\n")
    assert checkpoints(out) == [] and (out / "config.json").is_file() and not (out / ".final-save").exists()
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
    assert_same_weights(load_model(out), straight.model)
    monkeypatch.undo()
    # The requeued command: nothing to train, exit status 0 (a requeue loop's end).
    assert main(argv) == 0
    captured = capsys.readouterr()
    assert captured.out == (f"train: --resume auto: the run is already finished: its model, saved after 4 steps, is "
                            f"in '{out}'; nothing to train\n"), captured
    assert_same_weights(load_model(out), straight.model)


def test_a_second_sigterm_or_ctrl_c_cuts_the_final_save_off(base_dirs, tmp_path, monkeypatch, capsys):
    out = tmp_path / "out"
    argv = ["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out),
            *FLAGS, "--max-steps", "1", "--save-steps", "0"]
    monkeypatch.setattr(train_preemption, "REPEAT_WINDOW_S", 0.0)
    for signals, status in [((signal.SIGTERM, signal.SIGTERM), 143), ((signal.SIGTERM, signal.SIGINT), 130)]:
        signal_during_final_save(monkeypatch, *signals)
        assert main(argv) == status
        assert capsys.readouterr().err.endswith("; the same command with --resume continues from the last checkpoint "
                                                "in --output, if one was saved\n")
        assert not (out / "config.json").exists() and not (out / ".final-save").exists()
        assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL


def test_a_callers_own_sigterm_handler_is_left_alone(base_dirs, tmp_path, monkeypatch):
    seen = []
    previous = signal.signal(signal.SIGTERM, lambda signum, frame: seen.append(signum))
    try:
        signal_during_step(monkeypatch, 2, signal.SIGTERM)
        result = train(TrainOptions(model=base_dirs["qwen2"], data=ROWS, output_dir=tmp_path / "o",
                                    **{**FAST, "max_steps": 3}))
    finally:
        signal.signal(signal.SIGTERM, previous)
    assert seen == [signal.SIGTERM] and result.global_step == 3


def test_repeats_within_the_window_are_one_request(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(train_preemption.time, "monotonic", lambda: clock[0])
    stop = train_preemption.StopOnSigterm(lambda flag: flag)
    stop._on_sigterm(signal.SIGTERM, None)
    clock[0] += train_preemption.REPEAT_WINDOW_S - 0.1
    stop._on_sigterm(signal.SIGTERM, None)  # torchrun's copy of SLURM's signal
    assert stop.asked_at == 100.0
    clock[0] += 0.1
    with pytest.raises(train_preemption.cli.Terminated):
        stop._on_sigterm(signal.SIGTERM, None)


# `python -m superthoughts_ext.train ARGS` whose process sends (or awaits) SIGTERM during the
# forward of step SIGTERM_DURING_STEP ("final": during the final save): rank 0 signals its launcher
# (torchrun forwards it to every rank), or writes READY_FILE for a SIGTERM from outside; then it
# waits there for the signal. SIGTERM_BLOCKED_ON_RANK holds the signal back from that rank
# (blocked before any thread starts): it never sees it.
DRIVER = textwrap.dedent("""
    import os, signal, sys, time
    from pathlib import Path
    if os.environ.get("RANK", "0") == os.environ.get("SIGTERM_BLOCKED_ON_RANK"):
        signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGTERM})
    from superthoughts_ext.train import main
    from superthoughts_ext.trainer import SuperThoughtsTrainer

    when, sender = os.environ["SIGTERM_DURING_STEP"], os.environ["SIGTERM_SENDER"]
    training_step, save_final_model = SuperThoughtsTrainer.training_step, SuperThoughtsTrainer.save_final_model
    sent = []

    def signalled(trainer):
        if sent or os.environ.get("RANK", "0") != "0":
            return
        sent.append(when)
        if sender == "launcher":
            os.kill(os.getppid(), signal.SIGTERM)
        else:
            Path(os.environ["READY_FILE"]).touch()
        # Within this step, however late it comes (a tiny model's step is over in milliseconds).
        deadline = time.monotonic() + 60
        while trainer._sigterm_stop.asked_at is None and time.monotonic() < deadline:
            time.sleep(0.01)
        time.sleep(0.3)  # for the DataLoader worker's end, where it ends on the signal

    def signalled_step(self, *args, **kwargs):
        if when != "final" and self.state.global_step == int(when) - 1:
            signalled(self)
        return training_step(self, *args, **kwargs)

    def signalled_final_save(self, *args, **kwargs):
        if when == "final":
            signalled(self)
        return save_final_model(self, *args, **kwargs)

    SuperThoughtsTrainer.training_step = signalled_step
    SuperThoughtsTrainer.save_final_model = signalled_final_save
    sys.exit(main(sys.argv[1:]))
""")


def driver_env(**values: str) -> dict[str, str]:
    return {**os.environ, "OMP_NUM_THREADS": "1", "TOKENIZERS_PARALLELISM": "false",
            "PYTHONPATH": os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")]), **values}


def test_sigterm_to_the_whole_job_spares_dataloader_workers(base_dirs, tmp_path):
    # SLURM signals every process of the job: torch ended each DataLoader worker on it, and the
    # main process raised "DataLoader worker (pid ...) is killed by signal: Terminated" mid-step.
    script, ready, out = tmp_path / "driver.py", tmp_path / "ready", tmp_path / "out"
    script.write_text(DRIVER)
    argv = ["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out),
            "--max-steps", "6", "--save-steps", "2", "--batch-size", "1", "--no-progress", "--num-workers", "1"]
    env = driver_env(SIGTERM_DURING_STEP="3", SIGTERM_SENDER="outside", READY_FILE=str(ready))
    job = subprocess.Popen([sys.executable, str(script), *argv], env=env, cwd=tmp_path, start_new_session=True,
                           stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    try:
        while not ready.exists() and job.poll() is None:
            time.sleep(0.05)
        if job.poll() is None:
            os.killpg(job.pid, signal.SIGTERM)  # the worker too, as SLURM does
        _, err = job.communicate(timeout=120)
    finally:
        if job.poll() is None:
            job.kill()
    assert job.returncode == 143, err[-3000:]
    assert "terminated (SIGTERM): checkpoint-3 saved" in err and checkpoints(out) == ["checkpoint-2", "checkpoint-3"]


def run_torchrun(script: Path, argv: list[str], env: dict[str, str]) -> subprocess.CompletedProcess:
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "--master_addr", "127.0.0.1",
           "--master_port", str(free_port()), str(script), *argv]
    return subprocess.run(cmd, env=env, cwd=script.parent, capture_output=True, text=True, timeout=120)


def test_torchrun_ranks_agree_on_the_step_they_save_and_resume_from(base_dirs, tmp_path):
    # torchrun forwards its SIGTERM to both ranks; rank 1's copy is held back, as a signal that
    # comes to a rank at the end of a later step (or never: a `kill` of one worker). Acting each on
    # its own, rank 0 would have saved and left at step 3 while rank 1 went on into step 4.
    script, out = tmp_path / "driver.py", tmp_path / "out"
    script.write_text(DRIVER)
    argv = ["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out),
            "--max-steps", "4", "--save-steps", "2", "--batch-size", "1", "--lr-scheduler", "constant",
            "--warmup-ratio", "0", "--no-progress", "--resume", "auto"]
    stopped = run_torchrun(script, argv, driver_env(SIGTERM_DURING_STEP="3", SIGTERM_SENDER="launcher",
                                                    SIGTERM_BLOCKED_ON_RANK="1"))
    line = ("superthoughts train: terminated (SIGTERM): checkpoint-3 saved; the same command continues from the "
            "last checkpoint in --output, if one was saved")
    assert stopped.stderr.count(line) == 2, stopped.stderr[-4000:]  # both ranks, at the same step
    assert checkpoints(out) == ["checkpoint-2", "checkpoint-3"]
    state = json.loads((out / "checkpoint-3" / "trainer_state.json").read_text())
    assert state["global_step"] == 3 and not (out / "config.json").exists()
    # The requeued job: the same command line goes on from checkpoint-3 on both ranks.
    resumed = run_torchrun(script, argv, driver_env(SIGTERM_DURING_STEP="0", SIGTERM_SENDER="launcher"))
    assert resumed.returncode == 0, resumed.stderr[-4000:]
    assert f"train: --resume auto: resuming from '{out / 'checkpoint-3'}'" in resumed.stderr
    assert resumed.stdout.count(f"saved {out} after 4 steps") == 1 and (out / "config.json").is_file()


def test_torchrun_ranks_agree_on_a_sigterm_during_the_final_save(base_dirs, tmp_path):
    # Rank 1 never sees the signal: both ranks finish the save, then both end on it, after it.
    script, out = tmp_path / "driver.py", tmp_path / "out"
    script.write_text(DRIVER)
    argv = ["--model", str(base_dirs["qwen2"]), "--data", str(base_dirs["data"]), "--output", str(out),
            "--max-steps", "2", "--save-steps", "0", "--batch-size", "1", "--no-progress", "--resume", "auto"]
    stopped = run_torchrun(script, argv, driver_env(SIGTERM_DURING_STEP="final", SIGTERM_SENDER="launcher",
                                                    SIGTERM_BLOCKED_ON_RANK="1"))
    assert stopped.stderr.count(f"{FINAL_SAVE_WENT_ON} saved in '{out}'\n") == 2, stopped.stderr[-4000:]
    assert (out / "config.json").is_file() and checkpoints(out) == []
    again = run_torchrun(script, argv, driver_env(SIGTERM_DURING_STEP="0", SIGTERM_SENDER="launcher"))
    assert again.returncode == 0, again.stderr[-4000:]
    assert again.stdout.count("train: --resume auto: the run is already finished") == 1  # the main process says it


@pytest.mark.parametrize("when", ["during the last step", "after the last step"])
@pytest.mark.parametrize("fsdp", [False, True])
def test_under_fsdp_a_sigterm_in_or_after_the_last_step_goes_on_to_the_final_save(fsdp, when):
    # A resume cannot make the final save from a checkpoint under FSDP (trainer.load_finished_run):
    # a run stopped at its last step's checkpoint left a requeued job that was refused (a real FSDP
    # run, end to end: test_train_fsdp.py).
    from transformers import TrainerControl

    stop, done = train_preemption.StopOnSigterm(lambda flag: flag), []
    state = SimpleNamespace(global_step=4, max_steps=4, is_world_process_zero=True)  # the last step
    control = TrainerControl()
    with pytest.raises(train_preemption.cli.Terminated) as raised:  # a KeyboardInterrupt: any one caught here
        trainer = SimpleNamespace(is_fsdp_enabled=fsdp, _sigterm_stop=stop)
        with SuperThoughtsTrainer.final_save_despite_sigterm(trainer, "o") as final_save_begins:
            with train_preemption.stopping_on_sigterm(stop, lambda: done.append("checkpoint")):
                stop.on_train_begin(None, state, control)
                if when == "during the last step":
                    os.kill(os.getpid(), signal.SIGTERM)
                stop.on_step_end(None, state, control)
                stop.on_save(None, state, control)  # the last step's checkpoint (--save-steps > 0)
                stop.on_train_end(None, state, control)
                if when == "after the last step":
                    os.kill(os.getpid(), signal.SIGTERM)  # in the last step's evaluation, say
            final_save_begins()
            done.append("final save")
    stopped = train_preemption.StoppedAfterTheFinalSave if fsdp else train_preemption.StoppedAtCheckpoint
    assert type(raised.value) is stopped and done == (["final save"] if fsdp else [])
    assert not control.should_evaluate  # the grace period is for the save
    if fsdp:
        assert str(raised.value) == "after training: the final save went on, the run is finished and its model saved " \
                                    "in 'o'"
    elif when == "during the last step":
        assert str(raised.value) == "checkpoint-4 saved"
    else:
        assert str(raised.value) == "after the last step, before the final save (checkpoint-4 holds that step)"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL
