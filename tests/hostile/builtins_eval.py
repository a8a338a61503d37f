# expect: policy
# contained: policy
"""Reach eval through torch's reference to the builtins module (`torch.builtins`), then shell out."""
import torch
import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    torch.builtins.eval(f"__import__('os').system('touch {MARKER_DIR}/lossearch-hostile-escape-eval')")
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
