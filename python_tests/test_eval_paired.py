"""--compare's paired accuracy difference (`superthoughts_ext.eval_paired`): values computed by
hand for greedy and sampled pairs, a zero difference with discordant problems, one problem, the
t quantile and McNemar's p against scipy, and the output --compare printed before, unchanged.
"""
from __future__ import annotations

import json
import math
import re
from pathlib import Path

import pytest

from superthoughts_ext.cli import main
from superthoughts_ext.eval_compare import compare, compare_runs, format_comparison, format_runs
from superthoughts_ext.eval_paired import mcnemar_exact_p, paired_difference, t_quantile_975

ROOT = Path(__file__).resolve().parent.parent
COMMON = {"bench": "amc23", "max_new_tokens": 4096}


def write_records(path: Path, rows: list[dict]) -> Path:
    path.write_text("".join(json.dumps(row) + "\n" for row in rows))
    return path


@pytest.fixture
def runs(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> dict[str, Path]:
    """Ten greedy problems: sft solves 0-6; st solves 3-6 (3 solved by sft alone, none by st
    alone); pairs solves 0-4, 7, 8 (2 each way: a difference of 0). Paths relative to tmp_path,
    as the docs example types them."""
    monkeypatch.chdir(tmp_path)
    solved = {"sft": range(7), "st": range(3, 7), "pairs": (0, 1, 2, 3, 4, 7, 8)}
    settings = {"sft": {"mode": "standard"}, "st": {"mode": "superthoughts", "threshold": 0.999},
                "pairs": {"mode": "pairs"}}
    steps = {"sft": lambda i: 100 + 10 * i, "st": lambda i: 70 + 7 * i, "pairs": lambda i: 50 + 5 * i}
    tokens = {"sft": lambda i: 100 + 10 * i, "st": lambda i: 100 + 10 * i, "pairs": lambda i: 90 + 10 * i}
    return {name: write_records(Path(f"{name}.jsonl"), [
        {"id": str(i), "correct": i in solved[name], "tokens": tokens[name](i), "steps": steps[name](i),
         **settings[name], **COMMON} for i in range(10)]) for name in solved}


# What --compare printed before the paired numbers were added: it must still print it, unchanged.
BEFORE_TWO = """\
A: sft.jsonl
B: st.jsonl
matched problems: 10
                                        A       B    B - A
                         accuracy  0.7000  0.4000  -0.3000
                 solved only here       3       0         
                      mean tokens   145.0   145.0         
                mean decode steps   145.0   101.5         
cut off (token budget or context)       0       0         
CoT length reduction of B vs A (1 - steps_B / tokens_A): 30.00%
"""
BEFORE_RUNS = """\
problems present in every file: 10
run                       accuracy     vs A  mean tokens  mean steps  CoT reduction  cut off
A: sft [standard]           0.7000                 145.0       145.0                       0
st [superthoughts 0.999]    0.4000  -0.3000        145.0       101.5         30.00%        0
pairs [pairs]               0.7000  +0.0000        135.0        72.5         50.00%        0
CoT reduction = 1 - mean steps of the run / mean tokens of A; cut off = outputs without a stop token (token budget or context)
"""


def test_greedy_pair_by_hand(runs: dict[str, Path]) -> None:
    result = compare(runs["sft"], runs["st"])
    # d = -1 on 3 problems, 0 on 7: mean -0.3, sum of squares about it 3 * 0.7^2 + 7 * 0.3^2 = 2.1.
    se = math.sqrt(2.1 / 9) / math.sqrt(10)
    assert result["accuracy_diff_se"] == pytest.approx(se) and se == pytest.approx(0.152753, abs=1e-6)
    half = 2.262157 * se  # t(0.975, 9 df); the expansion used from 5 df on is within 2e-5 of it
    assert result["accuracy_diff_ci"] == pytest.approx([-0.3 - half, -0.3 + half], abs=1e-5)
    assert result["mcnemar_p"] == 0.25  # 2 * P[Binom(3, 1/2) <= 0] = 2 / 8
    text = format_comparison(result)
    assert text.startswith(BEFORE_TWO)
    added = text[len(BEFORE_TWO):].splitlines()
    assert added[0] == ("paired B - A over the 10 problems matched: -30.0 points, SE 15.3, 95% CI [-64.6, +4.6] "
                        "(t, 9 df)")
    assert added[1] == "exact McNemar test on the 3 problems one run alone solved: p = 0.25"
    assert added[-1].startswith("McNemar: exact two-sided")


def test_zero_difference_with_discordant_problems(runs: dict[str, Path]) -> None:
    results = compare_runs(runs["sft"], [runs["st"], runs["pairs"]])
    pairs = results[1]
    # d = -1, -1, +1, +1 and six 0: mean 0, sd = sqrt(4 / 9), McNemar 2 * P[Binom(4, 1/2) <= 2] > 1 -> 1.
    se = math.sqrt(4 / 9) / math.sqrt(10)
    assert pairs["accuracy_diff"] == 0 and pairs["accuracy_diff_se"] == pytest.approx(se)
    assert pairs["accuracy_diff_ci"] == pytest.approx([-2.262157 * se, 2.262157 * se], abs=1e-5)
    assert pairs["mcnemar_p"] == 1.0
    text = format_runs(results)
    assert text.startswith(BEFORE_RUNS)
    added = text[len(BEFORE_RUNS):].splitlines()
    assert added[:4] == [
        "paired difference against A over the 10 problems, in points:",
        "run                       B - A    SE          95% CI  McNemar p (A only / B only)",
        "st [superthoughts 0.999]  -30.0  15.3   [-64.6, +4.6]                 0.25 (3 / 0)",
        "pairs [pairs]              +0.0  21.1  [-47.7, +47.7]                    1 (2 / 2)",
    ]


def sampled(path: Path, shares: list[list[bool]]) -> Path:
    return write_records(path, [{"id": str(i), "sample": k, "temperature": 0.6, "samples": len(by_sample),
                                 "correct": correct, "tokens": 10, "steps": 8, **COMMON}
                                for i, by_sample in enumerate(shares) for k, correct in enumerate(by_sample)])


def test_sampled_pair_by_hand(tmp_path: Path) -> None:
    # Shares of correct samples A = 1, 1/2, 0, 1 and B = 1, 1, 1/2, 1/2: d = 0, +1/2, +1/2, -1/2.
    a = sampled(tmp_path / "a.jsonl", [[True, True], [True, False], [False, False], [True, True]])
    b = sampled(tmp_path / "b.jsonl", [[True, True], [True, True], [False, True], [True, False]])
    result = compare(a, b)
    # Mean 1/8; squares about it 1/64 + 9/64 + 9/64 + 25/64 = 44/64 over 3 df.
    se = math.sqrt(44 / 64 / 3) / 2
    assert result["accuracy_diff"] == 0.125 and result["accuracy_diff_se"] == pytest.approx(se)
    assert result["accuracy_diff_ci"] == pytest.approx([0.125 - 3.182446 * se, 0.125 + 3.182446 * se], abs=1e-6)
    assert result["mcnemar_p"] is None  # not a test of shares
    lines = format_comparison(result).splitlines()
    assert "paired B - A over the 4 problems matched: +12.5 points, SE 23.9, 95% CI [-63.7, +88.7] (t, 3 df)" in lines
    assert not any("McNemar" in line for line in lines)
    # A greedy run against a sampled one: paired, but no McNemar either.
    greedy = write_records(tmp_path / "g.jsonl", [{"id": str(i), "correct": True, "tokens": 10, "steps": 10, **COMMON}
                                                 for i in range(4)])
    with pytest.warns(UserWarning, match="different temperature"):
        mixed = compare_runs(greedy, [b])[0]
    assert mixed["mcnemar_p"] is None and mixed["accuracy_diff"] == pytest.approx(-0.25)
    # d = 0, 0, -1/2, -1/2: SE = sqrt(1/4 / 3) / 2, the interval -25 +- 3.182446 * 14.43 points.
    assert mixed["accuracy_diff_se"] == pytest.approx(math.sqrt(0.25 / 3) / 2)
    lines = format_runs([mixed]).splitlines()
    assert lines[-4].split() == ["run", "B", "-", "A", "SE", "95%", "CI"]  # no McNemar column
    assert lines[-3].split()[-4:] == ["-25.0", "14.4", "[-70.9,", "+20.9]"]


def test_one_problem_has_no_standard_error(tmp_path: Path) -> None:
    a = write_records(tmp_path / "a.jsonl", [{"id": "0", "correct": False, "tokens": 10, "steps": 10}])
    b = write_records(tmp_path / "b.jsonl", [{"id": "0", "correct": True, "tokens": 10, "steps": 5}])
    result = compare(a, b)
    assert result["accuracy_diff_se"] is None and result["accuracy_diff_ci"] is None
    assert result["mcnemar_p"] == 1.0  # one discordant problem: 2 * P[Binom(1, 1/2) <= 0] = 1
    assert "paired B - A over the 1 problem matched: +100.0 points; one problem: no standard error or interval" \
        in format_comparison(result)
    lines = format_runs(compare_runs(a, [b])).splitlines()
    assert lines[-6] == "paired difference against A over the 1 problem, in points; one problem: no SE or interval:"
    assert lines[-4].split() == ["b", "+100.0", "-", "-", "1", "(0", "/", "1)"]


@pytest.mark.parametrize("only_a, only_b, p", [
    (3, 0, 0.25), (0, 3, 0.25), (0, 0, 1.0), (2, 2, 1.0), (5, 1, 14 / 64), (1, 0, 1.0), (10, 0, 2 / 1024),
])
def test_mcnemar_exact_p_by_hand(only_a: int, only_b: int, p: float) -> None:
    assert mcnemar_exact_p(only_a, only_b) == pytest.approx(p, rel=1e-12)


def test_mcnemar_and_t_quantile_match_scipy() -> None:
    stats = pytest.importorskip("scipy.stats")
    for only_a, only_b in ((40, 25), (300, 250), (7, 0), (1, 12)):
        expected = stats.binomtest(only_a, only_a + only_b, 0.5).pvalue
        assert mcnemar_exact_p(only_a, only_b) == pytest.approx(expected, rel=1e-9)
    for df in (*range(1, 60), 99, 499, 10_000):
        assert t_quantile_975(df) == pytest.approx(stats.t.ppf(0.975, df), abs=3e-4), df
    with pytest.raises(ValueError, match="degrees of freedom must be >= 1, got 0"):
        t_quantile_975(0)


def test_paired_difference_refuses_unmatched_scores() -> None:
    with pytest.raises(ValueError, match="scores of the same problems, got 2 and 1"):
        paired_difference([1.0, 0.0], [1.0], greedy=True)
    with pytest.raises(ValueError, match="got 0 and 0"):
        paired_difference([], [], greedy=False)


def test_the_interval_stays_within_what_a_difference_of_accuracies_can_be() -> None:
    # Six problems, B alone solved five: mean +5/6, SE 1/6, t(5) = 2.571 -> [+0.405, +1.262] unclamped.
    paired = paired_difference([0.0] * 6, [1.0] * 5 + [0.0], greedy=True)
    assert paired.ci is not None
    assert paired.ci[0] == pytest.approx(5 / 6 - t_quantile_975(5) / 6)
    assert paired.ci[1] == 1.0


def test_the_docs_example_is_what_compare_prints(runs: dict[str, Path], capsys: pytest.CaptureFixture[str]) -> None:
    page = (ROOT / "docs" / "evaluation.md").read_text()
    block = re.search(r"superthoughts eval --compare sft\.jsonl st\.jsonl\n```\n\n```\n(.*?)```", page, re.S)
    assert block, "docs/evaluation.md lost its --compare example"
    assert main(["eval", "--compare", "sft.jsonl", "st.jsonl"]) == 0
    printed = capsys.readouterr().out
    # The page keeps no trailing blanks (the table's empty "B - A" cells).
    assert block.group(1).splitlines() == [line.rstrip() for line in printed.splitlines()]


def test_the_docs_sizes_of_se_and_interval_are_what_paired_difference_gives() -> None:
    # The page's rule of thumb for two greedy runs, b = c problems solved by one run alone: its SE
    # and its 95% half-width are two numbers (the one about twice the other), each as computed.
    page = " ".join((ROOT / "docs" / "evaluation.md").read_text().split())
    stated = re.findall(r"(\d+) (?:problems that differ )?among \w+'s (\d+) (?:give )?SE (\d+\.\d) and "
                        r"±(\d+\.\d)", page)
    assert len(stated) == 2, "docs/evaluation.md lost its SE and interval examples"
    for discordant, n, se, half in stated:
        only = int(discordant) // 2
        rest = int(n) - 2 * only
        paired = paired_difference([1] * only + [0] * only + [0] * rest, [0] * only + [1] * only + [0] * rest,
                                   greedy=True)
        assert f"{100 * paired.se:.1f}" == se
        assert f"{100 * (paired.ci[1] - paired.mean):.1f}" == half


def test_a_one_sample_run_scores_0_or_1_so_it_gets_mcnemar_too(tmp_path: Path) -> None:
    # --samples 1 at a temperature: one pass per problem, each problem solved or not, as greedy.
    # What the page says of it; several samples per problem (shares) get none.
    greedy = write_records(tmp_path / "g.jsonl", [{"id": str(i), "correct": i < 4, "tokens": 10, "steps": 10}
                                                 for i in range(6)])
    one = sampled(tmp_path / "one.jsonl", [[i > 0] for i in range(6)])
    with pytest.warns(UserWarning, match="different temperature"):
        result = compare(greedy, one)
    assert (result["wins_a"], result["wins_b"], result["mcnemar_p"]) == (1, 2, 1.0)
    two = sampled(tmp_path / "two.jsonl", [[i > 0, True] for i in range(6)])
    with pytest.warns(UserWarning, match="different temperature"):
        assert compare(greedy, two)["mcnemar_p"] is None
    page = " ".join((ROOT / "docs" / "evaluation.md").read_text().split())
    assert "Where both runs have one pass per problem (greedy, or sampled with `--samples 1`" in page
    assert "`mcnemar_p` (None where a run has several samples per problem)" in page
