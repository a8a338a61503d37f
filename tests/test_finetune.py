"""The finetune tier: training step, beta tuning, the sandboxed run, user settings, the CLI."""

from __future__ import annotations

import json
import math
import subprocess
import time

import optuna
import pytest
import torch
import torch.nn.functional as F
from helpers import run_cli

from lossearch.contract import backpropagate, call_loss, load_loss, loss_input_gradients, parse_spec, read_spec
from lossearch.evaluation.cascade import evaluate
from lossearch.evaluation.finetune.config import BUDGETS, Budget, FinetuneOptions
from lossearch.evaluation.finetune.device import resolve_precision
from lossearch.evaluation.finetune.score import Scorer
from lossearch.evaluation.finetune.tier import curve_points, finetune_runner
from lossearch.evaluation.finetune.train import AdamW, learning_rate_scale, policy_inputs, train_policy
from lossearch.evaluation.tasks.lm import load_parameters, make_model
from lossearch.evaluation.tuning import tune_hyperparameters
from lossearch.failures import CandidateError
from lossearch.search.seeds import seed_path

TINY_BUDGET = Budget("tiny", steps=6, pairs=48, batch_size=4, trials=1, seeds=1, eval_prompts=16)


def trusted_loss(name: str):
    spec = read_spec(seed_path(name))
    function = load_loss(spec.source, spec.name)
    return spec, lambda tensors, beta: call_loss(function, spec, tensors, beta=beta)


def base_models(task):
    from safetensors.torch import load_file

    parameters = load_file(str(task.parameters_file))
    models = [make_model(task.model_config) for _ in range(2)]
    for model in models:
        load_parameters(model, parameters)
    return models


# -- budgets and training -------------------------------------------------------------------

def test_budgets_grow_and_are_validated():
    quick, standard, full = BUDGETS["quick"], BUDGETS["standard"], BUDGETS["full"]
    assert quick.trials >= 3 and quick.runs < standard.runs < full.runs  # three betas draw a reward–KL curve
    with pytest.raises(ValueError, match="steps"):
        Budget("broken", steps=0, pairs=1, batch_size=1, trials=1, seeds=1, eval_prompts=1)
    with pytest.raises(ValueError, match="budget"):
        FinetuneOptions(budget="huge")
    with pytest.raises(ValueError, match="data mode"):
        FinetuneOptions(data="streaming")


def test_learning_rate_warms_up_then_decays_to_a_tenth():
    scales = [learning_rate_scale(step, 100, 10) for step in range(100)]
    assert scales[0] == pytest.approx(0.1) and max(scales) == pytest.approx(1.0, abs=0.01)
    assert scales[-1] == pytest.approx(0.1, abs=0.01)


def test_our_training_step_gives_the_gradients_of_a_handwritten_dpo_step(tiny_task):
    """The candidate only sees detached copies; the chain rule done by hand must give
    exactly the parameter gradients of DPO written directly against the model."""
    spec, loss_fn = trusted_loss("dpo")
    ours, reference = base_models(tiny_task)
    theirs, _ = base_models(tiny_task)
    index = torch.arange(8)
    outputs, fixed = policy_inputs(ours, reference, tiny_task.train, index, uses_kl=False)
    _, grads = loss_input_gradients(loss_fn, outputs, fixed, beta=0.1)
    grads = {name: grad for name, grad in grads.items() if grad is not None}
    torch.autograd.backward([outputs[name] for name in grads], list(grads.values()))

    direct, fixed = policy_inputs(theirs, reference, tiny_task.train, index, uses_kl=False)
    margin = (direct["policy_chosen_logps"] - fixed["reference_chosen_logps"]) - \
             (direct["policy_rejected_logps"] - fixed["reference_rejected_logps"])
    (-F.logsigmoid(0.1 * margin)).mean().backward()
    for (name, a), (_, b) in zip(ours.named_parameters(), theirs.named_parameters()):
        assert torch.allclose(a.grad, b.grad, atol=1e-6), name


@pytest.mark.parametrize("fused", [False, True], ids=["torch-cpu-path", "torch-fused-kernel"])
def test_our_adamw_takes_torch_adamws_steps(fused):
    """Ours is public ops only; torch's CPU path and its private fused kernel both take its steps."""
    torch.manual_seed(0)
    ours = [torch.randn(5, 3, requires_grad=True), torch.randn(4, requires_grad=True)]
    theirs = [param.detach().clone().requires_grad_() for param in ours]
    optimizers = [AdamW(ours, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1),
                  torch.optim.AdamW(theirs, lr=1e-2, betas=(0.9, 0.95), weight_decay=0.1, fused=fused)]
    for step in range(8):
        grads = [torch.randn_like(param) for param in ours]
        for params in (ours, theirs):
            for param, grad in zip(params, grads):
                param.grad = None if step == 3 and param.dim() == 1 else grad.clone()  # a missing grad: skipped
        for optimizer in optimizers:
            set_lr(optimizer, 1e-2 / (step + 1))
            optimizer.step()
    for a, b in zip(ours, theirs):
        assert torch.allclose(a, b, atol=1e-7)


