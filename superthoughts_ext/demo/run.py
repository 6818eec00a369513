"""`superthoughts demo`: train a plain SFT baseline and a SuperThoughts model on the embedded
column-addition task, then compare accuracy and decode steps on held-out problems.

As in the paper, SuperThoughts converts a model that already solves the task. Three models are
trained through the same training wrapper on the same data:

- the initial SFT model: a tiny random-init Qwen2 trained by plain next-token SFT;
- the SuperThoughts model: the initial SFT model fine-tuned with the SuperThoughts objective
  (paired latent positions + MTP head);
- the baseline: the initial SFT model trained on with plain SFT for the same steps, learning
  rate and schedule as that fine-tuning, so both compared models have had the same training.

Trained models are cached under
``${XDG_CACHE_HOME:-~/.cache}/superthoughts/demo/<hash of settings and training code>``,
so a second run only evaluates (seconds).

Evaluation (results.py): both SFT models decode in ``standard`` mode; the SuperThoughts model
decodes in ``superthoughts`` mode across a confidence-threshold sweep and in ``pairs`` mode
(always two tokens per step). CoT length reduction is ``1 - mean_steps / baseline
mean_tokens``: how many fewer sequential decode steps the SuperThoughts model needs than the
baseline needs tokens.
"""
from __future__ import annotations

import argparse
import contextlib
import hashlib
import inspect
import json
import os
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

from superthoughts_ext.cli import HelpFormatter, transformers_progress_bars
from superthoughts_ext.demo.results import evaluate_models, format_table, write_plot
from superthoughts_ext.demo.sources import training_sources
from superthoughts_ext.file_writes import replace_text, writing

# 1.0 makes (nearly) every step a fallback step (single units only), the path the threshold
# leans on: a pair is kept only when every other MTP probability is below 2^-126
# (csrc/kernels/confidence.h).
DEFAULT_THRESHOLDS = (0.5, 0.7, 0.8, 0.9, 0.95, 0.99, 0.999, 1.0)
DONE_MARKER = "demo_done.json"
# Bumped when cached artefacts from older code are wrong (2: training used the reloaded
# tokenizer, which AutoTokenizer rebuilds as a Qwen2 BPE that maps every word to <unk>;
# 3: pad-split layouts like the decoder's fallback steps and MTP targets after single units,
# SuperThoughts fine-tuned from the baseline; 4: pad-split draws keyed per process, rank
# and epoch, so the same settings now train on other splits).
CACHE_FORMAT = 4
# Model name -> cache subdirectory. "baseline" held the initial SFT model before the
# equally trained baseline existed; the directory keeps its name so cached models stay valid.
MODEL_DIRS = {"initial_sft": "baseline", "superthoughts": "superthoughts", "baseline": "baseline_continued"}


@dataclass(frozen=True)
class DemoSettings:
    """Everything that determines the trained models (hashed into the cache key) and the eval."""

    train_problems: int = 8000
    train_steps: int = 900  # initial SFT steps
    # SuperThoughts fine-tuning of the initial SFT model (and the baseline's continued SFT):
    # ~5 minutes each on an idle 2-core CPU. The backbone already reads the task; it learns
    # units and the MTP head, and re-learns reading operand digits from the question, whose
    # distance from every CoT position halves in the unit layout. 600 steps gave 100% or 87%
    # at threshold 0.9 from two trainings that differ only in float rounding; at 900 steps,
    # lr 1e-3 left seed 1 at 70% (all errors were digits misread from the question) and 2e-3
    # gave 99-100% at seeds 0, 1 and 2.
    superthoughts_steps: int = 900
    superthoughts_learning_rate: float = 2e-3
    batch_size: int = 32
    learning_rate: float = 3e-3
    warmup_ratio: float = 0.05
    # Fallback steps at the default threshold make ~20% of the tokens single units; pad-split
    # must cover that share and the shifted layouts it causes (the training default 0.25 covers ~12%).
    rho_max: float = 0.5
    hidden_size: int = 128
    num_layers: int = 4
    num_heads: int = 4
    num_kv_heads: int = 2
    intermediate_size: int = 512
    seed: int = 0
    eval_problems: int = 100
    eval_batch_size: int = 100
    max_new_tokens: int = 192
    thresholds: tuple[float, ...] = DEFAULT_THRESHOLDS
    default_threshold: float = 0.9

    def training_key(self) -> dict[str, Any]:
        """Settings that change the trained weights (eval-only settings excluded)."""
        skip = {"eval_problems", "eval_batch_size", "max_new_tokens", "thresholds", "default_threshold"}
        return {k: v for k, v in asdict(self).items() if k not in skip}


