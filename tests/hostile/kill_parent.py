# expect: policy
# contained: policy
"""Kill the zygote (the parent of the child) and the whole process group."""
import os
import signal

import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    os.kill(os.getppid(), signal.SIGKILL)
    os.killpg(0, signal.SIGKILL)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
