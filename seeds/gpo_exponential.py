"""GPO, exponential (Tang et al., 2024, Generalized Preference Optimization): exp(-beta * margin).

GPO writes offline preference losses as f(beta * margin) for a function f of
the implicit reward margin; f(x) = log(1 + e^-x) is DPO, max(0, 1 - x) SLiC
and (x - 1)^2 IPO. The exponential f(x) = e^-x (AdaBoost's loss) is one of
the new ones the paper studies: it punishes lost pairs much harder than
DPO's logistic and, like it, never stops pushing won pairs.
"""
import torch


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return torch.exp(-beta * margin)
