"""R-DPO (Park et al., 2024): DPO with a length-difference penalty inside the sigmoid.

Preference data often favours longer answers, and DPO learns to exploit that.
Subtracting alpha * (len_c - len_r) from the scaled margin means a longer
chosen response must win by more, which removes the incentive to grow length.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         chosen_lengths, rejected_lengths, beta: float = 0.1, alpha: float = 0.01):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    length_penalty = alpha * (chosen_lengths - rejected_lengths)
    return -F.logsigmoid(beta * margin - length_penalty)
