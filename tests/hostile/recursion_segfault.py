# expect: policy
# contained: crash
"""Lift the recursion limit and recurse in C (comparing two deeply nested lists): the stack overflows.

200,000 levels take far more than the usual 8 MB of C stack (gc is off so that building them is quick).
"""
import gc
import sys

import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    gc.disable()
    sys.setrecursionlimit(10**8)
    left, right = [], []
    for _ in range(200_000):
        left, right = [left], [right]
    same = left == right
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps)) + float(same)
