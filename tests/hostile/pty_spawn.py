# expect: policy
# contained: policy
"""A shell on a pseudo-terminal: os.forkpty, the call under pty.spawn."""
import os

import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    pid, terminal = os.forkpty()
    if pid == 0:
        os.execv("/bin/sh", ["/bin/sh", "-c", f"touch {MARKER_DIR}/lossearch-hostile-escape-pty"])
    os.waitpid(pid, 0)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
