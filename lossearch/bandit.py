"""The bandit tier (DESIGN §3): a tabular softmax policy trained with a candidate loss.

Each prompt has a handful of responses and a response is a single action, so
log pi(y|x) is one entry of a log-softmax and every score is exact: no sampling,
no estimator. A task is

    reference_logits (P, R)   the frozen reference (SFT) policy, of mixed quality
    rewards          (P, R)   the oracle reward the scores use
    lengths          (P, R)   a length per response, 1..max_length "tokens"
    train pairs      (N,)     prompt / chosen / rejected: two distinct responses drawn
                              from the reference, labelled by a Bradley-Terry draw on
                              the *label* reward (the oracle reward, except in `length`
                              where the labellers like long answers the oracle dislikes)
    held-out pairs   (M,)     uniform response pairs, ordered by the oracle reward

Contract inputs (DESIGN §2): policy_*_logps = log pi(y|x), reference_*_logps the same
under the reference, *_lengths the responses' lengths, *_kl = KL(reference(.|x) || pi(.|x))
of the prompt's distribution (the bandit's one "token position"), beta from the grid.

Scores are exact: `reward` = mean over prompts of E_pi[r], `kl` = KL(pi || pi_ref) averaged
over prompts, `pref_acc` = held-out pairs ordered right by log pi - log pi_ref, and
`fitness` = the reward at the task's KL budget (see score_bandit_grid).

Trusted and untrusted code are split, and the API follows the split:

    sandbox child (runs candidate code)
        task = make_training_task(name, seed, config)       # no oracle reward in reach
        logits_by_beta = train_bandit_grid(loss_fn, task, seed, config)
        -> {str(beta): logits.tolist()} back to the parent as JSON
    parent (never runs candidate code)
        result = score_bandit_grid(make_bandit_task(name, seed, config), logits_by_beta)

make_bandit_task is deterministic, so both sides build the same task from the seed, and the
child can change its score only through the logits it hands back: through the gradients its
loss produced. `train_bandit` trains one beta; `evaluate_bandit` does both halves in one
process, for trusted losses only (seeds, tests, benchmarks).

The candidate never sees the autograd graph of the policy either: its inputs are fresh
leaf tensors whose gradients we carry back to the logits, so no `.grad_fn` leads it
to the parameters.
"""

from __future__ import annotations

from contextlib import contextmanager
from dataclasses import dataclass, replace
from typing import Callable, Mapping

import torch
import torch.nn.functional as F

from lossearch.contract import backpropagate
from lossearch.failures import CandidateError

TASK_NAMES = ("sentiment", "sort", "length", "noisy")

# loss_fn(tensors, beta) -> (B,) per-pair losses; trusted code wraps contract.call_loss into it
LossFn = Callable[[Mapping[str, torch.Tensor], float], torch.Tensor]

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
                      *heldout, TASK_KL_BUDGET[task], config.kl_penalty)


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


def draw_heldout_pairs(rewards: torch.Tensor, pairs_per_prompt: int, generator: torch.Generator):
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


# -----------------------------------------------------------------------------
# training (UNTRUSTED: calls the candidate loss; run only in the sandbox child)
#
# All betas of the grid train at once: the parameter is a stack of K independent policies,
# (K, P, R), and the loss is called once per beta on that beta's slice. The K runs share the
# batch order and never mix (the gradients are per slice, Adam is elementwise), so each is the
# run `train_bandit` does alone, at a fraction of the per-step Python overhead.

def train_bandit_grid(loss_fn: LossFn, task: BanditTask, seed: int = 0,
                      config: BanditConfig = BanditConfig()) -> dict[float, torch.Tensor]:
    """Train one policy per beta of the grid, from the reference, by Adam: {beta: (P, R) logits}."""
    with single_thread():
        return train_stacked(loss_fn, task, seed, config)


def train_bandit(loss_fn: LossFn, task: BanditTask, beta: float, seed: int = 0,
                 config: BanditConfig = BanditConfig()) -> torch.Tensor:
    """Train the policy at one beta: (P, R) logits, detached. Sandbox child only."""
    return train_bandit_grid(loss_fn, task, seed, replace(config, betas=(beta,)))[float(beta)]


@contextmanager
def single_thread():
    """Run torch on one thread: the tensors are tiny, and two threads on a busy two-core machine
    (other sandbox children) turned a 0.2 s run into 10 s in our measurements."""
    previous = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        yield
    finally:
        torch.set_num_threads(previous)


