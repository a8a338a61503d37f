# expect: policy
# contained: policy
"""Read a world-readable file in the shared temp directory and smuggle its text out in an error."""
import torch.nn.functional as F

MARKER_DIR = "@MARKER_DIR@"


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    text = open(f"{MARKER_DIR}/secret.txt").read()
    raise ValueError(f"leaked: {text}")
    return -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
