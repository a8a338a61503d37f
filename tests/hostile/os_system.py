# expect: policy
# contained: policy
"""Shell out to leave a file in the test's marker directory."""
import os

import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    os.system(f"touch {MARKER_DIR}/lossearch-hostile-escape-system")
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
