# expect: timeout
# contained: timeout
"""Finite but slow: a Python busy loop that ends well past the limit, then a correct DPO loss."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    total = 0
    for i in range(300_000_000):
        total = total + i
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)) + 0.0 * total
