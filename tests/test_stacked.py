"""Many runs of one loss in one stacked pass: the same training as the runs one after another."""

from __future__ import annotations

from dataclasses import replace

import pytest
import torch
from safetensors.torch import load_file
from test_finetune import fake_run, tiny_options, trusted_loss

from lossearch.contract import call_loss, load_loss, parse_spec
from lossearch.evaluation.finetune.config import RunConfig
from lossearch.evaluation.finetune.stacked import can_stack, run_parameters, train_stacked
from lossearch.evaluation.finetune.tier import finetune_runner, run_config, train_in_sandbox, train_many_in_sandbox
from lossearch.evaluation.finetune.train import train_policy
from lossearch.evaluation.tasks.data import PairSet
from lossearch.evaluation.tasks.lm import load_parameters, make_model
from lossearch.evaluation.tuning import tune_hyperparameters
from lossearch.failures import CandidateError

# a loss that reads its batch's statistics (each pair weighted by a softmax over the batch): stacked,
# it must still see only its own run's batch
BATCH_WEIGHTED = ("import torch\nimport torch.nn.functional as F\n"
           "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps,\n"
           "            beta: float = 0.1):\n"
           "    margin = policy_chosen_logps - reference_chosen_logps\n"
           "    margin = margin - (policy_rejected_logps - reference_rejected_logps)\n"
           "    weights = torch.softmax(-beta * margin, dim=0) * margin.shape[0]\n"
           "    return -weights * F.logsigmoid(beta * margin)\n")
# a loss whose gradients are NaN at a large beta only
FRAGILE = ("import torch.nn.functional as F\n"
           "def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):\n"
           "    loss = -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))\n"
           "    return loss * float('nan') if beta > 1 else loss\n")


def source_loss(source: str):
    spec = parse_spec(source, "candidate")
    function = load_loss(spec.source, spec.name)
    return lambda tensors, beta: call_loss(function, spec, tensors, beta=beta)


def base_model(task):
    model = make_model(task.model_config)
    load_parameters(model, load_file(str(task.parameters_file)))
    return model


def configs(task, betas_seeds, uses_kl=False, uses_tokens=False) -> list[RunConfig]:
    return [RunConfig(beta=beta, seed=seed, steps=6, pairs=48, batch_size=4, lr=3e-3, uses_kl=uses_kl,
                      uses_tokens=uses_tokens) for beta, seed in betas_seeds]


def sequential(task, loss_fn, runs: list[RunConfig]):
    """Each run on its own: (its losses, its parameters), or the failure that ended it."""
    reference = base_model(task).eval().requires_grad_(False)
    results = []
    for config in runs:
        policy = base_model(task)
        try:
            losses = train_policy(loss_fn, policy, reference if config.uses_kl or config.uses_tokens else None,
                                  task.train, config)
        except CandidateError as error:
            results.append(error)
            continue
        results.append((losses, dict(policy.named_parameters())))
    return results


def scored_task(task):
    """`task` with its training pairs' scores, as the child reads them (pairs and scores files merged)."""
    tensors = {**load_file(str(task.pairs_file)), **load_file(str(task.scores_file))}
    return replace(task, train=PairSet.from_tensors(tensors, "train"))


# beta_dpo reads its run's running margin statistics, dpo_shift_linear its progress, odpo the pairs' scores,
# ld_dpo and sampo the token inputs
@pytest.mark.parametrize("loss", ["dpo", "tdpo", "batch_weighted", "beta_dpo", "dpo_shift_linear", "odpo", "ld_dpo",
                                  "sampo"])
def test_stacked_runs_train_as_their_runs_one_after_another(tiny_task, loss):
    loss_fn = source_loss(BATCH_WEIGHTED) if loss == "batch_weighted" else trusted_loss(loss)[1]
    task = scored_task(tiny_task) if loss == "odpo" else tiny_task
    uses_tokens = loss in ("ld_dpo", "sampo")
    runs = configs(task, [(0.1, 0), (0.3, 0), (0.1, 1)], uses_kl=loss == "tdpo", uses_tokens=uses_tokens)
    policy = base_model(task)
    reference = base_model(task).eval().requires_grad_(False) if loss == "tdpo" or uses_tokens else None
    stacked = train_stacked(loss_fn, policy, reference, task.train, runs)
    for index, (run, (losses, parameters)) in enumerate(zip(stacked, sequential(task, loss_fn, runs))):
        assert run.failure is None
        assert run.losses == pytest.approx(losses, rel=1e-5, abs=1e-6)
        trained = run_parameters(policy, index)
        assert set(trained) == set(parameters)
        for name, value in parameters.items():
            assert torch.allclose(trained[name], value, rtol=1e-4, atol=1e-4), name
    # within rounding (AdamW's first steps are about lr = 3e-3 wherever a gradient is nonzero, so rounding
    # in a near-zero gradient can move a weight by up to 1e-4 here), while the runs moved apart by far more:
    # each trained on its own batches at its own beta
    apart = [max(float((run_parameters(policy, a)[name] - run_parameters(policy, b)[name]).abs().max())
                 for name in trained) for a, b in ((0, 1), (0, 2))]
    assert min(apart) > 3e-3


