"""End-to-end test of `superthoughts demo --quick`: train, cache, evaluate, JSON and plot."""
from __future__ import annotations

import argparse
import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from superthoughts_ext.demo import run as demo  # noqa: E402


def _run(tmp_path: Path, name: str) -> tuple[dict, Path]:
    """Run the quick demo into tmp_path; return its JSON payload and plot path."""
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    json_path, plot_path = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
    args = parser.parse_args([
        "--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(json_path),
        "--plot", str(plot_path), "--device", "cpu", "--no-progress",
    ])
    from transformers.utils import logging as transformers_logging

    transformers_logging.enable_progress_bar()
    assert demo.run(args) == 0
    # --no-progress hid transformers' bars for the run only: later tests (or a notebook) had none.
    assert transformers_logging.is_progress_bar_enabled()
    return json.loads(json_path.read_text()), plot_path


def _check_result(r: dict) -> None:
    assert 0.0 <= r["accuracy"] <= 1.0
    assert r["mean_steps"] <= r["mean_tokens"] + 1e-9
    assert r["mean_tokens"] > 0 and r["tokens_per_s"] > 0


def test_quick_demo_end_to_end_and_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    first, plot = _run(tmp_path, "first")
    for key in ("baseline", "initial_sft", "superthoughts", "pairs", "sweep", "settings", "device",
                "torch_version", "commit"):
        assert key in first
    for r in [first["baseline"], first["initial_sft"], first["superthoughts"], first["pairs"], *first["sweep"]]:
        _check_result(r)
    # Standard decoding emits one token per step.
    for sft in ("baseline", "initial_sft"):
        assert first[sft]["mean_steps"] == pytest.approx(first[sft]["mean_tokens"])
    # Both compared models are the initial SFT model trained on for the same number of steps.
    training = first["training"]
    assert set(training) == {"initial_sft", "superthoughts", "baseline"}
    assert training["initial_sft"]["global_step"] == demo.QUICK.train_steps
    assert training["baseline"]["global_step"] == training["superthoughts"]["global_step"] == \
        demo.QUICK.superthoughts_steps
    # Pairs mode emits two tokens per step after the prefill's single token.
    pairs = first["pairs"]
    assert pairs["mean_steps"] == pytest.approx(pairs["mean_tokens"] / 2, abs=1.0)
    thresholds = [r["threshold"] for r in first["sweep"]]
    assert thresholds == first["settings"]["thresholds"] and len(thresholds) == 2
    assert first["superthoughts"]["threshold"] in thresholds
    assert all(info["trained"] for info in first["training"].values())
    assert all(info["device"] == first["device"] for info in first["training"].values())
    # The demo's pad-split setting is the one the SuperThoughts model was trained with.
    config = json.loads((Path(first["cache_dir"]) / "superthoughts" / "config.json").read_text())
    assert config["superthoughts"]["rho_max"] == first["settings"]["rho_max"] == demo.QUICK.rho_max
    assert plot.exists() and plot.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"

    # The second run trains nothing: it reuses the cached models (a wall-time comparison here
    # failed on a loaded machine).
    import superthoughts_ext.train

    def no_training(options):
        raise AssertionError(f"the cached demo trained {options.output_dir}")

    monkeypatch.setattr(superthoughts_ext.train, "train", no_training)
    second, _ = _run(tmp_path, "second")
    monkeypatch.undo()
    assert not any(info["trained"] for info in second["training"].values())
    assert second["cache_dir"] == first["cache_dir"]
    # Greedy decoding of the same cached models gives the same outputs (accuracy is 0 in quick
    # mode, whose budget ends before the answers: the lengths tell outputs apart).
    for name in ("baseline", "superthoughts", "pairs"):
        for key in ("accuracy", "mean_tokens", "mean_steps"):
            assert second[name][key] == first[name][key], (name, key)
    # A newly trained initial model makes the models fine-tuned from it stale, whatever their
    # markers say (a --retrain cut off after the initial SFT left them marked done).
    (Path(first["cache_dir"]) / demo.MODEL_DIRS["initial_sft"] / demo.DONE_MARKER).unlink()
    third, _ = _run(tmp_path, "third")
    assert all(info["trained"] for info in third["training"].values())


