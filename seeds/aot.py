"""AOT, paired (Melnyk et al., 2024): distributional alignment via optimal transport in one dimension.

Asks the policy's distribution of log-likelihood margins (chosen minus
rejected) to stochastically dominate the reference's. In 1-D the optimal
transport plan matches sorted samples, so both margin vectors are sorted over
the batch and compared quantile by quantile with the logistic loss. The i-th
output is the i-th quantile's loss, not pair i's: only the batch mean has a
meaning. Equals TRL's `loss_type="aot"` (with TRL's default label_smoothing=0).
"""
import torch
import torch.nn.functional as F


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps, beta: float = 0.1):
    # sort over the batch: the quantiles of each margin distribution, (B,) ascending
    policy_margins = torch.sort(policy_chosen_logps - policy_rejected_logps, dim=0).values
    reference_margins = torch.sort(reference_chosen_logps - reference_rejected_logps, dim=0).values
    return -F.logsigmoid(beta * (policy_margins - reference_margins))
