"""GPO, Savage (Tang et al., 2024, Generalized Preference Optimization): sig(-beta * margin)^2.

Savage's loss f(x) = 1 / (1 + e^x)^2, one of GPO's choices of f(beta * margin).
It is bounded: a badly lost pair costs at most 1 and its gradient vanishes, so
pairs the policy strongly disagrees with (often mislabelled ones) barely move
it, unlike DPO, whose gradient tends to beta there.
"""
import torch


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    # 1 / (1 + e^x)^2 = sig(-x)^2, which stays finite for any x
    return torch.sigmoid(-beta * margin) ** 2
