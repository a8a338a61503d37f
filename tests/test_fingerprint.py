"""Fingerprints: the same loss written two ways is ~0 apart, different losses are far apart, and
DPO with its beta rescaled is DPO."""

from __future__ import annotations

import itertools

import pytest

from lossearch.evaluation.cascade import evaluate
from lossearch.evaluation.compare import compare_sources
from lossearch.fingerprint import (
    FINGERPRINT_SIZE,
    PRINT_SIZE,
    RESCALED_FACTORS,
    SAME_LOSS_DISTANCE,
    closest_rescaling,
    default_print,
    fingerprint_distance,
    fingerprint_distances,
    same_loss,
    summarize,
    unit_distance,
)
from lossearch.search.campaign import CampaignRunner
from lossearch.search.config import CampaignConfig
from lossearch.search.seeds import seed_path, seed_paths
from lossearch.store import Store

DPO_AS_SOFTPLUS = '''"""DPO again, written as a softplus of the negated margin."""
import torch.nn.functional as F

def loss(policy_rejected_logps, reference_rejected_logps, policy_chosen_logps, reference_chosen_logps,
         beta: float = 0.1):
    chosen = policy_chosen_logps - reference_chosen_logps
    rejected = policy_rejected_logps - reference_rejected_logps
    return 3.0 * F.softplus(beta * (rejected - chosen))
'''

# R-DPO at its default alpha = 0.01 shifts DPO's logit by alpha * (len_c - len_r), 0.02 to 0.04 on the
# grid against margins up to 3.2: the same loss there, before the rescalings too (plain distance 0.006)
# and at their defaults on this grid: H-DPO at alpha 0.95 is DPO at 0.95 beta plus a small offset from the
# reference margin (distance 0.006 to dpo, 0.002 to rdpo); Cal-DPO at beta 0.1 is dominated by its
# calibration terms, SPPO-hard's loss (0.019); f-DPO's alpha-divergence at alpha 0.5 lies within 0.018 of
# its forward KL; DPO-Shift's linear schedule (0.75 to 1.0) at the grid's progress 0.5 scales the rejected
# log-ratio by 0.875, and LD-DPO at alpha 0.5, the grid's rejected responses all the longer ones, scales it by
# 0.875 to 0.917 (0.019). Campaigns keep them all: the seed library is evaluated near-twins included
KNOWN_SAME_SEEDS = {("dpo", "rdpo"), ("dpo", "h_dpo"), ("h_dpo", "rdpo"), ("cal_dpo", "sppo_hard"),
                    ("fdpo_alpha", "fdpo_forward_kl"), ("dpo_shift_linear", "ld_dpo")}


def scaled_dpo(factor: float) -> str:
    """DPO with its beta scaled by `factor`, written out as its own loss file."""
    return seed_path("dpo").read_text().replace("beta * margin", f"{factor} * beta * margin")


def fingerprint_of(sandbox, source: str) -> list[float]:
    evaluation = evaluate(source, "x", "sanity", sandbox=sandbox)
    assert evaluation.ok, evaluation.error
    return evaluation.metrics["sanity"]["fingerprint"]


def seed_fingerprint(sandbox, name: str) -> list[float]:
    return fingerprint_of(sandbox, seed_path(name).read_text())


@pytest.fixture(scope="module")
def seed_prints(sandbox) -> dict[str, list[float]]:
    return {path.stem: fingerprint_of(sandbox, path.read_text()) for path in seed_paths()}


def test_same_loss_written_two_ways_is_near_zero(sandbox):
    result = compare_sources(seed_path("dpo").read_text(), DPO_AS_SOFTPLUS, "dpo", "dpo_softplus", sandbox=sandbox)
    assert result["distance"] < 1e-6
    assert result["verdict"] == "same loss" and result["beta_scale"] == 1.0


@pytest.mark.parametrize("factor", [1.5, 0.5, 2.0])
def test_dpo_with_its_beta_scaled_is_dpo(sandbox, factor):
    result = compare_sources(seed_path("dpo").read_text(), scaled_dpo(factor), "dpo", "dpo_scaled", sandbox=sandbox)
    assert result["distance"] < 1e-3
    assert result["beta_scale"] == pytest.approx(factor)
    assert result["verdict"] == "same loss" and result["note"] == f"dpo_scaled is dpo at beta ×{factor:g}"


def test_a_rescaling_between_the_stored_factors_is_found_too(sandbox):
    dpo, scaled = seed_fingerprint(sandbox, "dpo"), fingerprint_of(sandbox, scaled_dpo(1.2))
    distance, factor = closest_rescaling(dpo, scaled)
    assert distance < SAME_LOSS_DISTANCE / 4 and factor == pytest.approx(1.2, rel=0.03)
    # the plain distance at the default betas alone calls them different
    assert unit_distance(default_print(dpo), default_print(scaled)) > SAME_LOSS_DISTANCE


