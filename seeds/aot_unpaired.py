"""AOT, unpaired (Melnyk et al., 2024): the chosen log-ratio distribution must dominate the rejected one.

The unpaired variant forgets which rejected response went with which chosen
one: it sorts the chosen and the rejected log-ratios separately over the batch
and applies the logistic loss quantile by quantile. The i-th output is the i-th
quantile's loss, not pair i's: only the batch mean has a meaning.
Equals TRL's `loss_type="aot_unpaired"` (with TRL's default label_smoothing=0).
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    # (B,) ascending quantiles of each log-ratio distribution
    chosen_quantiles = torch.sort(policy_chosen_logps - reference_chosen_logps, dim=0).values
    rejected_quantiles = torch.sort(policy_rejected_logps - reference_rejected_logps, dim=0).values
    return -F.logsigmoid(beta * (chosen_quantiles - rejected_quantiles))
