"""Redraw the recorded plots in benchmarks/results from the JSON recorded beside each.

A PNG there is drawn by the code that measured it; when the plotting code changes (labels,
titles, colours), this redraws every demo_*.png and generate_*.png from its demo_*.json /
generate_*.json with the current code, so the pictures match what a new run would draw. It
measures nothing and changes no JSON. A JSON without a PNG beside it is left alone.

    python benchmarks/redraw_plots.py [--results benchmarks/results]
"""
from __future__ import annotations

import argparse
import json
import sys
from pathlib import Path

from superthoughts_ext.bench_cli import load_benchmark
from superthoughts_ext.demo.results import write_plot

RESULTS = Path(__file__).resolve().parent / "results"


def redraw(results: Path) -> list[Path]:
    """Redraws the demo and generate PNGs of `results` that have their JSON; returns them."""
    generate = load_benchmark("generate")
    drawn = []
    for png in sorted(results.glob("demo_*.png")) + sorted(results.glob("generate_*.png")):
        source = png.with_suffix(".json")
        if not source.is_file():
            print(f"redraw_plots: {png} has no {source.name} beside it; left as it is", file=sys.stderr)
            continue
        record = json.loads(source.read_text(encoding="utf-8"))
        if png.name.startswith("demo_"):
            write_plot(record, png)
        else:
            generate.plot(record["results"], png, generate.plot_title(record))
        drawn.append(png)
    return drawn


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--results", type=Path, default=RESULTS, help="the folder of recorded results")
    args = parser.parse_args(argv)
    for png in redraw(args.results):
        print(f"redrew {png}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