@pytest.mark.parametrize("other", ["ipo", "tdpo", "sft", "hinge", "bco_pair", "robust"])
def test_different_losses_stay_different(seed_prints, other):
    assert not same_loss(seed_prints["dpo"], seed_prints[other])
    # robust DPO is the nearest: DPO's gradient less a constant, close to DPO at beta × 0.72 at one beta only
    assert fingerprint_distance(seed_prints["dpo"], seed_prints[other]) > (0.025 if other == "robust" else 0.25)


def test_dpo_and_ipo_are_far_apart(sandbox):
    result = compare_sources(seed_path("dpo").read_text(), seed_path("ipo").read_text(), sandbox=sandbox)
    assert result["verdict"] == "different"
    assert result["distance"] > 0.3


def test_the_distance_is_symmetric(seed_prints):
    for first, second in [("dpo", "ipo"), ("dpo", "robust"), ("apo_zero", "kto_pair"), ("ipo", "sigmoid_norm")]:
        forward = closest_rescaling(seed_prints[first], seed_prints[second])
        backward = closest_rescaling(seed_prints[second], seed_prints[first])
        assert forward[0] == backward[0]
        assert forward[1] == pytest.approx(1 / backward[1])


def test_one_against_many_equals_one_pair_at_a_time(seed_prints, monkeypatch):
    """The batched distance (the duplicate check and parent selection use it) is the pairwise one within
    rounding, across chunk edges, with zero prints and prints stored before the rescalings among them."""
    import lossearch.fingerprint as fingerprint

    monkeypatch.setattr(fingerprint, "DISTANCE_CHUNK", 7)  # several chunks, the last one short
    others = [seed_prints[name] for name in sorted(seed_prints)]
    others += [[0.0] * FINGERPRINT_SIZE, seed_prints["ipo"][:PRINT_SIZE], seed_prints["dpo"][:PRINT_SIZE]]
    for first in ("dpo", "kto_pair", "simpo"):
        batched = fingerprint_distances(seed_prints[first], others)
        assert batched == pytest.approx([fingerprint_distance(seed_prints[first], o) for o in others], abs=1e-12)
    assert fingerprint_distances([0.0] * FINGERPRINT_SIZE, others[-3:]) == pytest.approx([0.0, 2 ** 0.5, 2 ** 0.5])
    with pytest.raises(ValueError):
        fingerprint_distances(seed_prints["dpo"], [[1.0, 2.0]])


def test_the_seed_library_stays_pairwise_distinct(seed_prints):
    same = {(first, second) for first, second in itertools.combinations(sorted(seed_prints), 2)
            if same_loss(seed_prints[first], seed_prints[second])}
    assert same == KNOWN_SAME_SEEDS


def test_a_fingerprint_stored_before_the_rescalings_compares_by_the_plain_distance(sandbox, seed_prints):
    old_dpo = seed_prints["dpo"][:PRINT_SIZE]  # what the previous version stored
    assert fingerprint_distance(old_dpo, seed_prints["dpo"]) < 1e-9
    assert fingerprint_distance(old_dpo, seed_prints["ipo"]) == pytest.approx(0.4334, abs=1e-3)
    scaled = fingerprint_of(sandbox, scaled_dpo(1.5))
    plain = unit_distance(default_print(old_dpo), default_print(scaled))
    assert closest_rescaling(old_dpo, scaled) == (plain, 1.0) == closest_rescaling(scaled, old_dpo)
    with pytest.raises(ValueError):
        fingerprint_distance(old_dpo, [1.0, 2.0])


def test_the_sanity_tier_stores_the_rescaled_prints(sandbox, seed_prints):
    dpo = seed_prints["dpo"]
    assert len(dpo) == FINGERPRINT_SIZE
    # block k + 1 is DPO at beta × RESCALED_FACTORS[k], unit-normalized: DPO written with 1.5 * beta
    block = 1 + RESCALED_FACTORS.index(1.5)
    rescaled = default_print(fingerprint_of(sandbox, scaled_dpo(1.5)))
    stored = dpo[block * PRINT_SIZE:(block + 1) * PRINT_SIZE]
    assert max(abs(a - b) for a, b in zip(stored, (rescaled / rescaled.norm()).tolist())) < 1e-5
    # the summary reads the print at the default beta
    assert summarize(dpo) == summarize(dpo[:PRINT_SIZE])


def test_a_loss_undefined_at_some_rescaling_passes_and_leaves_it_out(sandbox):
    source = ("import math\nimport torch.nn.functional as F\n\n"
              "def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):\n"
              "    margin = policy_chosen_logps - policy_rejected_logps\n"
              "    return -F.logsigmoid(beta * margin) * -math.log(0.25 - beta)\n")
    fingerprint = fingerprint_of(sandbox, source)  # math.log fails at beta × 4 and beta × 3 only
    missing = [factor for k, factor in enumerate(RESCALED_FACTORS)
               if not any(fingerprint[(k + 1) * PRINT_SIZE:(k + 2) * PRINT_SIZE])]
    assert missing == [3.0, 4.0]
    assert fingerprint_distance(fingerprint, fingerprint) == 0.0


