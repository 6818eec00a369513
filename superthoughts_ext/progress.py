"""Progress bars that stay tqdm bars on a terminal and become whole lines in a log file.

On a terminal (or in a notebook) every bar is tqdm's own, redrawn in place. Where stderr is a
file or a pipe (nohup, SLURM, `tee`, CI) those redraws are carriage-return updates about ten
times a second on one endless line: megabytes that `less` and `grep` cannot read. There the same
bar writes whole lines instead, each readable on its own:

    tokenizing train.jsonl:  40% 400/1000 [elapsed 00:12, ETA 00:18, 33.20line/s]

one when it starts, then one per `LINE_INTERVAL_S` seconds (TQDM_MININTERVAL, when set, in its
place) or per tenth of the total (`LINES_PER_TOTAL`; not within `MIN_LINE_GAP_S` of the last),
whichever comes first, and the last one when it closes. Every bar of this package comes from
`progress_bar`; transformers' bars (loading and saving weights) from `transformers_line_hook`,
and Trainer's from `superthoughts_ext.train_progress`.
"""
from __future__ import annotations

import math
import os
import sys
from typing import Any, Callable, Iterable, TextIO

from tqdm import std as tqdm_std

LINE_INTERVAL_S = 30.0  # at most this long between two lines of a bar in a log
LINES_PER_TOTAL = 10  # and a line at each tenth of the total,
MIN_LINE_GAP_S = 1.0  # unless the last one is younger than this: a bar over in a second has two

_WITH_TOTAL = "{desc}{percentage:3.0f}% {n_fmt}/{total_fmt} [elapsed {elapsed}, ETA {remaining}, {rate_fmt}{postfix}]"
_WITHOUT_TOTAL = "{desc}{n_fmt} {unit} [elapsed {elapsed}, {rate_fmt}{postfix}]"


def writes_lines(file: TextIO | None = None) -> bool:
    """Whether a bar on `file` (default: sys.stderr) writes log lines: True unless the stream is a
    terminal, or tqdm.auto draws notebook widgets (a notebook's stderr is no terminal either)."""
    stream = sys.stderr if file is None else file
    if stream is None:
        return False
    try:
        if stream.isatty():
            return False
    except (AttributeError, ValueError):  # no isatty, or a closed file: nobody watches it redraw
        pass
    import tqdm.auto  # first: it imports autonotebook without the warning autonotebook gives in a notebook
    from tqdm import autonotebook

    return autonotebook.tqdm.__module__ != "tqdm.notebook"


def line_interval() -> float:
    """Seconds between two lines of a bar that has not reached its next tenth meanwhile:
    TQDM_MININTERVAL when it is set (the minimum time between two redraws, on a terminal too;
    tqdm itself refuses a value that is not a number when it is imported), else `LINE_INTERVAL_S`."""
    text = os.environ.get("TQDM_MININTERVAL", "").strip()
    return max(float(text), 0.0) if text else LINE_INTERVAL_S


class LogLinesBar(tqdm_std.tqdm):
    """A tqdm bar whose every draw is one whole line ('\\n'-terminated, no carriage return): the
    first, then one per `line_interval()` seconds or per tenth of the total (not within
    `MIN_LINE_GAP_S` of the last), whichever comes first, and the last at close. The content is
    tqdm's own (format_meter): description, percentage, n/total, elapsed, ETA, the mean rate since
    the start, the postfix."""

    def __init__(self, iterable: Iterable[Any] | None = None, *args: Any, **kwargs: Any) -> None:
        self._interval = line_interval()
        self._line_n: float | None = None  # n at the last line written; None before the first
        self._line_t = 0.0
        self._next_part = 0  # the next tenth of the total (`LINES_PER_TOTAL`) that is due a line
        # tqdm's own throttle would skip updates that reach a tenth of the total: every update
        # reaches display(), which decides. The rate is the mean since the start (no smoothing):
        # a line written every 30 s should not report the speed of its last few steps.
        kwargs.update(mininterval=0, miniters=1)
        kwargs.setdefault("smoothing", 0)
        super().__init__(iterable, *args, **kwargs)

    def display(self, msg: str | None = None, pos: int | None = None) -> bool:
        """Write the current line when one is due; False for tqdm's erase draws (msg='')."""
        if msg is not None or not self._line_due():
            return False
        self._write_line()
        return True

    def clear(self, nolock: bool = False) -> None:
        """Nothing to erase: a written line stays (tqdm.write clears bars before its message)."""

    def close(self) -> None:
        """The last line (unless the last one written already says it), then tqdm's close."""
        if not getattr(self, "disable", True) and self._line_n != self.n:
            with self._lock:
                self._write_line()
        self.leave = False  # tqdm's close would redraw and end the line: already done here
        super().close()

    def _line_due(self) -> bool:
        if self._line_n is None:  # the first line says what started: a step that hangs shows in the log
            return True
        if self.n == self._line_n:  # a redraw with nothing new (tqdm.write redraws every bar)
            return False
        since_line = self._time() - self._line_t
        reached_part = bool(self.total) and self.n * LINES_PER_TOTAL >= self._next_part * self.total
        return since_line >= self._interval or (reached_part and since_line >= MIN_LINE_GAP_S)

    def _write_line(self) -> None:
        fields = self.format_dict
        desc = fields["prefix"]
        fields.update(bar_format=_WITH_TOTAL if fields["total"] else _WITHOUT_TOTAL, ncols=None,
                      prefix=f"{desc}: " if desc else "")
        self.fp.write(self.format_meter(**fields) + "\n")
        getattr(self.fp, "flush", lambda: None)()
        self._line_n, self._line_t = self.n, self._time()
        if self.total:  # n and total compared as n * 10 >= part * total: no rounding of total / 10
            self._next_part = math.floor(self.n * LINES_PER_TOTAL / self.total) + 1


def progress_bar(iterable: Iterable[Any] | None = None, *, file: TextIO | None = None,
                 **tqdm_kwargs: Any) -> tqdm_std.tqdm:
    """A progress bar over `iterable` (or one moved by `update`), drawn on `file` (default
    sys.stderr): `tqdm.auto.tqdm` on a terminal or in a notebook, else a `LogLinesBar`.
    `tqdm_kwargs` are tqdm's (desc, total, unit, initial, disable, ...)."""
    if writes_lines(file):
        return LogLinesBar(iterable, file=file, **tqdm_kwargs)
    from tqdm.auto import tqdm

    return tqdm(iterable, file=file, **tqdm_kwargs)


def transformers_line_hook(factory: Callable[..., Any], args: tuple[Any, ...], kwargs: dict[str, Any]) -> Any:
    """For transformers.utils.logging.set_tqdm_hook: transformers' bars (loading and saving weights)
    as `progress_bar` draws them; its stand-in for hidden bars (EmptyTqdm) stays."""
    from tqdm.auto import tqdm

    if factory is not tqdm:
        return factory(*args, **kwargs)
    return progress_bar(*args, **kwargs)
