"""The paired statistics of lossearch.evaluation.comparison, on fixed numbers, against scipy and by hand."""

from __future__ import annotations

import math

import pytest
from scipy import stats

from lossearch.evaluation.comparison import compare_paired, holm, verdict

CANDIDATE = [0.50, 0.60, 0.55, 0.52, 0.58]
BASELINE = [0.40, 0.45, 0.50, 0.41, 0.47]


def test_well_behaved_seeds_get_the_paired_t_test_and_its_interval():
    result = compare_paired(CANDIDATE, BASELINE, collapsed=False)
    differences = [a - b for a, b in zip(CANDIDATE, BASELINE)]
    assert result.test == "paired t"
    assert result.difference == pytest.approx(sum(differences) / 5)
    assert result.p_better == pytest.approx(stats.ttest_rel(CANDIDATE, BASELINE, alternative="greater").pvalue)
    # by hand: mean ± t(0.975, n - 1) · s / sqrt(n)
    mean = sum(differences) / 5
    s = math.sqrt(sum((d - mean) ** 2 for d in differences) / 4)
    half = stats.t.ppf(0.975, 4) * s / math.sqrt(5)
    assert result.ci == pytest.approx((mean - half, mean + half))
    assert result.p_better < 0.01 < 0.99 < result.p_worse


def test_a_collapse_switches_to_the_signed_rank_test():
    collapsed = [0.50, 0.60, -1.00, 0.52, 0.58]  # seed 2 diverged to the floor
    result = compare_paired(collapsed, BASELINE, collapsed=True)
    assert result.test == "wilcoxon signed-rank"
    differences = [a - b for a, b in zip(collapsed, BASELINE)]
    assert result.p_better == pytest.approx(stats.wilcoxon(differences, alternative="greater").pvalue)
    # four of five seeds better by about 0.1 and one collapse: the ranks say 0.31, the mean says worse
    assert result.p_better == pytest.approx(5 / 32 * 2)
    assert result.difference < 0


def test_identical_runs_are_no_evidence():
    result = compare_paired(BASELINE, BASELINE, collapsed=False)
    assert (result.p_better, result.p_worse, result.difference) == (1.0, 1.0, 0.0)
    assert verdict(result.p_better, result.p_worse) == "no detectable difference"


def test_mismatched_runs_are_refused():
    with pytest.raises(ValueError):
        compare_paired([0.1, 0.2], [0.1], collapsed=False)


def test_holm_matches_its_definition():
    # m = 4: sorted 0.005, 0.01, 0.03, 0.04 -> x4, x3, x2, x1, then made non-decreasing
    assert holm([0.01, 0.04, 0.03, 0.005]) == pytest.approx([0.03, 0.06, 0.06, 0.02])
    assert holm([0.5, 0.9]) == pytest.approx([1.0, 1.0])  # capped at 1
    assert holm([0.02]) == [0.02] and holm([]) == []


def test_verdicts_follow_the_adjusted_p_values():
    assert verdict(0.01, 0.99) == "better"
    assert verdict(0.99, 0.01) == "worse"
    assert verdict(0.06, 0.94) == "no detectable difference"
