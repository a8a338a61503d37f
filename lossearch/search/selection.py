"""Choosing parents: fitness-weighted, with a bonus for novelty and a penalty for overuse.

Each candidate in an island's pool gets a score

    score = rank_weight · (its fitness rank, 0 worst .. 1 best)
          + novelty_weight · (mean fingerprint distance to the pool's best, 0..2)
          − usage_penalty · (number of children it already has)
          − parsimony_weight · log2(its code size / the smallest size among members at least as fit)

and parents are drawn from softmax(score / temperature). Ranks rather than raw
fitness keep the draw independent of the reward's scale; the novelty bonus
keeps the search from collapsing onto one loss; the usage penalty spreads
attention over the pool (the ShinkaEvolve-style balance of exploitation and
exploration). The parsimony term is genetic programming's answer to bloat: size counts
against a candidate only when a smaller one is at least as fit, so a long loss is chosen as a
parent as often as a short one only if it ranks above it.
"""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import Callable, Sequence

from scipy.stats import rankdata

from lossearch.fingerprint import fingerprint_distances

POOL_SIZE = 64
"""Parents come from the island's best POOL_SIZE ranked candidates (an archive, as in ShinkaEvolve and
MAP-Elites), not from all of them: the draw then means the same in a campaign of 200 candidates and one
of 100,000 (over a whole island the rank term would hand most of the draw to the many middling ones),
and a proposal's cost stops growing with the store (novelty distances over 10,000 fingerprints were
most of a proposal's 58 s at 10,000 candidates, benchmarks/store_scale.py)."""


@dataclass(frozen=True)
class SelectionWeights:
    """How the parent score trades fitness, novelty and overuse."""

    rank_weight: float = 3.0
    """Weight of the fitness rank (0 for the worst, 1 for the best in the pool)."""
    novelty_weight: float = 1.0
    """Weight of the mean fingerprint distance to the pool's top candidates."""
    usage_penalty: float = 0.5
    """Score lost per child a candidate already has."""
    parsimony_weight: float = 0.5
    """Score lost per doubling of code size over the smallest pool member at least as fit."""
    temperature: float = 1.0
    """Softmax temperature over the scores; lower is greedier."""
    novelty_reference: int = 3
    """How many of the pool's best a candidate's novelty is measured against."""

    def __post_init__(self) -> None:
        if self.temperature <= 0:
            raise ValueError("temperature must be positive")
        if min(self.rank_weight, self.novelty_weight, self.usage_penalty, self.parsimony_weight) < 0:
            raise ValueError("selection weights must not be negative")
        if self.novelty_reference < 1:
            raise ValueError("novelty_reference must be at least 1")


@dataclass(frozen=True)
class PoolMember:
    """What selection needs to know of a candidate."""

    id: int
    fitness: float
    fingerprint: Sequence[float] | None
    children: int
    size: int = 1
    """Code size (lossearch.search.proposers.syntax.code_size)."""


Distance = Callable[[PoolMember, Sequence[PoolMember]], list[float]]
"""The fingerprint distances from one member to several; the campaign passes one that remembers its answers."""


def member_distance(reference: PoolMember, members: Sequence[PoolMember]) -> list[float]:
    assert reference.fingerprint and all(m.fingerprint for m in members)  # novelty compares those with one only
    return fingerprint_distances(reference.fingerprint, [m.fingerprint or () for m in members])


def parent_scores(pool: Sequence[PoolMember], weights: SelectionWeights = SelectionWeights(),
                  distance: Distance = member_distance) -> list[float]:
    """The selection score of every pool member, in pool order."""
    if not pool:
        return []
    order = sorted(range(len(pool)), key=lambda index: pool[index].fitness)
    # equal fitness, equal rank (the mean of their places)
    rank = [(float(place) - 1) / max(1, len(pool) - 1) for place in rankdata([member.fitness for member in pool])]
    best = [pool[index] for index in reversed(order[-weights.novelty_reference:])]
    novelties = _novelties(pool, best, distance)
    scores = []
    for member, member_rank, novelty in zip(pool, rank, novelties):
        smallest = min(other.size for other in pool if other.fitness >= member.fitness)
        bloat = math.log2(max(1, member.size) / max(1, smallest))
        scores.append(weights.rank_weight * member_rank + weights.novelty_weight * novelty
                      - weights.usage_penalty * member.children - weights.parsimony_weight * bloat)
    return scores


def _novelties(pool: Sequence[PoolMember], best: Sequence[PoolMember], distance: Distance) -> list[float]:
    """Each member's mean fingerprint distance to the members of `best` other than itself; 0 without
    fingerprints. One batched `distance` call per member of `best`."""
    printed = [member for member in pool if member.fingerprint]
    sums = {member.id: 0.0 for member in printed}
    counts = {member.id: 0 for member in printed}
    for top in best:
        if not top.fingerprint:
            continue
        others = [member for member in printed if member.id != top.id]
        for member, value in zip(others, distance(top, others) if others else []):
            sums[member.id] += value
            counts[member.id] += 1
    return [sums[m.id] / counts[m.id] if counts.get(m.id) else 0.0 for m in pool]


def choose_parents(pool: Sequence[PoolMember], count: int, rng: random.Random,
                   weights: SelectionWeights = SelectionWeights(),
                   distance: Distance = member_distance) -> list[PoolMember]:
    """Draw `count` distinct parents (fewer if the pool is smaller) from softmax(score / T)."""
    remaining = list(pool)
    scores = parent_scores(remaining, weights, distance)
    chosen: list[PoolMember] = []
    while remaining and len(chosen) < count:
        top = max(scores)
        weights_now = [math.exp((score - top) / weights.temperature) for score in scores]
        index = rng.choices(range(len(remaining)), weights=weights_now)[0]
        chosen.append(remaining.pop(index))
        scores.pop(index)
    return chosen
