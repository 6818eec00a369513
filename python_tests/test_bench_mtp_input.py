"""benchmarks/bench_mtp_input.py: its results file is checked and held before its hour of training, and
--seed seeds every model it trains while the problems stay the demo's."""
from __future__ import annotations

import argparse
import importlib.util
import json
from dataclasses import replace
from pathlib import Path
from types import SimpleNamespace

import pytest

REPO = Path(__file__).resolve().parents[1]


def bench_module():
    spec = importlib.util.spec_from_file_location("bench_mtp_input", REPO / "benchmarks" / "bench_mtp_input.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_a_recorded_results_file_is_refused_before_any_training(tmp_path, monkeypatch) -> None:
    module = bench_module()
    monkeypatch.setattr(module, "RESULTS_DIR", tmp_path)
    (tmp_path / "mtp_input_demo_cpu.json").write_text("{}")
    ran: list[Path | None] = []
    monkeypatch.setattr(module, "run", lambda args, path: ran.append(path) or 0)
    args = argparse.Namespace(only=None, output=None, overwrite=False)
    with pytest.raises(SystemExit, match="holds a recorded run; give --output PATH"):
        module.main(args)
    assert ran == []  # refused before training, not after it
    given = tmp_path / "mine.json"
    assert module.main(argparse.Namespace(only=None, output=given, overwrite=False)) == 0
    # A training phase alone writes no results, so needs no free results file.
    assert module.main(argparse.Namespace(only="unit", output=None, overwrite=False)) == 0
    assert ran == [given, None]


def bench_args(root: Path, **given) -> argparse.Namespace:
    """The parsed flags of a run into `root` (the demo's settings unless `given`)."""
    defaults = dict(root=root, only=None, train_steps=None, superthoughts_steps=None, eval_problems=None, seed=None,
                    thresholds=[0.9], timing_tokens=4, repeats=1, threads=None, output=None, overwrite=False)
    return argparse.Namespace(**{**defaults, **given})


def record_training(module, monkeypatch) -> dict[str, list]:
    """Replaces every training and measurement of `module` by a record of what it was given:
    the seeds of the base model, the initial SFT, each fine-tune's TrainOptions and the problems."""
    import superthoughts_ext.demo.task as task
    import superthoughts_ext.train as train

    seen: dict[str, list] = {"base": [], "sft": [], "fine_tunes": [], "problems": []}
    monkeypatch.setattr(module, "build_base", lambda settings, directory: seen["base"].append(settings.seed) or directory)

    def fake_sft(settings, base, data, directory, **kwargs):
        seen["sft"].append(settings.seed)
        return SimpleNamespace(metrics={})

    monkeypatch.setattr(module, "train_model", fake_sft)

    def fake_train(options):
        seen["fine_tunes"].append((options.mtp_input, options.seed))
        Path(options.output_dir).mkdir(parents=True)  # where the model (and the bench's marker) goes
        return SimpleNamespace(global_step=options.max_steps, metrics={}, log_history=[])

    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(task, "make_split", lambda name, n, seed=0: seen["problems"].append((name, seed)) or [])
    monkeypatch.setattr(module, "evaluate_variants", lambda settings, root, thresholds: {})
    monkeypatch.setattr(module, "step_times", lambda settings, root, *rest: {})
    return seen


def test_seed_reaches_the_base_model_the_initial_sft_and_both_fine_tunes_not_the_problems(tmp_path,
                                                                                         monkeypatch) -> None:
    module = bench_module()
    seen = record_training(module, monkeypatch)
    output = tmp_path / "seed3.json"
    assert module.run(bench_args(tmp_path / "root", seed=3, output=output), output) == 0
    assert seen["base"] == seen["sft"] == [3]
    assert sorted(seen["fine_tunes"]) == [("next_token", 3), ("unit", 3)]
    # The same task and problems at every seed: a second seed is scored on the first one's test set.
    assert seen["problems"] == [("train", module.DATA_SEED)]
    settings = json.loads(output.read_text())["settings"]
    assert (settings["seed"], settings["data_seed"]) == (3, module.DATA_SEED) == (3, 0)


def test_no_seed_keeps_the_demo_seed_of_the_recorded_results(tmp_path, monkeypatch) -> None:
    module = bench_module()
    assert module.bench_settings(bench_args(tmp_path)).seed == 0
    assert module.bench_settings(bench_args(tmp_path, seed=5, train_steps=7)) == replace(
        module.DemoSettings(), seed=5, train_steps=7)


def test_a_root_trained_at_another_seed_is_refused_not_reused(tmp_path, monkeypatch) -> None:
    module = bench_module()
    seen = record_training(module, monkeypatch)
    root = tmp_path / "root"
    assert module.run(bench_args(root, seed=2, only="sft"), None) == 0
    with pytest.raises(SystemExit, match="holds models trained with seed 2, not --seed 1"):
        module.run(bench_args(root, seed=1, only="unit"), None)
    assert module.run(bench_args(root, seed=2, only="unit"), None) == 0  # its own seed goes on
    # A root from before the record holds the default seed's models.
    old = tmp_path / "old"
    (old / "initial_sft").mkdir(parents=True)
    (old / "initial_sft" / module.DONE_MARKER).write_text("{}")
    with pytest.raises(SystemExit, match="unrecorded seed \\(the default, 0\\), not --seed 1"):
        module.run(bench_args(old, seed=1, only="unit"), None)
    assert seen["fine_tunes"] == [("unit", 2)]


def test_a_root_holding_only_the_base_model_of_the_default_seed_is_refused(tmp_path, monkeypatch) -> None:
    # A run from before the seed record cut off during its initial SFT leaves base/ alone, with its
    # marker: build_base reuses it, so --seed 1 would train its SFT from the default seed's init.
    module = bench_module()
    seen = record_training(module, monkeypatch)
    old = tmp_path / "old"
    (old / "base").mkdir(parents=True)
    (old / "base" / module.DONE_MARKER).write_text("{}")
    with pytest.raises(SystemExit, match="unrecorded seed \\(the default, 0\\), not --seed 1"):
        module.run(bench_args(old, seed=1, only="sft"), None)
    assert seen["base"] == seen["sft"] == []
    assert module.run(bench_args(old, only="sft"), None) == 0  # the default seed's own run goes on


def test_the_held_out_problems_keep_the_demo_seed_whatever_the_models_seed(tmp_path, monkeypatch) -> None:
    # Both the scoring and the step timing read the test split: a second seed must score the
    # first one's problems, or the two rows of results compare different test sets.
    import superthoughts_ext.demo.task as task
    import superthoughts_ext.modeling as modeling

    module = bench_module()
    splits: list[tuple[str, int]] = []

    class Split(Exception):
        """Stops each function once it has asked for its problems (no model to decode here)."""

    def make_split(name, n, seed=0):
        splits.append((name, seed))
        raise Split

    monkeypatch.setattr(task, "make_split", make_split)
    monkeypatch.setattr(modeling, "load_model", lambda path: None)
    settings = module.bench_settings(bench_args(tmp_path, seed=3))
    with pytest.raises(Split):
        module.evaluate_variants(settings, tmp_path, [0.9])
    with pytest.raises(Split):
        module.step_times(settings, tmp_path, 0.9, 4, 1)
    assert splits == [("test", module.DATA_SEED)] * 2
