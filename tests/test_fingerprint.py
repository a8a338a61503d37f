"""Fingerprints: the same loss written two ways is ~0 apart, different losses are far apart."""

from __future__ import annotations

import pytest

from lossearch.evaluation.cascade import evaluate
from lossearch.evaluation.compare import compare_sources
from lossearch.fingerprint import fingerprint_distance, summarize
from lossearch.search.seeds import seed_path

DPO_AS_SOFTPLUS = '''"""DPO again, written as a softplus of the negated margin."""
import torch.nn.functional as F

def loss(policy_rejected_logps, reference_rejected_logps, policy_chosen_logps, reference_chosen_logps,
         beta: float = 0.1):
    chosen = policy_chosen_logps - reference_chosen_logps
    rejected = policy_rejected_logps - reference_rejected_logps
    return 3.0 * F.softplus(beta * (rejected - chosen))
'''


def fingerprint_of(sandbox, source: str) -> list[float]:
    evaluation = evaluate(source, "x", "sanity", sandbox=sandbox)
    assert evaluation.ok, evaluation.error
    return evaluation.metrics["sanity"]["fingerprint"]


def seed_fingerprint(sandbox, name: str) -> list[float]:
    return fingerprint_of(sandbox, seed_path(name).read_text())


def test_same_loss_written_two_ways_is_near_zero(sandbox):
    result = compare_sources(seed_path("dpo").read_text(), DPO_AS_SOFTPLUS, "dpo", "dpo_softplus", sandbox=sandbox)
    assert result["distance"] < 1e-6
    assert result["verdict"] == "same loss"


@pytest.mark.parametrize("other", ["ipo", "hinge", "sft", "bco_pair", "robust"])
def test_different_losses_are_far_apart(sandbox, other):
    distance = fingerprint_distance(seed_fingerprint(sandbox, "dpo"), seed_fingerprint(sandbox, other))
    assert distance > 0.05


def test_dpo_and_ipo_are_far_apart(sandbox):
    result = compare_sources(seed_path("dpo").read_text(), seed_path("ipo").read_text(), sandbox=sandbox)
    assert result["verdict"] == "different"
    assert result["distance"] > 0.3


def test_summary_reads_the_pushes(sandbox):
    dpo = summarize(seed_fingerprint(sandbox, "dpo"))
    assert dpo.raises_chosen == 1.0 and dpo.lowers_rejected == 1.0 and dpo.both_fall == 0.0
    assert dpo.rejected_to_chosen == pytest.approx(1.0)
    sft = summarize(seed_fingerprint(sandbox, "sft"))
    assert sft.raises_chosen == 1.0 and sft.lowers_rejected == 0.0
    # a loss that pushes both log-ratios down everywhere
    both_down = "def loss(policy_chosen_logps, policy_rejected_logps):\n" \
                "    return policy_chosen_logps + 2.0 * policy_rejected_logps"
    summary = summarize(fingerprint_of(sandbox, both_down))
    assert summary.both_fall == 1.0 and summary.rejected_to_chosen == pytest.approx(2.0)
    assert "both fall on 100%" in summary.describe()