class TorchFusedAdamW:
    """torch.optim.AdamW(fused=True) with our AdamW's surface (a settable .lr), for train_policy."""

    def __init__(self, params, lr: float, **options) -> None:
        self.optimizer = torch.optim.AdamW(params, lr=lr, fused=True, **options)

    @property
    def lr(self) -> float:
        return self.optimizer.param_groups[0]["lr"]

    @lr.setter
    def lr(self, lr: float) -> None:
        self.optimizer.param_groups[0]["lr"] = lr

    def zero_grad(self) -> None:
        self.optimizer.zero_grad(set_to_none=True)

    def step(self) -> None:
        self.optimizer.step()


def test_training_with_our_adamw_gives_torchs_fused_kernels_losses(tiny_task, monkeypatch):
    """The fused kernel left the package (under 5% of a step: benchmarks/speed_tricks.py); a run
    with our public-ops AdamW trains as one with torch's fused kernel, within rounding."""
    from lossearch.evaluation.finetune.config import RunConfig

    _, loss_fn = trusted_loss("dpo")
    config = RunConfig(beta=0.1, seed=0, steps=20, pairs=48, batch_size=8, lr=3e-3, uses_kl=False)
    losses, policies = {}, {}
    for optimizer in (AdamW, TorchFusedAdamW):
        monkeypatch.setattr("lossearch.evaluation.finetune.train.AdamW", optimizer)
        policies[optimizer], _ = base_models(tiny_task)
        losses[optimizer] = train_policy(loss_fn, policies[optimizer], None, tiny_task.train, config)
    assert losses[AdamW] == pytest.approx(losses[TorchFusedAdamW], rel=1e-5, abs=1e-6)
    assert losses[AdamW][-1] < losses[AdamW][0]
    for ours, fused in zip(policies[AdamW].parameters(), policies[TorchFusedAdamW].parameters()):
        assert torch.allclose(ours, fused, rtol=1e-4, atol=1e-6)


BATCH_MEAN_CENTRED_DPO = """
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps, reference_rejected_logps, beta=0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * (margin - margin.mean()))
"""


def test_gradient_accumulation_trains_a_per_pair_loss_as_whole_batches_do(tiny_task):
    """Micro-batches whose gradients are summed give the whole batch's step (up to rounding), for any
    split, an uneven one included; a loss that reads its batch sees the micro-batches instead."""
    from lossearch.contract import parse_spec
    from lossearch.evaluation.finetune.config import RunConfig

    _, dpo = trusted_loss("dpo")
    centred_spec = parse_spec(BATCH_MEAN_CENTRED_DPO, "centred")
    centred_fn = load_loss(BATCH_MEAN_CENTRED_DPO, "centred")

    def centred(tensors, beta):
        return call_loss(centred_fn, centred_spec, tensors, beta=beta)

    trained = {}
    for name, loss_fn in (("dpo", dpo), ("centred", centred)):
        for accum in (1, 2, 3):
            config = RunConfig(beta=0.5, seed=0, steps=8, pairs=48, batch_size=8, lr=3e-3, uses_kl=False,
                               grad_accum=accum)
            policy, _ = base_models(tiny_task)
            losses = train_policy(loss_fn, policy, None, tiny_task.train, config)
            trained[name, accum] = (losses, [param.detach().clone() for param in policy.parameters()])
    for accum in (2, 3):
        assert trained["dpo", accum][0] == pytest.approx(trained["dpo", 1][0], rel=1e-4, abs=1e-6)
        for whole, split in zip(trained["dpo", 1][1], trained["dpo", accum][1]):
            assert torch.allclose(whole, split, rtol=1e-3, atol=1e-5)
    # centring on the micro-batch's mean is another loss than centring on the batch's
    moved = [(whole - split).abs().max() for whole, split in zip(trained["centred", 1][1], trained["centred", 2][1])]
    assert max(moved) > 1e-3


def varied_pairs(count: int, longest: int, seed: int = 0):
    """Pairs of random tokens whose prompt and response lengths vary independently (1 to `longest`)."""
    from lossearch.evaluation.tasks.data import PairSet
    from lossearch.evaluation.tasks.lm import make_sequences

    generator = torch.Generator().manual_seed(seed)

    def tokens(shortest: int) -> list[int]:
        return [1] * int(torch.randint(shortest, longest + 1, (1,), generator=generator))

    prompts = [tokens(1) for _ in range(count)]
    sides = [make_sequences(prompts, [tokens(2) for _ in prompts], pad_id=0) for _ in range(2)]
    return PairSet(*sides, torch.zeros(count), torch.zeros(count))


def test_grouping_by_length_batches_neighbours_in_a_seeded_random_order():
    """Grouped batches are narrower (a batch is as wide as its longest prompt plus its longest response)
    than the random draw's, the same for a seed, and come in a random order."""
    from lossearch.evaluation.finetune.train import length_grouped_batches

    pairs = varied_pairs(512, 40)

    def width(batch):  # the columns a step computes: both sides, cut to their rows' tokens
        return max(pairs.chosen.select(batch).ids.shape[1], pairs.rejected.select(batch).ids.shape[1])

    grouped = length_grouped_batches(pairs, 8, 16, torch.Generator().manual_seed(0))
    again = length_grouped_batches(pairs, 8, 16, torch.Generator().manual_seed(0))
    assert all(torch.equal(a, b) for a, b in zip(grouped, again)) and len(grouped) == 16
    assert all(batch.shape == (8,) and 0 <= int(batch.min()) and int(batch.max()) < len(pairs) for batch in grouped)
    random_batches = [torch.randint(0, len(pairs), (8,), generator=torch.Generator().manual_seed(seed))
                      for seed in range(16)]
    grouped_width = sum(map(width, grouped)) / 16
    assert grouped_width < 0.8 * sum(map(width, random_batches)) / 16
    # the batches come in a random order, not narrowest first
    widths = [width(batch) for batch in grouped]
    assert widths != sorted(widths)


