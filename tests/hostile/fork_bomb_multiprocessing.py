# expect: policy
# contained: exception
"""A fork bomb through multiprocessing: every worker starts two more.

In the jail it never forks: multiprocessing loads its fork machinery (multiprocessing.popen_fork)
lazily, and the child may not list directories outside its own, so that import fails first.
"""
import multiprocessing

import torch.nn.functional as F


def spawn():
    for _ in range(2):
        multiprocessing.Process(target=spawn).start()


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    spawn()
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
