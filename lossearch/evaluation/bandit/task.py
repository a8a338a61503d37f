"""Building a bandit task (trusted; deterministic given the seed, so both sides build the same one)."""

from __future__ import annotations

from dataclasses import dataclass, replace

import torch

from lossearch.choices import TASK_NAMES
from lossearch.errors import ConfigError

# The KL(policy || reference) budget per task, in nats averaged over prompts, at which `fitness`
# reads the reward. At 0.5 nats the exact reward/KL frontier (pi_ref * exp(r / tau)) is still
# steep on every task (slope tau ~0.65 on sentiment, ~0.3 on sort), so a loss that spends its
# KL on the right responses wins, and the default penalty of 1 reward per nat is above that
# slope everywhere, so going over budget never pays.
TASK_KL_BUDGET = {"sentiment": 0.5, "sort": 0.5, "length": 0.5, "noisy": 0.5}


@dataclass(frozen=True)
class BanditConfig:
    n_prompts: int = 128
    """Prompts (rows of the tabular policy); all of them are scored."""
    n_responses: int = 6
    """Responses (actions) per prompt."""
    pairs_per_prompt: int = 8
    """Training preference pairs drawn per prompt from the reference policy."""
    heldout_pairs_per_prompt: int = 8
    """Held-out pairs per prompt for `pref_acc` (pairs tied in oracle reward are dropped)."""
    max_length: int = 20
    """Response lengths are drawn uniformly from 1..max_length tokens (1 makes them all equal)."""
    steps: int = 200
    """Adam steps per training run; IPO-like losses have converged by then, DPO still drifts."""
    lr: float = 0.075
    """Adam learning rate on the logits."""
    batch_size: int = 256
    """Preference pairs per step, drawn with replacement from the training pairs."""
    betas: tuple[float, ...] = (0.1, 0.3, 1.0, 3.0, 10.0)
    """The beta grid, one training run each. Wide, because losses scale beta differently
    (DPO meets a 0.5-nat budget near beta=3, hinge near 1, IPO near 0.3)."""
    kl_penalty: float = 1.0
    """Reward lost per nat of KL over the task's budget."""
    deterministic_labels: bool = False
    """Label each pair by its higher label reward: no Bradley-Terry draw and no flipped labels,
    so the same response always wins (the setting where the IPO paper shows DPO overfitting)."""

    def __post_init__(self) -> None:
        for name in ("n_prompts", "pairs_per_prompt", "heldout_pairs_per_prompt", "max_length",
                     "steps", "batch_size"):
            if getattr(self, name) < 1:
                raise ValueError(f"BanditConfig.{name} must be at least 1")
        if self.n_responses < 2:
            raise ValueError("BanditConfig.n_responses must be at least 2 (a pair needs two responses)")
        if not self.lr > 0 or not self.kl_penalty >= 0:
            raise ValueError("BanditConfig.lr must be positive and kl_penalty non-negative")
        if not self.betas or any(not beta > 0 for beta in self.betas) or len(set(self.betas)) != len(self.betas):
            raise ValueError("BanditConfig.betas must be a non-empty tuple of distinct positive floats")
        object.__setattr__(self, "betas", tuple(float(beta) for beta in self.betas))


@dataclass(frozen=True, eq=False)
class BanditTask:
    """One task instance: the world, the training pairs and the held-out pairs."""

    name: str
    seed: int
    reference_logits: torch.Tensor
    """(P, R) the frozen reference policy; the trained policy starts here."""
    rewards: torch.Tensor | None
    """(P, R) the oracle reward of each response; None in a training task."""
    lengths: torch.Tensor
    """(P, R) float, the length of each response in tokens."""
    train_prompts: torch.Tensor
    """(N,) long, the prompt of each training pair."""
    train_chosen: torch.Tensor
    """(N,) long, the preferred response of each training pair."""
    train_rejected: torch.Tensor
    """(N,) long, the other response."""
    heldout_prompts: torch.Tensor
    """(M,) long, the prompt of each held-out pair (empty in a training task)."""
    heldout_chosen: torch.Tensor
    """(M,) long, the response with the higher oracle reward."""
    heldout_rejected: torch.Tensor
    """(M,) long, the response with the lower oracle reward."""
    kl_budget: float
    """The KL(policy || reference) at which fitness reads the reward."""
    kl_penalty: float
    """Reward lost per nat of KL over the budget."""
    train_chosen_scores: torch.Tensor
    """(N,) the label reward of each training pair's chosen response: the data's scores (the
    labellers' reward: the oracle's except in `length`, which the child must not hold)."""
    train_rejected_scores: torch.Tensor
    """(N,) the same for the rejected response."""