def test_a_grouped_run_trains_and_its_flags_are_checked(tiny_task):
    from lossearch.evaluation.finetune.config import RunConfig

    _, loss_fn = trusted_loss("dpo")
    config = RunConfig(beta=0.5, seed=0, steps=20, pairs=48, batch_size=8, lr=3e-3, uses_kl=False,
                       group_by_length=True, grad_accum=2)
    policy, _ = base_models(tiny_task)
    losses = train_policy(loss_fn, policy, None, tiny_task.train, config)
    assert len(losses) == 20 and losses[-1] < losses[0]
    with pytest.raises(ValueError, match="grad-accum"):
        FinetuneOptions(grad_accum=0)
    with pytest.raises(ValueError, match="online"):
        FinetuneOptions(group_by_length=True, data="online")


def set_lr(optimizer, lr: float) -> None:
    """A schedule's step, set the way each optimizer takes it: our .lr, torch's param_groups."""
    if isinstance(optimizer, AdamW):
        optimizer.lr = lr
    else:
        optimizer.param_groups[0]["lr"] = lr


def test_backpropagate_gives_torch_backwards_gradients():
    weights = torch.randn(3, 4, requires_grad=True)
    outputs = [weights.sum(0), (weights ** 2).sum(1)]
    grads = [torch.randn(4), torch.randn(3)]
    backpropagate(outputs, grads)
    ours, weights.grad = weights.grad, None
    outputs = [weights.sum(0), (weights ** 2).sum(1)]
    torch.autograd.backward(outputs, grads)
    assert torch.equal(ours, weights.grad)


def test_auto_picks_bf16_only_where_the_cpu_computes_it_and_never_fp16(monkeypatch):
    for precision in ("fp32", "bf16", "fp16"):
        assert resolve_precision(precision, "cpu") == precision
    monkeypatch.setattr("lossearch.evaluation.finetune.device.native_bf16_cpu", lambda: False)
    assert resolve_precision("auto", "cpu") == "fp32"
    monkeypatch.setattr("lossearch.evaluation.finetune.device.native_bf16_cpu", lambda: True)
    assert resolve_precision("auto", "cpu") == "bf16"
    with pytest.raises(ValueError, match="precision"):
        FinetuneOptions(precision="fp8")


@pytest.mark.parametrize("precision", ["bf16", "fp16"])
def test_mixed_precision_training_follows_fp32_training(tiny_task, precision):
    """bf16, and fp16 with its loss scaling (for GPUs without bf16), train here too, as CPU autocast
    computes them, with float32 master weights, and follow fp32 training."""
    from lossearch.evaluation.finetune.config import RunConfig

    _, loss_fn = trusted_loss("dpo")
    losses = {}
    for arithmetic in ("fp32", precision):
        policy, reference = base_models(tiny_task)
        config = RunConfig(beta=0.1, seed=0, steps=20, pairs=48, batch_size=8, lr=3e-3, uses_kl=False,
                           precision=arithmetic)
        losses[arithmetic] = train_policy(loss_fn, policy, reference, tiny_task.train, config)
        assert all(param.dtype == torch.float32 for param in policy.parameters())
    assert losses["fp32"][0] == pytest.approx(0.6931, abs=1e-3)  # log 2: the policy starts at the reference
    assert losses[precision][0] == pytest.approx(losses["fp32"][0], abs=5e-3)
    assert sum(losses[precision][-5:]) / 5 == pytest.approx(sum(losses["fp32"][-5:]) / 5, abs=0.02)
    assert losses[precision][-1] < losses[precision][0]


def test_the_loss_scale_skips_an_overflowed_step_halves_and_grows_back():
    from lossearch.evaluation.finetune.train import LossScale

    weight = torch.nn.Parameter(torch.ones(3))
    scale = LossScale(True, factor=8.0, growth_interval=2)
    weight.grad = torch.tensor([8.0, 16.0, float("inf")])
    assert not scale.unscale([weight]) and scale.factor == 4.0  # skipped: the step must not be taken
    weight.grad = torch.tensor([4.0, 8.0, 12.0])
    assert scale.unscale([weight]) and torch.equal(weight.grad, torch.tensor([1.0, 2.0, 3.0]))
    weight.grad = torch.tensor([4.0, 8.0, 12.0])
    assert scale.unscale([weight]) and scale.factor == 8.0  # two good steps in a row: it grows
    off = LossScale(False)
    weight.grad = torch.tensor([float("nan"), 1.0, 1.0])
    assert off.factor == 1.0 and off.unscale([weight]) and torch.isnan(weight.grad[0])  # fp32/bf16: untouched