def train_stacked(loss_fn: LossFn, task: BanditTask, seed: int, config: BanditConfig) -> dict[float, torch.Tensor]:
    K = len(config.betas)
    logits = task.reference_logits.expand(K, -1, -1).clone().requires_grad_()  # (K, P, R); pi starts at pi_ref
    reference_logps = F.log_softmax(task.reference_logits, dim=-1)  # (P, R)
    moments = (torch.zeros_like(logits), torch.zeros_like(logits))  # Adam's m and v, (K, P, R)
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


def pair_inputs(logits: torch.Tensor, reference_logps: torch.Tensor, lengths: torch.Tensor,
                prompts: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor):
    """The batch's policy-side inputs (K, B), with graph, and reference-side inputs (B,)."""
    K = logits.shape[0]
    logps = F.log_softmax(logits[:, prompts], dim=-1)  # (K, B, R): each policy at each pair's prompt
    ref = reference_logps[prompts]  # (B, R)
    # the bandit's single "token position": KL(reference || policy) of the prompt's distribution
    kl = (ref.exp() * (ref - logps)).sum(-1)  # (K, B)
    policy = {
        "policy_chosen_logps": logps.gather(2, chosen.expand(K, -1)[..., None])[..., 0],  # (K, B)
        "policy_rejected_logps": logps.gather(2, rejected.expand(K, -1)[..., None])[..., 0],  # (K, B)
        "chosen_kl": kl,
        "rejected_kl": kl,  # the same prompt, so the same distribution
    }
    fixed = {
        "reference_chosen_logps": ref.gather(1, chosen[:, None])[:, 0],  # (B,)
        "reference_rejected_logps": ref.gather(1, rejected[:, None])[:, 0],  # (B,)
        "chosen_lengths": lengths[prompts, chosen],  # (B,) float
        "rejected_lengths": lengths[prompts, rejected],  # (B,) float
    }
    return policy, fixed


def loss_gradients(loss_fn: LossFn, policy: dict, fixed: dict, beta: float) -> dict:
    """d mean(loss) / d each policy-side input (B,) at one beta; None where the loss ignores it."""
    # fresh leaves and fresh copies: the candidate sees values, never the graph that leads to the
    # parameters, and what it does to its inputs in place cannot reach another beta's run
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
    for name, output in policy.items():  # output (K, B)
        per_beta = [grads[name] for grads in grads_per_beta]
        if all(grad is None for grad in per_beta):
            continue  # no beta's loss reads this input
        zeros = torch.zeros_like(output[0])  # (B,)
        outputs.append(output)
        grads.append(torch.stack([zeros if grad is None else grad for grad in per_beta]))  # (K, B)
    backpropagate(outputs, grads)


