"""One ranking rule (lossearch.ranking), and every surface that orders candidates showing its order.

The campaign built here is one where the three rules the project used to have disagree:
ranking by the stored best fitness alone puts a bandit-only candidate first; ranking by
(stored tier, stored best fitness) puts a finetuned candidate whose best seed was lucky
ahead of one whose mean over seeds is higher; the rule ranks finetuned candidates ahead by
their mean over seeds.
"""

from __future__ import annotations

import json
import random
import re
from collections import Counter
from dataclasses import replace

import pytest

from lossearch.cli import main
from lossearch.ranking import Score, load_campaign_data, lower_bound, mean_metrics, pooled_spread, rank, score_of
from lossearch.reporting.export import export_top
from lossearch.reporting.report import report_html
from lossearch.sandbox.local import Sandbox
from lossearch.search.campaign import CampaignRunner, run_campaign
from lossearch.search.config import CampaignConfig
from lossearch.search.proposers import ParentView, Proposal, ProposalContext
from lossearch.store import Evaluation, Store
from lossearch.store.locate import open_campaign


def evaluation(task: str, tier: str, seed: int, fitness: float | None, **metrics: object) -> Evaluation:
    from datetime import datetime

    return Evaluation(0, 1, tier, task, seed, dict(metrics), fitness, 1.0, datetime(2026, 1, 1))


def test_a_score_is_the_mean_over_seeds_at_the_highest_tier_with_its_spread_and_metrics():
    evaluations = [evaluation("sentiment", "bandit", 0, 0.9, reward=1.0),
                   evaluation("sentiment", "finetune", 0, 0.6, reward=0.7, kl=0.2, note="text"),
                   evaluation("sentiment", "finetune", 1, 0.8, reward=0.9, kl=float("nan")),
                   evaluation("sort", "finetune", 0, 0.1)]
    score = score_of(evaluations, "sentiment")
    assert (score.tier, score.seeds) == ("finetune", 2)
    assert score.fitness == pytest.approx(0.7) and score.spread == pytest.approx(0.1414, abs=1e-3)
    assert score.metrics == pytest.approx({"reward": 0.8, "kl": 0.2})  # text and non-finite values are left out
    assert score_of(evaluations, "sentiment", "bandit").fitness == pytest.approx(0.9)
    assert score_of(evaluations, "sort").fitness == pytest.approx(0.1)
    assert score_of(evaluations, "length") is None
    assert mean_metrics([]) == {}


def test_one_finetune_evaluation_takes_its_spread_over_training_seeds():
    score = score_of([evaluation("sentiment", "finetune", 0, 0.5, fitness_std=0.03)], "sentiment")
    assert score.spread == pytest.approx(0.03)


def test_the_bound_puts_a_lucky_single_seed_below_a_steady_three_seed_score():
    lucky = Score("sentiment", "finetune", 0.60, None, 1)
    steady = Score("sentiment", "finetune", 0.58, 0.01, 3)
    raced = Score("sentiment", "finetune", 0.40, 0.12, 2)  # with steady and collapsing: the measured noise
    collapsing = Score("sentiment", "finetune", -0.2, 0.84, 3)  # a loss at the floor on one seed of three
    pooled = pooled_spread([lucky, steady, raced, collapsing])
    assert pooled == {("sentiment", "finetune"): pytest.approx(0.12)}  # the median: the collapse lends nothing
    sigma = pooled[("sentiment", "finetune")]
    assert lower_bound(lucky, pooled) == pytest.approx(0.60 - sigma)  # one seed: the pooled spread
    assert lower_bound(steady, pooled) == pytest.approx(0.58 - 0.01 / 3 ** 0.5)  # three: its own
    assert lower_bound(raced, pooled) == pytest.approx(0.40 - sigma / 2 ** 0.5)
    assert lower_bound(steady, pooled) > lower_bound(lucky, pooled)
    # nothing measured on several seeds: one seed's bound is its fitness, less its own fitness_std if any
    assert lower_bound(lucky, {}) == 0.60
    assert lower_bound(Score("sentiment", "finetune", 0.5, 0.03, 1), {}) == pytest.approx(0.47)


