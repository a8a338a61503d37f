# expect: policy
# contained: crash
"""os._exit: the child vanishes without a word."""
import os

import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    os._exit(3)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
