# expect: policy
# contained: policy
"""Import without an import statement: __import__."""
import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    __import__("os").system(f"touch {MARKER_DIR}/lossearch-hostile-escape-dunder")
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
