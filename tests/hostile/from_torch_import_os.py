# expect: policy
# contained: policy
"""`from torch import os` names an allowed module, so a naive import check lets `os` through."""
from torch import os
import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    os.remove(f"{MARKER_DIR}/victim.txt")
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
