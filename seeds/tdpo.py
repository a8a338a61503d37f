"""TDPO2 (Zeng et al., 2024): DPO with a token-level sequential-KL margin term.

The margin is corrected by alpha times the gap between the rejected and the
chosen responses' sequential KL(ref || policy), summed over positions. The
chosen KL is a stop-gradient, so the term only pushes the rejected response's
KL down and divergence on the chosen response stays free: TDPO's control of
KL growth, with alpha = 0.5 as in the paper's TDPO2.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         chosen_kl, rejected_kl, beta: float = 0.1, alpha: float = 0.5):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    # stop-gradient on the chosen side: TDPO2 differs from TDPO1 only here and in alpha
    kl_gap = rejected_kl - chosen_kl.detach()
    return -F.logsigmoid(beta * (margin - alpha * kl_gap))
