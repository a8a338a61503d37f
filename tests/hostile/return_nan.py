# expect: nan
# contained: nan
"""Returns NaN for every pair."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)) * float("nan")