def test_the_scorers_kl_is_the_exact_kl_of_a_full_forward_pass(tiny_task):
    from safetensors.torch import load_file

    from lossearch.evaluation.tasks.lm import forward_logits, sequence_kl

    scorer = Scorer(tiny_task, eval_prompts=24, heldout_pairs=8)
    parameters = {name: value + 0.05 * torch.randn_like(value)
                  for name, value in load_file(str(tiny_task.parameters_file)).items()}
    policy = scorer._model(parameters)
    samples, step_logps = scorer.sample(policy, seed=0)
    with torch.no_grad():
        full = sequence_kl(forward_logits(policy, samples), forward_logits(scorer.reference, samples), samples)
    assert scorer.kl(samples, step_logps) == pytest.approx(float(full.mean()), rel=1e-4)
    assert len(scorer.heldout) == 8
    assert scorer.kl(*scorer.sample(scorer.reference, seed=0)) == pytest.approx(0.0, abs=1e-5)


def test_reference_rewards_are_drawn_once_per_artifact_and_seed(tiny_task):
    import dataclasses

    from lossearch.evaluation.finetune.score import ReferenceRewardCache

    cache_file = tiny_task.pairs_file.parent / "reference_rewards.json"
    cache_file.unlink(missing_ok=True)
    first = Scorer(tiny_task, eval_prompts=12)
    drawn = first.reference_reward(seed=5)
    assert drawn == first.mean_reward(first.sample(first.reference, seed=5)[0])  # what it caches is the draw
    table = json.loads(cache_file.read_text())
    assert list(table.values()) == [drawn] and "seed 5, 12 prompts" in next(iter(table))
    # a later scorer reads it instead of sampling: a planted value comes back
    cache_file.write_text(json.dumps({key: 0.125 for key in table}))
    second = Scorer(tiny_task, eval_prompts=12)
    assert second.reference_reward(seed=5) == 0.125
    cache_file.write_text("{not json")  # a broken file is a miss, then rewritten
    assert ReferenceRewardCache.of(tiny_task, 12, "cpu").get(5) is None
    user_task = dataclasses.replace(tiny_task, name="user")  # a user's reward is their code: never cached
    assert ReferenceRewardCache.of(user_task, 12, "cpu") is None
    cache_file.unlink()


def test_kl_inputs_vanish_at_the_reference_and_only_kl_losses_pay_for_them(tiny_task):
    policy, reference = base_models(tiny_task)
    outputs, _ = policy_inputs(policy, reference, tiny_task.train, torch.arange(4), uses_kl=True)
    assert torch.allclose(outputs["chosen_kl"], torch.zeros(4), atol=1e-5)
    outputs, _ = policy_inputs(policy, reference, tiny_task.train, torch.arange(4), uses_kl=False)
    assert "chosen_kl" not in outputs


def test_token_inputs_sum_to_the_sequence_inputs_and_only_token_losses_pay_for_them(tiny_task):
    policy, reference = base_models(tiny_task)
    index = torch.arange(6)
    outputs, fixed = policy_inputs(policy, reference, tiny_task.train, index, uses_kl=False, uses_tokens=True)
    for side in ("chosen", "rejected"):
        tokens, mask = outputs[f"policy_{side}_token_logps"], fixed[f"{side}_mask"]  # (B, T) each
        assert tokens.requires_grad and tokens.shape == mask.shape == fixed[f"reference_{side}_token_logps"].shape
        torch.testing.assert_close(tokens.sum(-1), outputs[f"policy_{side}_logps"])
        assert torch.equal(mask.sum(-1), fixed[f"{side}_lengths"]) and bool((tokens[mask == 0] == 0).all())
        # the reference's, run over the batch, are its cached log-probs token by token (policy = reference here)
        torch.testing.assert_close(fixed[f"reference_{side}_token_logps"].sum(-1), fixed[f"reference_{side}_logps"],
                                   atol=1e-4, rtol=1e-5)
        torch.testing.assert_close(tokens.detach(), fixed[f"reference_{side}_token_logps"], atol=1e-5, rtol=1e-5)
    outputs, fixed = policy_inputs(policy, None, tiny_task.train, index, uses_kl=False)
    assert "policy_chosen_token_logps" not in outputs and "chosen_mask" not in fixed


def test_a_loss_reading_tokens_trains_a_users_transformers_model(sandbox, tmp_path):
    from test_tasks import save_tiny_user_model, write_user_dataset

    from lossearch.evaluation.tasks.user import UserSetting

    save_tiny_user_model(tmp_path / "model")
    write_user_dataset(tmp_path / "pairs.jsonl")
    options = FinetuneOptions(budget=TINY_BUDGET, device="cpu", cache_dir=str(tmp_path / "cache"),
                              setting=UserSetting(tmp_path / "model", tmp_path / "pairs.jsonl"))
    evaluation = evaluate(seed_path("ld_dpo").read_text(), "ld_dpo", "finetune", sandbox=sandbox, task="user",
                          finetune=options)
    assert evaluation.ok, evaluation.error


def test_a_loss_that_ignores_the_policy_is_refused(tiny_task):
    policy, reference = base_models(tiny_task)
    outputs, fixed = policy_inputs(policy, reference, tiny_task.train, torch.arange(4), uses_kl=False)
    with pytest.raises(CandidateError) as caught:
        loss_input_gradients(lambda tensors, beta: tensors["reference_chosen_logps"] * 0, outputs, fixed, 0.1)
    assert caught.value.failure.kind == "no_grad"