def test_cache_key_follows_the_training_code(monkeypatch) -> None:
    # Models trained by other training code must not be reused.
    key = demo.cache_key(demo.QUICK)
    sources = demo.training_sources()
    monkeypatch.setattr(demo, "training_sources", lambda: sources[:-1])
    assert demo.cache_key(demo.QUICK) != key


def test_training_sources_are_every_module_training_imports() -> None:
    sources = demo.training_sources()
    # Split off train.py after a hand-kept list was written, and missing from it.
    assert {"train_args.py", "train_resume.py", "trainer.py", "train_data.py", "data.py", "data_jsonl.py",
            "modeling.py", "modeling_config.py", "layers.py", "head_losses.py", "checkpoint.py",
            "demo/task.py", "demo/tokenizer.py", "eval_data.py"} <= set(sources)
    # The decoding and evaluation stacks train nothing.
    assert not {"generate.py", "decode_loop.py", "grading.py", "evaluation.py", "demo/run.py"} & set(sources)


def test_cache_key_follows_the_model_setup_and_the_system_prompt(monkeypatch) -> None:
    # The random-init config and the TrainOptions are written in run.py, the system prompt of
    # every training row in eval_data.py: a change to either trains other weights.
    from superthoughts_ext import eval_data

    key = demo.cache_key(demo.QUICK)

    def build_base(settings, directory):
        return directory

    for name, value in (("build_base", build_base), ("train_model", build_base)):
        with monkeypatch.context() as patch:
            patch.setattr(demo, name, value)
            assert demo.cache_key(demo.QUICK) != key, name
    monkeypatch.setattr(eval_data, "SYSTEM_PROMPT", eval_data.SYSTEM_PROMPT + " Be brief.")
    assert demo.cache_key(demo.QUICK) != key


def test_cache_key_follows_the_library_versions(monkeypatch) -> None:
    # Another torch or transformers may initialise or train other weights from the same code.
    import torch
    import transformers

    key = demo.cache_key(demo.QUICK)
    for module in (torch, transformers):
        with monkeypatch.context() as patch:
            patch.setattr(module, "__version__", module.__version__ + ".post1")
            assert demo.cache_key(demo.QUICK) != key, module.__name__
    assert demo.cache_key(demo.QUICK) == key


def test_settings_overrides_and_cache_key(capsys) -> None:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--quick", "--train-steps", "7", "--superthoughts-steps", "3",
                              "--thresholds", "0.8", "0.6"])
    settings = demo.settings_from_args(args)
    assert settings.train_steps == 7 and settings.superthoughts_steps == 3 and settings.thresholds == (0.6, 0.8)
    assert settings.default_threshold in settings.thresholds
    # The headline threshold moved to a swept one: said, not only marked in the table.
    assert "leaves out the headline threshold 0.9; the table marks the nearest one swept, 0.8" in capsys.readouterr().err
    assert demo.cache_key(settings) != demo.cache_key(demo.QUICK)
    seeded = demo.settings_from_args(parser.parse_args(["--quick", "--seed", "3"]))
    assert seeded.seed == 3 and demo.cache_key(seeded) != demo.cache_key(demo.QUICK)
    for seed in ("-1", str(2**32)):  # numpy's limit, which it reported only after writing the data
        with pytest.raises(ValueError, match=rf"--seed must lie in \[0, 2\*\*32\), got {seed}"):
            demo.settings_from_args(parser.parse_args(["--quick", "--seed", seed]))
    # Eval-only settings do not invalidate trained models.
    assert demo.cache_key(demo.QUICK) == demo.cache_key(demo.settings_from_args(
        parser.parse_args(["--quick", "--eval-problems", "9"])))


