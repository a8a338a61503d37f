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


NESTED = '''"""A blend of a blend: each parent a helper, every input spelled out."""
import torch
import torch.nn.functional as F


def dpo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
             beta: float = 0.1):
    """dpo"""
    margin = policy_chosen_logps - reference_chosen_logps - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * margin)


def ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
             beta: float = 0.1):
    """ipo"""
    margin = policy_chosen_logps - reference_chosen_logps - (policy_rejected_logps - reference_rejected_logps)
    return (margin - 1 / (2 * beta)) ** 2


def inner(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
          beta: float = 0.1, tau: float = 1.0):
    first_losses = dpo_loss(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                            reference_chosen_logps=reference_chosen_logps,
                            reference_rejected_logps=reference_rejected_logps, beta=beta)
    second_losses = ipo_loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,
                             reference_rejected_logps, beta * 2)
    margin = policy_chosen_logps - reference_chosen_logps - (policy_rejected_logps - reference_rejected_logps)
    gate = torch.sigmoid(beta * margin / tau)
    return (1 - gate) * first_losses + gate * second_losses


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
         beta: float = 0.1, tau: float = 1.0, tau_2: float = 0.05):
    first_losses = inner(policy_chosen_logps=policy_chosen_logps, policy_rejected_logps=policy_rejected_logps,
                         reference_chosen_logps=reference_chosen_logps,
                         reference_rejected_logps=reference_rejected_logps, beta=beta)
    margin = policy_chosen_logps - reference_chosen_logps - (policy_rejected_logps - reference_rejected_logps)
    gate = torch.sigmoid(beta * margin / tau_2)
    return (1 - gate) * first_losses + gate * -F.logsigmoid(beta * margin)
'''


def test_one_use_helpers_are_inlined_into_one_readable_function_that_is_the_same_loss(fingerprint_of):
    import ast

    simplified = simplify_child(NESTED, "child", fingerprint_of)
    tree = ast.parse(simplified.source)
    functions = [node.name for node in tree.body if isinstance(node, ast.FunctionDef)]
    assert functions == ["loss"] and "inlines the one-use helpers inner, dpo_loss, ipo_loss" in simplified.source
    assert same_loss(fingerprint_of(simplified.source), fingerprint_of(NESTED))
    assert code_size(simplified.source) < 0.6 * code_size(NESTED)  # 162 against 299
    body = simplified.source.split('"""', 2)[2]
    # the margin is computed once, under its own name; `inner`'s tau was left to its default: a constant now
    assert body.count("margin = ") == 1 and "margin_" not in body and "/ 1.0" in body
    # an argument that is an expression is bound once before the helper's body uses it
    assert "beta_2 = beta * 2" in body and "1 / (2 * beta_2)" in body


def test_a_helper_called_twice_or_with_branches_stays(fingerprint_of):
    from lossearch.search.proposers.syntax import read_module
    from lossearch.search.simplify import inline_helpers

    twice = NESTED.replace("gate * -F.logsigmoid(beta * margin)", "gate * dpo_loss(policy_chosen_logps, "
                           "policy_rejected_logps, reference_chosen_logps, reference_rejected_logps)")
    module = read_module(twice, "child")
    assert inline_helpers(module) == ["inner", "ipo_loss"]  # dpo_loss is called from two places now
    assert [d.name for d in module.definitions if hasattr(d, "name")] == ["dpo_loss"]
    branching = NESTED.replace('    """ipo"""\n', '    """ipo"""\n    if beta > 1:\n        beta = 1.0\n')
    module = read_module(branching, "child")
    assert "ipo_loss" not in inline_helpers(module)


CROSS = '''"""DPO with a term of apo_zero."""
import torch
import torch.nn.functional as F


def apo_zero_term(policy_rejected_logps, reference_rejected_logps, beta: float = 0.1):
    """A term of apo_zero."""
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps)
    return torch.sigmoid(rejected_rewards)


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,
         beta: float = 0.1, cross_weight: float = 0.5):
    margin = policy_chosen_logps - reference_chosen_logps - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * margin) + cross_weight * apo_zero_term(
        policy_rejected_logps=policy_rejected_logps, reference_rejected_logps=reference_rejected_logps, beta=beta)
'''


def test_a_cross_term_called_inside_the_return_is_inlined_before_it(fingerprint_of):
    simplified = simplify_child(CROSS, "child", fingerprint_of)
    body = simplified.source.split('"""', 2)[2]
    assert "def apo_zero_term" not in body and "inlines the one-use helper apo_zero_term" in simplified.source
    assert "rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps)\n    return " in body
    assert "cross_weight * torch.sigmoid(rejected_rewards)" in body
    assert same_loss(fingerprint_of(simplified.source), fingerprint_of(CROSS))


REASSIGNING = '''"""A blend whose first parent normalizes its inputs by length in place."""
import torch
import torch.nn.functional as F


def normalized_loss(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths,
                    beta: float = 0.1, alpha: float = 1.0):
    policy_chosen_logps = policy_chosen_logps / chosen_lengths.clamp(min=1.0)
    policy_rejected_logps = policy_rejected_logps / rejected_lengths.clamp(min=1.0)
    return -F.logsigmoid(beta * alpha * (policy_chosen_logps - policy_rejected_logps))


def loss(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths, beta: float = 0.1,
         alpha_2: float = 1.0, tau: float = 0.05):
    first_losses = normalized_loss(policy_chosen_logps=policy_chosen_logps,
                                   policy_rejected_logps=policy_rejected_logps, chosen_lengths=chosen_lengths,
                                   rejected_lengths=rejected_lengths, beta=beta, alpha=alpha_2)
    gate = torch.sigmoid(beta * (policy_chosen_logps - policy_rejected_logps) / tau)
    return (1 - gate) * first_losses + gate * -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
'''


def test_a_helper_that_reassigns_its_parameters_inlines_on_copies_and_hyperparameters_keep_their_names(
        fingerprint_of):
    simplified = simplify_child(REASSIGNING, "child", fingerprint_of)
    body = simplified.source.split('"""', 2)[2]
    assert "def normalized_loss" not in body and "alpha_2: float = 1.0" in body.replace("float=", "float = ")
    # the caller's own log-probs are not overwritten: the helper's normalization works on copies
    assert "policy_chosen_logps_2 = policy_chosen_logps\n" in body
    assert same_loss(fingerprint_of(simplified.source), fingerprint_of(REASSIGNING))


def test_a_value_is_not_merged_across_a_reassigned_parameter():
    import ast

    from lossearch.search.simplify import merge_repeated

    function = ast.parse("def loss(x, y):\n    a = x * y\n    x = x / 2\n    b = x * y\n    c = a * y\n"
                         "    d = a * y\n    return a + b + c + d\n").body[0]
    assert isinstance(function, ast.FunctionDef)
    merge_repeated(function)
    # `b` reads the halved x, so it stays; `d` repeats `c` with nothing reassigned between, so it goes
    assert ast.unparse(function).splitlines()[1:] == ["    a = x * y", "    x = x / 2", "    b = x * y",
                                                      "    c = a * y", "    return a + b + c + c"]
