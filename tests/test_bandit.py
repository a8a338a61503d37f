"""The bandit tier: tasks, training with real seed losses, exact scores, the train/score split."""

from __future__ import annotations

import math

import pytest
import torch
import torch.nn.functional as F

from lossearch.choices import TASK_NAMES
from lossearch.contract import call_loss, load_loss, read_spec
from lossearch.evaluation.bandit.score import evaluate_bandit, score_bandit, score_bandit_grid
from lossearch.evaluation.bandit.task import BanditConfig, make_bandit_task, make_training_task
from lossearch.evaluation.bandit.train import train_bandit, train_bandit_grid
from lossearch.failures import CandidateError
from lossearch.search.seeds import seed_path


def seed_loss(name: str):
    """A seed loss wrapped the way trusted code wraps contract.call_loss for the bandit."""
    spec = read_spec(seed_path(name))
    function = load_loss(spec.source, spec.name)
    return lambda tensors, beta: call_loss(function, spec, tensors, beta=beta)


def implicit_margin(tensors):
    return ((tensors["policy_chosen_logps"] - tensors["reference_chosen_logps"])
            - (tensors["policy_rejected_logps"] - tensors["reference_rejected_logps"]))


def length_credit_dpo(tensors, beta, alpha=0.05):
    # DPO whose implicit reward gets alpha * length for free, so the policy need not learn length
    length_gap = tensors["chosen_lengths"] - tensors["rejected_lengths"]
    return -F.logsigmoid(beta * implicit_margin(tensors) + alpha * length_gap)


@pytest.fixture(scope="module")
def dpo():
    return seed_loss("dpo")


@pytest.fixture(scope="module")
def dpo_sentiment(dpo):
    return evaluate_bandit(dpo, "sentiment", seed=0)


# -- tasks --------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TASK_NAMES)
def test_every_task_builds_with_valid_pairs(name):
    config = BanditConfig()
    task = make_bandit_task(name, seed=0, config=config)
    P, R = config.n_prompts, config.n_responses
    assert task.reference_logits.shape == task.rewards.shape == task.lengths.shape == (P, R)
    assert task.train_prompts.shape == (P * config.pairs_per_prompt,)
    assert bool((task.train_chosen != task.train_rejected).all())
    assert bool((task.heldout_chosen != task.heldout_rejected).all())
    better = task.rewards[task.heldout_prompts, task.heldout_chosen]
    assert bool((better > task.rewards[task.heldout_prompts, task.heldout_rejected]).all())
    assert 1 <= task.lengths.min() and task.lengths.max() <= config.max_length
    assert task.kl_budget > 0


def test_tasks_are_deterministic_given_the_seed():
    first, again, other = (make_bandit_task("noisy", seed) for seed in (3, 3, 4))
    assert torch.equal(first.reference_logits, again.reference_logits)
    assert torch.equal(first.train_chosen, again.train_chosen)
    assert not torch.equal(first.reference_logits, other.reference_logits)


def test_noisy_is_sentiment_with_a_third_of_the_labels_flipped():
    sentiment, noisy = make_bandit_task("sentiment"), make_bandit_task("noisy")
    assert torch.equal(sentiment.rewards, noisy.rewards)
    flipped = int((sentiment.train_chosen != noisy.train_chosen).sum())
    assert flipped == round(sentiment.train_chosen.shape[0] / 3)


def test_length_labels_like_long_answers_that_the_oracle_dislikes():
    task = make_bandit_task("length")
    chosen_length = task.lengths[task.train_prompts, task.train_chosen].mean()
    rejected_length = task.lengths[task.train_prompts, task.train_rejected].mean()
    assert chosen_length > rejected_length + 1  # the labels prefer longer answers
    better_length = task.lengths[task.heldout_prompts, task.heldout_chosen].mean()
    worse_length = task.lengths[task.heldout_prompts, task.heldout_rejected].mean()
    assert better_length < worse_length  # the oracle prefers shorter ones


def test_sort_reward_is_verifiable_with_a_correct_answer_per_prompt():
    task = make_bandit_task("sort")
    assert {round(value, 6) for value in task.rewards.unique().tolist()} <= {0.0, 0.2, 0.4, 1.0}
    assert bool((task.rewards.max(-1).values == 1.0).all())


@pytest.mark.parametrize("bad", [dict(steps=0), dict(n_responses=1), dict(lr=0.0),
                                 dict(betas=()), dict(betas=(0.1, -1.0)), dict(betas=(1.0, 1.0))])
def test_config_rejects_bad_values(bad):
    with pytest.raises(ValueError):
        BanditConfig(**bad)