# -- beta tuning ----------------------------------------------------------------------------

def fake_run(calls):
    """A run whose fitness peaks at beta = 0.3 and is the same for every seed."""
    def run(beta, seed, values=None):
        calls.append((beta, seed))
        return {"fitness": -abs(torch.log(torch.tensor(beta / 0.3)).item()), "reward": 0.5, "kl": 1.0}
    return run


def test_tuning_tries_the_default_first_and_keeps_the_best_trial():
    calls = []
    result = tune_hyperparameters(fake_run(calls), 0.1, trials=6, seeds=[0, 1])
    assert calls[0] == (0.1, 0) and calls[1] == (0.1, 1)
    assert len(result["trials"]) == 6
    assert all(0.01 <= trial["beta"] <= 1.0 for trial in result["trials"])
    assert result["fitness"] == max(t["fitness"] for t in result["trials"] if t["state"] == "complete")
    assert result["fitness_std"] == 0.0 and result["reward"] == 0.5


def test_tuning_prunes_trials_that_trail_after_their_first_seed():
    calls = []
    result = tune_hyperparameters(fake_run(calls), 0.1, trials=10, seeds=[0, 1, 2])
    pruned = [trial for trial in result["trials"] if trial["state"] == "pruned"]
    assert pruned and len(calls) < 10 * 3


def test_a_divergence_fails_one_trial_and_any_other_failure_ends_the_study():
    def diverges_at_large_beta(beta, seed, values):
        if beta > 0.1:
            raise CandidateError("nan", "diverged")
        return {"fitness": beta}

    result = tune_hyperparameters(diverges_at_large_beta, 0.1, trials=5, seeds=[0])
    assert result["beta"] <= 0.1 and any(t["state"] == "pruned" for t in result["trials"]) or \
        all(t["state"] == "complete" for t in result["trials"])
    calls = []

    def times_out(beta, seed, values):
        calls.append(beta)
        raise CandidateError("timeout", "too slow")

    with pytest.raises(CandidateError, match="timeout"):
        tune_hyperparameters(times_out, 0.1, trials=5, seeds=[0, 1])
    assert len(calls) == 1


def test_a_study_in_a_database_resumes_without_repeating_trials(tmp_path):
    storage = f"sqlite:///{tmp_path / 'campaign.db'}"
    calls = []
    first = tune_hyperparameters(fake_run(calls), 0.1, trials=3, seeds=[0], storage=storage, study_name="cand-1")
    assert len(calls) == 3
    again = tune_hyperparameters(fake_run(calls), 0.1, trials=3, seeds=[0], storage=storage, study_name="cand-1")
    assert len(calls) == 3 and again["beta"] == first["beta"]
    tune_hyperparameters(fake_run(calls), 0.1, trials=4, seeds=[0], storage=storage, study_name="cand-1")
    assert len(calls) == 4
    study = optuna.load_study(study_name="cand-1", storage=storage)
    assert study.trials[0].intermediate_values == {0: pytest.approx(study.trials[0].value)}



def test_trials_after_the_opening_also_tune_the_other_hyperparameters():
    seen: list[tuple[float, dict]] = []

    def run(beta, seed, values):
        seen.append((beta, dict(values)))
        return {"fitness": -abs(math.log(beta / 0.3)) - abs(math.log(values["gamma"] / 1.2))}

    result = tune_hyperparameters(run, 0.1, trials=9, seeds=[0], hyperparameters={"beta": 0.1, "gamma": 0.5,
                                                                                     "offset": 0.0, "shift": -2.0})
    # the opening ladder keeps them at their defaults; a zero default has no scale and is never drawn
    assert [values for _, values in seen[:5]] == [{"gamma": 0.5, "shift": -2.0}] * 5
    later = [values for _, values in seen[5:]]
    assert all(0.5 / 4 <= values["gamma"] <= 0.5 * 4 and -8.0 <= values["shift"] <= -0.5 for values in later)
    assert any(values["gamma"] != 0.5 for values in later)
    best = max((t for t in result["trials"] if t["state"] == "complete"), key=lambda t: t["fitness"])
    assert result["hyperparameters"] == best["hyperparameters"] and set(best["hyperparameters"]) == {"gamma", "shift"}


def test_a_loss_without_other_hyperparameters_tunes_beta_alone():
    calls: list = []
    result = tune_hyperparameters(fake_run(calls), 0.1, trials=7, seeds=[0], hyperparameters={"beta": 0.1})
    assert result["hyperparameters"] == {} and all(trial["hyperparameters"] == {} for trial in result["trials"])


# -- the tier, in the sandbox ---------------------------------------------------------------

def tiny_options(task, **fields) -> FinetuneOptions:
    return FinetuneOptions(**{"budget": TINY_BUDGET, "task_data": task, "device": "cpu", **fields})


SCALED = ("import torch.nn.functional as F\n"
          "def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1, scale: float = 1.0):\n"
          "    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)) * scale\n")


