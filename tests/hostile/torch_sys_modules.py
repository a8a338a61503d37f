# expect: policy
# contained: policy
"""Only attribute access on torch, no imports and no forbidden names: `torch.sys` is the sys module."""
import torch
import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    torch.sys.modules["os"].system(f"touch {MARKER_DIR}/lossearch-hostile-escape-torchsys")
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
