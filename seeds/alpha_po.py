"""AlphaPO (Gupta et al., 2025): SimPO with the reward shape set by alpha, r = (1 - p^-alpha) / alpha.

SimPO's reward is beta * log p, with p the geometric-mean token probability
exp(mean log-likelihood). AlphaPO replaces log p by (1 - p^-alpha) / alpha,
which tends to log p as alpha -> 0; alpha bends the reward's shape, the
paper's handle on likelihood displacement and over-optimization. The defaults
are the paper's Mistral-Instruct setting (alpha 0.25, beta 2.5, gamma 0.1, as
TRL's paper index quotes them).
Equals the preference loss of TRL CPOTrainer's `loss_type="simpo"` with
`alpha=alpha`, `simpo_gamma=gamma` (and `cpo_alpha=0`).
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, chosen_lengths, rejected_lengths,
         beta: float = 2.5, gamma: float = 0.1, alpha: float = 0.25):
    chosen_mean = policy_chosen_logps / chosen_lengths.clamp(min=1.0)
    rejected_mean = policy_rejected_logps / rejected_lengths.clamp(min=1.0)
    # (1 - p^-alpha) / alpha with p^-alpha = exp(-alpha * mean log-likelihood)
    chosen_rewards = (1 - torch.exp(-alpha * chosen_mean)) / alpha
    rejected_rewards = (1 - torch.exp(-alpha * rejected_mean)) / alpha
    return -F.logsigmoid(beta * (chosen_rewards - rejected_rewards) - gamma)
