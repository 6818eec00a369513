"""Is an accuracy difference between two runs of one bench more than noise? (`superthoughts eval
--compare`.)

Both runs answered the same problems, so the difference is measured pairwise: per matched problem
i, d_i = s_B,i - s_A,i, where a problem's score s is 0 or 1 for a greedy run and its share of
correct samples for a sampled one. The mean of d is the accuracy difference; its standard error
sd(d) / sqrt(n) and a 95% t interval (n - 1 degrees of freedom) say how far that mean could move
had the bench drawn other problems like these. Pairing removes what the two runs share (how hard
each problem is), so where they agree on most problems, as runs of one model do, the interval is
narrower than one built from the two accuracies' own errors. It is rough where few problems, or
few of their scores, differ (d is then far from normal: McNemar's exact p below is the better
guide for greedy runs), and it is one interval per run: in a sweep of many runs, about 1 in 20
misses the true difference by chance. It covers the drawing of the problems (and of a sampled
run's samples), not other trainings or settings.

For two greedy runs (one pass per problem) the exact McNemar test asks the same question of the problems only one of
them solved: under "no difference" each such problem is as likely to go either way, so
p = min(1, 2 * P[Binom(b + c, 1/2) <= min(b, c)]) for b solved by A alone and c by B alone.
"""
from __future__ import annotations

import math
import statistics
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

# The 0.975 quantile of the normal and, for 1-4 degrees of freedom, of Student's t: beyond them
# `t_quantile_975`'s expansion is within 3e-4 of the exact quantile (within 1e-7 from 30 on).
_Z_975 = 1.959963984540054
_T_975_FEW_DF = {1: 12.706205, 2: 4.302653, 3: 3.182446, 4: 2.776445}


def t_quantile_975(df: int) -> float:
    """The 0.975 quantile of Student's t with ``df`` >= 1 degrees of freedom: the half-width of a
    95% interval in standard errors (12.71 for df 1, 2.26 for 9, 2.02 for 39, 1.96 as df grows).
    Exact to 6 decimals for df <= 4, else the Cornish-Fisher expansion about the normal quantile
    (no scipy at run time)."""
    if df < 1:
        raise ValueError(f"t_quantile_975: degrees of freedom must be >= 1, got {df}")
    if df in _T_975_FEW_DF:
        return _T_975_FEW_DF[df]
    z = _Z_975
    terms = ((z**3 + z) / 4,
             (5 * z**5 + 16 * z**3 + 3 * z) / 96,
             (3 * z**7 + 19 * z**5 + 17 * z**3 - 15 * z) / 384,
             (79 * z**9 + 776 * z**7 + 1482 * z**5 - 1920 * z**3 - 945 * z) / 92160)
    return z + sum(term / df**power for power, term in enumerate(terms, 1))


def mcnemar_exact_p(only_a: int, only_b: int) -> float:
    """Two-sided exact McNemar p-value of paired 0/1 outcomes: ``only_a`` problems solved by A
    alone, ``only_b`` by B alone (the discordant ones; the rest say nothing about a difference).
    1.0 when there are none. Exact integer sums (math.comb), so hundreds of discordant problems
    lose no precision before the one division."""
    if only_a < 0 or only_b < 0:
        raise ValueError(f"mcnemar_exact_p: counts must be >= 0, got {only_a} and {only_b}")
    discordant = only_a + only_b
    tail = sum(math.comb(discordant, k) for k in range(min(only_a, only_b) + 1))
    return min(1.0, 2 * tail / 2**discordant)


@dataclass(frozen=True)
class PairedDifference:
    """B - A over n matched problems, as fractions (x 100 for points)."""

    n: int
    mean: float  # mean of d_i: the accuracy difference
    se: float | None  # sd(d) / sqrt(n); None for one problem (no spread to estimate)
    ci: tuple[float, float] | None  # 95% t interval, mean +- t(n - 1) * se within [-1, 1]; None with se
    mcnemar_p: float | None  # exact two-sided McNemar p of two greedy runs; None otherwise


def paired_difference(scores_a: Sequence[float], scores_b: Sequence[float], greedy: bool) -> PairedDifference:
    """The paired difference of B's per-problem scores against A's (both [n], in [0, 1], in the
    same problem order). ``greedy``: both runs scored 0 / 1 per problem, which adds McNemar's p."""
    if len(scores_a) != len(scores_b) or not scores_a:
        raise ValueError(f"paired_difference: needs scores of the same problems, got {len(scores_a)} and "
                         f"{len(scores_b)}")
    diffs = [float(b) - float(a) for a, b in zip(scores_a, scores_b)]
    n = len(diffs)
    mean = sum(diffs) / n
    se = ci = None
    if n > 1:
        se = statistics.stdev(diffs) / math.sqrt(n)
        half = t_quantile_975(n - 1) * se
        # A difference of accuracies lies in [-1, 1]: a few problems' wide t interval would reach past it.
        ci = (max(mean - half, -1.0), min(mean + half, 1.0))
    p = None
    if greedy:
        p = mcnemar_exact_p(sum(d < 0 for d in diffs), sum(d > 0 for d in diffs))
    return PairedDifference(n=n, mean=mean, se=se, ci=ci, mcnemar_p=p)


