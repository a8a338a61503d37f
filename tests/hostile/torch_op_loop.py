# expect: timeout
# contained: timeout
"""One cheap torch op repeated forever on a big tensor with no graph (so memory stays flat)."""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    z = torch.ones(1_000_000)
    while True:
        z = torch.sin(z)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)) + z.mean()