def adam_step(param: torch.Tensor, moments: tuple, step: int, lr: float,
              betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """One Adam update (Kingma & Ba, 2015, Algorithm 1) in place; torch.optim's costs 4x the time here."""
    mean, square = moments
    mean.lerp_(param.grad, 1 - betas[0])  # m <- b1 m + (1 - b1) g
    square.mul_(betas[1]).addcmul_(param.grad, param.grad, value=1 - betas[1])  # v <- b2 v + (1 - b2) g^2
    bias1, bias2 = 1 - betas[0] ** step, 1 - betas[1] ** step
    denominator = (square / bias2).sqrt_().add_(eps)  # sqrt(v_hat) + eps
    with torch.no_grad():
        param.addcdiv_(mean, denominator, value=-lr / bias1)  # theta <- theta - lr m_hat / (sqrt(v_hat) + eps)


def check_trained(logits: torch.Tensor, beta: float) -> torch.Tensor:
    """The trained logits if finite; a nan/inf gradient at any step ends up here (Adam spreads it)."""
    if not bool(torch.isfinite(logits).all()):
        raise CandidateError("nan", f"training diverged at beta={beta:g}: the loss's gradients were not finite")
    return logits.clone()


# -----------------------------------------------------------------------------
# scoring (TRUSTED: never calls candidate code; runs in the parent)

@torch.no_grad()
def score_bandit(task: BanditTask, logits) -> dict[str, float]:
    """Exact scores of a policy given by its (P, R) logits (a tensor or nested lists, as JSON
    brings them back): reward, reference_reward, kl, pref_acc and fitness."""
    if task.rewards is None:
        raise ValueError("a training task has no oracle: score on make_bandit_task's task")
    logps = F.log_softmax(check_logits(task, logits), dim=-1)  # (P, R), float64
    reference_logps = F.log_softmax(task.reference_logits.double(), dim=-1)  # (P, R)
    reward = expected_reward(task.rewards, logps)
    kl = float((logps.exp() * (logps - reference_logps)).sum(-1).mean())  # KL(pi || pi_ref), nats
    # implicit reward beta * log(pi / pi_ref); beta > 0 does not change the order, so drop it
    implicit = logps - reference_logps  # (P, R)
    margin = (implicit[task.heldout_prompts, task.heldout_chosen]
              - implicit[task.heldout_prompts, task.heldout_rejected])  # (M,)
    pref_acc = float(((margin > 0).double() + 0.5 * (margin == 0).double()).mean())  # ties count half
    return {"reward": reward, "reference_reward": expected_reward(task.rewards, reference_logps),
            "kl": kl, "pref_acc": pref_acc,
            "fitness": reward - task.kl_penalty * max(0.0, kl - task.kl_budget)}


def check_logits(task: BanditTask, logits) -> torch.Tensor:
    """The child's logits as a float64 (P, R) tensor; raises `shape`/`nan` CandidateErrors."""
    try:
        logits = torch.as_tensor(logits, dtype=torch.float64)
    except (TypeError, ValueError, RuntimeError) as error:
        raise CandidateError("shape", f"bandit training returned unreadable logits: {error}") from None
    if tuple(logits.shape) != tuple(task.reference_logits.shape):
        raise CandidateError("shape", f"bandit training returned logits of shape {tuple(logits.shape)}, "
                                      f"expected {tuple(task.reference_logits.shape)}")
    if not bool(torch.isfinite(logits).all()):
        raise CandidateError("nan", "bandit training returned non-finite logits")
    return logits


def expected_reward(rewards: torch.Tensor, logps: torch.Tensor) -> float:
    """Mean over prompts of E_{y ~ pi(.|x)} r(x, y), exactly; logps (P, R) float64."""
    return float((logps.exp() * rewards.double()).sum(-1).mean())


def mixture_reward_at_budget(per_beta: list[dict], kl_budget: float) -> float:
    """The best reward within the KL budget on the line between two trained policies (or -inf).

    For runs a (kl_a <= budget) and b (kl_b > budget), the mixture alpha pi_a + (1 - alpha) pi_b
    has reward alpha r_a + (1 - alpha) r_b exactly and, KL being convex, KL at most
    alpha kl_a + (1 - alpha) kl_b; the alpha that puts that bound on the budget gives a policy
    within budget whose reward is the linear interpolation. So this is a reward the trained
    policies really reach at the budget, and it hardly depends on where the grid points land.
    """
    best = float("-inf")
    for a in (row for row in per_beta if row["kl"] <= kl_budget):
        best = max(best, a["reward"])
        for b in (row for row in per_beta if row["kl"] > kl_budget):
            alpha = (b["kl"] - kl_budget) / (b["kl"] - a["kl"])  # weight on the within-budget run
            best = max(best, alpha * a["reward"] + (1 - alpha) * b["reward"])
    return best


def score_bandit_grid(task: BanditTask, logits_by_beta: Mapping[float, object]) -> dict:
    """Score every beta's logits: the best run's metrics, `beta`, `fitness` and `per_beta`.

    `beta` and the metrics beside it are those of the run with the best per-run fitness (reward,
    less kl_penalty per nat over budget). The headline `fitness` is the larger of that and
    `mixture_reward_at_budget`, which reads the reward at the budget between two runs instead of
    at whichever grid point happens to land near it.
    """
    per_beta = [{"beta": float(beta), **score_bandit(task, logits)} for beta, logits in logits_by_beta.items()]
    if not per_beta:
        raise ValueError("no logits to score: the beta grid is empty")
    best = max(per_beta, key=lambda row: row["fitness"])  # the first of equals wins
    fitness = max(best["fitness"], mixture_reward_at_budget(per_beta, task.kl_budget))
    return {"task": task.name, "seed": task.seed, **best, "fitness": fitness,
            "kl_budget": task.kl_budget, "per_beta": per_beta}


# -----------------------------------------------------------------------------
# both at once, for trusted losses only (seeds, tests, benchmarks)

def evaluate_bandit(loss_fn: LossFn, task_name: str, seed: int = 0,
                    config: BanditConfig = BanditConfig()) -> dict:
    """Build the task, train over the beta grid and score: see `score_bandit_grid`."""
    task = make_bandit_task(task_name, seed, config)
    return score_bandit_grid(task, train_bandit_grid(loss_fn, task, seed, config))
