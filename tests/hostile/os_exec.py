# expect: policy
# contained: policy
"""Replace the child with a shell: os.execv."""
import os

import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    os.execv("/bin/sh", ["/bin/sh", "-c", f"touch {MARKER_DIR}/lossearch-hostile-escape-exec"])
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
