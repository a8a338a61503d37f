"""Simplifying a child before it is stored (lossearch.search.simplify), with real sandboxed fingerprints."""

from __future__ import annotations

import pytest

from lossearch.evaluation.cascade import sanity_tier, static_tier
from lossearch.failures import CandidateError
from lossearch.fingerprint import same_loss
from lossearch.search.proposers.syntax import code_size
from lossearch.search.simplify import simplify_child

HEADER = '''"""DPO with an extra term."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
         chosen_lengths, beta: float = 0.1, nll_weight: float = WEIGHT):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * margin) + nll_weight * (-policy_chosen_logps / chosen_lengths.clamp(min=1.0))
'''


@pytest.fixture
def fingerprint_of(sandbox):
    def fingerprint(source: str):
        try:
            return list(sanity_tier(sandbox, static_tier(source, "child"))["fingerprint"])
        except CandidateError:
            return None
    return fingerprint


def test_a_term_that_does_not_change_the_loss_is_dropped_with_what_only_it_used(fingerprint_of):
    source = HEADER.replace("WEIGHT", "1e-5")
    simplified = simplify_child(source, "child", fingerprint_of)
    assert len(simplified.dropped) == 1 and "simplifies" in simplified.dropped[0]
    code = simplified.source.split('"""', 2)[2]  # after the module docstring, which tells what was dropped
    assert "nll_weight" not in code and "chosen_lengths" not in code  # pruned with the term
    assert "Simplified before it was stored" in simplified.source and "DPO with an extra term." in simplified.source
    assert code_size(simplified.source) < code_size(source)
    assert same_loss(fingerprint_of(simplified.source), fingerprint_of(source))


def test_a_term_that_matters_stays(fingerprint_of):
    source = HEADER.replace("WEIGHT", "1.0")
    simplified = simplify_child(source, "child", fingerprint_of)
    assert simplified.source == source and not simplified.dropped
    assert 1 < simplified.checks <= 8


def test_a_child_that_fails_the_sanity_tier_is_left_as_it_is(fingerprint_of):
    broken = HEADER.replace("WEIGHT", "1e-5").replace("return -F.logsigmoid", "return 0 * -F.logsigmoid").replace(
        "nll_weight * (-policy_chosen_logps", "nll_weight * (-policy_chosen_logps.detach()")
    assert fingerprint_of(broken) is None  # no gradient reaches the policy: the sanity tier refuses it
    assert simplify_child(broken, "child", fingerprint_of).source == broken


@pytest.mark.parametrize("written, folded", [
    ("2.0 * 0.5 * x", "x"), ("x * 1", "x"), ("x + 0", "x"), ("0.5 - 1.0", "-0.5"), ("x * 1.0 + y", "x + y"),
    ("0 * x", "0 * x"), ("x ** 2", "x ** 2"),  # 0 * x keeps its gradient path; a power is no constant
])
def test_edited_code_folds_its_constants(written, folded):
    import ast

    from lossearch.search.proposers.syntax import simplify

    assert ast.unparse(simplify(ast.parse(written, mode="eval").body)) == folded
