# expect: policy
# contained: crash
"""Arms SIGALRM and spins: the child dies of its own signal before it reports."""
import signal

import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    signal.alarm(1)
    while True:
        pass
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
