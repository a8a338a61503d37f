# expect: no_grad
# contained: no_grad
"""A constant: the same number whatever the policy does."""
import torch


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    return torch.ones_like(policy_chosen_logps) * 0.693
