"""The loss contract: signatures, binding by name, output checks."""

from __future__ import annotations

import pytest
import torch

from lossearch.contract import (
    CONTRACT_INPUTS,
    DEFAULT_BETA,
    SCORE_INPUTS,
    TENSOR_INPUTS,
    TRAINING_STATE_INPUTS,
    TrainingState,
    call_loss,
    load_loss,
    missing_scores,
    parse_spec,
)
from lossearch.failures import CandidateError


def inputs(batch: int = 4) -> dict[str, torch.Tensor]:
    torch.manual_seed(0)
    names = ["policy_chosen_logps", "policy_rejected_logps", "reference_chosen_logps", "reference_rejected_logps",
             "chosen_lengths", "rejected_lengths", "chosen_kl", "rejected_kl"]
    return {name: torch.rand(batch) * -10 for name in names}


def refusal(source: str) -> CandidateError:
    with pytest.raises(CandidateError) as caught:
        parse_spec(source)
    return caught.value


def test_spec_reads_inputs_and_hyperparameters(dpo_source):
    spec = parse_spec("def loss(policy_chosen_logps, chosen_lengths, beta: float = 0.3, gamma: float = 0.5):\n"
                      "    return policy_chosen_logps * beta")
    assert spec.inputs == ("policy_chosen_logps", "chosen_lengths", "beta")
    assert dict(spec.hyperparameters) == {"beta": 0.3, "gamma": 0.5}
    assert not spec.uses_kl
    assert dict(parse_spec(dpo_source).hyperparameters) == {"beta": 0.1}


def test_beta_defaults_when_absent():
    spec = parse_spec("def loss(policy_chosen_logps):\n    return -policy_chosen_logps")
    assert spec.hyperparameters["beta"] == DEFAULT_BETA


@pytest.mark.parametrize("source, kind, words", [
    ("def loss(policy_chosen_logps, foo):\n    return 1", "policy", "unknown parameter `foo`"),
    ("def loss(policy_chosen_logps, gamma='x'):\n    return 1", "policy", "numeric"),
    ("def loss(*args):\n    return 1", "policy", "*args"),
    ("def loss(beta: float = 0.1):\n    return beta", "policy", "no log-probability input"),
    ("def helper(x):\n    return x", "policy", "named `loss`"),
    ("def loss(policy_chosen_logps:\n    return 1", "syntax", "line 1"),
])
def test_bad_signatures_are_refused_with_a_reason(source, kind, words):
    error = refusal(source)
    assert error.failure.kind == kind
    assert words in error.failure.message


def test_call_binds_by_name_and_broadcasts_scalars():
    source = "def loss(policy_rejected_logps, policy_chosen_logps, gamma: float = 2.0):\n" \
             "    return (policy_chosen_logps - policy_rejected_logps).mean() * gamma"
    spec = parse_spec(source)
    values = inputs()
    out = call_loss(load_loss(source), spec, values, hyperparameters={"gamma": 3.0})
    expected = (values["policy_chosen_logps"] - values["policy_rejected_logps"]).mean() * 3.0
    assert out.shape == (4,)
    assert torch.allclose(out, expected.expand(4))


@pytest.mark.parametrize("body, kind", [
    ("return policy_chosen_logps[:2]", "shape"),
    ("return 1.0", "shape"),
    ("return policy_chosen_logps / 0.0 * 0.0", "nan"),
    ("return policy_chosen_logps.long()", "shape"),
    ("raise ValueError('boom')", "exception"),
])
def test_bad_outputs_are_classified(body, kind):
    source = f"def loss(policy_chosen_logps):\n    {body}"
    with pytest.raises(CandidateError) as caught:
        call_loss(load_loss(source), parse_spec(source), inputs())
    assert caught.value.failure.kind == kind


def test_restricted_loader_refuses_other_imports():
    with pytest.raises(CandidateError) as caught:
        load_loss("import os\ndef loss(policy_chosen_logps):\n    return policy_chosen_logps")
    assert caught.value.failure.kind == "policy"


