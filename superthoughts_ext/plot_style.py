"""What every plot of the package shares: colours that colour-blind readers tell apart, markers
and bar hatches that stay apart in greyscale, the saved resolution, value labels placed where
they cover neither each other, other points, error bars nor the axes' edge, and saving that
always closes the figure.

Plots: accuracy vs decode steps of the demo (`demo/results.py`), accuracy vs CoT length of
`eval --compare --plot` (`eval_compare.py`) and tokens/s of `bench generate`
(`benchmarks/bench_generate.py`).
"""
from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from superthoughts_ext.file_writes import replacing, writing

# Okabe & Ito's palette (black last: the baselines are drawn in black): distinct for the common
# colour-vision deficiencies, where matplotlib's default cycle puts red beside green.
PALETTE = ("#0072B2", "#E69F00", "#009E73", "#D55E00", "#CC79A7", "#56B4E9", "#F0E442", "#000000")
# Neighbours differ in shape, not only in orientation (matplotlib's "^" beside "v" read alike
# when small or printed in grey).
MARKERS = ("o", "D", "^", "P", "X", "v", "h", "*", "<", ">")
# For bars: what tells the series apart in greyscale, where several palette colours turn into the
# same grey.
HATCHES = ("", "//", "..", "xx", "\\\\", "oo", "--", "++", "||", "**")
# 150 dots per inch: the 7-10 inch wide figures come out 1000-1500 pixels wide, sharp on a screen
# and on a slide, with 8-point labels still readable.
DPI = 150
LABEL_FONT_SIZE = 8
# Width of an error bar's caps, in points, each side of its line (matplotlib's ``capsize``).
ERROR_BAR_CAPSIZE = 4


