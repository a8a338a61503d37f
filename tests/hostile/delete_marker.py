# expect: policy
# contained: policy
"""Delete a file the test created outside the sandbox (its directory is world-writable)."""
import os

import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    os.remove(os.path.join(MARKER_DIR, "victim.txt"))
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