def test_the_campaign_rejects_dpo_with_a_scaled_beta_as_a_duplicate(tmp_path, sandbox, seed_prints):
    config = CampaignConfig(name="twins", finetune=False)
    with Store.for_campaign_dir(tmp_path / "twins") as store:
        runner = CampaignRunner(config, store, sandbox)
        runner.campaign_id = runner.open_campaign()
        dpo = store.add_candidate(runner.campaign_id, source=seed_path("dpo").read_text(), name="dpo",
                                  proposer="seed", generation=0)
        store.update_candidate(dpo.id, fingerprint=seed_prints["dpo"], status="evaluated", tier="bandit")
        child = store.add_candidate(runner.campaign_id, source=scaled_dpo(1.5), name="dpo_scaled",
                                    proposer="mutation", generation=1, parents=[(dpo.id, "mutation")])
        runner.evaluate_candidate(child, sandbox)
        child = store.get_candidate(child.id)
        assert child.status == "duplicate"
        assert child.failure_message.startswith(f"same loss as #{dpo.id} dpo at beta ×1.5 (fingerprint distance")
        assert {e.tier for e in store.evaluations(candidate_id=child.id)} == {"sanity"}  # no training paid


def test_the_grid_holds_the_wider_inputs_at_fixed_values_and_older_prints_do_not_see_them():
    import torch

    from lossearch.contract import (
        SCORE_INPUTS,
        TRAINING_STATE_INPUTS,
        call_loss,
        load_loss,
        parse_spec,
        read_spec,
    )
    from lossearch.fingerprint import GRID_MARGIN_MEAN, GRID_MARGIN_STD, GRID_PROGRESS, gradient_print, grid_inputs

    tensors, leaves = grid_inputs()
    assert [float(tensors[name]) for name in TRAINING_STATE_INPUTS] == [GRID_PROGRESS, GRID_MARGIN_MEAN,
                                                                        GRID_MARGIN_STD]
    assert all(tensors[name].shape == leaves[0].shape and not tensors[name].requires_grad for name in SCORE_INPUTS)
    spec = read_spec(seed_path("dpo"))
    function = load_loss(spec.source, spec.name)
    wider = set(SCORE_INPUTS + TRAINING_STATE_INPUTS)
    dpo = gradient_print(lambda grid: call_loss(function, spec, grid))
    without = gradient_print(lambda grid: call_loss(function, spec, {k: v for k, v in grid.items() if k not in wider}))
    assert torch.equal(dpo, without)
    # a loss that reads them is printed where they hold those values: progress 0.5 doubles DPO's beta here
    scheduled = '''import torch.nn.functional as F
def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, progress,
         beta: float = 0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(4 * progress * beta * margin)
'''
    doubled = read_spec(seed_path("dpo"))
    prints = []
    for source in (scheduled, doubled.source.replace("beta * margin", "2 * beta * margin")):
        spec = parse_spec(source)
        function = load_loss(spec.source, spec.name)
        prints.append(gradient_print(lambda grid, function=function, spec=spec: call_loss(function, spec, grid)))
    torch.testing.assert_close(prints[0], prints[1])


def test_the_grid_spreads_each_log_ratio_evenly_over_its_tokens():
    import torch

    from lossearch.contract import call_loss, load_loss, parse_spec, read_spec
    from lossearch.fingerprint import TOKEN_LOGP, gradient_print, grid_inputs

    tensors, _ = grid_inputs()
    for side in ("chosen", "rejected"):
        mask = tensors[f"{side}_mask"]
        assert torch.equal(mask.sum(-1), tensors[f"{side}_lengths"])
        torch.testing.assert_close(tensors[f"policy_{side}_token_logps"].sum(-1), tensors[f"policy_{side}_logps"])
        assert torch.equal(tensors[f"reference_{side}_token_logps"], TOKEN_LOGP * mask)

    def print_of(source: str):
        spec = parse_spec(source)
        function = load_loss(spec.source, spec.name)
        return gradient_print(lambda grid: call_loss(function, spec, grid))

    # DPO written on the token inputs pushes as DPO does; SamPO (in expectation) as its length scaling does
    token_dpo = """import torch.nn.functional as F
def loss(policy_chosen_token_logps, policy_rejected_token_logps, reference_chosen_token_logps,
         reference_rejected_token_logps, beta: float = 0.1):
    chosen = (policy_chosen_token_logps - reference_chosen_token_logps).sum(-1)
    return -F.logsigmoid(beta * (chosen - (policy_rejected_token_logps - reference_rejected_token_logps).sum(-1)))
"""
    scaled = """import torch
import torch.nn.functional as F
def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
         chosen_lengths, rejected_lengths, beta: float = 0.1):
    sampled = torch.minimum(chosen_lengths, rejected_lengths)
    chosen = sampled / chosen_lengths * (policy_chosen_logps - reference_chosen_logps)
    rejected = sampled / rejected_lengths * (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * (chosen - rejected))
"""
    torch.testing.assert_close(print_of(token_dpo), print_of(seed_path("dpo").read_text()))
    torch.testing.assert_close(print_of(seed_path("sampo").read_text()), print_of(scaled))
    assert not torch.allclose(print_of(seed_path("ld_dpo").read_text()), print_of(seed_path("dpo").read_text()))
    assert read_spec(seed_path("ld_dpo")).uses_tokens
