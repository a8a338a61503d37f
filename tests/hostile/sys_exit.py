# expect: policy
# contained: exception
"""sys.exit from inside the loss: a SystemExit the trusted job code must still report."""
import sys

import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    sys.exit(3)
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
