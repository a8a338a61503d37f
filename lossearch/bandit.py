"""The bandit tier (DESIGN §3): a tabular softmax policy trained with a candidate loss.

Each prompt has a handful of responses, and a response is a single action, so
log pi(y|x) is one entry of a log-softmax and every score is exact: no sampling,
no estimator. A task is

    reference_logits (P, R)   the frozen reference (SFT) policy, of mixed quality
    rewards          (P, R)   the oracle reward the scores use
    lengths          (P, R)   a length per response, 1..max_length tokens
    train pairs      (N,)     prompt / chosen / rejected indices: two responses
                              drawn from the reference, labelled by a Bradley-Terry
                              draw on the *label* reward (which is the oracle reward
                              except in `length`, where the labels like long answers)
    held-out pairs   (M,)     fresh response pairs, ordered by the oracle reward

The split between untrusted and trusted code is the point of the API:

    train_bandit / train_bandit_grid   call the candidate loss: run them only in the
                                       sandbox child. They return plain (P, R) logits.
    score_bandit / score_bandit_grid   never call candidate code: run them in the parent,
                                       on a task the parent built itself from the seed
                                       (make_bandit_task is deterministic), so the child
                                       can change its score only through the logits,
                                       i.e. through the gradients its loss produced.
    evaluate_bandit                    both at once, for trusted losses (seeds, tests).

The candidate also never sees the autograd graph of the policy: its inputs are
fresh leaf tensors and their gradients are carried back to the logits by us, so a
loss cannot reach the parameters through `.grad_fn`.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from lossearch.failures import CandidateError

TASK_NAMES = ("sentiment", "sort", "length", "noisy")

# loss_fn(tensors, beta) -> (B,) per-pair losses; trusted code wraps contract.call_loss into it
LossFn = Callable[[Mapping[str, torch.Tensor], float], torch.Tensor]

# per task: the KL budget (nats, KL(policy || reference) averaged over prompts) at which
# `fitness` reads the reward, and the reward units one nat over the budget costs. Budgets
# sit where the reward/KL frontier is still steep, so that a loss that moves the policy in
# the right direction per nat spent wins; each penalty is well above the frontier's slope
# at the budget, so overshooting never pays.
TASK_KL_BUDGET = {"sentiment": 0.5, "sort": 0.5, "length": 0.5, "noisy": 0.5}
TASK_KL_PENALTY = {"sentiment": 1.0, "sort": 0.5, "length": 1.0, "noisy": 1.0}


@dataclass(frozen=True)
class BanditConfig:
    n_prompts: int = 128
    """Prompts (rows of the tabular policy); all of them are scored."""
    n_responses: int = 6
    """Responses per prompt (actions)."""
    pairs_per_prompt: int = 8
    """Training preference pairs drawn per prompt from the reference policy."""
    heldout_pairs_per_prompt: int = 8
    """Held-out pairs per prompt for `pref_acc` (ties in the oracle reward are dropped)."""
    max_length: int = 20
    """Response lengths are drawn uniformly from 1..max_length tokens."""
    steps: int = 150
    """Adam steps per training run (one run per beta)."""
    lr: float = 0.05
    """Adam learning rate on the logits."""
    batch_size: int = 128
    """Preference pairs per step, drawn with replacement from the training pairs."""
    betas: tuple[float, ...] = (0.03, 0.1, 0.3, 1.0)
    """The beta grid; the reported metrics are those of the beta with the best fitness."""
    deterministic_labels: bool = False
    """Label each pair by the higher label reward, with no Bradley-Terry draw and no flips:
    the same response always wins (the setting where IPO's paper shows DPO overfitting)."""

    def __post_init__(self) -> None:
        for name in ("n_prompts", "pairs_per_prompt", "heldout_pairs_per_prompt", "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"BanditConfig.{name} must be at least 1")
        if self.n_responses < 2:
            raise ValueError("BanditConfig.n_responses must be at least 2 (a pair needs two responses)")
        if self.max_length < 1:
            raise ValueError("BanditConfig.max_length must be at least 1")
        if not self.lr > 0:
            raise ValueError("BanditConfig.lr must be positive")
        if not self.betas or any(not beta > 0 for beta in self.betas):
            raise ValueError("BanditConfig.betas must be a non-empty tuple of positive floats")
        object.__setattr__(self, "betas", tuple(float(beta) for beta in self.betas))


@dataclass(frozen=True)
class BanditTask:
    """One task instance: the world, the training pairs and the held-out pairs."""

    name: str
    seed: int
    reference_logits: torch.Tensor
    """(P, R) the frozen reference policy; the trained policy starts here."""
    rewards: torch.Tensor
    """(P, R) the oracle reward of each response; only scoring reads it."""
    lengths: torch.Tensor
    """(P, R) float, the length of each response in tokens."""
    train_prompts: torch.Tensor
    """(N,) long, the prompt of each training pair."""
    train_chosen: torch.Tensor
    """(N,) long, the preferred response of each training pair."""
    train_rejected: torch.Tensor
    """(N,) long, the other response."""
    heldout_prompts: torch.Tensor
    """(M,) long, the prompt of each held-out pair."""
    heldout_chosen: torch.Tensor
    """(M,) long, the response with the higher oracle reward."""
    heldout_rejected: torch.Tensor
    """(M,) long, the response with the lower oracle reward."""
    kl_budget: float
    """The KL(policy || reference) at which fitness reads the reward."""
    kl_penalty: float
    """Reward lost per nat of KL over the budget."""


# -----------------------------------------------------------------------------
# building a task (trusted; deterministic given the seed)

def make_bandit_task(task: str, seed: int = 0, config: BanditConfig = BanditConfig()) -> BanditTask:
    """Build task `task` for `seed`; the same arguments always give the same tensors."""
    if task not in TASK_NAMES:
        raise ValueError(f"unknown bandit task {task!r}: use one of {', '.join(TASK_NAMES)}")
    # `noisy` is `sentiment`'s world with flipped labels, so both draw from the same stream
    world = "sentiment" if task == "noisy" else task
    generator = torch.Generator().manual_seed(1_000_003 * seed + TASK_NAMES.index(world))
    P, R = config.n_prompts, config.n_responses
    reference_logits = torch.randn(P, R, generator=generator)  # (P, R), a std-1 softmax: mixed
    lengths = torch.randint(1, config.max_length + 1, (P, R), generator=generator).float()  # (P, R)
    rewards, label_rewards, temperature = draw_rewards(world, lengths, config, generator)
    prompts, first, second = draw_reference_pairs(reference_logits, config.pairs_per_prompt, generator)
    chosen, rejected = label_pairs(label_rewards[prompts, first], label_rewards[prompts, second],
                                   first, second, temperature, config.deterministic_labels, generator)
    if task == "noisy" and not config.deterministic_labels:
        chosen, rejected = flip_labels(chosen, rejected, fraction=1 / 3, generator=generator)
    heldout = draw_heldout_pairs(rewards, config.heldout_pairs_per_prompt, generator)
    return BanditTask(task, seed, reference_logits, rewards, lengths, prompts, chosen, rejected,
                      *heldout, TASK_KL_BUDGET[task], TASK_KL_PENALTY[task])


def draw_rewards(world: str, lengths: torch.Tensor, config: BanditConfig, generator: torch.Generator):
    """(oracle rewards (P, R), label rewards (P, R), Bradley-Terry temperature) of a world."""
    P, R = lengths.shape
    quality = torch.randn(P, R, generator=generator)  # (P, R), independent of the reference
    if world == "sentiment":
        # the classic setting: labels are Bradley-Terry draws on the oracle reward itself
        return quality, quality, 1.0
    if world == "sort":
        # verifiable: a correct answer scores 1, a near miss gets partial credit 0..0.4;
        # every prompt has at least one correct answer, so there is always room to improve
        correct = torch.rand(P, R, generator=generator) < 0.25
        correct[torch.arange(P), torch.randint(0, R, (P,), generator=generator)] = True
        partial = 0.2 * torch.randint(0, 3, (P, R), generator=generator).float()
        rewards = torch.where(correct, torch.ones(P, R), partial)
        return rewards, rewards, 0.25  # sharp labels: a right answer almost always wins
    # length: the oracle dislikes long answers but the labellers like them
    centred = (lengths - (config.max_length + 1) / 2) / max(config.max_length / 3.5, 1.0)  # ~ std 1
    return quality - 0.5 * centred, quality + 0.75 * centred, 1.0


def draw_reference_pairs(reference_logits: torch.Tensor, pairs_per_prompt: int, generator: torch.Generator):
    """(prompts, first, second), each (P * pairs_per_prompt,): two distinct responses from the reference."""
    P, R = reference_logits.shape
    probs = reference_logits.softmax(-1).repeat_interleave(pairs_per_prompt, dim=0)  # (N, R)
    drawn = torch.multinomial(probs, 2, replacement=False, generator=generator)  # (N, 2)
    prompts = torch.arange(P).repeat_interleave(pairs_per_prompt)  # (N,)
    return prompts, drawn[:, 0], drawn[:, 1]


def label_pairs(first_reward, second_reward, first, second, temperature: float,
                deterministic: bool, generator: torch.Generator):
    """(chosen, rejected): a Bradley-Terry draw p(first wins) = sigmoid((r1 - r2) / T), or the argmax."""
    if deterministic:
        first_wins = first_reward >= second_reward  # ties go to `first`, consistently
    else:
        p_first = torch.sigmoid((first_reward - second_reward) / temperature)  # (N,)
        first_wins = torch.rand(p_first.shape, generator=generator) < p_first
    return torch.where(first_wins, first, second), torch.where(first_wins, second, first)


def flip_labels(chosen, rejected, fraction: float, generator: torch.Generator):
    """Swap chosen and rejected on exactly round(fraction * N) randomly picked pairs."""
    n = chosen.shape[0]
    flipped = torch.zeros(n, dtype=torch.bool)
    flipped[torch.randperm(n, generator=generator)[: round(fraction * n)]] = True
    return torch.where(flipped, rejected, chosen), torch.where(flipped, chosen, rejected)


def draw_heldout_pairs(rewards: torch.Tensor, pairs_per_prompt: int, generator: torch.Generator):
    """(prompts, better, worse): uniform distinct pairs, ordered by the oracle, ties dropped."""
    P, R = rewards.shape
    uniform = torch.ones(P * pairs_per_prompt, R)  # (M, R)
    drawn = torch.multinomial(uniform, 2, replacement=False, generator=generator)  # (M, 2)
    prompts = torch.arange(P).repeat_interleave(pairs_per_prompt)  # (M,)
    reward_a, reward_b = rewards[prompts, drawn[:, 0]], rewards[prompts, drawn[:, 1]]
    keep = reward_a != reward_b
    a_better = reward_a > reward_b
    better = torch.where(a_better, drawn[:, 0], drawn[:, 1])
    worse = torch.where(a_better, drawn[:, 1], drawn[:, 0])
    return prompts[keep], better[keep], worse[keep]


# -----------------------------------------------------------------------------
# training (UNTRUSTED: calls the candidate loss; run only in the sandbox child)
#
# All betas of the grid train at once: the parameter is a stack of K independent
# policies, (K, P, R), and the loss is called once per beta on that beta's slice.
# The K runs share the batch order and never mix (Adam is elementwise), so each is
# the run `train_bandit` would do alone, at a fraction of the Python overhead.

def pair_inputs(logits: torch.Tensor, reference_logps: torch.Tensor, lengths: torch.Tensor,
                prompts: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor):
    """Policy-side outputs (K, B), with graph, and reference-side contract inputs (B,) of a batch."""
    logps = F.log_softmax(logits[:, prompts], dim=-1)  # (K, B, R), each policy at each pair's prompt
    ref = reference_logps[prompts]  # (B, R)
    # the bandit's single "token position": KL(reference || policy) of the prompt's distribution
    kl = (ref.exp() * (ref - logps)).sum(-1)  # (K, B)
    K = logits.shape[0]
    policy = {
        "policy_chosen_logps": logps.gather(2, chosen.expand(K, -1)[..., None])[..., 0],  # (K, B)
        "policy_rejected_logps": logps.gather(2, rejected.expand(K, -1)[..., None])[..., 0],  # (K, B)
        "chosen_kl": kl,
        "rejected_kl": kl,
    }
    fixed = {
        "reference_chosen_logps": ref.gather(1, chosen[:, None])[:, 0],  # (B,)
        "reference_rejected_logps": ref.gather(1, rejected[:, None])[:, 0],
        "chosen_lengths": lengths[prompts, chosen],  # (B,) float
        "rejected_lengths": lengths[prompts, rejected],
    }
    return policy, fixed


def loss_gradients(loss_fn: LossFn, policy: dict, fixed: dict, beta: float) -> dict:
    """d mean(loss) / d each policy-side input (B,), for one beta; None where the loss ignores it."""
    # fresh leaves and fresh copies: the candidate sees values, never the graph that leads to
    # the parameters, and what it does to its inputs in place cannot reach another beta's run
    leaves = {name: value.detach().clone().requires_grad_() for name, value in policy.items()}
    copies = {name: value.clone() for name, value in fixed.items()}
    loss = loss_fn({**leaves, **copies}, beta).mean()
    if not loss.requires_grad:
        raise CandidateError("no_grad", "the loss does not depend on the policy's log-probabilities")
    grads = torch.autograd.grad(loss, list(leaves.values()), allow_unused=True)
    return dict(zip(leaves, grads))


def backward_through_policy(policy: dict, grads_per_beta: list[dict]) -> None:
    """Carry every beta's input gradients back into the stacked logits' .grad."""
    outputs, grads = [], []
    for name, output in policy.items():
        per_beta = [grads[name] for grads in grads_per_beta]
        if all(grad is None for grad in per_beta):
            continue  # no beta's loss reads this input
        zeros = torch.zeros_like(output[0])
        outputs.append(output)  # (K, B)
        grads.append(torch.stack([zeros if grad is None else grad for grad in per_beta]))  # (K, B)
    torch.autograd.backward(outputs, grads)


def adam_step(param: torch.Tensor, moments: tuple, step: int, lr: float,
              betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """One Adam update (Kingma & Ba, 2015, Algorithm 1), in place; torch.optim's costs 4x the time here."""
    mean, square = moments
    mean.lerp_(param.grad, 1 - betas[0])  # m <- b1 m + (1 - b1) g
    square.mul_(betas[1]).addcmul_(param.grad, param.grad, value=1 - betas[1])  # v <- b2 v + (1 - b2) g^2
    bias1, bias2 = 1 - betas[0] ** step, 1 - betas[1] ** step
    denominator = (square / bias2).sqrt_().add_(eps)  # sqrt(v_hat) + eps
    with torch.no_grad():
        param.addcdiv_(mean, denominator, value=-lr / bias1)  # theta <- theta - lr m_hat / (sqrt(v_hat) + eps)


def train_bandit_grid(loss_fn: LossFn, task: BanditTask, seed: int = 0,
                      config: BanditConfig = BanditConfig()) -> dict[float, torch.Tensor]:
    """Train one policy per beta of the grid from the reference by Adam: {beta: (P, R) logits}."""
    K = len(config.betas)
    logits = task.reference_logits.expand(K, -1, -1).clone().requires_grad_()  # (K, P, R), pi starts at pi_ref
    reference_logps = F.log_softmax(task.reference_logits, dim=-1)  # (P, R)
    moments = (torch.zeros_like(logits), torch.zeros_like(logits))
    generator = torch.Generator().manual_seed(seed)
    n_pairs = task.train_prompts.shape[0]
    batches = torch.randint(0, n_pairs, (config.steps, config.batch_size), generator=generator)  # (steps, B)
    for step in range(config.steps):
        batch = batches[step]  # (B,) indices into the training pairs
        policy, fixed = pair_inputs(logits, reference_logps, task.lengths, task.train_prompts[batch],
                                    task.train_chosen[batch], task.train_rejected[batch])
        grads = [loss_gradients(loss_fn, {name: value[k] for name, value in policy.items()}, fixed, beta)
                 for k, beta in enumerate(config.betas)]
        logits.grad = None
        backward_through_policy(policy, grads)
        adam_step(logits, moments, step + 1, config.lr)
    return {beta: check_trained(logits[k].detach(), beta) for k, beta in enumerate(config.betas)}


def check_trained(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """The trained logits, if finite: a nan/inf gradient at any step ends up here (Adam spreads it)."""
    if not bool(torch.isfinite(logits).all()):
        raise CandidateError("nan", f"training diverged at beta={beta:g}: the loss's gradients were not finite")
    return logits.clone()


def train_bandit(loss_fn: LossFn, task: BanditTask, beta: float, seed: int = 0,
                 config: BanditConfig = BanditConfig()) -> torch.Tensor:
    """Train the policy at one beta: (P, R) logits, detached. Sandbox child only."""
    return train_bandit_grid(loss_fn, task, seed, replace(config, betas=(beta,)))[float(beta)]

# -----------------------------------------------------------------------------
# scoring (TRUSTED: never calls candidate code; runs in the parent)

def check_logits(task: BanditTask, logits) -> torch.Tensor:
    """The child's logits as a float64 (P, R) tensor; raises `shape`/`nan` CandidateErrors."""
    logits = torch.as_tensor(logits, dtype=torch.float64)
    if tuple(logits.shape) != tuple(task.reference_logits.shape):
        raise CandidateError("shape", f"bandit training returned logits of shape {tuple(logits.shape)}, "
                                      f"expected {tuple(task.reference_logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise CandidateError("nan", "bandit training returned non-finite logits")
    return logits


def expected_reward(task: BanditTask, logits: torch.Tensor) -> float:
    """Mean over prompts of E_{y ~ pi(.|x)} r(x, y), exactly."""
    probs = F.softmax(logits.double(), dim=-1)  # (P, R)
    return float((probs * task.rewards.double()).sum(-1).mean())


@torch.no_grad()
def score_bandit(task: BanditTask, logits) -> dict[str, float]:
    """Exact scores of a trained policy: reward, reference_reward, kl, pref_acc, fitness."""
    logps = F.log_softmax(check_logits(task, logits), dim=-1)  # (P, R)
    reference_logps = F.log_softmax(task.reference_logits.double(), dim=-1)  # (P, R)
    reward = expected_reward(task, logps)
    reference_reward = expected_reward(task, reference_logps)
    kl = float((logps.exp() * (logps - reference_logps)).sum(-1).mean())  # KL(pi || pi_ref), nats
    # implicit reward beta * log(pi / pi_ref); beta > 0 does not change the order, so drop it
    implicit = logps - reference_logps  # (P, R)
    margin = (implicit[task.heldout_prompts, task.heldout_chosen]
              - implicit[task.heldout_prompts, task.heldout_rejected])  # (M,)
    pref_acc = float(((margin > 0).double() + 0.5 * (margin == 0).double()).mean())  # ties count half
    fitness = reward - task.kl_penalty * max(0.0, kl - task.kl_budget)
    return {"reward": reward, "reference_reward": reference_reward, "kl": kl,
            "pref_acc": pref_acc, "fitness": fitness}


def score_bandit_grid(task: BanditTask, logits_by_beta: Mapping[float, torch.Tensor]) -> dict:
    """Score every beta's logits; the result is the best beta's metrics plus `beta` and `per_beta`."""
    per_beta = [{"beta": float(beta), **score_bandit(task, logits)} for beta, logits in logits_by_beta.items()]
    if not per_beta:
        raise ValueError("no logits to score: the beta grid is empty")
    best = max(per_beta, key=lambda row: row["fitness"])  # the first of equals wins
    return {"task": task.name, "seed": task.seed, **best, "per_beta": per_beta}


# -----------------------------------------------------------------------------
# both at once, for trusted losses only (seeds, tests, benchmarks)

def evaluate_bandit(loss_fn: LossFn, task_name: str, seed: int = 0,
                    config: BanditConfig = BanditConfig()) -> dict:
    """Build the task, train over the beta grid and score: the best beta's metrics and `per_beta`."""
    task = make_bandit_task(task_name, seed, config)
    return score_bandit_grid(task, train_bandit_grid(loss_fn, task, seed, config))