def test_a_run_that_diverges_fails_alone(tiny_task):
    loss_fn = source_loss(FRAGILE)
    runs = configs(tiny_task, [(0.1, 0), (3.0, 0), (0.3, 1)])
    policy = base_model(tiny_task)
    stacked = train_stacked(loss_fn, policy, None, tiny_task.train, runs)
    alone = sequential(tiny_task, loss_fn, runs)
    assert isinstance(alone[1], CandidateError) and stacked[1].failure is not None
    assert stacked[1].failure.failure.kind == alone[1].failure.kind == "nan"
    for index in (0, 2):
        losses, parameters = alone[index]
        assert stacked[index].failure is None and stacked[index].losses == pytest.approx(losses, rel=1e-5, abs=1e-6)
        trained = run_parameters(policy, index)
        assert all(torch.allclose(trained[name], value, rtol=1e-4, atol=1e-4) for name, value in parameters.items())


def test_only_runs_that_differ_in_beta_and_seed_stack(tiny_task):
    model = base_model(tiny_task)
    assert can_stack(model, configs(tiny_task, [(0.1, 0), (1.0, 5)]))
    longer = RunConfig(beta=0.1, seed=1, steps=7, pairs=48, batch_size=4, lr=3e-3, uses_kl=False)
    assert not can_stack(model, [*configs(tiny_task, [(0.1, 0)]), longer])
    with pytest.raises(ValueError, match="differ in beta and seed"):
        train_stacked(trusted_loss("dpo")[1], model, None, tiny_task.train, [*configs(tiny_task, [(0.1, 0)]), longer])


def test_the_stacked_job_trains_in_the_sandbox_child_as_its_single_runs_do(sandbox, tiny_task, dpo_source):
    runner = finetune_runner(sandbox, parse_spec(dpo_source, "dpo"), "sentiment", tiny_options(tiny_task))
    betas_seeds = [(0.1, 0), (0.3, 1)]
    runs = [run_config(runner.task, runner.spec, runner.budget, runner.options, beta, seed, "cpu", "fp32")
            for beta, seed in betas_seeds]
    together = train_many_in_sandbox(sandbox, runner.spec, runner.task, runs, runner.limits)
    for config, (report, parameters) in zip(runs, together):
        _, alone = train_in_sandbox(sandbox, runner.spec, runner.task, config, runner.limits)
        assert report["stacked"] == 2 and report["failure"] is None and report["isolation"]
        assert parameters is not None and set(parameters) == set(alone)
        assert all(torch.allclose(parameters[name], value, rtol=1e-4, atol=1e-4) for name, value in alone.items())


def test_run_many_scores_each_stacked_run_and_returns_a_divergence_in_its_place(sandbox, tiny_task, monkeypatch):
    monkeypatch.setattr("lossearch.evaluation.finetune.tier.stacks_runs", lambda *args: True)
    runner = finetune_runner(sandbox, parse_spec(FRAGILE, "fragile"), "sentiment", tiny_options(tiny_task))
    assert runner.stacks
    first, diverged, last = runner.run_many([(0.1, 0, {}), (3.0, 0, {}), (0.3, 1, {})])
    assert isinstance(diverged, CandidateError) and diverged.failure.kind == "nan"
    assert isinstance(first, dict) and isinstance(last, dict)
    assert (first["beta"], first["seed"], last["beta"], last["seed"]) == (0.1, 0, 0.3, 1)
    assert first["stacked"] == 3 and first["fitness"] is not None and first["kl"] > 0


def test_tuning_with_stacked_runs_trains_the_opening_trials_in_one_pass():
    calls: list[tuple[float, int]] = []
    passes: list[int] = []
    run = fake_run(calls)

    def run_many(betas_seeds):
        passes.append(len(betas_seeds))
        return [run(beta, seed, values) for beta, seed, values in betas_seeds]

    result = tune_hyperparameters(run, 0.1, trials=6, seeds=[0, 1], run_many=run_many)
    assert passes == [5 * 2, 2]  # the five opening betas at both seeds, then TPE's trial
    assert calls[:2] == [(0.1, 0), (0.1, 1)] and len(result["trials"]) == 6
    assert all(trial["state"] == "complete" for trial in result["trials"])
    assert result["fitness"] == max(trial["fitness"] for trial in result["trials"])
    sequential = tune_hyperparameters(fake_run([]), 0.1, trials=5, seeds=[0, 1])
    assert [t["beta"] for t in sequential["trials"]] == [t["beta"] for t in result["trials"][:5]]


def test_a_divergence_in_a_stacked_pass_fails_its_trial_and_any_other_failure_ends_the_study():
    def run_many(betas_seeds):
        return [CandidateError("nan", "diverged") if beta > 0.1 else {"fitness": beta} for beta, _, _ in betas_seeds]

    result = tune_hyperparameters(lambda beta, seed, values: {}, 0.1, trials=3, seeds=[0], run_many=run_many)
    assert [t["state"] for t in result["trials"]] == ["complete", "pruned", "complete"]
    assert result["beta"] == 0.1

    def times_out(betas_seeds):
        raise CandidateError("timeout", "too slow")

    with pytest.raises(CandidateError, match="timeout"):
        tune_hyperparameters(lambda beta, seed, values: {}, 0.1, trials=5, seeds=[0, 1], run_many=times_out)
