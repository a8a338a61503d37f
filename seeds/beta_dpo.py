"""beta-DPO (Wu et al., 2024): DPO whose beta follows the batch's margin against its running mean.

"beta-DPO: Direct Preference Optimization with Dynamic beta": the batch's beta is
beta * (1 + alpha * (M_batch - M_0)), M_0 a running mean (an EMA, momentum 0.9) of the log-ratio
margins, so beta grows on batches whose pairs are already told apart and shrinks on close ones. As
the authors' release (junkangwu/beta-DPO, trainers.py, `preference_loss`) computes it, the margins
carry no beta, the new beta is clamped at 1e-3 and used detached, and alpha is 0.6 (its README).
Its beta-guided data filter draws 80% of the batch at random with probability
exp(-(M_i - M_0)^2 / (2 sigma^2)), sigma the running std of the margins, and M_batch is the drawn
pairs' mean; a loss here is a pure function, so the filter is kept in expectation: those
probabilities weigh the pairs (normalized to mean 1) and M_batch is their weighted mean. The
running mean and std come from the trainer (contract inputs running_margin_mean and _std); sigma
is floored at MIN_STD.
"""
import torch
import torch.nn.functional as F

# a floor on sigma: while the policy is still the reference its margins, and so their spread, are
# rounding noise, and the filter must not weigh pairs by noise
MIN_STD = 0.01


def loss(policy_chosen_logps, policy_rejected_logps,
         reference_chosen_logps, reference_rejected_logps,
         running_margin_mean, running_margin_std, beta: float = 0.1, alpha: float = 0.6):
    margin = (policy_chosen_logps - reference_chosen_logps) - (policy_rejected_logps - reference_rejected_logps)
    gap = margin.detach()
    # the filter's probabilities, as weights of mean 1 (a softmax: no underflow far from the mean)
    z = (gap - running_margin_mean) / running_margin_std.clamp(min=MIN_STD)
    weights = torch.softmax(-0.5 * z * z, dim=0) * gap.numel()
    batch_margin = (weights * gap).mean()
    beta_used = (beta * (1 + alpha * (batch_margin - running_margin_mean))).clamp(min=1e-3)
    return -F.logsigmoid(beta_used * margin) * weights