def make_bandit_task(task: str, seed: int = 0, config: BanditConfig = BanditConfig()) -> BanditTask:
    """Build task `task` for `seed`; the same arguments always give the same tensors."""
    if task not in TASK_NAMES:
        raise ConfigError(f"unknown bandit task {task!r}; choose one of {', '.join(TASK_NAMES)}")
    # `noisy` is `sentiment`'s world with flipped labels, so both draw from the same stream
    world = "sentiment" if task == "noisy" else task
    generator = torch.Generator().manual_seed(1_000_003 * seed + TASK_NAMES.index(world))
    P, R = config.n_prompts, config.n_responses
    reference_logits = torch.randn(P, R, generator=generator)  # (P, R); a std-1 softmax: mixed quality
    lengths = torch.randint(1, config.max_length + 1, (P, R), generator=generator).float()  # (P, R)
    rewards, label_rewards, temperature = draw_rewards(world, lengths, config.max_length, generator)
    prompts, first, second = draw_reference_pairs(reference_logits, config.pairs_per_prompt, generator)
    chosen, rejected = label_pairs(label_rewards[prompts, first], label_rewards[prompts, second],
                                   first, second, temperature, config.deterministic_labels, generator)
    if task == "noisy" and not config.deterministic_labels:
        chosen, rejected = flip_labels(chosen, rejected, fraction=1 / 3, generator=generator)
    heldout = draw_heldout_pairs(rewards, config.heldout_pairs_per_prompt, generator)
    return BanditTask(task, seed, reference_logits, rewards, lengths, prompts, chosen, rejected,
                      *heldout, TASK_KL_BUDGET[task], config.kl_penalty,
                      label_rewards[prompts, chosen], label_rewards[prompts, rejected])


def make_training_task(task: str, seed: int = 0, config: BanditConfig = BanditConfig()) -> BanditTask:
    """The task as the sandbox child needs it: no oracle reward, no held-out pairs."""
    full = make_bandit_task(task, seed, config)
    empty = torch.zeros(0, dtype=torch.long)
    return replace(full, rewards=None, heldout_prompts=empty, heldout_chosen=empty, heldout_rejected=empty)


def draw_rewards(world: str, lengths: torch.Tensor, max_length: int, generator: torch.Generator):
    """(oracle rewards (P, R), label rewards (P, R), Bradley-Terry temperature) of a world."""
    P, R = lengths.shape
    quality = torch.randn(P, R, generator=generator)  # (P, R), independent of the reference
    if world == "sentiment":
        # the classic setting: labels are Bradley-Terry draws on the oracle reward itself
        return quality, quality, 1.0
    if world == "sort":
        # verifiable: a correct answer scores 1, a near miss 0, 0.2 or 0.4; every prompt has a
        # correct answer, so there is always room to improve
        correct = torch.rand(P, R, generator=generator) < 0.25
        correct[torch.arange(P), torch.randint(0, R, (P,), generator=generator)] = True
        partial = 0.2 * torch.randint(0, 3, (P, R), generator=generator).float()
        rewards = torch.where(correct, torch.ones(P, R), partial)
        return rewards, rewards, 0.25  # sharp labels: a correct answer beats a wrong one ~98% of the time
    # length: the oracle dislikes long answers but the labellers like them; label and oracle
    # rewards still correlate (+0.45), so following the labels helps, exploiting length does not
    centred = (lengths - (max_length + 1) / 2) / max(max_length / 3.5, 1.0)  # (P, R), std ~1
    return quality - 0.5 * centred, quality + 0.75 * centred, 1.0


def draw_reference_pairs(reference_logits: torch.Tensor, pairs_per_prompt: int, generator: torch.Generator):
    """(prompts, first, second), each (N = P * pairs_per_prompt,): two distinct responses from the reference."""
    P, R = reference_logits.shape
    probs = reference_logits.softmax(-1).repeat_interleave(pairs_per_prompt, dim=0)  # (N, R)
    drawn = torch.multinomial(probs, 2, replacement=False, generator=generator)  # (N, 2)
    prompts = torch.arange(P).repeat_interleave(pairs_per_prompt)  # (N,)
    return prompts, drawn[:, 0], drawn[:, 1]


def label_pairs(first_reward, second_reward, first, second, temperature: float,
                deterministic: bool, generator: torch.Generator):
    """(chosen, rejected): a Bradley-Terry draw p(first wins) = sigmoid((r1 - r2) / T), or the argmax."""
    if deterministic:
        # (N,); a tie goes to the lower index, so each pair of responses has one winner everywhere
        first_wins = (first_reward > second_reward) | ((first_reward == second_reward) & (first < second))
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


def draw_heldout_pairs(rewards: torch.Tensor, pairs_per_prompt: int,
                       generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """(prompts, better, worse): uniform distinct pairs ordered by the oracle, ties dropped."""
    P, R = rewards.shape
    drawn = torch.multinomial(torch.ones(P * pairs_per_prompt, R), 2, replacement=False,
                              generator=generator)  # (M, 2)
    prompts = torch.arange(P).repeat_interleave(pairs_per_prompt)  # (M,)
    reward_a, reward_b = rewards[prompts, drawn[:, 0]], rewards[prompts, drawn[:, 1]]
    a_better, keep = reward_a > reward_b, reward_a != reward_b
    better = torch.where(a_better, drawn[:, 0], drawn[:, 1])
    worse = torch.where(a_better, drawn[:, 1], drawn[:, 0])
    return prompts[keep], better[keep], worse[keep]