def test_output_paths_are_checked_before_training(tmp_path: Path, capsys) -> None:
    # A full run trains for a quarter of an hour before it writes --json and --plot.
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    (tmp_path / "a_file").write_text("")
    for flags, message in ((["--json", str(tmp_path)], "--json .* is a directory; give a file name"),
                           (["--plot", str(tmp_path / "p.xyz")], "--plot .*p.xyz': matplotlib writes .*png.*not 'xyz'"),
                           (["--cache-dir", str(tmp_path / "a_file")], "--cache-dir .*a_file' is a file"),
                           # Found at the end of the run before, in a traceback after all the training.
                           (["--json", str(tmp_path / "a_file" / "d.json")],
                            "--json .*d.json' cannot be written: .*a_file is a file, not a folder"),
                           (["--cache-dir", str(tmp_path / "a_file" / "cache")],
                            "--cache-dir .*cache' cannot be written: .*a_file is a file, not a folder"),
                           (["--superthoughts-steps", "0"], "error: --superthoughts-steps must be >= 1, got 0$"),
                           # Both held under a lock: it refused the second as written by this very process.
                           (["--json", str(tmp_path / "r.png"), "--plot", str(tmp_path / "." / "r.png")],
                            r"error: --json .*r.png' and --plot .*r.png' name one file; give each its own$")):
        args = parser.parse_args(["--quick", "--device", "cpu", "--no-progress", *flags])
        assert demo.run(args) == 2
        import re
        assert re.search(message, capsys.readouterr().err, re.MULTILINE), flags
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a_file"]  # nothing trained or written


def test_training_data_is_written_whole_or_not_at_all(tmp_path: Path, monkeypatch) -> None:
    from superthoughts_ext.demo import task

    problems = task.make_split("train", 5, seed=0)

    def cut_off():
        yield from problems[:2]
        raise KeyboardInterrupt

    with pytest.raises(KeyboardInterrupt):
        task.write_jsonl(cut_off(), tmp_path / "train.jsonl")
    assert not (tmp_path / "train.jsonl").exists()
    task.write_jsonl(problems, tmp_path / "train.jsonl")
    assert len(task.read_jsonl(tmp_path / "train.jsonl")) == 5


def test_a_models_done_marker_that_meets_a_full_disk_is_not_left_torn(tmp_path: Path, monkeypatch,
                                                                     file_size_limit) -> None:
    # The marker was written in place: a full disk left it empty, and every later run failed on
    # reading it ("Expecting value: line 1 column 1") until the cache folder was removed by hand.
    from types import SimpleNamespace

    from superthoughts_ext import run_info, train
    from superthoughts_ext.file_writes import WriteFailed

    trained = []

    def fake_train(options):
        trained.append(options.output_dir)
        Path(options.output_dir).mkdir(parents=True, exist_ok=True)
        return SimpleNamespace(global_step=1, metrics={"train_loss": 1.0})

    monkeypatch.setattr(train, "train", fake_train)
    monkeypatch.setattr(run_info, "git_commit", lambda: "unknown")  # git is killed past the limit (conftest)
    directory = tmp_path / "cache" / "initial_sft"
    kwargs = dict(baseline=True, steps=1, learning_rate=1e-3, device="cpu", retrain=False, progress=False)
    with file_size_limit(16), pytest.raises(WriteFailed, match=f"cannot write {directory / demo.DONE_MARKER}"):
        demo.train_model(demo.DemoSettings(), tmp_path / "base", tmp_path / "train.jsonl", directory, **kwargs)
    assert not (directory / demo.DONE_MARKER).exists()
    run = demo.train_model(demo.DemoSettings(), tmp_path / "base", tmp_path / "train.jsonl", directory, **kwargs)
    assert run.trained and len(trained) == 2 and run.metrics["global_step"] == 1


def test_a_second_demo_on_one_cache_folder_or_output_is_refused_before_training(
        tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys) -> None:
    # Two demos of one cache folder: the second cleared (rmtree) the model folder the first was
    # training into, then failed on train's own lock; two on one --json: the last to finish won.
    import re

    from superthoughts_ext import train
    from superthoughts_ext.run_info import output_lock

    monkeypatch.setattr(train, "train", lambda options: pytest.fail(f"trained {options.output_dir}"))
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    out = tmp_path / "out"
    args = parser.parse_args(["--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(out / "r.json"),
                              "--plot", str(out / "r.png"), "--device", "cpu", "--no-progress"])
    root = demo.cache_root(args.cache_dir) / demo.cache_key(demo.settings_from_args(args))
    for target in (root, out / "r.json", out / "r.png"):
        with output_lock(target, "demo"):  # another process's (flock locks conflict per open file)
            assert demo.run(args) == 2
        error = capsys.readouterr().err
        assert re.search(rf"^error: demo: '{re.escape(str(target))}' is being written by pid \d+ on .*; wait for it",
                         error), error
    assert not root.exists() and sorted(p.name for p in out.iterdir()) == []  # nothing trained or written
