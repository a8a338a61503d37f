"""What a loss's fitness is: its reward at the task's KL budget, read off its own reward–KL curve.

One run of a loss reaches some KL from the reference and some reward. A loss that behaves like
DPO at a larger beta reaches less KL and less reward; read at whichever KL its run happened to
reach, it could look like a new, better loss. So fitness compares losses at a matched KL: each
loss is trained at several betas (the points of its curve on one seed), and its fitness on that
seed is the best reward a policy of its curve reaches within the KL budget, where the policy
may be a mixture of two of its runs (`mixture_reward_at_budget`): a run over the budget counts
only through such a mixture, never by its own penalized reward. Only where every run is over
the budget, so that the curve never reaches it, does the best run's reward less `kl_penalty`
per nat over the budget count, down to the task's floor. A task without a KL budget reads the
best run's own fitness (reward, or held-out preference accuracy where there is no reward).

Both tiers read fitness this way: the bandit over its grid of betas, the finetune tier over
its beta trials (seed by seed, then the mean over seeds), and the confirmation stage over the
betas the campaign tried. Torch-free.
"""

from __future__ import annotations

import math
from typing import Any, Mapping, Optional, Sequence


def penalized_reward(reward: float, kl: float, kl_budget: float, kl_penalty: float,
                     floor: float = -math.inf) -> float:
    """One run's reward less `kl_penalty` per nat of KL over the budget, never below `floor`."""
    return max(floor, reward - kl_penalty * max(0.0, kl - kl_budget))


def mixture_reward_at_budget(runs: Sequence[Mapping[str, Any]], kl_budget: float) -> float:
    """The best reward within the KL budget on the line between two trained policies (or -inf).

    For runs a (kl_a <= budget) and b (kl_b > budget), the mixture alpha pi_a + (1 - alpha) pi_b
    has reward alpha r_a + (1 - alpha) r_b exactly and, KL being convex, KL at most
    alpha kl_a + (1 - alpha) kl_b; the alpha that puts that bound on the budget gives a policy
    within budget whose reward is the linear interpolation. So this is a reward the trained
    policies really reach at the budget, and it hardly depends on where the betas land.
    """
    best = float("-inf")
    for a in (run for run in runs if run["kl"] <= kl_budget):
        best = max(best, a["reward"])
        for b in (run for run in runs if run["kl"] > kl_budget):
            alpha = (b["kl"] - kl_budget) / (b["kl"] - a["kl"])  # weight on the within-budget run
            best = max(best, alpha * a["reward"] + (1 - alpha) * b["reward"])
    return best


def fitness_at_budget(runs: Sequence[Mapping[str, Any]], kl_budget: Optional[float], kl_penalty: float,
                      floor: float = -math.inf) -> Optional[float]:
    """One seed's fitness from its runs at several betas (each with `fitness`, and `reward`, `kl`
    where the task has a reward): see the module's docstring. None when no run has a fitness."""
    scored = [run for run in runs if run.get("fitness") is not None]
    if not scored:
        return None
    best_run = max(float(run["fitness"]) for run in scored)
    if kl_budget is None:
        return best_run
    rewarded = [run for run in scored if run.get("reward") is not None and run.get("kl") is not None]
    if not rewarded:
        return best_run
    at_budget = mixture_reward_at_budget(rewarded, kl_budget)
    if at_budget > float("-inf"):
        return max(floor, at_budget)
    return max(penalized_reward(run["reward"], run["kl"], kl_budget, kl_penalty, floor) for run in rewarded)


def curve_by_seed(runs: Sequence[Mapping[str, Any]]) -> dict[int, list[Mapping[str, Any]]]:
    """Runs grouped by their seed, in the order given (each group is one seed's reward–KL curve)."""
    groups: dict[int, list[Mapping[str, Any]]] = {}
    for run in runs:
        groups.setdefault(int(run["seed"]), []).append(run)
    return groups
