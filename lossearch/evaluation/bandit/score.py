"""The bandit tier's scoring half (TRUSTED: never calls candidate code; runs in the parent)."""

from __future__ import annotations

from typing import Mapping

import torch
import torch.nn.functional as F

from lossearch.contract import LossFn
from lossearch.evaluation.bandit.task import BanditConfig, BanditTask, make_bandit_task
from lossearch.evaluation.bandit.train import train_bandit_grid
from lossearch.evaluation.fitness import fitness_at_budget, penalized_reward
from lossearch.evaluation.metrics import preference_accuracy
from lossearch.failures import CandidateError


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
    pref_acc = preference_accuracy(margin)
    return {"reward": reward, "reference_reward": expected_reward(task.rewards, reference_logps),
            "kl": kl, "pref_acc": pref_acc,
            "fitness": penalized_reward(reward, kl, task.kl_budget, task.kl_penalty)}


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


def score_bandit_grid(task: BanditTask, logits_by_beta: Mapping[float, object]) -> dict:
    """Score every beta's logits: the best run's metrics, `beta`, `fitness` and `per_beta`.

    `beta` and the metrics beside it are those of the run with the best per-run fitness (reward,
    less kl_penalty per nat over budget). The headline `fitness` is the reward at the KL budget
    read off the grid's reward–KL curve (lossearch.evaluation.fitness), as every tier reads it.
    """
    per_beta = [{"beta": float(beta), **score_bandit(task, logits)} for beta, logits in logits_by_beta.items()]
    if not per_beta:
        raise ValueError("no logits to score: the beta grid is empty")
    best = max(per_beta, key=lambda row: row["fitness"])  # the first of equals wins
    fitness = fitness_at_budget(per_beta, task.kl_budget, task.kl_penalty)
    return {"task": task.name, "seed": task.seed, **best, "fitness": fitness,
            "kl_budget": task.kl_budget, "per_beta": per_beta}



def evaluate_bandit(loss_fn: LossFn, task_name: str, seed: int = 0,
                    config: BanditConfig = BanditConfig()) -> dict:
    """Build the task, train over the beta grid and score: see `score_bandit_grid`."""
    task = make_bandit_task(task_name, seed, config)
    return score_bandit_grid(task, train_bandit_grid(loss_fn, task, seed, config))
