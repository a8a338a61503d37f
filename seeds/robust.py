"""Robust DPO (Chowdhury et al., 2024): DPO debiased for a known rate epsilon of flipped labels.

The loss is an unbiased estimate of the clean-label DPO loss when each
preference is flipped with probability epsilon:
    [-(1 - eps) log sig(beta m) + eps log sig(-beta m)] / (1 - 2 eps).
Equals TRL's `loss_type="robust"` with `label_smoothing=epsilon`.
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         beta: float = 0.1, epsilon: float = 0.1):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    logits = beta * margin
    # the flipped-label term enters with a plus sign: it cancels the bias the noise adds
    clean = -(1 - epsilon) * F.logsigmoid(logits)
    flipped = epsilon * F.logsigmoid(-logits)
    return (clean + flipped) / (1 - 2 * epsilon)
