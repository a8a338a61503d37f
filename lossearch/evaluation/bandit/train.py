"""The bandit tier's training half (UNTRUSTED: calls the candidate loss; run only in the sandbox child).

All betas of the grid train at once: the parameter is a stack of K independent policies,
(K, P, R), and the loss is called once per beta on that beta's slice. The K runs share the
batch order and never mix (the gradients are per slice, Adam is elementwise), so each is the
run `train_bandit` does alone, in half the time: saves 50% of a bandit run of 5 betas here
(fp32, 2-core Xeon, benchmarks/speed_tricks.py).
"""

from __future__ import annotations

from dataclasses import replace

import torch
import torch.nn.functional as F

from lossearch.contract import LossFn, TrainingState, backpropagate, loss_input_gradients
from lossearch.evaluation.bandit.task import BanditConfig, BanditTask
from lossearch.evaluation.threads import one_thread
from lossearch.failures import CandidateError


def train_bandit_grid(loss_fn: LossFn, task: BanditTask, seed: int = 0,
                      config: BanditConfig = BanditConfig()) -> dict[float, torch.Tensor]:
    """Train one policy per beta of the grid, from the reference, by Adam: {beta: (P, R) logits}."""
    with one_thread():
        return train_stacked(loss_fn, task, seed, config)


def train_bandit(loss_fn: LossFn, task: BanditTask, beta: float, seed: int = 0,
                 config: BanditConfig = BanditConfig()) -> torch.Tensor:
    """Train the policy at one beta: (P, R) logits, detached. Sandbox child only."""
    return train_bandit_grid(loss_fn, task, seed, replace(config, betas=(beta,)))[float(beta)]


def train_stacked(loss_fn: LossFn, task: BanditTask, seed: int, config: BanditConfig) -> dict[float, torch.Tensor]:
    K = len(config.betas)
    logits = task.reference_logits.expand(K, -1, -1).clone().requires_grad_()  # (K, P, R); pi starts at pi_ref
    reference_logps = F.log_softmax(task.reference_logits, dim=-1)  # (P, R)
    moments = (torch.zeros_like(logits), torch.zeros_like(logits))  # Adam's m and v, (K, P, R)
    generator = torch.Generator().manual_seed(seed)
    n_pairs = task.train_prompts.shape[0]
    batches = torch.randint(0, n_pairs, (config.steps, config.batch_size), generator=generator)  # (steps, B)
    states = [TrainingState(config.steps) for _ in config.betas]  # each beta's run keeps its own statistics
    for step in range(config.steps):
        batch = batches[step]  # (B,) indices into the training pairs
        policy, fixed = pair_inputs(logits, reference_logps, task.lengths, task.train_prompts[batch],
                                    task.train_chosen[batch], task.train_rejected[batch])
        fixed.update(chosen_scores=task.train_chosen_scores[batch], rejected_scores=task.train_rejected_scores[batch])
        grads = []
        for k, beta in enumerate(config.betas):
            run_policy = {name: value[k] for name, value in policy.items()}  # (B,) each, (B, 1) token inputs
            run_fixed = {**fixed, **states[k].inputs(step, run_policy, fixed)}
            grads.append(loss_input_gradients(loss_fn, run_policy, run_fixed, beta)[1])
        logits.grad = None
        backward_through_policy(policy, grads)
        adam_step(logits, moments, step + 1, config.lr)
    return {beta: check_trained(logits[k].detach(), beta) for k, beta in enumerate(config.betas)}


def pair_inputs(logits: torch.Tensor, reference_logps: torch.Tensor, lengths: torch.Tensor,
                prompts: torch.Tensor, chosen: torch.Tensor, rejected: torch.Tensor):
    """The batch's policy-side inputs (K, B) (token inputs (K, B, 1)), with graph, and reference-side
    inputs (B,) (token inputs and masks (B, 1))."""
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
    # each response is a single action, so a single "token" (T = 1): its log-prob is the sequence's
    policy.update(policy_chosen_token_logps=policy["policy_chosen_logps"][..., None],  # (K, B, 1)
                  policy_rejected_token_logps=policy["policy_rejected_logps"][..., None])
    ones = torch.ones_like(fixed["reference_chosen_logps"])[:, None]  # (B, 1)
    fixed.update(reference_chosen_token_logps=fixed["reference_chosen_logps"][:, None],
                 reference_rejected_token_logps=fixed["reference_rejected_logps"][:, None],
                 chosen_mask=ones, rejected_mask=ones.clone())
    return policy, fixed


def backward_through_policy(policy: dict, grads_per_beta: list[dict]) -> None:
    """Carry every beta's input gradients back into the stacked logits' .grad."""
    outputs, grads = [], []
    for name, output in policy.items():  # output (K, B)
        per_beta = [grads[name] for grads in grads_per_beta]
        if all(grad is None for grad in per_beta):
            continue  # no beta's loss reads this input
        zeros = torch.zeros_like(output[0])  # (B,), or (B, 1) for a token input
        outputs.append(output)
        grads.append(torch.stack([zeros if grad is None else grad for grad in per_beta]))  # (K, B) or (K, B, 1)
    backpropagate(outputs, grads)


def adam_step(param: torch.Tensor, moments: tuple, step: int, lr: float,
              betas=(0.9, 0.999), eps: float = 1e-8) -> None:
    """One Adam update (Kingma & Ba, 2015, Algorithm 1) in place. Not torch.optim.Adam: its first step
    imports torch._dynamo (1.5 s a fresh process), and its steps cost 6% more of a bandit run here
    (fp32, 2-core Xeon, benchmarks/speed_tricks.py)."""
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


