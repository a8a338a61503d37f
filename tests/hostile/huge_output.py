# expect: shape
# contained: shape
"""Returns 50 million values (200 MB) instead of one per pair."""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps, beta: float = 0.1):
    per_pair = -F.logsigmoid(beta * (policy_chosen_logps - policy_rejected_logps))
    return torch.ones(50_000_000) * per_pair.mean()
