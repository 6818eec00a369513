"""The `superthoughts demo` results: the trained models evaluated on held-out problems, the
results table and the accuracy-vs-decode-steps plot (run.py trains the models and calls these).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from superthoughts_ext.plot_style import LABEL_FONT_SIZE, PALETTE, place_labels, pyplot, save_figure

if TYPE_CHECKING:
    from superthoughts_ext.demo.run import DemoSettings

__all__ = ["evaluate_models", "format_table", "plot_title", "write_plot"]


def _record(summary: Any, baseline_tokens: float | None) -> dict[str, Any]:
    """One result row from an EvalSummary, with the reduction measured against the baseline."""
    row = {
        "mode": summary.mode, "threshold": summary.threshold, "n": summary.n,
        "accuracy": summary.accuracy, "mean_tokens": summary.mean_tokens,
        "mean_steps": summary.mean_steps, "mean_pair_steps": summary.mean_pair_steps,
        "tokens_per_s": summary.tokens_per_s, "steps_per_s": (
            summary.mean_steps * summary.n / summary.generation_time if summary.generation_time > 0 else 0.0),
        "generation_time": summary.generation_time,
    }
    row["reduction"] = 1.0 - summary.mean_steps / baseline_tokens if baseline_tokens else 0.0
    return row


def evaluate_models(settings: DemoSettings, dirs: dict[str, Path], device: str, progress: bool) -> dict[str, Any]:
    """Results on the test split: both SFT models (standard), the SuperThoughts model (threshold
    sweep and pairs). `dirs` maps the names of run.MODEL_DIRS to trained model directories."""
    from superthoughts_ext import eval_data
    from superthoughts_ext.demo.task import make_split
    from superthoughts_ext.demo.tokenizer import build_tokenizer
    from superthoughts_ext.evaluation import evaluate
    from superthoughts_ext.modeling import load_model

    tokenizer = build_tokenizer()
    test = make_split("test", settings.eval_problems, seed=settings.seed)
    rows = [eval_data.Problem(id=f"demo-{i}", question=p.question, answer=p.answer) for i, p in enumerate(test)]
    common = dict(batch_size=settings.eval_batch_size, max_new_tokens=settings.max_new_tokens, progress=progress)

    def scored(model: Any, mode: str, reference_tokens: float | None, label: str, **kwargs: Any) -> dict[str, Any]:
        # Graded as math500 (a boxed number against the reference); the bar names the demo's model.
        summary = evaluate(model, tokenizer, "math500", rows, mode=mode, label=f"eval {label}", **kwargs, **common)
        return _record(summary, reference_tokens)

    base = scored(load_model(dirs["baseline"], device=device), "standard", None, "baseline SFT")
    initial = scored(load_model(dirs["initial_sft"], device=device), "standard", base["mean_tokens"], "initial SFT")
    st_model = load_model(dirs["superthoughts"], device=device)
    sweep = [scored(st_model, "superthoughts", base["mean_tokens"], f"SuperThoughts t={t:g}", threshold=t)
             for t in settings.thresholds]
    pairs = scored(st_model, "pairs", base["mean_tokens"], "SuperThoughts pairs")
    chosen = next(r for r in sweep if r["threshold"] == settings.default_threshold)
    return {"baseline": base, "initial_sft": initial, "superthoughts": chosen, "pairs": pairs, "sweep": sweep}


def format_table(results: dict[str, Any]) -> str:
    """Plain-text results table: one row per configuration."""
    header = f"{'model / mode':<28}{'acc':>7}{'tokens':>9}{'steps':>9}{'reduction':>11}{'tok/s':>9}"
    lines = [header, "-" * len(header)]

    def line(name: str, r: dict[str, Any]) -> str:
        return (f"{name:<28}{r['accuracy']:>7.1%}{r['mean_tokens']:>9.1f}{r['mean_steps']:>9.1f}"
                f"{r['reduction']:>11.1%}{r['tokens_per_s']:>9.0f}")

    lines.append(line("baseline (standard)", results["baseline"]))
    lines.append(line("initial SFT (standard)", results["initial_sft"]))
    for r in results["sweep"]:
        mark = " *" if r["threshold"] == results["superthoughts"]["threshold"] else ""
        lines.append(line(f"superthoughts t={r['threshold']:g}{mark}", r))
    lines.append(line("superthoughts (pairs)", results["pairs"]))
    return "\n".join(lines)


def _label_groups(sweep: list[dict[str, Any]], x_span: float, y_span: float) -> list[list[dict[str, Any]]]:
    """The sweep's points in runs that nearly coincide (within 2% of the x axis and 4% of the y
    axis of the run's first point): one label per run ("0.8-0.99"), as labels of their own
    printed over each other ("0.8.99.999")."""
    groups: list[list[dict[str, Any]]] = []
    for r in sorted(sweep, key=lambda r: r["threshold"]):
        first = groups[-1][0] if groups else None
        if first is not None and abs(r["mean_steps"] - first["mean_steps"]) < 0.02 * x_span \
                and abs(r["accuracy"] - first["accuracy"]) < 0.04 * y_span:
            groups[-1].append(r)
        else:
            groups.append([r])
    return groups


def plot_title(results: dict[str, Any]) -> str:
    """The demo plot's title: what is plotted, then on what (held-out problems, the model's size,
    the data seed, the device), from what the results JSON records."""
    settings, device = results.get("settings", {}), results.get("device")
    model = (f"tiny Qwen2 ({settings['num_layers']} layers, hidden {settings['hidden_size']})"
             if {"num_layers", "hidden_size"} <= settings.keys() else None)
    seed = f"seed {settings['seed']}" if "seed" in settings else None
    what = ", ".join(part for part in (f"{results['baseline']['n']} held-out column additions", model, seed) if part)
    # The device on a line of its own: one line of all of it was wider than the figure.
    return "\n".join(line for line in ("superthoughts demo: accuracy vs decode steps", what, device) if line)


def _numbers(r: dict[str, Any], baseline_tokens: float) -> str:
    """A legend entry's numbers: accuracy, mean decode steps and the reduction vs the baseline."""
    reduction = f", {1 - r['mean_steps'] / baseline_tokens:.1%} shorter" if baseline_tokens else ""
    return f"{r['accuracy']:.1%}, {r['mean_steps']:.1f} steps{reduction}"