def pyplot() -> Any:
    """matplotlib.pyplot on the Agg backend: the plots are files, written where no display is."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def save_figure(fig: Any, path: str | Path) -> Path:
    """Writes ``fig`` to ``path`` (any format matplotlib knows from the suffix, else its default
    format, whose suffix is added as savefig adds it; the folder is made) at `DPI`, cropped to
    what is drawn so that no label or legend outside the axes is cut off, and closes it even when
    the write fails (`WriteFailed` naming the path); returns the path written. The file is
    replaced whole (`file_writes.replacing`): savefig opens its file before it encodes, and a
    Ctrl-C meanwhile left a truncated PNG in place of the previous plot."""
    plt = pyplot()
    path = Path(path)
    file_format = path.suffix[1:] or plt.rcParams["savefig.format"]
    if not path.suffix:
        path = path.with_name(f"{path.name.rstrip('.')}.{file_format}")
    try:
        with writing(path):
            path.parent.mkdir(parents=True, exist_ok=True)
        with replacing(path) as temporary:
            fig.savefig(temporary, format=file_format, dpi=DPI, bbox_inches="tight")
    finally:
        plt.close(fig)
    return path


# Where a value label may go, in points from its data point, in the order tried: right, left,
# above, below, the four diagonals (near an edge of the axes only these fit a long label beside
# a neighbour's), then further out above and below.
_LABEL_OFFSETS = ((6, 0, "left", "center"), (-6, 0, "right", "center"), (0, 7, "center", "bottom"),
                  (0, -7, "center", "top"), (5, 6, "left", "bottom"), (5, -6, "left", "top"),
                  (-5, 6, "right", "bottom"), (-5, -6, "right", "top"), (0, 18, "center", "bottom"),
                  (0, -18, "center", "top"))


def _bar_boxes(ax: Any, bars: Sequence[tuple[float, float, float]]) -> list[Any]:
    """Each vertical error bar (x, low, high in data coordinates) as the pixel box its line and
    caps cover."""
    from matplotlib.transforms import Bbox

    cap = ERROR_BAR_CAPSIZE * ax.figure.dpi / 72
    boxes = []
    for x, low, high in bars:
        (x0, y0), (_, y1) = ax.transData.transform([(x, low), (x, high)])
        boxes.append(Bbox([[x0 - cap, min(y0, y1)], [x0 + cap, max(y0, y1)]]))
    return boxes


def place_labels(ax: Any, points: list[tuple[float, float]], texts: list[str],
                 avoid: Sequence[tuple[float, float]] = (),
                 offsets: Sequence[tuple[float, float, str, str]] = _LABEL_OFFSETS,
                 bars: Sequence[tuple[float, float, float]] = (), **text_kwargs: Any) -> list[Any]:
    """One annotation per point (data coordinates), each at the first of ``offsets`` (dx, dy in
    points, ha, va) where it lies inside the axes and overlaps neither a label placed before it,
    nor the marker area of another point or of a point of ``avoid`` (markers drawn unlabelled),
    nor an error bar of ``bars`` ((x, low, high) in data coordinates, caps `ERROR_BAR_CAPSIZE`
    wide: a label over a sampled run's bar hid where the bar ends); where none is free, at the
    first offset inside the axes (or the first at all).
    Call it after the axis limits are final: placement is measured in pixels.
    Returns the annotations, in the order of ``points``."""
    fig = ax.figure
    renderer = fig.canvas.get_renderer()
    box = ax.get_window_extent(renderer)
    centres = [ax.transData.transform(point) for point in (*points, *avoid)]
    bar_boxes = _bar_boxes(ax, bars)
    marker_pad = 5 * fig.dpi / 72  # about a marker's radius, in pixels
    placed: list[Any] = []
    annotations = []
    for index, (point, text) in enumerate(zip(points, texts)):
        # On a white ground: a grid or reference line through the label does not strike it out.
        label = ax.annotate(text, point, xytext=offsets[0][:2], textcoords="offset points", fontsize=LABEL_FONT_SIZE,
                            bbox=dict(boxstyle="square,pad=0.1", facecolor="white", edgecolor="none", alpha=0.8),
                            **text_kwargs)
        fallback = None
        for dx, dy, ha, va in offsets:
            label.set_position((dx, dy))
            label.set_ha(ha)
            label.set_va(va)
            extent = label.get_window_extent(renderer)
            inside = box.x0 <= extent.x0 and extent.x1 <= box.x1 and box.y0 <= extent.y0 and extent.y1 <= box.y1
            if not inside:
                continue
            fallback = fallback or (dx, dy, ha, va)
            crowded = any(extent.overlaps(other) for other in (*placed, *bar_boxes)) or any(
                j != index and extent.x0 - marker_pad < x < extent.x1 + marker_pad
                and extent.y0 - marker_pad < y < extent.y1 + marker_pad for j, (x, y) in enumerate(centres))
            if not crowded:
                break
        else:
            dx, dy, ha, va = fallback or offsets[0]
            label.set_position((dx, dy))
            label.set_ha(ha)
            label.set_va(va)
        placed.append(label.get_window_extent(renderer))
        annotations.append(label)
    return annotations


def fit_texts_above(ax: Any, texts: list[Any], rounds: int = 8) -> None:
    """Raises the top of the y axis until every text in ``texts`` (labels over bars, fixed in
    size on the page) ends below it: a fixed headroom factor cut off long rotated labels over the
    tallest bar. Works on linear and log axes (it measures in pixels); the texts' anchors stay put."""
    renderer = ax.figure.canvas.get_renderer()
    for _ in range(rounds):
        box = ax.get_window_extent(renderer)
        top = max((text.get_window_extent(renderer).y1 for text in texts), default=box.y1)
        if top <= box.y1 - 2:
            return
        # Where the axis would have to end, read off the current scale; the scale shrinks as the
        # axis grows, so a few rounds settle it.
        low, high = ax.get_ylim()
        needed = ax.transData.inverted().transform((box.x0, top + 4 + 0.02 * box.height))[1]
        ax.set_ylim(low, max(needed, high))
