"""superthoughts_ext.progress: a bar on a stream that is not a terminal (a log file under nohup,
SLURM, `tee`, CI) writes a bounded number of whole lines, never a carriage return; on a terminal
it stays tqdm's bar. tqdm's clock is a fake one here: hour-long loops run at once and the lines
are the same on every run. transformers' bars go through the same helper (its tqdm hook).
"""
from __future__ import annotations

import io
import math
import re

import pytest
from tqdm import std as tqdm_std

from superthoughts_ext.progress import LINE_INTERVAL_S, LINES_PER_TOTAL, LogLinesBar, progress_bar, writes_lines

LINE = re.compile(r"^(?P<desc>[^:]+): +(?P<pct>\d+)% (?P<n>\d+)/(?P<total>\d+) \[elapsed (?P<elapsed>[\d:]+), "
                  r"ETA (?P<eta>[\d:]+|\?), +(?P<rate>[\d.]+|\?)(?P<unit>\w+)/s(, .*)?\]$")


class FakeClock:
    """tqdm's time(): advanced by hand."""

    def __init__(self) -> None:
        self.now = 1_000.0

    def __call__(self) -> float:
        return self.now


class Terminal(io.StringIO):
    """A stream that says it is a terminal."""

    def isatty(self) -> bool:
        return True


@pytest.fixture
def clock(monkeypatch: pytest.MonkeyPatch) -> FakeClock:
    fake = FakeClock()
    monkeypatch.setattr(tqdm_std, "time", fake)
    monkeypatch.delenv("TQDM_MININTERVAL", raising=False)
    return fake


def seconds(clock_text: str) -> int:
    """tqdm's "[H:]MM:SS" as seconds."""
    total = 0
    for part in clock_text.split(":"):
        total = total * 60 + int(part)
    return total


def run_loop(clock: FakeClock, file: io.StringIO, n: int, seconds_each: float, *, sized: bool = True,
             **kwargs) -> list[str]:
    """The lines a bar over `n` items taking `seconds_each` each wrote into `file` (an iterator
    with no length unless `sized`)."""
    for _ in progress_bar(range(n) if sized else iter(range(n)), file=file, **kwargs):
        clock.now += seconds_each
    text = file.getvalue()
    assert "\r" not in text and text.endswith("\n"), text[:300]
    return text.splitlines()


def test_a_long_loop_in_a_log_writes_few_whole_lines_each_readable_alone(clock: FakeClock) -> None:
    # 20 000 rows at 0.25 s: 5 000 s, a tenth every 500 s, so the 30 s lines set the pace.
    lines = run_loop(clock, io.StringIO(), 20_000, 0.25, desc="tokenizing train.jsonl", unit="line")
    duration = 20_000 * 0.25
    assert len(lines) <= 1 + LINES_PER_TOTAL + math.ceil(duration / LINE_INTERVAL_S) + 1
    assert len(lines) >= duration / LINE_INTERVAL_S  # a line at least every 30 s
    fields = [LINE.match(line) for line in lines]
    assert all(fields), [line for line, match in zip(lines, fields) if not match][:3]
    assert {(f["desc"], f["total"], f["unit"]) for f in fields} == {("tokenizing train.jsonl", "20000", "line")}
    elapsed = [seconds(f["elapsed"]) for f in fields]
    assert max(b - a for a, b in zip(elapsed, elapsed[1:])) <= LINE_INTERVAL_S
    # The last line: the whole count, the time it took, the mean rate (4 rows a second).
    last = fields[-1]
    assert (last["n"], last["pct"], last["elapsed"], last["eta"], last["rate"]) == ("20000", "100", "1:23:20", "00:00",
                                                                                     "4.00")


def test_a_loop_quicker_than_the_interval_writes_one_line_a_tenth(clock: FakeClock) -> None:
    lines = run_loop(clock, io.StringIO(), 1_000, 0.125, desc="regrade st.jsonl")  # a tenth every 12.5 s
    assert [LINE.match(line)["pct"] for line in lines] == [str(p) for p in range(0, 101, 10)]


def test_a_bar_over_within_a_second_writes_its_first_and_last_lines(clock: FakeClock) -> None:
    lines = run_loop(clock, io.StringIO(), 26, 0.001, desc="Loading weights")
    assert [LINE.match(line)["n"] for line in lines] == ["0", "26"]


