"""Fitness at a matched KL (lossearch.evaluation.fitness), on fixed numbers worked by hand."""

from __future__ import annotations

import pytest

from lossearch.evaluation.fitness import curve_by_seed, fitness_at_budget, mixture_reward_at_budget, penalized_reward


def run(kl, reward, seed=0, floor=-1.0):
    return {"kl": kl, "reward": reward, "seed": seed, "fitness": penalized_reward(reward, kl, 0.5, 0.5, floor)}


def test_the_mixture_reads_the_reward_between_two_runs_at_the_budget():
    runs = [{"kl": 0.2, "reward": 0.3}, {"kl": 1.0, "reward": 0.7}, {"kl": 0.1, "reward": 0.1}]
    # the mixture 0.625 * run0 + 0.375 * run1 has KL <= 0.5 by convexity
    assert mixture_reward_at_budget(runs, 0.5) == pytest.approx(0.625 * 0.3 + 0.375 * 0.7)
    assert mixture_reward_at_budget(runs, 2.0) == 0.7
    assert mixture_reward_at_budget(runs, 0.05) == float("-inf")  # every run over budget


def test_a_loss_that_is_dpo_at_another_beta_reads_the_same_at_the_budget():
    # one curve (reward = KL over [0, 1]), sampled at different betas: one loss's runs land at KL 0.2
    # and 0.8, the other's at 0.4 and 1.0; at the budget 0.5 both read 0.5, where their single
    # runs' penalized rewards (0.8 - 0.15 = 0.65 and 0.4) would have ranked them apart
    one = [run(0.2, 0.2), run(0.8, 0.8)]
    other = [run(0.4, 0.4), run(1.0, 1.0)]
    assert fitness_at_budget(one, 0.5, 0.5, -1.0) == pytest.approx(0.5)
    assert fitness_at_budget(other, 0.5, 0.5, -1.0) == pytest.approx(0.5)
    assert run(0.8, 0.8)["fitness"] == pytest.approx(0.65) and run(0.4, 0.4)["fitness"] == pytest.approx(0.4)


def test_runs_all_over_the_budget_read_the_best_penalized_reward_down_to_the_floor():
    assert fitness_at_budget([run(1.5, 0.9), run(3.0, 1.0)], 0.5, 0.5, -1.0) == pytest.approx(0.4)
    assert fitness_at_budget([run(9.0, 0.2), run(12.0, 0.1)], 0.5, 0.5, -1.0) == -1.0
    assert fitness_at_budget([run(0.1, 0.3), run(0.3, 0.2)], 0.5, 0.5, -1.0) == pytest.approx(0.3)  # all within


def test_a_task_without_a_budget_or_reward_reads_the_best_run():
    assert fitness_at_budget([{"fitness": 0.6, "reward": None, "kl": 0.1}, {"fitness": 0.7}], 0.5, 0.5) == 0.7
    assert fitness_at_budget([run(0.2, 0.2), run(3.0, 0.9)], None, 0.5) == run(0.2, 0.2)["fitness"]
    assert fitness_at_budget([{"fitness": None}], 0.5, 0.5) is None


def test_runs_group_into_one_curve_per_seed():
    runs = [run(0.1, 0.1, seed=3), run(0.2, 0.2, seed=4), run(0.3, 0.3, seed=3)]
    assert curve_by_seed(runs) == {3: [runs[0], runs[2]], 4: [runs[1]]}