QUICK = DemoSettings(
    train_problems=32, train_steps=20, superthoughts_steps=10, batch_size=4, learning_rate=3e-3, hidden_size=64,
    num_layers=2, num_heads=4, num_kv_heads=2, intermediate_size=256, eval_problems=4,
    eval_batch_size=4, max_new_tokens=48, thresholds=(0.5, 0.9), default_threshold=0.9,
)


@dataclass
class ModelRun:
    """Where one trained model lives and whether this run trained it or found it cached."""

    path: Path
    trained: bool
    metrics: dict[str, Any] = field(default_factory=dict)


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """Add the `superthoughts demo` flags to `parser`."""
    g = parser.add_argument
    g("--quick", action="store_true",
      help="tiny settings (well under a minute on a CPU), for tests: every stage runs, but its 48-token budget "
           "stops before any answer (responses are 92+ tokens), so its accuracies are 0 by design")
    g("--json", default=None, help="write the results JSON here")
    g("--plot", default=None, help="write the accuracy-vs-steps PNG here")
    g("--cache-dir", default=None, help="model cache root (default: $XDG_CACHE_HOME/superthoughts/demo)")
    g("--retrain", action="store_true", help="ignore cached models and train again")
    # These default to None (the settings of --quick or of the full run); the help says both.
    def default(name: str) -> str:
        return f" (default: {getattr(DemoSettings(), name)}; with --quick {getattr(QUICK, name)})"

    g("--train-steps", type=int, default=None, help="optimizer steps of the initial SFT" + default("train_steps"))
    g("--superthoughts-steps", type=int, default=None,
      help="optimizer steps of the SuperThoughts fine-tuning of the initial SFT model "
           "(and of the baseline's continued SFT)" + default("superthoughts_steps"))
    g("--eval-problems", type=int, default=None,
      help="held-out test problems to evaluate" + default("eval_problems"))
    g("--seed", type=int, default=None,
      help="seed of the data and model init (default 0); other seeds show the run-to-run spread")
    g("--thresholds", type=float, nargs="+", default=None,
      help=f"confidence thresholds to sweep (default: {' '.join(f'{t:g}' for t in DEFAULT_THRESHOLDS)}; with "
           f"--quick {' '.join(f'{t:g}' for t in QUICK.thresholds)}); the table's headline is "
           f"{DemoSettings().default_threshold:g}, else the nearest one swept")
    g("--device", choices=("auto", "cpu", "cuda"), default="auto", help="auto = cuda when available")
    g("--no-progress", action="store_false", dest="progress", help="hide progress bars")


def settings_from_args(args: argparse.Namespace) -> DemoSettings:
    """Quick or default settings with the command-line overrides applied."""
    settings = QUICK if args.quick else DemoSettings()
    overrides: dict[str, Any] = {}
    if args.train_steps is not None:
        overrides["train_steps"] = args.train_steps
    if args.superthoughts_steps is not None:
        overrides["superthoughts_steps"] = args.superthoughts_steps
    if args.eval_problems is not None:
        overrides["eval_problems"] = args.eval_problems
    if args.seed is not None:
        overrides["seed"] = args.seed
    if args.thresholds:
        thresholds = tuple(sorted(set(args.thresholds)))
        overrides["thresholds"] = thresholds
        if settings.default_threshold not in thresholds:
            # The headline threshold must be one the sweep measured.
            nearest = min(thresholds, key=lambda t: abs(t - settings.default_threshold))
            overrides["default_threshold"] = nearest
            print(f"note: --thresholds leaves out the headline threshold {settings.default_threshold:g}; the table "
                  f"marks the nearest one swept, {nearest:g}, instead", file=sys.stderr)
    settings = replace(settings, **overrides)
    counts = {"--train-steps": settings.train_steps, "--superthoughts-steps": settings.superthoughts_steps,
              "--eval-problems": settings.eval_problems}
    for flag, value in counts.items():
        if value < 1:
            raise ValueError(f"{flag} must be >= 1, got {value}")
    if not all(0.0 <= t <= 1.0 for t in settings.thresholds):
        raise ValueError(f"thresholds must lie in [0, 1], got {settings.thresholds}")
    if not 0 <= settings.seed < 2**32:  # numpy's limit, reached only after the data is written
        raise ValueError(f"--seed must lie in [0, 2**32), got {settings.seed}")
    return settings