@pytest.fixture(scope="module")
def disputed(tmp_path_factory):
    """A real campaign of the seed library (bandit tier), then finetune evaluations recorded by hand
    so that the old rules disagree: the folder holding runs/disputed/campaign.db, and the expected
    top three ids."""
    home = tmp_path_factory.mktemp("disputed")
    run_campaign(CampaignConfig(name="disputed", proposer="none", finetune=False), runs_dir=home / "runs")
    with Store.for_campaign_dir(home / "runs" / "disputed") as store:
        campaign = store.get_campaign("disputed")
        by_name = {c.name: c for c in store.candidates(campaign.id)}
        steady, lucky, bandit_star = by_name["ipo"], by_name["hinge"], by_name["sft"]
        for candidate, fitnesses in ((steady, [0.62, 0.58]), (lucky, [0.30, 0.75])):
            for seed, fitness in enumerate(fitnesses):
                store.record_evaluation(candidate.id, tier="finetune", task="sentiment", seed=seed,
                                        metrics={"reward": fitness, "kl": 1.0}, fitness=fitness, seconds=1.0)
        # the stored best fitness, as the loop once kept it: lucky's best seed, steady's mean
        store.update_candidate(steady.id, tier="finetune", fitness=0.60)
        store.update_candidate(lucky.id, tier="finetune", fitness=0.75)
        store.update_candidate(bandit_star.id, fitness=5.0)  # a bandit-tier number, on its own scale
        data = load_campaign_data(store, campaign)
    expected = rank(data).candidates[:3]
    assert [c.id for c in expected[:2]] == [steady.id, lucky.id]
    assert expected[2].tier == "bandit"
    by_fitness = sorted(data.candidates.values(), key=lambda c: -(c.fitness or -1e9))
    assert by_fitness[0].id == bandit_star.id  # the old `run` closing table's rule
    by_stored_tier = sorted((c for c in data.candidates.values() if c.fitness is not None),
                            key=lambda c: (c.tier == "finetune", c.fitness), reverse=True)
    assert by_stored_tier[0].id == lucky.id  # the old parent selection's rule
    return home, [c.id for c in expected]


def table_ids(text: str) -> list[int]:
    """The id column of a rich table printed by the CLI, in order (rank is the first column, id the second)."""
    ids = []
    for line in text.splitlines():
        cells = [cell.strip() for cell in re.split(r"[│┃|]", line)]
        numbers = [cell for cell in cells if cell]
        if len(numbers) >= 2 and numbers[0].isdigit() and numbers[1].isdigit():
            ids.append(int(numbers[1]))
    return ids


def test_every_surface_shows_the_rankings_order(disputed, monkeypatch, capfd, tmp_path):
    home, expected = disputed
    monkeypatch.chdir(home)
    monkeypatch.setenv("COLUMNS", "200")

    assert main(["leaderboard", "--run", "disputed", "--format", "json"]) == 0
    assert [row["id"] for row in json.loads(capfd.readouterr().out)][:3] == expected

    assert main(["run", "--name", "disputed"]) == 0  # resumes a finished campaign: nothing to do, then its table
    assert table_ids(capfd.readouterr().out)[:3] == expected

    with open_campaign("disputed", runs_dir=home / "runs") as handle:
        html = report_html(load_campaign_data(handle.store, handle.campaign))
        assert [int(i) for i in re.findall(r'<td class="n">\d+</td><td class="n">(\d+)</td>', html)][:3] == expected
        modules = export_top(handle, 3, tmp_path / "exported")
        assert [module.candidate_id for module in modules] == expected
        assert [module.path.name[:6] for module in modules] == ["rank01", "rank02", "rank03"]

    assert main(["campaigns", "--json"]) == 0
    assert json.loads(capfd.readouterr().out)[0]["leader"].startswith(f"#{expected[0]} ")


