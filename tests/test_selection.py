"""Choosing parents (lossearch.search.selection): fitness rank, novelty, overuse and parsimony."""

from __future__ import annotations

import random
from collections import Counter

import pytest

from lossearch.search.proposers.syntax import code_size
from lossearch.search.selection import PoolMember, SelectionWeights, choose_parents, parent_scores

ONLY_RANK = SelectionWeights(novelty_weight=0.0, usage_penalty=0.0, parsimony_weight=0.0)


def test_the_fitter_member_scores_higher_and_is_drawn_more():
    pool = [PoolMember(1, 0.1, None, 0), PoolMember(2, 0.5, None, 0), PoolMember(3, 0.9, None, 0)]
    assert parent_scores(pool, ONLY_RANK) == pytest.approx([0.0, 1.5, 3.0])
    drawn = Counter(choose_parents(pool, 1, rng, ONLY_RANK)[0].id for rng in map(random.Random, range(300)))
    assert drawn[3] > drawn[2] > drawn[1]
    pair = choose_parents(pool, 2, random.Random(0))
    assert len({member.id for member in pair}) == 2  # distinct parents


def test_overuse_costs_a_member_its_lead():
    pool = [PoolMember(1, 0.9, None, children=4), PoolMember(2, 0.5, None, children=0)]
    weights = SelectionWeights(novelty_weight=0.0, parsimony_weight=0.0)
    first, second = parent_scores(pool, weights)
    assert first == pytest.approx(3.0 - 0.5 * 4) and second == pytest.approx(0.0) and first > second


def test_size_counts_against_a_member_only_when_a_smaller_one_is_at_least_as_fit():
    weights = SelectionWeights(novelty_weight=0.0, usage_penalty=0.0, parsimony_weight=0.5)
    tied = [PoolMember(1, 0.5, None, 0, size=40), PoolMember(2, 0.5, None, 0, size=160)]
    small, large = parent_scores(tied, weights)
    assert small - large == pytest.approx(0.5 * 2)  # four times the size: two doublings
    fitter_and_larger = [PoolMember(1, 0.2, None, 0, size=40), PoolMember(2, 0.8, None, 0, size=160)]
    assert parent_scores(fitter_and_larger, weights) == parent_scores(fitter_and_larger, ONLY_RANK)
    with pytest.raises(ValueError):
        SelectionWeights(parsimony_weight=-1.0)


def test_code_size_counts_code_not_docstrings():
    code = "import torch\n\n\ndef loss(policy_chosen_logps, beta: float = 0.1):\n    return -policy_chosen_logps\n"
    documented = '"""A long docstring\n\nthat says a lot."""\n' + code.replace(
        "beta: float = 0.1):\n", 'beta: float = 0.1):\n    """And more."""\n')
    assert code_size(documented) == code_size(code) > 5
    assert code_size(code + "\n\ndef unused():\n    return 1\n") > code_size(code)


def test_a_campaigns_parents_come_from_its_islands_best_pool_size_candidates(tmp_path):
    from lossearch.fingerprint import PRINT_SIZE
    from lossearch.ranking import load_campaign_data, rank
    from lossearch.search.campaign import CampaignRunner
    from lossearch.search.config import CampaignConfig
    from lossearch.search.selection import POOL_SIZE
    from lossearch.store import Store

    with Store(f"sqlite:///{tmp_path / 'campaign.db'}") as store:
        campaign = store.create_campaign("pool", {"task": "sentiment"})
        for index in range(POOL_SIZE + 40):
            candidate = store.add_candidate(campaign.id, source=f"def loss(x):\n    return x * {index}\n",
                                            name=f"loss_{index}", proposer="mutation", generation=1,
                                            status="evaluated")
            fitness = index / 100  # the later, the fitter
            store.record_evaluation(candidate.id, tier="bandit", task="sentiment", seed=0, fitness=fitness,
                                    seconds=0.1, metrics={"fitness": fitness})
            shape = random.Random(index)  # a print of the right size, different for each candidate
            print_ = [shape.uniform(-1.0, 1.0) for _ in range(PRINT_SIZE)]
            store.update_candidate(candidate.id, tier="bandit", fitness=fitness, fingerprint=print_)
        runner = CampaignRunner(CampaignConfig(name="pool", finetune=False, confirm=False), store,
                                sandbox=None)  # type: ignore[arg-type]
        runner.campaign_id = campaign.id
        data = load_campaign_data(store, campaign)
        ranked = rank(data).candidates
        best = {candidate.id for candidate in ranked[:POOL_SIZE]}
        drawn = {parent.id for seed in range(60)
                 for parent in runner.choose_parents(data, ranked, 0, 1, random.Random(seed))}
        assert drawn <= best and len(drawn) > 10  # from the pool only, and from across it
