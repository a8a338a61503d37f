"""NCA, pairwise (Chen et al., 2024): noise-contrastive alignment on absolute implicit rewards.

Each response's reward beta * log-ratio is scored on its own, not only as a
difference: the chosen response is pulled up against both, which keeps its
likelihood from falling the way it can under DPO.
    -log sig(r_c) - 1/2 log sig(-r_c) - 1/2 log sig(-r_r)
Equals TRL's `loss_type="nca_pair"`.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps)
    # the two half-weighted terms are the "noise" side: both responses treated as negatives
    return (-F.logsigmoid(chosen_rewards)
            - 0.5 * F.logsigmoid(-chosen_rewards)
            - 0.5 * F.logsigmoid(-rejected_rewards))
