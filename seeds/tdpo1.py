"""TDPO1 (Zeng et al., 2024): DPO with the token-level sequential-KL gap subtracted from the margin.

The margin is corrected by the gap between the rejected and the chosen
responses' sequential KL(ref || policy), summed over positions, with the
gradient flowing through both KL terms: the first of TDPO's two variants,
with no weight on the gap. TDPO2 (`tdpo`) weights it by alpha and stops the
chosen side's gradient, which tames the large KL gradients early in training.
Written from the authors' `tdpo_loss` with `if_tdpo2=False`.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         chosen_kl, rejected_kl, beta: float = 0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return -F.logsigmoid(beta * (margin - (rejected_kl - chosen_kl)))
