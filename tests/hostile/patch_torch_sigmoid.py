# expect: policy
# contained: policy
"""Monkey-patch torch.sigmoid so that every later use of it (fingerprint, training) lies."""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    torch.sigmoid = lambda x: x * 0 + 0.5
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