class RecordingProposer:
    """Proposes nothing and remembers what it was shown."""

    def __init__(self) -> None:
        self.shown: list[list[int]] = []
        self.parents: list[list[int]] = []

    def propose(self, parents: list[ParentView], context: ProposalContext, rng) -> list[Proposal]:
        self.shown.append([view.id for view in context.top])
        self.parents.append([view.id for view in parents])
        return []


def test_the_campaign_shows_its_proposer_the_rankings_order(disputed):
    home, expected = disputed
    proposer = RecordingProposer()
    with Store.for_campaign_dir(home / "runs" / "disputed") as store:
        data = load_campaign_data(store, store.get_campaign("disputed"))
        config = replace(CampaignConfig.from_dict(data.campaign.config), proposer="mutation", generations=1,
                         population=1, islands=1)
        with Sandbox() as sandbox:
            CampaignRunner(config, store, sandbox, proposer).run()
    assert proposer.shown and all(shown[:3] == expected for shown in proposer.shown)
    ranked_ids = {candidate.id for candidate in rank(data).candidates}
    assert proposer.parents and all(set(parents) <= ranked_ids for parents in proposer.parents)


def test_promotion_ranks_a_generation_by_its_bandit_scores_and_draws_one_it_passed_over(disputed):
    home, _ = disputed
    with Store.for_campaign_dir(home / "runs" / "disputed") as store:
        data = load_campaign_data(store, store.get_campaign("disputed"))
        config = CampaignConfig.from_dict(data.campaign.config)
        share = 3 / sum(1 for c in data.candidates.values() if c.generation == 0 and c.status == "evaluated")
        runner = CampaignRunner(replace(config, promote_share=share), store, sandbox=None)  # type: ignore[arg-type]
        runner.campaign_id = data.campaign.id
        promoted, again = runner.promoted(0), runner.promoted(0)
    by_bandit = rank(data, tier="bandit").candidates
    assert [c for c, reason in promoted if reason == "rule"] == by_bandit[:3]
    assert any(c.name == "dpo" for c, _ in promoted)  # generation 0 always finetunes the baseline
    (drawn,) = [c for c, reason in promoted if reason == "random"]
    assert drawn not in by_bandit[:3] and drawn.name != "dpo"  # one the rule passed over
    assert again == promoted  # the same draw on a resume


def test_promotion_draws_half_its_share_at_random_once_random_picks_do_as_well_as_the_rule(disputed):
    from datetime import datetime

    home, _ = disputed
    with Store.for_campaign_dir(home / "runs" / "disputed") as store:
        data = load_campaign_data(store, store.get_campaign("disputed"))
        runner = CampaignRunner(replace(CampaignConfig.from_dict(data.campaign.config), promote_share=0.25),
                                store, sandbox=None)  # type: ignore[arg-type]
    seeds = sorted(data.candidates.values(), key=lambda c: c.id)
    earlier, later = seeds[:8], seeds[8:24]  # generation 0 finetuned; generation 1 (16 survivors) to promote
    candidates = {c.id: replace(c, generation=1 if c in later else 0) for c in seeds}

    def with_finetunes(random_beat_rule: bool):
        evaluations = {i: list(e) for i, e in data.evaluations.items()}
        for index, candidate in enumerate(earlier):
            reason = "random" if index % 2 else "rule"  # 4 rule picks, 4 random picks
            fitness = (0.5 if random_beat_rule else 0.1) if reason == "random" else 0.3
            evaluations[candidate.id].append(Evaluation(0, candidate.id, "finetune", "sentiment", 0,
                                                        {"promotion": reason}, fitness, 1.0, datetime(2026, 1, 1)))
        return replace(data, candidates=candidates, evaluations=evaluations)

    for random_beat_rule, (rule, drawn) in ((False, (4, 1)), (True, (2, 3))):
        snapshot = with_finetunes(random_beat_rule)
        runner.snapshot = lambda snapshot=snapshot: snapshot  # type: ignore[method-assign]
        promoted = runner.promoted(1)
        by_bandit = rank(snapshot, tier="bandit", among=[c.id for c in later]).candidates
        assert [c for c, reason in promoted if reason == "rule"] == by_bandit[:rule]
        picks = [c for c, reason in promoted if reason == "random"]
        assert len(picks) == drawn and not set(c.id for c in picks) & set(c.id for c in by_bandit[:rule])
        assert runner.promoted(1) == promoted  # the same draws on a resume
    from lossearch.ranking import tier_agreement
    assert "no better than chance" in tier_agreement(with_finetunes(True)).describe()
    assert not tier_agreement(with_finetunes(True), before_generation=0).rule_no_better_than_chance