def check_output_paths(args: argparse.Namespace) -> None:
    """Before any training: --cache-dir must be a directory (or not exist), --json / --plot
    files to write (not directories, not one file), the plot in a format matplotlib writes; each
    can be written. A full run trains for a quarter of an hour before it writes them."""
    from superthoughts_ext.run_info import write_problem

    if args.cache_dir and Path(args.cache_dir).exists() and not Path(args.cache_dir).is_dir():
        raise ValueError(f"--cache-dir {args.cache_dir!r} is a file, not a directory")
    cache = cache_root(args.cache_dir)
    if problem := write_problem(cache / ".write_check"):
        named = f"--cache-dir {args.cache_dir!r}" if args.cache_dir else f"the model cache {cache} (see --cache-dir)"
        raise ValueError(f"{named} cannot be written: {problem}")
    if args.json and args.plot and os.path.realpath(args.json) == os.path.realpath(args.plot):
        raise ValueError(f"--json {args.json!r} and --plot {args.plot!r} name one file; give each its own")
    for flag, value in (("--json", args.json), ("--plot", args.plot)):
        if value and Path(value).is_dir():
            raise ValueError(f"{flag} {value!r} is a directory; give a file name")
        if value and (problem := write_problem(Path(value), replaced=flag == "--json")):  # by replace_text
            raise ValueError(f"{flag} {value!r} cannot be written: {problem}")
    if args.plot:
        from matplotlib.figure import Figure

        formats = Figure().canvas.get_supported_filetypes()
        suffix = Path(args.plot).suffix.lstrip(".").lower()
        if suffix not in formats:
            raise ValueError(f"--plot {args.plot!r}: matplotlib writes {', '.join(sorted(formats))}, "
                             f"not {suffix or 'a file without suffix'!r}")


def cache_root(cache_dir: str | None) -> Path:
    """The demo's cache root: ``--cache-dir`` or the XDG user cache."""
    if cache_dir:
        return Path(cache_dir)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "superthoughts" / "demo"


def training_code_hash() -> str:
    """sha256 of training_sources()' text, this module's model and trainer setup (build_base,
    train_model) and the system prompt every training row and the tokenizer's vocabulary hold."""
    from superthoughts_ext import eval_data

    package = Path(__file__).resolve().parents[1]
    digest = hashlib.sha256()
    for name in training_sources():
        digest.update(name.encode("utf-8") + b"\0" + (package / name).read_bytes())
    for function in (build_base, train_model):
        digest.update(inspect.getsource(function).encode("utf-8"))
    digest.update(b"\0" + eval_data.SYSTEM_PROMPT.encode("utf-8"))
    return digest.hexdigest()


def cache_key(settings: DemoSettings) -> str:
    """Hash of the training settings, the training code and the torch / transformers versions
    (new code -> new models; another version may initialise or train other weights)."""
    import torch
    import transformers

    payload = json.dumps({"settings": settings.training_key(), "code": training_code_hash(),
                          "format": CACHE_FORMAT, "torch": torch.__version__,
                          "transformers": transformers.__version__}, sort_keys=True)
    return hashlib.sha256(payload.encode("utf-8")).hexdigest()[:16]


