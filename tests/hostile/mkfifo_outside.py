# expect: policy
# contained: exception
"""os.mkfifo creates a file without any audit event: only the seccomp filter refuses it."""
import os

import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    os.mkfifo(f"{MARKER_DIR}/lossearch-hostile-escape-fifo")
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
