"""UCB1 over arms rewarded by improvement per cost: the LLM proposer's models, the mutation operators.

An arm's rate is its summed improvement over its summed cost plus `cost_floor` per outcome (so
free arms, local models and every operator, stay finite); rates are divided by the best arm's so
the exploration bonus keeps its scale whatever the fitness scale. Every arm is tried once before
any is tried twice.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Mapping


@dataclass
class ArmStats:
    selections: int = 0
    """Times the arm was chosen."""
    outcomes: int = 0
    """Of those, the ones whose result is known."""
    improvement: float = 0.0
    """Summed fitness gain over the parents (a loss counts as 0)."""
    cost: float = 0.0
    """Summed dollars."""


def rate(stats: ArmStats, cost_floor: float) -> float:
    return stats.improvement / (stats.cost + cost_floor * stats.outcomes) if stats.outcomes else 0.0


def ucb_choice(arms: Mapping[str, ArmStats], rng: random.Random, exploration: float = 1.0,
               cost_floor: float = 1e-4) -> str:
    """The arm to try next: the first untried one, else the best rate plus exploration bonus (ties by `rng`)."""
    untried = [arm for arm, stats in arms.items() if stats.selections == 0]
    if untried:
        return untried[0]
    total = sum(stats.selections for stats in arms.values())
    best = max(rate(stats, cost_floor) for stats in arms.values()) or 1.0
    scores = {arm: rate(stats, cost_floor) / best + exploration * math.sqrt(2 * math.log(total) / stats.selections)
              for arm, stats in arms.items()}
    top = max(scores.values())
    return rng.choice([arm for arm, score in scores.items() if score >= top - 1e-12])