def test_a_run_trains_the_loss_at_the_hyperparameters_tuning_chose(sandbox, tiny_task):
    runner = finetune_runner(sandbox, parse_spec(SCALED, "scaled"), "sentiment",
                             tiny_options(tiny_task, precision="fp32"))
    default, tripled = runner.run_many([(0.1, 0, {}), (0.1, 0, {"scale": 3.0})])
    # AdamW's step does not see a constant factor on the loss: the same training, three times the loss
    assert tripled["final_loss"] == pytest.approx(3 * default["final_loss"], rel=1e-3)
    assert tripled["hyperparameters"] == {"scale": 3.0} and "hyperparameters" not in default
    assert curve_points([default, tripled]) == [{"beta": 0.1}, {"beta": 0.1, "hyperparameters": {"scale": 3.0}}]


def test_the_finetune_tier_trains_in_the_sandbox_and_scores_in_the_parent(sandbox, tiny_task, dpo_source):
    evaluation = evaluate(dpo_source, "dpo", "finetune", sandbox=sandbox, finetune=tiny_options(tiny_task))
    assert evaluation.ok, evaluation.error
    metrics = evaluation.metrics["finetune"]
    assert set(metrics) >= {"reward", "reference_reward", "kl", "pref_acc", "margin", "fitness", "beta",
                            "fitness_std", "trials", "runs", "artifact", "budget", "seeds", "kl_budget"}
    assert metrics["kl"] > 0 and 0 <= metrics["pref_acc"] <= 1 and metrics["beta"] == 0.1
    assert -1 <= metrics["reward"] <= 1 and metrics["runs"][0]["final_loss"] > 0
    assert evaluation.metrics["bandit"]["fitness"] is not None  # the cascade climbed through bandit
    # each run says which jail it trained in, as the sanity tier's child does (and so on a GPU too)
    assert metrics["runs"][0]["isolation"] == evaluation.metrics["sanity"]["isolation"]


def test_the_tier_trains_with_accumulation_and_grouping_in_the_sandbox_and_records_them(sandbox, tiny_task,
                                                                                        dpo_source):
    options = tiny_options(tiny_task, grad_accum=2, group_by_length=True)
    evaluation = evaluate(dpo_source, "dpo", "finetune", sandbox=sandbox, finetune=options)
    assert evaluation.ok, evaluation.error
    metrics = evaluation.metrics["finetune"]
    assert metrics["grad_accum"] == 2 and metrics["group_by_length"] is True
    assert metrics["runs"][0]["final_loss"] > 0
    fp16 = evaluate(dpo_source, "dpo", "finetune", sandbox=sandbox, finetune=tiny_options(tiny_task, precision="fp16"))
    assert fp16.ok, fp16.error  # the jailed child trains in fp16 too (GPUs without bf16)
    assert fp16.metrics["finetune"]["precision"] == "fp16"
    plain = evaluate(dpo_source, "dpo", "finetune", sandbox=sandbox, finetune=tiny_options(tiny_task))
    assert plain.metrics["finetune"]["grad_accum"] == 1 and plain.metrics["finetune"]["group_by_length"] is False
    # grouping draws other batches: another run than the plain one, from the same seed
    assert plain.metrics["finetune"]["runs"][0]["final_loss"] != metrics["runs"][0]["final_loss"]
    too_many = tiny_options(tiny_task, grad_accum=TINY_BUDGET.batch_size + 1)
    with pytest.raises(ValueError, match="more micro-batches than pairs: use at most 4"):  # ours, one line
        evaluate(dpo_source, "dpo", "finetune", sandbox=sandbox, finetune=too_many)


def test_a_kl_loss_trains_and_a_loss_that_breaks_only_in_training_fails_there(sandbox, tiny_task, tmp_path):
    tdpo = seed_path("tdpo").read_text()
    assert evaluate(tdpo, "tdpo", "finetune", sandbox=sandbox, finetune=tiny_options(tiny_task)).ok
    # the sanity tier calls the loss on 8 pairs; training batches hold 4
    picky = ("import torch.nn.functional as F\n"
             "def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):\n"
             "    if policy_chosen_logps.shape[0] == 4:\n"
             "        return policy_chosen_logps.view(2, 2)\n"
             "    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))\n")
    evaluation = evaluate(picky, "picky", "finetune", sandbox=sandbox, finetune=tiny_options(tiny_task))
    assert (evaluation.status, evaluation.tier, evaluation.error.kind) == ("failed", "finetune", "shape")


def test_a_loss_that_breaks_at_the_bandit_stops_the_finetune_running_beside_it(sandbox, tiny_task):
    # the bandit trains on 256 pairs a step; the finetune tier starts beside it and is cancelled
    bandit_only_nan = ("import math\nimport torch.nn.functional as F\n"
                       "def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):\n"
                       "    margin = policy_chosen_logps - policy_rejected_logps\n"
                       "    if policy_chosen_logps.shape[0] == 256:\n"
                       "        return margin * math.nan\n"
                       "    return -F.logsigmoid(beta * margin)\n")
    slow = Budget("slow", steps=30_000, pairs=48, batch_size=4, trials=1, seeds=1, eval_prompts=16)
    started = time.monotonic()
    evaluation = evaluate(bandit_only_nan, "bandit_only_nan", "finetune", sandbox=sandbox,
                          finetune=tiny_options(tiny_task, budget=slow))
    assert (evaluation.status, evaluation.tier, evaluation.error.kind) == ("failed", "bandit", "nan")
    # 30k steps (minutes) were not trained
    assert "finetune" not in evaluation.metrics and time.monotonic() - started < 60
    assert evaluate(seed_path("dpo").read_text(), "dpo", "bandit", sandbox=sandbox).ok  # the sandbox takes jobs again