def paired_fields(a: dict[str, dict[str, Any]], b: dict[str, dict[str, Any]], keys: Sequence[str],
                  greedy: bool) -> dict[str, Any]:
    """`paired_difference` of two runs' records (by problem id; a sampled run's merged per problem,
    its ``correct`` the share of correct samples) over ``keys``, as the fields `compare` returns:
    accuracy_diff_se, accuracy_diff_ci ([low, high]), both None for one problem, and mcnemar_p."""
    paired = paired_difference([a[key]["correct"] for key in keys], [b[key]["correct"] for key in keys], greedy)
    return {"accuracy_diff_se": paired.se, "accuracy_diff_ci": list(paired.ci) if paired.ci else None,
            "mcnemar_p": paired.mcnemar_p}


def _points(value: float) -> str:
    return f"{100 * value:+.1f}"


def _interval(result: dict[str, Any]) -> str:
    low, high = result["accuracy_diff_ci"]
    return f"[{_points(low)}, {_points(high)}]"


def _problems(count: int) -> str:
    return f"{count} problem" + ("" if count == 1 else "s")


def paired_lines(result: dict[str, Any]) -> list[str]:
    """The lines `format_comparison` adds under its table: B - A with its SE and interval, in
    points, McNemar's p for two greedy runs, and what the interval is."""
    head = f"paired B - A over the {_problems(result['n'])} matched: {_points(result['accuracy_diff'])} points"
    if result["accuracy_diff_se"] is None:
        lines = [f"{head}; one problem: no standard error or interval"]
    else:
        lines = [f"{head}, SE {100 * result['accuracy_diff_se']:.1f}, 95% CI {_interval(result)} "
                 f"(t, {result['n'] - 1} df)"]
    if result["mcnemar_p"] is not None:
        discordant = _problems(result["wins_a"] + result["wins_b"])
        lines.append(f"exact McNemar test on the {discordant} one run alone solved: p = {result['mcnemar_p']:.3g}")
    return lines + paired_notes(result["mcnemar_p"] is not None)


def paired_table(results: list[dict[str, Any]]) -> list[str]:
    """The table `format_runs` adds under its own: each run's paired difference against A, in
    points, with McNemar's p (solved by A alone / by the run alone) where both are greedy (the
    column is left out where no run is; blank in the row of a sampled run)."""
    greedy_pair = any(r["mcnemar_p"] is not None for r in results)
    header = ("run", "B - A", "SE", "95% CI") + (("McNemar p (A only / B only)",) if greedy_pair else ())
    rows = [header]
    single = results[0]["accuracy_diff_se"] is None  # every run is over the same problems
    for r in results:
        mcnemar = "" if r["mcnemar_p"] is None else f"{r['mcnemar_p']:.3g} ({r['wins_a']} / {r['wins_b']})"
        rows.append((r["label_b"], _points(r["accuracy_diff"]), "-" if single else f"{100 * r['accuracy_diff_se']:.1f}",
                     "-" if single else _interval(r), mcnemar)[:len(header)])
    widths = [max(len(row[col]) for row in rows) for col in range(len(header))]
    lines = [f"paired difference against A over the {_problems(results[0]['n'])}, in points"
             f"{'; one problem: no SE or interval' if single else ''}:"]
    lines += ["  ".join(cell.ljust(w) if col == 0 else cell.rjust(w) for col, (cell, w) in enumerate(zip(row, widths)))
              for row in rows]
    return lines + paired_notes(greedy_pair)


def paired_notes(greedy_pair: bool) -> list[str]:
    """What the paired numbers are, under a table; the McNemar line where a pair is greedy."""
    notes = ["paired: per problem, B's score minus A's (greedy 0 or 1, sampled its share of correct samples); "
             "SE = sd / sqrt(n)",
             "95% CI = mean +- t(n - 1) SE: the noise of drawing n problems like these (and their samples), rough "
             "where few scores differ; not that of training or settings, nor corrected for comparing many runs"]
    if greedy_pair:
        notes.append("McNemar: exact two-sided sign test on the problems one greedy run alone solved")
    return notes
