# expect: timeout
# contained: timeout
"""A plain infinite Python loop: policy-clean, so only the wall-clock/CPU limit stops it."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    while True:
        pass
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
