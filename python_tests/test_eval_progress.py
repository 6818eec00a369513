"""evaluate's progress bar, on the tiny tokenizer and fake generate of test_evaluation.py: what
it names and what each draw shows (a log file keeps every draw), on a terminal and in a log."""
from __future__ import annotations

import re

import pytest

pytest.importorskip("math_verify")
pytest.importorskip("torch")
pytest.importorskip("transformers")
from test_evaluation import PROBLEMS, fake_generate, fake_model, make_tokenizer  # noqa: E402

from superthoughts_ext.evaluation import evaluate  # noqa: E402


def test_the_progress_bar_names_the_bench_and_mode_or_the_callers_label(capsys) -> None:
    tokenizer = make_tokenizer()
    for label, shown in ((None, "math500 [standard]: 100%"), ("eval baseline SFT", "eval baseline SFT: 100%")):
        evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS[:2], mode="standard", progress=True,
                 generate_fn=fake_generate(tokenizer, []), label=label)
        assert shown in capsys.readouterr().err


@pytest.mark.parametrize("stream", ["log", "terminal"])
def test_each_bar_draw_shows_the_accuracy_of_the_rows_it_counts(capsys, monkeypatch, stream: str) -> None:
    # update() drew the bar before set_postfix had the new accuracy: "3/3 [acc=1.000]" went to a
    # log file before the correct "3/3 [acc=0.667]", two draws per batch.
    import tqdm.auto
    from test_progress import Terminal

    terminal = Terminal()
    if stream == "terminal":  # tqdm's bar, drawn at every update
        class EveryUpdateDraws(tqdm.auto.tqdm):
            def __init__(self, *args, **kwargs):
                super().__init__(*args, **{**kwargs, "mininterval": 0, "miniters": 1})

        monkeypatch.setattr(tqdm.auto, "tqdm", EveryUpdateDraws)
        monkeypatch.setattr("sys.stderr", terminal)
    else:  # the log's lines (superthoughts_ext.progress), one at every update
        monkeypatch.setenv("TQDM_MININTERVAL", "0")
    tokenizer = make_tokenizer()
    evaluate(fake_model(tokenizer), tokenizer, "math500", PROBLEMS[:3], mode="standard", progress=True,
             batch_size=1, generate_fn=fake_generate(tokenizer, []))  # right, right, wrong (9 + 1)
    drawn = terminal.getvalue() if stream == "terminal" else capsys.readouterr().err
    draws = re.findall(r"(\d)/3 \[[^\]]*acc=([\d.]+)\]", drawn)
    assert set(draws) == {("1", "1.000"), ("2", "1.000"), ("3", "0.667")}, draws
