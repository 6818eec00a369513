"""The plots' shared style (superthoughts_ext/plot_style.py) and the demo's accuracy-vs-steps plot:
value labels that neither overlap nor leave the axes, the saved resolution, titles that say
what is plotted and on what, and numbers where a reader needs them."""
from __future__ import annotations

import json
from pathlib import Path

import pytest

pytest.importorskip("matplotlib")
import matplotlib.pyplot as plt  # noqa: E402

from superthoughts_ext.demo.results import plot_title, write_plot  # noqa: E402
from superthoughts_ext.file_writes import WriteFailed  # noqa: E402
from superthoughts_ext.plot_style import DPI, place_labels, save_figure  # noqa: E402

RECORDED_DEMO = Path(__file__).resolve().parents[1] / "benchmarks" / "results" / "demo_cpu.json"


def _extents(fig, artists):
    renderer = fig.canvas.get_renderer()
    return [artist.get_window_extent(renderer) for artist in artists]


def _inside(inner, outer) -> bool:
    return outer.x0 <= inner.x0 and inner.x1 <= outer.x1 and outer.y0 <= inner.y0 and inner.y1 <= outer.y1


def test_place_labels_keeps_crowded_labels_apart_and_inside_the_axes() -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    # Points in a tight cluster, and one at the right edge where a label on the right would leave the axes.
    points = [(10.0, 50.0), (10.4, 50.5), (10.8, 49.5), (11.2, 50.2), (20.0, 80.0)]
    ax.plot(*zip(*points), "o")
    ax.set_xlim(0, 20.5)
    ax.set_ylim(0, 100)
    labels = place_labels(ax, points, [f"{i}: 99.9%, 40.1% shorter" for i in range(len(points))])
    assert [label.xy for label in labels] == points  # one annotation per point, in order
    boxes = _extents(fig, labels)
    axes_box = ax.get_window_extent(fig.canvas.get_renderer())
    assert all(_inside(box, axes_box) for box in boxes)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert boxes[-1].x1 < ax.transData.transform(points[-1])[0]  # left of the point at the right edge
    plt.close(fig)


def test_place_labels_keeps_off_error_bars() -> None:
    fig, ax = plt.subplots(figsize=(5, 4))
    ax.set_xlim(0, 10)
    ax.set_ylim(0, 100)
    point, bar = (5.0, 50.0), (5.5, 10.0, 90.0)  # a bar just right of the point, through its height
    right = place_labels(ax, [point], ["99.9% ± 9.9"])[0]
    assert right.get_position() == (6, 0)  # where it goes without the bar
    avoided = place_labels(ax, [point], ["99.9% ± 9.9"], bars=[bar])[0]
    box = avoided.get_window_extent(fig.canvas.get_renderer())
    bar_x = ax.transData.transform((bar[0], 0))[0]
    assert avoided.get_position() == (-6, 0) and box.x1 < bar_x
    plt.close(fig)


def test_save_figure_writes_at_the_shared_dpi_and_closes_the_figure_even_when_it_fails(tmp_path: Path) -> None:
    from PIL import Image

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    path = save_figure(fig, tmp_path / "sub" / "line.png")  # the folder is made
    assert not plt.fignum_exists(fig.number)
    width, _ = Image.open(path).size
    assert 0.8 * 4 * DPI < width <= 1.05 * 4 * DPI  # cropped to what is drawn, not scaled down
    (tmp_path / "a_file").write_text("")
    fig, _ = plt.subplots()
    with pytest.raises(WriteFailed, match="a_file"):
        save_figure(fig, tmp_path / "a_file" / "p.png")
    assert not plt.fignum_exists(fig.number)


def test_save_figure_interrupted_while_it_writes_keeps_the_previous_plot(tmp_path: Path, monkeypatch) -> None:
    # savefig opens its file, then encodes into it: a Ctrl-C there (14 of 40 at random moments in
    # the probe) left a 124-byte PNG in place of the previous plot.
    import matplotlib.image

    fig, ax = plt.subplots(figsize=(4, 3))
    ax.plot([0, 1], [0, 1])
    path = save_figure(fig, tmp_path / "plot.png")
    previous = path.read_bytes()

    def interrupted_write(fname, *args, **kwargs):
        with open(fname, "wb") as file:
            file.write(previous[:124])
        raise KeyboardInterrupt

    monkeypatch.setattr(matplotlib.image, "imsave", interrupted_write)
    fig, _ = plt.subplots()
    with pytest.raises(KeyboardInterrupt):
        save_figure(fig, path)
    assert path.read_bytes() == previous and [p.name for p in tmp_path.iterdir()] == ["plot.png"]  # no temporary
    assert not plt.fignum_exists(fig.number)


def test_save_figure_without_a_suffix_writes_the_default_format_under_its_suffix(tmp_path: Path) -> None:
    # As savefig names such a file (it adds the suffix), and the path returned is the file's.
    fig, _ = plt.subplots(figsize=(2, 2))
    path = save_figure(fig, tmp_path / "plot")
    assert path == tmp_path / "plot.png" and path.read_bytes().startswith(b"\x89PNG")
    assert [p.name for p in tmp_path.iterdir()] == ["plot.png"]


def _demo_results() -> dict:
    return json.loads(RECORDED_DEMO.read_text())


def test_demo_plot_says_what_and_on_what_with_the_numbers_of_the_marked_points(tmp_path: Path, monkeypatch) -> None:
    results = _demo_results()
    closed = []
    monkeypatch.setattr(plt, "close", closed.append)
    write_plot(results, tmp_path / "demo.png")
    fig = closed[0]
    ax = fig.axes[0]
    title = ax.get_title()
    assert "accuracy vs decode steps" in title and "100 held-out" in title and "4 layers, hidden 128" in title
    assert results["device"] in title and "seed 0" in title
    assert ax.get_ylabel() == "accuracy (%)" and ax.get_ylim() == (-8, 110)
    legend = [text.get_text() for text in ax.get_legend().get_texts()]
    assert "SuperThoughts at the default threshold 0.9: 99.0%, 71.6 steps, 39.9% shorter" in legend
    assert "pairs (always 2 tokens): 99.0%, 59.8 steps, 49.9% shorter" in legend
    assert "baseline SFT (standard): 100.0%, 119.2 steps" in legend
    # The top axis reads the steps as the reduction vs the baseline's 119.19 tokens.
    top = ax.child_axes[0]
    assert "reduction" in top.get_xlabel()
    # One threshold label per group of coinciding points (0.8 to 0.99 share one), none overlapping.
    labels = [text for text in ax.texts if text.get_text()]
    assert [t.get_text() for t in labels] == ["0.5", "0.7", "0.8-0.99", "0.999", "1"]
    boxes = _extents(fig, labels)
    assert not any(a.overlaps(b) for i, a in enumerate(boxes) for b in boxes[i + 1:])
    assert all(_inside(box, ax.get_window_extent(fig.canvas.get_renderer())) for box in boxes)


def test_demo_plot_title_reads_a_payload_without_settings() -> None:
    # A results dict built by hand (or by an older demo) names what it has.
    results = {"baseline": {"n": 7}}
    assert plot_title(results) == "superthoughts demo: accuracy vs decode steps\n7 held-out column additions"
