"""The `superthoughts demo` results: the trained models evaluated on held-out problems, the
results table and the accuracy-vs-decode-steps plot (run.py trains the models and calls these).
"""
from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING, Any

from superthoughts_ext.file_writes import writing

if TYPE_CHECKING:
    from superthoughts_ext.demo.run import DemoSettings

__all__ = ["evaluate_models", "format_table", "write_plot"]


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


def write_plot(results: dict[str, Any], path: Path) -> Path:
    """Accuracy vs mean decode steps across thresholds, with both SFT models and pairs marked."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    sweep = results["sweep"]
    base, initial, pairs = results["baseline"], results["initial_sft"], results["pairs"]
    fig, ax = plt.subplots(figsize=(7.2, 5.0))
    ax.plot([r["mean_steps"] for r in sweep], [r["accuracy"] for r in sweep], "o-",
            label="SuperThoughts (threshold sweep)")
    chosen = results["superthoughts"]
    ax.plot([chosen["mean_steps"]], [chosen["accuracy"]], "*", color="tab:orange", markersize=14, zorder=3,
            label=f"SuperThoughts at the default threshold {chosen['threshold']:g}")
    steps = [r["mean_steps"] for r in (*sweep, base, initial, pairs)]
    x_span = max(max(steps) - min(steps), 1e-9)
    for index, group in enumerate(_label_groups(sweep, x_span, 1.0)):
        first, last = group[0], group[-1]
        text = f"{first['threshold']:g}" if len(group) == 1 else f"{first['threshold']:g}-{last['threshold']:g}"
        # Below and above the points in turn: neighbouring labels do not run into each other.
        x = sum(r["mean_steps"] for r in group) / len(group)
        ax.annotate(text, (x, first["accuracy"]), textcoords="offset points", xytext=(0, -14 if index % 2 == 0 else 8),
                    ha="center", fontsize=8)
    ax.plot([base["mean_steps"]], [base["accuracy"]], "s", color="black", label="baseline (standard)")
    # Larger and hollow: both SFT models decode the same token counts, so this rings the baseline.
    ax.plot([initial["mean_steps"]], [initial["accuracy"]], "s", color="tab:gray", fillstyle="none",
            markersize=12, label="initial SFT (standard)")
    ax.plot([pairs["mean_steps"]], [pairs["accuracy"]], "^", color="tab:red", label="pairs (always 2)")
    ax.set_xlabel("mean decode steps per problem (labels: confidence threshold)")
    ax.set_ylabel("accuracy")
    ax.set_ylim(-0.08, 1.1)
    ax.grid(alpha=0.3)
    # Outside the axes: inside, it covered part of the sweep whatever corner it took.
    ax.legend(loc="upper center", bbox_to_anchor=(0.5, -0.14), ncol=2, fontsize=8)
    ax.set_title("superthoughts demo: accuracy vs decode steps")
    fig.tight_layout()
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
            fig.savefig(path, dpi=120)
    finally:
        plt.close(fig)
    return path