def test_a_stepping_stone_stands_at_its_twins_place_among_the_parents(disputed):
    from lossearch.search.campaign import TWIN_PREFIX, twin_of
    from lossearch.search.proposers.syntax import code_size

    home, _ = disputed
    with Store.for_campaign_dir(home / "runs" / "disputed") as store:
        data = load_campaign_data(store, store.get_campaign("disputed"))
        runner = CampaignRunner(CampaignConfig.from_dict(data.campaign.config), store, sandbox=None)  # type: ignore[arg-type]
    ranked = rank(data).candidates
    leader = ranked[0]
    stone = replace(next(c for c in data.candidates.values() if c.name == "sft"), id=10_000, status="duplicate",
                    island=leader.island, failure_message=f"{TWIN_PREFIX}{leader.id} {leader.name} (fingerprint "
                                                          "distance 0.003)", generation=1)
    assert twin_of(stone) == leader.id
    with_stone = replace(data, candidates={**data.candidates, stone.id: stone})
    drawn = Counter(parent.id for seed in range(300)
                    for parent in runner.choose_parents(with_stone, ranked, leader.island, 1, random.Random(seed)))
    assert drawn[stone.id] > 0  # it can lead somewhere
    # at the leader's place it is drawn like a leader: more than most of the pool (whether more than the
    # leader itself turns on its novelty against the pool's best too, not only on its smaller code)
    assert drawn[stone.id] > sorted(drawn.values())[len(drawn) * 3 // 4]
    assert code_size(stone.source) < code_size(leader.source)
    plain = Counter(parent.id for seed in range(20)
                    for parent in runner.choose_parents(data, ranked, leader.island, 1, random.Random(seed)))
    assert stone.id not in plain


def test_tier_agreement_compares_the_two_rankings():
    from datetime import datetime

    from lossearch.ranking import CampaignData, tier_agreement
    from lossearch.store import Campaign

    def evaluation(candidate: int, tier: str, fitness: float, promotion: str | None = None) -> Evaluation:
        metrics = {"promotion": promotion} if promotion else {}
        return Evaluation(0, candidate, tier, "sentiment", 0, metrics, fitness, 1.0, datetime(2026, 1, 1))

    campaign = Campaign(1, "t", {"task": "sentiment"}, "finished", None, datetime(2026, 1, 1), datetime(2026, 1, 1))
    bandit = {1: 0.9, 2: 0.8, 3: 0.7, 4: 0.1}
    finetune = {1: 0.5, 2: 0.4, 3: 0.3, 4: 0.45}  # 4 was passed over by the rule and does better than most
    evaluations = {i: [evaluation(i, "bandit", bandit[i]),
                       evaluation(i, "finetune", finetune[i], "random" if i == 4 else "rule")] for i in bandit}
    agreement = tier_agreement(CampaignData(campaign, {}, {}, {}, evaluations))
    assert agreement.pairs == 4 and agreement.random_picks == 1 and agreement.random_picks_above_rule == 1
    assert agreement.kendall_tau == pytest.approx(1 / 3)  # 4 of 6 pairs concordant, 2 (those with 4) not
    assert "Kendall tau" in agreement.describe()


def test_a_child_taken_into_a_snapshot_leaves_it_as_a_fresh_load_would_be(tmp_path):
    """A generation's proposals share one snapshot (CampaignRunner.propose_generation): each stored child
    joins it through add_pending, and what the next proposal reads of it (children counts, the operators'
    record, failures, stepping stones) must be what reloading the store would give."""
    from lossearch.ranking import operator_stats
    from lossearch.store import LineageEdge

    with Store(f"sqlite:///{tmp_path / 'campaign.db'}") as store:
        campaign = store.create_campaign("pending", {"task": "sentiment"})
        seed = store.add_candidate(campaign.id, source="def loss(x):\n    return x\n", name="seed", proposer="seed",
                                   generation=0, status="evaluated")
        store.record_evaluation(seed.id, tier="bandit", task="sentiment", seed=0, fitness=0.2, seconds=0.1,
                                metrics={"fitness": 0.2})
        scored = store.add_candidate(campaign.id, source="def loss(x):\n    return 2 * x\n", name="scored",
                                     proposer="mutation", model="blend", generation=1, status="evaluated",
                                     parents=[(seed.id, "mutation")])
        store.record_evaluation(scored.id, tier="bandit", task="sentiment", seed=0, fitness=0.3, seconds=0.1,
                                metrics={"fitness": 0.3})
        failed = store.add_candidate(campaign.id, source="def loss(x):\n    return 3 * x\n", name="failed",
                                     proposer="mutation", model="swap_function", generation=1,
                                     parents=[(seed.id, "mutation")])
        store.update_candidate(failed.id, status="failed", failure_kind="nan", failure_message="nan")
        runner = CampaignRunner(CampaignConfig(name="pending", finetune=False, confirm=False), store,
                                sandbox=None)  # type: ignore[arg-type]
        runner.campaign_id = campaign.id
        shared = load_campaign_data(store, campaign)
        before = (operator_stats(shared), runner.recent_failures(shared))  # memoized, as by a first proposal
        assert before[0]["blend"].children == 1 and [f.name for f in before[1]] == ["failed"]
        for model in ("blend", "cross_terms"):
            child = store.add_candidate(campaign.id, source=f"def loss(x):\n    return x + {len(model)}\n",
                                        name=f"child_{model}", proposer="mutation", model=model, generation=2,
                                        parents=[(scored.id, "mutation")])
            shared.add_pending(child, [LineageEdge(child.id, scored.id, "mutation")])
        fresh = load_campaign_data(store, campaign)
        assert operator_stats(shared) == operator_stats(fresh)
        assert operator_stats(shared)["cross_terms"].children == 1 and operator_stats(shared)["blend"].children == 2
        assert runner.recent_failures(shared) == runner.recent_failures(fresh)
        assert {i: len(edges) for i, edges in shared.children.items()} == \
            {i: len(edges) for i, edges in fresh.children.items()}
        assert set(shared.candidates) == set(fresh.candidates)
        assert [c.id for c in rank(shared).candidates] == [c.id for c in rank(fresh).candidates]


def random_store(url: str, seed: int) -> tuple[Store, int]:
    """A store whose ranking is hard to get right: candidates of every status, bandit scores for most,
    finetune scores for some on one to four seeds (with and without `fitness_std`), evaluations with no
    fitness, the confirmation stage's tier, another task, and tied fitnesses that only ids order."""
    draw = random.Random(seed)
    store = Store(url)
    campaign = store.create_campaign("r", {"task": "sentiment"})
    statuses = ["evaluated"] * 6 + ["failed", "duplicate", "rejected", "pending"]
    for index in range(120):
        candidate = store.add_candidate(campaign.id, source=f"# {index}", name="dpo" if index == 0 else f"c{index}",
                                        proposer="seed" if index < 10 else "mutation", generation=int(index >= 10),
                                        status="evaluated" if index == 0 else draw.choice(statuses))
        tied = draw.random() < 0.2
        if draw.random() < 0.9:
            fitness = 0.25 if tied else round(draw.gauss(0.3, 0.05), 3)
            store.record_evaluation(candidate.id, tier="bandit", task="sentiment", seed=0, seconds=1.0,
                                    fitness=fitness if draw.random() < 0.95 else None, metrics={"reward": fitness})
        if index == 0 or draw.random() < 0.4:  # DPO always: the page's deltas are read from its score
            for run in range(draw.choice([1, 1, 2, 3, 4])):
                fitness = 0.4 if tied else draw.choice([round(draw.gauss(0.35, 0.08), 3), -1.0])
                metrics = {"reward": fitness, "kl": 1.0} | ({"fitness_std": 0.05} if draw.random() < 0.5 else {})
                store.record_evaluation(candidate.id, tier="finetune", task="sentiment", seed=run, seconds=1.0,
                                        metrics=metrics, fitness=fitness)
        if draw.random() < 0.1:
            store.record_evaluation(candidate.id, tier="confirm", task="sentiment", seed=900, seconds=1.0,
                                    metrics={}, fitness=9.0)  # judged apart: never part of a score
        if draw.random() < 0.3:
            store.record_evaluation(candidate.id, tier="bandit", task="sort", seed=0, seconds=1.0,
                                    metrics={}, fitness=draw.random())
    return store, campaign.id


def test_the_first_page_through_the_stores_kept_scores_is_the_rankings_first_page(store_url):
    from lossearch.ranking import rank_top
    from lossearch.reporting.results import build_leaderboard, leaderboard
    from lossearch.store.locate import CampaignHandle

    for seed in range(3):
        url = store_url if seed == 0 else store_url.replace("campaign.db", f"campaign-{seed}.db")
        if url == store_url and seed:
            continue  # PostgreSQL: one database, one store
        store, campaign_id = random_store(url, seed)
        with store:
            campaign = store.get_campaign_by_id(campaign_id)
            full = load_campaign_data(store, campaign)
            for task in ("sentiment", "sort"):
                everyone = rank(full, task)
                assert len(everyone.ranked) > 20 if task == "sentiment" else everyone.ranked
                for limit in (1, 10, 500):
                    data, top, total = rank_top(store, campaign, limit, task)
                    assert total == len(everyone.ranked)
                    assert top.ranked == everyone.ranked[:limit]  # candidates, scores and bounds, in order
            handle = CampaignHandle(store, campaign, url)
            board = leaderboard(handle, top=15)
            assert board.to_dicts() == build_leaderboard(full, top=15).to_dicts()
            assert board.rows[0].dpo_delta is not None  # the baseline's score read beside the page


def test_a_candidates_place_counted_in_the_store_is_its_rank(store_url):
    from lossearch.ranking import place_of

    store, campaign_id = random_store(store_url, 3)
    with store:
        campaign = store.get_campaign_by_id(campaign_id)
        data = load_campaign_data(store, campaign)
        for task in ("sentiment", "sort"):
            places = {c.id: place for place, c in enumerate(rank(data, task).candidates, 1)}
            assert len(places) > 5
            for candidate_id in data.candidates:
                assert place_of(store, campaign, candidate_id, task) == places.get(candidate_id), candidate_id


def test_a_version_4_store_gains_its_kept_scores_from_the_evaluations_it_holds(store_url):
    import sqlalchemy as sa

    from lossearch.ranking import rank_top

    store, campaign_id = random_store(store_url, 7)
    with store:
        campaign = store.get_campaign_by_id(campaign_id)
        expected = rank_top(store, campaign, 50)[1].ranked
    engine = sa.create_engine(store_url)
    with engine.begin() as connection:
        kept = connection.execute(sa.text("SELECT * FROM scores ORDER BY candidate_id, task, tier")).all()
        connection.execute(sa.text("DROP TABLE scores"))
        connection.execute(sa.text("DROP TABLE print_index"))  # version 6 came later
        connection.execute(sa.text("DROP INDEX ix_candidates_campaign_name"))
        connection.execute(sa.text("UPDATE lossearch_schema_version SET version = 4"))
    engine.dispose()
    with Store(store_url) as upgraded:
        assert upgraded.schema_version() == 6
        assert rank_top(upgraded, campaign, 50)[1].ranked == expected
    engine = sa.create_engine(store_url)
    with engine.connect() as connection:
        assert connection.execute(sa.text("SELECT * FROM scores ORDER BY candidate_id, task, tier")).all() == kept
    engine.dispose()
