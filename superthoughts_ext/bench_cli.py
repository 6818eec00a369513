"""`superthoughts bench step|generate|train`: runs benchmarks/bench_<area>.py of a source checkout.

The benchmarks live beside the package (benchmarks/), not inside it, so this works from a
clone installed with `pip install --no-build-isolation -e .`; elsewhere it says so.
"""
from __future__ import annotations

import argparse
import importlib.util
import sys
from pathlib import Path

from superthoughts_ext.cli import HelpFormatter

AREAS = ("step", "generate", "train")
BENCH_DIR = Path(__file__).resolve().parent.parent / "benchmarks"


def load_benchmark(area: str):
    """The module benchmarks/bench_<area>.py of this source checkout."""
    path = BENCH_DIR / f"bench_{area}.py"
    if not path.exists():
        raise SystemExit(f"superthoughts bench {area}: {path} not found; the benchmarks ship with "
                         "the source checkout (install it with `pip install --no-build-isolation -e .`)")
    spec = importlib.util.spec_from_file_location(f"bench_{area}", path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def add_arguments(parser: argparse.ArgumentParser) -> None:
    if not BENCH_DIR.is_dir():
        # Said for `bench --help` and every area alike (it named bench_step.py for all of them).
        raise SystemExit(f"superthoughts bench: {BENCH_DIR} not found; the benchmarks ship with the source "
                         "checkout, not with an installed package (install the checkout with "
                         "`pip install --no-build-isolation -e .`)")
    sub = parser.add_subparsers(dest="area", required=True)
    for area in AREAS:
        area_parser = sub.add_parser(area, help=f"benchmarks/bench_{area}.py", formatter_class=HelpFormatter)
        # load_benchmark says why when the file is missing (an installed, not editable, package):
        # said here, before argparse would call the benchmark's options unrecognized.
        load_benchmark(area).add_arguments(area_parser)


def run(args: argparse.Namespace) -> int:
    import torch

    from superthoughts_ext.file_writes import WriteFailed

    try:
        load_benchmark(args.area).main(args)
    except WriteFailed as error:  # the results JSON or plot met a full disk: its last whole version stays
        print(f"superthoughts bench {args.area}: {error}", file=sys.stderr)
        return 1
    except (torch.OutOfMemoryError, RuntimeError) as error:
        # Sizes past the memory (a typo's extra zeros): one line, not an allocator traceback.
        if not isinstance(error, torch.OutOfMemoryError) and "can't allocate memory" not in str(error):
            raise
        reason = str(error).splitlines()[0] if str(error) else type(error).__name__
        print(f"superthoughts bench {args.area}: out of memory ({reason}); ask for smaller sizes (the "
              "configurations measured before are in the results file)", file=sys.stderr)
        return 1
    return 0