def test_online_mode_samples_and_labels_fresh_pairs(sandbox, tiny_task, dpo_source):
    budget = Budget("tiny-online", steps=4, pairs=48, batch_size=4, trials=1, seeds=1, eval_prompts=16,
                    online_every=2)
    evaluation = evaluate(dpo_source, "dpo", "finetune", sandbox=sandbox,
                          finetune=tiny_options(tiny_task, budget=budget, data="online"))
    assert evaluation.ok, evaluation.error
    assert evaluation.metrics["finetune"]["data"] == "online"


# progress and the running margin statistics must be plain 0-dim values in range, the scores (B,)
STATE_READER = ("import torch\nimport torch.nn.functional as F\n"
                "def loss(policy_chosen_logps, policy_rejected_logps, reference_chosen_logps,\n"
                "         reference_rejected_logps, chosen_scores, rejected_scores, progress, running_margin_mean,\n"
                "         running_margin_std, beta: float = 0.1):\n"
                "    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps\n"
                "                                                                - reference_rejected_logps)\n"
                "    ok = (progress >= 0) & (progress < 1) & (running_margin_std >= 0) & (progress.dim() == 0)\n"
                "    ok = ok & (chosen_scores.shape == margin.shape) & torch.isfinite(running_margin_mean)\n"
                "    return -F.logsigmoid(beta * (1 + progress) * margin) / ok.float()\n")


@pytest.mark.parametrize("data", ["offline", "online"])
def test_losses_reading_scores_the_runs_state_and_tokens_train_in_the_sandbox(sandbox, tiny_task, data):
    budget = Budget("tiny-state", steps=4, pairs=48, batch_size=4, trials=1, seeds=1, eval_prompts=16,
                    online_every=2)
    options = tiny_options(tiny_task, budget=budget, data=data)
    for name, source in (("odpo", seed_path("odpo").read_text()), ("beta_dpo", seed_path("beta_dpo").read_text()),
                         ("dpo_shift_linear", seed_path("dpo_shift_linear").read_text()),
                         ("state_reader", STATE_READER), ("ld_dpo", seed_path("ld_dpo").read_text()),
                         ("sampo", seed_path("sampo").read_text())):
        evaluation = evaluate(source, name, "finetune", sandbox=sandbox, finetune=options)
        assert evaluation.ok, (name, evaluation.error)


def test_a_loss_reading_scores_fails_in_one_line_on_user_data_without_them(sandbox, tmp_path):
    from test_tasks import save_tiny_user_model, write_user_dataset

    from lossearch.evaluation.tasks.user import UserSetting

    save_tiny_user_model(tmp_path / "model")
    odpo = seed_path("odpo").read_text()
    for scored in (False, True):
        write_user_dataset(tmp_path / f"pairs{scored}.jsonl", scored=scored)
        options = FinetuneOptions(budget=TINY_BUDGET, device="cpu", cache_dir=str(tmp_path / "cache"),
                                  setting=UserSetting(tmp_path / "model", tmp_path / f"pairs{scored}.jsonl"))
        evaluation = evaluate(odpo, "odpo", "finetune", sandbox=sandbox, task="user", finetune=options)
        if scored:
            assert evaluation.ok, evaluation.error
        else:
            assert (evaluation.status, evaluation.tier, evaluation.error.kind) == ("failed", "finetune", "policy")
            assert "chosen_score" in evaluation.error.message and "\n" not in evaluation.error.message


def test_sandbox_outputs_are_plain_files_only(tmp_path):
    from lossearch.sandbox.local import _read_outputs

    (tmp_path / "policy.safetensors").write_bytes(b"x" * 10)
    (tmp_path / "secret").write_text("secret")
    (tmp_path / "link.safetensors").symlink_to(tmp_path / "secret")
    (tmp_path / "big.safetensors").write_bytes(b"x" * 100)
    found = _read_outputs(str(tmp_path), ["policy.safetensors", "link.safetensors", "big.safetensors", "none"], 50)
    assert found == {"policy.safetensors": b"x" * 10}
    with pytest.raises(ValueError):
        _read_outputs(str(tmp_path), ["../etc/passwd"], 50)


# -- the user's own model and pairs ---------------------------------------------------------

