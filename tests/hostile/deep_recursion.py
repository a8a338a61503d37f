# expect: exception
# contained: exception
"""Unbounded recursion in a policy-clean helper."""
import torch.nn.functional as F


def descend(depth):
    return descend(depth + 1) + 1


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)) + descend(0)
