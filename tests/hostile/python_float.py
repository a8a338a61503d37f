# expect: shape
# contained: shape
"""Returns a Python float: the value is right, the gradient is gone."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    return float(-F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)).mean())
