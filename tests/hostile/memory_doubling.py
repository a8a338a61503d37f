# expect: memory
# contained: memory
"""Memory bomb by doubling a tensor until something gives."""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    x = torch.ones(1 << 20)
    while True:
        x = torch.cat([x, x])
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)) + x.sum()
