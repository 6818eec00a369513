"""benchmarks/redraw_plots.py: recorded PNGs are redrawn from the JSON beside them with the
current plotting code; nothing is measured, no JSON changes, a JSON without a PNG gets none."""
from __future__ import annotations

import importlib.util
import shutil
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
RESULTS = REPO / "benchmarks" / "results"
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def load_redraw():
    spec = importlib.util.spec_from_file_location("redraw_plots", REPO / "benchmarks" / "redraw_plots.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_redraw_replaces_recorded_pngs_and_leaves_the_json(tmp_path: Path, capsys) -> None:
    for name in ("demo_cpu.json", "generate_cpu.json", "generate_cuda.json"):
        shutil.copy(RESULTS / name, tmp_path / name)
    stale = b"not a png yet"
    (tmp_path / "demo_cpu.png").write_bytes(stale)
    (tmp_path / "generate_cuda.png").write_bytes(stale)
    (tmp_path / "generate_orphan.png").write_bytes(stale)  # no JSON beside it
    jsons = {path.name: path.read_bytes() for path in tmp_path.glob("*.json")}

    assert load_redraw().main(["--results", str(tmp_path)]) == 0

    for name in ("demo_cpu.png", "generate_cuda.png"):
        assert (tmp_path / name).read_bytes().startswith(PNG_SIGNATURE), name
    assert not (tmp_path / "generate_cpu.png").exists()  # its JSON had no PNG beside it
    assert (tmp_path / "generate_orphan.png").read_bytes() == stale
    assert {path.name: path.read_bytes() for path in tmp_path.glob("*.json")} == jsons
    err = capsys.readouterr().err
    assert "generate_orphan.png has no generate_orphan.json beside it" in err