def test_unknown_task_is_refused():
    with pytest.raises(ValueError, match="unknown bandit task"):
        make_bandit_task("poetry")


# -- scores ------------------------------------------------------------------------------------

@pytest.mark.parametrize("name", TASK_NAMES)
def test_reference_policy_scores_zero_kl_and_the_reference_reward(name):
    task = make_bandit_task(name)
    scores = score_bandit(task, task.reference_logits)
    assert scores["kl"] == 0.0
    assert scores["reward"] == scores["reference_reward"] == scores["fitness"]
    assert scores["pref_acc"] == 0.5  # every held-out margin is zero: ties count half


def test_scores_are_exact_on_a_hand_computed_policy():
    task = make_bandit_task("sentiment", config=BanditConfig(n_prompts=2, n_responses=2))
    logits = torch.tensor([[0.0, math.log(3.0)], [0.0, 0.0]])  # pi = (1/4, 3/4) and (1/2, 1/2)
    pi = torch.tensor([[0.25, 0.75], [0.5, 0.5]], dtype=torch.float64)
    ref = task.reference_logits.double().softmax(-1)
    scores = score_bandit(task, logits)
    assert scores["reward"] == pytest.approx(float((pi * task.rewards).sum(-1).mean()))
    assert scores["kl"] == pytest.approx(float((pi * (pi / ref).log()).sum(-1).mean()))


def test_score_accepts_json_lists_and_refuses_broken_logits():
    task = make_bandit_task("sentiment")
    noise = torch.randn(task.reference_logits.shape, generator=torch.Generator().manual_seed(0))
    logits = task.reference_logits + 0.1 * noise
    assert score_bandit(task, logits.tolist()) == score_bandit(task, logits)
    with pytest.raises(CandidateError) as error:
        score_bandit(task, logits[:, :2])
    assert error.value.failure.kind == "shape"
    logits[0, 0] = float("nan")
    with pytest.raises(CandidateError) as error:
        score_bandit(task, logits)
    assert error.value.failure.kind == "nan"


# -- training with real losses -----------------------------------------------------------------

def test_evaluation_is_deterministic(dpo, dpo_sentiment):
    assert evaluate_bandit(dpo, "sentiment", seed=0) == dpo_sentiment
    assert evaluate_bandit(dpo, "sentiment", seed=1)["fitness"] != dpo_sentiment["fitness"]


def test_dpo_beats_the_reference_within_the_budget(dpo_sentiment):
    result = dpo_sentiment
    assert result["fitness"] > result["reference_reward"] + 0.2
    assert result["kl"] <= result["kl_budget"]
    assert result["pref_acc"] > 0.6
    assert result["beta"] in BanditConfig().betas
    assert [row["beta"] for row in result["per_beta"]] == list(BanditConfig().betas)


@pytest.mark.parametrize("name", TASK_NAMES)
def test_dpo_improves_on_the_reference_on_every_task(dpo, name):
    result = evaluate_bandit(dpo, name, seed=0)
    assert result["fitness"] > result["reference_reward"] + 0.1


def test_losses_get_different_fitness(dpo_sentiment):
    ipo = evaluate_bandit(seed_loss("ipo"), "sentiment", seed=0)
    hinge = evaluate_bandit(seed_loss("hinge"), "sentiment", seed=0)
    assert abs(dpo_sentiment["fitness"] - ipo["fitness"]) > 0.02
    assert ipo["fitness"] > ipo["reference_reward"] and hinge["fitness"] > hinge["reference_reward"]
    assert len({round(result["fitness"], 3) for result in (dpo_sentiment, ipo, hinge)}) == 3  # no ties


def test_length_task_rewards_losses_that_do_not_learn_length(dpo):
    dpo_length = evaluate_bandit(dpo, "length", seed=0)["fitness"]
    assert evaluate_bandit(length_credit_dpo, "length", seed=0)["fitness"] > dpo_length + 0.015
    # on a task where length means nothing, the same change neither helps nor hurts much
    dpo_sentiment = evaluate_bandit(dpo, "sentiment", seed=0)["fitness"]
    assert evaluate_bandit(length_credit_dpo, "sentiment", seed=0)["fitness"] == pytest.approx(dpo_sentiment, abs=0.01)


def test_loss_that_prefers_the_rejected_response_scores_below_the_reference():
    def reversed_dpo(tensors, beta):
        return -F.logsigmoid(-beta * implicit_margin(tensors))

    result = evaluate_bandit(reversed_dpo, "sort", seed=0)
    assert result["fitness"] < result["reference_reward"] - 0.05
    assert result["pref_acc"] < 0.4


