# expect: memory
# contained: memory
"""Memory bomb in plain Python: keeps appending 8 MB lists."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    hoard = []
    while True:
        hoard.append([0] * 1_000_000)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
