# expect: memory
# contained: memory
"""Memory bomb in one torch call: 400 GB of zeros."""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    pad = torch.zeros(10**11)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)) + pad.sum()