def loser_mask(task):
    """(P, R) True where a response is rejected in some training pair and chosen in none."""
    chosen = torch.zeros_like(task.rewards, dtype=torch.bool)
    rejected = torch.zeros_like(task.rewards, dtype=torch.bool)
    chosen[task.train_prompts, task.train_chosen] = True
    rejected[task.train_prompts, task.train_rejected] = True
    return rejected & ~chosen


def test_dpo_overfits_deterministic_preferences_and_ipo_does_not(dpo):
    # The IPO paper's argument (Azar et al., 2023, §4.2): when the same response always wins,
    # DPO's optimum puts zero mass on the loser whatever beta is, while IPO's squared loss
    # stops at a margin of 1/(2 beta). Lengths are all 1 so IPO's per-token division is a no-op.
    config = BanditConfig(deterministic_labels=True, max_length=1, steps=1000)
    task = make_bandit_task("sentiment", seed=0, config=config)
    rewards = task.rewards[task.train_prompts]  # (N, R)
    assert bool((rewards.gather(1, task.train_chosen[:, None]) > rewards.gather(1, task.train_rejected[:, None])).all())
    losers = loser_mask(task)
    reference_probs = task.reference_logits.softmax(-1)[losers].mean()
    ipo = seed_loss("ipo")
    runs = {name: train_bandit(loss, task, beta=1.0, seed=0, config=config)
            for name, loss in (("dpo", dpo), ("ipo", ipo))}
    dpo_scores, ipo_scores = (score_bandit(task, runs[name]) for name in ("dpo", "ipo"))
    assert dpo_scores["kl"] > 1.0 and ipo_scores["kl"] < 0.2
    assert dpo_scores["kl"] > 10 * ipo_scores["kl"]
    assert runs["dpo"].softmax(-1)[losers].mean() < 0.01 * reference_probs  # losers driven to ~0
    assert runs["ipo"].softmax(-1)[losers].mean() > 0.3 * reference_probs  # losers kept
    # trained for less, DPO had drifted less: it has no fixed point to stop at; IPO has
    shorter = BanditConfig(deterministic_labels=True, max_length=1, steps=300)
    dpo_early = score_bandit(task, train_bandit(dpo, task, beta=1.0, seed=0, config=shorter))["kl"]
    ipo_early = score_bandit(task, train_bandit(ipo, task, beta=1.0, seed=0, config=shorter))["kl"]
    assert dpo_scores["kl"] > dpo_early + 0.1
    assert ipo_scores["kl"] == pytest.approx(ipo_early, abs=0.02)


# -- the train/score split ---------------------------------------------------------------------

def test_child_trains_on_a_task_without_the_oracle(dpo):
    config = BanditConfig(steps=20)
    full, training = make_bandit_task("sentiment", 0, config), make_training_task("sentiment", 0, config)
    assert training.rewards is None and training.heldout_prompts.numel() == 0
    with pytest.raises(ValueError, match="oracle"):
        score_bandit(training, training.reference_logits)
    in_child = train_bandit_grid(dpo, training, seed=0, config=config)
    in_parent = train_bandit_grid(dpo, full, seed=0, config=config)
    assert all(torch.equal(in_child[beta], in_parent[beta]) for beta in config.betas)
    # what crosses the process boundary is plain JSON, keys included
    shipped = {str(beta): logits.tolist() for beta, logits in in_child.items()}
    assert score_bandit_grid(full, shipped)["fitness"] == score_bandit_grid(full, in_parent)["fitness"]


def test_one_beta_alone_trains_as_it_does_in_the_grid(dpo):
    config = BanditConfig(steps=30)
    task = make_bandit_task("sort", 0, config)
    grid = train_bandit_grid(dpo, task, seed=0, config=config)
    alone = train_bandit(dpo, task, beta=config.betas[2], seed=0, config=config)
    assert torch.allclose(alone, grid[config.betas[2]], atol=1e-5)


def test_the_loss_sees_values_not_the_policy_graph():
    seen = []

    def spying_dpo(tensors, beta):
        seen.append(all(tensors[name].grad_fn is None and tensors[name].is_leaf
                        for name in ("policy_chosen_logps", "policy_rejected_logps", "chosen_kl")))
        tensors["reference_chosen_logps"].add_(100.0)  # vandalism stays inside this call
        return -F.logsigmoid(beta * implicit_margin(tensors))

    config = BanditConfig(steps=5)
    task = make_bandit_task("sentiment", 0, config)
    reference = task.reference_logits.clone()
    train_bandit_grid(spying_dpo, task, seed=0, config=config)
    assert seen and all(seen)
    assert torch.equal(task.reference_logits, reference)


