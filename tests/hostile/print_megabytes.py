# expect: exception
# contained: exception
"""Prints 200 MB to stdout (the restricted builtins have no print; the jail caps the log file)."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    for _ in range(200):
        print("x" * 1_000_000)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