def resolve_device(name: str) -> str:
    """``auto`` -> cuda when available, else cpu; an explicit cuda without a GPU is an error."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name == "cuda" and not torch.cuda.is_available():
        raise ValueError("--device cuda: no CUDA device is available")
    return name


def build_base(settings: DemoSettings, directory: Path) -> Path:
    """Save a random-init tiny Qwen2 with the demo tokenizer (the common starting point)."""
    import torch
    from transformers import AutoModelForCausalLM, Qwen2Config

    from superthoughts_ext.demo.tokenizer import build_tokenizer

    if (directory / DONE_MARKER).exists():
        return directory
    tokenizer = build_tokenizer()
    config = Qwen2Config(
        vocab_size=len(tokenizer), hidden_size=settings.hidden_size,
        num_hidden_layers=settings.num_layers, num_attention_heads=settings.num_heads,
        num_key_value_heads=settings.num_kv_heads, intermediate_size=settings.intermediate_size,
        max_position_embeddings=512, tie_word_embeddings=True,
        pad_token_id=tokenizer.pad_token_id, eos_token_id=tokenizer.eos_token_id,
        bos_token_id=None,
    )
    torch.manual_seed(settings.seed)
    model = AutoModelForCausalLM.from_config(config)
    with writing(directory):
        model.save_pretrained(directory)
        tokenizer.save_pretrained(directory)
    replace_text(directory / DONE_MARKER, "{}\n")
    return directory


def train_model(settings: DemoSettings, base: Path, data: Path, directory: Path, *, baseline: bool,
                steps: int, learning_rate: float, device: str, retrain: bool, progress: bool) -> ModelRun:
    """Train (or reuse from the cache) one model from `base` on `data` for `steps` optimizer
    steps: plain SFT when `baseline`, else SuperThoughts fine-tuning."""
    from superthoughts_ext.demo.tokenizer import build_tokenizer
    from superthoughts_ext.run_info import device_name, git_commit
    from superthoughts_ext.train import TrainOptions, train

    marker = directory / DONE_MARKER
    if marker.exists() and not retrain:
        return ModelRun(directory, trained=False, metrics=json.loads(marker.read_text(encoding="utf-8")))
    # Not reused: a --retrain, or a run cut off before its marker. train refuses to write over a
    # model, so the demo clears its own cache folder first.
    shutil.rmtree(directory, ignore_errors=True)
    started = time.perf_counter()
    commit = git_commit()  # the checkout this training runs (read after it, it could name a later commit)
    options = TrainOptions(
        model=os.fspath(base), data=os.fspath(data), output_dir=os.fspath(directory),
        # The object, not the saved copy: AutoTokenizer reloads a qwen2 checkpoint's tokenizer
        # as Qwen2Tokenizer, which drops the word-level pre-tokenizer.
        tokenizer=build_tokenizer(),
        baseline=baseline, max_steps=steps,
        learning_rate=learning_rate,
        **({} if baseline else {"rho_max": settings.rho_max}),  # a baseline run refuses it
        batch_size=settings.batch_size, warmup_ratio=settings.warmup_ratio, lr_scheduler="cosine",
        seed=settings.seed, logging_steps=max(steps // 10, 1), save_steps=0,
        progress_bar=progress,
        # Trainer picks the GPU on its own; --device cpu must keep training on the CPU too.
        training_args={"use_cpu": device == "cpu"},
    )
    result = train(options)
    seconds = time.perf_counter() - started
    # The commit and device say which code and machine trained a model the JSON of a later
    # (cached) run reports on: the cache key holds neither, and other float rounding trains
    # other weights.
    metrics = {"train_seconds": seconds, "global_step": result.global_step,
               "train_loss": result.metrics.get("train_loss"), "commit": commit,
               "device": device_name(device)}
    # Whole or not at all: a marker torn by a full disk was read as JSON by every later run.
    replace_text(marker, json.dumps(metrics) + "\n")
    return ModelRun(directory, trained=True, metrics=metrics)


def run_demo(settings: DemoSettings, *, cache_dir: str | None = None, retrain: bool = False,
             device: str = "auto", progress: bool = True) -> dict[str, Any]:
    """Train or reuse the three models, evaluate them and return the results payload."""
    import torch
    import transformers

    from superthoughts_ext.run_info import device_name, git_commit, output_lock

    started = time.perf_counter()
    commit = git_commit()  # at the start: a commit made during the run did not run
    device = resolve_device(device)
    root = cache_root(cache_dir) / cache_key(settings)
    # Two demos of one cache folder at once: one cleared (rmtree) the model folder the other was
    # training into, and the two wrote one train.jsonl through one temporary file. The second is
    # refused (ValueError naming the folder and the holder); the models it would train are the same.
    # Without progress, transformers' own bars too (loading and saving weights), for this run only.
    with output_lock(root, "demo"), transformers_progress_bars(progress):
        runs = train_models(settings, root, device, retrain=retrain, progress=progress)
        results = evaluate_models(settings, {name: root / sub for name, sub in MODEL_DIRS.items()}, device, progress)
    settings_dict = asdict(settings)
    settings_dict["thresholds"] = list(settings.thresholds)
    return {
        **results,
        "settings": settings_dict,
        "training": {name: {"trained": r.trained, **r.metrics} for name, r in runs.items()},
        "cache_dir": os.fspath(root),
        "device": device_name(device),
        "torch_version": torch.__version__,
        "transformers_version": transformers.__version__,
        "commit": commit,
        "wall_time": time.perf_counter() - started,
    }


def train_models(settings: DemoSettings, root: Path, device: str, *, retrain: bool,
                 progress: bool) -> dict[str, ModelRun]:
    """The initial SFT model, then the SuperThoughts and baseline models continued from it, each
    trained into `root` or reused from there."""
    from superthoughts_ext.demo.task import make_split, write_jsonl

    data = root / "train.jsonl"
    if not data.exists() or retrain:
        write_jsonl(make_split("train", settings.train_problems, seed=settings.seed), data)
    base = build_base(settings, root / "base")
    dirs = {name: root / sub for name, sub in MODEL_DIRS.items()}
    common = dict(device=device, retrain=retrain, progress=progress)
    runs = {"initial_sft": train_model(settings, base, data, dirs["initial_sft"], baseline=True,
                                       steps=settings.train_steps, learning_rate=settings.learning_rate, **common)}
    # Both compared models continue from the initial SFT model with the same steps and lr.
    start = runs["initial_sft"].path
    # Models fine-tuned from a newly trained initial model are stale, whatever their markers say
    # (a --retrain cut off after the initial SFT left the old ones marked done).
    common["retrain"] = retrain or runs["initial_sft"].trained
    fine_tune = dict(steps=settings.superthoughts_steps, learning_rate=settings.superthoughts_learning_rate, **common)
    runs["superthoughts"] = train_model(settings, start, data, dirs["superthoughts"], baseline=False, **fine_tune)
    runs["baseline"] = train_model(settings, start, data, dirs["baseline"], baseline=True, **fine_tune)
    return runs


def run(args: argparse.Namespace) -> int:
    """Entry point of `superthoughts demo`; returns the process exit code."""
    from superthoughts_ext.run_info import output_lock

    with contextlib.ExitStack() as held:
        try:
            settings = settings_from_args(args)
            check_output_paths(args)
            # Held from the start: a second demo on one --json or --plot learns it now, not after
            # training, and the one finishing last does not replace the other's file unnoticed.
            for target in (args.json, args.plot):
                held.enter_context(output_lock(target, "demo"))
            payload = run_demo(settings, cache_dir=args.cache_dir, retrain=args.retrain,
                               device=args.device, progress=args.progress)
        except (ValueError, OSError) as exc:
            print(f"error: {exc}", file=sys.stderr)
            return 2
        return _report(args, payload)


def _report(args: argparse.Namespace, payload: dict[str, Any]) -> int:
    """Prints the table and writes --json and --plot; the exit code."""
    print(format_table(payload))
    trained = [name for name, info in payload["training"].items() if info["trained"]]
    print(f"models: {'trained ' + ', '.join(trained) if trained else 'reused from cache'} "
          f"({payload['cache_dir']}); device: {payload['device']}; total {payload['wall_time']:.1f}s")
    try:  # after the training: a full disk is one line, and the models stay cached for a rerun
        if args.json:
            Path(args.json).parent.mkdir(parents=True, exist_ok=True)
            replace_text(args.json, json.dumps(payload, indent=2) + "\n")
            print(f"wrote {args.json}")
        if args.plot:
            print(f"wrote {write_plot(payload, Path(args.plot))}")
    except OSError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


def main(argv: list[str] | None = None) -> int:
    """`python -m superthoughts_ext.demo.run ...`."""
    parser = argparse.ArgumentParser(prog="superthoughts demo", description=(__doc__ or "").partition("\n")[0],
                                     formatter_class=HelpFormatter)
    add_arguments(parser)
    return run(parser.parse_args(argv))


if __name__ == "__main__":
    sys.exit(main())