def test_losses_that_cannot_train_fail_with_a_kind():
    config = BanditConfig(steps=5)
    task = make_bandit_task("sentiment", 0, config)

    def constant(tensors, beta):
        return torch.zeros_like(tensors["reference_chosen_logps"])

    def infinite_gradient(tensors, beta):  # finite value, infinite slope
        logps = tensors["policy_chosen_logps"]
        return torch.sqrt(logps - logps.detach())

    for loss, kind in ((constant, "no_grad"), (infinite_gradient, "nan")):
        with pytest.raises(CandidateError) as error:
            train_bandit_grid(loss, task, seed=0, config=config)
        assert error.value.failure.kind == kind


def test_a_loss_reading_the_kl_inputs_trains_through_them():
    tdpo = evaluate_bandit(seed_loss("tdpo"), "sentiment", seed=0)
    assert tdpo["fitness"] > tdpo["reference_reward"] + 0.2


@pytest.mark.parametrize("name", ["beta_dpo", "dpo_shift_linear", "odpo", "ld_dpo", "sampo"])
def test_the_seeds_reading_scores_the_runs_state_and_tokens_train(name):
    result = evaluate_bandit(seed_loss(name), "sentiment", seed=0)
    assert result["fitness"] > result["reference_reward"] + 0.2


def test_scores_are_the_labellers_rewards_and_each_beta_keeps_its_own_running_margin():
    config = BanditConfig(n_prompts=8, steps=3, batch_size=16, betas=(0.1, 3.0))
    task = make_training_task("length", seed=0, config=config)
    full = make_bandit_task("length", seed=0, config=config)
    seen: list[dict] = []

    def spy(tensors, beta):  # DPO, recording what the trainer passes
        seen.append({name: value.detach().clone() for name, value in tensors.items()})
        return -F.logsigmoid(beta * implicit_margin(tensors))

    train_bandit_grid(spy, task, seed=0, config=config)
    assert [float(call["progress"]) for call in seen] == pytest.approx([0.0, 0.0, 1 / 3, 1 / 3, 2 / 3, 2 / 3])
    # the first step sees its own batch's statistics; afterwards the two betas' policies differ
    first = implicit_margin(seen[0])
    assert float(seen[0]["running_margin_mean"]) == pytest.approx(float(first.mean()))
    assert float(seen[0]["running_margin_std"]) == pytest.approx(float(first.std(correction=0)))
    assert float(seen[4]["running_margin_mean"]) != pytest.approx(float(seen[5]["running_margin_mean"]))
    # scores: the label reward (not the oracle's: in `length` they differ), which no child task lacks
    assert task.rewards is None and not torch.equal(task.train_chosen_scores, full.rewards[full.train_prompts,
                                                                                           full.train_chosen])
    gaps = task.train_chosen_scores - task.train_rejected_scores
    assert float((gaps > 0).float().mean()) > 0.6  # Bradley-Terry labels mostly follow their reward


def test_token_inputs_are_one_token_a_response():
    # the bandit's responses are single actions: T = 1, the token log-prob is the sequence's, the mask 1
    config = BanditConfig(n_prompts=8, steps=2, batch_size=16, betas=(0.1, 3.0))
    task = make_training_task("sentiment", seed=0, config=config)
    seen: list[dict] = []

    def spy(tensors, beta):  # DPO on the token inputs
        seen.append({name: value.detach().clone() for name, value in tensors.items()})
        chosen = (tensors["policy_chosen_token_logps"] - tensors["reference_chosen_token_logps"]).sum(-1)
        rejected = (tensors["policy_rejected_token_logps"] - tensors["reference_rejected_token_logps"]).sum(-1)
        return -F.logsigmoid(beta * (chosen - rejected))

    trained = train_bandit_grid(spy, task, seed=0, config=config)
    for call in seen:
        for side in ("chosen", "rejected"):
            assert call[f"policy_{side}_token_logps"].shape == (16, 1)
            assert torch.equal(call[f"policy_{side}_token_logps"][:, 0], call[f"policy_{side}_logps"])
            assert torch.equal(call[f"reference_{side}_token_logps"][:, 0], call[f"reference_{side}_logps"])
            assert torch.equal(call[f"{side}_mask"], torch.ones(16, 1))
    dpo = train_bandit_grid(lambda tensors, beta: -F.logsigmoid(beta * implicit_margin(tensors)), task, seed=0,
                            config=config)
    assert all(torch.allclose(trained[beta], dpo[beta], atol=1e-6) for beta in config.betas)  # the same loss
