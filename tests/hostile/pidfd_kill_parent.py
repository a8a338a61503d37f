# expect: policy
# contained: exception
"""Kill the zygote through a pidfd: signal.pidfd_send_signal raises no audit event (seccomp refuses it)."""
import os
import signal

import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    signal.pidfd_send_signal(os.pidfd_open(os.getppid()), signal.SIGKILL)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
