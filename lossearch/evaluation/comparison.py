"""Is a loss better than its baseline? Paired statistics over seeds, corrected for the number of leaders.

A candidate and its baseline are trained on the same seeds (the same data order and the same
evaluation prompts), so the statistic is the per-seed difference of fitness, candidate minus
baseline. What is reported for each pair:

- `difference`: the mean per-seed difference, with a 95% confidence interval from the paired t
  distribution (scipy.stats.t);
- `p_value`: one-sided, for "the candidate is better". Collapses dominate the noise: a run that
  diverges scores the task's floor, a difference of a whole reward unit that no other seed comes
  near. So when either loss collapsed on any of the seeds, the test is Wilcoxon's signed-rank
  test (scipy.stats.wilcoxon, exact for these sizes), which counts a collapse as one rank and not
  as its size (and when every seed moved by the same amount, where t is undefined); otherwise it
  is the paired t-test (scipy.stats.ttest_rel), which has more power on a handful of
  well-behaved seeds. `test` says which was used.
- `p_adjusted`: Holm's step-down correction over the comparisons of one family (the K leaders
  against one baseline on one task), so that declaring any of them better keeps the
  family-wise error rate at `ALPHA`.
- `verdict`: `better` (adjusted p < ALPHA), `worse` (the same test in the other direction,
  adjusted the same way), or `no detectable difference`.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
from scipy import stats

ALPHA = 0.05
"""Family-wise error rate of the verdicts."""
VERDICTS = ("better", "worse", "no detectable difference")


@dataclass(frozen=True)
class PairedResult:
    """One candidate against one baseline on one task, before the family's correction."""

    differences: tuple[float, ...]
    """Candidate minus baseline fitness, per seed, in the seeds' order."""
    difference: float
    """Their mean."""
    ci: tuple[float, float]
    """95% confidence interval of the mean difference (paired t); (nan, nan) below two seeds."""
    p_better: float
    """One-sided p-value of "the candidate is better"."""
    p_worse: float
    """One-sided p-value of "the candidate is worse"."""
    test: str
    """`paired t` or `wilcoxon signed-rank` (see the module docstring)."""


def compare_paired(candidate: Sequence[float], baseline: Sequence[float], *, collapsed: bool) -> PairedResult:
    """Paired comparison of per-seed fitnesses (the same seeds, in the same order, on both sides).

    `collapsed` says whether either loss collapsed on any of these seeds; it picks the test.
    """
    if len(candidate) != len(baseline) or not candidate:
        raise ValueError("a paired comparison needs the same, non-zero number of runs on both sides")
    differences = np.asarray(candidate, dtype=float) - np.asarray(baseline, dtype=float)
    mean = float(differences.mean())
    ci = mean_interval(differences)
    if np.allclose(differences, 0.0):  # identical runs: no evidence either way
        return PairedResult(tuple(map(float, differences)), mean, ci, 1.0, 1.0, "identical")
    if collapsed or len(differences) < 2 or float(differences.std(ddof=1)) == 0.0:
        # ranks: a collapse counts as one rank, not its size (and t is undefined without a spread)
        better = stats.wilcoxon(differences, alternative="greater", zero_method="zsplit").pvalue
        worse = stats.wilcoxon(differences, alternative="less", zero_method="zsplit").pvalue
        test = "wilcoxon signed-rank"
    else:
        better = stats.ttest_rel(candidate, baseline, alternative="greater").pvalue
        worse = stats.ttest_rel(candidate, baseline, alternative="less").pvalue
        test = "paired t"
    return PairedResult(tuple(map(float, differences)), mean, ci, float(better), float(worse), test)


def mean_interval(differences: np.ndarray, confidence: float = 0.95) -> tuple[float, float]:
    """The paired-t confidence interval of the mean difference; (nan, nan) below two values."""
    if len(differences) < 2:
        return (math.nan, math.nan)
    spread = float(stats.sem(differences))
    mean = float(differences.mean())
    if spread == 0.0:
        return (mean, mean)
    low, high = stats.t.interval(confidence, len(differences) - 1, loc=mean, scale=spread)
    return (float(low), float(high))


def holm(p_values: Sequence[float]) -> list[float]:
    """Holm's step-down adjusted p-values (Holm, 1979), in the order given.

    Sorted ascending, the i-th smallest of m is multiplied by (m - i + 1); adjusted values are
    made non-decreasing along that order and capped at 1.
    """
    order = sorted(range(len(p_values)), key=lambda index: p_values[index])
    adjusted = [1.0] * len(p_values)
    running = 0.0
    for position, index in enumerate(order):
        running = max(running, min(1.0, (len(p_values) - position) * p_values[index]))
        adjusted[index] = running
    return adjusted


def verdict(p_better_adjusted: float, p_worse_adjusted: float, alpha: float = ALPHA) -> str:
    """`better`, `worse` or `no detectable difference`, from a family's adjusted p-values."""
    if p_better_adjusted < alpha:
        return "better"
    if p_worse_adjusted < alpha:
        return "worse"
    return "no detectable difference"
