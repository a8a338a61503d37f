# expect: policy
# contained: policy
"""Import by string through importlib."""
import importlib

import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    importlib.import_module("subprocess").run(["touch", f"{MARKER_DIR}/lossearch-hostile-escape-importlib"])
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
