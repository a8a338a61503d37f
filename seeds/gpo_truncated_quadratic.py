"""GPO, truncated quadratic (Tang et al., 2024, Generalized Preference Optimization): max(0, 1 - beta * margin)^2.

One of the losses f(beta * margin) that GPO sets beside DPO's logistic:
the squared hinge. Like the hinge it leaves pairs alone once the scaled margin
reaches 1 (so 1/beta is a target margin), but its gradient fades smoothly to
zero there instead of jumping, and grows with how badly a pair is lost.
"""
import torch


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    return torch.relu(1 - beta * margin) ** 2
