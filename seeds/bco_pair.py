"""BCO, pairwise (Jung et al., 2024): binary classification of each response by its implicit reward.

The chosen response is classified as good (reward above 0) and the rejected
one as bad, independently: -log sig(r_c) - log sig(-r_r), with r = beta *
log-ratio. This is the pairwise form without BCO's reward shift delta.
Equals TRL's `loss_type="bco_pair"`.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    chosen_rewards = beta * (policy_chosen_logps - reference_chosen_logps)
    rejected_rewards = beta * (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(chosen_rewards) - F.logsigmoid(-rejected_rewards)