def test_the_wider_inputs_are_contract_inputs_without_defaults():
    spec = parse_spec("def loss(policy_chosen_logps, chosen_scores, rejected_scores, progress, running_margin_mean,\n"
                      "         running_margin_std, gamma: float = 0.5):\n    return policy_chosen_logps")
    assert spec.inputs == ("policy_chosen_logps", *SCORE_INPUTS, *TRAINING_STATE_INPUTS)
    assert spec.uses_scores and dict(spec.hyperparameters) == {"beta": DEFAULT_BETA, "gamma": 0.5}
    assert set(SCORE_INPUTS + TRAINING_STATE_INPUTS) <= set(TENSOR_INPUTS)
    assert "default" in refusal("def loss(policy_chosen_logps, progress=0.5):\n    return 1").failure.message


def test_an_input_the_evaluation_does_not_supply_fails_in_one_line():
    spec = parse_spec("def loss(policy_chosen_logps, chosen_scores):\n    return policy_chosen_logps")
    with pytest.raises(CandidateError) as caught:
        call_loss(load_loss(spec.source), spec, inputs())
    assert caught.value.failure.kind == "policy" and "`chosen_scores`" in caught.value.failure.message
    assert "reads chosen_scores" in missing_scores(spec, "the data has none").failure.message


def test_training_state_starts_at_the_first_batch_and_keeps_an_ema():
    state = TrainingState(steps=4)
    reference = {"reference_chosen_logps": torch.zeros(3), "reference_rejected_logps": torch.zeros(3)}
    margins = [torch.tensor([1.0, 2.0, 3.0]), torch.tensor([5.0, 5.0, 5.0])]
    seen = [state.inputs(step, {"policy_chosen_logps": margin.requires_grad_(), "policy_rejected_logps":
                                torch.zeros(3)}, reference) for step, margin in enumerate(margins)]
    assert [float(values["progress"]) for values in seen] == [0.0, 0.25]
    std = float(torch.tensor([1.0, 2.0, 3.0]).std(correction=0))  # population std: a batch of one has 0
    assert float(seen[0]["running_margin_mean"]) == pytest.approx(2.0)
    assert float(seen[0]["running_margin_std"]) == pytest.approx(std)
    assert float(seen[1]["running_margin_mean"]) == pytest.approx(0.9 * 2.0 + 0.1 * 5.0)
    assert float(seen[1]["running_margin_std"]) == pytest.approx(0.9 * std)
    assert all(value.dim() == 0 and not value.requires_grad for values in seen for value in values.values())


def test_token_inputs_are_contract_inputs_and_the_sanity_inputs_hold_them_consistently():
    import torch

    from lossearch.contract import TOKEN_INPUTS, call_loss, load_loss, read_spec
    from lossearch.sandbox.jobs import SANITY_BATCH, check_gradients, synthetic_inputs
    from lossearch.search.seeds import seed_path

    assert set(TOKEN_INPUTS) <= set(TENSOR_INPUTS) and all("(B, T)" in CONTRACT_INPUTS[name] for name in TOKEN_INPUTS)
    tensors = synthetic_inputs(SANITY_BATCH)
    for side in ("chosen", "rejected"):
        mask = tensors[f"{side}_mask"]  # (B, T), 0/1
        assert mask.shape == tensors[f"policy_{side}_token_logps"].shape and mask.shape[0] == SANITY_BATCH
        assert torch.equal(mask.sum(-1), tensors[f"{side}_lengths"])
        for model in ("policy", "reference"):
            tokens = tensors[f"{model}_{side}_token_logps"]
            torch.testing.assert_close(tokens.sum(-1), tensors[f"{model}_{side}_logps"], atol=1e-4, rtol=1e-5)
            assert bool((tokens[mask == 0] == 0).all())
    for name in ("ld_dpo", "sampo"):
        spec = read_spec(seed_path(name))
        function = load_loss(spec.source, spec.name)
        assert spec.uses_tokens and not read_spec(seed_path("dpo")).uses_tokens
        metrics = check_gradients(lambda inputs, beta=None, function=function, spec=spec:
                                  call_loss(function, spec, inputs, beta=beta))
        assert metrics["grad_chosen_mean"] < 0 < metrics["grad_rejected_mean"]