def test_a_user_model_is_scored_by_heldout_preferences_or_by_their_reward(sandbox, tmp_path, dpo_source):
    from test_tasks import save_tiny_user_model, write_user_dataset

    from lossearch.evaluation.tasks.user import UserSetting

    save_tiny_user_model(tmp_path / "model")
    write_user_dataset(tmp_path / "pairs.jsonl")
    reward = tmp_path / "reward.py"
    reward.write_text("def short(prompt, response):\n    return -len(response.split())\n")
    options = FinetuneOptions(budget=TINY_BUDGET, device="cpu", cache_dir=str(tmp_path / "cache"),
                              setting=UserSetting(tmp_path / "model", tmp_path / "pairs.jsonl"))
    evaluation = evaluate(dpo_source, "dpo", "finetune", sandbox=sandbox, task="user", finetune=options)
    assert evaluation.ok, evaluation.error
    metrics = evaluation.metrics["finetune"]
    assert metrics["reward"] is None and metrics["fitness"] == metrics["pref_acc"]
    assert metrics["margin"] is not None and metrics["task"] == "user"
    options = FinetuneOptions(budget=TINY_BUDGET, device="cpu", cache_dir=str(tmp_path / "cache"),
                              setting=UserSetting(tmp_path / "model", tmp_path / "pairs.jsonl", f"{reward}:short"))
    metrics = evaluate(dpo_source, "dpo", "finetune", sandbox=sandbox, task="user",
                       finetune=options).metrics["finetune"]
    assert metrics["reward"] <= 0 and metrics["fitness"] == metrics["reward"]


# -- the real thing: the sentiment task at the quick budget ----------------------------------

@pytest.mark.slow
@pytest.mark.timeout(900)  # the first test to ask builds the real base model (about three minutes)
def test_dpo_beats_the_reference_on_sentiment_at_quick(sandbox, sentiment_task, dpo_source):
    options = FinetuneOptions(budget="quick", task_data=sentiment_task)
    evaluation = evaluate(dpo_source, "dpo", "finetune", sandbox=sandbox, finetune=options)
    assert evaluation.ok, evaluation.error
    metrics = evaluation.metrics["finetune"]
    assert metrics["reward"] > metrics["reference_reward"] + 0.1
    assert metrics["pref_acc"] > 0.6
    # the fitness is read at the KL budget off the curve of the three betas' runs: a reward some
    # mixture of them reaches, so between the least and the greatest of their rewards (or penalized)
    runs = [run for trial in metrics["trials"] for run in trial["runs"]]
    assert len(metrics["curve_betas"]) == 3 == len(runs)
    assert min(run["fitness"] for run in runs) <= metrics["fitness"] <= max(run["reward"] for run in runs)


def lossearch(*args: str, cwd, env=None) -> subprocess.CompletedProcess:
    return run_cli(*args, cwd=cwd, timeout=300, env=env)


@pytest.mark.slow
@pytest.mark.timeout(900)
def test_eval_finetune_from_the_command_line(sentiment_task, real_cache, tmp_path):
    done = lossearch("eval", str(seed_path("dpo")), "--tier", "finetune", "--task", "sentiment", "--budget", "quick",
                     "--trials", "2", "--json", cwd=tmp_path, env={"LOSSEARCH_CACHE": str(real_cache)})
    assert done.returncode == 0, done.stderr
    result = json.loads(done.stdout)
    assert result["tier"] == "finetune" and result["metrics"]["finetune"]["budget"]["name"] == "quick"
    assert [trial["beta"] for trial in result["metrics"]["finetune"]["trials"]] == pytest.approx([0.1, 0.1 * 10 ** 0.5])
    done = lossearch("tasks", "--json", cwd=tmp_path, env={"LOSSEARCH_CACHE": str(real_cache)})
    assert done.returncode == 0, done.stderr
    listing = json.loads(done.stdout)
    assert [task["name"] for task in listing["tasks"]] == ["sentiment", "sort", "length", "noisy"]
    assert listing["tasks"][0]["built"] == {"world": True, "pairs": True}
    assert {budget["name"] for budget in listing["budgets"]} == {"quick", "standard", "full"}


@pytest.mark.parametrize("args", [
    ("--budget", "quick"),  # finetune flags without --tier finetune
    ("--trials", "1"),
    ("--tier", "finetune", "--trials", "0"),
    ("--tier", "finetune", "--model", "somewhere"),  # --model without --dataset
    ("--tier", "finetune", "--reward", "r.py:f"),  # --reward without --model
    ("--tier", "finetune", "--model", "m", "--dataset", "d.jsonl", "--data", "online"),
    ("--tier", "finetune", "--device", "cuda:7") if not torch.cuda.is_available() else ("--budget", "quick"),
    ("--tier", "finetune", "--budget", "huge"),
    ("--precision", "bf16"),  # without --tier finetune
    ("--tier", "finetune", "--precision", "fp8"),
    ("--grad-accum", "2"),  # without --tier finetune
    ("--tier", "finetune", "--group-by-length", "--data", "online"),
])
def test_finetune_usage_errors_are_one_line_and_exit_2(tmp_path, args):
    done = lossearch("eval", str(seed_path("dpo")), *args, cwd=tmp_path)
    assert done.returncode == 2, done.stdout + done.stderr
    assert done.stderr.strip().count("\n") == 0 and done.stderr.startswith("error: ")


def test_a_missing_user_model_folder_is_a_usage_error(tmp_path):
    (tmp_path / "pairs.jsonl").write_text('{"prompt": "a", "chosen": "b", "rejected": "c"}\n')
    done = lossearch("eval", str(seed_path("dpo")), "--tier", "finetune", "--model", str(tmp_path / "none"),
                     "--dataset", str(tmp_path / "pairs.jsonl"), cwd=tmp_path)
    assert done.returncode == 2 and "no such folder" in done.stderr
    assert done.stderr.strip().count("\n") == 0
