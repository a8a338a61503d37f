"""The duplicate check's print index: it may only rule out prints that are not the same loss.

The index keeps each stored candidate's unit print at its default beta (float32, 1.9 KB) and bounds the
fingerprint distance from below with it (lossearch.fingerprint.twin_bounds); only the prints it cannot
rule out have their whole fingerprints read. The bound is checked here against the exact distance on
real prints: the seed library's, and DPO written at rescaled betas (whose exact distance to DPO is
near 0 only through the rescaling)."""

from __future__ import annotations

import pytest

from lossearch.evaluation.cascade import evaluate
from lossearch.fingerprint import (
    SAME_LOSS_DISTANCE,
    fingerprint_distance,
    fingerprint_distances,
    index_print,
    possible_twins,
    twin_bounds,
)
from lossearch.search.campaign import CampaignRunner
from lossearch.search.config import CampaignConfig
from lossearch.search.seeds import seed_path, seed_paths
from lossearch.store import Store

SCALED = (0.7, 1.5, 2.5)


def fingerprint_of(sandbox, source: str) -> list[float]:
    evaluation = evaluate(source, "x", "sanity", sandbox=sandbox)
    assert evaluation.ok, evaluation.error
    return evaluation.metrics["sanity"]["fingerprint"]


def scaled_dpo(factor: float) -> str:
    return seed_path("dpo").read_text().replace("beta * margin", f"{factor} * beta * margin")


@pytest.fixture(scope="module")
def prints(sandbox) -> dict[str, list[float]]:
    """The seeds' prints, DPO at three rescaled betas, and a zero print (which the sanity tier turns away as
    `no_grad`, so a store only holds one from elsewhere: the functions take it all the same)."""
    found = {path.stem: fingerprint_of(sandbox, path.read_text()) for path in seed_paths()}
    found.update({f"dpo_x{factor}": fingerprint_of(sandbox, scaled_dpo(factor)) for factor in SCALED})
    found["zero"] = [0.0] * len(found["dpo"])
    return found


def test_the_bound_never_exceeds_the_exact_distance(prints):
    names = list(prints)
    indexed = [index_print(prints[name]) for name in names]
    close = 0
    for first in names:
        bounds = twin_bounds(prints[first], indexed).tolist()
        exacts = fingerprint_distances(prints[first], [prints[second] for second in names])
        for second, bound, exact in zip(names, bounds, exacts):
            assert bound <= exact + 1e-4, (first, second, bound, exact)
            close += exact < SAME_LOSS_DISTANCE
    assert close > len(names) + 2 * len(SCALED)  # the rescaled DPOs are twins of DPO (and of each other)


def test_the_index_rules_most_different_losses_out_and_keeps_every_twin(prints):
    names = list(prints)
    indexed = [index_print(prints[name]) for name in names]
    kept = possible_twins(prints["dpo"], indexed)
    twins = {name for name in names if fingerprint_distance(prints["dpo"], prints[name]) < SAME_LOSS_DISTANCE}
    assert twins >= {"dpo", *(f"dpo_x{factor}" for factor in SCALED)}
    assert twins <= {name for name, keep in zip(names, kept) if keep}
    assert sum(kept) < len(names) / 2  # what it is for: most prints are never decoded
    assert possible_twins(prints["zero"], indexed) == [name == "zero" for name in names]
    assert index_print([]) == b"" and len(index_print(prints["dpo"])) == 4 * 484


def test_the_campaign_finds_the_same_earliest_twin_as_comparing_every_stored_print(tmp_path, sandbox, prints):
    with Store.for_campaign_dir(tmp_path / "twins") as store:
        runner = CampaignRunner(CampaignConfig(name="twins", finetune=False), store, sandbox)
        runner.campaign_id = runner.open_campaign()
        stored = {}
        for name in sorted(prints, key=lambda n: n.startswith("dpo_x")):  # the seeds first, then DPO rescaled
            candidate = store.add_candidate(runner.campaign_id, source=f"# {name}\n", name=name, proposer="seed",
                                            generation=0)
            store.update_candidate(candidate.id, fingerprint=prints[name], status="evaluated", tier="bandit")
            stored[candidate.id] = prints[name]
        newest = max(stored) + 1
        for name in ("dpo_x1.5", "ipo", "simpo", "zero"):
            expected = next((i for i in sorted(stored) if fingerprint_distance(prints[name], stored[i])
                             < SAME_LOSS_DISTANCE), None)
            twin = runner.fingerprint_twin(newest, prints[name])
            assert (twin.id if twin else None) == expected, name
        assert len(store.print_index(runner.campaign_id, below=newest)) == len(stored)

        # a print that changes is indexed anew: once DPO's row holds IPO's print, IPO's earliest twin is DPO
        assert fingerprint_distance(prints["dpo"], prints["ipo"]) > SAME_LOSS_DISTANCE
        ids = {store.get_candidate(i).name: i for i in stored}
        assert ids["dpo"] < ids["ipo"]
        store.update_candidate(ids["dpo"], fingerprint=prints["ipo"])
        twin = runner.fingerprint_twin(newest, prints["ipo"])
        assert twin is not None and twin.id == ids["dpo"]


def test_two_checks_indexing_the_same_prints_at_once_keep_one_row(store_url):
    """With several workers two duplicate checks can read the same prints unindexed and both index them:
    the second write leaves the first row as it is instead of failing the evaluation (a Ray campaign did)."""
    with Store(store_url) as store:
        campaign = store.create_campaign("twice", {})
        candidate = store.add_candidate(campaign.id, source="# x\n", name="x", proposer="seed", generation=0)
        store.add_print_index(campaign.id, {candidate.id: b"first"})
        store.add_print_index(campaign.id, {candidate.id: b"again"})
        assert store.print_index(campaign.id, below=candidate.id + 1) == [(candidate.id, b"first")]


def test_a_candidate_still_evaluating_without_a_print_is_indexed_once_it_has_one(tmp_path, sandbox, prints):
    """Indexed as print-less while it was still being evaluated, a candidate would never be compared once
    its print came: unfinished candidates without a print wait for a later check; finished ones do not."""
    with Store.for_campaign_dir(tmp_path / "later") as store:
        runner = CampaignRunner(CampaignConfig(name="later", finetune=False), store, sandbox)
        runner.campaign_id = runner.open_campaign()
        failed, running = (store.add_candidate(runner.campaign_id, source=f"# {name}\n", name=name, proposer="seed",
                                               generation=0, status=status)
                           for name, status in (("failed", "failed"), ("running", "evaluating")))
        assert runner.fingerprint_twin(running.id + 1, prints["dpo"]) is None
        assert store.print_index(runner.campaign_id, below=running.id + 1) == []
        store.update_candidate(running.id, fingerprint=prints["dpo"])
        twin = runner.fingerprint_twin(running.id + 1, prints["dpo_x1.5"])
        assert twin is not None and twin.id == running.id
        indexed = {candidate_id for candidate_id, _ in store.print_index(runner.campaign_id, below=running.id + 1)}
        assert indexed == {running.id} and failed.id not in indexed  # the failed one: an empty row, left out
