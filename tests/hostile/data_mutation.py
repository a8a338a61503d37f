# expect: policy
# contained: nan
"""Mutate the inputs behind autograd's back through .data (here: poison them with NaN)."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    policy_chosen_logps.data.fill_(float("nan"))
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
