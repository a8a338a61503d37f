# expect: policy
# contained: timeout
"""Finite but slow: sleeps past the wall-clock limit (sleeping uses no CPU, so only the wall clock catches it)."""
import time

import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    time.sleep(30)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