def test_updates_by_hand_with_a_postfix_and_a_resumed_start(clock: FakeClock) -> None:
    # evaluate's bar: a resumed run starts at the records it kept, and each line has the accuracy.
    log = io.StringIO()
    bar = progress_bar(total=40, initial=10, desc="math500 [superthoughts]", file=log)
    for done in range(11, 41):
        clock.now += 2.0
        bar.set_postfix(acc=f"{done / 40:.3f}", refresh=False)
        bar.update(1)
    bar.close()
    lines = log.getvalue().splitlines()
    assert lines[0].startswith("math500 [superthoughts]:  25% 10/40 [elapsed 00:00, ETA ?")
    assert lines[-1] == "math500 [superthoughts]: 100% 40/40 [elapsed 01:00, ETA 00:00,  2.00s/it, acc=1.000]"
    assert len(lines) == 1 + 8  # 10/40, then 12, 16, ... 40: each tenth, 8 s apart


def test_a_bar_without_a_total_writes_a_line_every_interval(clock: FakeClock) -> None:
    lines = run_loop(clock, io.StringIO(), 600, 1.0, sized=False, desc="tokenizing rows", unit="row")
    assert lines[0] == "tokenizing rows: 0 row [elapsed 00:00, ?row/s]"
    assert lines[-1] == "tokenizing rows: 600 row [elapsed 10:00,  1.00row/s]"
    assert len(lines) == 1 + 600 // int(LINE_INTERVAL_S)


def test_tqdm_mininterval_sets_the_interval_between_lines(clock: FakeClock, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("TQDM_MININTERVAL", "5")
    lines = run_loop(clock, io.StringIO(), 1_000, 1.0, desc="x")  # 1 000 s: a line every 5 s
    assert len(lines) == 1 + 200


def test_messages_between_lines_leave_the_lines_whole(clock: FakeClock) -> None:
    # tqdm.write (Trainer's metrics, evaluate's warnings) clears every bar and redraws it: no '\r',
    # and no second copy of a line with nothing new.
    log = io.StringIO()
    bar = progress_bar(total=4, desc="training", file=log)
    bar.update(1)
    tqdm_std.tqdm.write("{'loss': 6.9}", file=log)
    bar.close()
    assert log.getvalue().splitlines() == [
        "training:   0% 0/4 [elapsed 00:00, ETA ?, ?it/s]",
        "{'loss': 6.9}",
        "training:  25% 1/4 [elapsed 00:00, ETA ?, ?it/s]",
    ]


def test_on_a_terminal_the_bar_stays_a_tqdm_bar(clock: FakeClock) -> None:
    terminal = Terminal()
    bar = progress_bar(range(50), file=terminal, desc="tokenizing train.jsonl")
    from tqdm.auto import tqdm

    assert type(bar) is tqdm and not isinstance(bar, LogLinesBar)
    for _ in bar:
        clock.now += 1.0
    assert "\r" in terminal.getvalue() and "100%|" in terminal.getvalue()


def test_hidden_bars_write_nothing(clock: FakeClock) -> None:
    log = io.StringIO()
    for _ in progress_bar(range(100), file=log, desc="x", disable=True):
        clock.now += 60
    assert log.getvalue() == ""


def test_which_streams_get_lines(monkeypatch: pytest.MonkeyPatch) -> None:
    closed = io.StringIO()
    closed.close()
    assert writes_lines(io.StringIO()) and writes_lines(closed) and not writes_lines(Terminal())
    monkeypatch.setattr("sys.stderr", Terminal())
    assert not writes_lines()
    monkeypatch.setattr("sys.stderr", None)  # pythonw: no stream, no bar to turn into lines
    assert not writes_lines()
    # In a notebook stderr is no terminal, but tqdm.auto draws widgets there: they stay.
    from tqdm import autonotebook

    monkeypatch.setattr(autonotebook, "tqdm", type("tqdm", (), {"__module__": "tqdm.notebook"}))
    assert not writes_lines(io.StringIO())


def test_transformers_bars_are_drawn_as_ours_while_a_command_runs(clock: FakeClock,
                                                                  monkeypatch: pytest.MonkeyPatch) -> None:
    pytest.importorskip("transformers")
    from transformers.utils import logging as transformers_logging

    from superthoughts_ext.cli import transformers_progress_bars

    transformers_logging.enable_progress_bar()  # transformers' default, whatever ran before
    before = transformers_logging.set_tqdm_hook(None)
    log = io.StringIO()
    monkeypatch.setattr("sys.stderr", log)
    try:
        with transformers_progress_bars(True):
            for _ in transformers_logging.tqdm(range(26), desc="Loading weights"):
                clock.now += 0.001
        assert log.getvalue().splitlines()[-1].startswith("Loading weights: 100% 26/26 [elapsed 00:00, ETA 00:00")
        assert "\r" not in log.getvalue() and transformers_logging.set_tqdm_hook(None) is None  # restored
        log.truncate(0)
        with transformers_progress_bars(False):
            for _ in transformers_logging.tqdm(range(26), desc="Loading weights"):
                clock.now += 0.001
        assert log.getvalue() == ""
    finally:
        transformers_logging.set_tqdm_hook(before)
        transformers_logging.enable_progress_bar()
