"""End-to-end test of `superthoughts demo --quick`: train, cache, evaluate, JSON and plot."""
from __future__ import annotations

import argparse
import json
import time
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")

from superthoughts_ext.demo import run as demo  # noqa: E402


def _run(tmp_path: Path, name: str) -> tuple[dict, float, Path]:
    """Run the quick demo into tmp_path; return its JSON payload, wall time and plot path."""
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    json_path, plot_path = tmp_path / f"{name}.json", tmp_path / f"{name}.png"
    args = parser.parse_args([
        "--quick", "--cache-dir", str(tmp_path / "cache"), "--json", str(json_path),
        "--plot", str(plot_path), "--device", "cpu", "--no-progress",
    ])
    started = time.perf_counter()
    assert demo.run(args) == 0
    return json.loads(json_path.read_text()), time.perf_counter() - started, plot_path


def _check_result(r: dict) -> None:
    assert 0.0 <= r["accuracy"] <= 1.0
    assert r["mean_steps"] <= r["mean_tokens"] + 1e-9
    assert r["mean_tokens"] > 0 and r["tokens_per_s"] > 0


def test_quick_demo_end_to_end_and_cache(tmp_path: Path) -> None:
    first, first_time, plot = _run(tmp_path, "first")
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

    second, second_time, _ = _run(tmp_path, "second")
    assert not any(info["trained"] for info in second["training"].values())
    assert second["cache_dir"] == first["cache_dir"]
    assert second_time < first_time / 2
    # Greedy decoding of the same cached models gives the same answers.
    assert second["baseline"]["accuracy"] == first["baseline"]["accuracy"]


def test_cache_key_follows_the_training_code(monkeypatch) -> None:
    # Models trained by other training code must not be reused.
    key = demo.cache_key(demo.QUICK)
    monkeypatch.setattr(demo, "TRAINING_SOURCES", demo.TRAINING_SOURCES[:-1])
    assert demo.cache_key(demo.QUICK) != key


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


def test_settings_overrides_and_cache_key() -> None:
    parser = argparse.ArgumentParser()
    demo.add_arguments(parser)
    args = parser.parse_args(["--quick", "--train-steps", "7", "--superthoughts-steps", "3",
                              "--thresholds", "0.8", "0.6"])
    settings = demo.settings_from_args(args)
    assert settings.train_steps == 7 and settings.superthoughts_steps == 3 and settings.thresholds == (0.6, 0.8)
    assert settings.default_threshold in settings.thresholds
    assert demo.cache_key(settings) != demo.cache_key(demo.QUICK)
    seeded = demo.settings_from_args(parser.parse_args(["--quick", "--seed", "3"]))
    assert seeded.seed == 3 and demo.cache_key(seeded) != demo.cache_key(demo.QUICK)
    # Eval-only settings do not invalidate trained models.
    assert demo.cache_key(demo.QUICK) == demo.cache_key(demo.settings_from_args(
        parser.parse_args(["--quick", "--eval-problems", "9"])))
