# expect: shape
# contained: shape
"""Returns a (B, B) matrix instead of one loss per pair."""
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    margin = policy_chosen_logps[:, None] - policy_rejected_logps[None, :]  # (B, B)
    return -F.logsigmoid(beta * margin)