# Below, above, then further out (points in the offsets `place_labels` takes).
THRESHOLD_LABEL_OFFSETS = ((0, -9, "center", "top"), (0, 9, "center", "bottom"),
                           (0, -20, "center", "top"), (0, 20, "center", "bottom"))


def write_plot(results: dict[str, Any], path: Path) -> Path:
    """Accuracy vs mean decode steps across thresholds, with both SFT models and pairs marked;
    the legend gives each marked point's numbers, the top axis the reduction vs the baseline."""
    plt = pyplot()
    sweep = results["sweep"]
    base, initial, pairs = results["baseline"], results["initial_sft"], results["pairs"]
    base_tokens = base["mean_tokens"]
    fig, ax = plt.subplots(figsize=(7.6, 5.6))
    sweep_colour, default_colour, pairs_colour = PALETTE[0], PALETTE[1], PALETTE[3]
    ax.plot([r["mean_steps"] for r in sweep], [100 * r["accuracy"] for r in sweep], "o-", color=sweep_colour,
            label="SuperThoughts, threshold sweep (labels: threshold)")
    chosen = results["superthoughts"]
    ax.plot([chosen["mean_steps"]], [100 * chosen["accuracy"]], "*", color=default_colour, markersize=15,
            markeredgecolor="black", markeredgewidth=0.5, zorder=3,
            label=f"SuperThoughts at the default threshold {chosen['threshold']:g}: {_numbers(chosen, base_tokens)}")
    ax.plot([base["mean_steps"]], [100 * base["accuracy"]], "s", color="black",
            label=f"baseline SFT (standard): {_numbers(base, 0.0)}")
    # Larger and hollow: both SFT models decode the same token counts, so this rings the baseline.
    ax.plot([initial["mean_steps"]], [100 * initial["accuracy"]], "s", color="dimgray", fillstyle="none",
            markersize=13, label=f"initial SFT (standard): {_numbers(initial, 0.0)}")
    # Hollow and larger for the same reason: pairs decodes about the steps of the lowest
    # threshold, and a filled triangle hid that point.
    ax.plot([pairs["mean_steps"]], [100 * pairs["accuracy"]], "^", color=pairs_colour, fillstyle="none",
            markersize=12, markeredgewidth=1.5, zorder=4,
            label=f"pairs (always 2 tokens): {_numbers(pairs, base_tokens)}")
    ax.set_xlabel("mean decode steps per problem")
    ax.set_ylabel("accuracy (%)")
    ax.set_ylim(-8, 110)
    if base_tokens:  # steps as a share of the baseline's tokens, as the table's reduction column
        top = ax.secondary_xaxis("top", functions=(lambda s: 100 * (1 - s / base_tokens),
                                                   lambda r: base_tokens * (1 - r / 100)))
        top.set_xlabel("CoT reduction vs the baseline's tokens (%)")
    ax.grid(alpha=0.3)
    # Outside the axes: inside, it covered part of the sweep whatever corner it took.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.12), ncol=1, fontsize=LABEL_FONT_SIZE, frameon=False)
    ax.set_title(plot_title(results), fontsize=11, pad=10)
    # Threshold labels below or above their points (beside them they sat on the sweep's line),
    # wherever they clear the other labels and the marked points.
    steps = [r["mean_steps"] for r in (*sweep, base, initial, pairs)]
    groups = _label_groups(sweep, max(max(steps) - min(steps), 1e-9), 1.0)
    texts = [f"{g[0]['threshold']:g}" if len(g) == 1 else f"{g[0]['threshold']:g}-{g[-1]['threshold']:g}"
             for g in groups]
    place_labels(ax, [(sum(r["mean_steps"] for r in g) / len(g), 100 * g[0]["accuracy"]) for g in groups], texts,
                 avoid=[(r["mean_steps"], 100 * r["accuracy"]) for r in (chosen, base, pairs)],
                 offsets=THRESHOLD_LABEL_OFFSETS)
    return save_figure(fig, path)
